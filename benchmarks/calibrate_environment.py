"""Compare environmental-factor / normalisation settings on one shared trained ancestor.

Each setting runs a short lineage in its own process (one BLAS thread each, ``--jobs`` at a
time) from the same ancestor. Every choice is made on a validation split carved from the
training set (``--val-fraction``, default 0.1): the script prints, per setting, the
generation where the lineage first passed 125x and 200x synaptic efficiency and the
*validation* accuracy there, which is what a setting is chosen by. The test accuracy of the
last generation is printed last, marked as a report only, with the size of the test set.
(For seeds x settings with mean and spread, use ``minievo sweep``.)

The ancestor is trained first, as generation 0 of an evolve run with the same seed, training
slice and validation split (``OUT/ancestor``), so that no validation image is ever trained
on. ``--ancestor PATH`` uses a trained network instead: it must not have seen the
validation images either (a ``minievo train`` checkpoint has: it trains on every image).

    python benchmarks/calibrate_environment.py --generations 10 --limit-train 20000 \
        --jobs 2 --setting '{"target_retention": 0.5}' --setting '{"target_retention": 0.66}'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from minievo.evolution.sweep import equal_loss


def train_ancestor(args, out: Path) -> str:
    """Generation 0 of an evolve run on the same slice and split: the validation images are
    held out of its training, as they are in every lineage that starts from it."""
    path = out / "ancestor" / "gen_000" / "model.npz"
    if not path.exists():
        cmd = [sys.executable, "-m", "minievo.cli", "evolve", "--no-progress",
               "--generations", "0", "--ancestor-epochs", str(args.ancestor_epochs),
               "--val-fraction", str(args.val_fraction), "--out", str(out / "ancestor")]
        if args.limit_train:
            cmd += ["--limit-train", str(args.limit_train)]
        print("training the ancestor: " + " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, OPENBLAS_NUM_THREADS="1",
                                                 OMP_NUM_THREADS="1"))
    return str(path)


def run_one(setting: dict, args, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "minievo.cli", "evolve", "--no-progress",
           "--ancestor-path", args.ancestor, "--generations", str(args.generations),
           "--offspring-epochs", str(args.offspring_epochs), "--out", str(out),
           "--val-fraction", str(args.val_fraction)]
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
    acc0 = rows[0]["val_accuracy"]
    parts = [json.dumps(setting), f"gen0 val {100 * acc0:.2f}%"]
    for target in (125, 200):
        hit = next((r for r in rows if r["synaptic_efficiency"] >= target), None)
        parts.append(f">= {target}x: " + (
            f"gen {hit['generation']} val {100 * hit['val_accuracy']:.2f}%" if hit else "never"))
    chosen = equal_loss(rows, points=(0.3, 1.0))  # the sweep report's validation choice
    for points in (0.3, 1.0):
        pick = chosen[f"val_chosen_{points}"]
        parts.append(f"within {points} val: " + (
            f"gen {pick['generation']} {pick['synaptic_efficiency']:.1f}x" if pick else "none"))
    last = rows[-1]
    parts.append(f"last gen {last['generation']}: {last['synaptic_efficiency']:.0f}x "
                 f"val {100 * last['val_accuracy']:.2f}% (validation: {last['val_images']} "
                 f"images); report only: test {100 * last['test_accuracy']:.2f}% on "
                 f"{last['test_images']} test images")
    return "  |  ".join(parts)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ancestor", default=None,
                    help="a trained network that has not seen the validation images (default: "
                         "train one as generation 0 of an evolve run on the same split)")
    ap.add_argument("--ancestor-epochs", type=_at_least_one, default=8)
    ap.add_argument("--setting", action="append", required=True,
                    help="JSON object of `minievo evolve` options (repeatable)")
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--offspring-epochs", type=int, default=1)
    ap.add_argument("--limit-train", type=_at_least_one, default=None)
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="validation split carved from the training set; every choice is "
                         "made on it, never on the test set (default 0.1)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="runs/calibration")
    args = ap.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        ap.error(f"--val-fraction {args.val_fraction} is outside (0, 1): the settings are "
                 "chosen on validation, never on the test set")
    settings = [json.loads(s) for s in args.setting]
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if args.ancestor is None:
        args.ancestor = train_ancestor(args, root)
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
