"""Environmental factor and offspring synthesis (docs/method.md#sampling)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minievo import init
from minievo.backend import to_numpy
from minievo.evolution.encoding import encode, encode_layer
from minievo.evolution.environment import (
    EnvironmentalFactor,
    TargetRetention,
    expected_offspring_synapses,
    expected_retention,
)
from minievo.evolution.synthesis import (
    apply_offspring_init,
    draw_clusters,
    draw_synapses,
    sample_layer_mask,
    synthesize_offspring,
)
from minievo.layers import prunable_layers
from minievo.models import lenet5

SIGMAS = 5.0  # binomial bound used by the statistical tests


def _np(x):
    return to_numpy(x)


def _lenet(seed: int = 0):
    init.manual_seed(seed)
    return lenet5()  # created on the backend the fixture selected


def _within_binomial(successes, trials, q):
    """|successes / trials - q| <= SIGMAS * sqrt(q (1 - q) / trials), elementwise."""
    rate = successes / trials
    bound = SIGMAS * np.sqrt(q * (1 - q) / trials) + 1e-12
    return np.abs(rate - q) <= bound


# ----- environmental factor ------------------------------------------------------------------


@pytest.mark.parametrize(
    "f_c, f_s, bad",
    [(0.0, 0.5, "F_c = 0.0"), (1.5, 0.5, "F_c = 1.5"), (0.5, -0.1, "F_s = -0.1"),
     (0.5, float("nan"), "F_s = nan"), (0.5, 1.0000001, "F_s = 1.0000001")],
)
def test_environmental_factor_outside_unit_interval_raises(f_c, f_s, bad):
    with pytest.raises(ValueError, match=rf"{bad}.*\(0, 1\]"):
        EnvironmentalFactor(f_c, f_s)


def test_environmental_factor_accepts_the_interval_ends():
    env = EnvironmentalFactor(1, 1e-9)
    assert env.f_c == 1.0 and env.f_s == 1e-9
    with pytest.raises(ValueError, match="number"):
        EnvironmentalFactor("strong", 0.5)
    with pytest.raises(ValueError, match=r"fraction = 0.*\(0, 1\]"):
        TargetRetention(0.0)


def test_keep_probabilities_are_clipped_scaled_probabilities(xp):
    env = EnvironmentalFactor(0.5, 0.25)
    big_p = xp.asarray([0.0, 0.5, 1.0])
    np.testing.assert_allclose(_np(env.cluster_keep_probability(big_p)), [0, 0.25, 0.5])
    np.testing.assert_array_equal(_np(env.cluster_keep_probability(big_p, protected=True)), 1)
    np.testing.assert_allclose(_np(env.synapse_keep_probability(big_p)), [0, 0.125, 0.25])


# ----- sampling: statistics ------------------------------------------------------------------


@pytest.mark.parametrize(
    "granularity, shape", [("neuron", (4, 6)), ("kernel", (3, 2, 2, 2)), ("filter", (3, 2, 2, 2))]
)
def test_keep_rates_agree_with_the_model(xp, granularity, shape):
    """Clusters kept at rate min(1, F_c P_c); synapses of a kept cluster at min(1, F_s p_j)."""
    w_np = np.random.default_rng(11).normal(size=shape)
    enc = encode_layer(xp.asarray(w_np), None, granularity)
    env = EnvironmentalFactor(0.7, 0.8)
    q_c = np.minimum(1, 0.7 * _np(enc.cluster_probability))
    q_s = np.minimum(1, 0.8 * _np(enc.synapse_probability))
    q_c_per_synapse = _np(enc.to_synapses(xp.asarray(q_c)))

    trials = 3000
    rng = np.random.default_rng(12)
    cluster_kept = np.zeros(q_c.shape)
    synapse_kept = np.zeros(shape)  # offspring synapses
    synapse_kept_in_kept_cluster = np.zeros(shape)
    cluster_kept_per_synapse = np.zeros(shape)
    for _ in range(trials):
        mask, clusters = sample_layer_mask(enc, env, rng, return_clusters=True)
        mask, clusters = _np(mask), _np(clusters)
        per_synapse = _np(enc.to_synapses(xp.asarray(clusters)))
        # a synapse of a dropped cluster is never in the offspring
        assert not mask[~per_synapse].any()
        cluster_kept += clusters
        synapse_kept += mask
        synapse_kept_in_kept_cluster += mask * per_synapse
        cluster_kept_per_synapse += per_synapse

    assert _within_binomial(cluster_kept, trials, q_c).all()
    # marginal: P(M'_j = 1) = min(1, F_c P_c) * min(1, F_s p_j)
    assert _within_binomial(synapse_kept, trials, q_c_per_synapse * q_s).all()
    # conditional on the cluster being kept: min(1, F_s p_j)
    conditional = cluster_kept_per_synapse > 0
    assert _within_binomial(
        synapse_kept_in_kept_cluster[conditional], cluster_kept_per_synapse[conditional],
        q_s[conditional],
    ).all()


def test_sample_layer_mask_is_cluster_draw_then_synapse_draw(xp):
    enc = encode_layer(xp.asarray(np.random.default_rng(1).normal(size=(5, 3, 3, 3))), None,
                       "kernel")
    env = EnvironmentalFactor(0.6, 0.6)
    mask = sample_layer_mask(enc, env, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    clusters = draw_clusters(enc, env, rng)
    synapses = draw_synapses(enc, env, rng)
    np.testing.assert_array_equal(_np(mask), _np(enc.to_synapses(clusters) & synapses))
    assert mask.dtype == np.float32


# ----- sampling: docs/method.md#facts ---------------------------------------------


def test_dead_synapse_never_returns_and_masks_only_shrink(xp):
    gen = np.random.default_rng(21)
    w = gen.normal(size=(6, 4, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = 0.0  # a synapse with w = 0 (mask 1)
    mask = np.ones(w.shape, dtype=np.float32)
    mask[1, 2] = 0  # a whole kernel already gone
    env = EnvironmentalFactor(0.95, 0.95)
    rng = np.random.default_rng(22)
    live_counts = []
    for generation in range(6):
        enc = encode_layer(xp.asarray(w), xp.asarray(mask), "kernel")
        p = _np(enc.synapse_probability)
        assert (p[mask == 0] == 0).all() and (p[w == 0] == 0).all()
        new_mask = _np(sample_layer_mask(enc, env, rng, ancestor_mask=xp.asarray(mask)))
        assert (new_mask <= mask).all(), f"a synapse came back in generation {generation}"
        assert new_mask[0, 0, 0, 0] == 0 and not new_mask[1, 2].any()
        mask = new_mask
        # "training": the surviving weights move, the masked ones stay exactly zero
        w = (w + 0.1 * gen.normal(size=w.shape).astype(np.float32)) * mask
        live_counts.append(int(mask.sum()))
    assert live_counts == sorted(live_counts, reverse=True)
    assert live_counts[-1] < live_counts[0]


def test_f_one_keeps_the_strongest_cluster_and_a_synapse_in_it(xp):
    """With F = 1: P_c = 1 for the strongest cluster, so it is always kept; when the layer's
    strongest synapse (p = 1) lies in that cluster, it always survives too."""
    w = np.random.default_rng(31).normal(size=(8, 5)) * 0.1
    w[3, 2] = 5.0  # strongest synapse, and it makes neuron 3 the strongest cluster
    enc = encode_layer(xp.asarray(w), None, "neuron")
    assert _np(enc.cluster_probability)[3] == 1.0 and _np(enc.synapse_probability)[3, 2] == 1.0
    env = EnvironmentalFactor(1.0, 1.0)
    rng = np.random.default_rng(32)
    for _ in range(300):
        mask, clusters = sample_layer_mask(enc, env, rng, return_clusters=True)
        assert bool(clusters[3]) and _np(mask)[3, 2] == 1.0


def test_strongest_synapse_outside_the_strongest_cluster_can_be_lost_at_f_one(xp):
    """The pinned consequence "with F = 1 the strongest synapse survives" needs that synapse to
    lie in the strongest cluster: elsewhere it is kept only with probability P_c < 1."""
    w = np.asarray([[1.0, 0.0, 0.0], [0.6, 0.6, 0.6]])  # strongest synapse in the weaker neuron
    enc = encode_layer(xp.asarray(w), None, "neuron")
    big_p = _np(enc.cluster_probability)
    assert big_p[1] == 1.0 and big_p[0] == pytest.approx(2 ** (1 / 1.8) - 1)
    env = EnvironmentalFactor(1.0, 1.0)
    rng = np.random.default_rng(33)
    kept = sum(_np(sample_layer_mask(enc, env, rng))[0, 0] for _ in range(2000))
    assert _within_binomial(kept, 2000, big_p[0])
    assert kept < 2000


def test_f_one_on_lenet_always_keeps_each_layers_strongest_cluster(backend_name):
    model = _lenet(1)
    encodings = encode(model)
    strongest = {name: int(np.argmax(_np(e.cluster_probability))) for name, e in encodings.items()}
    env = EnvironmentalFactor(1.0, 1.0)
    rng = np.random.default_rng(34)
    for _ in range(5):
        masks, stats = synthesize_offspring(model, env, rng, return_stats=True)
        for layer_stats in stats.layers:
            kept = _np(layer_stats.clusters_kept).ravel()
            assert kept[strongest[layer_stats.name]]
        # the output layer's clusters are protected: its strongest synapse always survives
        out = encodings["7"].synapse_probability
        assert _np(masks[-1]).ravel()[int(np.argmax(_np(out)))] == 1.0


def test_output_neurons_are_never_dropped_as_clusters(backend_name):
    model = _lenet(2)
    env = EnvironmentalFactor(1e-3, 1.0)  # almost every cluster elsewhere is dropped
    masks, stats = synthesize_offspring(model, env, np.random.default_rng(41), return_stats=True)
    output = stats.layers[-1]
    assert _np(output.clusters_kept).all()
    assert output.clusters_after == 10  # each class keeps some of its 500 synapses
    assert stats.layers[-2].clusters_after < 10  # fc1 lost almost all its neurons
    # without protection the output layer's neurons are dropped like any other
    _, stats = synthesize_offspring(model, env, np.random.default_rng(41), protect_output=False,
                                    return_stats=True)
    assert not _np(stats.layers[-1].clusters_kept).all()


def test_same_seed_same_masks(backend_name):
    model = _lenet(3)
    env = EnvironmentalFactor(0.8, 0.9)
    a = synthesize_offspring(model, env, np.random.default_rng(5))
    b = synthesize_offspring(model, env, np.random.default_rng(5))
    c = synthesize_offspring(model, env, np.random.default_rng(6))
    for m_a, m_b in zip(a, b):
        np.testing.assert_array_equal(_np(m_a), _np(m_b))
    assert any((_np(m_a) != _np(m_c)).any() for m_a, m_c in zip(a, c))
    # the ancestor is not modified; the masks have the weights' shape, dtype and backend
    for (_, layer), mask in zip(prunable_layers(model), a):
        assert _np(layer.mask).all()
        assert mask.shape == layer.weight.shape and mask.dtype == layer.weight.dtype
        assert type(mask) is type(layer.weight.data)


def test_backends_draw_the_same_lineage(backend_name):
    """A lineage on the backend under test equals the NumPy lineage with the same seed."""
    model = _lenet(4)
    reference = _lenet(4).to("numpy")
    env = EnvironmentalFactor(0.9, 0.9)
    rng, rng_ref = np.random.default_rng(8), np.random.default_rng(8)
    for _ in range(2):
        masks = synthesize_offspring(model, env, rng)
        masks_ref = synthesize_offspring(reference, env, rng_ref)
        for m, m_ref in zip(masks, masks_ref):
            np.testing.assert_array_equal(_np(m), m_ref)
        apply_offspring_init(model, masks)
        apply_offspring_init(reference, masks_ref)


def test_bad_arguments_raise(backend_name):
    model = _lenet(5)
    env = EnvironmentalFactor(0.5, 0.5)
    with pytest.raises(ValueError, match="kernel, filter"):
        synthesize_offspring(model, env, np.random.default_rng(0), granularity="channel")
    with pytest.raises(TypeError, match="Generator"):
        synthesize_offspring(model, env, None)
    with pytest.raises(TypeError, match="EnvironmentalFactor"):
        synthesize_offspring(model, 0.5, np.random.default_rng(0))


def test_filter_granularity_drops_whole_filters(backend_name):
    model = _lenet(6)
    env = EnvironmentalFactor(0.5, 1.0)
    masks, stats = synthesize_offspring(model, env, np.random.default_rng(9),
                                        granularity="filter", return_stats=True)
    conv2 = stats.layers[1]
    assert conv2.granularity == "filter" and _np(conv2.clusters_kept).shape == (50,)
    dropped = ~_np(conv2.clusters_kept)
    assert dropped.any() and not _np(masks[1])[dropped].any()
    assert stats.layers[2].granularity == "neuron"


# ----- target retention ------------------------------------------------------------------------


def _variance_of_offspring_synapses(encodings, env):
    """Exact variance of the offspring's synapse count: X_c = C_c * sum_j S_j per cluster,
    independent across clusters; Var X_c = q_c (v_c + mu_c^2) - (q_c mu_c)^2."""
    total = 0.0
    for e in encodings.values():
        q_c = _np(env.cluster_keep_probability(e.cluster_probability, e.protect_clusters))
        q_s = _np(env.synapse_keep_probability(e.synapse_probability))
        axes = tuple(range(q_c.ndim, q_s.ndim))
        mu = q_s.sum(axis=axes)
        v = (q_s * (1 - q_s)).sum(axis=axes)
        total += float((q_c * (v + mu**2) - (q_c * mu) ** 2).sum())
    return total


@pytest.mark.parametrize("target, f_c", [(0.25, None), (0.1, None), (0.2, 0.9)])
def test_target_retention_hits_its_target(backend_name, target, f_c):
    model = _lenet(7)
    encodings = encode(model)
    solution = TargetRetention(target, f_c=f_c).solve(encodings)
    assert solution.reached
    assert solution.expected_fraction == pytest.approx(target, abs=1e-8)
    assert expected_retention(encodings, solution.env) == pytest.approx(target, abs=1e-8)
    if f_c is None:
        assert solution.env.f_c == solution.env.f_s
    else:
        assert solution.env.f_c == f_c
    # empirically: the sampled count lies within 5 sigma of the expectation
    expected = sum(expected_offspring_synapses(e, solution.env) for e in encodings.values())
    sd = math.sqrt(_variance_of_offspring_synapses(encodings, solution.env))
    rng = np.random.default_rng(10)
    for _ in range(3):
        masks, stats = synthesize_offspring(model, TargetRetention(target, f_c=f_c), rng,
                                            return_stats=True)
        assert stats.expected_fraction == pytest.approx(target, abs=1e-8)
        kept = sum(int(_np(m).sum()) for m in masks)
        assert abs(kept - expected) <= SIGMAS * sd


def test_target_out_of_reach_returns_f_one_and_warns(backend_name):
    encodings = encode(_lenet(8))
    at_one = expected_retention(encodings, EnvironmentalFactor(1.0, 1.0))
    with pytest.warns(RuntimeWarning, match="out of reach"):
        solution = TargetRetention(0.99).solve(encodings)
    assert not solution.reached
    assert solution.env == EnvironmentalFactor(1.0, 1.0)
    assert solution.expected_fraction == pytest.approx(at_one)


def test_expected_retention_protects_the_output_layer(xp):
    w = xp.asarray(np.random.default_rng(2).normal(size=(3, 4)))
    env = EnvironmentalFactor(0.5, 1.0)
    free = encode_layer(w, None, "neuron")
    protected = encode_layer(w, None, "neuron", protect_clusters=True)
    p = _np(free.synapse_probability)
    big_p = _np(free.cluster_probability)
    assert expected_offspring_synapses(free, env) == pytest.approx(
        float((np.minimum(1, 0.5 * big_p)[:, None] * p).sum()))
    assert expected_offspring_synapses(protected, env) == pytest.approx(float(p.sum()))


# ----- offspring initialisation ----------------------------------------------------------------


def _weights(model):
    return [_np(layer.weight.data).copy() for _, layer in prunable_layers(model)]


def test_offspring_init_modes(backend_name):
    init.manual_seed(9)
    model = lenet5()
    generation0 = model.state_dict()  # before "training"
    for _, layer in prunable_layers(model):  # "training" moves every weight
        layer.weight.data = layer.weight.data + 0.01
    ancestor = model.state_dict()
    masks = synthesize_offspring(model, EnvironmentalFactor(0.7, 0.7), np.random.default_rng(1))
    masks_np = [_np(m) for m in masks]

    apply_offspring_init(model, masks, "inherit")
    for w, m, (name, _) in zip(_weights(model), masks_np, prunable_layers(model)):
        np.testing.assert_array_equal(w, ancestor[f"{name}.weight"] * m)
        assert (w[m == 0] == 0).all()

    apply_offspring_init(model, masks, "rewind", generation0_state=generation0)
    for w, m, (name, layer) in zip(_weights(model), masks_np, prunable_layers(model)):
        np.testing.assert_array_equal(w, generation0[f"{name}.weight"] * m)
        np.testing.assert_array_equal(_np(layer.mask), m)

    apply_offspring_init(model, masks, "inherit", ancestor_state=ancestor)
    for w, m, (name, _) in zip(_weights(model), masks_np, prunable_layers(model)):
        np.testing.assert_array_equal(w, ancestor[f"{name}.weight"] * m)

    apply_offspring_init(model, masks, "reinit", rng=np.random.default_rng(3))
    first = _weights(model)
    apply_offspring_init(model, masks, "reinit", rng=np.random.default_rng(3))
    for w, w_again, m, (name, layer) in zip(_weights(model), first, masks_np,
                                            prunable_layers(model)):
        np.testing.assert_array_equal(w, w_again)  # same seed, same newborn
        assert (w[m == 0] == 0).all()
        bound = math.sqrt(3.0 / np.prod(w.shape[1:]))
        assert np.abs(w).max() <= bound
        assert not np.allclose(w[m != 0], ancestor[f"{name}.weight"][m != 0])
        assert not _np(layer.bias.data).any()


def test_offspring_init_errors(backend_name):
    model = _lenet(10)
    masks = [_np(layer.mask) for _, layer in prunable_layers(model)]
    with pytest.raises(ValueError, match="inherit, reinit, rewind"):
        apply_offspring_init(model, masks, "mutate")
    with pytest.raises(ValueError, match="generation0_state"):
        apply_offspring_init(model, masks, "rewind")
    with pytest.raises(ValueError, match="rng"):
        apply_offspring_init(model, masks, "reinit")
    with pytest.raises(ValueError, match="3 offspring masks for 4"):
        apply_offspring_init(model, masks[:3])
