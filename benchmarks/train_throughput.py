"""Training throughput and memory of the Caffe LeNet-5: minievo against PyTorch CPU, in one run.

Both frameworks train the same network (conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2,
linear 800->500, ReLU, linear 500->10) on random data of MNIST shape, batch 64, float32, SGD
with momentum 0.9 and weight decay 5e-4, softmax cross-entropy. Each measurement is a warm-up
followed by ``--steps`` timed steps. The repeats alternate between the two frameworks (so both
see the same background load) and the best repeat of each is reported: on a shared machine the
best run is the least disturbed one. PyTorch is measured only when it is importable
(``pip install -e .[bench]``).

minievo is measured on two paths: ``minievo`` is the accelerated one the ``minievo`` command
uses by default (``minievo.accel.enable()``), ``minievo-ref`` the plain reference path the
chapters teach (``--no-accel``); ``--paths`` picks them.

Memory is measured in a fresh child process per framework (so neither sees the other's
libraries): the RSS high-water mark (``resource.getrusage``) after building the model, and
after ``--mem-steps`` training steps; for minievo also the peak of traced allocations
(``tracemalloc``, which sees NumPy's buffers). The default of 100 steps (6,400 images) is a
scaled epoch: every step allocates and frees the same buffers, so the peak of a full
60,000-image epoch (938 steps, ``--mem-steps 938``) is the same.

Usage:
    python benchmarks/train_throughput.py                     # 50 steps, 5 repeats, 2 threads
    python benchmarks/train_throughput.py --steps 100 --repeats 7 --threads 2
    python benchmarks/train_throughput.py --mem-steps 938     # memory over a full epoch
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _set_threads_env(n: int) -> None:
    # Must happen before NumPy/OpenBLAS (and torch) are imported to take effect everywhere.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each repeat")
    p.add_argument("--repeats", type=int, default=5, help="repeats; the best is reported")
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mem-steps", type=int, default=100,
                   help="training steps of the memory measurement (938 = a full epoch)")
    p.add_argument("--paths", default="accel,reference",
                   help="minievo paths to time, comma list of accel (the CLI default) and "
                        "reference (--no-accel)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-child", choices=["minievo", "torch"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _data(batch: int, seed: int, n_batches: int = 8):
    import numpy as np

    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, 1, 28, 28)).astype(np.float32) for _ in range(n_batches)]
    ys = [rng.integers(0, 10, size=batch).astype(np.int64) for _ in range(n_batches)]
    return xs, ys


def _time_steps(step, n_warm: int, n_steps: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per step over ``n_steps`` steps, after ``n_warm`` more.

    The CPU time (all threads, user + system) does not count time spent waiting for a busy
    machine, so with one thread it is the fairer comparison on a loaded machine; with more
    threads it includes the BLAS / OpenMP threads' spin-waiting.
    """
    for i in range(n_warm):
        step(i)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_steps):
        step(i)
    return (time.perf_counter() - t0) / n_steps, (time.process_time() - c0) / n_steps


def minievo_step_fn(batch: int, seed: int, accel: bool = True):
    """One training step of minievo, on the accelerated path or the reference path."""
    import minievo.accel
    import minievo.functions as F
    from minievo import init, models
    from minievo.autograd import Tensor
    from minievo.optim import SGD

    init.manual_seed(seed)
    model = models.lenet5()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xs, ys = _data(batch, seed)

    def step(i):
        k = i % len(xs)
        with minievo.accel.accelerated(accel):
            opt.zero_grad()
            loss = F.softmax_cross_entropy(model(Tensor(xs[k])), ys[k])
            loss.backward()
            opt.step()
        return loss

    return step


def torch_step_fn(batch: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    xs, ys = _data(batch, seed)
    xs = [torch.from_numpy(x) for x in xs]
    ys = [torch.from_numpy(y) for y in ys]

    def step(i):
        k = i % len(xs)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xs[k]), ys[k])
        loss.backward()
        opt.step()
        return loss

    return step


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(args) -> int:
    """Runs in a fresh process: train ``--mem-steps`` steps, print the memory figures as JSON."""
    if args.memory_child == "torch":
        import torch

        torch.set_num_threads(args.threads)
        step = torch_step_fn(args.batch, args.seed)
    else:
        step = minievo_step_fn(args.batch, args.seed)
    base = _rss_peak_mib()
    for i in range(args.mem_steps):
        step(i)
    out = {"rss_base": base, "rss_peak": _rss_peak_mib(), "alloc_peak": None}
    if args.memory_child == "minievo":
        import tracemalloc

        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        for i in range(min(args.mem_steps, 20)):
            step(i)
        out["alloc_peak"] = (tracemalloc.get_traced_memory()[1] - start) / 2**20
        tracemalloc.stop()
    print(json.dumps(out))
    return 0


