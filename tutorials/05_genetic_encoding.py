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
# # Chapter 5 — The synaptic cluster-driven genetic encoding
#
# Shafiee and Wong ("Evolutionary Synthesis of Deep Neural Networks via Synaptic
# Cluster-driven Genetic Encoding", arXiv:1609.01360) treat a trained network as the **DNA**
# of its offspring. Each weight is a *synapse*; how strong it is decides how likely a child
# network inherits it. Synapses come in *synaptic clusters* (all the weights of one
# convolution kernel, or all the inputs of one neuron), and a whole cluster is kept or dropped
# first, before its single synapses are drawn. Dropping whole clusters is what makes the
# offspring not just sparse but *structurally* sparse, and therefore fast (chapter 7).
#
# This chapter computes that encoding for a trained LeNet-5 and looks at it: the
# probabilities, the clusters, the environmental factor that makes every generation smaller,
# and sampled offspring masks.
#
# Assignment tasks: **5.1** the cluster strength, **5.2** the probability $e^{s/Z} - 1$.

# %%
import math
import sys

import matplotlib

if "ipykernel" not in sys.modules:  # as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import data_loaders as dl
from minievo import checkpoint, init, models, optim, training, tutorial
from minievo.evolution import (
    EnvironmentalFactor,
    TargetRetention,
    encode,
    expected_offspring_synapses,
    expected_retention,
    sample_layer_mask,
    synthesize_offspring,
)
from minievo.layers import prunable_layers

# Fast mode, the figures folder and save(fig, name): the set-up all chapters share.
FAST = tutorial.fast_mode()
FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
save = tutorial.figure_saver(FIGURES)


# %% [markdown]
# ## 1. The ancestor
#
# Generation 0 is a trained, dense LeNet-5. In full mode the chapter reuses the network that
# chapter 4 saved (`tutorials/runs/ch04_lenet5.npz`) or trains one for two epochs on MNIST; in
# fast mode it trains one epoch on synthetic digits (the encoding only needs *some* trained
# weights to be interesting).

# %%
def load_data():
    name = "synthetic-digits" if FAST else "mnist"
    try:
        train = dl.load_dataset(name, "train", n=1024 if FAST else None)
        test = dl.load_dataset(name, "test", n=512 if FAST else None)
    except dl.DataError as exc:
        print(f"{name} is not available ({exc}); using synthetic-digits instead")
        name = "synthetic-digits"
        train = dl.load_dataset(name, "train")
        test = dl.load_dataset(name, "test")
    return train, test, name


(x_train, y_train), (x_test, y_test), DATASET = load_data()
norm = dl.DATASETS[DATASET].normalize
train_loader = dl.DataLoader(x_train, y_train, batch_size=64, seed=0, normalize=norm)
test_loader = dl.DataLoader(x_test, y_test, batch_size=1000, shuffle=False, normalize=norm)

init.manual_seed(0)
ancestor = models.lenet5()
cached = RUNS / "ch04_lenet5.npz"
meta = {}
if not FAST and cached.exists():
    arrays, meta = checkpoint.load(cached)
if meta.get("dataset") == DATASET:
    ancestor.load_state_dict(arrays)
    print(f"loaded the ancestor trained in chapter 4 ({cached})")
