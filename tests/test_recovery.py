"""Recovery training of a finished lineage (minievo.evolution.recovery).

Wrong implementations these tests catch: a recovery that lets masked synapses grow back; a
rate that does not reach zero or starts elsewhere than the base rate; a resumed recovery that
trains again (or differently) instead of reading its result back; a choice made on the test
set; an "after" operating point that ignores a recovered generation coming back within the
budget, or that keeps the unrecovered accuracy of a generation that was recovered.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from minievo import checkpoint as ckpt
from minievo import models, optim
from minievo.evolution import recovery, report
from minievo.evolution.lineage import EvolutionConfig, Lineage
from minievo.experiment import UsageError
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential


def _tiny() -> Sequential:
    return Sequential(Conv2d(1, 4, 5), MaxPool2d(2), ReLU(), Conv2d(4, 6, 5), MaxPool2d(2),
                      ReLU(), Flatten(), Linear(96, 24), ReLU(), Linear(24, 10))


@pytest.fixture()
def lineage_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny", _tiny)
    monkeypatch.setitem(models.INPUT_SHAPES, "tiny", (1, 28, 28))
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
    cfg = EvolutionConfig(model="tiny", dataset="synthetic-digits", generations=3,
                          ancestor_epochs=3, offspring_epochs=1, batch_size=32, lr=0.1,
                          limit_train=200, limit_test=100, val_fraction=0.2,
                          synapse_quantile=0.7, cluster_quantile=0.7)
    out = tmp_path / "run"
    Lineage(cfg, out, progress=False, log=lambda line: None).run()
    return out


def test_the_rate_falls_linearly_from_the_base_rate_to_zero():
    opt = optim.SGD(Linear(2, 2).parameters(), lr=0.2)
    sched = recovery.LinearDecayLR(opt, total=4)
    assert [sched.lr_at(i) for i in range(6)] == pytest.approx([0.2, 0.15, 0.1, 0.05, 0, 0])
    with pytest.raises(ValueError):
        recovery.LinearDecayLR(opt, total=0)


def test_recovery_keeps_the_masks_and_resumes_by_reading_its_results_back(lineage_dir):
    logs = []
    first = recovery.recover(lineage_dir, [2, 3], epochs=2, log=logs.append)
    rows = json.loads((lineage_dir / "lineage.json").read_text())["rows"]
    assert [r["generation"] for r in first["generations"]] == [2, 3]
    for r in first["generations"]:
        g = r["generation"]
        before, _ = ckpt.load(lineage_dir / f"gen_{g:03d}" / "model.npz")
        after, meta = ckpt.load(lineage_dir / "recovery" / f"gen_{g:03d}" / "model.npz")
        assert meta["recovery_epochs"] == 2
        changed = False
        for k, v in before.items():
            if k.endswith("mask"):
                np.testing.assert_array_equal(after[k], v, err_msg=k)
                w = after[k[: -len("mask")] + "weight"]
                assert not (w[v == 0] != 0).any(), f"{k}: a masked synapse grew back"
            elif k.endswith("weight"):
                changed |= not np.array_equal(after[k], v)
        assert changed, "recovery trained nothing"
        assert r["synapses"] == rows[g]["synapses"]
        assert r["val_before"] == rows[g]["val_accuracy"]
        assert 0 <= r["val_after"] <= 1 and 0 <= r["test_after"] <= 1
        assert not (lineage_dir / "recovery" / f"gen_{g:03d}" / "train.npz").exists()
    assert (lineage_dir / "recovery" / "recovery.md").read_text().startswith("# Recovery")
    # the per-image test predictions are kept, and agree with the recorded accuracy
    from minievo.evolution import stats
    for r in first["generations"]:
        bits = stats.load_test_correct(lineage_dir / "recovery" / f"gen_{r['generation']:03d}"
                                       / stats.TEST_CORRECT, rows[0]["test_images"])
        assert bits.mean() == pytest.approx(r["test_after"])
    # a second call reads every finished generation back: same numbers, no training
    calls = []
    again = recovery.recover(lineage_dir, [2, 3], epochs=2,
                             log=lambda line: calls.append(line))
    assert again == first
    assert not any("resuming" in line for line in calls)


def test_recovery_is_refused_without_a_validation_split_or_with_bad_arguments(lineage_dir,
                                                                             tmp_path):
    with pytest.raises(UsageError, match="--epochs 0"):
        recovery.recover(lineage_dir, [1], epochs=0)
    with pytest.raises(UsageError, match=r"--generations \[9\]"):
        recovery.recover(lineage_dir, [9], epochs=1)
    with pytest.raises(UsageError, match="no lineage.json"):
        recovery.recover(tmp_path / "nothing", None)
    record = json.loads((lineage_dir / "lineage.json").read_text())
    record["config"]["val_fraction"] = 0.0
    (lineage_dir / "lineage.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match="no validation split"):
        recovery.recover(lineage_dir, [1], epochs=1)


def _rows(vals, tests):
    return [{"generation": g, "val_accuracy": v, "test_accuracy": t, "synapses": 1000 >> g,
             "synaptic_efficiency": float(2 ** g)} for g, (v, t) in enumerate(zip(vals, tests))]


def test_the_generations_chosen_are_the_conservative_points_and_those_after_them():
    # validation: generation 2 is the first more than 0.3 points below generation 0
    rows = _rows([0.99, 0.989, 0.985, 0.988, 0.97, 0.96], [0.99] * 6)
    assert recovery.choose(rows, budgets=(0.3,), beyond=2) == [1, 2, 3]
    # at 1.0 points generation 4 is the first outside: 3, then 4 and 5
    assert recovery.choose(rows, budgets=(0.3, 1.0), beyond=2) == [1, 2, 3, 4, 5]
    # the test set plays no part: other test accuracies, same choice
    other = _rows([0.99, 0.989, 0.985, 0.988, 0.97, 0.96], [0.5, 0.9, 0.1, 0.2, 0.3, 0.4])
    assert recovery.choose(other, budgets=(0.3, 1.0)) == recovery.choose(rows)


def test_a_recovered_generation_back_within_the_budget_moves_the_operating_point():
    rows = _rows([0.99, 0.989, 0.985, 0.97], [0.991, 0.988, 0.984, 0.972])
    recovered = {2: {"val_accuracy": 0.988, "test_accuracy": 0.987, "train_seconds": 1.0},
                 3: {"val_accuracy": 0.975, "test_accuracy": 0.976, "train_seconds": 1.0}}
    s = recovery.summarise(rows, recovered, budgets=(0.3,))
    before, after = s["budgets"]["0.3"]["before"], s["budgets"]["0.3"]["after"]
    assert before["generation"] == 1 and not before["recovered"]
    assert before["test_loss"] == pytest.approx(0.3)
    # generation 2, recovered, is within 0.3 points on validation; generation 3 is not
    assert after["generation"] == 2 and after["recovered"]
    assert after["val_loss"] == pytest.approx(0.2) and after["test_loss"] == pytest.approx(0.4)
    assert after["synaptic_efficiency"] == 4.0
    assert [g["generation"] for g in s["generations"]] == [2, 3]


def test_the_command_line_recovers_and_prints_the_table(lineage_dir, capsys):
    from minievo import cli

    assert cli.main(["recover", str(lineage_dir), "--generations", "1", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "Operating points" in printed
    assert cli.main(["recover", str(lineage_dir), "--generations", "x"]) == 2
    assert "--generations 'x'" in capsys.readouterr().err


def _rejected(label, val, test, eff, before_val=0.95):
    return {"label": label, "val_accuracy": val, "test_accuracy": test, "train_seconds": 1.0,
            "row": {"synapses": 100, "synaptic_efficiency": eff, "val_accuracy": before_val,
                    "test_accuracy": 0.95}}


def test_a_rejected_offspring_recovered_within_the_budget_becomes_the_next_point():
    # a paced lineage that ended at generation 2; its generation 3 was rejected twice
    rows = _rows([0.99, 0.989, 0.988], [0.991, 0.988, 0.987])
    tried = [_rejected("try_0", 0.9875, 0.980, 12.0),   # sparser, back within 0.3 points
             _rejected("try_1", 0.9890, 0.970, 10.0)]   # best on validation, worse on test
    s = recovery.summarise(rows, {}, budgets=(0.3,), rejected=tried)
    before, after = s["budgets"]["0.3"]["before"], s["budgets"]["0.3"]["after"]
    assert before["generation"] == 2 and before["synaptic_efficiency"] == 4.0
    # the stand-in is the best on validation (try_1), not on test nor the sparsest
    assert after["generation"] == 3 and after["recovered"]
    assert after["synaptic_efficiency"] == 10.0
    assert after["val_loss"] == pytest.approx(0.1) and after["test_loss"] == pytest.approx(2.1)
    assert [r["stands_in"] for r in s["rejected"]] == [False, True]
    assert s["rejected_generation"] == 3
    md = recovery.markdown(s, 3)
    assert "| try_1 * | 100 | 10.0x | 95.00% | 98.90% |" in md
    # still outside the budget after recovery: the point does not move
    far = [_rejected("try_0", 0.980, 0.99, 12.0)]
    s = recovery.summarise(rows, {}, budgets=(0.3,), rejected=far)
    assert s["budgets"]["0.3"]["after"]["generation"] == 2


def test_the_rejected_offspring_are_found_in_try_order_in_both_layouts(tmp_path):
    rows = [{"generation": 0}, {"generation": 1}]
    assert recovery.rejected_offspring(tmp_path, rows) == []   # not ended by the pace
    row = json.dumps({"test_accuracy": 0.9, "val_accuracy": 0.9, "synapses": 5,
                      "synaptic_efficiency": 2.0, "cluster_efficiency_kernel": 1.0,
                      "cluster_efficiency_filter": 1.0})
    for label in ("try_0", "try_2", "try_10", "try_1/offspring_1", "try_1/offspring_0"):
        d = tmp_path / "gen_002" / label
        d.mkdir(parents=True)
        (d / "model.npz").write_bytes(b"x")
        (d / "row.json").write_text(row)
    (tmp_path / "gen_002" / "try_3").mkdir()   # interrupted: nothing finished in it
    found = recovery.rejected_offspring(tmp_path, rows)
    assert [t["label"] for t in found] == ["try_0", "try_1/offspring_0", "try_1/offspring_1",
                                           "try_2", "try_10"]
    assert found[0]["row"]["synapses"] == 5


def test_recovery_trains_the_rejected_offspring_and_skips_them_on_request(lineage_dir):
    rows = json.loads((lineage_dir / "lineage.json").read_text())["rows"]
    n = len(rows)
    # stand-ins for the pace's rejected tries: copies of the last generation
    for label in ("try_0", "try_1"):
        d = lineage_dir / f"gen_{n:03d}" / label
        d.mkdir(parents=True)
        (d / "model.npz").write_bytes((lineage_dir / f"gen_{n - 1:03d}" / "model.npz")
                                      .read_bytes())
        (d / "row.json").write_text(json.dumps(rows[-1]))
    skipped = recovery.recover(lineage_dir, [1], epochs=1, rejected=False)
    assert "rejected" not in skipped
    s = recovery.recover(lineage_dir, [1], epochs=1)
    assert [r["label"] for r in s["rejected"]] == ["try_0", "try_1"]
    for label in ("try_0", "try_1"):
        before, _ = ckpt.load(lineage_dir / f"gen_{n - 1:03d}" / "model.npz")
        after, _ = ckpt.load(lineage_dir / "recovery" / f"gen_{n:03d}" / label / "model.npz")
        assert any(not np.array_equal(after[k], v) for k, v in before.items()
                   if k.endswith("weight"))
        for k, v in before.items():
            if k.endswith("mask"):
                np.testing.assert_array_equal(after[k], v)
    # the same network, the same shuffling: both tries recover to the same accuracy
    assert s["rejected"][0]["val_after"] == s["rejected"][1]["val_after"]
    assert "rejected" in (lineage_dir / "recovery" / "recovery.md").read_text()


def test_each_operating_point_carries_the_paired_bootstrap_interval_of_its_own_networks():
    from minievo.evolution import stats

    rows = _rows([0.99, 0.989, 0.985, 0.97], [0.991, 0.988, 0.984, 0.972])
    recovered = {2: {"val_accuracy": 0.988, "test_accuracy": 0.987, "train_seconds": 1.0}}
    rng = np.random.default_rng(3)
    gen0 = rng.random(1000) < 0.99
    before = {g: rng.random(1000) < 0.98 for g in range(4)}
    after = {**before, 2: rng.random(1000) < 0.985}
    s = recovery.summarise(rows, recovered, budgets=(0.3,),
                           correct={"gen0": gen0, "before": before, "after": after})
    b, a = s["budgets"]["0.3"]["before"], s["budgets"]["0.3"]["after"]
    want_b = stats.paired_bootstrap(gen0, before[1])
    want_a = stats.paired_bootstrap(gen0, after[2])   # the recovered network's predictions
    assert b["interval"] == [round(want_b.low, 4), round(want_b.high, 4)]
    assert a["interval"] == [round(want_a.low, 4), round(want_a.high, 4)]
    assert a["interval"] != [round(x, 4) for x in (stats.paired_bootstrap(gen0, before[2]).low,
                                                   stats.paired_bootstrap(gen0, before[2]).high)]
    # without the chosen generation's predictions: no interval, said so in the table
    s = recovery.summarise(rows, recovered, budgets=(0.3,), correct={"gen0": gen0})
    assert s["budgets"]["0.3"]["after"]["interval"] is None
    assert "unavailable" in recovery.markdown(s, 3)


def test_the_stand_in_is_the_pace_own_decision_on_the_recovered_validation_accuracies():
    def t(label, val):
        return {"label": label, "val_accuracy": val}

    tried = [t("try_0", 0.9870), t("try_1", 0.9890), t("try_2", 0.9895)]
    # reference 0.99, margin 0.3 points: try_0 (largest cut) is back within; the pace takes
    # it, not the best on validation
    assert recovery.pace_choice(tried, 0.99, 0.003) == "try_0"
    # at a 0.1-point margin try_0 fails and try_1's drop is exactly 0.1 points: accepted
    assert recovery.pace_choice(tried, 0.99, 0.001) == "try_1"
    # none within: the best on validation stands in
    assert recovery.pace_choice(tried, 0.999, 0.001) == "try_2"
    # K offspring per try: each try is judged by its fittest, tries in order
    k = [t("try_0/offspring_0", 0.980), t("try_0/offspring_1", 0.9868),
         t("try_1/offspring_0", 0.989), t("try_1/offspring_1", 0.988)]
    assert recovery.pace_choice(k, 0.99, 0.003) == "try_1/offspring_0"
    assert recovery.pace_choice(k, 0.99, 0.0035) == "try_0/offspring_1"
    # summarise appends the stand-in it is given, not the best on validation
    rows = _rows([0.99, 0.989], [0.99, 0.988])
    rej = [_rejected("try_0", 0.9875, 0.980, 12.0), _rejected("try_1", 0.9890, 0.970, 10.0)]
    s = recovery.summarise(rows, {}, budgets=(0.3,), rejected=rej, stand_in="try_0")
    assert s["budgets"]["0.3"]["after"]["synaptic_efficiency"] == 12.0
    assert s["budgets"]["0.3"]["after"]["offspring"] == "try_0"
