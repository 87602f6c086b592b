"""The generation loop: outputs, masks, determinism, resume after a kill, options, bad input.

Most runs use a tiny two-conv network registered as model "tiny" for this module (the same
code paths as LeNet-5, a hundred times cheaper); one run uses the real LeNet-5.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from minievo import checkpoint as ckpt
from minievo import models, optim, training
from minievo.evolution import report
from minievo.evolution.encoding import encode
from minievo.evolution.environment import EnvironmentalFactor
from minievo.evolution.lineage import EvolutionConfig, Lineage, synapse_fractions
from minievo.evolution.synthesis import synthesize_offspring
from minievo.experiment import UsageError
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

TIMING = ("train_seconds", "eval_seconds")
PNG = b"\x89PNG\r\n\x1a\n"


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


@pytest.fixture
def no_plots(monkeypatch):
    """Skip drawing the PNGs (a second of matplotlib per run) where they are not under test."""
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])


def tiny_config(**overrides) -> EvolutionConfig:
    # 5 batches per epoch. The 0.7 quantiles keep enough of such a small network for every
    # generation to stay well above chance (synapses about 3244 -> 1668 -> 939).
    values = dict(model="tiny", dataset="synthetic-digits", generations=2, ancestor_epochs=3,
                  offspring_epochs=2, batch_size=32, lr=0.1, limit_train=160, limit_test=100,
                  synapse_quantile=0.7, cluster_quantile=0.7)
    values.update(overrides)
    return EvolutionConfig(**values)


def run(cfg, out, logs=None, backend="numpy"):
    log = logs.append if logs is not None else (lambda line: None)
    return Lineage(cfg, out, backend=backend, progress=False, log=log).run()


def table(out) -> list[dict]:
    rows = json.loads((out / "table.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def saved_model(out, g):
    arrays, meta = ckpt.load(out / f"gen_{g:03d}" / "model.npz")
    assert meta["generation"] == g
    return arrays


def masks_and_weights(arrays):
    names = sorted(k[: -len(".mask")] for k in arrays if k.endswith(".mask"))
    return {n: (arrays[n + ".mask"], arrays[n + ".weight"]) for n in names}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny lineage (3 generations), the yardstick of the resume tests."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
        rows = run(tiny_config(), out)
    return out, rows


# ----------------------------------------------------------------------------------------------
# a real run: outputs and the invariants of the masks
# ----------------------------------------------------------------------------------------------
def test_lenet5_lineage_writes_tables_plots_and_shrinking_masks(tmp_path):
    out = tmp_path / "evo"
    cfg = EvolutionConfig(dataset="synthetic-digits", generations=2, ancestor_epochs=1,
                          offspring_epochs=1, limit_train=128, limit_test=100)
    lineage = Lineage(cfg, out, progress=False, log=lambda line: None)
    rows = lineage.run()

    assert [r["generation"] for r in rows] == [0, 1, 2]
    # tables
    assert json.loads((out / "table.json").read_text()) == rows
    assert json.loads((out / "lineage.json").read_text())["rows"] == rows
    with open(out / "table.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [int(r["generation"]) for r in csv_rows] == [0, 1, 2]
    assert [int(r["synapses"]) for r in csv_rows] == [r["synapses"] for r in rows]
    md = (out / "table.md").read_text().splitlines()
    assert len(md) == 2 + 3 and md[0].startswith("| gen | synapses")
    # plots
    for name in ("accuracy_vs_synapses.png", "efficiency.png", "layer_density.png",
                 "conv_masks.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert {p.name for p in lineage.paths} >= {"table.csv", "conv_masks.png"}
    # generation 0 is the dense Caffe LeNet-5 (docs/method.md#experiment)
    g0 = rows[0]
    assert (g0["synapses"], g0["clusters_kernel"], g0["clusters_filter"]) == (430500, 1530, 580)
    assert g0["synaptic_efficiency"] == g0["cluster_efficiency_kernel"] == 1.0

    previous = None
    for g, row in enumerate(rows):
        layers = masks_and_weights(saved_model(out, g))
        assert len(layers) == 4
        live = 0
        for name, (mask, weight) in layers.items():
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert np.all(weight[mask == 0] == 0), f"generation {g}, layer {name}"
            live += int(mask.sum())
            if previous is not None:  # masks only shrink: nothing dead comes back
                assert np.all(mask <= previous[name][0]), f"generation {g}, layer {name}"
        assert live == row["synapses"]
        if g == 0:
            assert all(m.all() for m, _ in layers.values())
        previous = layers
    assert rows[0]["synapses"] > rows[1]["synapses"] > rows[2]["synapses"]
    assert rows[2]["synaptic_efficiency"] == pytest.approx(430500 / rows[2]["synapses"])
    assert 1.0 < rows[1]["synaptic_efficiency"] < rows[2]["synaptic_efficiency"]

    # re-rendering the finished run gives the same tables
    before = (out / "table.md").read_text()
    report.render(out)
    assert (out / "table.md").read_text() == before


def test_the_same_seed_gives_the_same_table(reference, tmp_path, no_plots):
    ref_out, ref_rows = reference
    out = tmp_path / "again"
    run(tiny_config(), out)
    assert table(out) == table(ref_out)
    assert len(ref_rows) == 3 and ref_rows[2]["synapses"] < ref_rows[0]["synapses"]
    last, ref_last = saved_model(out, 2), saved_model(ref_out, 2)
    for k in ref_last:
        np.testing.assert_array_equal(last[k], ref_last[k], err_msg=k)


# ----------------------------------------------------------------------------------------------
# resume after a kill
# ----------------------------------------------------------------------------------------------
def kill_during_fit(monkeypatch, call: int, after_steps: int):
    """Interrupt the ``call``-th training (0: generation 0, 1: generation 1, ...) after
    ``after_steps`` optimiser steps, checkpointing after every step as a long run would."""
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


def kill_before_recording(monkeypatch, generation: int):
    """Interrupt after generation ``generation``'s model.npz is saved, before its row is."""
    real_record = Lineage._record

    def record(self, row):
        if row["generation"] == generation:
            raise KeyboardInterrupt
        real_record(self, row)

    monkeypatch.setattr(Lineage, "_record", record)


