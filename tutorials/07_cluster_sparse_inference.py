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
# # Chapter 7 — Cluster-sparse inference: CPU, CUDA, and a GPU emulator
#
# A mask full of zeros does not make a network faster by itself: a dense matrix product
# multiplies the zeros too. Speed comes from *not doing* the work, and hardware is good at
# skipping work only in large regular pieces. That is why the paper's synaptic clusters
# matter: when whole kernels, filters and neurons disappear, the network can be rebuilt as a
# smaller dense-ish network plus short lists of the kernels that remain.
#
# This chapter takes an evolved LeNet-5, **compacts** it (`minievo.sparse.compact`), measures
# the CPU path, walks through the CUDA kernel that runs the compact convolution on a GPU, runs
# that very CUDA source on the CPU with minievo's emulator, and, where a GPU exists, on the GPU.
#
# Assignment tasks: **7.1** compaction, the CSR list of live kernels; **7.2** the tile loop of
# the CUDA convolution kernel (section "Your turn", near the end), graded on the CPU through
# the emulator.
#
# **Two meanings of "kernel".** In a convolution, a *kernel* is the kh x kw block of weights
# that connects one input map to one output map: the paper's *kernel cluster*, the unit that
# compaction keeps or drops. In CUDA, a *kernel* is a function marked `__global__` that the
# GPU runs in many threads at once. This chapter needs both; "live kernel" and "CSR list of
# kernels" always mean the weight blocks, "the CUDA kernel" (or "RawKernel") the function.

# %%
import sys
import time

import matplotlib

if "ipykernel" not in sys.modules:  # as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from minievo import backend, init, kernels, models, sparse, tutorial
from minievo.autograd import Tensor, no_grad
from minievo.evolution import EnvironmentalFactor, apply_offspring_init, synthesize_offspring
from minievo.layers import prunable_layers
from minievo.sparse import gpu as sparse_gpu
from minievo.sparse import reference as ref
from minievo.sparse import train as sparse_train

# Fast mode, the figures folder and save(fig, name): the set-up all chapters share.
FAST = tutorial.fast_mode()
FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
save = tutorial.figure_saver(FIGURES)


# %% [markdown]
# ## 1. Networks to run
#
# Speed depends on the *structure* of the masks, not on the values of the weights. So instead
# of training a lineage (chapter 6), we let a freshly initialised LeNet-5 go through a few
# rounds of synthesis without training (F = 1): each round removes roughly half of the
# synapses, whole kernels and neurons among them. `lineage[g]` is the network after g rounds. (To time your own
# evolved network, load its `gen_XXX/model.npz` from a run folder instead.)

# %%
ROUNDS = 4 if FAST else 6
init.manual_seed(0)
net = models.lenet5()
lineage = [net]
for g in range(1, ROUNDS + 1):
    masks = synthesize_offspring(lineage[-1], EnvironmentalFactor(1.0, 1.0),
                                 np.random.default_rng(g))
    child = models.lenet5()
    apply_offspring_init(child, masks, "inherit", ancestor_state=lineage[-1].state_dict())
    lineage.append(child)
for g, m in enumerate(lineage):
    live = sum(int(layer.mask.sum()) for _, layer in prunable_layers(m))
    print(f"round {g}: {live:>7,} synapses ({430500 / live:6.1f}x fewer)")

# %% [markdown]
# ## 2. The CSR list of live kernels
#
# Take conv2 of the network after three rounds. Its mask has shape (O, I, kh, kw) =
# (50, 20, 5, 5). A kernel (o, i) is *live* when any of its 25 mask entries is 1. The compact
# layer stores, in **compressed sparse row** (CSR) form over the (output map, input map)
# pairs:
#
# * `indptr` (O + 1 integers): the live kernels of output map o are numbers
#   `indptr[o] ... indptr[o+1] - 1`;
# * `indices` (one per live kernel): the input map it reads;
# * `kernels` (live kernels, kh, kw): its weights, masked taps set to 0.
#
# Then output map o is its bias plus the sum, over its own live kernels only, of a small 2-D
# convolution of one input map: a dead kernel costs nothing at all, and an output map with an
# empty row costs only its bias. Building these three arrays from a weight and its mask is
# `reference.kernel_csr`, **task 7.1**.

