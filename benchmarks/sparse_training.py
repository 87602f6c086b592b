"""Training steps of masked networks: the dense layers against the sparse (native) path.

For each network (the dense Caffe LeNet-5, LeNet-5 with random masks, and evolved checkpoints
given with ``--model-checkpoint``) it times SGD training steps (batch 64: forward, cross-entropy,
backward, momentum step) on the accelerator (``minievo.accel.enable()``) with its sparse
training (``minievo.accel.sparse_train``) switched off (every layer multiplies its
masked dense weight) and on ``"auto"`` (each sparse enough layer runs forward and backward
through the compiled kernel over its live synapses), and prints the time per step, the
speed-up and the layers that took the sparse path. The two modes compute the same gradients up
to float32 rounding (tests/test_sparse_train.py).

Run: ``python benchmarks/sparse_training.py --single-thread --model-checkpoint
benchmarks/results/paper-mnist/gen_012_model.npz``. Timings are the best of ``--repeats``
rounds of ``--steps`` steps, the two modes interleaved. ``--single-thread`` pins BLAS and the
sparse kernel to one thread and times CPU seconds (for busy machines).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--single-thread" in sys.argv:  # before NumPy loads its BLAS
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIEVO_SPARSE_THREADS"):
        os.environ[var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minievo.accel  # noqa: E402
import minievo.functions as F  # noqa: E402
from minievo import checkpoint, models  # noqa: E402
from minievo.accel import sparse_train  # noqa: E402
from minievo.autograd import Tensor  # noqa: E402
from minievo.kernels import native  # noqa: E402
from minievo.layers import prunable_layers  # noqa: E402
from minievo.optim import SGD  # noqa: E402
from minievo.sparse.synthetic import set_random_masks  # noqa: E402


def load_model(path: str):
    arrays, meta = checkpoint.load(path)
    if any(k.startswith("model/") for k in arrays):
        arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    model = models.build(meta.get("model") or meta.get("config", {}).get("model") or "lenet5")
    model.load_state_dict(arrays)
    return model


def step_fn(model, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, 1, 28, 28)).astype(np.float32) for _ in range(4)]
    ys = [rng.integers(0, 10, batch) for _ in range(4)]
    opt = SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step(i):
        opt.zero_grad()
        loss = F.softmax_cross_entropy(model(Tensor(xs[i % 4])), ys[i % 4])
        loss.backward()
        opt.step()

    return step


def sparse_layers(model) -> str:
    return " ".join(
        f"{name}:{'sparse' if sparse_train.took_sparse_path(layer.weight) else 'dense'}"
        for name, layer in prunable_layers(model))


def time_modes(model, args) -> tuple[float, float]:
    """Best seconds per step with sparse training off and on 'auto'."""
    clock = time.process_time if args.single_thread else time.perf_counter
    step = step_fn(model, args.batch, args.seed)
    best = {"off": float("inf"), "auto": float("inf")}
    for mode in best:  # warm-up (kernel build, plans, buffers)
        sparse_train.set_mode(mode)
        for i in range(3):
            step(i)
    for _ in range(args.repeats):
        for mode in best:
            sparse_train.set_mode(mode)
            t0 = clock()
            for i in range(args.steps):
                step(i)
            best[mode] = min(best[mode], (clock() - t0) / args.steps)
    return best["off"], best["auto"]


def report(label: str, model, args) -> None:
    live = sum(int(layer.mask.sum()) if layer.mask is not None else layer.weight.size
               for _, layer in prunable_layers(model))
    total = sum(layer.weight.size for _, layer in prunable_layers(model))
    t_off, t_auto = time_modes(model, args)
    print(f"{label:<30}{total / live:>9.1f}x{t_off * 1e3:>10.2f}{t_auto * 1e3:>11.2f}"
          f"{t_off / t_auto:>9.2f}x   {sparse_layers(model)}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--densities", type=str, default="1.0,0.1,0.02")
    p.add_argument("--model-checkpoint", type=str, action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single-thread", action="store_true",
                   help="one thread everywhere, timed in CPU seconds")
    args = p.parse_args(argv)
    minievo.accel.enable()  # both modes run on the accelerator; only its sparse training differs
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    clock = "CPU time, one thread" if args.single_thread else "wall time"
    print(f"minievo sparse training benchmark: batch {args.batch}, best of {args.repeats} x "
          f"{args.steps} steps ({clock}), {os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"native kernel: {native.status()}")
    if not native.available():
        print("no native kernel: sparse training needs it; nothing to compare")
        return 1
    print(f"{'network':<30}{'syn. eff.':>10}{'dense ms':>10}{'sparse ms':>11}{'speed-up':>10}"
          f"   layers (auto)")
    rng = np.random.default_rng(args.seed)
    for d in (float(v) for v in args.densities.split(",") if v):
        model = set_random_masks(models.lenet5(), rng, d, weight_scale=0.05)
        report(f"lenet5, {d:.0%} live kernels", model, args)
    for path in args.model_checkpoint:
        report(Path(path).name, load_model(path), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
