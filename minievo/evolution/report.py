"""Tables and plots of a lineage: CSV, JSON, Markdown and PNG, from the saved run alone.

``minievo report DIR`` calls :func:`render` to draw everything again from ``DIR/lineage.json``
and the saved generation networks, so a finished (or interrupted) run can be re-rendered
without re-running anything. ``summary.md`` gives the lineage's operating points by both
selection rules, each test loss with its paired bootstrap interval (:mod:`.stats`), and says
how many images each split has and where the parameter counts come from.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from minievo.checkpoint import atomic_write_bytes, atomic_write_text
from minievo.evolution import records

# The columns of the per-generation table, in order, with their Markdown headers.
TABLE_COLUMNS = [
    ("generation", "gen"),
    ("synapses", "synapses"),
    ("parameters", "parameters (with biases)"),
    ("effective_synapses", "effective"),
    ("synaptic_efficiency", "synaptic eff."),
    ("clusters_kernel", "kernel+neuron clusters"),
    ("cluster_efficiency_kernel", "cluster eff. (kernel)"),
    ("clusters_filter", "filter+neuron clusters"),
    ("cluster_efficiency_filter", "cluster eff. (filter)"),
    ("macs_effective", "MACs/image"),
    ("test_accuracy", "test acc."),
    ("val_accuracy", "val acc."),
    ("pace_cut", "cut"),
    ("pace_tries", "tries"),
    ("train_seconds", "train s"),
]


def _fmt(key: str, value, n: int | None = None) -> str:
    """One table cell; an accuracy measured on ``n`` images carries its binomial SE."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key.endswith("accuracy") and n:
        from minievo.evolution.stats import binomial_se

        return f"{100 * value:.2f} ± {100 * binomial_se(value, n):.2f}%"
    if key.endswith("accuracy") or key == "pace_cut":
        return f"{100 * value:.2f}%"
    if "efficiency" in key:
        return f"{value:.1f}x"
    if isinstance(value, float):
        return f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


#: The key holding the number of images each accuracy was measured on.
_IMAGES = {"test_accuracy": "test_images", "val_accuracy": "val_images"}


def format_row(row: dict) -> str:
    """One log line per generation (accuracies with their binomial SE when n is recorded)."""
    parts = [f"generation {row['generation']:>2}",
             f"synapses {row['synapses']:>7,} ({row['synaptic_efficiency']:.1f}x)",
             f"clusters k/f {row['clusters_kernel']}/{row['clusters_filter']}",
             f"test acc {_fmt('test_accuracy', row['test_accuracy'], row.get('test_images'))}"]
    if "val_accuracy" in row:
        parts.append(f"val acc {_fmt('val_accuracy', row['val_accuracy'], row.get('val_images'))}")
    parts.append(f"train {row['train_seconds']:.0f}s")
    return "  ".join(parts)


def markdown_table(rows: list[dict]) -> str:
    """The per-generation table in Markdown (the columns that some row holds).

    Accuracies carry their binomial standard error when the row records how many images they
    were measured on (``test_images``, ``val_images``).
    """
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---:" for _ in cols) + "|"]
    for r in rows:
        cells = (_fmt(k, r.get(k), r.get(_IMAGES.get(k, ""))) for k, _ in cols)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV text; the columns are every key of any row, in order of appearance."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_tables(out, rows: list[dict], shown: list[dict] | None = None) -> None:
    """table.csv (every column), table.json and table.md (the main columns).

    ``shown``: the rows as table.md shows them, when the report completes an older record
    (its parameter count, its test set size; see :func:`complete_rows`); table.csv and
    table.json always hold the record as it is.
    """
    out = Path(out)
    atomic_write_text(out / "table.csv", csv_text(rows))
    atomic_write_text(out / "table.json", json.dumps(rows, indent=1))
    atomic_write_text(out / "table.md", markdown_table(rows if shown is None else shown))


