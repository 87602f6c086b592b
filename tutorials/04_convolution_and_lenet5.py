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
# # Chapter 4 — Convolution and LeNet-5
#
# A fully connected layer treats an image as a bag of 784 unrelated numbers. A convolutional
# layer knows it is an image: it slides a small filter over it, so the same few weights look
# for the same pattern everywhere. This chapter writes the convolution as plain loops, then
# turns it into one big matrix product (*im2col*), the trick behind practically every CPU and
# GPU convolution, and trains the network of the paper we reproduce: the Caffe LeNet-5.
#
# Assignment tasks: **4.1** `im2col`, the patches of an image as matrix rows, and **4.2**
# `col2im`, its adjoint, used by the backward pass.

# %%
import sys
import time

import matplotlib

if "ipykernel" not in sys.modules:  # as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import data_loaders as dl
import minievo.accel
from minievo import checkpoint, init, models, optim, training, tutorial
from minievo import functions as F
from minievo.autograd import Tensor, no_grad
from minievo.evolution.metrics import model_metrics
from minievo.functions.conv import col2im, im2col
from minievo.testing import gradient_check

# Fast mode, the figures folder and save(fig, name): the set-up all chapters share.
FAST = tutorial.fast_mode()
FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
save = tutorial.figure_saver(FIGURES)


def load(name, n_train=None, n_test=None):
    """(train, test) arrays of a data set; falls back to synthetic digits without MNIST."""
    try:
        return (dl.load_dataset(name, "train", n=n_train),
                dl.load_dataset(name, "test", n=n_test), name)
    except dl.DataError as exc:
        print(f"{name} is not available ({exc}); using synthetic-digits instead")
        name = "synthetic-digits"
        return (dl.load_dataset(name, "train", n=n_train or 10000),
                dl.load_dataset(name, "test", n=n_test or 2000), name)


if FAST:
    (x_train, y_train), (x_test, y_test), DATASET = load("synthetic-digits", 1024, 512)
else:
    (x_train, y_train), (x_test, y_test), DATASET = load("mnist")
info = dl.DATASETS[DATASET]
print(f"data: {DATASET}, {len(x_train)} training and {len(x_test)} test images")

# %% [markdown]
# ## 1. What a convolution computes
#
# A Conv2d layer with weight $w$ of shape (O, C, kh, kw) maps an input $x$ of shape
# (N, C, H, W) to an output $y$ of shape (N, O, OH, OW):
#
# $$y_{n,o,p,q} = b_o + \sum_{c=0}^{C-1} \sum_{i=0}^{k_h-1} \sum_{j=0}^{k_w-1}
#     x^{\text{pad}}_{n,\,c,\,p s + i,\,q s + j}\; w_{o,c,i,j},
#   \qquad OH = \Big\lfloor \frac{H + 2P - k_h}{s} \Big\rfloor + 1 ,$$
#
# with stride $s$ and zero padding $P$ (deep-learning "convolution" is really a
# cross-correlation: the filter is not flipped). Each output map $o$ has one $k_h \times k_w$
# *kernel* per input map $c$: the (o, c) kernels are exactly the *synaptic clusters* that the
# evolutionary synthesis keeps or drops as a whole (chapter 5).
#
# `conv2d_reference` computes this with one loop over the kernel offsets (i, j). Here it is
# with two hand-made 3x3 filters, a vertical and a horizontal edge detector (Sobel):

# %%
sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float32)
w_edges = np.stack([sobel, sobel.T])[:, None]  # (2, 1, 3, 3): two output maps, one input map
img = (x_test[:1].reshape(1, 1, 28, 28) / 255.0).astype(np.float32)
edges = F.conv2d_reference(Tensor(img), Tensor(w_edges), padding=1).numpy()

fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(img[0, 0], cmap="gray")
axes[0].set_title("input")
for k, title in enumerate(["vertical edges", "horizontal edges"]):
    lim = np.abs(edges[0, k]).max()
    axes[k + 1].imshow(edges[0, k], cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[k + 1].set_title(f"{title} (Sobel 3x3)")
for ax in axes:
    ax.axis("off")
save(fig, "04_filters.png")

# %% [markdown]
# ## 2. im2col: a convolution is one matrix product
#
# Every output position (n, p, q) reads one patch of $k_h k_w C$ input values. Copy each
# patch into one **row** of a matrix `cols` of shape (N·OH·OW, $k_h k_w C$); write the weight
# as a matrix $W_{\text{mat}}$ of shape (O, $k_h k_w C$) with its columns in the same order;
# then the whole convolution is a single product
#
# $$Y_{\text{mat}} = \texttt{cols}\; W_{\text{mat}}^\top \quad (N\!\cdot\!OH\!\cdot\!OW
#   \times O),$$
#
# which BLAS runs at full speed. The cost is memory: every input pixel is copied up to
# $k_h k_w$ times.
#
# The columns run over (c, i, j), row-major, the order of the weight's own axes, so that
# $W_{\text{mat}}$ is simply `w.reshape(O, -1)`. The patches themselves are a strided *view*
# of the padded input (chapter 1): `view[n, p, q, c, i, j] = x_pad[n, c, p*s + i, q*s + j]`,
# and reshaping that view to (N·OH·OW, C·kh·kw) makes the one copy.
#
# Writing `im2col` is **task 4.1**. The small example below shows the layout: a 2-channel
# 4x4 image, 2x2 kernel, stride 1: nine patches of eight values.

# %%
x_small = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
cols, (oh, ow) = im2col(x_small, 2, 2, stride=1, padding=0)
cols = np.asarray(cols)
print("cols", cols.shape, "output", (oh, ow))
print("columns are (c, i, j) = " + ", ".join(f"({c},{i},{j})" for c in range(2)
                                             for i in range(2) for j in range(2)))
print(cols.astype(int))

w_small = np.random.default_rng(0).normal(size=(3, 2, 2, 2)).astype(np.float32)
w_mat = w_small.reshape(3, -1)  # (O, C*kh*kw), columns (c, i, j)
y_gemm = (cols @ w_mat.T).reshape(1, oh, ow, 3).transpose(0, 3, 1, 2)
y_loop = F.conv2d_reference(Tensor(x_small), Tensor(w_small)).numpy()
print("cols @ W_mat.T equals the loop convolution:", np.allclose(y_gemm, y_loop, atol=1e-5))

fig, axes = plt.subplots(1, 3, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1, 2.2]})
for c in range(2):
    axes[c].imshow(x_small[0, c], cmap="Blues", vmin=-10, vmax=40)
    for (i, j), v in np.ndenumerate(x_small[0, c]):
        axes[c].text(j, i, f"{v:g}", ha="center", va="center")
    axes[c].set_title(f"input channel {c}")
    axes[c].set_xticks([])
    axes[c].set_yticks([])
axes[2].imshow(cols, cmap="Blues", vmin=-10, vmax=40, aspect="auto")
for (r, k), v in np.ndenumerate(cols):
    axes[2].text(k, r, f"{v:g}", ha="center", va="center", fontsize=8)
axes[2].set_xticks(range(8))
axes[2].set_xticklabels([f"{c}/{i}{j}" for c in range(2) for i in range(2) for j in range(2)],
                        fontsize=8)
axes[2].set_yticks(range(9))
axes[2].set_yticklabels([f"({p},{q})" for p in range(3) for q in range(3)], fontsize=8)
axes[2].set_xlabel("column: channel c / kernel offset ij")
axes[2].set_ylabel("row: output position (p, q)")
axes[2].set_title("cols = im2col(x, 2, 2)")
save(fig, "04_im2col.png")

# %% [markdown]
# ## 3. The backward pass, and col2im
#
# Let $G$ be the output's adjoint as an (N·OH·OW, O) matrix. Since
# $Y = \texttt{cols}\, W_{\text{mat}}^\top$ is a matrix product, chapter 2 gives
#
# $$\bar W_{\text{mat}} = G^\top \texttt{cols}, \qquad \bar b = \textstyle\sum_{\text{rows}} G,
#   \qquad \overline{\texttt{cols}} = G\, W_{\text{mat}} .$$
#
# The last one is a gradient *per patch*. An input pixel appears in up to $k_h k_w$ patches,
# so its adjoint is the **sum** of the entries of $\overline{\texttt{cols}}$ that were copies
# of it. Scattering those back with additions is `col2im`, **task 4.2**. It is the *adjoint*
# of im2col in the linear-algebra sense: for every input $x$ and every matrix $D$,
#
# $$\langle \mathrm{im2col}(x), D\rangle = \langle x, \mathrm{col2im}(D)\rangle .$$
#
# A clean way to write it: one strided addition per kernel offset (i, j), adding the (i, j)
# slice of every patch gradient onto the input positions that offset read, then cropping the
# padding. Below, the identity and a full gradient check of the im2col convolution.

