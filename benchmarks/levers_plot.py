"""One figure for the levers of issue 20: where each sweep's lineages end up.

Each sweep given is a lever measured from the same ancestors; for each of its lineages the
operating point within a loss budget is chosen on validation by the conservative rule (as in
``drift.py``), and the figure puts it at its synaptic efficiency (x, log scale) and its test
loss in points (y, reported only), with the lever's mean and its standard errors on both axes.
The goal's corner (at least 125x, at most 0.3 points) is shaded.

    python3 benchmarks/levers_plot.py --out benchmarks/results/levers-val20/levers.png \\
        "none=benchmarks/results/sweep-paper-pace-val20" \\
        "annealed=benchmarks/results/sweep-paper-pace-val20-linear" ...

A folder may name its setting (``FOLDER:setting_1``; default setting_0). Reads lineage.json
files only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drift import lineage_drift, mean_se

GOAL_EFFICIENCY = 125.0


def operating_points(folder: Path, setting: str = "setting_0", budget: float = 0.3) -> list[dict]:
    """Per lineage of ``folder/setting``: seed, efficiency, validation and test loss at the
    conservative operating point within ``budget`` points, chosen on validation."""
    points = []
    paths = sorted((folder / setting).glob("seed_*/lineage.json"),
                   key=lambda p: int(p.parent.name.split("_")[1]))
    if not paths:
        raise SystemExit(f"{folder / setting}: no lineage.json under seed_*/")
    for path in paths:
        rows = json.loads(path.read_text())["rows"]
        p = lineage_drift(rows)["points"][(budget, "conservative")]
        points.append({"seed": int(path.parent.name.split("_")[1]), **p})
    return points


def plot(levers: list[tuple[str, list[dict]]], out: Path, budget: float = 0.3) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    top = max(p["efficiency"] for _, pts in levers for p in pts)
    losses = [p["test_loss"] for _, pts in levers for p in pts]
    ax.fill_between([GOAL_EFFICIENCY, top * 1.6], -1, budget, color="tab:green", alpha=0.08,
                    label=f"goal: ≥{GOAL_EFFICIENCY:.0f}x within {budget} points")
    for i, (label, pts) in enumerate(levers):
        color = f"C{i}"
        xs = [p["efficiency"] for p in pts]
        ys = [p["test_loss"] for p in pts]
        ax.scatter(xs, ys, color=color, s=18, alpha=0.6)
        (mx, sx), (my, sy) = mean_se(xs), mean_se(ys)
        ax.errorbar([mx], [my], xerr=[[sx], [sx]], yerr=[[sy], [sy]], color=color, marker="o",
                    markersize=8, capsize=3, lw=1.5,
                    label=f"{label}: {mx:.1f} ± {sx:.1f}x, {my:.2f} ± {sy:.2f} points")
    ax.axhline(budget, color="0.5", lw=0.8, ls="--")
    ax.axvline(GOAL_EFFICIENCY, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(right=top * 1.6)
    ax.set_ylim(min(-0.05, min(losses) - 0.05), max(budget + 0.1, max(losses) + 0.05))
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("synaptic efficiency (fewer synapses than generation 0, log scale)")
    ax.set_ylabel("test loss against generation 0 (points)")
    ax.set_title(f"Operating points within {budget} points, chosen on validation\n"
                 "(small: each seed; large: mean ± SE over seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--budget", type=float, default=0.3, help="loss budget, points")
    parser.add_argument("levers", nargs="+", metavar="LABEL=FOLDER[:SETTING]")
    args = parser.parse_args(argv)
    levers = []
    for item in args.levers:
        label, sep, where = item.partition("=")
        if not sep or not label:
            parser.error(f"{item!r}: expected LABEL=FOLDER[:SETTING]")
        folder, _, setting = where.partition(":")
        pts = operating_points(Path(folder), setting or "setting_0", args.budget)
        levers.append((label, pts))
        print(f"{label}: " + ", ".join(f"seed {p['seed']} {p['efficiency']:.1f}x "
                                       f"{p['test_loss']:+.2f}" for p in pts))
    plot(levers, args.out, args.budget)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
