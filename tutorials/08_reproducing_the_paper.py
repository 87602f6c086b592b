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
# # Chapter 8 — Reproducing the paper
#
# Shafiee and Wong evolve the Caffe LeNet-5 on MNIST over many generations and report about
# **125-fold fewer synapses** than the original network, at an accuracy comparable to it; the
# often quoted **9.71-fold fewer clusters** is from the abstract of their follow-up paper
# (arXiv:1704.02081), which does not say which cluster type it counts. This chapter puts everything together: the
# experiment as the project runs it, the per-generation table and curves of a finished run,
# a comparison with other ways of sparsifying the same network, and, at the end, the same
# lineage run from Python on a network and data of your own.
#
# **Which run?** Set `MINIEVO_RUN` to a finished run folder, e.g. after
#
#     minievo evolve --preset paper-mnist --out runs/paper-mnist     # 11 min on 2 CPU cores (docs/results/paper-mnist.md); resumable
#     MINIEVO_RUN=runs/paper-mnist python tutorials/08_reproducing_the_paper.py
#
# Without it the chapter runs a small lineage itself: the `quick` preset (a slice of MNIST,
# about 25 s on 2 CPU cores) in full mode, or two generations on synthetic digits in fast mode. The small
# runs show the machinery; only the paper-scale run says anything about the paper.

# %%
import json
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

import minievo.accel
from minievo import checkpoint, models, sparse, tutorial
from minievo.evolution.lineage import PRESETS, EvolutionConfig, Lineage
from minievo.evolution.report import markdown_table

# Fast mode, the figures folder and save(fig, name): the set-up all chapters share.
FAST = tutorial.fast_mode()
FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
save = tutorial.figure_saver(FIGURES)


# %% [markdown]
# ## 1. The experiment
#
# docs/method.md#experiment fixes the setting:
#
# * **Ancestor:** conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> linear 800->500 ->
#   ReLU -> linear 500->10: 430,500 synapses; 1,530 clusters at kernel granularity
#   (20 + 1,000 kernels + 500 + 10 neurons), 580 at filter granularity. Trained on the full
#   MNIST with the Caffe recipe (SGD 0.01, momentum 0.9, weight decay 5e-4, batch 64); a dense
#   LeNet-5 reaches about 99.1-99.2%.
# * **Each generation:** encode, synthesise under the environmental factor, inherit the
#   surviving weights, retrain, evaluate (chapters 5 and 6).
# * **The papers leave open** how many epochs a generation trains, the value of the
#   environmental factor and how the probabilities are normalised. docs/method.md#decisions records the
#   project's decisions, and the `paper-mnist` preset is the calibrated default run.
#
# `Lineage` runs it with checkpoints (an interrupted run resumes with the same command and
# gives the same table). The preset:

# %%
print(json.dumps(PRESETS["paper-mnist"], indent=1))

# %% [markdown]
# ## 2. The run

# %%
RUN = os.environ.get("MINIEVO_RUN")
if RUN:
    run_dir = Path(RUN)
    if not (run_dir / "lineage.json").exists():
        raise SystemExit(f"MINIEVO_RUN={RUN}: no lineage.json there; is it a `minievo "
                         "evolve` run folder?")
    saved = json.loads((run_dir / "lineage.json").read_text())
    config, rows = saved["config"], saved["rows"]
    print(f"read {len(rows)} generations from {run_dir}")
else:
    if FAST:
        overrides = dict(dataset="synthetic-digits", limit_train=1024, limit_test=512,
                         generations=2, ancestor_epochs=1, offspring_epochs=1)
        scratch = tempfile.TemporaryDirectory(prefix="minievo-ch08-")  # removed at the end
        run_dir = Path(scratch.name) / "run"
    else:
        overrides = {}
        run_dir = RUNS / "ch08-quick"
    cfg = EvolutionConfig(**{**PRESETS["quick"], **overrides})
    minievo.accel.enable()  # the fast path, as `minievo evolve` uses it (chapter 7)
    print(f"running a small lineage into {run_dir} (rerun to resume): {cfg.generations} "
          f"generations of {cfg.model} on {cfg.dataset}")
    rows = Lineage(cfg, run_dir, progress=not FAST).run()
    config = json.loads((run_dir / "lineage.json").read_text())["config"]
