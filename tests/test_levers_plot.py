"""benchmarks/levers_plot.py: the levers' operating points in one figure.

Wrong implementations these tests catch: a point chosen by the last generation within the
budget instead of the conservative rule (a lineage that leaves the band and comes back), a
point read off the test set, seeds read in the order of their names (seed_10 before seed_2),
and a folder without lineages drawn as an empty lever instead of refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import levers_plot  # noqa: E402


def _lineage(folder: Path, seed: int, vals: list[float], tests: list[float]) -> None:
    d = folder / "setting_0" / f"seed_{seed}"
    d.mkdir(parents=True)
    rows = [{"generation": g, "val_accuracy": v, "test_accuracy": t, "val_images": 1000,
             "test_images": 1000, "synaptic_efficiency": float(2 ** g)}
            for g, (v, t) in enumerate(zip(vals, tests, strict=True))]
    (d / "lineage.json").write_text(json.dumps({"config": {}, "rows": rows}))


def test_points_are_conservative_on_validation_in_seed_order(tmp_path):
    # seed 10 leaves 0.3 points on validation at generation 2 and comes back at generation 3;
    # its test accuracy would allow generation 3 throughout
    _lineage(tmp_path, 10, [0.99, 0.989, 0.985, 0.988], [0.99, 0.99, 0.99, 0.99])
    _lineage(tmp_path, 2, [0.99, 0.988, 0.9875], [0.99, 0.985, 0.98])
    pts = levers_plot.operating_points(tmp_path)
    assert [p["seed"] for p in pts] == [2, 10]
    assert [p["generation"] for p in pts] == [2, 1]
    assert [p["efficiency"] for p in pts] == [4.0, 2.0]
    assert pts[0]["test_loss"] == pytest.approx(1.0)


def test_the_figure_is_written_and_an_empty_folder_refused(tmp_path, capsys):
    _lineage(tmp_path / "a", 0, [0.99, 0.989], [0.99, 0.988])
    out = tmp_path / "fig" / "levers.png"
    assert levers_plot.main(["--out", str(out), f"one={tmp_path / 'a'}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seed 0 2.0x +0.20" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no lineage.json"):
        levers_plot.main(["--out", str(out), f"none={tmp_path / 'empty'}"])