# 5 batches per epoch, 3 epochs for generation 0, 2 for the others
KILLS = {
    "gen0-mid-epoch": lambda mp: kill_during_fit(mp, 0, 8),
    "gen2-before-a-step": lambda mp: kill_during_fit(mp, 2, 0),
    "gen1-mid-epoch2": lambda mp: kill_during_fit(mp, 1, 7),
    "gen1-end-of-epoch1": lambda mp: kill_during_fit(mp, 1, 5),
    "gen1-saved-not-recorded": lambda mp: kill_before_recording(mp, 1),
    "gen0-saved-not-recorded": lambda mp: kill_before_recording(mp, 0),
}


@pytest.mark.parametrize("kill", list(KILLS))
def test_a_killed_lineage_resumes_to_the_same_table(reference, tmp_path, monkeypatch, no_plots,
                                                    kill):
    ref_out, _ = reference
    out = tmp_path / "killed"
    with monkeypatch.context() as mp:
        KILLS[kill](mp)
        with pytest.raises(KeyboardInterrupt):
            run(tiny_config(), out)
    logs = []
    rows = run(tiny_config(), out, logs)  # the same command again
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert table(out) == table(ref_out)
    if "mid-epoch" in kill:
        assert any("resuming training at epoch" in line for line in logs), logs
    last, ref_last = saved_model(out, 2), saved_model(ref_out, 2)
    for k in ref_last:
        np.testing.assert_array_equal(last[k], ref_last[k], err_msg=k)


