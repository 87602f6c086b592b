"""The drift from validation to test of a sweep's lineages (issue 20, section 2).

For each lineage: generation 0's validation and test error (with binomial standard errors),
and at each loss budget the operating point chosen on validation by both selection rules
(:mod:`minievo.evolution.stats`), with its validation loss, test loss and the drift
test loss - validation loss (points; both against generation 0). Also the mean drift over all
of a lineage's generations 1, 2, ... . Reads the committed run folders only (lineage.json);
imports nothing that trains.

    python3 benchmarks/drift.py benchmarks/results/sweep-paper-pace \\
        benchmarks/results/sweep-paper-pace-val20 > drift.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from minievo.evolution import stats

BUDGETS = (0.1, 0.3, 1.0)
RULES = (("conservative", stats.first_outside_minus_one), ("last within", stats.last_within))


def mean_se(values):
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, sd / math.sqrt(n)


def lineage_drift(rows: list[dict]) -> dict:
    """Drift figures of one lineage's rows (generation 0 first)."""
    v0, t0 = rows[0]["val_accuracy"], rows[0]["test_accuracy"]
    nv, nt = rows[0]["val_images"], rows[0]["test_images"]
    out = {"val_error0": 100 * (1 - v0), "val_se0": 100 * stats.binomial_se(v0, nv),
           "test_error0": 100 * (1 - t0), "test_se0": 100 * stats.binomial_se(t0, nt),
           "val_images": nv, "generations": len(rows) - 1, "points": {}}
    drifts = [100 * ((t0 - r["test_accuracy"]) - (v0 - r["val_accuracy"])) for r in rows[1:]]
    out["mean_drift_all"] = sum(drifts) / len(drifts) if drifts else float("nan")
    vals = [r["val_accuracy"] for r in rows]
    for b in BUDGETS:
        for name, rule in RULES:
            g = rule(vals, b / 100) or 0
            r = rows[g]
            val_loss = 100 * (v0 - r["val_accuracy"])
            test_loss = 100 * (t0 - r["test_accuracy"])
            out["points"][(b, name)] = {"generation": g, "val_loss": val_loss,
                                        "test_loss": test_loss, "drift": test_loss - val_loss,
                                        "efficiency": r.get("synaptic_efficiency", 1.0)}
    return out


def lineages(folder: Path):
    """(setting label, seed, rows) of every lineage under a sweep folder."""
    for path in sorted(folder.glob("setting_*/seed_*/lineage.json")):
        rows = json.loads(path.read_text())["rows"]
        setting = path.parent.parent.name
        spec = folder / "sweep.json"
        label = setting
        if spec.is_file():
            sweep = json.loads(spec.read_text())["spec"]
            i = int(setting.split("_")[1])
            extra = {**sweep.get("base", {}), **sweep["settings"][i]}
            label = ", ".join(f"{k}={v}" for k, v in extra.items()
                              if k in ("val_fraction", "pace_reference", "offspring_epochs",
                                       "pace_margin"))
        yield label, int(path.parent.name.split("_")[1]), rows


def markdown(folders: list[Path]) -> str:
    lines = ["| sweep | setting | seed | val images | gen 0 val error | gen 0 test error | "
             "budget | rule | generation | eff. | val loss | test loss | drift |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    summary = ["", "Mean ± standard error over seeds (drift = test loss − validation loss, "
               "points; `all gens` = each lineage's mean drift over its generations 1, 2, ...):",
               "", "| sweep | setting | seeds | budget | rule | eff. | val loss | test loss | "
               "drift | drift, all gens |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for folder in folders:
        groups: dict[str, list[dict]] = {}
        for label, seed, rows in lineages(folder):
            d = lineage_drift(rows)
            groups.setdefault(label, []).append(d)
            for (b, rule), p in d["points"].items():
                lines.append(
                    f"| {folder.name} | {label} | {seed} | {d['val_images']:,} | "
                    f"{d['val_error0']:.2f} ± {d['val_se0']:.2f}% | "
                    f"{d['test_error0']:.2f} ± {d['test_se0']:.2f}% | {b} | {rule} | "
                    f"{p['generation']} | {p['efficiency']:.1f}x | {p['val_loss']:.2f} | "
                    f"{p['test_loss']:.2f} | {p['drift']:+.2f} |")
        for label, ds in groups.items():
            all_m, all_se = mean_se([d["mean_drift_all"] for d in ds])
            for b in BUDGETS:
                for rule, _ in RULES:
                    ps = [d["points"][(b, rule)] for d in ds]
                    cells = []
                    for key in ("efficiency", "val_loss", "test_loss", "drift"):
                        m, se = mean_se([p[key] for p in ps])
                        unit = "x" if key == "efficiency" else ""
                        cells.append(f"{m:.2f} ± {se:.2f}{unit}" if key != "efficiency"
                                     else f"{m:.1f} ± {se:.1f}{unit}")
                    summary.append(f"| {folder.name} | {label} | {len(ds)} | {b} | {rule} | "
                                   + " | ".join(cells) + f" | {all_m:+.2f} ± {all_se:.2f} |")
    return "\n".join(lines + summary) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="sweep folders")
    args = ap.parse_args(argv)
    for f in args.folders:
        if not f.is_dir():
            print(f"drift.py: {f} is not a folder", file=sys.stderr)
            return 2
    sys.stdout.write(markdown(args.folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
