"""The validation pace's two levers of issue 20: K offspring per try, and a cut per layer.

Tiny synthetic-data lineages (the two-conv network of tests/test_lineage.py, 160 training
images), each decision of the pace checked against what its rule says from the recorded rows.

Wrong implementations these tests catch: judging the first or the mean of the K offspring
instead of the fittest; one random stream for the K offspring or for every try; a resume that
retrains or redraws a finished offspring of a try; per-layer cuts that halve every layer, the
layer with the largest cut or the one that lost the most in absolute terms instead of the most
per unit of cut; a lost strength measured on the offspring's trained weights; cuts that grow
past the first one; a default that writes ``pace_per_layer`` into config.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from minievo import checkpoint as ckpt
from minievo import models, training
from minievo.evolution import records, report, stats
from minievo.evolution.encoding import encode
from minievo.evolution.environment import EnvironmentalFactor, expected_offspring_synapses
from minievo.evolution.lineage import EvolutionConfig, Lineage
from minievo.evolution.pace import ValidationPace, layer_encodings
from minievo.experiment import UsageError
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, prunable_layers

TIMING = ("train_seconds", "eval_seconds")
MARGIN = 1e-6  # an offspring must match generation 0 on validation: rejections happen


def tiny_convnet() -> Sequential:
    """conv 4@5x5 -> pool -> conv 6@5x5 -> pool -> linear 96->24 -> linear 24->10."""
    return Sequential(
        Conv2d(1, 4, 5), MaxPool2d(2), ReLU(), Conv2d(4, 6, 5), MaxPool2d(2), ReLU(),
        Flatten(), Linear(96, 24), ReLU(), Linear(24, 10),
    )


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(models.MODELS, "tiny", tiny_convnet)
        mp.setitem(models.INPUT_SHAPES, "tiny", (1, 28, 28))
        yield


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])


def paced(**overrides) -> EvolutionConfig:
    # factor control with low quantiles: each target is met exactly in expectation and every
    # cut down to the floor is within reach; a harsh first cut (0.8) so that tries get rejected
    values = dict(model="tiny", dataset="synthetic-digits", generations=2, ancestor_epochs=3,
                  offspring_epochs=1, batch_size=32, lr=0.1, limit_train=160, limit_test=100,
                  val_fraction=0.25, target_retention=0.2, retention_control="factor",
                  synapse_quantile=0.05, cluster_quantile=0.05, pace_margin=MARGIN)
    values.update(overrides)
    return EvolutionConfig(**values)


def run(cfg, out, logs=None):
    log = logs.append if logs is not None else (lambda line: None)
    return Lineage(cfg, out, progress=False, log=log).run()


def table(out) -> list[dict]:
    rows = json.loads((out / "table.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def read(path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}


def tries(out, g) -> list:
    """The try folders of generation g, in order."""
    return sorted((out / f"gen_{g:03d}").glob("try_*"), key=lambda p: int(p.name[4:]))


def model_arrays(path) -> dict:
    return ckpt.load(path)[0]


def assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def kill_during_fit(monkeypatch, call: int, after_steps: int):
    """Interrupt the ``call``-th training (0: generation 0) after ``after_steps`` steps,
    checkpointing after every step."""
    real_fit = training.fit
    calls = [0]

    def fit(model, train_loader, optimizer, epochs, **kwargs):
        calls[0] += 1
        if calls[0] == call + 1:
            kwargs["checkpoint_seconds"] = 0
            real_step, steps = optimizer.step, [0]

            def step():
                if steps[0] == after_steps:
                    raise KeyboardInterrupt
                steps[0] += 1
                real_step()

            optimizer.step = step
        return real_fit(model, train_loader, optimizer, epochs, **kwargs)

    monkeypatch.setattr(training, "fit", fit)


# ----------------------------------------------------------------------------------------------
# K offspring per try
# ----------------------------------------------------------------------------------------------
K = 3


@pytest.fixture(scope="module")
def k_run(tmp_path_factory):
    """An uninterrupted paced lineage with K = 3 offspring per try (the resume yardstick)."""
    out = tmp_path_factory.mktemp("k") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
        logs = []
        rows = run(paced(offspring_per_generation=K), out, logs)
    return out, rows, logs


def test_k_offspring_per_try_the_fittest_on_validation_is_judged_by_the_margin(k_run):
    out, rows, logs = k_run
    v0 = rows[0]["val_accuracy"]
    pace = ValidationPace(0.8, MARGIN)
    rejected, decisive, cut = 0, 0, pace.first_cut
    for g in range(1, len(rows) + 1):
        folders = tries(out, g)
        for a, tdir in enumerate(folders):
            kids = [read(tdir / f"offspring_{k}" / "row.json") for k in range(K)]
            assert [kid["offspring"] for kid in kids] == list(range(K))
            assert all(kid["pace_cut"] == pytest.approx(cut) for kid in kids)
            for kid in kids:  # each offspring meets the try's cut in expectation
                assert 1 - kid["expected_retention"] == pytest.approx(cut, abs=2e-3)
            # their own random streams: different masks at the same cut
            masks = [{n: v for n, v in model_arrays(tdir / f"offspring_{k}" / "model.npz")
                      .items() if n.endswith(".mask")} for k in range(K)]
            assert any(not np.array_equal(masks[0][n], masks[1][n]) for n in masks[0])
            best = max(range(K), key=lambda k: (kids[k]["val_accuracy"], -k))
            assert read(tdir / "row.json") == kids[best]  # one row per try: the fittest
            accepted = kids[best]["val_accuracy"] >= v0 - MARGIN - 1e-12
            # a try that judging offspring 0 alone would have decided otherwise
            decisive += accepted and kids[0]["val_accuracy"] < v0 - MARGIN
            last = a == len(folders) - 1
            assert accepted == (last and g < len(rows)), (g, a)
            if accepted:
                assert {k: v for k, v in rows[g].items() if k not in TIMING} == {
                    **kids[best], "pace_tries": a + 1,
                    "pace_next_cut": pace.after_acceptance(cut, v0 - kids[best]["val_accuracy"])}
                assert_same_arrays(model_arrays(out / f"gen_{g:03d}" / "model.npz"),
                                   model_arrays(tdir / f"offspring_{best}" / "model.npz"))
                # the report's paired bootstrap finds the chosen offspring's predictions
                found = stats.find_test_correct(out, rows[g])
                np.testing.assert_array_equal(found, stats.load_test_correct(
                    tdir / f"offspring_{best}" / stats.TEST_CORRECT, rows[g]["test_images"]))
                cut = rows[g]["pace_next_cut"]
            else:
                rejected += 1
                cut = pace.after_rejection(cut)
    assert rejected >= 1 and decisive >= 1, "the test needs these tries to mean anything"
    assert any("the fittest of 3 offspring rejected" in line for line in logs)
    # every offspring of every try draws from its own stream: a later try (a smaller cut)
    # never just keeps a superset of an earlier offspring's synapses, as one shared stream
    # would make it
    for g in range(1, len(rows) + 1):
        kids = [{n: v != 0 for n, v in model_arrays(kdir / "model.npz").items()
                 if n.endswith(".mask")}
                for tdir in tries(out, g) for kdir in sorted(tdir.glob("offspring_*"))]
        for i, earlier in enumerate(kids):
            for later in kids[i + 1:]:
                assert any(bool((earlier[n] & ~later[n]).any()) for n in earlier)


def test_a_k_offspring_pace_that_never_rejects_is_the_fixed_pace_with_k_offspring(tmp_path):
    # try 0's K streams are those of the fixed pace's K offspring, at the same cut
    cfg = dict(pace_margin=None, target_retention=0.6, offspring_per_generation=2)
    fixed = run(paced(**cfg), tmp_path / "fixed")
    never = run(paced(**{**cfg, "pace_margin": 0.99}), tmp_path / "paced")
    pace_keys = ("pace_cut", "pace_tries", "pace_next_cut")
    assert [{k: v for k, v in r.items() if k not in pace_keys + TIMING} for r in never] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in fixed]
    assert all(r["pace_tries"] == 1 for r in never[1:])
    for g in (1, 2):
        assert_same_arrays(model_arrays(tmp_path / "fixed" / f"gen_{g:03d}" / "model.npz"),
                           model_arrays(tmp_path / "paced" / f"gen_{g:03d}" / "model.npz"))


KILLS = {  # calls to fit: generation 0, then offspring 0-2 of try 0 (1-3), of try 1 (4-6), ...
    "second-offspring-of-a-try": (2, 1),
    "first-offspring-of-a-later-try": (4, 0),
    "mid-epoch-of-a-later-offspring": (5, 3),
}


@pytest.mark.parametrize("kill", list(KILLS))
def test_a_k_offspring_paced_lineage_killed_in_a_try_resumes_to_the_same_table(
        k_run, tmp_path, monkeypatch, kill):
    ref = k_run[0]
    out = tmp_path / "killed"
    with monkeypatch.context() as mp:
        kill_during_fit(mp, *KILLS[kill])
        with pytest.raises(KeyboardInterrupt):
            run(paced(offspring_per_generation=K), out)
    real_fit, calls = training.fit, []
    monkeypatch.setattr(training, "fit", lambda *a, **kw: calls.append(1) or real_fit(*a, **kw))
    run(paced(offspring_per_generation=K), out)
    assert table(out) == table(ref)
    # finished offspring are read back, not trained again: the resumed run trains the
    # killed one and those after it
    trained = 1 + K * sum(len(tries(ref, g)) for g in (1, 2))
    assert len(calls) == trained - KILLS[kill][0]
    for g in (1, 2):
        assert [p.name for p in tries(out, g)] == [p.name for p in tries(ref, g)]
        for tdir in tries(ref, g):
            for k in range(K):
                kid = tdir.relative_to(ref) / f"offspring_{k}"
                assert read(out / kid / "row.json") == read(ref / kid / "row.json")
                assert_same_arrays(model_arrays(out / kid / "model.npz"),
                                   model_arrays(ref / kid / "model.npz"))


@pytest.mark.parametrize("overrides,message", [
    (dict(offspring_per_generation=2, parents=2), r"cannot be combined with --parents above 1"),
    (dict(pace_margin=None, pace_per_layer=True), r"--pace-per-layer .* needs --pace-margin"),
    (dict(pace_per_layer="yes"), r"--pace-per-layer 'yes': allowed: true or false"),
    (dict(offspring_per_generation=2, val_fraction=0.0), r"needs a validation split"),
])
def test_bad_combinations_of_the_levers_are_refused(overrides, message):
    with pytest.raises(UsageError, match=message):
        paced(**overrides)


# ----------------------------------------------------------------------------------------------
# a cut per layer
# ----------------------------------------------------------------------------------------------
def test_the_per_layer_rule_one_decision_at_a_time():
    pace = ValidationPace(first_cut=0.4, margin=0.003, min_cut=0.05)
    cuts = {"a": 0.4, "b": 0.2, "c": 0.1}
    # per unit of cut, b lost the most (0.15 / 0.2 = 0.75 > 0.28 / 0.4 = 0.7); a lost the
    # most in absolute terms, c has the smallest cut: neither is halved
    assert pace.layer_cuts_after_rejection(cuts, {"a": 0.28, "b": 0.15, "c": 0.05}) == \
        {"a": 0.4, "b": pytest.approx(0.1), "c": 0.1}
    # ties are all halved
    assert pace.layer_cuts_after_rejection({"a": 0.4, "b": 0.2}, {"a": 0.2, "b": 0.1}) == \
        {"a": pytest.approx(0.2), "b": pytest.approx(0.1)}
    # a layer at the floor is passed over, however much it lost; none left ends the lineage
    assert pace.layer_cuts_after_rejection({"a": 0.4, "b": 0.05}, {"a": 0.1, "b": 0.05}) == \
        {"a": pytest.approx(0.2), "b": 0.05}
    assert pace.layer_cuts_after_rejection({"a": 0.05, "b": 0.08}, {"a": 0.1, "b": 0.1}) is None
    with pytest.raises(ValueError, match=r"no strength lost given for layer\(s\) \['b'\]"):
        pace.layer_cuts_after_rejection({"a": 0.4, "b": 0.2}, {"a": 0.1})
    # acceptance: every cut grows by 1.5 up to the first cut, only while validation holds
    assert pace.layer_cuts_after_acceptance(cuts, drop=0.0015) == \
        {"a": 0.4, "b": pytest.approx(0.3), "c": pytest.approx(0.15)}
    assert pace.layer_cuts_after_acceptance(cuts, drop=0.002) == cuts


def _trained_tiny(seed=0):
    """The tiny network with random weights and a random mask (a stand-in ancestor)."""
    from minievo import init

    init.manual_seed(seed)
    model = tiny_convnet()
    rng = np.random.default_rng(seed)
    for _, layer in prunable_layers(model):
        layer.set_mask((rng.random(layer.weight.data.shape) < 0.8).astype(np.float32))
    return model


@pytest.mark.parametrize("control", ["factor", "quantile"])
def test_per_layer_targets_are_met_layer_by_layer(control):
    model = _trained_tiny()
    layers = list(prunable_layers(model))
    # each within reach of both controls (from about 0.36 to 0.82 for every layer)
    targets = dict(zip([n for n, _ in layers], [0.8, 0.5, 0.4, 0.7]))
    encodings, env, solved = layer_encodings(
        layers, targets, control, EnvironmentalFactor(1.0, 1.0), scope="network",
        synapse_quantile=0.2, cluster_quantile=0.5)
    assert list(encodings) == [n for n, _ in layers] and set(solved) == set(targets)
    for name, enc in encodings.items():
        kept = expected_offspring_synapses(enc, env) / enc.live_synapses
        assert kept == pytest.approx(targets[name], abs=1e-3 if control == "quantile" else 1e-6)
    assert encodings[layers[-1][0]].protect_clusters  # the output layer's classes stay
    assert not any(encodings[n].protect_clusters for n, _ in layers[:-1])
    if control == "factor":  # the configured encoding, F_s,l folded into p; F_s = 1 remains
        whole = encode(layers, scope="network", synapse_quantile=0.2, cluster_quantile=0.5)
        assert env.f_s == 1.0
        for name, enc in encodings.items():
            np.testing.assert_array_equal(enc.synapse_probability,
                                          whole[name].synapse_probability * solved[name])
            np.testing.assert_array_equal(enc.cluster_probability,
                                          whole[name].cluster_probability)
    with pytest.raises(ValueError, match=r"no target retention for layer"):
        layer_encodings(layers, {}, control, env)


@pytest.fixture(scope="module")
def per_layer_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("per-layer") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
        rows = run(paced(pace_per_layer=True), out)
    return out, rows


def _lost(ancestor: dict, child: dict, name: str) -> float:
    """The fraction of the ancestor's strength sum |w| M in layer ``name`` that the child's
    mask dropped, from the saved networks."""
    a = np.abs(ancestor[name + ".weight"].astype(np.float64)) * (ancestor[name + ".mask"] != 0)
    return 1 - float((a * (child[name + ".mask"] != 0)).sum()) / float(a.sum())


def test_per_layer_cuts_follow_the_rule_decision_by_decision(per_layer_run):
    out, rows = per_layer_run
    names = [n for n, _ in prunable_layers(tiny_convnet())]
    v0 = rows[0]["val_accuracy"]
    first = 0.8
    cuts = dict.fromkeys(names, first)
    decisions = uneven = 0
    for g in range(1, len(rows) + 1):
        ancestor = model_arrays(out / f"gen_{g - 1:03d}" / "model.npz")
        live = {n: int((ancestor[n + ".mask"] != 0).sum()) for n in names}
        folders = tries(out, g)
        for a, tdir in enumerate(folders):
            t = read(tdir / "row.json")
            child = model_arrays(tdir / "model.npz")
            assert {n: t[f"pace_cut_{n}"] for n in names} == pytest.approx(cuts), (g, a)
            assert t["pace_cut"] == pytest.approx(
                sum(cuts[n] * live[n] for n in names) / sum(live.values()))
            for n in names:  # measured on the ancestor's weights, the offspring's mask
                assert t[f"pace_lost_{n}"] == pytest.approx(_lost(ancestor, child, n), abs=1e-9)
            drop = v0 - t["val_accuracy"]
            if drop <= MARGIN + 1e-12:
                assert a == len(folders) - 1 and g < len(rows)
                cuts = {n: min(first, 1.5 * c) if drop <= MARGIN / 2 else c
                        for n, c in cuts.items()}
                assert {n: rows[g][f"pace_next_cut_{n}"] for n in names} == \
                    pytest.approx(cuts)
                assert rows[g]["pace_tries"] == a + 1
            else:
                share = {n: t[f"pace_lost_{n}"] / c for n, c in cuts.items() if c / 2 >= 0.05}
                if not share:
                    assert a == len(folders) - 1 and g == len(rows)
                    continue
                worst = max(share.values())
                cuts = {n: c / 2 if share.get(n, -1) >= worst - 1e-12 else c
                        for n, c in cuts.items()}
                uneven += 1
            decisions += 1
    assert uneven >= 2, "the test needs rejections to mean anything"
    assert len(set(cuts.values())) > 1, "the per-layer cuts never parted"
    assert decisions >= 4


def test_a_per_layer_paced_lineage_killed_in_a_try_resumes_to_the_same_table(
        per_layer_run, tmp_path, monkeypatch):
    ref, _ = per_layer_run
    assert len(tries(ref, 1)) >= 3  # so that the kill below lands in a later try
    out = tmp_path / "killed"
    with monkeypatch.context() as mp:
        kill_during_fit(mp, 3, 2)  # generation 0, tries 0 and 1, then mid try 2
        with pytest.raises(KeyboardInterrupt):
            run(paced(pace_per_layer=True), out)
    run(paced(pace_per_layer=True), out)
    assert table(out) == table(ref)
    assert_same_arrays(model_arrays(out / "gen_002" / "model.npz"),
                       model_arrays(ref / "gen_002" / "model.npz"))


def test_the_default_leaves_config_json_and_the_rows_as_they_were(tmp_path):
    logs = []
    rows = run(paced(generations=1), tmp_path / "default", logs)
    recorded = json.loads((tmp_path / "default" / "config.json").read_text())["config"]
    assert "pace_per_layer" not in recorded and recorded["pace_margin"] == MARGIN
    pace_keys = {k for r in rows for k in r if k.startswith("pace")}
    assert pace_keys == {"pace_cut", "pace_tries", "pace_next_cut"}
    assert all("offspring" not in r for r in rows)
    # an explicit False is the same run: the folder resumes as it is
    rows_again = run(paced(generations=1, pace_per_layer=False), tmp_path / "default", logs)
    assert rows_again == rows and any("already finished" in line for line in logs)
    recorded = json.loads((tmp_path / "default" / "config.json").read_text())["config"]
    assert "pace_per_layer" not in recorded
    # the per-layer pace is recorded, and a run folder of the other kind is refused
    with pytest.raises(UsageError, match=r"differs in: pace_per_layer"):
        run(paced(generations=1, pace_per_layer=True), tmp_path / "default")


@pytest.mark.parametrize("key,value,ok", [
    ("pace_cut_0", 0.4, True), ("pace_next_cut_7", 1.0, True), ("pace_lost_3", 0.0, True),
    ("pace_cut_0", 1.5, False), ("pace_next_cut_7", -0.1, False),
    ("pace_lost_3", float("nan"), False), ("pace_lost_3", "0.2", False),
])
def test_records_accept_the_per_layer_pace_fields_as_fractions(tmp_path, key, value, ok):
    row = {"generation": 0, "synapses": 10, "test_accuracy": 0.9, "synaptic_efficiency": 1.0,
           "cluster_efficiency_kernel": 1.0, "cluster_efficiency_filter": 1.0, key: value}
    if ok:
        assert records.validate_rows([row], tmp_path / "lineage.json") == [row]
    else:
        with pytest.raises(records.RecordError, match=rf"field '{key}' .* allowed: a number "
                                                      r"in \[0, 1\]"):
            records.validate_rows([row], tmp_path / "lineage.json")


def test_the_levers_are_reachable_from_evolve_and_sweep(tmp_path):
    from minievo import cli
    from minievo.evolution.cli import config_from_args, spec_from_args
    from minievo.evolution.sweep import config_of

    flags = ["--val-fraction", "0.2", "--pace-margin", "0.003", "--offspring-per-generation",
             "3"]
    cfg = config_from_args(cli.build_parser().parse_args(["evolve", *flags,
                                                          "--pace-per-layer"]))
    assert (cfg.pace_per_layer, cfg.offspring_per_generation, cfg.pace_margin) == \
        (True, 3, 0.003)
    assert config_from_args(cli.build_parser().parse_args(["evolve", *flags])).pace_per_layer \
        is False
    args = cli.build_parser().parse_args(
        ["sweep", "--out", str(tmp_path / "s"), "--seeds", "0,1,2", "--set", "val_fraction=0.2",
         "--set", "pace_margin=0.003", "--set", "pace_per_layer=true,false"])
    spec = spec_from_args(args)
    assert [config_of(spec, i, 2).pace_per_layer for i in (0, 1)] == [True, False]