VARIANTS = {
    "rewind": dict(offspring_init="rewind"),
    "reinit": dict(offspring_init="reinit"),
    "target-retention-factor": dict(target_retention=0.4, retention_control="factor"),
    "target-retention-quantile": dict(  # the presets' way
        normalisation_scope="network", cluster_quantile=0.5, target_retention=0.6,
        retention_control="quantile"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_killed_lineage_resumes_in_every_mode(tmp_path, monkeypatch, no_plots, variant):
    cfg = tiny_config(offspring_epochs=1, **VARIANTS[variant])
    run(cfg, tmp_path / "ref")
    with monkeypatch.context() as mp:
        kill_during_fit(mp, 2, 0)  # generation 2 synthesised, killed before its first step
        with pytest.raises(KeyboardInterrupt):
            run(cfg, tmp_path / "killed")
    run(cfg, tmp_path / "killed")
    assert table(tmp_path / "killed") == table(tmp_path / "ref")
    last, ref_last = saved_model(tmp_path / "killed", 2), saved_model(tmp_path / "ref", 2)
    for k in ref_last:
        np.testing.assert_array_equal(last[k], ref_last[k], err_msg=k)


def test_rerunning_a_finished_lineage_changes_nothing(reference, tmp_path, no_plots):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    logs = []
    rows = run(tiny_config(), out, logs)
    assert table(out) == table(reference[0]) and len(rows) == 3
    assert any("already finished" in line for line in logs)


def test_more_generations_extend_a_finished_lineage_only_with_a_new_folder(reference,
                                                                           tmp_path, no_plots):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    with pytest.raises(UsageError, match=r"holds a different evolve run \(differs in: "
                                         r"generations\)"):
        run(tiny_config(generations=3), out)


# ----------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------
def test_several_offspring_keep_the_fittest_and_resume(tmp_path, monkeypatch, no_plots):
    cfg = tiny_config(generations=1, offspring_per_generation=2, val_fraction=0.25,
                      offspring_epochs=1)
    ref = tmp_path / "ref"
    rows = run(cfg, ref)
    assert "offspring" not in rows[0] and rows[1]["offspring"] in (0, 1)
    assert all("val_accuracy" in r for r in rows)
    kids = [json.loads((ref / "gen_001" / f"offspring_{k}" / "row.json").read_text())
            for k in (0, 1)]
    best = max(range(2), key=lambda k: (kids[k]["val_accuracy"], -k))
    assert rows[1] == kids[best]
    chosen = saved_model(ref, 1)
    kid, _ = ckpt.load(ref / "gen_001" / f"offspring_{best}" / "model.npz")
    for k in chosen:
        np.testing.assert_array_equal(chosen[k], kid[k])
    assert kids[0]["synapses"] != kids[1]["synapses"]  # two different draws

    # killed before training the second offspring, then resumed: the same table and network
    out = tmp_path / "killed"
    with monkeypatch.context() as mp:
        kill_during_fit(mp, 2, 0)  # calls: generation 0, offspring 0, offspring 1
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
    run(cfg, out)
    assert table(out) == table(ref)
    for k, v in saved_model(out, 1).items():
        np.testing.assert_array_equal(v, chosen[k], err_msg=k)


def test_several_offspring_each_start_from_the_ancestor(tmp_path, no_plots):
    # offspring_epochs=0: each offspring's saved network is its starting point
    cfg = tiny_config(generations=1, offspring_per_generation=3, val_fraction=0.25,
                      offspring_epochs=0)
    out = tmp_path / "run"
    rows = run(cfg, out)
    ancestor = saved_model(out, 0)
    for k in range(3):
        kid, _ = ckpt.load(out / "gen_001" / f"offspring_{k}" / "model.npz")
        for name, (mask, weight) in masks_and_weights(kid).items():
            live = mask != 0
            np.testing.assert_array_equal(weight[live], ancestor[name + ".weight"][live])
            assert np.all(weight[~live] == 0)
    chosen = saved_model(out, 1)
    kid, _ = ckpt.load(out / "gen_001" / f"offspring_{rows[1]['offspring']}" / "model.npz")
    for k in kid:
        np.testing.assert_array_equal(chosen[k], kid[k], err_msg=k)


def test_stopping_rule_ends_the_lineage_early(tmp_path, no_plots):
    logs = []
    # a well trained ancestor (about 75% validation accuracy), then offspring cut to a few
    # dozen synapses (chance level): the rule fires after generation 1
    cfg = tiny_config(generations=6, ancestor_epochs=6, offspring_epochs=1, lr=0.05,
                      limit_train=320, f_c=0.1, f_s=0.1, val_fraction=0.25, stop_margin=0.1)
    rows = run(cfg, tmp_path / "stop", logs)
    assert rows[0]["val_accuracy"] > 0.5
    assert 2 <= len(rows) < 7
    assert rows[-1]["val_accuracy"] < rows[0]["val_accuracy"] - 0.1
    assert all(r["val_accuracy"] >= rows[0]["val_accuracy"] - 0.1 for r in rows[:-1])
    assert any(line.startswith("stopping rule") for line in logs), logs


@pytest.mark.parametrize("mode", ["inherit", "reinit", "rewind"])
def test_offspring_init_modes(tmp_path, no_plots, mode, backend_name):
    # offspring_epochs=0: generation 1's saved network is its starting point
    out = tmp_path / mode
    run(tiny_config(generations=1, ancestor_epochs=1, offspring_epochs=0,
                    offspring_init=mode), out, backend=backend_name)
    ancestor = saved_model(out, 0)
    child = saved_model(out, 1)
    init0, _ = ckpt.load(out / "generation0_init.npz")
    for name, (mask, weight) in masks_and_weights(child).items():
        assert np.all(weight[mask == 0] == 0)
        live = mask != 0
        assert live.any() and not live.all()
        if mode == "inherit":
            np.testing.assert_array_equal(weight[live], ancestor[name + ".weight"][live])
        elif mode == "rewind":
            np.testing.assert_array_equal(weight[live], init0[name + ".weight"][live])
            np.testing.assert_array_equal(child[name + ".bias"], init0[name + ".bias"])
        else:
            assert not np.any(weight[live] == ancestor[name + ".weight"][live])
            assert not np.any(weight[live] == init0[name + ".weight"][live])
            assert np.all(child[name + ".bias"] == 0)


def test_offspring_init_modes_train(tmp_path, no_plots):
    for mode in ("reinit", "rewind"):
        rows = run(tiny_config(generations=1, ancestor_epochs=1, offspring_epochs=1,
                               offspring_init=mode), tmp_path / mode)
        assert len(rows) == 2 and rows[1]["synapses"] < rows[0]["synapses"]


def test_ancestor_from_a_checkpoint_is_generation_zero(reference, tmp_path, no_plots):
    """A pruned ancestor (a lineage's model.npz) is generation 0: efficiency 1 there."""
    out = tmp_path / "from-ancestor"
    ancestor = reference[0] / "gen_002" / "model.npz"
    rows = run(tiny_config(generations=1, ancestor_path=str(ancestor)), out)
    assert rows[0]["synapses"] == reference[1][2]["synapses"]
    assert rows[0]["synaptic_efficiency"] == 1.0
    assert rows[1]["synaptic_efficiency"] == pytest.approx(
        rows[0]["synapses"] / rows[1]["synapses"])
    assert rows[0]["train_seconds"] == 0  # not trained again
    start = saved_model(out, 0)
    arrays, _ = ckpt.load(ancestor)
    for k in arrays:
        np.testing.assert_array_equal(start[k], arrays[k])


def test_synapse_fractions():
    model = tiny_convnet()
    assert synapse_fractions(model) == {"0": 1.0, "3": 1.0, "7": 1.0, "9": 1.0}


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("f_c", 0), ("f_s", 1.5), ("f_c", -0.1),
                                         ("target_retention", 0.0),
                                         ("synapse_quantile", 2.0)])
