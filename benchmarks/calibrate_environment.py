"""Compare environmental-factor / normalisation settings on one shared trained ancestor.

Each setting runs a short lineage in its own process (one BLAS thread each, ``--jobs`` at a
time) from the same ancestor checkpoint, and the script prints, per setting, the generation
where the lineage first passed 125x and 200x synaptic efficiency and the test accuracy there.

    python benchmarks/calibrate_environment.py --ancestor runs/anc/checkpoint.npz \
        --generations 10 --limit-train 20000 --jobs 2 \
        --setting '{"f_s": 1.0}' --setting '{"normalisation_scope": "network", "f_s": 0.9}'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_one(setting: dict, args, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "minievo.cli", "evolve", "--no-progress",
           "--ancestor-path", args.ancestor, "--generations", str(args.generations),
           "--offspring-epochs", str(args.offspring_epochs), "--out", str(out)]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    for key, value in setting.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    log = open(out.with_suffix(".log"), "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def summarise(setting: dict, out: Path) -> str:
    path = out / "table.json"
    if not path.exists():
        return f"{json.dumps(setting)}: no table (see {out.with_suffix('.log')})"
    rows = json.loads(path.read_text())
    acc0 = rows[0]["test_accuracy"]
    parts = [json.dumps(setting), f"gen0 {100 * acc0:.2f}%"]
    for target in (125, 200):
        hit = next((r for r in rows if r["synaptic_efficiency"] >= target), None)
        parts.append(f">= {target}x: " + (
            f"gen {hit['generation']} acc {100 * hit['test_accuracy']:.2f}%" if hit else "never"))
    last = rows[-1]
    parts.append(f"last gen {last['generation']}: {last['synaptic_efficiency']:.0f}x "
                 f"{100 * last['test_accuracy']:.2f}%")
    return "  |  ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ancestor", required=True, help="a `minievo train` checkpoint.npz")
    ap.add_argument("--setting", action="append", required=True,
                    help="JSON object of `minievo evolve` options (repeatable)")
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--offspring-epochs", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="runs/calibration")
    args = ap.parse_args(argv)
    settings = [json.loads(s) for s in args.setting]
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    outs = [root / f"setting_{i}" for i in range(len(settings))]
    pending = list(zip(settings, outs))
    running: list = []
    t0 = time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            s, o = pending.pop(0)
            running.append((run_one(s, args, o), s, o))
        time.sleep(2)
        for item in list(running):
            if item[0].poll() is not None:
                running.remove(item)
                print(f"[{time.time() - t0:6.0f}s] {summarise(item[1], item[2])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
