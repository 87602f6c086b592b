"""Training throughput and memory of LeNet-5 or a CIFAR ResNet: minievo against PyTorch CPU, in
one run.

Both frameworks train the same network on seeded random data, float32, SGD with momentum 0.9
and weight decay 5e-4, softmax cross-entropy:

* ``--model lenet5`` (default): the Caffe LeNet-5 (conv 20@5x5, max-pool 2, conv 50@5x5,
  max-pool 2, linear 800->500, ReLU, linear 500->10), MNIST shape, batch 64;
* ``--model resnet20`` / ``resnet8``: the CIFAR ResNet of He et al. (conv 3x3 without bias,
  BatchNorm2d, ReLU, basic blocks with 1x1 convolution + BatchNorm2d projection shortcuts where
  the shape changes, global average pool, linear), 3x32x32, batch 128. PyTorch's copy is
  built layer for layer and starts from minievo's initial weights; the run checks that both
  give the same outputs on the first batch before timing anything.

Each measurement is a warm-up followed by ``--steps`` timed steps. The repeats alternate
between the frameworks (so all see the same background load); the best repeat of each (the
least disturbed on a shared machine) and the median are reported, with the load average
before and after. PyTorch is measured only when it is importable (``pip install -e .[bench]``).

minievo is measured on two paths: ``minievo`` is the accelerated one the ``minievo`` command
uses by default (``minievo.accel.enable()``), ``minievo-ref`` the plain reference path the
chapters teach (``--no-accel``); ``--paths`` picks them.

Memory is measured in a fresh child process per framework (so neither sees the other's
libraries): the RSS high-water mark (``resource.getrusage``) after building the model, and
after ``--mem-steps`` training steps; for minievo also the peak of traced allocations
(``tracemalloc``, which sees NumPy's buffers). The LeNet-5 default of 100 steps (6,400 images)
is a scaled epoch: every step allocates and frees the same buffers, so the peak of a full
60,000-image epoch (938 steps, ``--mem-steps 938``) is the same (the ResNets default to 3).

Usage:
    python benchmarks/train_throughput.py                     # 50 steps, 5 repeats, 2 threads
    python benchmarks/train_throughput.py --steps 100 --repeats 7 --threads 2
    python benchmarks/train_throughput.py --mem-steps 938     # memory over a full epoch
    python benchmarks/train_throughput.py --model resnet20 --threads 1 --no-memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

#: Per model: input shape, default batch, steps and warm-up steps per repeat, memory steps.
MODELS = {
    "lenet5": {"input": (1, 28, 28), "batch": 64, "steps": 50, "warmup": 5, "mem_steps": 100,
               "title": "Caffe LeNet-5"},
    "resnet8": {"input": (3, 32, 32), "batch": 128, "steps": 10, "warmup": 2, "mem_steps": 3,
                "title": "CIFAR ResNet-8"},
    "resnet20": {"input": (3, 32, 32), "batch": 128, "steps": 5, "warmup": 1, "mem_steps": 3,
                 "title": "CIFAR ResNet-20"},
}


def _set_threads_env(n: int) -> None:
    # Must happen before NumPy/OpenBLAS (and torch) are imported to take effect everywhere.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(MODELS), default="lenet5")
    p.add_argument("--steps", type=int, help="timed steps per repeat (lenet5 50, resnet20 5)")
    p.add_argument("--warmup", type=int,
                   help="untimed steps before each repeat (lenet5 5, resnet20 1)")
    p.add_argument("--repeats", type=int, default=5,
                   help="repeats; the best and the median are reported")
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads")
    p.add_argument("--batch", type=int, help="batch size (lenet5 64, resnets 128)")
    p.add_argument("--mem-steps", type=int,
                   help="training steps of the memory measurement (lenet5 100; 938 = a full "
                        "epoch; resnets 3)")
    p.add_argument("--paths", default="accel,reference",
                   help="minievo paths to time, comma list of accel (the CLI default) and "
                        "reference (--no-accel)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-child", choices=["minievo", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = MODELS[args.model]
    for key in ("steps", "warmup", "batch", "mem_steps"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    for key in ("steps", "repeats", "threads", "batch"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    for key in ("warmup", "mem_steps"):
        if getattr(args, key) < 0:
            p.error(f"--{key.replace('_', '-')} must be >= 0, got {getattr(args, key)}")
    return args


def _data(model: str, batch: int, seed: int, n_batches: int = 8):
    """``n_batches`` seeded random batches (float32 images, int64 labels) for ``model``; the
    ResNets get 2 batches (each of 128 3x32x32 images is 1.5 MiB)."""
    import numpy as np

    if model != "lenet5":
        n_batches = 2
    rng = np.random.default_rng(seed)
    shape = (batch, *MODELS[model]["input"])
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(n_batches)]
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


def minievo_model(name: str, seed: int):
    """minievo's ``name`` model, seeded."""
    from minievo import init, models

    init.manual_seed(seed)
    return models.build(name)