def test_factors_outside_zero_one_are_refused(field, value):
    with pytest.raises(UsageError, match=rf"{field}.*outside \(0, 1\]|outside \(0, 1\]"):
        EvolutionConfig(**{field: value})


@pytest.mark.parametrize("overrides,message", [
    (dict(granularity="synapse"), r"unknown granularity 'synapse'; choose one of: kernel"),
    (dict(offspring_init="zero"), r"unknown offspring_init 'zero'; choose one of: inherit"),
    (dict(normalisation_scope="world"), r"unknown normalisation scope 'world'"),
    (dict(model="resnet"), r"unknown model 'resnet'; choose one of: lenet5"),
    (dict(generations=-1), r"generations must be >= 0"),
    (dict(offspring_per_generation=0), r"offspring_per_generation must be >= 1"),
    (dict(offspring_per_generation=2), r"needs a validation split: set val_fraction"),
    (dict(offspring_per_generation=2, val_fraction=1.0), r"val_fraction in \(0, 1\)"),
    (dict(stop_margin=0.05), r"needs a validation split"),
    (dict(stop_margin=-0.01, val_fraction=0.1), r"stop_margin = -0.01 is outside \[0, 1\)"),
    (dict(stop_margin=5.0, val_fraction=0.1), r"stop_margin = 5.0 is outside \[0, 1\)"),
])
def test_bad_config_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(UsageError, match=message):
        EvolutionConfig(**overrides)


