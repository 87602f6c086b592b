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
# # Chapter 3 — Layers, losses and optimisers: an MLP on MNIST
#
# With an autodiff engine in hand, a neural network is a composition of a few building
# blocks: **layers** that hold parameters, a **loss** that scores the predictions, and an
# **optimiser** that moves the parameters against the gradient. This chapter puts them
# together and trains the fully connected LeNet-300-100 on MNIST's handwritten digits.
#
# Assignment tasks: **3.1** the backward pass of the softmax cross-entropy, **3.2** the SGD
# update with momentum, weight decay and Nesterov momentum.

# %%
import sys
import time

import matplotlib

if "ipykernel" not in sys.modules:  # as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import data_loaders as dl
from minievo import functions as F
from minievo import init, models, optim, training, tutorial
from minievo.autograd import Tensor
from minievo.layers import Linear, Sequential

# Fast mode, the figures folder and save(fig, name): the set-up all chapters share.
FAST = tutorial.fast_mode()
FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
save = tutorial.figure_saver(FIGURES)


# %% [markdown]
# ## 1. The data
#
# MNIST holds 60,000 training and 10,000 test images of handwritten digits, 28x28 pixels of
# 8-bit grey. `data_loaders.load_dataset` fetches it once into a cache (checking every file's
# SHA-256) and returns uint8 arrays; `DataLoader` serves shuffled mini-batches as float32,
# scaled to [0, 1] and normalised with the training set's mean and standard deviation.
#
# In fast mode (`MINIEVO_FAST=1`) the chapter uses `synthetic-digits` instead: generated
# 28x28 images of a thick stroke whose *orientation* is the class. It needs no download and a
# small network learns it in a few hundred steps.

# %%
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
    (x_train, y_train), (x_test, y_test), DATASET = load("synthetic-digits", 2048, 512)
else:
    (x_train, y_train), (x_test, y_test), DATASET = load("mnist")
info = dl.DATASETS[DATASET]
print(f"{DATASET}: train {x_train.shape} {x_train.dtype}, test {x_test.shape}, "
      f"mean {info.mean}, std {info.std}")

fig, axes = plt.subplots(3, 10, figsize=(10, 3.3))
for k, ax in enumerate(axes.flat):
    ax.imshow(x_train[k].reshape(28, 28), cmap="gray")
    ax.set_title(info.classes[int(y_train[k])], fontsize=8)
    ax.axis("off")
fig.suptitle(f"The first training images of {DATASET}, with their labels")
save(fig, "03_samples.png")

train_loader = dl.DataLoader(x_train, y_train, batch_size=64, shuffle=True, seed=0,
                             normalize=info.normalize)
test_loader = dl.DataLoader(x_test, y_test, batch_size=1000, shuffle=False,
                            normalize=info.normalize)
xb, yb = next(iter(train_loader))
print("one batch:", xb.shape, xb.dtype, yb.shape, yb.dtype, f"mean {xb.mean():.3f}")

# %% [markdown]
# ## 2. Layers: modules that own parameters
#
# A `Linear(in, out)` layer computes $y = x W^\top + b$ for a batch $x$ of shape (N, in); its
# weight $W$ (out, in) and bias $b$ (out,) are `Parameter`s, tensors with
# `requires_grad=True`. A `Module` finds its parameters by looking at its attributes, so a
# `Sequential` of layers knows all of them (`model.parameters()`), can switch between training
# and evaluation mode, and can save and load its `state_dict()`.
#
# Initialisation matters. Weights drawn with the wrong scale make activations explode or
# vanish layer after layer. minievo uses Caffe's "xavier" filler,
# $W \sim U(-a, a)$ with $a = \sqrt{3 / \text{fan\_in}}$, so that
# $\mathrm{Var}(W) = 1/\text{fan\_in}$ and a unit-variance input gives a unit-variance output.
#
# In the paper's words each weight is a **synapse**: one connection from an input unit (or,
# in a convolution, an input pixel of a kernel window) to an output unit. A `Linear` layer
# of shape (out, in) has out x in synapses; LeNet-300-100 has about 266,000. The paper
# borrows biology's word **genotype** for what an offspring network inherits from its
# ancestor; in minievo that is the mask below, which says which synapses exist (a 0 entry:
# the synapse does not exist).
#
# Every `Linear` and `Conv2d` also carries a **mask**, the same shape as its weight, all ones
# at first. The forward pass uses $W \odot M$. This mask is the *genotype* of the evolutionary
# synthesis of chapters 5-8; for now it is just ones.

# %%
init.manual_seed(0)
model = models.lenet300_100()
print(model)
for name, p in model.named_parameters():
    print(f"  {name:10s} {str(p.shape):12s} {p.size:>7,d} numbers")
print(f"total: {sum(p.size for p in model.parameters()):,} parameters")

h = Tensor(np.random.default_rng(0).standard_normal((512, 784)).astype(np.float32))
deep = Sequential(*[Linear(784, 784) for _ in range(6)])
for k, layer in enumerate(deep):
    h = layer(h)
    print(f"after linear layer {k + 1}: activation std {float(h.data.std()):.3f}")