print(f"model {config['model']} on {config['dataset']}, seed {config['seed']}, "
      f"{len(rows) - 1} generations")

# %% [markdown]
# ## 3. The per-generation table
#
# The paper has a per-generation table, but its numbers could not be read reliably from the
# copy of the paper this project worked from (the text of the arXiv PDF), so no number here
# is compared with a row of it; the paper is compared through the figures its text states
# (section 5). The project publishes the whole table of every run instead (`table.md` in
# the run folder). *Synaptic efficiency* is synapses(0) /
# synapses(g); *cluster efficiency* the same for clusters, counted at kernel granularity
# (kernels + neurons) and at filter granularity (filters + neurons).

# %%
print(markdown_table(rows))
first, last = rows[0], rows[-1]
print(f"generation {last['generation']}: {last['synaptic_efficiency']:.1f}x fewer synapses, "
      f"{last['cluster_efficiency_kernel']:.2f}x / {last['cluster_efficiency_filter']:.2f}x "
      f"fewer clusters (kernel / filter), test accuracy {100 * last['test_accuracy']:.2f}% "
      f"(generation 0: {100 * first['test_accuracy']:.2f}%)")

# %% [markdown]
# ## 4. Curves

# %%
gens = [r["generation"] for r in rows]
syn = [r["synapses"] for r in rows]
acc = [100 * r["test_accuracy"] for r in rows]

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(syn, acc, "o-", label="test accuracy")
if all("val_accuracy" in r for r in rows):
    ax.plot(syn, [100 * r["val_accuracy"] for r in rows], "s:", label="validation accuracy")
