"""Your own network and data, end to end: minievo.evolve on a user-written residual network with
batch norm; the walk's view of residual networks (tied channels); a layer type defined only here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import minievo
from minievo import functions as F
from minievo import graph, init, training
from minievo import layers as L
from minievo.evolution import report
from minievo.evolution.metrics import model_metrics
from minievo.experiment import UsageError
from minievo.models import build

TIMING = ("train_seconds", "eval_seconds")


class Block(L.Module):
    """A user's residual block: ordinary Python, the addition a plain +."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = L.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(c)
        self.conv2 = L.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(c)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + x)


class ChannelScale(L.Module):
    """A layer minievo does not contain: y[:, c] = s[c] * x[:, c]. The protocol's defaults fit
    it (channelwise, shape kept); it only says how to keep some of its channels."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.scale = L.Parameter(init.ones((c,)) * 1.5)

    def forward(self, x):
        return x * self.scale.reshape(1, self.c, 1, 1)

    def select_channels(self, index):
        out = ChannelScale(len(index))
        out.scale.data = self.scale.data[np.asarray(index)]
        return out

    def layer_config(self):
        return {"c": self.c}


class Net(L.Module):
    def __init__(self, scale=False):
        super().__init__()
        self.stem = L.Conv2d(1, 6, 3, padding=1)
        self.scale = ChannelScale(6) if scale else None
        self.block = Block(6)
        self.pool = L.GlobalAvgPool2d()
        self.fc = L.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        if self.scale is not None:
            h = self.scale(h)
        return self.fc(self.pool(self.block(h)))


class FcFirst(Net):
    """The classifier defined before the other layers: the wrong layer would be protected."""

    def __init__(self):
        L.Module.__init__(self)
        self.fc = L.Linear(6, 3)
        self.stem = L.Conv2d(1, 6, 3, padding=1)
        self.scale = None
        self.block = Block(6)
        self.pool = L.GlobalAvgPool2d()


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32) + y[:, None, None, None]
    return x, y


DATA = {"train": make_data(160, 1), "val": make_data(64, 2), "test": make_data(64, 3)}
SETTINGS = dict(preset="paper-mnist-paced", generations=2, ancestor_epochs=2,
                offspring_epochs=1, batch_size=32, progress=False)


@pytest.fixture
def no_plots(monkeypatch):
    monkeypatch.setattr(report, "plot_lineage", lambda out, rows, masks=None: [])


def run(out, model=Net, data=DATA, log=None, **overrides):
    kwargs = {**SETTINGS, **overrides}
    return minievo.evolve(model, data["train"], data["test"], val=data["val"], out=out,
                          log=log or (lambda *a: None), **kwargs)


def table(out):
    rows = json.loads((out / "lineage.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_own_residual_network_evolves_and_resumes_after_a_kill(tmp_path, monkeypatch,
                                                               no_plots):
    ref = run(tmp_path / "ref")
    assert [r["generation"] for r in ref.rows] == [0, 1, 2]
    assert ref.rows[2]["synapses"] < ref.rows[0]["synapses"]
    assert ref.rows[0]["val_images"] == 64 and ref.rows[0]["test_images"] == 64
    recorded = json.loads((tmp_path / "ref" / "config.json").read_text())["config"]
    assert recorded["model"] == "custom" and len(recorded["architecture"]) == 64
    assert recorded["val_fraction"] == pytest.approx(64 / 224)

    # Kill generation 1's training after three optimiser steps (a checkpoint after each).
    real_fit, calls = training.fit, [0]

    def fit(model, loader, optimizer, epochs, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            kwargs["checkpoint_seconds"] = 0
            real_step, steps = optimizer.step, [0]

            def step():
                if steps[0] == 3:
                    raise KeyboardInterrupt
                steps[0] += 1
                real_step()

            optimizer.step = step
        return real_fit(model, loader, optimizer, epochs, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(training, "fit", fit)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "killed")
    logs = []
    run(tmp_path / "killed", log=logs.append)
    assert any("resuming training" in line for line in logs), logs
    assert table(tmp_path / "killed") == table(tmp_path / "ref")


def test_another_network_or_other_data_is_refused_on_the_same_folder(tmp_path, no_plots):
    run(tmp_path / "run", generations=0)
    with pytest.raises(UsageError):
        run(tmp_path / "run", generations=0, model=lambda: Net(scale=True))
    other = dict(DATA, train=make_data(160, 9))
    with pytest.raises(UsageError):
        run(tmp_path / "run", generations=0, data=other)


@pytest.mark.parametrize("bad, match", [
    (dict(model=42), "model must be"),
    (dict(model=lambda: 3), "returned int"),
    (dict(data=dict(DATA, train=[1, 2, 3])), "pair"),
    (dict(colour="red"), "unknown setting 'colour'"),
    (dict(dataset_path="x"), "unknown setting"),
    (dict(val_fraction=0.1), "not for minievo.evolve"),
    (dict(preset="nope"), "unknown preset"),
    (dict(generations=-1), "generations"),
    (dict(model=lambda: FcFirst()), "define the output layer last"),
    (dict(model=lambda: L.Sequential(L.Flatten(), L.Linear(10, 3))), "cannot be walked"),
])
def test_bad_calls_are_one_clear_error(tmp_path, bad, match):
    with pytest.raises(UsageError, match=match):
        run(tmp_path / "run", **bad)
    assert not (tmp_path / "run" / "lineage.json").exists()


def test_a_layer_type_defined_in_a_test_evolves(tmp_path, no_plots):
    result = run(tmp_path / "run", model=lambda: Net(scale=True))
    assert result.rows[2]["synapses"] < result.rows[0]["synapses"]
    names = [n.name for n in graph.walk(Net(scale=True), (1, 8, 8)).nodes]
    assert "scale" in names and "add0" in names


# ----------------------------------------------------------------------------------------------
# the walk of residual networks
# ----------------------------------------------------------------------------------------------
def test_resnet_graph_has_the_blocks_additions_and_projections():
    model = build("resnet20", (1, 28, 28))
    s = graph.walk(model, (1, 28, 28))
    adds = [n for n in s.nodes if isinstance(n.layer, L.Add)]
    assert len(adds) == 9
    assert s.output.out_shape == (10,)
    projections = [n for n in s.prunable() if getattr(n.layer, "kernel_size", 0) == 1]
    assert len(projections) == 2  # 16 -> 32 and 32 -> 64
    m = model_metrics(model, (1, 28, 28))
    assert m.dense.synapses == sum(layer.weight.size for _, layer in L.prunable_layers(model))
    assert [lm.name for lm in m.layers][:3] == ["stem.0", "blocks.0.conv1", "blocks.0.conv2"]


def _kill_filter(conv, o):
    mask = np.array(conv.mask)
    mask[o] = 0
    conv.set_mask(mask)


def test_a_channel_fed_by_an_addition_is_dead_only_when_dead_in_every_branch():
    model = Net()
    reader = model.block.conv1  # reads the stem's channels, which the addition also adds
    base = model_metrics(model, (1, 8, 8))
    # Filter 2 of the block's second conv is dead, but the shortcut still carries channel 2:
    # the addition's channel 2 stays live, so the classifier's synapses reading it count.
    _kill_filter(model.block.conv2, 2)
    m = model_metrics(model, (1, 8, 8))
    fc = m.layers[-1]
    assert fc.effective.synapses == base.layers[-1].effective.synapses
    # The stem's filter 2 dies too: channel 2 is now dead in both branches, so the classifier's
    # three synapses reading it, and the block's conv1 kernels reading it, stop counting.
    _kill_filter(model.stem, 2)
    m = model_metrics(model, (1, 8, 8))
    assert m.layers[-1].effective.synapses == base.layers[-1].effective.synapses - 3
    conv1 = next(lm for lm in m.layers if lm.name == "block.conv1")
    assert conv1.effective.kernels == base.dense.kernels * 0 + 6 * 5  # 6 filters x 5 live maps
    assert reader.mask.sum() == 6 * 6 * 9  # the masks themselves are untouched


def test_the_trace_restores_training_mode_and_leaves_statistics_alone():
    model = Net()
    model.train()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    graph.walk(model, (1, 8, 8))
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def test_a_layer_called_twice_is_refused():
    class Twice(L.Module):
        def __init__(self):
            super().__init__()
            self.fc = L.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(graph.StructureError, match="called twice"):
        graph.walk(Twice(), (4,))