else:
    opt = optim.SGD(ancestor.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    training.fit(ancestor, train_loader, opt, 1 if FAST else 2, scheduler=optim.InvLR(opt),
                 progress=not FAST, log=None)
acc0 = training.evaluate(ancestor, test_loader)["accuracy"]
print(f"ancestor on {DATASET}: test accuracy {100 * acc0:.2f}%")

# %% [markdown]
# ## 2. Synapses: strength and probability
#
# For one layer with ancestor weights $W$ and mask $M$ (1 = the synapse exists):
#
# $$a_j = |w_j|\, M_j, \qquad Z_s = \frac{\max_j a_j}{\ln 2}, \qquad
#   p_j = e^{a_j / Z_s} - 1 .$$
#
# The normalisation puts the strongest synapse of the layer at exactly $p = e^{\ln 2} - 1 = 1$
# and a synapse that no longer exists ($w = 0$ or $M = 0$) at exactly $p = 0$: **it can never
# come back**, so masks only shrink from one generation to the next. In between,
# $p_j = 2^{a_j / a_{\max}} - 1$ is *convex*: a synapse half as strong as the strongest gets
# $\sqrt2 - 1 \approx 0.41$, not 0.5. The figure shows the distribution of strengths of the
# first linear layer against that curve. In a well-trained layer most synapses are weak, so
# most get a small probability. (In fast mode the network has trained for a few seconds and
# its weights are still close to their uniform initialisation: the histogram is flat.)

# %%
layers = prunable_layers(ancestor)
encodings = encode(ancestor)  # kernel granularity for Conv2d, neurons for Linear
for name, enc in encodings.items():
    p = enc.synapse_probability
    print(f"layer {name} ({enc.granularity:6s}) weight {str(enc.weight_shape):16s} "
          f"Z_s {enc.z_s:.4f}  mean p {p.mean():.3f}  median p {np.median(p):.3f}")

fc1 = encodings["5"]
rel = (fc1.synapse_strength / fc1.synapse_strength.max()).ravel()
fig, ax = plt.subplots(figsize=(7, 4))
ax.hist(rel, bins=60, color="tab:gray", density=True, alpha=0.7,
        label="strengths a / max a of layer 5 (fc1)")
ax.set_xlabel("relative synapse strength a_j / max a")
ax.set_ylabel("density")
ax2 = ax.twinx()
s = np.linspace(0, 1, 101)
ax2.plot(s, 2**s - 1, "r-", lw=2, label="p = exp(a / Z_s) - 1")
ax2.plot(s, s, "r:", label="proportional (for comparison)")
ax2.set_ylabel("synapse probability p", color="r")
ax2.set_ylim(0, 1.02)
lines = ax.get_legend_handles_labels()
lines2 = ax2.get_legend_handles_labels()
ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
ax.set_title("Synapse probability against strength (first linear layer)")
save(fig, "05_synapse_probability.png")

# %% [markdown]
# ## 3. Synaptic clusters
#
# A cluster is a group of synapses inherited or lost together. The project's default
# (docs/method.md#clusters, "kernel" granularity):
#
# * **Conv2d** weight (O, I, kh, kw): cluster (o, i) is the kh·kw kernel joining input map i
#   to output map o, so conv2 has 50 x 20 = 1,000 clusters of 25 synapses. The coarser
#   "filter" granularity groups all I·kh·kw synapses of output map o (50 clusters).
# * **Linear** weight (out, in): cluster o is the `in` incoming synapses of neuron o.
# * The output layer's neurons are the classes: they are never dropped as clusters (their
#   synapses can be).
#
# The cluster's strength is the sum of its synapse strengths, and its probability uses the
# same normalisation as the synapses, per layer:
#
# $$A_c = \sum_{j \in c} a_j, \qquad Z_c = \frac{\max_c A_c}{\ln 2}, \qquad
#   P_c = e^{A_c / Z_c} - 1 .$$
#
# `cluster_strength` (a sum over the right axes for each granularity) is **task 5.1**; the
# probability `_probability`, shared by synapses and clusters, is **task 5.2**.

# %%
conv2 = encodings["2"]
conv2_filter = encode(ancestor, granularity="filter")["2"]
print("conv2 clusters:", conv2.cluster_shape, "(kernel),", conv2_filter.cluster_shape,
      "(filter);  fc1 clusters:", fc1.cluster_shape)
print(f"conv2 kernel clusters: strongest A_c = {conv2.cluster_strength.max():.3f}, "
      f"mean P_c = {conv2.cluster_probability.mean():.3f}")

fig, axes = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [1.1, 1, 1]})
im = axes[0].imshow(conv2.cluster_probability, cmap="viridis", vmin=0, vmax=1, aspect="auto")
axes[0].set_xlabel("input map i")
axes[0].set_ylabel("output map o")
axes[0].set_title("conv2: kernel cluster probability P_(o,i)")
fig.colorbar(im, ax=axes[0])
order = np.argsort(conv2_filter.cluster_probability)[::-1]
axes[1].bar(range(len(order)), conv2_filter.cluster_probability[order], color="tab:blue")
axes[1].set_xlabel("output map (sorted)")
axes[1].set_ylabel("P_c")
axes[1].set_title("conv2: filter cluster probability")
axes[2].plot(np.sort(fc1.cluster_probability)[::-1], color="tab:green")
axes[2].set_xlabel("neuron (sorted)")
axes[2].set_ylabel("P_c")
axes[2].set_title("fc1: neuron cluster probability")
for ax in axes[1:]:
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
save(fig, "05_cluster_probability.png")

