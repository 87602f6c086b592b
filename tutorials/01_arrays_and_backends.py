# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 1 — Arrays and backends
#
# Everything in minievo, from the autodiff engine to the evolution of sparse networks, is
# built on one data structure: the n-dimensional array of NumPy (on the CPU) or CuPy (on a
# GPU). This chapter is about that array: what it is in memory, why a vectorised expression is
# a hundred times faster than a Python loop, how broadcasting and strides work, and how
# minievo lets the same code run on either device.
#
# **How to read the chapters.** Each chapter is a runnable Python script in the *jupytext
# percent* format: `# %%` starts a code cell, `# %% [markdown]` a text cell. Run it as a
# script (`python tutorials/01_arrays_and_backends.py`) or turn it into a notebook
# (`jupytext --to notebook tutorials/01_arrays_and_backends.py`). Figures are written to
# `tutorials/figures/`. With `MINIEVO_FAST=1` every size knob shrinks so that the chapter
# finishes in seconds; the tests run every chapter that way.

# %%
import sys
import time

import matplotlib

if "ipykernel" not in sys.modules:  # as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from minievo import tutorial

# Fast mode, the figures folder and save(fig, name): the set-up all chapters share.
FAST = tutorial.fast_mode()
FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
save = tutorial.figure_saver(FIGURES)


print(f"fast mode: {FAST}; numpy {np.__version__}")

# %% [markdown]
# ## 1. An array is a block of memory plus a recipe to read it
#
# A NumPy array is one contiguous (or strided) block of memory holding numbers of a single
# type, the *dtype*, together with a *shape* and *strides*. The stride of an axis is how many
# bytes to jump to reach the next element along that axis. The element `x[i, j]` of a 2-D
# array lives at byte offset `i * strides[0] + j * strides[1]` from the start of the block.
#
# minievo computes in **float32** by default: half the memory and memory traffic of float64,
# and on GPUs many times the arithmetic throughput. Gradient *checks* run in float64, where
# rounding does not drown the finite differences (chapter 2).

# %%
x = np.arange(12, dtype=np.float32).reshape(3, 4)
print(x)
print("shape", x.shape, "dtype", x.dtype, "itemsize", x.itemsize, "bytes")
print("strides", x.strides, "-> next row is", x.strides[0], "bytes away, next column",
      x.strides[1])
print("bytes in total:", x.nbytes)

# %% [markdown]
# Many operations do not copy anything: they return a **view**, a new shape and new strides
# over the same memory. A transpose swaps the strides; slicing with a step multiplies them.
# Writing through a view changes the original.

# %%
t = x.T
print("x.T strides", t.strides, "shares memory with x:", np.shares_memory(x, t))
every_other = x[:, ::2]
print("x[:, ::2] strides", every_other.strides, "shares memory:",
      np.shares_memory(x, every_other))
every_other[0, 0] = 100.0
print("after writing through the view, x[0, 0] =", x[0, 0])
x[0, 0] = 0.0
print("x.T is C-contiguous?", t.flags.c_contiguous, "  np.ascontiguousarray copies:",
      not np.shares_memory(np.ascontiguousarray(t), x))

# %% [markdown]
# ## 2. Broadcasting
#
# Arithmetic between arrays of different shapes follows the *broadcasting* rule: align the
# shapes on the right; two lengths are compatible when they are equal or one of them is 1;
# a missing leading axis counts as length 1. An axis of length 1 is *stretched* (virtually,
# with stride 0) to the other length. So a column (3, 1) plus a row (1, 4) gives a (3, 4)
# table, and a bias of shape (O,) is added to every row of an (N, O) batch.
#
# Broadcasting matters twice in a deep-learning framework: once in the forward pass, and once
# in the backward pass, where the gradient of a stretched input must be **summed back** over
# the axes it was stretched along. That reverse operation, `sum_to`, is assignment task 2.3
# (chapter 2).

# %%
col = np.array([[0.0], [10.0], [20.0]], dtype=np.float32)  # (3, 1)
row = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)  # (1, 4)
table = col + row
print(table)
stretched = np.broadcast_to(col, (3, 4))
print("the stretched column has strides", stretched.strides, "(0: the same element again)")