# %%
rng = np.random.default_rng(1)
xa = rng.normal(size=(2, 3, 7, 6))
cols_a, (oh, ow) = im2col(xa, 3, 3, stride=2, padding=1)
d = rng.normal(size=np.shape(cols_a))
dx = col2im(d, xa.shape, 3, 3, 2, 1)
print(f"<im2col(x), D> = {float((np.asarray(cols_a) * d).sum()):.10f}")
print(f"<x, col2im(D)> = {float((xa * np.asarray(dx)).sum()):.10f}")
print(gradient_check(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                     [Tensor(rng.normal(size=(2, 3, 7, 6)), requires_grad=True),
                      Tensor(rng.normal(size=(4, 3, 3, 3)), requires_grad=True),
                      Tensor(rng.normal(size=(4,)), requires_grad=True)]))

# %% [markdown]
# How much does the matrix product buy? The loop version does $k_h k_w$ small einsums over
# strided views; the im2col version one copy and one GEMM. Timing both, forward and backward,
# on the shape of LeNet-5's second convolution (20 -> 50 maps, 5x5, 12x12 input):

# %%
def time_conv(fn, x, w, b, repeat):
    """Best time of forward + backward, after two warm-up runs (BLAS starts its threads)."""
    best = float("inf")
    for k in range(repeat + 2):
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        bt = Tensor(b, requires_grad=True)
        t0 = time.perf_counter()
        y = fn(xt, wt, bt)
        y.backward(np.ones(y.shape, dtype=np.float32))
        if k >= 2:
            best = min(best, time.perf_counter() - t0)
    return best


n_img = 16 if FAST else 64
xc = rng.normal(size=(n_img, 20, 12, 12)).astype(np.float32)
wc = rng.normal(size=(50, 20, 5, 5)).astype(np.float32)
bc = np.zeros(50, np.float32)
t_ref = time_conv(F.conv2d_reference, xc, wc, bc, 2 if FAST else 5)
t_fast = time_conv(F.conv2d, xc, wc, bc, 5 if FAST else 20)
print(f"batch {n_img}: loop reference {1e3 * t_ref:.1f} ms, im2col + GEMM "
      f"{1e3 * t_fast:.1f} ms ({t_ref / t_fast:.1f}x)")
fig, ax = plt.subplots(figsize=(5, 3))
ax.barh(["loops over (i, j)\n(conv2d_reference)", "im2col + GEMM\n(conv2d)"],
        [1e3 * t_ref, 1e3 * t_fast], color=["gray", "tab:blue"])
ax.set_xlabel("milliseconds, forward + backward")
ax.set_title(f"LeNet-5 conv2, batch {n_img}")
save(fig, "04_conv_timing.png")

# %% [markdown]
# ## 4. Pooling, and the LeNet-5 of the paper
#
# Max pooling keeps the largest value of each k x k window (stride k): it halves the
# resolution and adds a little translation invariance. Its backward pass routes each
# window's adjoint to the position of its maximum (the first one, on ties).
#
# The ancestor of the paper's experiment is the LeNet-5 of Caffe's MNIST example:
#
#     conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> linear 800->500 -> ReLU -> linear 500->10
#
# Two different budgets describe it. **Synapses** (weights) are what the paper counts: 430,500,
# most of them in the first linear layer. **Multiply-accumulates per image** are what costs
# time, and there the convolutions dominate, because each conv synapse is used once per output
# pixel. Keep both in mind when chapter 8 reports "125x fewer synapses".

# %%
x = Tensor(np.array([[[[1.0, 3.0, 2.0, 0.0], [4.0, 2.0, 1.0, 5.0],
                       [0.0, 1.0, 2.0, 2.0], [3.0, 0.0, 1.0, 1.0]]]]), requires_grad=True)
y = F.max_pool2d(x, 2)
y.backward(np.ones(y.shape))
print("max pool:\n", y.data[0, 0], "\ngradient reaches the maxima:\n", x.grad[0, 0])

init.manual_seed(0)
model = models.lenet5()
print(model)
metrics = model_metrics(model, (1, 28, 28))
names, syn, macs = [], [], []
for layer in metrics.layers:
    names.append(f"{layer.name}: {layer.layer_type} {layer.weight_shape}")
    syn.append(layer.dense.synapses)
    macs.append(layer.dense.macs)
    print(f"  {names[-1]:32s} synapses {syn[-1]:>8,d}   MACs/image {macs[-1]:>10,d}   "
          f"output {layer.output_shape}")
print(f"  total synapses {metrics.dense.synapses:,}, MACs per image {metrics.dense.macs:,}, "
      f"clusters {metrics.dense.clusters('kernel'):,} (kernel) / "
      f"{metrics.dense.clusters('filter'):,} (filter)")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