def minievo_step_fn(batch: int, seed: int, accel: bool = True, model_name: str = "lenet5"):
    """One training step of minievo, on the accelerated path or the reference path."""
    import minievo.accel
    import minievo.functions as F
    from minievo.autograd import Tensor
    from minievo.optim import SGD

    model = minievo_model(model_name, seed)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xs, ys = _data(model_name, batch, seed)

    def step(i):
        k = i % len(xs)
        with minievo.accel.accelerated(accel):
            opt.zero_grad()
            loss = F.softmax_cross_entropy(model(Tensor(xs[k])), ys[k])
            loss.backward()
            opt.step()
        return loss

    return step


def torch_resnet(depth: int, in_channels: int = 3, num_classes: int = 10):
    """The CIFAR ResNet of :class:`minievo.models.ResNet` in PyTorch, layer for layer and in
    the same order: conv 3x3 (no bias), BatchNorm2d, ReLU; three stages of (depth - 2) / 6
    basic blocks of 16, 32, 64 channels (stride 2 first in stages 2 and 3; 1x1 convolution +
    BatchNorm2d shortcut where the shape changes); global average pool; linear."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))

    n = (depth - 2) // 6
    blocks, channels = [], 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            blocks.append(BasicBlock(channels, width, 2 if stage > 0 and i == 0 else 1))
            channels = width
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                      nn.ReLU()),
        nn.Sequential(*blocks), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def torch_model(name: str):
    """PyTorch's copy of minievo's ``name`` model (same layers, same order)."""
    from torch import nn

    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
        )
    return torch_resnet(int(name.removeprefix("resnet")))


def copy_weights(src, dst) -> int:
    """Copy minievo model ``src``'s parameters (and batch-norm statistics) into the PyTorch
    model ``dst``, layer by layer in order; ValueError when the layer lists differ. Returns
    the number of layers copied."""
    import numpy as np
    import torch
    from torch import nn

    from minievo import layers

    kinds = {layers.Conv2d: nn.Conv2d, layers.Linear: nn.Linear,
             layers.BatchNorm2d: nn.BatchNorm2d}
    ours = [m for m in src.modules() if type(m) in kinds]
    theirs = [m for m in dst.modules() if type(m) in kinds.values()]
    if [kinds[type(m)] for m in ours] != [type(m) for m in theirs]:
        raise ValueError("the minievo and PyTorch models have different layer lists")
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            pairs = [(a.weight.data, b.weight)]
            if getattr(a, "bias", None) is not None:
                pairs.append((a.bias.data, b.bias))
            elif getattr(b, "bias", None) is not None:
                raise ValueError(f"{a!r} has no bias but PyTorch's {b!r} has one")
            if isinstance(a, layers.BatchNorm2d):
                pairs += [(a.running_mean, b.running_mean), (a.running_var, b.running_var)]
            for ours_arr, theirs_t in pairs:
                if tuple(ours_arr.shape) != tuple(theirs_t.shape):
                    raise ValueError(f"shape {tuple(ours_arr.shape)} of {a!r} against "
                                     f"{tuple(theirs_t.shape)} in PyTorch")
                theirs_t.copy_(torch.from_numpy(np.ascontiguousarray(ours_arr)))
    return len(ours)


def check_same_network(model_name: str, batch: int, seed: int) -> float:
    """The outputs (logits, training mode) of minievo (reference path) and of PyTorch started
    from the same weights on the first batch: the largest difference relative to the largest
    logit (about 1e-6 in float32 when the networks are the same)."""
    import numpy as np
    import torch

    import minievo.accel
    from minievo.autograd import Tensor

    model = minievo_model(model_name, seed)
    tmodel = torch_model(model_name)
    copy_weights(model, tmodel)
    xs, _ = _data(model_name, batch, seed)
    with minievo.accel.accelerated(False):
        ours = model(Tensor(xs[0])).data
    with torch.no_grad():
        theirs = tmodel(torch.from_numpy(xs[0])).numpy()
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def torch_step_fn(batch: int, seed: int, model_name: str = "lenet5"):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = torch_model(model_name)
    if model_name != "lenet5":  # the same start as minievo's (the cost does not depend on it)
        copy_weights(minievo_model(model_name, seed), model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    xs, ys = _data(model_name, batch, seed)
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
        step = torch_step_fn(args.batch, args.seed, args.model)
    else:
        step = minievo_step_fn(args.batch, args.seed, model_name=args.model)
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
           "--model", args.model, "--mem-steps", str(args.mem_steps), "--batch",
           str(args.batch), "--threads", str(args.threads), "--seed", str(args.seed)]
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

    spec = MODELS[args.model]
    n_train = 60000 if args.model == "lenet5" else 50000  # MNIST / CIFAR-10 training images
    print(f"{spec['title']}, batch {args.batch}, {'x'.join(map(str, spec['input']))}, float32, "
          f"SGD(momentum 0.9, wd 5e-4); {args.threads} thread(s); {args.repeats} repeats x "
          f"{args.steps} steps (+{args.warmup} warm-up each), interleaved")
    print(f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else ""))

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in ("accel", "reference") for p in paths):
        print(f"train_throughput: error: --paths takes accel and/or reference, got "
              f"{args.paths!r}", file=sys.stderr)
        return 2
    if torch is not None and args.model != "lenet5":
        diff = check_same_network(args.model, args.batch, args.seed)
        print(f"same network: minievo's and PyTorch's logits from the same weights differ by "
              f"{diff:.1e} (relative to the largest)")
        if diff > 1e-4:
            print("train_throughput: error: the PyTorch copy computes another function",
                  file=sys.stderr)
            return 1
    steps = {}
    if "accel" in paths:
        steps["minievo"] = minievo_step_fn(args.batch, args.seed, True, args.model)
    if "reference" in paths:
        steps["minievo-ref"] = minievo_step_fn(args.batch, args.seed, False, args.model)
    if torch is not None:
        steps["pytorch-cpu"] = torch_step_fn(args.batch, args.seed, args.model)
    runs = {name: [] for name in steps}  # (wall, cpu) seconds per step, one pair per repeat
    load_start = os.getloadavg()[0]
    for _ in range(args.repeats):  # interleaved: all see the same load
        for name, step in steps.items():
            runs[name].append(_time_steps(step, args.warmup, args.steps))
    load_end = os.getloadavg()[0]
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    median = {name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
              for name, r in runs.items()}
    names = list(steps)
    tstep = steps.get("pytorch-cpu")

    print(f"load average (1 min): {load_start:.2f} at the start, {load_end:.2f} at the end "
          f"({os.cpu_count()} CPUs)")
    print()
    print(f"{'framework':<12} {'ms/step':>8} {'images/s':>9} {'median':>7} {'epoch s':>8} "
          f"{'CPU ms/step':>12} {'RSS base MiB':>13} {'RSS peak MiB':>13} {'alloc peak MiB':>15}")
    for name in names:
        t, cpu = best[name]
        ips = args.batch / t
        m = mem.get(name) or {}

        def fmt(key, width, m=m):
            v = m.get(key)
            return f"{v:{width}.1f}" if v is not None else f"{'-':>{width}}"

        print(f"{name:<12} {t * 1e3:8.2f} {ips:9.0f} {args.batch / median[name][0]:7.0f} "
              f"{n_train / ips:8.1f} {cpu * 1e3:12.2f} "
              f"{fmt('rss_base', 13)} {fmt('rss_peak', 13)} {fmt('alloc_peak', 15)}")
    print(f"(ms/step, images/s, epoch s ({n_train} images) and CPU ms/step: the best repeat; "
          f"median: images/s of the median repeat)")
    if tstep is not None:
        print()
        for name in (n for n in names if n != "pytorch-cpu"):
            ratio = best["pytorch-cpu"][0] / best[name][0]
            ratio_med = median["pytorch-cpu"][0] / median[name][0]
            cpu_ratio = best["pytorch-cpu"][1] / best[name][1]
            what = "accelerated, the CLI default" if name == "minievo" else "reference path"
            print(f"ratio {name} / pytorch (images/s, wall clock): {ratio:.2f}x best, "
                  f"{ratio_med:.2f}x median   (CPU time per step: {cpu_ratio:.2f}x)   [{what}]")
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