def test_a_model_without_prunable_layers_is_refused():
    model = Sequential(ReLU(), Flatten())
    with pytest.raises(ValueError, match="no prunable layer"):
        encode(model)
    with pytest.raises(ValueError, match="no prunable layer"):
        synthesize_offspring(model, EnvironmentalFactor(1.0, 1.0), np.random.default_rng(0))


def _lenet300_checkpoint(path):
    model = models.build("lenet300_100")
    training.save_training_checkpoint(path, model, optim.SGD(model.parameters()),
                                      training.FitState())


@pytest.mark.parametrize("kind", ["train-checkpoint", "lineage-model", "missing", "corrupt"])
def test_an_ancestor_of_another_model_is_refused(tmp_path, no_plots, kind):
    path = tmp_path / "ancestor.npz"
    if kind == "train-checkpoint":
        _lenet300_checkpoint(path)
        message = r"ancestor\.npz: this checkpoint does not fit model 'lenet5'"
    elif kind == "lineage-model":
        ckpt.save(path, models.build("lenet300_100").state_dict(), {"model": "lenet300_100"})
        message = r"ancestor\.npz: this checkpoint does not fit model 'lenet5'"
    elif kind == "missing":
        message = r"ancestor\.npz: no such checkpoint"
    else:
        path.write_bytes(b"PK\x03\x04 broken")
        message = r"ancestor\.npz: not a readable checkpoint"
    cfg = EvolutionConfig(model="lenet5", dataset="synthetic-digits", generations=1,
                          ancestor_path=str(path), limit_train=64, limit_test=32)
    with pytest.raises(ckpt.CheckpointError, match=message):
        run(cfg, tmp_path / "out")


def test_a_folder_holding_another_run_is_refused(tmp_path, no_plots):
    out = tmp_path / "run"
    run(tiny_config(generations=0, ancestor_epochs=1), out)
    with pytest.raises(UsageError, match=r"holds a different evolve run \(differs in: seed\)"):
        run(tiny_config(generations=0, ancestor_epochs=1, seed=1), out)

    other = tmp_path / "train-run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "train", "config": {"epochs": 1}}))
    with pytest.raises(UsageError, match=r"holds a different train run"):
        run(tiny_config(), other)

    stuff = tmp_path / "stuff"
    stuff.mkdir()
    (stuff / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"not empty and holds no minievo evolve run"):
        run(tiny_config(), stuff)
    assert [p.name for p in stuff.iterdir()] == ["notes.txt"]


# ----------------------------------------------------------------------------------------------
# the validation pace (evolution.pace, docs/method.md#pace)
# ----------------------------------------------------------------------------------------------
def paced_config(**overrides) -> EvolutionConfig:
    # factor control: the target is met exactly in expectation, so each try's cut can be read
    # back from its expected retention (low quantiles: at F = 1 nearly everything is kept, so
    # every cut down to the floor is within reach)
    values = dict(generations=3, val_fraction=0.25, target_retention=0.6,
                  retention_control="factor", offspring_epochs=1, synapse_quantile=0.05,
                  cluster_quantile=0.05)
    values.update(overrides)
    return tiny_config(**values)