axes[0].barh(names, syn, color="tab:green")
axes[0].set_xlabel("synapses (weights)")
axes[1].barh(names, macs, color="tab:orange")
axes[1].set_xlabel("multiply-accumulates per image")
axes[0].invert_yaxis()
fig.suptitle("LeNet-5: where the weights are, and where the work is")
save(fig, "04_lenet5_budget.png")

# %% [markdown]
# ## 5. Training LeNet-5
#
# Same loop and recipe as chapter 3 (Caffe's solver: SGD, learning rate 0.01, momentum 0.9,
# weight decay 5e-4, "inv" schedule, batch 64). On the full MNIST a few epochs reach about
# 99% test accuracy; the `paper-mnist` preset trains its ancestor for 8. In fast mode, one epoch on
# 1,024 synthetic images.
#
# Several epochs are a long experiment, so this cell switches on minievo's accelerator, which
# computes the same functions with faster memory layouts (chapter 7 explains it; comment the
# line out to train on the reference ops you just built, about twice as slow).

# %%
minievo.accel.enable()  # the fast path for the long run (chapter 7)
EPOCHS = 1 if FAST else 5
train_loader = dl.DataLoader(x_train, y_train, batch_size=64, shuffle=True, seed=0,
                             normalize=info.normalize)
test_loader = dl.DataLoader(x_test, y_test, batch_size=1000, shuffle=False,
                            normalize=info.normalize)
init.manual_seed(0)
model = models.lenet5()
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
state = training.fit(model, train_loader, opt, EPOCHS, scheduler=optim.InvLR(opt),
                     test_loader=test_loader, progress=not FAST)
acc = state.history[-1]["test_accuracy"]
seconds = state.train_seconds
print(f"LeNet-5 on {DATASET}: test accuracy {100 * acc:.2f}% after {EPOCHS} epoch(s); "
      f"{len(x_train) * EPOCHS / seconds:,.0f} training images/s")
if not FAST:
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / "ch04_lenet5.npz"
    checkpoint.save(path, model.state_dict(), {"model": "lenet5", "dataset": DATASET,
                                               "epochs": EPOCHS, "test_accuracy": acc})
    print(f"saved the trained network to {path} (chapters 5 and 6 start from it)")

# %% [markdown]
# What did the first layer learn, and what does it see? Left: the twenty 5x5 filters of
# conv1. Right: the twenty feature maps they produce for one test image.

# %%
w1 = model[0].weight.numpy()[:, 0]  # (20, 5, 5)
with no_grad():
    xb = next(iter(test_loader))[0][:1]
    maps = model[0](Tensor(xb)).numpy()[0]  # (20, 24, 24)
fig = plt.figure(figsize=(12, 4.2))
for k in range(20):
    ax = fig.add_subplot(4, 11, 1 + (k // 5) * 11 + k % 5)
    lim = np.abs(w1[k]).max()
    ax.imshow(w1[k], cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.axis("off")
    ax = fig.add_subplot(4, 11, 7 + (k // 5) * 11 + k % 5)
    ax.imshow(maps[k], cmap="magma")
    ax.axis("off")
ax = fig.add_subplot(4, 11, 6)
ax.imshow(xb[0, 0], cmap="gray")
ax.axis("off")
ax.set_title("input", fontsize=8)
fig.suptitle("conv1 of the trained LeNet-5: 20 filters (left), their 20 feature maps (right)")
save(fig, "04_feature_maps.png")

# %% [markdown]
# ## Exercises
#
# 1. **Task 4.1** (`minievo/functions/conv.py`, `im2col`): return the (N·OH·OW, C·kh·kw)
#    patch matrix, rows ordered (n, oh, ow) and columns ordered (c, i, j) with j fastest
#    (section 2: the order of `w.reshape(O, -1)`), and (OH, OW). A loop over the kernel
#    offsets that fills column blocks is enough to pass; then try a single copy from a
#    strided view (`numpy.lib.stride_tricks.as_strided`) and time the difference.
# 2. **Task 4.2** (`col2im`): the adjoint. `dcols` has im2col's shape (N·OH·OW, C·kh·kw), so
#    `dcols.reshape(N, OH, OW, C, kh, kw)` names its entries; return the (N, C, H, W)
#    gradient. Check it with the inner-product identity above.
# 3. Count the MACs of LeNet-5 by hand from the formula in section 1 and compare with
#    `model_metrics`.
# 4. Replace the 5x5 kernels by two stacked 3x3 convolutions. Same receptive field, fewer
#    synapses?
