"""Recovery training across a sweep's lineages (issue 20, section 3: the recovery lever).

Reads ``<lineage>/recovery/recovery.json`` (written by ``minievo recover LINEAGE``) of every
lineage given, and prints per lineage and as a mean over them, at each loss budget, the
operating point chosen on validation by the conservative rule before and after recovery:
generation, synaptic efficiency, validation loss and test loss (points, against generation 0,
which is not recovered), and the 95% paired-bootstrap interval of the (mean) test loss over
the test images, from the per-image predictions the lineage and the recovery kept.

    python3 benchmarks/recovery_table.py \\
        benchmarks/results/sweep-paper-pace-val20/setting_0/seed_*

Imports nothing that trains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drift import mean_se

from minievo.evolution import stats


def chosen_correct(run: Path, rows: list[dict], point: dict, when: str):
    """Per-image test correctness of the network behind an operating point, or None."""
    n = rows[0]["test_images"]
    g = point["generation"]
    if when == "after" and point.get("offspring"):
        path = run / "recovery" / f"gen_{g:03d}" / point["offspring"] / stats.TEST_CORRECT
    elif when == "after" and point.get("recovered"):
        path = run / "recovery" / f"gen_{g:03d}" / stats.TEST_CORRECT
    else:
        return stats.find_test_correct(run, rows[g], n)
    return stats.load_test_correct(path, n) if path.is_file() else None


def read(run: Path) -> dict:
    rows = json.loads((run / "lineage.json").read_text())["rows"]
    summary = json.loads((run / "recovery" / "recovery.json").read_text())
    return {"run": run, "rows": rows, "summary": summary}


def table(lineages: list[dict]) -> str:
    budgets = list(lineages[0]["summary"]["budgets"])
    lines = ["| lineage | budget | | generation | synaptic eff. | val loss | test loss | "
             "95% interval |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for b in budgets:
        for when in ("before", "after"):
            effs, vls, tls, pairs = [], [], [], []
            for lin in lineages:
                p = lin["summary"]["budgets"][b][when]
                iv = p.get("interval")
                gen = f"{p['generation']} ({p['offspring']})" if p.get("offspring") else \
                    str(p["generation"])
                lines.append(f"| {lin['run'].name} | {b} | {when} | {gen} | "
                             f"{p['synaptic_efficiency']:.1f}x | {p['val_loss']:.2f} | "
                             f"{p['test_loss']:.2f} | "
                             + (f"[{iv[0]:.2f}, {iv[1]:.2f}] |" if iv else "unavailable |"))
                effs.append(p["synaptic_efficiency"])
                vls.append(p["val_loss"])
                tls.append(p["test_loss"])
                ref = stats.find_test_correct(lin["run"], lin["rows"][0])
                cand = chosen_correct(lin["run"], lin["rows"], p, when)
                pairs.append(None if ref is None or cand is None else (ref, cand))
            shown = "unavailable"
            if all(pr is not None for pr in pairs):
                iv = stats.paired_bootstrap_mean(pairs)
                shown = f"[{iv.low:.2f}, {iv.high:.2f}]"
            (e, es), (v, vs), (t, ts) = mean_se(effs), mean_se(vls), mean_se(tls)
            lines.append(f"| **mean ± SE ({len(lineages)})** | {b} | {when} | | "
                         f"{e:.1f} ± {es:.1f}x | {v:.2f} ± {vs:.2f} | {t:.2f} ± {ts:.2f} | "
                         f"{shown} |")
    return "\n".join(lines) + "\n"


def rejected_table(lineages: list[dict]) -> str:
    lines = ["| lineage | offspring | synapses | synaptic eff. | val before | val after | "
             "test before | test after |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for lin in lineages:
        s = lin["summary"]
        for g in s.get("generations", []):
            eff = lin["rows"][g["generation"]]["synaptic_efficiency"]
            lines.append(f"| {lin['run'].name} | generation {g['generation']} | "
                         f"{g['synapses']:,} | {eff:.1f}x | {100 * g['val_before']:.2f}% | "
                         f"{100 * g['val_after']:.2f}% | {100 * g['test_before']:.2f}% | "
                         f"{100 * g['test_after']:.2f}% |")
        for r in s.get("rejected", []):
            lines.append(f"| {lin['run'].name} | generation {s['rejected_generation']}, "
                         f"rejected {r['label']}{' *' if r['stands_in'] else ''} | "
                         f"{r['synapses']:,} | {r['synaptic_efficiency']:.1f}x | "
                         f"{100 * r['val_before']:.2f}% | {100 * r['val_after']:.2f}% | "
                         f"{100 * r['test_before']:.2f}% | {100 * r['test_after']:.2f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lineages", nargs="+", type=Path,
                    help="lineage folders, each holding recovery/recovery.json")
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.lineages if not (r / "recovery" / "recovery.json").is_file()]
    if missing:
        print(f"recovery_table: no recovery/recovery.json in {', '.join(missing)} (run "
              "`minievo recover LINEAGE` first)", file=sys.stderr)
        return 2
    lineages = [read(r) for r in args.lineages]
    epochs = {lin["summary"].get("epochs") for lin in lineages}
    print(f"Recovery: {', '.join(str(e) for e in sorted(epochs, key=str))} epoch(s) per "
          "network, masks fixed, rate falling linearly to zero. Operating points chosen on "
          "validation by the conservative rule; test losses only reported.\n")
    print(table(lineages))
    print("Every recovered network (* = the rejected offspring that stands in as the next "
          "generation: the first try, largest cut first, that the pace accepts on its recovered "
          "validation accuracy, else the best on validation):\n")
    print(rejected_table(lineages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