# %%
conv2 = prunable_layers(lineage[3])[1][1]
w2, m2 = conv2.weight.numpy(), np.asarray(conv2.mask)
indptr, indices, kern = ref.kernel_csr(w2, m2)
print(f"conv2 after 3 rounds: {int(m2.sum()):,} synapses in {len(indices)} live kernels of "
      f"{m2.shape[0] * m2.shape[1]}")
print("indptr[:9]  =", indptr[:9])
for o in range(3):
    print(f"output map {o}: input maps {indices[indptr[o]:indptr[o + 1]].tolist()}")
print("kernels:", kern.shape, kern.dtype)

x = np.random.default_rng(0).normal(size=(2, 20, 12, 12)).astype(np.float32)
b2 = conv2.bias.numpy()
y_csr = ref.csr_conv2d(x, indptr, indices, kern, b2)
y_dense = ref.masked_conv2d(x, w2, b2, m2)
print(f"CSR convolution against the masked dense one: max |diff| = "
      f"{np.abs(y_csr - y_dense).max():.2e}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.3, 1]})
axes[0].imshow(m2.any(axis=(2, 3)), cmap="gray_r", aspect="auto", interpolation="nearest")
axes[0].set_xlabel("input map i")
axes[0].set_ylabel("output map o")
axes[0].set_title(f"conv2: live kernels (black), {len(indices)} of {m2.shape[0] * m2.shape[1]}")
axes[1].barh(np.arange(m2.shape[0]), np.diff(indptr), color="tab:blue")
axes[1].set_ylim(m2.shape[0] - 0.5, -0.5)
axes[1].set_xlabel("live kernels in the row: indptr[o+1] - indptr[o]")
axes[1].set_title("CSR row lengths (empty row: a dead output map)")
save(fig, "07_kernel_csr.png")

# %% [markdown]
# ## 3. `compact(model)`: removing dead structure
#
# `sparse.compact` applies this to a whole model, and first removes every piece of *dead
# structure* (METHOD.md section 5): an output map or neuron with no live incoming synapse
# computes a constant, so the synapses that read it do no work either. The compact model
# folds those constants into the next layer's bias, drops the dead maps and neurons, and
# re-indexes what remains. Its forward pass must equal the masked dense forward to float
# tolerance; `summary()` reports the sampled and the *effective* (executed) counts, and the
# multiply-accumulates per image that are left.

# %%
net3 = lineage[3]
cm = sparse.compact(net3)
print(cm)
print(cm.summary())
x = np.random.default_rng(1).normal(size=(64, 1, 28, 28)).astype(np.float32)
with no_grad():
    y_masked = net3(Tensor(x)).numpy()
y_compact = cm(x)
print(f"compact against masked dense: max |diff| = {np.abs(y_compact - y_masked).max():.2e}")

# %% [markdown]
# ## 4. The CPU path, measured
#
# On the CPU each compact layer runs one of three ways, chosen per layer by small cost models
# fitted to measurements (`minievo.sparse.cpu.choose_conv_method`):
#
# * `"native"`: a direct convolution over the live synapses only, written in C
#   (`minievo/kernels/sparse_cpu.c`, about 300 lines worth reading). minievo compiles it with
#   your C compiler the first time it is needed and caches the library; for a tile of 64
#   images it adds `w * x[shifted pixel]` for every live synapse into 64 running sums held in
#   vector registers. `minievo doctor` says whether it is available.
# * `"csr"`: a `scipy.sparse` CSR matrix of the live synapses (work proportional to them, but
#   scipy's generic kernel is several times slower per multiply-add than BLAS).
# * `"dense"`: the compacted weight as a dense matrix (BLAS): best when a layer is still dense.
#
# Without a C compiler (or with `MINIEVO_NATIVE=0`) the first is skipped. The same kernel
# also *trains* sparse masked layers (`minievo.sparse.train`): the input gradient is the same
# convolution run backwards (output gradient in, synapses regrouped by input map, taps
# flipped), and the weight gradient is one dot product per live synapse. Below, the time per
# image of the masked dense model against its compact form for every round of the lineage,
# with the path each layer took. The ideal speed-up is the ratio of multiply-accumulates; the
# real one is smaller, because memory traffic and call overhead do not shrink with the
# synapses.

# %%
def best_time(fn, repeat):
    fn()  # warm-up (BLAS threads, caches)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


batch = 256 if FAST else 1000
repeat = 3 if FAST else 10
xb = np.random.default_rng(2).normal(size=(batch, 1, 28, 28)).astype(np.float32)
rows = []
for g, m in enumerate(lineage):
    c = sparse.compact(m)
    sparse_train.set_mode("off")  # time the masked dense model on its im2col + BLAS path
    with no_grad():
        t_dense = best_time(lambda m=m: m(Tensor(xb)), repeat)
    sparse_train.set_mode("auto")
    t_compact = best_time(lambda c=c: c(xb), repeat)
    s = c.summary()
    rows.append((g, s.synaptic_efficiency, s.mac_ratio, t_dense, t_compact))
    paths = ",".join(layer.method for layer in c.compact_layers) or "constant"
    print(f"round {g}: {s.synaptic_efficiency:6.1f}x fewer synapses, MACs {s.mac_ratio:6.1f}x "
          f"fewer; dense {1e6 * t_dense / batch:7.1f} us/image, compact "
          f"{1e6 * t_compact / batch:7.1f} us/image ({t_dense / t_compact:5.1f}x) [{paths}]")

g_, eff, macr, td, tc = map(np.array, zip(*rows))
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.loglog(eff, 1e6 * td / batch, "o-", label="masked dense model")
ax.loglog(eff, 1e6 * tc / batch, "s-", label="compact model (CPU)")
ax.loglog(eff, 1e6 * td[0] / batch / macr, "k:", label="dense time / MAC ratio (ideal)")
ax.set_xlabel("synaptic efficiency (x fewer synapses than dense)")
ax.set_ylabel("microseconds per image")
ax.set_title(f"LeNet-5 inference on the CPU, batch {batch}")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
save(fig, "07_cpu_speed.png")

# %% [markdown]
# ## 5. A walk through the CUDA kernel
#
# On a GPU the compact convolution is one CUDA kernel, `minievo/kernels/sparse_conv2d.cu`,
# shipped with the package and compiled at first use by CuPy (`minievo.kernels.get_kernel`).
# Here is its source:

# %%
source = kernels.kernel_path("sparse_conv2d.cu").read_text()  # (a student copy: task 7.2's stub)
start = source.index('extern "C"')
for number, line in enumerate(source[start:].splitlines(), start=source[:start].count("\n") + 1):
    print(f"{number:3d}  {line}")

# %% [markdown]
# How to read it (the comment at the top of the file gives the exact launch shape):
#
# * **One thread per output value.** `blockIdx.y` is the output map `o`; `blockIdx.x` and
#   `threadIdx.x` together pick one (image, pixel) position of that map. Each thread
#   accumulates its output in a register, `acc`, starting from the bias. Neighbouring threads
#   handle neighbouring images of the batch, so with the *batch-last layout* the compact model
#   uses, (C, H, W, N) instead of NumPy's usual (N, C, H, W), where the image index is the
#   fastest-varying axis in memory, their reads are neighbours too (*coalesced*: one wide
#   memory transaction instead of many).
# * **Only live kernels.** The loop runs over `indptr[o] .. indptr[o+1]`, the CSR row of map
#   `o`: the dead kernels of the mask never appear.
# * **Shared memory.** All threads of a block work for the same map `o`, so they need the
#   same weights. They load them *cooperatively* into the block's `__shared__` array `w_tile`
#   (thread `tid` loads elements `tid, tid + threads, ...`), wait at `__syncthreads()` until
#   the whole tile is there, then read the weights from fast on-chip memory instead of global
#   memory. The second `__syncthreads()` keeps a fast thread from overwriting the tile while
#   others still read it.
# * **Barriers must not diverge.** `__syncthreads()` waits for *every* thread of the block, so
#   every thread must reach it the same number of times. Threads whose position lies past the
#   end (`active == false`) therefore do not return early: they help load the tiles and only
#   skip the arithmetic. The trip count `begin .. end` is the same for the whole block because
#   it depends only on `o`.
# * **Strides, not layouts; 32-bit sizes.** The kernel gets an element stride for every axis
#   of `x` and `y`, so the same code reads NCHW and the batch-last layout. Sizes are 32-bit
#   `int`s, offsets are computed in 64 bits, and the host code
#   (`minievo.sparse.gpu.launch_conv2d`) checks dtypes, contiguity and that everything fits
#   before launching.
#
# Without a GPU the source can still be compiled to PTX, NVIDIA's virtual assembly, with
# NVRTC or nvcc when either is installed:

# %%
compilers = kernels.ptx_compilers()
if compilers:
    t0 = time.perf_counter()
    ptx = kernels.compile_to_ptx("sparse_conv2d.cu")
    entry = next(line for line in ptx.splitlines() if ".entry" in line)
    print(f"compiled with {compilers[0]} in {time.perf_counter() - t0:.2f} s: "
          f"{len(ptx.splitlines())} lines of PTX; {entry.strip()}")
else:
    print("no CUDA compiler here (pip install nvidia-cuda-nvrtc-cu12 cupy-cuda12x, or nvcc)")

# %% [markdown]
# ## 6. Running CUDA on the CPU: the emulator
#
# How do we test a GPU kernel on a machine without a GPU? minievo compiles the *same* `.cu`
# file with g++ and a small header, `minievo/kernels/cuda_emu.h`, that defines what CUDA
# provides: `blockIdx`, `threadIdx`, `__shared__` memory shared by the threads of a block,
# and `__syncthreads()` as a real barrier. The blocks of the grid run one after another; the
# threads of a block run as real OS threads, so a missing barrier shows up as a wrong result
# (or, with ThreadSanitizer, as a reported data race). By default it is built with
# AddressSanitizer, so an out-of-bounds read stops the run with a report.
#
# `EmulatedModule(...).get_function(name)` is called exactly like a `cupy.RawKernel`, so the
# launch code `sparse.gpu.launch_conv2d` — the very code the compact layers use on a GPU — is
# exercised here on NumPy arrays.

# %%
from minievo.kernels import emulate

if emulate.gpp_path() is None:
    print("g++ is not installed: the CUDA emulation needs it (apt-get install g++)")
else:
    t0 = time.perf_counter()
    module = emulate.EmulatedModule("sparse_conv2d.cu")
    conv_kernel = module.get_function(sparse_gpu.CONV_KERNEL)
    print(f"built (or found cached) in {time.perf_counter() - t0:.1f} s, sanitizer: "
          f"{module.sanitizer}")
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(2, 6, 11, 11)).astype(np.float32)
    ws = rng.normal(size=(4, 6, 3, 3)).astype(np.float32)
    ms = (rng.random((4, 6)) < 0.4)[:, :, None, None] & (rng.random((4, 6, 3, 3)) < 0.8)
    ms[2] = False  # a dead output map: an empty CSR row
    bs = rng.normal(size=4).astype(np.float32)
    ip, ix, kk = ref.kernel_csr(ws, ms)
    want = ref.csr_conv2d(xs, ip, ix, kk, bs, stride=1, padding=1)
    results = {}
    for threads in (32, 64, 128):
        t0 = time.perf_counter()
        results[threads] = sparse_gpu.launch_conv2d(conv_kernel, xs, ip, ix, kk, bs, stride=1,
                                                    padding=1, threads=threads)
        err = np.abs(results[threads] - want).max()
        print(f"{threads:>3} threads per block: max |emulated - reference| = {err:.2e}  "
              f"({time.perf_counter() - t0:.2f} s)")
    try:
        sparse_gpu.launch_conv2d(conv_kernel, xs.astype(np.float64), ip, ix, kk, bs)
    except TypeError as exc:
        print("a float64 input is refused before launch:", exc)

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
    for ax, img, title in zip(axes, [want[0, 0], results[64][0, 0],
                                     np.abs(results[64][0, 0] - want[0, 0])],
                              ["NumPy reference", "CUDA source, emulated on the CPU",
                               "|difference|"]):
        im = ax.imshow(img, cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("sparse_conv2d.cu, output map 0 of image 0 (padding 1)")
    save(fig, "07_emulator.png")

# %% [markdown]
# ## 7. On a GPU
#
# Where CuPy finds a GPU, the compact model moves there with `cm.to("cupy")` and runs its
# layers through the RawKernels. (The timings include no transfer: the data is moved to the
# GPU first, as a real inference server would keep it.)

# %%
if backend.cupy_available():
    import cupy as cp

    cm_gpu = sparse.compact(lineage[3]).to("cupy")
    dense_gpu = lineage[3]
    dense_gpu.to("cupy")
    xg = cp.asarray(np.random.default_rng(4).normal(size=(4096, 1, 28, 28)).astype(np.float32))
    with no_grad():
        diff = float(cp.abs(cm_gpu(xg) - dense_gpu(Tensor(xg)).data).max())

    def gpu_time(fn, repeat=20):
        fn()
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        cp.cuda.Device().synchronize()
        return (time.perf_counter() - t0) / repeat

    with no_grad():
        t_dense = gpu_time(lambda: dense_gpu(Tensor(xg)))
    t_compact = gpu_time(lambda: cm_gpu(xg))
    print(f"GPU, batch 4096: masked dense {1e3 * t_dense:.2f} ms, compact {1e3 * t_compact:.2f}"
          f" ms; max |diff| {diff:.2e}")
else:
    print("No usable GPU here: the compact model ran on the CPU (section 4) and the CUDA "
          "source in the emulator (section 6). On a GPU machine this cell times both.")

# %% [markdown]
# ## Your turn: the kernel's tile loop (task 7.2)
#
# In a student copy (`minievo assignments new`), `minievo/kernels/sparse_conv2d.cu` keeps the
# signature of `cluster_sparse_conv2d_forward`, the set-up (which output map `o`, image `n`
# and pixel `(oh, ow)` this thread computes, `active`, `begin`/`end` of the CSR row, `acc`
# starting at the bias, `per_tile`) and the final store of `acc`; between the two, a
# `// NOT IMPLEMENTED: task 7.2` comment. Write the tile loop that the walk through the CUDA
# kernel above explained:
#
# 1. For `first = begin, begin + per_tile, ...` while `first < end`: `count` live kernels in
#    this tile (the last tile may be short).
# 2. All threads of the block, active or not, copy the tile cooperatively: thread `tid`
#    copies entries `tid, tid + threads, ...` of the `count * kk` weights into `w_tile` and of
#    the `count` input-map indices into `c_tile`. Then `__syncthreads()`.
# 3. An active thread adds, for each kernel `s` of the tile and each tap `(ky, kx)`,
#    `w_tile[s*kk + ky*KW + kx] * x[n, c_tile[s], oh*stride - pad + ky, ow*stride - pad + kx]`
#    to `acc`, reading `x` through its strides (`xs_c`, `xs_h`, `xs_w`, from `x_image`) and
#    skipping taps that fall into the zero padding (outside `0..H-1` or `0..W-1`).
# 4. `__syncthreads()` again before the next tile overwrites the shared arrays.
#
# The grader (`minievo assignments grade --task 7.2`) compiles your file with g++ and
# `cuda_emu.h` under AddressSanitizer, so a read past the image or past a tile stops the run
# with a report instead of returning garbage, and compares the output with the dense
# convolution of the same masked weight: both layouts, stride 2 with padding, and a map with
# more live kernels than one tile holds. On a machine with a GPU and CuPy it also runs your
# kernel there. The emulator is stricter than a GPU about barriers: a `__syncthreads()` that
# only some threads of a block reach stops the program with a message (see the emulator
# section).
#
# How many kernels does one tile hold? It depends on the kernel size:

# %%
for k in (1, 3, 5, 7):
    per_tile = min(sparse_gpu.CONV_TILE_FLOATS // (k * k), 256)
    print(f"{k}x{k} kernels: {per_tile} per tile of {sparse_gpu.CONV_TILE_FLOATS} floats")

# %% [markdown]
# ## Exercises
#
# 1. **Task 7.1** (`minievo/sparse/reference.py`, `kernel_csr`): build `indptr`, `indices`
#    and `kernels` from a weight and its mask. Rows in output-map order, input maps increasing
#    within a row, int32 indices, float32 kernels with the masked taps zeroed.
# 2. In section 4, force `sparse.compact(m, method=...)` to `"native"`, `"csr"` and `"dense"`
#    in turn and plot the three curves: where do they cross? Compare with the cost models in
#    `minievo/sparse/cpu.py`. Then change `MINIEVO_NB` in `sparse_cpu.c` (images per tile)
#    to 16 and 32: why does the kernel get slower with fewer sums in flight?
# 3. Edit a copy of `sparse_conv2d.cu`: delete the second `__syncthreads()` and run it in the
#    emulator with `EmulatedModule(path, sanitize="thread")`. What does ThreadSanitizer
#    report, and why is that barrier needed?
# 4. The kernel stages the weights of map `o` through shared memory in tiles of
#    `MINIEVO_CONV_TILE_FLOATS` floats. How many 5x5 kernels fit in one tile? Build a layer
#    whose output map has more live kernels than that, run it in the emulator and check the
#    result: which lines of the kernel make that work?
# 5. **Task 7.2** (`minievo/kernels/sparse_conv2d.cu`, `cluster_sparse_conv2d_forward`): the
#    tile loop of the section "Your turn", graded through the emulator with AddressSanitizer
#    on.
