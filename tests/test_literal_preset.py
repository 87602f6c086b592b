"""``--preset literal``: the literal model of docs/method.md, through the lineage's own code path.

Per layer: a_j = |w_j| M_j, A_c = sum_{j in c} a_j, Z_s = max a / ln 2, Z_c = max A / ln 2,
p_j = exp(a_j / Z_s) - 1, P_c = exp(A_c / Z_c) - 1, kept with min(1, F_c P_c) min(1, F_s p_j),
F_c = F_s = 1 constant, no retention control. The expectations below are computed here from
those equations alone, independently of minievo.evolution.encoding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minievo import models
from minievo.evolution.environment import EnvironmentalFactor
from minievo.evolution.lineage import PRESETS, EvolutionConfig, Lineage
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, prunable_layers


def small_net() -> Sequential:
    return Sequential(Conv2d(1, 3, 5), MaxPool2d(2), ReLU(), Flatten(), Linear(3 * 12 * 12, 8),
                      ReLU(), Linear(8, 10))


@pytest.fixture
def small_model(monkeypatch):
    monkeypatch.setitem(models.MODELS, "small", small_net)
    monkeypatch.setitem(models.INPUT_SHAPES, "small", (1, 28, 28))


def literal_expectation(weight, mask, cluster_axes, protected):
    """Expected offspring synapses of one layer under the literal equations at F = 1."""
    a = np.abs(weight.astype(np.float64)) * mask
    p = np.exp(a / (a.max() / math.log(2))) - 1
    big_a = a.sum(axis=cluster_axes)
    big_p = np.ones_like(big_a) if protected else np.exp(big_a / (big_a.max() / math.log(2))) - 1
    keep_c = np.minimum(1, big_p).reshape(big_p.shape + (1,) * len(cluster_axes))
    return float((keep_c * np.minimum(1, p)).sum()), int((a > 0).sum())


def test_the_literal_preset_is_the_literal_model():
    cfg = EvolutionConfig(**PRESETS["literal"])
    assert cfg.environment() == EnvironmentalFactor(1.0, 1.0)  # constant F, nothing solved
    assert (cfg.normalisation_scope, cfg.synapse_quantile, cfg.cluster_quantile) == (
        "layer", 1.0, 1.0)
    assert cfg.target_retention is None and cfg.granularity == "kernel"


def test_literal_preset_keep_rates_are_the_equations(small_model, tmp_path):
    cfg = EvolutionConfig(**dict(PRESETS["literal"], model="small"))
    lineage = Lineage(cfg, tmp_path / "run", progress=False, log=lambda line: None)
    ancestor = lineage._new_model()
    rng = np.random.default_rng(3)
    layers = list(prunable_layers(ancestor))
    for _, layer in layers:  # a heavy-tailed, partly pruned ancestor
        w = rng.laplace(scale=0.05, size=layer.weight.data.shape).astype(np.float32)
        m = (rng.random(w.shape) < 0.7).astype(np.float32)
        layer.set_mask(m)
        layer.weight.data[...] = w * m
    state = ancestor.state_dict()
    lineage.gen0_state = state
    expected = live = 0
    for k, (_, layer) in enumerate(layers):
        axes = (2, 3) if layer.weight.data.ndim == 4 else (1,)
        e, n = literal_expectation(layer.weight.data, layer.mask, axes, k == len(layers) - 1)
        expected += e
        live += n
    fractions = []
    for k in range(40):
        child, info = lineage._synthesise(ancestor, state, 1, k)
        assert info["f_c"] == info["f_s"] == 1.0 and info["synapse_quantile"] == 1.0
        assert info["expected_retention"] == pytest.approx(expected / live, rel=1e-12)
        fractions.append(info["sampled_retention"])
    # Monte Carlo: 40 offspring, each of about 1,800 live synapses
    assert np.mean(fractions) == pytest.approx(expected / live, abs=0.01)


def trained_ancestor():
    """Generation 0 of the committed 3-seed sweep (seed 0): Caffe LeNet-5, 8 epochs on 54,000
    MNIST images (validation split 0.1), weights stored as float16 (tests/data)."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "lenet5_mnist_ancestor_f16.npz"
    with np.load(path) as f:
        arrays = {k: f[k].astype(np.float32) for k in f.files}
    model = models.build("lenet5")
    state = model.state_dict()
    state.update(arrays)
    model.load_state_dict(state)
    return model


def test_the_literal_preset_keeps_about_a_sixth_of_a_trained_lenet5(tmp_path):
    """At F = 1 the literal model keeps about 16% of a trained LeNet-5 per generation (a fifth
    or less), whereas the paper-mnist preset's quantile control keeps its target, 66%."""
    ancestor = trained_ancestor()
    state = ancestor.state_dict()
    kept = {}
    for preset in ("literal", "paper-mnist"):
        cfg = EvolutionConfig(**dict(PRESETS[preset], val_fraction=0.1))
        lineage = Lineage(cfg, tmp_path / preset, progress=False, log=lambda line: None)
        lineage.gen0_state = state
        _, info = lineage._synthesise(ancestor, state, 1, 0)
        assert info["sampled_retention"] == pytest.approx(info["expected_retention"], abs=0.005)
        kept[preset] = info["expected_retention"]
    assert kept["literal"] == pytest.approx(0.157, abs=0.005)
    assert kept["paper-mnist"] == pytest.approx(0.66, abs=1e-3)


def test_the_paced_preset_is_the_committed_pace_sweep():
    """`--preset paper-mnist-paced` is exactly the configuration of the lineages in
    benchmarks/results/sweep-paper-pace (docs/results/sweep-paper-pace.md): paper-mnist, a
    validation split, the 0.3-point pace and 30 generations at most."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sweep-paper-pace"
    for seed in (0, 1, 2):
        recorded = json.loads((root / "setting_0" / f"seed_{seed}" / "config.json").read_text())
        cfg = asdict(EvolutionConfig(**dict(PRESETS["paper-mnist-paced"], seed=seed)))
        assert cfg.pop("parents") == 1  # single-parent runs leave it out of config.json
        # options added since, left out of config.json at their defaults
        assert (cfg.pop("augment"), cfg.pop("architecture"), cfg.pop("data_signature"),
                cfg.pop("pace_reference"), cfg.pop("pace_per_layer")) == (
                    False, None, None, 1, False)
        assert cfg == recorded["config"]
    paper = dict(PRESETS["paper-mnist"])
    paced = dict(PRESETS["paper-mnist-paced"])
    assert {k: v for k, v in paced.items() if paper.get(k) != v} == dict(
        generations=30, val_fraction=0.1, pace_margin=0.003)