# %% [markdown]
# ## 4. The environmental factor
#
# The encoding alone would keep a fixed share of the network. The **environmental factor**
# $(F_c, F_s) \in (0, 1]^2$ models an environment that presses each generation to be smaller:
# keep cluster $c$ with probability $\min(1, F_c P_c)$, and inside a kept cluster keep
# synapse $j$ with probability $\min(1, F_s p_j)$. Since the draws are independent, the
# expected size of an offspring layer is
#
# $$\mathbb{E}\Big[\sum_j M'_j\Big] = \sum_c \min(1, F_c P_c) \sum_{j \in c} \min(1, F_s p_j),$$
#
# (**task 6.2**, next chapter). The paper summarises synthesis as the product
# $P(H_g \mid H_{g-1}) = \prod_c \big[F_c P_c \prod_{j \in c} F_s p_j\big]$. Read it as the
# product of the *keep* probabilities of the clusters and synapses that an offspring keeps,
# not as the probability of one particular offspring: that probability also multiplies
# $1 - \min(1, F_c P_c)$ for every cluster the offspring drops and
# $1 - \min(1, F_s p_j)$ for every synapse it drops (in a kept cluster).
#
# The curves show the expected fraction of each layer's synapses an offspring keeps as a
# function of $F = F_c = F_s$. `TargetRetention` (a convenience of this project, not of the
# paper) solves for the $F$ that keeps a chosen fraction of the whole network in expectation.

# %%
factors = np.linspace(0.05, 1.0, 20)
per_layer = {name: [expected_offspring_synapses(enc, EnvironmentalFactor(f, f))
                    / enc.live_synapses for f in factors] for name, enc in encodings.items()}
total = [expected_retention(encodings, EnvironmentalFactor(f, f)) for f in factors]
target = round(total[-1] / 2, 3)  # half of what F = 1 keeps: always within reach
solution = TargetRetention(target).solve(encodings)
print(f"with F = 1 an offspring keeps {100 * total[-1]:.1f}% of the synapses in expectation; "
      f"F = {solution.env.f_s:.3f} keeps {100 * target:.1f}%")

fig, ax = plt.subplots(figsize=(7, 4))
for name, frac in per_layer.items():
    ax.plot(factors, np.array(frac) * 100, "o-", ms=3,
            label=f"layer {name} ({encodings[name].granularity})")
ax.plot(factors, np.array(total) * 100, "k-", lw=2, label="whole network")
ax.axvline(solution.env.f_s, color="gray", ls=":")
ax.annotate(f"F for {100 * target:.1f}%", (solution.env.f_s, 100 * target), xytext=(8, -20),
            textcoords="offset points")
ax.set_xlabel("environmental factor F = F_c = F_s")
ax.set_ylabel("expected synapses kept (%)")
ax.set_title("How hard the environment presses")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
save(fig, "05_expected_retention.png")

# %% [markdown]
# ## 5. Sampling offspring
#
# `synthesize_offspring` encodes every prunable layer and samples
# $M' = M \wedge \text{cluster draw} \wedge \text{synapse draw}$ from an explicit, seeded
# random generator (one uniform number per cluster, then one per synapse, layer by layer:
# the same seed gives the same masks on a CPU and a GPU). The pictures show what survives in
# conv2 (live synapses per kernel, 0-25) and in fc1 (each dot a synapse) for two factors.
# Whole kernels and whole neurons disappear: that is the *cluster-driven* part.

# %%
samples = {}
for f in (1.0, 0.5):
    masks, stats = synthesize_offspring(ancestor, EnvironmentalFactor(f, f),
                                        np.random.default_rng(0), return_stats=True)
    samples[f] = masks
    print(f"F = {f}: offspring keeps {stats.synapses_after:,} of {stats.synapses_before:,} "
          f"synapses ({100 * stats.fraction:.1f}%, expected {100 * stats.expected_fraction:.1f}%)")
    for s in stats.layers:
        print(f"   layer {s.name}: synapses {s.synapses_before:>7,} -> {s.synapses_after:>7,}"
              f"  (expected {s.expected_synapses:9,.0f});  clusters {s.clusters_before:>4} -> "
              f"{s.clusters_after:>4}")

fig, axes = plt.subplots(2, 3, figsize=(14, 8), constrained_layout=True)
im = axes[0, 0].imshow(conv2.cluster_probability, cmap="viridis", vmin=0, vmax=1,
                       aspect="auto")
