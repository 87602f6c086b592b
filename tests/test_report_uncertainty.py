"""The reports' uncertainty: standard errors, paired bootstrap intervals of the test losses, both
selection rules, the parameter column, and plots whose tick labels do not overlap."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from minievo import cli
from minievo.evolution import report, stats, sweep
from minievo.evolution.lineage import EvolutionConfig, Lineage

N = 400  # test images of the hand-written lineages


def row(g, acc, val, eff, synapses=430_500, **extra):
    """A hand-written generation record (LeNet-5 counts: 20 + 50 filters, 510 neurons)."""
    return dict(generation=g, test_accuracy=acc, val_accuracy=val, synaptic_efficiency=eff,
                cluster_efficiency_kernel=1.0, cluster_efficiency_filter=1.0,
                synapses=synapses, filters=70, neurons=510, **extra)


def predictions(acc: float, seed: int) -> np.ndarray:
    """N per-image results with exactly round(acc * N) right, in a seeded order."""
    right = np.zeros(N, dtype=bool)
    right[: round(acc * N)] = True
    return np.random.default_rng(seed).permutation(right)


# generation 0, 1 (leaves the 0.1-point validation band), 2 (back in), 3 (0.5 below)
LINEAGE = [(0.9900, 0.9800, 1.0), (0.9875, 0.9785, 2.0), (0.9850, 0.9795, 4.0),
           (0.9800, 0.9750, 8.0)]


def write_lineage(folder, seed, with_predictions, finished=True, config=None):
    folder.mkdir(parents=True)
    rows, preds = [], {}
    for g, (acc, val, eff) in enumerate(LINEAGE):
        rows.append(row(g, acc, val, eff, synapses=round(430_500 / eff), test_images=N,
                        val_images=200))
        if with_predictions:
            # the offspring keep the ancestor's answers, one of its right answers in 100
            # turned wrong per 0.25 points lost (a paired structure, as in a lineage)
            pred = predictions(LINEAGE[0][0], seed) if g == 0 else preds[0].copy()
            lost = round((LINEAGE[0][0] - acc) * N)
            pred[np.flatnonzero(preds.get(0, pred))[:lost]] = False
            preds[g] = pred
            (folder / f"gen_{g:03d}").mkdir()
            stats.save_test_correct(folder / f"gen_{g:03d}", pred)
    (folder / "lineage.json").write_text(json.dumps({"config": config or {}, "rows": rows}))
    if finished:
        (folder / "done.json").write_text("{}")
    return rows, preds


@pytest.fixture
def hand_sweep(tmp_path):
    spec = sweep.make_spec("paper-mnist", [0, 1], dict(dataset="synthetic-digits",
                                                       generations=3, val_fraction=0.25))
    out = tmp_path / "s"
    sweep.prepare_folder(out, spec)
    made = {seed: write_lineage(out / "setting_0" / f"seed_{seed}", seed, seed == 0)
            for seed in (0, 1)}
    return out, spec, made


# ----------------------------------------------------------------------------------------------
# equal_loss: both rules, SE and intervals
# ----------------------------------------------------------------------------------------------
def test_both_rules_on_a_lineage_that_leaves_the_band_and_returns():
    rows = [row(g, a, v, e) for g, (a, v, e) in enumerate(LINEAGE)]
    eq = sweep.equal_loss(rows)
    # 0.1 points: generation 1 is 0.15 below on validation, generation 2 back within 0.05
    assert eq["val_chosen_0.1"]["generation"] == 2
    assert eq["val_first_out_0.1"] is None
    # 0.3 points: 1 and 2 within, 3 is 0.5 below
    assert eq["val_chosen_0.3"]["generation"] == eq["val_first_out_0.3"]["generation"] == 2
    assert eq["val_chosen_1.0"]["generation"] == eq["val_first_out_1.0"]["generation"] == 3
    assert "test_chosen_0.1" not in eq  # with validation, the rules read validation only


def test_without_validation_the_rules_are_reported_on_the_test_set():
    rows = [{k: v for k, v in row(g, a, v, e).items() if k != "val_accuracy"}
            for g, (a, v, e) in enumerate(LINEAGE)]
    eq = sweep.equal_loss(rows)
    assert eq["test_chosen_0.3"]["generation"] == 1  # 0.25 below; generation 2 is 0.5 below
    assert eq["test_first_out_0.3"]["generation"] == 1
    assert eq["test_first_out_0.1"] is None and "val_chosen_0.1" not in eq


def test_an_operating_point_carries_its_se_parameters_and_paired_interval():
    rows = [row(g, a, v, e, test_images=N, parameters=p)
            for g, (a, v, e), p in zip(range(4), LINEAGE, (431_080, 215_000, 108_000, 54_000))]
    preds = {0: predictions(0.99, 0), 2: predictions(0.985, 0)}
    eq = sweep.equal_loss(rows, predictions=preds)
    pick = eq["val_chosen_0.3"]
    assert pick["test_error_se"] == pytest.approx(100 * np.sqrt(0.985 * 0.015 / N))
    assert pick["parameter_efficiency"] == pytest.approx(431_080 / 108_000)
    expect = stats.paired_bootstrap(preds[0], preds[2]).as_dict()
    assert {k: pick["interval"][k] for k in expect} == expect
    assert pick["interval"]["matches_record"]  # 0.50 points from the predictions, as recorded
    assert eq["val_chosen_1.0"]["interval"] is None  # generation 3 has no predictions


# ----------------------------------------------------------------------------------------------
# the sweep's aggregate report
# ----------------------------------------------------------------------------------------------
def test_the_aggregate_report_shows_se_intervals_both_rules_and_parameters(hand_sweep):
    out, spec, made = hand_sweep
    rep = sweep.write_report(out, spec, plots=False)
    s = rep["settings"][0]
    assert s["lineages_with_predictions"] == [0]
    assert "derived from the records" in s["notes"]["parameters"][0]
    g0 = s["per_generation"][0]
    assert g0["parameters_mean"] == 430_500 + 70 + 510
    assert g0["test_error_se"] == pytest.approx(100 * np.sqrt(2 * 0.99 * 0.01 / N) / 2)
    # seed 0 has predictions: its operating point has an interval, seed 1's has none, so the
    # mean over both has none
    per_seed = s["equal_loss_per_seed"]
    chosen = per_seed["0"]["val_chosen_0.3"]
    assert chosen["interval"] == stats.paired_bootstrap(made[0][1][0], made[0][1][2]).as_dict() \
        | {"matches_record": True}
    assert per_seed["1"]["val_chosen_0.3"]["interval"] is None
    assert s["equal_loss"]["val_chosen_0.3"]["interval"] is None
    # the conservative rule: both lineages leave the 0.1 band at generation 1
    first_out = s["equal_loss"]["val_first_out_0.1"]
    assert first_out["reached"] == 0 and first_out["synaptic_efficiency_mean"] == 1.0
    assert s["equal_loss"]["val_chosen_0.1"]["synaptic_efficiency_mean"] == 4.0

    md = (out / "aggregate.md").read_text()
    assert "| gen | seeds | synapses | parameters (with biases) |" in md
    assert "| 0 | 2 | 430,500 ± 0 | 431,080 ± 0 |" in md
    assert "| 0.1 points | validation | last within | 2/2 | 4.0 ± 0.0x |" in md
    assert "| 0.1 points | validation | first outside − 1 | 0/2 | 1.0 ± 0.0x |" in md
    assert "last within` = the last generation" in md and "conservative" in md
    lo, hi = chosen["interval"]["low"], chosen["interval"]["high"]
    assert f"| 0 | 3 | all generations | 8.0x | 2.00 ± 0.70% | 2, 4.0x, 0.50 | 2, 4.0x, 0.50 " \
           f"| [{lo:.2f}, {hi:.2f}]; [{lo:.2f}, {hi:.2f}] |" in md
    assert "| 1 | 3 | all generations | 8.0x | 2.00 ± 0.70% | 2, 4.0x, 0.50 | 2, 4.0x, 0.50 " \
           "| unavailable; unavailable |" in md
    assert "test set: 400 images" in md


def test_the_mean_interval_when_every_lineage_has_its_predictions(hand_sweep):
    out, spec, made = hand_sweep
    folder = out / "setting_0" / "seed_1"
    for g in range(4):
        (folder / f"gen_{g:03d}").mkdir()
        stats.save_test_correct(folder / f"gen_{g:03d}", made[0][1][g])  # same answers
    s = sweep.aggregate(out, spec)["settings"][0]
    expect = stats.paired_bootstrap_mean([(made[0][1][0], made[0][1][2])] * 2).as_dict()
    assert s["equal_loss"]["val_chosen_0.3"]["interval"] == expect | {"matches_record": True}
    assert "unavailable" not in sweep.markdown({"preset": "paper-mnist", "seeds": [0, 1],
                                                "base": {}, "settings": [s]}).split(
        "At equal accuracy loss")[1].split("Per lineage")[0]


def test_predictions_that_disagree_with_the_record_are_flagged(hand_sweep):
    out, spec, made = hand_sweep
    pred = made[0][1][2].copy()
    pred[np.flatnonzero(pred)[0]] = False  # one image more wrong than the record says
    stats.save_test_correct(out / "setting_0" / "seed_0" / "gen_002", pred)
    md = sweep.markdown(sweep.aggregate(out, spec))
    assert "(recomputed predictions differ from the record)" in md


# ----------------------------------------------------------------------------------------------
# a lineage's own report
# ----------------------------------------------------------------------------------------------
def test_complete_rows_fills_what_an_old_record_lacks_for_display_only(tmp_path):
    rows = [row(0, 0.99, 0.98, 1.0), row(1, 0.98, 0.97, 2.0, parameters=1234)]
    for r in rows:
        r.pop("val_accuracy")
    shown, notes = report.complete_rows(tmp_path, rows, {"model": "lenet5", "dataset": "mnist",
                                                        "limit_test": None})
    assert shown[0]["parameters"] == 430_500 + 580 and shown[1]["parameters"] == 1234
    assert shown[0]["test_images"] == 10_000
    assert "parameters" not in rows[0] and "test_images" not in rows[0]  # record untouched
    assert "derived from the records" in notes["parameters"] and "recorded" in \
        notes["parameters"]
    assert "predates test_images" in notes["test_images"]
    shown, notes = report.complete_rows(tmp_path, rows[:1], {"model": "lenet5",
                                                             "dataset": "mnist",
                                                             "limit_test": 500})
    assert shown[0]["test_images"] == 500
    # no architecture to read biases from, no model.npz: unavailable
    shown, notes = report.complete_rows(tmp_path, rows[:1], {})
    assert "parameters" not in shown[0] and notes["parameters"] == "unavailable"


def test_render_writes_se_parameters_and_a_summary_with_both_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
    rows, preds = write_lineage(tmp_path / "run", 0, True,
                                config={"model": "lenet5", "dataset": "synthetic-digits"})
    paths = report.render(tmp_path / "run")
    table = (tmp_path / "run" / "table.md").read_text().splitlines()
    assert "parameters (with biases)" in table[0]
    assert "| 99.00 ± 0.50% | 98.00 ± 0.99% |" in table[2]
    assert json.loads((tmp_path / "run" / "table.json").read_text()) == rows  # as recorded
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert paths[-1].name == "summary.md"
    assert "Test set: 400 images; validation split: 200 images" in summary
    ci = stats.paired_bootstrap(preds[0], preds[2])
    assert f"| 0.3 points | validation | last within | 2 | 4.0x | 4.0x | 1.50 ± 0.61% | 0.50 | " \
           f"[{ci.low:.2f}, {ci.high:.2f}] |" in summary
    assert "| 0.1 points | validation | first outside − 1 | - | 1.0x (none qualifies) |" \
        in summary


# ----------------------------------------------------------------------------------------------
# a real lineage stores its predictions and parameters; the report can recompute them
# ----------------------------------------------------------------------------------------------
def test_a_lineage_stores_predictions_and_the_report_recomputes_them(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])
    out = tmp_path / "evo"
    cfg = EvolutionConfig(dataset="synthetic-digits", generations=1, ancestor_epochs=1,
                          offspring_epochs=1, limit_train=64, limit_test=50)
    rows = Lineage(cfg, out, progress=False, log=lambda line: None).run()
    for r in rows:
        found = stats.find_test_correct(out, r)
        assert found.shape == (50,) and found.mean() == pytest.approx(r["test_accuracy"])
        assert r["parameters"] == stats.derive_parameters(r, stats.bias_layout("lenet5",
                                                                               "mnist"))
    assert rows[0]["parameters"] == 431_080
    saved = (out / "gen_001" / "test_correct.npy").read_bytes()
    (out / "gen_001" / "test_correct.npy").unlink()
    assert cli.main(["report", str(out), "--recompute-predictions"]) == 0
    assert (out / "gen_001" / "test_correct.npy").read_bytes() == saved
    assert "per-image test predictions written for generation(s) 1" in capsys.readouterr().out
    found = stats.recompute_predictions(out, log=lambda line: None)
    assert found == {"written": [], "present": [0, 1], "no_model": [], "mismatch": []}


# ----------------------------------------------------------------------------------------------
# plots: tick labels that do not overlap, the validation curve, bands, published points
# ----------------------------------------------------------------------------------------------
def _drawn_tick_labels(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    low, high = sorted(ax.get_xlim())
    labels, minor = [], []
    for is_minor in (False, True):  # every label drawn in view, major and minor ticks alike
        for t, loc in zip(ax.xaxis.get_ticklabels(minor=is_minor),
                          ax.xaxis.get_ticklocs(minor=is_minor)):
            if t.get_visible() and t.get_text() and low <= loc <= high:
                labels.append((t.get_text(), t.get_window_extent(renderer)))
                if is_minor:
                    minor.append(t.get_text())
    return labels, minor


def _assert_apart(labels):
    assert len(labels) >= 2, labels
    boxes = sorted((b.x0, b.x1, text) for text, b in labels)
    for (_, right, a), (left, _, b) in zip(boxes, boxes[1:]):
        assert right < left, f"tick labels {a!r} and {b!r} overlap"


@pytest.mark.parametrize("last", [1_885, 30_000, 150_000, 280_000, 400_000])
def test_accuracy_plot_tick_labels_do_not_overlap(last):
    syn = np.geomspace(430_500, last, 14).round().astype(int).tolist()
    rows = [row(g, 0.99 - 0.0005 * g, 0.98 - 0.0004 * g, 430_500 / s, synapses=s,
                test_images=10_000, val_images=6_000) for g, s in enumerate(syn)]
    fig = report.accuracy_figure(rows)
    labels, minor = _drawn_tick_labels(fig)
    _assert_apart(labels)
    assert minor == []
    assert all(re.fullmatch(r"\d+(\.\d+)?[kM]?", text) for text, _ in labels), labels
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["test accuracy", "generation 0 test ± SE (10,000 images)",
                      "validation accuracy", "generation 0 validation ± SE (6,000 images)"]
    assert ax.xaxis_inverted()


def test_the_wide_paper_range_gets_plain_labels():
    ticks = report.count_ticks(1_885, 430_500)
    assert [report.short_count(t) for t in ticks] == ["2k", "5k", "10k", "20k", "50k", "100k",
                                                      "200k"]
    assert report.count_ticks(300_000, 430_500) == [300_000, 400_000]
    assert report.short_count(1_500) == "1.5k" and report.short_count(2e6) == "2M"
    with pytest.raises(ValueError, match="0 < low <= high"):
        report.count_ticks(0, 10)


def test_the_sweep_plot_places_the_published_points(hand_sweep):
    out, spec, _ = hand_sweep
    fig = sweep.error_figure(out, sweep.aggregate(out, spec))
    labels, minor = _drawn_tick_labels(fig)
    _assert_apart(labels)
    assert minor == []
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert not any("arXiv" in t for t in legend)  # synthetic digits: no published points

    mnist = sweep.make_spec("paper-mnist", [0, 1], dict(generations=3, val_fraction=0.25))
    (out / "sweep.json").write_text(json.dumps({"kind": "sweep", "spec": mnist}))
    fig = sweep.error_figure(out, sweep.aggregate(out, mnist))
    labels, _ = _drawn_tick_labels(fig)
    _assert_apart(labels)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for name, error, factor in sweep.PUBLISHED:
        assert f"{name}: {error}%, {factor}x fewer weights" in legend
    assert any("docs/method.md#comparisons" in t for t in legend)
    assert any("generation 0 mean test error ± SE" in t for t in legend)
    points = {(round(line.get_xdata()[0], 3), line.get_ydata()[0])
              for line in fig.axes[0].lines if len(line.get_xdata()) == 1}
    assert (round(430_500 / 280, 3), 0.75) in points
    assert (round(430_500 / 12, 3), 0.77) in points