def test_a_pace_that_never_rejects_is_the_fixed_pace(tmp_path, no_plots):
    # margin 0.99: no offspring is rejected and every generation may grow its cut, which is
    # capped at the first: the same draws, trainings and table as target_retention alone
    fixed = run(paced_config(), tmp_path / "fixed")
    paced = run(paced_config(pace_margin=0.99), tmp_path / "paced")
    pace_keys = ("pace_cut", "pace_tries", "pace_next_cut")
    assert [{k: v for k, v in r.items() if k not in pace_keys + TIMING} for r in paced] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in fixed]
    for r in paced[1:]:
        assert r["pace_cut"] == pytest.approx(0.4) and r["pace_tries"] == 1
        assert r["pace_next_cut"] == pytest.approx(0.4)
    for g in (1, 2, 3):
        for k, v in saved_model(tmp_path / "fixed", g).items():
            np.testing.assert_array_equal(v, saved_model(tmp_path / "paced", g)[k], err_msg=k)
    assert "pace_margin" not in json.loads((tmp_path / "fixed" / "config.json").read_text())[
        "config"]


def _tries(out, g):
    tries = sorted((out / f"gen_{g:03d}").glob("try_*"), key=lambda p: int(p.name[4:]))
    return [json.loads((t / "row.json").read_text()) for t in tries]


def test_the_pace_rejects_offspring_below_the_margin_and_halves_the_cut(tmp_path, no_plots):
    logs = []
    # a tiny margin: an offspring must match generation 0 on validation; a harsh first cut
    cfg = paced_config(generations=4, target_retention=0.2, pace_margin=1e-6)
    out = tmp_path / "paced"
    rows = run(cfg, out, logs)
    v0 = rows[0]["val_accuracy"]
    assert all(r["val_accuracy"] >= v0 - 1e-6 for r in rows[1:])
    rejected = 0
    for g in range(1, len(rows) + 1):
        tries = _tries(out, g)
        if g == len(rows):  # the generation that ended the lineage, if one did
            if not tries:
                break
            assert all(t["val_accuracy"] < v0 - 1e-6 for t in tries)
        for a, t in enumerate(tries):
            start = tries[0]["pace_cut"]
            assert t["pace_cut"] == pytest.approx(start * 0.5 ** a)
            assert 1 - t["expected_retention"] == pytest.approx(t["pace_cut"], abs=2e-3)
            assert t["pace_cut"] >= 0.05 - 1e-12
        rejected += sum(t["val_accuracy"] < v0 - 1e-6 for t in tries)
        if g < len(rows):
            assert rows[g]["pace_tries"] == len(tries)
            assert rows[g] == {**tries[-1], "pace_tries": len(tries),
                               "pace_next_cut": rows[g]["pace_next_cut"]}
            # the next generation starts from the cut this one recorded
            nxt = _tries(out, g + 1)
            if nxt:
                assert nxt[0]["pace_cut"] == pytest.approx(rows[g]["pace_next_cut"])
    assert rejected >= 1, "the test needs at least one rejection to mean anything"
    # each try draws afresh (its own random stream): a gentler retry is not simply a superset
    # of the rejected offspring's synapses
    g, t0 = next((g, out / f"gen_{g:03d}") for g in range(1, len(rows) + 1)
                 if (out / f"gen_{g:03d}" / "try_1").exists())
    m0 = masks_and_weights(ckpt.load(t0 / "try_0" / "model.npz")[0])
    m1 = masks_and_weights(ckpt.load(t0 / "try_1" / "model.npz")[0])
    assert any(bool(((m0[n][0] != 0) & (m1[n][0] == 0)).any()) for n in m0)
    assert any("offspring rejected" in line for line in logs)
    if len(rows) < cfg.generations + 1:
        assert any(line.startswith("validation pace: no offspring") for line in logs), logs


