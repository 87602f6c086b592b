"""Tables and plots of a lineage: CSV, JSON, Markdown and PNG, from the saved run alone.

``minievo report DIR`` calls :func:`render` to draw everything again from ``DIR/lineage.json``
and the saved generation networks, so a finished (or interrupted) run can be re-rendered
without re-running anything.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from minievo.checkpoint import atomic_write_bytes, atomic_write_text

# The columns of the per-generation table, in order, with their Markdown headers.
TABLE_COLUMNS = [
    ("generation", "gen"),
    ("synapses", "synapses"),
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


def _fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key.endswith("accuracy") or key == "pace_cut":
        return f"{100 * value:.2f}%"
    if "efficiency" in key:
        return f"{value:.1f}x"
    if isinstance(value, float):
        return f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_row(row: dict) -> str:
    """One log line per generation."""
    parts = [f"generation {row['generation']:>2}",
             f"synapses {row['synapses']:>7,} ({row['synaptic_efficiency']:.1f}x)",
             f"clusters k/f {row['clusters_kernel']}/{row['clusters_filter']}",
             f"test acc {100 * row['test_accuracy']:.2f}%"]
    if "val_accuracy" in row:
        parts.append(f"val acc {100 * row['val_accuracy']:.2f}%")
    parts.append(f"train {row['train_seconds']:.0f}s")
    return "  ".join(parts)


def markdown_table(rows: list[dict]) -> str:
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---:" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in cols) + " |")
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


def write_tables(out, rows: list[dict]) -> None:
    """table.csv (every column), table.json and table.md (the main columns)."""
    out = Path(out)
    atomic_write_text(out / "table.csv", csv_text(rows))
    atomic_write_text(out / "table.json", json.dumps(rows, indent=1))
    atomic_write_text(out / "table.md", markdown_table(rows))


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

    fig, ax = subplots(figsize=(6, 4))
    syn = [r["synapses"] for r in rows]
    acc = [100 * r["test_accuracy"] for r in rows]
    ax.plot(syn, acc, "o-")
    for g, s, a in zip(gens, syn, acc):
        ax.annotate(str(g), (s, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("synapses (log scale; generations left to right)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against network size")
    ax.grid(True, which="both", alpha=0.3)
    written.append(out / "accuracy_vs_synapses.png")
    _savefig(fig, written[-1])

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


def render(out) -> list[Path]:
    """Re-render tables and plots of the run in ``out`` from what it saved."""
    from minievo.checkpoint import CheckpointError, load

    out = Path(out)
    path = out / "lineage.json"
    if not path.exists():
        raise CheckpointError(f"{out}: no lineage.json here; is this a minievo evolve run?")
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable lineage record ({exc!r})") from None
    if not isinstance(rows, list):
        raise CheckpointError(f"{path}: 'rows' is not a list")
    if not rows:
        raise CheckpointError(f"{out}: the lineage has no finished generation yet")
    need = ["generation", "synapses", "test_accuracy", "synaptic_efficiency",
            "cluster_efficiency_kernel", "cluster_efficiency_filter"]  # what the plots read
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise CheckpointError(f"{path}: row {i} is not a JSON object")
        missing = [k for k in need if k not in r]
        bad = [k for k in need if k in r and k != "generation" and (
            isinstance(r[k], bool) or not isinstance(r[k], int | float))]
        if missing or bad or not isinstance(r.get("generation"), int):
            raise CheckpointError(f"{path}: row {i} lacks {missing or 'nothing'}, non-numbers "
                                  f"in {bad or 'none'}")
    write_tables(out, rows)
    last = out / f"gen_{rows[-1]['generation']:03d}" / "model.npz"
    masks = {}
    if last.exists():
        arrays, _ = load(last)
        masks = {k[: -len(".mask")]: v for k, v in arrays.items() if k.endswith(".mask")}
    return [out / "table.csv", out / "table.json", out / "table.md",
            *plot_lineage(out, rows, masks)]