axes[0, 0].set_title("ancestor conv2: P of each kernel")
fig.colorbar(im, ax=axes[0, 0])
axes[1, 0].plot(fc1.cluster_probability, np.arange(fc1.cluster_shape[0]), lw=0.8)
axes[1, 0].set_ylim(fc1.cluster_shape[0], 0)
axes[1, 0].set_xlim(0, 1.02)
axes[1, 0].set_title("ancestor fc1: P of each neuron")
cmap = plt.get_cmap("magma").with_extremes(bad="black")  # black: a dead kernel
norm = matplotlib.colors.LogNorm(vmin=1, vmax=25)
for col, f in enumerate((1.0, 0.5), start=1):
    m_conv2, m_fc1 = np.asarray(samples[f][1]), np.asarray(samples[f][2])
    counts = np.ma.masked_equal(m_conv2.sum(axis=(2, 3)), 0)
    im = axes[0, col].imshow(counts, cmap=cmap, norm=norm, aspect="auto",
                             interpolation="nearest")
    axes[0, col].set_title(f"offspring conv2, F = {f}: live synapses\nper kernel "
                           "(black: kernel dropped)")
    axes[1, col].imshow(m_fc1, cmap="gray_r", aspect="auto", interpolation="nearest")
    axes[1, col].set_title(f"offspring fc1, F = {f}: {int(m_fc1.sum()):,} synapses\n"
                           "(black: live synapse, white: dropped)")
fig.colorbar(im, ax=axes[0, 2])
for ax in axes[0]:
    ax.set_xlabel("input map")
    ax.set_ylabel("output map")
axes[1, 0].set_xlabel("P_c")
axes[1, 0].set_ylabel("neuron")
for ax in axes[1, 1:]:
    ax.set_xlabel("input feature")
    ax.set_ylabel("neuron")
save(fig, "05_offspring_masks.png")

# %% [markdown]
# The expectation formula is easy to check by sampling: draw many offspring of conv2 with
# `sample_layer_mask` (**task 6.1**) and compare the mean number of synapses with the
# formula.

# %%
env = EnvironmentalFactor(0.8, 0.8)
rng = np.random.default_rng(1)
counts = np.array([int(sample_layer_mask(conv2, env, rng).sum())
                   for _ in range(50 if FAST else 500)])
expected = expected_offspring_synapses(conv2, env)
print(f"conv2, F = 0.8: sampled {counts.mean():.1f} +- {counts.std() / math.sqrt(len(counts)):.1f}"
      f" synapses on average, expected {expected:.1f}")

# %% [markdown]
# Masks only shrink. Install an offspring's masks into a copy of the ancestor and encode it
# again: every synapse outside the mask now has probability 0, so a grandchild is always a
# subset of its parent.

# %%
child = models.lenet5()
child.load_state_dict(ancestor.state_dict())
for (_, layer), mask in zip(prunable_layers(child), samples[1.0]):
    layer.set_mask(mask)
grandchild = synthesize_offspring(child, EnvironmentalFactor(1.0, 1.0), np.random.default_rng(2))
for (name, layer), m in zip(prunable_layers(child), grandchild):
    outside = float(np.asarray(m)[np.asarray(layer.mask) == 0].sum())
    print(f"layer {name}: parent {int(layer.mask.sum()):>7,} synapses, grandchild "
          f"{int(np.asarray(m).sum()):>7,}, grandchild synapses outside the parent: {outside:.0f}")

# %% [markdown]
# ## Exercises
#
# 1. **Task 5.1** (`minievo/evolution/encoding.py`, `cluster_strength`): sum the synapse
#    strengths over the right axes for "kernel", "filter" and "neuron".
# 2. **Task 5.2** (`_probability`): $e^{s/Z} - 1$ with $Z = s_{\text{ref}} / \ln 2$, where
#    $s_{\text{ref}}$ is the layer's maximum (or a given reference, then capped at 1). Handle a
#    layer with no live synapse (all zeros, no division by zero). With a given reference,
#    cap $s / s_{\text{ref}}$ at 1 *before* exponentiating: the quantile references of
#    chapters 6 and 8 sit far below the strongest synapses, and $e^{s/Z}$ overflows (a
#    RuntimeWarning, which a test checks) once $s > 1024\, s_{\text{ref}}$. Why does the
#    library compute $2^{s / s_{\max}} - 1$ instead of `exp(s / Z) - 1`? (Hint: evaluate both
#    at $s = s_{\max}$ in float64 for a few random values.)
# 3. Compare the "kernel" and "filter" granularities: with the same $F$, which removes more
#    clusters, and which more synapses?
# 4. The encoding normalises per layer, so every layer's strongest synapse gets $p = 1$. What
#    would change with one normalisation for the whole network (`encode(..., scope="network")`)?
#    Look at the expected retention of each layer.