for g, s, a in zip(gens, syn, acc):
    ax.annotate(str(g), (s, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.axvline(first["synapses"] / 125, color="gray", ls="--", lw=1)
ax.annotate("125x fewer\n(the paper)", (first["synapses"] / 125, min(acc)),
            textcoords="offset points", xytext=(4, 0), fontsize=8, color="gray")
ax.set_xscale("log")
ax.invert_xaxis()
ax.set_xlabel("synapses (log scale; generations go left)")
ax.set_ylabel("accuracy (%)")
ax.set_title(f"{config['model']} on {config['dataset']}: accuracy against size")
ax.grid(True, which="both", alpha=0.3)
ax.legend(loc="lower left")
save(fig, "08_accuracy_vs_synapses.png")

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].plot(gens, [r["synaptic_efficiency"] for r in rows], "o-", label="synaptic")
axes[0].plot(gens, [r["cluster_efficiency_kernel"] for r in rows], "s-",
             label="cluster (kernel + neuron)")
axes[0].plot(gens, [r["cluster_efficiency_filter"] for r in rows], "^-",
             label="cluster (filter + neuron)")
axes[0].axhline(125, color="tab:blue", ls="--", lw=1)
axes[0].axhline(9.71, color="tab:orange", ls="--", lw=1)
axes[0].text(0, 125, "paper: 125x synapses", va="bottom", fontsize=8, color="tab:blue")
axes[0].text(0, 9.71, "follow-up abstract: 9.71x clusters", va="bottom", fontsize=8,
             color="tab:orange")
axes[0].set_yscale("log")
axes[0].set_xlabel("generation")
axes[0].set_ylabel("x fewer than generation 0")
axes[0].set_title("Efficiency per generation")
axes[0].legend(fontsize=8, loc="center right")
for key in [k for k in rows[0] if k.startswith("density_")]:
    axes[1].plot(gens, [100 * r[key] for r in rows], "o-", label=f"layer {key[8:]}")
axes[1].set_yscale("log")
axes[1].set_xlabel("generation")
axes[1].set_ylabel("live synapses (% of dense)")
axes[1].set_title("Per-layer density")
axes[1].legend(fontsize=8)
for ax in axes:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # generations
    ax.grid(True, which="both", alpha=0.3)
save(fig, "08_efficiency.png")

# %% [markdown]
# ## 5. Against other ways of sparsifying LeNet-5
#
# docs/method.md#comparisons lists results on the same network. They were obtained with different
# training budgets and selection rules, so read the comparison as orientation, not as a
# ranking:
#
# | method | test error | fewer weights |
# |---|---:|---:|
# | iterative magnitude pruning (Han et al.) | 0.77% | 12x |
# | dynamic network surgery (Guo et al.) | 0.91% | 108x |
# | SNIP (Lee et al.) | 1.1% | 100x |
# | soft weight sharing (Ullrich et al.) | 0.97% | 200x |
# | sparse variational dropout (Molchanov et al.) | 0.75% | 280x |
# | evolutionary synthesis (Shafiee & Wong, this paper) | comparable to the ancestor | ~125x |
# | two-parent synthesis (same group) | ~3% | 258x |
# | m-parent synthesis on 10% of MNIST (same group) | 2-3 points above the ancestor | ~150x |
#
# Each generation of our run is one point below. Choosing "the" result of a lineage needs a
# rule fixed in advance; a fair one is the sparsest generation whose *validation* accuracy is
# within half a point of generation 0's (validation, not test: choosing on the test set
# would overstate the result). Runs without a validation split fall back to the test
# accuracy, and say so.

# %%
literature = [
    ("magnitude pruning", 0.77, 12), ("network surgery", 0.91, 108), ("SNIP", 1.1, 100),
    ("soft weight sharing", 0.97, 200), ("variational dropout", 0.75, 280),
    ("two-parent synthesis", 3.0, 258),
]
key = "val_accuracy" if all("val_accuracy" in r for r in rows) else "test_accuracy"
ok = [r for r in rows if r[key] >= rows[0][key] - 0.005]
chosen = max(ok, key=lambda r: r["synaptic_efficiency"])
print(f"chosen by {key.replace('_', ' ')} (within 0.5 points of generation 0): generation "
      f"{chosen['generation']}, {chosen['synaptic_efficiency']:.1f}x fewer synapses, test error "
      f"{100 - 100 * chosen['test_accuracy']:.2f}%")

fig, ax = plt.subplots(figsize=(7, 4.5))
for name, err, comp in literature:
    ax.scatter(comp, err, color="gray")
    ax.annotate(name, (comp, err), textcoords="offset points", xytext=(5, 3), fontsize=8)
ax.axvline(125, color="tab:red", ls="--", lw=1)
ax.text(120, 0.97, "Shafiee & Wong: ~125x,\naccuracy comparable\nto the ancestor",
        transform=ax.get_xaxis_transform(), ha="right", va="top", fontsize=8,
        color="tab:red")
eff = [r["synaptic_efficiency"] for r in rows]
err = [100 - 100 * r["test_accuracy"] for r in rows]
ax.plot(eff, err, "o-", color="tab:blue", label=f"this run ({config['dataset']}), per generation")
ax.scatter([chosen["synaptic_efficiency"]], [100 - 100 * chosen["test_accuracy"]], s=150,
           facecolors="none", edgecolors="tab:blue", label="chosen generation")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("fewer weights than the dense LeNet-5 (x, log scale)")
ax.set_ylabel("test error (%, log scale)")
ax.set_title(f"LeNet-5: sparsity against error (this run: {config['dataset']}; "
             "the others: MNIST)")
ax.grid(True, which="both", alpha=0.3)
# Below the axes, so that it hides neither the paper's label nor a point.
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
save(fig, "08_comparison.png")

# %% [markdown]
# ## 6. What the last generation costs to run
#
# Synapses are the paper's measure; chapter 7's compact model says what is left to *execute*
# once dead structure is removed.

# %%
model_path = run_dir / f"gen_{last['generation']:03d}" / "model.npz"
if model_path.exists():
    arrays, meta = checkpoint.load(model_path)
    net = models.build(config["model"])
    net.load_state_dict(arrays)
    print(sparse.compact(net, models.INPUT_SHAPES[config["model"]]).summary())
else:
    print(f"{model_path} is not there (the run folder holds only the tables)")

# %% [markdown]
# %%
if not RUN and FAST:
    scratch.cleanup()  # the fast-mode run folder was only for this chapter

# %% [markdown]
# ## 7. Reading the result honestly
#
# * A fast-mode or `quick` run trains each generation on a few thousand images: its numbers
#   say nothing about the paper. The paper-scale run is the `paper-mnist` preset.
# * Synaptic efficiency counts the sampled synapses. The *effective* counts (`effective`
#   column) remove dead structure and are what the compact model executes; both are reported.
# * The environmental factor and the normalisation are the method's free parameters. The
#   preset's values were calibrated on this project's machine so that about a dozen
#   generations pass 125x (docs/method.md#experiment asks for 10-15); a different budget per generation moves
#   the curve.
# * One lineage is one sample of a random process: a different seed gives a different table.
#   Run several seeds before claiming a difference of a few tenths of a point.

# %% [markdown]
# ## 8. Your own network and data
#
# Everything above ran the paper's LeNet-5 on a named data set. `minievo.evolve` runs the same
# lineage (presets, checkpoints, resume, the validation pace, the table and plots) on a
# network you write and on arrays you pass (`minievo/api.py`). The network is built from
# minievo's layers with an ordinary `forward`; nothing declares its structure. Below, a small
# residual network with batch norm: the shortcut of its block is a plain `+`.

# %%
import numpy as np

import data_loaders as dl
import minievo
import minievo.graph
from minievo import functions as F
from minievo import layers as L
from minievo.evolution.metrics import model_metrics


class Block(L.Module):
    """Two 3x3 convolutions with batch norm, added to the block's input, then ReLU."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = L.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(channels)
        self.conv2 = L.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(channels)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + x)


class SmallResNet(L.Module):
    """A strided stem (28x28 -> 7x7), one residual block, global average pooling, a classifier.

    The layers are defined in the order the forward uses them: the last prunable layer is taken
    as the output layer, whose class neurons are never dropped as clusters.
    """

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.stem = L.Conv2d(1, width, 5, stride=4, padding=2, bias=False)
        self.bn = L.BatchNorm2d(width)
        self.block = Block(width)
        self.pool = L.GlobalAvgPool2d()
        self.fc = L.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        return self.fc(self.pool(self.block(h)))


# %% [markdown]
# The data are arrays (x uint8 images, scaled to [0, 1] on the way in; y integer labels): a
# slice of MNIST in full mode (the generated digits when MNIST cannot be had), of the
# synthetic digits in fast mode. The validation split is separate from the training images:
# the run makes its choices on it, and the test set only reports.
#
# The recipe is the preset's (`paper-mnist`: SGD with momentum, the pace of two thirds of the
# synapses per generation) with two changes: batches of 32 and a learning rate of 0.05
# instead of LeNet-5's 0.01, with which this network learns far more in the few steps of a
# generation. The network is small (5,168 synapses, against LeNet-5's 430,500), so it has
# less to spare: compare its accuracy column with the table of section 3. Rerunning
# the cell resumes the run; the run folder records a sha256 of the network and of the data,
# and refuses another network or other data.

# %%
def own_data():
    name = "synthetic-digits" if FAST else "mnist"
    n_train, n_val, n_test = (768, 256, 256) if FAST else (10000, 2000, 2000)
    try:
        x, y = dl.load_dataset(name, "train", n=n_train + n_val)
        test = dl.load_dataset(name, "test", n=n_test)
    except dl.DataError as exc:
        print(f"{name} is not available ({exc}); using synthetic-digits instead")
        name = "synthetic-digits"
        x, y = dl.load_dataset(name, "train", n=n_train + n_val)
        test = dl.load_dataset(name, "test", n=n_test)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), test, name


own_train, own_val, own_test, own_name = own_data()
if FAST:
    own_scratch = tempfile.TemporaryDirectory(prefix="minievo-ch08-own-")  # removed below
    own_dir = Path(own_scratch.name) / "run"
else:
    own_dir = RUNS / "ch08-own-network"
result = minievo.evolve(SmallResNet, own_train, own_test, val=own_val, out=own_dir,
                        preset="paper-mnist", generations=2 if FAST else 4,
                        ancestor_epochs=1 if FAST else 3, offspring_epochs=1, batch_size=32,
                        lr=0.05, progress=not FAST, name="SmallResNet", dataset=own_name)
print(markdown_table(result.rows))
print("written to the run folder:", ", ".join(p.name for p in result.paths))

# %% [markdown]
# **The walk's view.** To count synapses, clusters and dead structure, minievo traces one
# forward pass (`minievo.graph.walk(model, input_shape)`): every call of a layer becomes a node,
# and so do the operations written between layers, the `+` (an `Add` node), `F.relu` and a
# flatten. Anything else between layers is refused with a message saying to wrap it in a
# layer; docs/extending.md says why, and how to add a layer type.

# %%
SHAPE = (1, 28, 28)
net = SmallResNet()
for node in minievo.graph.walk(net, SHAPE).nodes:
    kind = type(node.layer).__name__ if node.layer is not None else "-"
    print(f"{node.index:2d}  {node.name:12s} {kind:16s} reads {str(node.inputs):8s} "
          f"-> {node.out_shape}")

# %% [markdown]
# **Tied channels.** The addition makes channel c of its output the sum of channel c of both
# branches. A channel that no longer depends on the image (a constant, because every synapse
# of the filter computing it is gone) is dead structure: the synapses reading it do nothing,
# and the `effective` columns of the table leave them out
# (docs/method.md#dead-structure). After an addition a channel is dead only when it is dead
# in *both* branches. Remove the stem's filter 3, then also the block's second filter 3:

# %%
def drop_filter(conv, o):
    mask = np.array(conv.mask)
    mask[o] = 0
    conv.set_mask(mask)


def channel_3(net):
    live = {node.name: node.live for node in minievo.graph.walk(net, SHAPE).nodes}
    state = {name: "live" if live[name][3] else "dead" for name in ("relu0", "block.bn2", "add0")}
    fc = model_metrics(net, SHAPE).layers[-1]
    return (f"stem branch {state['relu0']}, block branch {state['block.bn2']}, after the "
            f"addition {state['add0']}; classifier's effective synapses "
            f"{fc.effective.synapses} of {fc.live.synapses}")


print("dense:                  ", channel_3(net))
drop_filter(net.stem, 3)
print("stem filter 3 gone:     ", channel_3(net))
drop_filter(net.block.conv2, 3)
print("block's filter 3 gone:  ", channel_3(net))

# %%
if FAST:
    own_scratch.cleanup()  # the fast-mode run folder was only for this section

# %% [markdown]
# ## Exercises
#
# 1. Run `minievo evolve --quick` twice with different `--seed`s and plot both lineages in
#    the comparison figure. How far apart are they?
# 2. Compare `--offspring-init inherit`, `reinit` and `rewind` (the lottery-ticket style
#    restart) on the quick preset.
# 3. Compare `--granularity kernel` and `--granularity filter`: which reaches the paper's
#    cluster efficiency of 9.71x first, and at what accuracy?
# 4. Everything you wrote in the assignments runs in this experiment: grade your copy with
#    `minievo assignments grade DIR`, then run this chapter against it with
#    `PYTHONPATH=DIR python tutorials/08_reproducing_the_paper.py`.
# 5. Give `SmallResNet` a second block that halves the maps and doubles the channels, with a
#    1x1 convolution and batch norm on the shortcut (`minievo.models.BasicBlock` has one),
#    and evolve it: which layers lose the most synapses? Then write a layer type of your own
#    (docs/extending.md, section 1) and put it into the network.