def test_the_pace_decides_on_validation_never_on_the_test_set(tmp_path, no_plots):
    # another test set (size) changes every test figure and no decision
    a = run(paced_config(generations=3, target_retention=0.2, pace_margin=1e-6,
                         limit_test=100), tmp_path / "a")
    b = run(paced_config(generations=3, target_retention=0.2, pace_margin=1e-6,
                         limit_test=40), tmp_path / "b")
    keys = ("synapses", "val_accuracy", "pace_cut", "pace_tries")
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    assert [r["test_images"] for r in b] == [40] * len(b)


def test_a_paced_lineage_killed_in_a_try_resumes_to_the_same_table(tmp_path, monkeypatch,
                                                                    no_plots):
    cfg = paced_config(generations=2, target_retention=0.2, pace_margin=1e-6)
    ref = tmp_path / "ref"
    run(cfg, ref)
    n_tries = len(_tries(ref, 1)) + len(_tries(ref, 2))
    assert n_tries >= 3  # so that the kill below lands in a second or later try
    out = tmp_path / "killed"
    with monkeypatch.context() as mp:
        kill_during_fit(mp, 2, 1)  # calls: generation 0, try 0 of gen 1, then the next try
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
    run(cfg, out)
    assert table(out) == table(ref)


def test_a_pace_reference_of_several_generations_judges_every_try_against_their_mean(
        tmp_path, no_plots):
    # R = 2: generation 1 is judged against generation 0 alone, generation 2 and later
    # against the mean of generations 0 and 1, each decision exactly so
    cfg = paced_config(generations=3, target_retention=0.2, pace_margin=0.02,
                       pace_reference=2)
    out = tmp_path / "paced"
    rows = run(cfg, out)
    assert json.loads((out / "config.json").read_text())["config"]["pace_reference"] == 2
    decided = 0
    for g in range(1, len(rows) + 1):
        ref = rows[0]["val_accuracy"] if g == 1 else (
            rows[0]["val_accuracy"] + rows[1]["val_accuracy"]) / 2
        for t in _tries(out, g):
            accepted = t["val_accuracy"] >= ref - 0.02 - 1e-12
            assert accepted == (g < len(rows) and t == {k: v for k, v in rows[g].items()
                                                        if k not in ("pace_tries",
                                                                     "pace_next_cut")})
            decided += 1
    assert decided >= 2


def test_the_pace_reference_is_the_mean_of_the_first_generations():
    from minievo.evolution.pace import reference

    assert reference([0.99], 1) == 0.99
    assert reference([0.99, 0.97, 0.5], 1) == 0.99
    assert reference([0.99, 0.97, 0.5], 2) == pytest.approx(0.98)
    assert reference([0.99, 0.97], 3) == pytest.approx(0.98)  # only those that exist yet
    with pytest.raises(ValueError):
        reference([], 1)


@pytest.mark.parametrize("overrides,message", [
    (dict(pace_reference=2), r"needs --pace-margin"),
    (dict(pace_margin=0.003, val_fraction=0.1, target_retention=0.66, pace_reference=0),
     r"--pace-reference 0: allowed"),
    (dict(pace_margin=0.003, val_fraction=0.1, target_retention=0.66, pace_reference=2.5),
     r"--pace-reference 2.5: allowed"),
    (dict(pace_margin=0.003, target_retention=0.66), r"needs a validation split"),
    (dict(pace_margin=0.003, val_fraction=0.1), r"set --target-retention below 1"),
    (dict(pace_margin=0.003, val_fraction=0.1, target_retention=1.0),
     r"set --target-retention below 1"),
    (dict(pace_margin=0.0, val_fraction=0.1, target_retention=0.66),
     r"pace margin = 0.0 is outside \(0, 1\)"),
    (dict(pace_margin=1.5, val_fraction=0.1, target_retention=0.66),
     r"pace margin = 1.5 is outside \(0, 1\)"),
    (dict(pace_margin=True, val_fraction=0.1, target_retention=0.66),
     r"--pace-margin True: allowed: a number in \(0, 1\)"),
    (dict(pace_margin=0.003, val_fraction=0.1, target_retention=0.66,
          offspring_per_generation=2, parents=2), r"cannot be combined with --parents above 1"),
])
def test_a_bad_pace_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(UsageError, match=message):
        EvolutionConfig(**overrides)
