"""Tables and plots of a lineage, and ``minievo report DIR``."""

from __future__ import annotations

import csv
import json
import math

import pytest

from minievo import backend, models
from minievo.checkpoint import CheckpointError
from minievo.cli import main
from minievo.evolution import report
from minievo.evolution.lineage import EvolutionConfig, Lineage
from minievo.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy_vs_synapses.png", "efficiency.png", "layer_density.png", "conv_masks.png")
TABLES = ("table.csv", "table.json", "table.md")


def tiny_convnet() -> Sequential:
    return Sequential(Conv2d(1, 4, 5), MaxPool2d(2), ReLU(), Flatten(), Linear(576, 10))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-generation lineage of a tiny convnet, its plots not drawn yet."""
    out = tmp_path_factory.mktemp("report") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(models.MODELS, "tiny_report", tiny_convnet)
        mp.setitem(models.INPUT_SHAPES, "tiny_report", (1, 28, 28))
        mp.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
        cfg = EvolutionConfig(model="tiny_report", dataset="synthetic-digits", generations=2,
                              ancestor_epochs=1, offspring_epochs=1, limit_train=64,
                              limit_test=50, val_fraction=0.25)
        rows = Lineage(cfg, out, progress=False, log=lambda line: None).run()
    return out, rows


def call_main(capsys, *args):
    with backend.using_backend("numpy"):
        status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_report_re_renders_tables_and_plots(finished_run, capsys):
    out, rows = finished_run
    for name in TABLES + PLOTS:
        (out / name).unlink(missing_ok=True)
    status, stdout, err = call_main(capsys, "report", str(out))
    assert status == 0, err
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG, name
    assert json.loads((out / "table.json").read_text()) == rows
    with open(out / "table.csv", newline="") as f:
        assert [int(r["generation"]) for r in csv.DictReader(f)] == [0, 1, 2]
    md = (out / "table.md").read_text()
    assert md in stdout  # the table is printed
    assert "wrote " in stdout and "conv_masks.png" in stdout
    header = md.splitlines()[0]
    assert "val acc." in header and "test acc." in header
    assert len(md.splitlines()) == 2 + len(rows)


def test_render_of_an_interrupted_run_shows_its_finished_generations(finished_run, tmp_path):
    out, rows = finished_run
    part = tmp_path / "part"
    part.mkdir()
    (part / "lineage.json").write_text(json.dumps({"config": {}, "rows": rows[:1]}))
    paths = report.render(part)  # no model.npz here: no mask plot, the rest is drawn
    names = {p.name for p in paths}
    assert set(TABLES) <= names and "conv_masks.png" not in names
    assert json.loads((part / "table.json").read_text()) == rows[:1]


def test_report_on_a_folder_without_a_run_is_a_clear_error(tmp_path, capsys):
    for folder in (tmp_path, tmp_path / "missing"):
        status, _, err = call_main(capsys, "report", str(folder))
        assert status == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1
        assert lines[0] == (f"minievo: error: {folder}: no lineage.json here; is this a "
                            "minievo evolve run?")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_render_of_a_run_without_finished_generations_is_a_clear_error(tmp_path):
    (tmp_path / "lineage.json").write_text(json.dumps({"config": {}, "rows": []}))
    with pytest.raises(CheckpointError, match="no finished generation yet"):
        report.render(tmp_path)


def test_table_formatting():
    row = {"generation": 3, "synapses": 3440, "effective_synapses": 3000,
           "synaptic_efficiency": 125.14, "clusters_kernel": 158, "cluster_efficiency_kernel": 9.7,
           "clusters_filter": 60, "cluster_efficiency_filter": 9.67, "macs_effective": 12000,
           "test_accuracy": 0.9912, "train_seconds": 41.26}
    md = report.markdown_table([row]).splitlines()
    assert md[0] == ("| gen | synapses | effective | synaptic eff. | kernel+neuron clusters | "
                     "cluster eff. (kernel) | filter+neuron clusters | cluster eff. (filter) | "
                     "MACs/image | test acc. | train s |")
    assert md[2] == ("| 3 | 3,440 | 3,000 | 125.1x | 158 | 9.7x | 60 | 9.7x | 12,000 | 99.12% | "
                     "41.3 |")
    assert report._fmt("val_accuracy", None) == "-"
    assert report._fmt("synaptic_efficiency", math.nan) == "-"
    line = report.format_row(row)
    assert line.startswith("generation  3") and "(125.1x)" in line and "99.12%" in line
