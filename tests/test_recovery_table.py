"""benchmarks/recovery_table.py: the recovery lever over a sweep's lineages.

Wrong implementations these tests catch: a mean interval computed from the unrecovered
networks' predictions after recovery (or from the stand-in's generation folder instead of the
recovered offspring's), a mean that is not over the lineages given, and a missing recovery
that is passed over silently instead of refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from minievo.evolution import recovery, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import recovery_table  # noqa: E402

N = 400


def _lineage(root: Path, name: str, rng) -> dict:
    """A two-generation lineage that the pace ended, one rejected offspring recovered."""
    run = root / name
    accs = [(0.99, 0.99), (0.988, 0.985)]
    rows = [{"generation": g, "val_accuracy": v, "test_accuracy": t, "test_images": N,
             "synapses": 1000 >> g, "synaptic_efficiency": float(2 ** g)}
            for g, (v, t) in enumerate(accs)]
    correct = {"gen0": rng.random(N) < 0.99, "before": {}, "after": {}}
    for g in range(2):
        (run / f"gen_{g:03d}").mkdir(parents=True)
        bits = correct["gen0"] if g == 0 else rng.random(N) < 0.985
        stats.save_test_correct(run / f"gen_{g:03d}", bits)
        correct["before"][g] = correct["after"][g] = bits
    (run / "lineage.json").write_text(json.dumps({"config": {}, "rows": rows}))
    rec = run / "recovery"
    (rec / "gen_001").mkdir(parents=True)
    (rec / "gen_002" / "try_0").mkdir(parents=True)
    correct["after"][1] = rng.random(N) < 0.987
    correct["after"][2] = rng.random(N) < 0.986
    stats.save_test_correct(rec / "gen_001", correct["after"][1])
    stats.save_test_correct(rec / "gen_002" / "try_0", correct["after"][2])
    recovered = {1: {"val_accuracy": 0.989, "test_accuracy": float(correct["after"][1].mean()),
                     "train_seconds": 1.0}}
    tried = [{"label": "try_0", "val_accuracy": 0.9885,
              "test_accuracy": float(correct["after"][2].mean()), "train_seconds": 1.0,
              "row": {"synapses": 250, "synaptic_efficiency": 4.0, "val_accuracy": 0.985,
                      "test_accuracy": 0.98}}]
    summary = recovery.summarise(rows, recovered, rejected=tried, correct=correct)
    summary["epochs"] = 3
    (rec / "recovery.json").write_text(json.dumps(summary))
    return {"run": run, "correct": correct, "summary": summary}


def test_the_mean_interval_is_over_the_recovered_networks_of_every_lineage(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lins = [_lineage(tmp_path, f"seed_{s}", rng) for s in range(2)]
    for lin in lins:   # the stand-in (generation 2, try_0) is back within 0.3 points
        assert lin["summary"]["budgets"]["0.3"]["after"]["offspring"] == "try_0"
    assert recovery_table.main([str(lin["run"]) for lin in lins]) == 0
    out = capsys.readouterr().out
    after = stats.paired_bootstrap_mean([(lin["correct"]["gen0"], lin["correct"]["after"][2])
                                         for lin in lins])
    before = stats.paired_bootstrap_mean([(lin["correct"]["gen0"], lin["correct"]["before"][1])
                                          for lin in lins])
    mean_rows = [line for line in out.splitlines() if line.startswith("| **mean ± SE (2)** | 0.3")]
    assert len(mean_rows) == 2
    assert f"[{before.low:.2f}, {before.high:.2f}]" in mean_rows[0]
    assert f"[{after.low:.2f}, {after.high:.2f}]" in mean_rows[1]
    assert "| 4.0 ± 0.0x |" in mean_rows[1] and "| 2.0 ± 0.0x |" in mean_rows[0]
    assert "| seed_0 | 0.3 | after | 2 (try_0) | 4.0x |" in out
    assert "rejected try_0 * |" in out


def test_a_lineage_without_its_recovery_is_refused(tmp_path, capsys):
    lin = _lineage(tmp_path, "seed_0", np.random.default_rng(1))
    (tmp_path / "seed_1").mkdir()
    assert recovery_table.main([str(lin["run"]), str(tmp_path / "seed_1")]) == 2
    assert "seed_1" in capsys.readouterr().err