def short_count(value: float) -> str:
    """A count as a short tick label: 430000 -> "430k", 1500 -> "1.5k", 2e6 -> "2M"."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def count_ticks(low: float, high: float, max_ticks: int = 7) -> list[float]:
    """A few round tick positions for a log axis of counts from ``low`` to ``high``.

    The densest of 1-9, 1-2-5 and 1 per decade that puts at most ``max_ticks`` ticks inside
    [low, high]; every other decade beyond that; the two ends when no round value falls inside.
    """
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"low and high must satisfy 0 < low <= high, got {low!r}, {high!r}")
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for subs in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1,)):
        ticks = [s * 10.0 ** k for k in range(first, last + 1) for s in subs
                 if low <= s * 10.0 ** k <= high]
        if 2 <= len(ticks) <= max_ticks:
            return ticks
        if len(ticks) > max_ticks and subs == (1,):
            step = math.ceil(len(ticks) / max_ticks)
            return ticks[::step]
    return sorted({low, high})


def set_count_axis(axis, values) -> None:
    """Put a log scale of counts on ``axis`` (``ax.xaxis``) with a few plain labels ("430k")
    and no minor labels, so that the labels never overlap."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    vals = [float(v) for v in values if v is not None and v > 0]
    if not vals:
        return
    axis.set_major_locator(FixedLocator(count_ticks(min(vals), max(vals))))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: short_count(v)))
    axis.set_minor_formatter(NullFormatter())


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_lineage(out, rows: list[dict], masks: dict | None = None) -> list[Path]:
    """Write the lineage's plots as PNG; returns their paths.

    accuracy_vs_synapses.png, efficiency.png, layer_density.png, and conv_masks.png when the
    conv masks of the last generation are given (``masks``: layer name -> 4-D mask array).
    """
    # Figures without pyplot: nothing is shown, and the caller's backend (a notebook's inline
    # one, say) is left alone.
    from matplotlib.figure import Figure

    def subplots(*args, figsize, **kwargs):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    out = Path(out)
    gens = [r["generation"] for r in rows]
    written = []

    written.append(out / "accuracy_vs_synapses.png")
    _savefig(accuracy_figure(rows), written[-1])

    fig, ax = subplots(figsize=(6, 4))
    ax.plot(gens, [r["synaptic_efficiency"] for r in rows], "o-", label="synaptic")
    ax.plot(gens, [r["cluster_efficiency_kernel"] for r in rows], "s-",
            label="cluster (kernel+neuron)")
    ax.plot(gens, [r["cluster_efficiency_filter"] for r in rows], "^-",
            label="cluster (filter+neuron)")
    ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("efficiency (x fewer than generation 0)")
    ax.set_title("Synaptic and cluster efficiency per generation")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    written.append(out / "efficiency.png")
    _savefig(fig, written[-1])

    dens_keys = [k for k in rows[0] if k.startswith("density_")]
    if dens_keys:
        fig, ax = subplots(figsize=(6, 4))
        for k in dens_keys:
            ax.plot(gens, [100 * r[k] for r in rows], "o-", label=f"layer {k[8:]}")
        ax.set_yscale("log")
        ax.set_xlabel("generation")
        ax.set_ylabel("live synapses (% of dense)")
        ax.set_title("Per-layer density")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        written.append(out / "layer_density.png")
        _savefig(fig, written[-1])

    conv = {k: v for k, v in (masks or {}).items() if np.ndim(v) == 4}
    if conv:
        fig, axes = subplots(1, len(conv), figsize=(5 * len(conv), 4), squeeze=False)
        for ax, (name, m) in zip(axes[0], conv.items()):
            kernels = (np.asarray(m) != 0).sum(axis=(2, 3))  # live synapses per (out, in) kernel
            im = ax.imshow(kernels, aspect="auto", cmap="viridis", interpolation="nearest")
            ax.set_xlabel("input map")
            ax.set_ylabel("output map")
            ax.set_title(f"layer {name}: live synapses per kernel")
            fig.colorbar(im, ax=ax)
        written.append(out / "conv_masks.png")
        _savefig(fig, written[-1])
    return written


