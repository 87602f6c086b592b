"""evolution.stats: standard errors, the paired bootstrap, the two selection rules, the parameter
count with biases and the stored per-image correctness, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minievo import models
from minievo.evolution import stats
from minievo.evolution.metrics import model_metrics
from minievo.layers import Linear, Sequential, prunable_layers


# ----------------------------------------------------------------------------------------------
# standard errors
# ----------------------------------------------------------------------------------------------
def test_binomial_se_divides_by_n_not_n_minus_one():
    assert stats.binomial_se(0.5, 4) == pytest.approx(0.25, rel=1e-12)  # n - 1 gives 0.2887
    assert stats.binomial_se(0.99, 10_000) == pytest.approx(math.sqrt(0.99 * 0.01) / 100)
    assert stats.binomial_se(0.75, 3) == pytest.approx(0.25, rel=1e-12)  # sqrt(3/16 / 3)
    assert stats.binomial_se(1.0, 50) == 0.0


def test_mean_binomial_se_of_independent_accuracies():
    # sqrt(0.25/4 + 0.09/100) / 2
    assert stats.mean_binomial_se([0.5, 0.9], [4, 100]) == pytest.approx(
        math.sqrt(0.0625 + 0.0009) / 2, rel=1e-12)
    assert stats.mean_binomial_se([0.5, 0.5], 4) == pytest.approx(0.25 / math.sqrt(2))


@pytest.mark.parametrize("p, n, match", [(1.2, 10, "p must be an accuracy"),
                                         (0.5, 0, "n must be a whole number"),
                                         (0.5, 2.5, "n must be a whole number"),
                                         (0.5, True, "n must be a whole number")])
def test_binomial_se_refuses_bad_input(p, n, match):
    with pytest.raises(ValueError, match=match):
        stats.binomial_se(p, n)


# ----------------------------------------------------------------------------------------------
# the paired bootstrap
# ----------------------------------------------------------------------------------------------
def test_paired_bootstrap_on_four_images_by_hand():
    # Only image 0 differs (ancestor right, offspring wrong): d = [1, 0, 0, 0]. A resample's
    # loss is 25 K points, K ~ Binomial(4, 1/4): P(K <= 0) = 0.316 > 0.025 and
    # P(K <= 2) = 0.949 < 0.975 <= P(K <= 3) = 0.996, so the interval is [0, 75].
    # An unpaired bootstrap (ancestor 2/4, offspring 1/4, resampled apart) reaches below 0.
    ancestor = np.array([1, 1, 0, 0], dtype=bool)
    offspring = np.array([0, 1, 0, 0], dtype=bool)
    found = stats.paired_bootstrap(ancestor, offspring)
    assert found.loss == pytest.approx(25.0)
    assert (found.low, found.high) == (0.0, 75.0)
    assert (found.resamples, found.images, found.level) == (2000, 4, 0.95)


def test_the_same_predictions_have_a_zero_width_interval():
    # paired: every resample of identical predictions loses exactly 0; an unpaired bootstrap
    # of two 50% accuracies on 400 images would span about +-7 points
    a = np.arange(400) % 2 == 0
    found = stats.paired_bootstrap(a, a.copy())
    assert (found.loss, found.low, found.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_matches_the_normal_approximation_of_the_paired_difference():
    # 10,000 images: 100 lost by the offspring, 40 gained. d has mean 0.006 and variance
    # 0.014 - 0.006^2, so SE = sqrt(0.013964 / 10000) = 0.118 points; 95%: 0.6 +- 0.232.
    # (Unpaired, with both accuracies near 99%, the half-width would be about 0.28 points.)
    n = 10_000
    ancestor = np.ones(n, dtype=bool)
    offspring = np.ones(n, dtype=bool)
    offspring[:100] = False
    ancestor[100:140] = False
    ancestor[5000:5050] = offspring[5000:5050] = False  # wrong for both: no effect on d
    found = stats.paired_bootstrap(ancestor, offspring, seed=3)
    half = 1.96 * 100 * math.sqrt((0.014 - 0.006 ** 2) / n)
    assert found.loss == pytest.approx(0.6)
    assert found.low == pytest.approx(0.6 - half, abs=0.03)
    assert found.high == pytest.approx(0.6 + half, abs=0.03)


def test_paired_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.9, rng.random(500) < 0.85
    assert stats.paired_bootstrap(a, b, seed=7) == stats.paired_bootstrap(a, b, seed=7)
    other = {stats.paired_bootstrap(a, b, seed=s).low for s in range(5)}
    assert len(other) > 1  # the seed is used


def test_the_mean_over_lineages_resamples_the_shared_images_once():
    # lineage 1: d = [1, 0, 0, 0] (loss 25); lineage 2: d = 0 (loss 0). The per-image mean
    # difference is [0.5, 0, 0, 0]: the mean loss is 12.5 K, K ~ Binomial(4, 1/4): [0, 37.5].
    a1, b1 = np.array([1, 1, 0, 0]), np.array([0, 1, 0, 0])
    a2 = np.array([1, 0, 1, 0])
    found = stats.paired_bootstrap_mean([(a1, b1), (a2, a2)])
    assert found.loss == pytest.approx(12.5)
    assert (found.low, found.high) == (0.0, 37.5)


@pytest.mark.parametrize("a, b, match", [
    (np.ones(4), np.ones(5), "same images"),
    (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
    (np.array([0, 2, 1]), np.ones(3), "only 0/1"),
])
def test_paired_bootstrap_refuses_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        stats.paired_bootstrap(a, b)


def test_paired_bootstrap_refuses_bad_options():
    a = np.ones(3, dtype=bool)
    with pytest.raises(ValueError, match="resamples"):
        stats.paired_bootstrap(a, a, resamples=0)
    with pytest.raises(ValueError, match="level"):
        stats.paired_bootstrap(a, a, level=1.0)


# ----------------------------------------------------------------------------------------------
# the two selection rules
# ----------------------------------------------------------------------------------------------
# generation 0: 99.00%; generation 1 leaves the 0.1-point band, 2 and 3 re-enter it, 4 leaves
# the 0.3-point band, 5 re-enters it
LEAVES_AND_RETURNS = [0.9900, 0.9885, 0.9895, 0.9892, 0.9860, 0.9875]


@pytest.mark.parametrize("margin, last, first_out", [
    (0.001, 3, None),   # gen 1 is out: the conservative rule has no offspring
    (0.003, 5, 3),      # gen 4 is out, gen 5 back in: 5 by the last-within rule, 3 otherwise
    (0.02, 5, 5),       # never out: both give the last generation
])
def test_the_two_rules_on_a_lineage_that_leaves_the_band_and_returns(margin, last, first_out):
    assert stats.last_within(LEAVES_AND_RETURNS, margin) == last
    assert stats.first_outside_minus_one(LEAVES_AND_RETURNS, margin) == first_out


def test_the_rules_count_a_generation_exactly_on_the_edge_as_within():
    accs = [0.99, 0.989, 0.985]  # generation 1 is exactly 0.1 points below
    assert stats.last_within(accs, 0.001) == 1
    assert stats.first_outside_minus_one(accs, 0.001) == 1
    assert stats.last_within([0.99], 0.001) is None
    assert stats.first_outside_minus_one([0.99], 0.001) is None


def test_the_rules_refuse_bad_input():
    with pytest.raises(ValueError, match="margin"):
        stats.last_within([0.9, 0.8], 3)
    with pytest.raises(ValueError, match="accuracy"):
        stats.first_outside_minus_one([0.9, 80.0], 0.01)
    with pytest.raises(ValueError, match="generation 0"):
        stats.last_within([], 0.01)


# ----------------------------------------------------------------------------------------------
# parameters (with biases)
# ----------------------------------------------------------------------------------------------
def test_parameters_count_live_synapses_and_the_biases_of_live_units():
    conv_mask = np.zeros((2, 1, 2, 2))
    conv_mask[0, 0, 0, :] = 1
    conv_mask[0, 0, 1, 0] = 1                                  # filter 0: 3 synapses; 1: none
    lin_mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])  # 3 synapses, 2 live
    state = {"c.weight": np.ones((2, 1, 2, 2)), "c.bias": np.ones(2), "c.mask": conv_mask,
             "l.weight": np.ones((3, 4)), "l.bias": np.ones(3), "l.mask": lin_mask,
             "n.weight": np.ones((2, 2)), "n.mask": np.ones((2, 2)),   # no bias: 4
             "bn.weight": np.ones(5), "bn.bias": np.ones(5)}           # not prunable
    assert stats.parameters_with_biases(state) == (3 + 1) + (3 + 2) + 4


def test_the_dense_lenet5_has_430500_synapses_and_431080_parameters():
    state = models.build("lenet5", (1, 28, 28)).state_dict()
    assert stats.parameters_with_biases(state) == 430_500 + 580


def test_the_parameters_derived_from_a_record_equal_those_counted_from_the_network():
    model = models.build("lenet5", (1, 28, 28))
    rng = np.random.default_rng(0)
    for _, layer in prunable_layers(model):
        keep = rng.random(layer.weight.shape) < 0.02
        keep.reshape(keep.shape[0], -1)[: keep.shape[0] // 3] = False  # some dead units
        layer.set_mask(keep.astype(np.float32))
    row = model_metrics(model, (1, 28, 28)).as_row()
    layout = stats.bias_layout("lenet5", "mnist")
    assert layout == {"filters": True, "neurons": True}
    counted = stats.parameters_with_biases(model.state_dict())
    assert stats.derive_parameters(row, layout) == counted
    assert counted < row["synapses"] + 580  # dead units' biases are not counted
    assert stats.derive_parameters({"synapses": 5}, None) is None


def test_a_resnet_counts_only_the_classifier_biases():
    assert stats.bias_layout("resnet8", "cifar10") == {"filters": False, "neurons": True}
    assert stats.derive_parameters({"synapses": 100, "filters": 7, "neurons": 10},
                                   {"filters": False, "neurons": True}) == 110


def test_parameters_refuse_a_state_without_prunable_layers():
    with pytest.raises(ValueError, match="no prunable layer"):
        stats.parameters_with_biases({"w": np.ones(3)})
    with pytest.raises(TypeError, match="dict"):
        stats.parameters_with_biases([1, 2])


# ----------------------------------------------------------------------------------------------
# per-image correctness
# ----------------------------------------------------------------------------------------------
def test_test_correct_round_trips_through_packed_bits(tmp_path):
    correct = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1], dtype=bool)  # 13 images
    path = stats.save_test_correct(tmp_path, correct)
    assert path.name == "test_correct.npy" and np.load(path).nbytes == 2
    assert np.array_equal(stats.load_test_correct(path, 13), correct)
    with pytest.raises(ValueError, match="expected 3 packed bytes for 17 images"):
        stats.load_test_correct(path, 17)


def test_the_chosen_try_or_offspring_holds_the_predictions(tmp_path):
    correct = np.array([1, 0, 1], dtype=bool)
    (tmp_path / "gen_002" / "try_1").mkdir(parents=True)
    stats.save_test_correct(tmp_path / "gen_002" / "try_1", correct)  # the kept (second) try
    row = {"generation": 2, "pace_tries": 2, "test_images": 3}
    assert np.array_equal(stats.find_test_correct(tmp_path, row), correct)
    assert stats.find_test_correct(tmp_path, {"generation": 2, "test_images": 3}) is None
    assert stats.find_test_correct(tmp_path, {"generation": 2, "pace_tries": 2}) is None


def test_correct_per_image(backend_name, xp):
    model = Sequential(Linear(2, 2)).to(backend_name)
    model.load_state_dict({"0.weight": xp.eye(2, dtype=xp.float32),
                           "0.bias": xp.zeros(2, dtype=xp.float32),
                           "0.mask": xp.ones((2, 2), dtype=xp.float32)})
    x = xp.asarray([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]], dtype=xp.float32)
    batches = [(x[:2], xp.asarray([0, 0])), (x[2:], xp.asarray([0]))]
    got = stats.correct_per_image(model, batches)
    assert isinstance(got, np.ndarray) and got.tolist() == [True, False, True]
    assert model.training  # left as it was
