"""What choosing the fittest of K offspring on validation buys (issue 20, section 3).

A lineage with ``offspring_per_generation`` K > 1 trains K offspring per try and keeps the
one with the best validation accuracy. Part of that winner's lead is a better network and part
is the noise of a validation accuracy (about 0.09 points of standard error on 12,000 images).
The test set was not used to choose, so it measures which part is which: for every try whose
K offspring all finished, this script compares the winner with the mean of the K

* on validation (``val gain``: the lead the choice saw), and
* on test (``test gain``: the lead that held on images the choice never saw),

in points, and counts the tries where the choice changed the validation pace's verdict: the
winner stayed within the margin but offspring 0 (what one offspring per try would have
been, statistically) did not ("rescued"), and tries where no offspring passed. With no real
differences between offspring the test gain would be zero on average and the val gain about
0.85 standard deviations of the offspring's spread (the expected best of three normals).

    python3 benchmarks/k_offspring.py \\
        benchmarks/results/sweep-paper-pace-val20-linear-k3/setting_0/seed_*

Reads the lineages' records only (no training); prints markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drift import mean_se

from minievo.evolution.lineage import Lineage
from minievo.evolution.pace import ValidationPace, reference
from minievo.evolution.recovery import try_index


def tries(run: Path, k: int) -> list[dict]:
    """Every try of the lineage in ``run`` whose ``k`` offspring all finished, in generation
    and try order: ``generation``, ``try``, ``rows`` (offspring 0 first)."""
    found = []
    for gdir in sorted(d for d in run.glob("gen_*") if d.is_dir()):
        for tdir in sorted((d for d in gdir.glob("try_*") if d.is_dir()), key=try_index):
            paths = [tdir / f"offspring_{i}" / "row.json" for i in range(k)]
            if all(p.is_file() for p in paths):
                found.append({"generation": int(gdir.name.rpartition("_")[2]),
                              "try": try_index(tdir),
                              "rows": [Lineage._read_row(p) for p in paths]})
    return found


def judge(run: Path) -> dict:
    """The selection figures of one lineage (see the module docstring)."""
    record = json.loads((run / "lineage.json").read_text())
    cfg, rows = record["config"], record["rows"]
    k = int(cfg.get("offspring_per_generation", 1))
    if k < 2:
        raise SystemExit(f"{run}: offspring_per_generation is {k}; nothing was chosen")
    margin = cfg.get("pace_margin")
    pace = None if margin is None else ValidationPace(1 - cfg["target_retention"], margin)
    vals = [r["val_accuracy"] for r in rows]
    out = {"run": run, "k": k, "tries": [], "rescued": 0, "none_passed": 0, "passed": 0}
    for t in tries(run, k):
        val = [r["val_accuracy"] for r in t["rows"]]
        test = [r["test_accuracy"] for r in t["rows"]]
        win = max(range(k), key=val.__getitem__)  # ties: the first, as the lineage does
        t["val_gain"] = 100 * (val[win] - sum(val) / k)
        t["test_gain"] = 100 * (test[win] - sum(test) / k)
        t["val_spread"] = 100 * (max(val) - min(val))
        t["winner"] = win
        if pace is not None:  # the reference as the pace saw it at this generation
            ref = reference(vals[: t["generation"]], int(cfg.get("pace_reference") or 1))
            within = [pace.accept(ref - v) for v in val]
            out["passed"] += within[win]
            out["rescued"] += within[win] and not within[0]
            out["none_passed"] += not any(within)
        out["tries"].append(t)
    return out


def _fmt(values) -> str:
    m, se = mean_se(values)
    return f"{m:+.3f} ± {se:.3f}" if len(values) > 1 else f"{m:+.3f}"


COUNTS = ("passed", "rescued", "none_passed")


def _row(name: str, k: int, tried: list[dict], counts: dict) -> str:
    """One table line: the tries' gains and the pace's verdict counts."""
    if not tried:
        return f"| {name} | {k} | 0 | | | | | | | |"
    vg = [t["val_gain"] for t in tried]
    tg = [t["test_gain"] for t in tried]
    spread = sum(t["val_spread"] for t in tried) / len(tried)
    held = sum(tg) / sum(vg) if sum(vg) > 0 else float("nan")
    return (f"| {name} | {k} | {len(tried)} | {spread:.3f} | {_fmt(vg)} | {_fmt(tg)} | "
            f"{100 * held:.0f}% | " + " | ".join(str(counts[c]) for c in COUNTS) + " |")


def table(lineages: list[dict]) -> str:
    lines = ["| lineage | K | tries | val spread (max − min) | val gain of the winner | "
             "test gain of the winner | held on test | passed | rescued by the choice | "
             "none passed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_row(lin["run"].name, lin["k"], lin["tries"], lin) for lin in lineages]
    if len(lineages) > 1:  # every lineage's tries pooled
        lines.append(_row(f"**all {len(lineages)}**", lineages[0]["k"],
                          [t for lin in lineages for t in lin["tries"]],
                          {c: sum(lin[c] for lin in lineages) for c in COUNTS}))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lineages", nargs="+", type=Path,
                        help="lineage folders of a run with offspring_per_generation > 1")
    args = parser.parse_args(argv)
    lineages = [judge(p) for p in args.lineages]
    print("Gains in points, mean ± standard error over tries; `held on test` is the summed "
          "test gain over the summed val gain.\n")
    print(table(lineages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