def accuracy_figure(rows: list[dict]):
    """The figure of accuracy_vs_synapses.png (a matplotlib Figure, no pyplot).

    Test (and, when every row has it, validation) accuracy against synapses on a reversed log
    axis with a few plain tick labels, and generation 0's band: its accuracy +- its binomial
    standard error where the number of images is known (a dotted line where it is not).

    Args:
        rows: the generations' records (``synapses``, ``test_accuracy``, optionally
            ``val_accuracy``, ``test_images``, ``val_images``).
    """
    from matplotlib.figure import Figure

    from minievo.evolution.stats import binomial_se

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    syn = [r["synapses"] for r in rows]
    gens = [r["generation"] for r in rows]
    curves = [("test_accuracy", "test_images", "o-", "C0", "test")]
    if all("val_accuracy" in r for r in rows):
        curves.append(("val_accuracy", "val_images", "s--", "C1", "validation"))
    for key, n_key, style, colour, name in curves:
        acc = [100 * r[key] for r in rows]
        ax.plot(syn, acc, style, color=colour, label=f"{name} accuracy")
        p0, n = rows[0][key], rows[0].get(n_key)
        if n:
            se = 100 * binomial_se(p0, n)
            ax.axhspan(100 * p0 - se, 100 * p0 + se, color=colour, alpha=0.15, linewidth=0,
                       label=f"generation 0 {name} ± SE ({n:,} images)")
        else:
            ax.axhline(100 * p0, color=colour, alpha=0.5, linewidth=1, linestyle=":",
                       label=f"generation 0 {name}")
    for g, s, a in zip(gens, syn, [100 * r["test_accuracy"] for r in rows]):
        ax.annotate(str(g), (s, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    set_count_axis(ax.xaxis, syn)
    ax.invert_xaxis()
    ax.set_xlabel("synapses (log scale; generations left to right)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against network size")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------------------------
# what an older record lacks, and the lineage's summary with its uncertainty
# ----------------------------------------------------------------------------------------------
def _record_config(out: Path) -> dict:
    """The lineage's configuration as recorded (lineage.json, else config.json); {} if none."""
    for name, pick in (("lineage.json", lambda d: d.get("config")),
                       ("config.json", lambda d: d.get("config"))):
        try:
            # bounded, a regular file (a RecordError is a ValueError: skipped like bad JSON)
            found = pick(records.load_json(Path(out) / name, records.MAX_LINEAGE_BYTES, name))
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue
        if isinstance(found, dict) and found:
            return found
    return {}


def configured_test_images(config: dict) -> int | None:
    """The test set size a configuration implies (the data set's test split, or limit_test)."""
    import data_loaders as dl

    try:
        n = dl.DATASETS[dl.dataset_name(config["dataset"])].n_test
    except (KeyError, ValueError, TypeError):
        return None
    limit = config.get("limit_test")
    return min(n, limit) if isinstance(limit, int) and limit > 0 else n


def complete_rows(out, rows: list[dict], config: dict | None = None
                  ) -> tuple[list[dict], dict[str, str]]:
    """The rows as the report shows them: what an older record lacks, filled in for display.

    * ``parameters`` (with biases), when the record lacks it: derived from the record's counts
      (synapses + live filters and/or live neurons, as the architecture's layers have biases;
      :func:`minievo.evolution.stats.derive_parameters`), else counted from the generation's
      ``model.npz`` (:func:`minievo.evolution.stats.parameters_with_biases`).
    * ``test_images``, when the record lacks it: the test set size its configuration implies.

    The lineage record itself is never changed.

    Args:
        out: the lineage folder.
        rows: its records, one per generation.
        config: its configuration (``lineage.json``'s ``config``).

    Returns:
        (rows to show, notes): notes maps ``parameters`` / ``test_images`` to a sentence saying
        where the values came from.
    """
    from minievo.checkpoint import CheckpointError, load
    from minievo.evolution import stats

    config = config or {}
    layout = None
    if config.get("model") and config.get("dataset") and not config.get("architecture"):
        layout = stats.bias_layout(config["model"], config["dataset"])
    implied = configured_test_images(config)
    sources: dict[str, set] = {"parameters": set(), "test_images": set()}
    shown = []
    for r in rows:
        row = dict(r)
        if "parameters" in r:
            sources["parameters"].add("recorded")
        else:
            value = stats.derive_parameters(r, layout)
            if value is not None:
                kinds = [k for k in ("filters", "neurons") if layout[k]]
                sources["parameters"].add(
                    "derived from the records (synapses" + "".join(f" + live {k}" for k in kinds)
                    + f": the layers of {config['model']} with a bias)")
            else:
                path = Path(out) / f"gen_{r['generation']:03d}" / "model.npz"
                try:
                    value = stats.parameters_with_biases(load(path)[0]) if path.is_file() \
                        else None
                except (CheckpointError, OSError, ValueError):
                    value = None
                sources["parameters"].add("counted from each generation's model.npz"
                                          if value is not None else "unavailable")
            if value is not None:
                row["parameters"] = value
        if "test_images" in r:
            sources["test_images"].add("recorded")
        elif implied is not None:
            row["test_images"] = implied
            sources["test_images"].add(f"from the configuration ({config['dataset']}"
                                       + (f", limit_test {config['limit_test']}"
                                          if config.get("limit_test") else ", the whole test "
                                          "split") + "): the record predates test_images")
        shown.append(row)
    notes = {k: "; ".join(sorted(v)) for k, v in sources.items() if v}
    return shown, notes


def lineage_summary(out, rows: list[dict], notes: dict | None = None) -> str:
    """summary.md of a lineage: the test set's size, the operating points by both selection
    rules, each test loss with its paired bootstrap interval, and where the parameter counts
    come from. ``rows`` as :func:`complete_rows` shows them."""
    from minievo.evolution import stats, sweep

    notes = notes or {}
    out = Path(out)
    first = rows[0]
    n, nv = first.get("test_images"), first.get("val_images")
    preds = {}
    for r in rows:
        try:
            found = stats.find_test_correct(out, r)
        except (OSError, ValueError):
            found = None
        if found is not None:
            preds[r["generation"]] = found
    eq = sweep.equal_loss(rows, predictions=preds)
    lines = ["# Lineage summary", "",
             f"Test set: {f'{n:,}' if n else 'an unknown number of'} images"
             + (f" ({notes['test_images']})" if notes.get("test_images", "recorded")
                != "recorded" else "")
             + (f"; validation split: {nv:,} images carved from the training set." if nv
                else "; no validation split."),
             "Every accuracy in table.md carries its binomial standard error sqrt(p(1 − p)/n)"
             + (f"; at generation 0 it is {100 * stats.binomial_se(first['test_accuracy'], n):.2f}"
                f" points on the test set" if n else "") + ".",
             f"Parameters (with biases) = synapses + biases of live filters and neurons: "
             f"{notes.get('parameters', 'unavailable')}.",
             f"Per-image test predictions (`test_correct.npy`) stored for {len(preds)} of "
             f"{len(rows)} generations; a test loss carries its 95% paired bootstrap interval "
             f"({stats.RESAMPLES:,} resamples of the test images, the same draw for generation 0 "
             "and the generation, seed 0) when both are stored, else `unavailable` "
             "(`minievo report DIR --recompute-predictions` writes them from each generation's "
             "model.npz).", "",
             "Operating points, each against generation 0 (`test` = on the test set, reported "
             f"only). Rules: `last within` = {stats.RULES['last_within']}; `first outside − 1` "
             f"= {stats.RULES['first_outside_minus_one']}.", "",
             "| loss budget | chosen on | rule | gen | synaptic eff. | parameter eff. | "
             "test error | test loss (points) | 95% interval |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    rule_of = {kind: (on, sweep.RULE_NAMES[rule]) for kind, on, rule in sweep.CHOICES}
    for key, p in eq.items():
        kind, d = key.rsplit("_", 1)
        on, rule = rule_of[kind]
        if p is None:
            lines.append(f"| {d} points | {on} | {rule} | - | 1.0x (none qualifies) | - | - | - "
                         "| - |")
            continue
        err = f"{p['test_error']:.2f}" + (f" ± {p['test_error_se']:.2f}"
                                          if "test_error_se" in p else "")
        par = f"{p['parameter_efficiency']:.1f}x" if "parameter_efficiency" in p else "-"
        lines.append(f"| {d} points | {on} | {rule} | {p['generation']} | "
                     f"{p['synaptic_efficiency']:.1f}x | {par} | {err}% | "
                     f"{p['loss_points']:.2f} | {sweep._interval(p['interval'])} |")
    return "\n".join(lines) + "\n"


def render(out) -> list[Path]:
    """Re-render tables and plots of the run in ``out`` from what it saved."""
    from minievo.checkpoint import MAX_BYTES, CheckpointError, load

    out = Path(out)
    path = out / "lineage.json"
    if not path.exists():
        raise CheckpointError(f"{out}: no lineage.json here; is this a minievo evolve run?")
    # bounded, a regular file, every row's fields present and in range (a RecordError,
    # a CheckpointError, naming the file, the row and the field)
    rows = records.read_lineage(path)
    if not rows:
        raise CheckpointError(f"{out}: the lineage has no finished generation yet")
    shown, notes = complete_rows(out, rows, _record_config(out))
    write_tables(out, rows, shown)
    last = out / f"gen_{rows[-1]['generation']:03d}" / "model.npz"
    masks = {}
    if last.exists():
        # a FIFO or /dev/zero in its place is refused before the zip reader sees it
        records.check_regular_file(last, MAX_BYTES + (1 << 20), "checkpoint")
        arrays, _ = load(last)
        masks = {k[: -len(".mask")]: v for k, v in arrays.items() if k.endswith(".mask")}
    summary = out / "summary.md"
    atomic_write_text(summary, lineage_summary(out, shown, notes))
    return [out / "table.csv", out / "table.json", out / "table.md",
            *plot_lineage(out, shown, masks), summary]