# %% [markdown]
# ## 3. The loss: softmax cross-entropy
#
# The network outputs one score (a *logit*) $z_k$ per class. Softmax turns them into
# probabilities, and the cross-entropy is the negative log-probability of the true class $y$,
# averaged over the batch of N:
#
# $$p_k = \frac{e^{z_k}}{\sum_j e^{z_j}}, \qquad
#   \ell = -\frac1N \sum_{n=1}^N \log p_{n, y_n}
#        = \frac1N \sum_n \Big( \log \sum_j e^{z_{nj}} - z_{n, y_n} \Big).$$
#
# Computed literally, $e^{z}$ overflows for logits around 90 in float32. Subtracting the
# row maximum first changes nothing mathematically ($p$ is invariant to a shift of all logits)
# and keeps every exponent $\le 0$: the *log-sum-exp trick*.
#
# The gradient is famously simple. Differentiating $\log \sum_j e^{z_j} - z_y$ gives
# $p_k - [k = y]$, so
#
# $$\frac{\partial \ell}{\partial z_{nk}} = \frac{1}{N}\big(p_{nk} - \mathbb{1}[k = y_n]\big),$$
#
# the predicted distribution minus the one-hot target. Each row sums to zero: raising the
# correct logit lowers all the others. minievo fuses softmax and loss into one `Function`,
# `SoftmaxCrossEntropy`, whose forward saves $p$; writing its backward is **task 3.1**
# (remember the incoming adjoint `gy`, a scalar here, multiplies everything).

# %%
logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(logits) / np.exp(logits).sum()
print("naive softmax of [1000, 0, -1000]:", naive)
z = logits - logits.max(axis=1, keepdims=True)
print("with the max subtracted:          ", np.exp(z) / np.exp(z).sum())

z = Tensor(np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]]), requires_grad=True)
loss = F.softmax_cross_entropy(z, np.array([0, 2]))
loss.backward()
print(f"loss {float(loss.data):.4f}; gradient (rows sum to 0):\n{z.grad}")

# %% [markdown]
# ## 4. Optimisers
#
# Plain stochastic gradient descent moves every parameter against its mini-batch gradient:
# $w \leftarrow w - \eta\, g$. Two additions make it work much better in practice:
#
# * **Weight decay** adds $\lambda w$ to the gradient (the gradient of
#   $\tfrac{\lambda}{2}\|w\|^2$), pulling weights towards zero.
# * **Momentum** keeps a running velocity so that consistent directions accelerate and
#   noisy ones cancel:
#
# $$d = g + \lambda w, \qquad v \leftarrow \mu v + d, \qquad w \leftarrow w - \eta\, v .$$
#
#   (On the first step $v = d$.) **Nesterov** momentum looks ahead along the velocity:
#   $w \leftarrow w - \eta\,(d + \mu v)$ with the new $v$.
#
# This is PyTorch's form, and **task 3.2** (`SGD._update` in `minievo/optim.py`; the state
# dict `state` keeps the velocity between steps, under the key `"velocity"`). Caffe keeps the
# learning rate *inside* the velocity, $v \leftarrow \mu v + \eta d,\; w \leftarrow w - v$:
# the same steps while $\eta$ is constant, different ones as soon as a schedule changes it
# (the velocity then remembers old learning rates).
# `Adam` adapts a step size per parameter from running averages of $g$ and $g^2$.
#
# Every optimiser in minievo is *mask aware*: `Optimizer.step` multiplies the gradient, the
# updated weight and the optimiser's state by the parameter's mask, so a pruned synapse stays
# exactly zero through training. Evolution depends on that.
#
# The experiment below trains the same initial network with four optimiser settings (plain
# SGD, SGD with momentum, SGD with Nesterov momentum and weight decay, Adam) for the same
# number of steps.

