"""Inference speed of compact (cluster-sparse) models against the masked dense ones.

For a single conv layer (LeNet-5's conv2: 20 -> 50 maps, 5x5, 12x12 input) and the whole
LeNet-5, with random masks keeping 100, 50, 20, 10, 5, 2 and 1 % of the kernels (conv) and of
the synapses (linear), it prints images per second of

* the masked dense forward (minievo's layers: im2col + GEMM, weight * mask), and
* the compact forward (:func:`minievo.sparse.compact`),

with the ratio of multiply-accumulates (dense / executed) beside the ratio of times. Optional:

* ``--model-checkpoint PATH``: an evolved model (a lineage ``model.npz`` or a ``minievo train``
  checkpoint) is measured the same way;
* ``--synthesize``: an evolution-like LeNet-5 made here by repeated evolutionary synthesis
  (docs/method.md#sampling, no retraining between generations) until it reaches
  ``--target-efficiency``;
* ``--sweep``: every CPU path (native, csr, dense) at every density, the measurement behind
  the cost models in :mod:`minievo.sparse.cpu`;
* ``--backend cupy``: on a GPU, the RawKernels against the dense CuPy path and against
  ``cupyx.scipy.sparse``.

Run: ``python benchmarks/sparse_forward.py [--batch 1000] [--repeats 5]``. Timings are the best
of ``--repeats`` runs (dense and compact interleaved, so a busy machine slows both alike).
``--single-thread`` pins BLAS and the sparse products to one thread and times CPU seconds of the
process instead of wall seconds: the comparison to use on a shared, busy machine, where
multi-threaded BLAS timings swing by 10x with the load. ``MINIEVO_NATIVE=0`` measures the
compact models without the compiled kernel (the scipy.sparse / BLAS paths only).
"""

from __future__ import annotations

import argparse
import contextlib
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
from minievo import backend, models, sparse  # noqa: E402
from minievo import layers as L  # noqa: E402
from minievo.accel import sparse_train  # noqa: E402
from minievo.autograd import Tensor, no_grad  # noqa: E402
from minievo.kernels import native  # noqa: E402
from minievo.sparse.synthetic import set_random_masks  # noqa: E402

DENSITIES = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]


def sync(xp) -> None:
    if xp.__name__ == "cupy":
        xp.cuda.Stream.null.synchronize()


CLOCK = time.perf_counter


def best_times(fns: list, repeats: int, xp) -> list[float]:
    """Best time (s) of each function over ``repeats`` interleaved rounds (after one warm-up
    call of each); wall time, or CPU time with --single-thread."""
    for fn in fns:
        fn()
    sync(xp)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = CLOCK()
            fn()
            sync(xp)
            best[i] = min(best[i], CLOCK() - t0)
    return best


def dense_call(model, x):
    """The masked dense forward on the accelerator's im2col + BLAS path (channels-last conv,
    two-pass pool; sparse training's kernel path is off here)."""
    def run():
        with no_grad(), dense_layers():
            return model(Tensor(x)).data
    return run


@contextlib.contextmanager
def dense_layers():
    old = sparse_train.get_mode()
    sparse_train.set_mode("off")
    try:
        with minievo.accel.accelerated():
            yield
    finally:
        sparse_train.set_mode(old)


def conv_layer_model(rng, density, backend_name="numpy"):
    return set_random_masks(L.Sequential(L.Conv2d(20, 50, 5)).to(backend_name), rng, density)


def fmt_row(label, mac_ratio, t_dense, t_compact, batch, extra=""):
    return (f"{label:<26}{mac_ratio:>10.1f}x{t_dense * 1e3:>10.1f}{t_compact * 1e3:>12.1f}"
            f"{t_dense / t_compact:>10.2f}x{batch / t_dense:>13,.0f}{batch / t_compact:>15,.0f}"
            f"  {extra}")


HEADER = (f"{'case':<26}{'MAC ratio':>11}{'dense ms':>10}{'compact ms':>12}{'speed-up':>11}"
          f"{'dense img/s':>13}{'compact img/s':>15}  methods")