fig, axes = plt.subplots(1, 3, figsize=(9, 2.8),
                         gridspec_kw={"width_ratios": [1, 4, 4]})
for ax, arr, title in zip(axes, [col, row, table], ["column (3, 1)", "row (1, 4)",
                                                    "column + row = (3, 4)"]):
    ax.imshow(arr, cmap="viridis", vmin=0, vmax=25)
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, f"{v:g}", ha="center", va="center", color="w")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Broadcasting: length-1 axes are stretched")
save(fig, "01_broadcasting.png")

# %% [markdown]
# ## 3. Why vectorise: the interpreter is the bottleneck
#
# A Python loop pays for the interpreter on every element: fetching the bytecode, boxing the
# float into a Python object, dispatching `*` on its type. A NumPy expression pays that once and
# then runs a compiled loop over the whole array (often with SIMD instructions, and for
# matrix products on several cores through BLAS). Let us measure the dot product of two
# vectors both ways.

# %%
def dot_loop(a, b):
    total = 0.0
    for i in range(len(a)):
        total += a[i] * b[i]
    return total


def best_time(fn, repeat=3):
    """The best of a few runs: the least disturbed by other programs on the machine."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


sizes = [10**k for k in range(1, 5 if FAST else 7)]
rng = np.random.default_rng(0)
loop_t, numpy_t = [], []
for n in sizes:
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    loop_t.append(best_time(lambda a=a, b=b: dot_loop(a, b), repeat=1 if n > 10**5 else 3))
    numpy_t.append(best_time(lambda a=a, b=b: a @ b))
    print(f"n = {n:>8}: loop {loop_t[-1] * 1e3:9.3f} ms   numpy {numpy_t[-1] * 1e3:8.4f} ms"
          f"   ratio {loop_t[-1] / numpy_t[-1]:7.0f}x")

fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(sizes, loop_t, "o-", label="Python loop")
ax.loglog(sizes, numpy_t, "s-", label="NumPy a @ b")
ax.set_xlabel("vector length n")
ax.set_ylabel("seconds (best of a few runs)")
ax.set_title("Dot product: interpreted loop against one vectorised call")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
save(fig, "01_vectorisation.png")

# %% [markdown]
# ## 4. Matrix products and the float32 default
#
# A dense layer is a matrix product, and a convolution becomes one (chapter 4). BLAS reaches a
# large fraction of the processor's peak on big products; small products are dominated by
# overheads. The figure shows the achieved GFLOP/s (2 n^3 floating-point operations for an
# n x n product) in float32 and float64. Expect roughly twice the speed in float32: a SIMD
# register holds twice as many of them. (On a machine shared with other jobs the numbers
# jump around: a multi-threaded BLAS waits for its slowest thread. We keep the best of five.)

# %%
mm_sizes = [32, 64, 128, 256] if FAST else [32, 64, 128, 256, 512, 1024]
gflops = {np.float32: [], np.float64: []}
for n in mm_sizes:
    for dtype in gflops:
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        a @ b  # warm-up: BLAS starts its threads on the first call
        t = best_time(lambda a=a, b=b: a @ b, repeat=5)
        gflops[dtype].append(2 * n**3 / t / 1e9)
    print(f"n = {n:>5}: float32 {gflops[np.float32][-1]:7.1f} GFLOP/s   "
          f"float64 {gflops[np.float64][-1]:7.1f} GFLOP/s")

fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogx(mm_sizes, gflops[np.float32], "o-", label="float32", base=2)
ax.semilogx(mm_sizes, gflops[np.float64], "s-", label="float64", base=2)
ax.set_xlabel("matrix size n (n x n times n x n)")
ax.set_ylabel("GFLOP/s")
ax.set_title("Matrix product on this machine (best of five)")
ax.grid(True, alpha=0.3)
ax.legend()
save(fig, "01_matmul_gflops.png")

# %% [markdown]
# ## 5. Strides as a tool: sliding windows without a copy
#
# Because a view is just new strides over old memory, we can look at *every* 3x3 window of
# an image as a 4-D array (rows of windows, columns of windows, 3, 3) without copying a single
# pixel: moving one window to the right is one pixel (one itemsize) further, moving inside a
# window also one pixel. `numpy.lib.stride_tricks.sliding_window_view` does exactly this.
# Chapter 4 builds the fast convolution (*im2col*, task 4.1) on this trick.

# %%
from numpy.lib.stride_tricks import sliding_window_view

image = np.arange(25, dtype=np.float32).reshape(5, 5)
windows = sliding_window_view(image, (3, 3))
print("image strides", image.strides, "-> windows shape", windows.shape, "strides",
      windows.strides)
print("window (1, 2):\n", windows[1, 2])
print("no copy was made:", np.shares_memory(windows, image))
# A 3x3 box blur as one vectorised mean over the window axes:
print("box blur:\n", windows.mean(axis=(2, 3)))

# %% [markdown]
# ## 6. One code base, two devices: `minievo.backend`
#
# minievo runs on NumPy or on CuPy, which mirrors NumPy's API on an NVIDIA GPU. Two rules
# keep one code base working on both:
#
# 1. **The data decides.** Every operation asks `xp = get_array_module(x)` and uses `xp.exp`,
#    `xp.zeros`, ... of whatever kind of array it received. Nothing moves between devices
#    behind your back.
# 2. **A default backend only decides where new arrays are created** (parameters, masks, data
#    batches): `minievo.backend.set_backend("cupy")`, the `using_backend(...)` context
#    manager, the environment variable `MINIEVO_BACKEND`, or the CLI flag `--backend`.
#
# Transfers are explicit: `to_backend(x, "cupy")`, `model.to("cupy")`, `loader.to(...)`.

# %%
from minievo import backend

print("backends:", backend.BACKENDS, " default:", backend.get_backend())
a = backend.array([[1.0, 2.0], [3.0, 4.0]])  # created on the default backend, float32
xp = backend.get_array_module(a)
print("array module of a:", xp.__name__, " dtype:", a.dtype)
print("softplus(a) =\n", xp.log1p(xp.exp(a)))  # device-agnostic code: xp, not np

try:
    backend.set_backend("tpu")
except backend.BackendError as exc:
    print("BackendError:", exc)

if backend.cupy_available():
    import cupy as cp

    g = backend.to_backend(a, "cupy")
    print("on the GPU:", type(g), backend.get_array_module(g).__name__)
    try:
        backend.get_array_module(a, g)  # numpy and cupy in one operation
    except backend.BackendError as exc:
        print("BackendError:", exc)
    with backend.using_backend("cupy"):
        print("created under using_backend('cupy'):", type(backend.array([1.0])))
    n = 1024 if FAST else 4096
    m = cp.random.standard_normal((n, n), dtype=cp.float32)
    m @ m
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    m @ m
    cp.cuda.Device().synchronize()
    print(f"GPU float32 {n}x{n} product: {2 * n**3 / (time.perf_counter() - t0) / 1e9:.0f} "
          "GFLOP/s")
else:
    try:
        backend.set_backend("cupy")
    except backend.BackendError as exc:
        print("No usable GPU here, and minievo says why:\n  ", exc)

# %% [markdown]
# The autodiff engine of the next chapter wraps such an array in a `Tensor`: `t.data` is the
# raw array (NumPy or CuPy), `t.numpy()` always gives a NumPy copy, and operators build the
# graph that the backward pass walks.

# %%
from minievo.autograd import Tensor

t = Tensor(np.ones((2, 3), dtype=np.float32))
print(t, "| shape", t.shape, "| numpy copy:", type(t.numpy()).__name__)

# %% [markdown]
# ## Exercises
#
# 1. Predict the shape and strides of `np.zeros((4, 5, 6), np.float32).transpose(2, 0, 1)`,
#    then check. Which of its axes is contiguous?
# 2. Write `relu(x)` as a Python loop and as `np.maximum(x, 0)`; time both for 10^6 elements.
# 3. Using `sliding_window_view`, write a 2-D max-pooling with a 2x2 window and stride 2 in
#    one line (hint: slice the windows view with a step).
# 4. Broadcasting backwards: if `y = x + b` with `x` of shape (N, O) and `b` of shape (O,),
#    the gradient that reaches `b` has shape (N, O). Which axes must be summed to get back to
#    (O,)? What if `b` had shape (1, O)? Writing the general rule is **assignment task 2.3**
#    (`minievo assignments list`; chapter 2).