# %%
def train_steps(make_opt, steps, seed=0):
    init.manual_seed(seed)  # the same initial weights for every optimiser
    net = models.lenet300_100()
    opt = make_opt(net.parameters())
    train_loader.set_epoch(0)  # and the same sequence of batches
    losses = []
    it = iter(train_loader)
    for _ in range(steps):
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(train_loader)
            xb, yb = next(it)
        opt.zero_grad()
        loss = F.softmax_cross_entropy(net(Tensor(xb)), yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return np.array(losses)


STEPS = 100 if FAST else 2000
recipes = {
    "SGD lr 0.01": lambda p: optim.SGD(p, lr=0.01),
    "SGD lr 0.01, momentum 0.9": lambda p: optim.SGD(p, lr=0.01, momentum=0.9),
    "SGD Nesterov 0.9, wd 5e-4": lambda p: optim.SGD(p, lr=0.01, momentum=0.9,
                                                      weight_decay=5e-4, nesterov=True),
    "Adam lr 1e-3": lambda p: optim.Adam(p, lr=1e-3),
}
curves = {}
for label, make_opt in recipes.items():
    t0 = time.perf_counter()
    curves[label] = train_steps(make_opt, STEPS)
    print(f"{label:28s} final loss (mean of last 20 steps) {curves[label][-20:].mean():.4f}"
          f"  ({time.perf_counter() - t0:.1f} s)")


def smooth(a, k=10):
    return np.convolve(a, np.ones(k) / k, mode="valid")


fig, ax = plt.subplots(figsize=(7, 4))
for label, c in curves.items():
    ax.plot(smooth(c), label=label)
ax.set_yscale("log")
ax.set_xlabel("step (batch of 64)")
ax.set_ylabel("training loss (moving average of 10)")
ax.set_title("Same network, same batches, four optimisers")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
save(fig, "03_optimisers.png")

# %% [markdown]
# ## 5. Training to convergence
#
# `minievo.training.fit` is the loop of every experiment in the course: for each batch,
# forward, loss, backward, optimiser step; after each epoch an evaluation. It adds what long
# runs need (a progress bar, atomic checkpoints with resume, a guard against a diverging
# loss) but nothing that changes the arithmetic. We use the Caffe recipe: SGD with learning
# rate 0.01, momentum 0.9, weight decay 5e-4, and the "inv" schedule
# $\eta_t = \eta_0 (1 + \gamma t)^{-p}$ with $\gamma = 10^{-4}$, $p = 0.75$.

# %%
EPOCHS = 2 if FAST else 10
init.manual_seed(0)
model = models.lenet300_100()
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
sched = optim.InvLR(opt)
state = training.fit(model, train_loader, opt, EPOCHS, scheduler=sched,
                     test_loader=test_loader, progress=not FAST)
final = state.history[-1]
print(f"LeNet-300-100 on {DATASET}: test accuracy {100 * final['test_accuracy']:.2f}% after "
      f"{EPOCHS} epochs, {state.train_seconds:.1f} s of training")

epochs = [r["epoch"] for r in state.history]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].plot(epochs, [r["train_loss"] for r in state.history], "o-")
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("training loss")
axes[1].plot(epochs, [100 * r["train_accuracy"] for r in state.history], "o-", label="train")
axes[1].plot(epochs, [100 * r["test_accuracy"] for r in state.history], "s-", label="test")
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("accuracy (%)")
axes[1].legend()
for ax in axes:
    ax.grid(True, alpha=0.3)
fig.suptitle(f"LeNet-300-100 on {DATASET}")
save(fig, "03_training.png")

# %% [markdown]
# What did the first layer learn? Each of its 300 neurons has 784 incoming weights, one per
# pixel: shown as an image, a neuron's weights are the pattern it responds to.

# %%
w1 = model[1].weight.numpy()  # (300, 784)
fig, axes = plt.subplots(4, 8, figsize=(8, 4.3))
for k, ax in enumerate(axes.flat):
    lim = np.abs(w1[k]).max()
    ax.imshow(w1[k].reshape(28, 28), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.axis("off")
fig.suptitle("Incoming weights of 32 first-layer neurons (red +, blue -)")
save(fig, "03_first_layer.png")

# %% [markdown]
# ## 6. A first look at masks
#
# Set a mask that removes 90% of the first layer's synapses at random, train on, and check
# that the removed weights are still exactly zero: the optimiser never lets them come back.
# Random pruning like this costs accuracy; chapter 5 shows how evolution chooses *which*
# synapses to keep.

# %%
layer = model[1]
rng = np.random.default_rng(0)
layer.set_mask((rng.random(layer.weight.shape) < 0.1).astype(np.float32))
print(f"live synapses in layer 1: {int(layer.mask.sum()):,} of {layer.mask.size:,}")
acc_before = training.evaluate(model, test_loader)["accuracy"]
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
training.fit(model, train_loader, opt, 1, progress=False, log=None)
acc_after = training.evaluate(model, test_loader)["accuracy"]
print(f"test accuracy right after masking {100 * acc_before:.2f}%, after one more epoch "
      f"{100 * acc_after:.2f}%")
dead = layer.mask == 0
print("max |w| over the masked synapses after training:",
      float(np.abs(layer.weight.numpy()[dead]).max()))

# %% [markdown]
# ## Exercises
#
# 1. **Task 3.1** (`minievo/functions/nn.py`, `SoftmaxCrossEntropy.backward`): return the
#    gradient $(p - \text{onehot}) / N$ scaled by the incoming `gy`, and `None` for the labels.
# 2. **Task 3.2** (`minievo/optim.py`, `SGD._update`): momentum, weight decay and Nesterov, as
#    in section 4. The masking is done for you in `Optimizer.step`.
# 3. Replace ReLU by tanh in LeNet-300-100 and compare the learning curves.
# 4. `fit` stops with `TrainingDiverged` when the loss becomes NaN or infinite. Raise the
#    learning rate step by step (0.5, 2, 10, ...): at which rate does the training of section
#    5 stop that way, and what happens to the loss at the rates below it? Where is the last
#    good checkpoint when you pass `checkpoint_path`?
# 5. With the mask of section 6, how many epochs does the network need to recover its
#    accuracy? Try keeping 1% instead of 10%.