def _measure_memory(framework: str, args) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", framework,
           "--mem-steps", str(args.mem_steps), "--batch", str(args.batch),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if res.returncode != 0:
        if "No module named 'torch'" not in res.stderr:
            print(f"memory measurement for {framework} failed:\n{res.stderr}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    _set_threads_env(args.threads)
    if args.memory_child:
        return memory_child(args)
    import numpy as np

    # Memory first, while this process is still small: Linux carries the parent's RSS
    # high-water mark over into a child's getrusage() figure.
    mem = {}
    if not args.no_memory:
        mem["minievo"] = _measure_memory("minievo", args)
        if not args.no_torch:
            mem["pytorch-cpu"] = _measure_memory("torch", args)

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: measuring minievo only (pip install -e .[bench])")
    if torch is not None:
        torch.set_num_threads(args.threads)

    print(f"Caffe LeNet-5, batch {args.batch}, float32, SGD(momentum 0.9, wd 5e-4); "
          f"{args.threads} thread(s); best of {args.repeats} x {args.steps} steps "
          f"(+{args.warmup} warm-up each)")
    print(f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else ""))

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in ("accel", "reference") for p in paths):
        print(f"train_throughput: error: --paths takes accel and/or reference, got "
              f"{args.paths!r}", file=sys.stderr)
        return 2
    steps = {}
    if "accel" in paths:
        steps["minievo"] = minievo_step_fn(args.batch, args.seed, accel=True)
    if "reference" in paths:
        steps["minievo-ref"] = minievo_step_fn(args.batch, args.seed, accel=False)
    if torch is not None:
        steps["pytorch-cpu"] = torch_step_fn(args.batch, args.seed)
    inf = (float("inf"), float("inf"))
    best = {name: inf for name in steps}  # (wall, cpu): each the best over repeats
    for _ in range(args.repeats):  # interleaved: all see the same load
        for name, step in steps.items():
            wall, cpu = _time_steps(step, args.warmup, args.steps)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    names = list(steps)
    tstep = steps.get("pytorch-cpu")

    print()
    print(f"{'framework':<12} {'ms/step':>8} {'images/s':>9} {'epoch s':>8} {'CPU ms/step':>12} "
          f"{'RSS base MiB':>13} {'RSS peak MiB':>13} {'alloc peak MiB':>15}")
    for name in names:
        t, cpu = best[name]
        ips = args.batch / t
        m = mem.get(name) or {}

        def fmt(key, width, m=m):
            v = m.get(key)
            return f"{v:{width}.1f}" if v is not None else f"{'-':>{width}}"

        print(f"{name:<12} {t * 1e3:8.2f} {ips:9.0f} {60000 / ips:8.1f} {cpu * 1e3:12.2f} "
              f"{fmt('rss_base', 13)} {fmt('rss_peak', 13)} {fmt('alloc_peak', 15)}")
    if tstep is not None:
        print()
        for name in (n for n in names if n != "pytorch-cpu"):
            ratio = best["pytorch-cpu"][0] / best[name][0]
            cpu_ratio = best["pytorch-cpu"][1] / best[name][1]
            what = "accelerated, the CLI default" if name == "minievo" else "reference path"
            print(f"ratio {name} / pytorch (images/s, wall clock): {ratio:.2f}x"
                  f"   (CPU time per step: {cpu_ratio:.2f}x)   [{what}]")
    if mem:
        print(f"\nMemory, each framework in a fresh process: RSS base = high-water mark after "
              f"imports and model build; RSS peak = high-water mark after {args.mem_steps} "
              f"training steps ({args.mem_steps * args.batch} images; "
              f"{'a full epoch' if args.mem_steps * args.batch >= 60000 else 'a scaled epoch'}"
              "); alloc peak = tracemalloc peak of NumPy and Python allocations during "
              "training steps (minievo only).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
