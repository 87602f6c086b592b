"""Multi-parent synthesis: the combined encoding is the equations of minievo.evolution.mating,
the combined genotype and weights come from the fittest parent that has each synapse, and a
lineage with two parents per offspring runs, records, and resumes to the same table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from minievo import models
from minievo.evolution import mating, report
from minievo.evolution.encoding import encode
from minievo.evolution.environment import EnvironmentalFactor, expected_retention
from minievo.evolution.lineage import EvolutionConfig, Lineage
from minievo.evolution.synthesis import synthesize_offspring
from minievo.experiment import UsageError
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, prunable_layers


def net() -> Sequential:
    return Sequential(Conv2d(1, 3, 5), MaxPool2d(2), ReLU(), Conv2d(3, 4, 5), MaxPool2d(2),
                      ReLU(), Flatten(), Linear(64, 12), ReLU(), Linear(12, 10))


@pytest.fixture(autouse=True)
def mate_model(monkeypatch):
    monkeypatch.setitem(models.MODELS, "mate", net)
    monkeypatch.setitem(models.INPUT_SHAPES, "mate", (1, 28, 28))


def random_parent(seed: int, keep: float = 0.6):
    rng = np.random.default_rng(seed)
    model = net()
    for _, layer in prunable_layers(model):
        m = (rng.random(layer.weight.data.shape) < keep).astype(np.float32)
        layer.set_mask(m)
        layer.weight.data[...] = rng.normal(size=m.shape).astype(np.float32) * m
    return model


def literal_p(weight, mask):
    a = np.abs(weight.astype(np.float64)) * mask
    return np.exp(a / (a.max() / math.log(2))) - 1


def test_combined_encoding_is_the_weighted_sum_of_the_parents_encodings():
    parents = [random_parent(1), random_parent(2), random_parent(3)]
    combined = mating.parent_encoder(parents, alphas=[2, 1, 1])()
    for name, enc in combined.items():
        layers = [dict(prunable_layers(p))[name] for p in parents]
        expected_p = sum(a * literal_p(la.weight.data, la.mask)
                         for a, la in zip([0.5, 0.25, 0.25], layers))
        np.testing.assert_allclose(enc.synapse_probability, expected_p, rtol=1e-12, atol=1e-15)
        singles = [encode(p)[name] for p in parents]
        np.testing.assert_allclose(enc.cluster_probability,
                                   0.5 * singles[0].cluster_probability
                                   + 0.25 * (singles[1].cluster_probability
                                             + singles[2].cluster_probability), rtol=1e-12)
        assert enc.synapse_probability.max() <= 1 and enc.cluster_probability.max() <= 1
        # no parent has it -> never inherited
        none = np.logical_and.reduce([la.mask == 0 for la in layers])
        assert np.all(enc.synapse_probability[none] == 0)
    # one parent: exactly single-parent synthesis
    single = mating.parent_encoder(parents[:1])()
    for name, enc in encode(parents[0]).items():
        np.testing.assert_array_equal(single[name].synapse_probability, enc.synapse_probability)
        np.testing.assert_array_equal(single[name].cluster_probability, enc.cluster_probability)


def test_combined_genotype_is_the_union_with_the_fittest_parents_weights():
    fit, other = random_parent(4).state_dict(), random_parent(5).state_dict()
    state = mating.combined_state([fit, other])
    for key in fit:
        if key.endswith(".mask"):
            w = key[:-5] + ".weight"
            np.testing.assert_array_equal(state[key], np.maximum(fit[key], other[key]))
            expected = np.where(fit[key] != 0, fit[w], np.where(other[key] != 0, other[w], 0))
            np.testing.assert_array_equal(state[w], expected)
        elif key.endswith(".bias"):
            np.testing.assert_array_equal(state[key], fit[key])
    assert 0 < mating.agreement([fit, other]) < 1
    assert mating.agreement([fit, fit]) == 1.0


def test_two_parent_offspring_keep_rate_matches_the_combined_expectation():
    parents = [random_parent(6, 0.8), random_parent(7, 0.8)]
    genotype = net()
    genotype.load_state_dict(mating.combined_state([p.state_dict() for p in parents]))
    encodings = mating.parent_encoder(parents)()
    env = EnvironmentalFactor(1.0, 1.0)
    expected = expected_retention(encodings, env)
    kept = []
    live = sum(int((layer.mask != 0).sum()) for _, layer in prunable_layers(genotype))
    for seed in range(30):
        masks = synthesize_offspring(genotype, env, np.random.default_rng(seed),
                                     encodings=encodings)
        for m, (_, layer) in zip(masks, prunable_layers(genotype)):
            assert np.all(m <= layer.mask)  # inside the combined genotype
        kept.append(sum(int(m.sum()) for m in masks) / live)
    assert np.mean(kept) == pytest.approx(expected, abs=0.015)


def test_mixing_weights_and_mismatched_parents_are_refused():
    with pytest.raises(ValueError, match="positive mixing weights"):
        mating.mixing_weights(2, [1, 0])
    with pytest.raises(UsageError, match="parents = 3 needs at least as many offspring"):
        EvolutionConfig(parents=3, offspring_per_generation=2, val_fraction=0.2)


def test_a_two_parent_lineage_runs_and_resumes_to_the_same_table(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
    cfg = EvolutionConfig(model="mate", dataset="synthetic-digits", generations=3,
                          ancestor_epochs=2, offspring_epochs=1, batch_size=32, lr=0.1,
                          limit_train=200, limit_test=100, val_fraction=0.2,
                          offspring_per_generation=2, parents=2, synapse_quantile=0.7,
                          cluster_quantile=0.7)
    rows = Lineage(cfg, tmp_path / "a", progress=False, log=lambda line: None).run()
    assert [r["generation"] for r in rows] == [0, 1, 2, 3]
    assert "parent_agreement" not in rows[1]  # generation 1 has one parent: the ancestor
    assert all(0 < r["parent_agreement"] <= 1 for r in rows[2:])
    assert rows[3]["synapses"] < rows[1]["synapses"]
    # interrupted after generation 2 (its row and the one after it lost): same table
    out = tmp_path / "a"
    record = json.loads((out / "lineage.json").read_text())
    record["rows"] = record["rows"][:3]
    (out / "lineage.json").write_text(json.dumps(record))
    for k in range(2):
        (out / "gen_003" / f"offspring_{k}" / "row.json").unlink()
    again = Lineage(cfg, out, progress=False, log=lambda line: None).run()
    timing = ("train_seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in again] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows]