def compare(label, model, x, repeats, xp, method="auto", input_shape=None):
    cm = sparse.compact(model, input_shape=input_shape, method=method)
    s = cm.summary()
    t_dense, t_compact = best_times([dense_call(model, x), lambda: cm(x)], repeats, xp)
    methods = ",".join(layer.method for layer in cm.compact_layers) or "constant"
    print(fmt_row(label, s.mac_ratio, t_dense, t_compact, x.shape[0], methods), flush=True)
    return s, t_dense, t_compact


def load_checkpoint_model(path: str, name: str | None):
    from minievo import checkpoint

    arrays, meta = checkpoint.load(path)
    if any(k.startswith("model/") for k in arrays):
        arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    model_name = name or meta.get("model") or meta.get("config", {}).get("model") or "lenet5"
    if model_name in models.ANY_INPUT:
        # a ResNet takes its input channels from the data: read them off its first
        # convolution (1 channel: a 28x28 MNIST-like image, 3: a 32x32 CIFAR-like one)
        first = next(v for k, v in arrays.items() if k.endswith("weight") and v.ndim == 4)
        shape = (1, 28, 28) if first.shape[1] == 1 else (int(first.shape[1]), 32, 32)
    else:
        shape = models.INPUT_SHAPES.get(model_name, (1, 28, 28))
    model = models.build(model_name, shape if model_name in models.ANY_INPUT else None)
    model.load_state_dict(arrays)
    return model.eval(), model_name, shape


def synthesize_evolved(ancestor, target: float, seed: int, retention: float = 0.7):
    """Repeated evolutionary synthesis (no retraining) until ``target`` synaptic efficiency.

    Without retraining between generations the structure is only evolution-like: more of it
    ends up dead than in a real lineage. Use --model-checkpoint for real evolved models.
    """
    import warnings

    from minievo.evolution.environment import TargetRetention
    from minievo.evolution.synthesis import synthesize_offspring
    from minievo.layers import prunable_layers

    warnings.simplefilter("ignore", RuntimeWarning)  # "target retention out of reach"
    rng = np.random.default_rng(seed)
    dense = sum(int(np.prod(layer.weight.shape)) for _, layer in prunable_layers(ancestor))
    generation = 0
    while True:
        live = sum(int(backend.to_numpy(layer.mask).sum()) for _, layer in
                   prunable_layers(ancestor))
        if dense / max(live, 1) >= target or generation >= 40:
            return ancestor, generation, dense / max(live, 1)
        masks = synthesize_offspring(ancestor, TargetRetention(retention), rng,
                                     synapse_quantile=0.5, cluster_quantile=0.5,
                                     scope="network")
        for (_, layer), mask in zip(prunable_layers(ancestor), masks):
            layer.set_mask(mask)
        generation += 1


def gpu_section(args, rng):
    import cupy as cp
    import cupyx.scipy.sparse as cpsp

    from minievo.functions.conv import im2col

    print("\nGPU: conv2 layer (20->50, 5x5, 12x12), batch", args.batch)
    print(f"{'live':>6}{'dense CuPy ms':>15}{'RawKernel ms':>14}{'cupyx csr ms':>14}")
    x = cp.asarray(rng.standard_normal((args.batch, 20, 12, 12)).astype(np.float32))
    for d in DENSITIES:
        model = conv_layer_model(rng, d, "cupy")
        conv = model[0]
        cc = sparse.CompactConv2d.from_dense(conv.weight.data, conv.bias.data,
                                             conv.mask).to("cupy")
        w = (conv.weight.data * conv.mask).reshape(50, -1)  # columns (c, i, j), as im2col
        csr = cpsp.csr_matrix(w)
        bias = conv.bias.data

        def via_cupyx(csr=csr, bias=bias):
            cols, _ = im2col(x, 5, 5, 1, 0)
            return (csr @ cols.T) + bias[:, None]

        t = best_times([dense_call(model, x), lambda cc=cc: cc(x), via_cupyx], args.repeats, cp)
        print(f"{d:>6.0%}{t[0] * 1e3:>15.2f}{t[1] * 1e3:>14.2f}{t[2] * 1e3:>14.2f}", flush=True)
    print("\nGPU: LeNet-5, batch", args.batch)
    xl = cp.asarray(rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32))
    print(HEADER)
    for d in DENSITIES:
        model = set_random_masks(models.lenet5().to("cupy"), rng, d)
        compare(f"lenet5 {d:.0%} live", model, xl, args.repeats, cp)
    for path in args.model_checkpoint:
        model, name, shape = load_checkpoint_model(path, args.model)
        xm = cp.asarray(rng.standard_normal((args.batch, *shape)).astype(np.float32))
        print(f"\nGPU: checkpoint {path} ({name})")
        print(HEADER)
        compare(f"{name} checkpoint", model.to("cupy"), xm, args.repeats, cp,
                input_shape=shape)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--densities", type=str, default=",".join(map(str, DENSITIES)))
    p.add_argument("--model-checkpoint", type=str, action="append", default=[],
                   help="an evolved model: lineage model.npz or `minievo train` checkpoint "
                        "(repeatable)")
    p.add_argument("--model", type=str, default=None, help="model name for the checkpoint")
    p.add_argument("--synthesize", action="store_true",
                   help="also measure an evolution-like LeNet-5 made by repeated synthesis")
    p.add_argument("--ancestor", type=str, default=None,
                   help="trained ancestor checkpoint for --synthesize (default: random init)")
    p.add_argument("--target-efficiency", type=float, default=125.0)
    p.add_argument("--sweep", action="store_true",
                   help="every CPU path (native, csr, dense) at every density")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the native and csr products")
    p.add_argument("--backend", choices=backend.BACKENDS, default="numpy")
    p.add_argument("--skip", type=str, default="", help="comma list: conv,lenet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single-thread", action="store_true",
                   help="one thread everywhere, timed in CPU seconds (for busy machines)")
    args = p.parse_args(argv)
    global CLOCK
    if args.single_thread:
        CLOCK = time.process_time
    if args.threads:
        sparse.set_num_threads(args.threads)
    densities = [float(d) for d in args.densities.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    rng = np.random.default_rng(args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    clock = "CPU time, one thread" if args.single_thread else "wall time"
    print(f"minievo sparse forward benchmark: batch {args.batch}, best of {args.repeats} "
          f"({clock}), {os.cpu_count()} CPUs, load average {load:.2f}, sparse threads "
          f"{sparse.get_num_threads()}")
    print(f"native kernel: {native.status()}")
    cpu_methods = [*(["native"] if native.available() else []), "csr", "dense"]
    if args.backend == "cupy":
        gpu_section(args, rng)
        return 0
    xp = np
    if "conv" not in skip:
        print("\nsingle conv layer: LeNet-5 conv2 (20->50 maps, 5x5, input 12x12), random live "
              "kernels")
        print(HEADER)
        x = rng.standard_normal((args.batch, 20, 12, 12)).astype(np.float32)
        for d in densities:
            model = conv_layer_model(rng, d)
            methods = cpu_methods if args.sweep else ["auto"]
            for method in methods:
                label = f"conv2 {d:.0%} live" + (f" [{method}]" if args.sweep else "")
                compare(label, model, x, args.repeats, xp, method, input_shape=(20, 12, 12))
    if "lenet" not in skip:
        print("\nLeNet-5: random masks, that fraction of the conv kernels and linear synapses "
              "live")
        print(HEADER)
        x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
        for d in densities:
            model = set_random_masks(models.lenet5(), rng, d)
            methods = cpu_methods if args.sweep else ["auto"]
            for method in methods:
                label = f"lenet5 {d:.0%} live" + (f" [{method}]" if args.sweep else "")
                compare(label, model, x, args.repeats, xp, method)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    if args.synthesize:
        if args.ancestor:
            ancestor, _, _ = load_checkpoint_model(args.ancestor, "lenet5")
        else:
            ancestor = set_random_masks(models.lenet5(), rng, 1.0)
        evolved, gens, eff = synthesize_evolved(ancestor, args.target_efficiency, args.seed)
        print(f"\nevolution-like LeNet-5: {gens} generations of synthesis (no retraining), "
              f"synaptic efficiency {eff:.0f}x")
        print(HEADER)
        s, _, _ = compare("synthesized lenet5", evolved, x, args.repeats, xp)
        print(s)
    for path in args.model_checkpoint:
        model, name, shape = load_checkpoint_model(path, args.model)
        xm = rng.standard_normal((args.batch, *shape)).astype(np.float32)
        print(f"\ncheckpoint {path} ({name}, input {'x'.join(map(str, shape))})")
        print(HEADER)
        s, _, _ = compare(f"{name} checkpoint", model, xm, args.repeats, xp,
                          input_shape=shape)
        print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
