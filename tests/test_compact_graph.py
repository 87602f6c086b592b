"""compact() on the one walk: residual networks, folded batch norm, a user's layer, storage.

The compact chains of before (the committed paper networks, a chain file written by the code
of before) must come out and load exactly as they did; graph models (ResNet-8, a small residual
net with a layer type defined here) must equal their masked dense forward, fold their batch
norms, round-trip through a file, and corrupted graph files must be refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minievo import checkpoint, graph, models, sparse
from minievo import functions as F
from minievo import layers as L
from minievo.autograd import Parameter, Tensor, no_grad
from minievo.backend import to_numpy
from minievo.checkpoint import CheckpointError
from minievo.layers import prunable_layers
from minievo.sparse.layers import Affine, AvgPool, CompactConv2d, Gather, LayerStep, Sum
from minievo.sparse.synthetic import set_random_masks
from minievo.structure import counts, live_kernels, live_units

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "benchmarks" / "results" / "paper-mnist"
CHAIN_FILE = ROOT / "tests" / "data" / "compact_chain_v1.npz"


@pytest.fixture(autouse=True)
def _dense_reference(dense_layers):
    """The masked dense models these tests compare against run the reference ops."""


def dense_forward(model, x):
    with no_grad():
        return model(Tensor(x)).data


def assert_close(actual, expected):
    """Within float32 tolerance: rtol 1e-4, atol 1e-5 of the output's scale."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    scale = max(1e-6, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def fingerprint(path) -> str:
    """SHA-256 of a checkpoint's arrays (names, dtypes, shapes, bytes) and its metadata."""
    arrays, meta = checkpoint.load(path)
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


# ----- the compact chains of before -------------------------------------------------------------
# Recorded with the code before compaction read the walk (commit 8b91b3f): the compact file of
# each committed paper network, and its outputs (method 'dense') on a seeded input.

PAPER_EXPECTED = {
    12: ("a36f49642f113da811a390aa3f0c26f508bd2e1cef93fdb1dfa0dfa95d83234b",
         [[-1.26206, -0.56681, -0.5591, 3.31942, 0.86028, 1.05738, -1.41174, 0.14153, 3.38041,
           -0.19524],
          [-1.18007, 0.18456, 1.47929, 0.19837, 1.24724, 0.47505, 1.7136, -1.62631, 5.54676,
           -1.95176]]),
    13: ("5527c15ba3a387281cc3bedcfcb11a390034d4a31ffd6019be11721b6fb67cd8",
         [[-1.49691, 0.05144, 0.07603, 3.82187, 1.62025, 2.9726, -0.03399, 0.40717, 0.82807,
           -0.57838],
          [-0.50466, -0.7551, 3.12942, 1.33871, 0.05533, 1.46294, 2.71947, -2.55141, 4.40083,
           -2.82198]]),
}


@pytest.mark.parametrize("generation", sorted(PAPER_EXPECTED))
def test_committed_paper_networks_compact_and_run_as_before(tmp_path, generation):
    digest, rows = PAPER_EXPECTED[generation]
    arrays, _ = checkpoint.load(PAPER / f"gen_{generation:03d}_model.npz")
    net = models.lenet5()
    net.load_state_dict(arrays)
    net.eval()
    x = np.random.default_rng(2024).standard_normal((6, 1, 28, 28)).astype(np.float32)
    for method in ("auto", "dense", "csr"):
        cm = sparse.compact(net, method=method)
        assert cm.is_chain and [type(s).__name__ for s in cm.steps] == [
            "CompactConv2d", "MaxPool", "CompactConv2d", "MaxPool", "Flatten", "CompactLinear",
            "ReLU", "CompactLinear"]
        np.testing.assert_allclose(cm(x)[:2], rows, rtol=0, atol=2e-5)
    cm = sparse.compact(net)
    path = tmp_path / "paper.npz"
    cm.save(path)
    assert fingerprint(path) == digest  # same steps, arrays and format as before
    loaded = sparse.load(path)
    np.testing.assert_array_equal(loaded(x), cm(x))
    assert_close(cm(x), dense_forward(net, x))


def chain_model():
    """The chain the file of before was written from: an unread input map, dead filters in
    both convolutions (one behind a padded conv: a bias map), dropout, a constant output."""
    rng = np.random.default_rng(11)
    net = L.Sequential(L.Conv2d(3, 6, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                       L.Conv2d(6, 5, 3, padding=1), L.ReLU(), L.Flatten(), L.Dropout(0.25),
                       L.Linear(80, 7), L.ReLU(), L.Linear(7, 4))
    for layer in (net[0], net[3], net[7], net[9]):
        layer.weight.data = rng.standard_normal(layer.weight.shape).astype(np.float32) * 0.4
        layer.bias.data = rng.standard_normal(layer.bias.shape).astype(np.float32) * 0.3
        layer.set_mask((rng.random(layer.weight.shape) < 0.6).astype(np.float32))
    m0 = net[0].mask.copy()
    m0[:, 2] = 0
    m0[1] = 0
    net[0].set_mask(m0)
    m3 = net[3].mask.copy()
    m3[4] = 0
    net[3].set_mask(m3)
    m9 = net[9].mask.copy()
    m9[2] = 0
    net[9].set_mask(m9)
    return net.eval()


CHAIN_DIGEST = "6fa622c50a38b5bddf2a8de53aabd786b9913fb8fc693ffc7fa8c862159e95ff"
CHAIN_OUT = [[-0.00618, 0.8405, 0.09836, -0.36527], [-1.46131, 1.11663, 0.09836, 0.26926],
             [-1.05396, 1.10363, 0.09836, 0.33341], [0.41424, 0.72602, 0.09836, -1.83852]]


def test_chain_file_of_before_loads_and_runs_as_before(tmp_path):
    assert fingerprint(CHAIN_FILE) == CHAIN_DIGEST
    old = sparse.load(CHAIN_FILE)
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(old(x), CHAIN_OUT, rtol=0, atol=2e-5)
    net = chain_model()
    cm = sparse.compact(net, input_shape=(3, 8, 8))
    assert [type(s).__name__ for s in cm.steps] == [type(s).__name__ for s in old.steps]
    assert isinstance(cm.steps[0], Gather) and cm.compact_layers[1].bias_map is not None
    cm.save(tmp_path / "again.npz")
    assert fingerprint(tmp_path / "again.npz") == CHAIN_DIGEST  # byte for byte what it was
    expanded = sparse.expand(old)
    for a, b in zip(prunable_layers(expanded), prunable_layers(net)):
        np.testing.assert_array_equal(to_numpy(a[1].mask), to_numpy(b[1].mask))
        np.testing.assert_array_equal(to_numpy(a[1].weight.data), to_numpy(b[1].weight.data))
    assert_close(old(x), dense_forward(net, x))


# ----- ResNet-8 --------------------------------------------------------------------------------


def randomize_batch_norms(net, rng, xp):
    """Non-trivial gamma (some negative), beta and running statistics."""
    for _, m in net.named_modules():
        if isinstance(m, L.BatchNorm2d):
            c = m.num_features
            m.weight.data = xp.asarray(rng.uniform(-1.5, 1.5, c).astype(np.float32))
            m.bias.data = xp.asarray(rng.normal(0, 0.5, c).astype(np.float32))
            m.running_mean = xp.asarray(rng.normal(0, 0.5, c).astype(np.float32))
            m.running_var = xp.asarray(rng.uniform(0.3, 3.0, c).astype(np.float32))
    return net


def resnet8(xp, shape, density, seed):
    rng = np.random.default_rng(seed)
    net = set_random_masks(models.build("resnet8", shape), rng, density, bias_scale=0.5)
    return randomize_batch_norms(net, rng, xp).eval(), rng


def kill(layer, xp, rows=None):
    """Zero the mask rows (filters / neurons) ``rows`` of a prunable layer (all if None)."""
    m = to_numpy(layer.mask).copy()
    m[slice(None) if rows is None else rows] = 0
    layer.set_mask(xp.asarray(m))


@pytest.mark.parametrize("density", [1.0, 0.3, 0.12])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["cifar", "mnist"])
def test_resnet8_compact_equals_masked_dense(xp, shape, density):
    net, rng = resnet8(xp, shape, density, seed=int(100 * density) + shape[0])
    cm = sparse.compact(net, shape)
    x = xp.asarray(rng.standard_normal((5, *shape)).astype(np.float32))
    y = cm(x)
    assert y.shape == (5, 10)
    assert_close(y, dense_forward(net, x))
    assert not cm.is_chain
    # every batch norm follows a convolution that nothing else reads: all folded
    assert not any(isinstance(s, Affine) for s in cm.steps)
    assert sum(isinstance(s, Sum) for s in cm.steps) == 3
    assert all(isinstance(s, CompactConv2d) for s in cm.compact_layers[:-1])


def test_batch_norm_is_folded_into_the_convolution(xp):
    """Dense masks: the stem conv's compact weights are W * scale and its bias the shift."""
    net, _ = resnet8(xp, (3, 16, 16), 1.0, seed=1)
    cm = sparse.compact(net, (3, 16, 16))
    scale, shift = net.stem[1].scale_shift()
    stem = cm.steps[0]
    w, b, _ = stem.to_dense()
    want = to_numpy(net.stem[0].weight.data).astype(np.float64) * scale[:, None, None, None]
    np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b, shift, rtol=1e-6, atol=1e-7)
    assert cm.inputs[1] == [0] and type(cm.steps[1]).__name__ == "ReLU"  # no BN step between


def test_add_with_channels_dead_in_one_branch(xp):
    net, rng = resnet8(xp, (3, 16, 16), 1.0, seed=2)
    blocks = net.blocks
    kill(blocks[0].conv2, xp, [0, 5])  # main branch constant (bn2's shift), identity live
    kill(blocks[1].shortcut[0], xp, [1, 2])  # projection dead, main branch live
    kill(blocks[2].conv2, xp, [3])  # channel 3 of the last block constant in both branches
    kill(blocks[2].shortcut[0], xp, [3])
    cm = sparse.compact(net, (3, 16, 16))
    x = xp.asarray(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    assert_close(cm(x), dense_forward(net, x))
    sums = [s for s in cm.steps if isinstance(s, Sum)]
    assert [len(s.src) for s in sums] == [2, 2, 2]
    assert [s.units for s in sums] == [16, 32, 63]
    offset0 = sums[0].offset  # the constant part: bn2's shift at maps 0 and 5 only
    shift = blocks[0].bn2.scale_shift()[1]
    np.testing.assert_allclose(offset0, np.where(np.isin(np.arange(16), [0, 5]), shift, 0),
                               rtol=1e-6, atol=1e-7)
    assert sums[1].dst[1].size == 30  # the projection adds 30 of 32 maps


def test_dead_branch_adds_a_per_pixel_constant(xp):
    """Block 1's main branch reads nothing: its padded conv2 turns the constant into a map
    that differs at the border, which the addition adds per pixel."""
    net, rng = resnet8(xp, (3, 16, 16), 0.6, seed=3)
    kill(net.blocks[1].conv1, xp)
    cm = sparse.compact(net, (3, 16, 16))
    x = xp.asarray(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    assert_close(cm(x), dense_forward(net, x))
    sums = [s for s in cm.steps if isinstance(s, Sum)]
    assert len(sums[1].src) == 1 and sums[1].offset.shape == (32, 8, 8)
    names = [src.name for src in cm.sources if src.step < 0]
    assert names == ["blocks.1.conv1", "blocks.1.conv2"]


def test_fully_dead_resnet_is_constant(xp):
    net, rng = resnet8(xp, (1, 12, 12), 1.0, seed=4)
    kill(net.stem[0], xp)
    cm = sparse.compact(net, (1, 12, 12))
    assert cm.steps == [] and cm.out_index.size == 0
    x = xp.asarray(rng.standard_normal((3, 1, 12, 12)).astype(np.float32))
    assert_close(cm(x), dense_forward(net, x))


def test_resnet_save_load_summary_and_expand(xp, backend_name, tmp_path):
    net, rng = resnet8(xp, (3, 16, 16), 0.4, seed=5)
    kill(net.blocks[0].conv2, xp, [2])
    cm = sparse.compact(net, (3, 16, 16))
    path = tmp_path / "resnet8.npz"
    cm.save(path)
    assert checkpoint.load(path)[1]["version"] == 2
    loaded = sparse.load(path, backend_name)
    x = xp.asarray(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(cm(x)))
    assert loaded.inputs == cm.inputs
    assert loaded.summary().as_dict() == cm.summary().as_dict()
    with pytest.raises(ValueError, match="original model"):
        sparse.expand(loaded)


def test_summary_of_a_graph_model_counts_every_prunable_layer():
    net, _ = resnet8(np, (3, 16, 16), 0.3, seed=6)
    kill(net.blocks[1].conv1, np)  # a dead branch: its convs execute nothing
    in_shapes = {n.name: n.in_shape for n in graph.walk(net, (3, 16, 16)).prunable()}
    cm = sparse.compact(net, (3, 16, 16))
    s = cm.summary()
    assert len(s.layers) == 10
    for row, (name, layer) in zip(s.layers, prunable_layers(net)):
        mask = to_numpy(layer.mask)
        positions = layer.positions(in_shapes[name])
        want = counts(mask, positions, layer.granularities)
        assert row.name.startswith(f"{name}: ")
        assert (row.synapses, row.macs) == (want.synapses, want.macs)
        assert row.kernels == (int(live_kernels(mask).sum()) if isinstance(layer, L.Conv2d)
                               else int(live_units(mask).sum()))
        assert row.clusters == int(live_units(mask).sum())
        assert row.effective_synapses <= row.synapses
        if name == "blocks.1.conv2":  # sampled synapses that read a constant: none executed
            assert row.effective_synapses == row.effective_clusters == 0 and row.synapses > 0
    assert s.effective_synapses == sum(layer.synapses for layer in cm.compact_layers)
    assert "blocks.2.shortcut.0: Conv2d 64x32x1x1" in str(s)


# ----- a layer type defined here, in a small residual model --------------------------------------


class ChannelGain(L.Module):
    """y[:, c] = weight[c] * x[:, c]: a user's channelwise layer that minievo does not know."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)
        self.weight = Parameter(np.linspace(0.5, 1.5, self.channels).astype(np.float32))

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        return x * self.weight.reshape(1, -1, 1, 1)

    def select_channels(self, index):
        out = ChannelGain(len(index))
        out.weight.data = self.weight.data[np.asarray(index)].copy()
        return out

    def layer_config(self):
        return {"channels": self.channels}


class TinyRes(L.Module):
    """conv -> relu -> max-pool -> ChannelGain, a residual block (conv + folded BN) added to
    it, a batch norm after the addition (not foldable: an affine step), average pooling,
    global pooling, linear."""

    def __init__(self, c: int = 6):
        super().__init__()
        self.conv0 = L.Conv2d(2, c, 3, padding=1)
        self.pool0 = L.MaxPool2d(2)
        self.scale = ChannelGain(c)
        self.conv1 = L.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(c)
        self.bn2 = L.BatchNorm2d(c)
        self.pool1 = L.AvgPool2d(3, stride=2, padding=1)
        self.gap = L.GlobalAvgPool2d()
        self.fc = L.Linear(c, 3)

    def forward(self, x):
        h = self.scale(self.pool0(F.relu(self.conv0(x))))
        y = self.bn2(self.bn1(self.conv1(h)) + h)
        return self.fc(self.gap(F.relu(self.pool1(y))))


def tiny_res(xp, seed: int):
    rng = np.random.default_rng(seed)
    net = TinyRes()
    net.scale.weight.data = xp.asarray(net.scale.weight.data)
    net = set_random_masks(net, rng, 0.7, kernel_level=False, bias_scale=0.5)
    randomize_batch_norms(net, rng, xp)
    kill(net.conv0, xp, [1])  # a constant channel: ChannelGain scales its static value
    m = to_numpy(net.conv0.mask).copy()
    m[:, 1] = 0  # input map 1 unread: gathered away
    net.conv0.set_mask(xp.asarray(m))
    return net.eval(), rng


def test_user_layer_in_a_residual_model_compacts_saves_and_loads(xp, backend_name, tmp_path):
    import warnings

    from minievo.evolution.environment import TargetRetention
    from minievo.evolution.synthesis import synthesize_offspring

    net, rng = tiny_res(xp, seed=7)
    x = xp.asarray(rng.standard_normal((5, 2, 10, 10)).astype(np.float32))
    for generation in range(3):
        cm = sparse.compact(net, (2, 10, 10))
        assert_close(cm(x), dense_forward(net, x))
        kinds = [type(s) for s in cm.steps]
        assert kinds.count(Affine) == 1 and kinds.count(LayerStep) == 1
        assert kinds.count(AvgPool) == 1 and Gather in kinds
        user = next(s for s in cm.steps if isinstance(s, LayerStep)).layer
        assert type(user) is ChannelGain and 0 < user.channels <= 5  # channel 1: constant
        if generation == 0:
            assert user.channels == 5
            np.testing.assert_array_equal(to_numpy(user.weight.data),
                                          to_numpy(net.scale.weight.data)[[0, 2, 3, 4, 5]])
        path = tmp_path / f"tiny{generation}.npz"
        cm.save(path)
        loaded = sparse.load(path, backend_name)
        np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(cm(x)))
        assert [type(s) for s in loaded.steps] == kinds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # retention out of reach: fine
            masks = synthesize_offspring(net, TargetRetention(0.8), rng)  # the next generation
        for (_, layer), mask in zip(prunable_layers(net), masks):
            layer.set_mask(mask)


class ForgetfulGain(ChannelGain):
    """Its layer_config() forgets the channel count: a file could not rebuild it."""

    def select_channels(self, index):
        out = ForgetfulGain(len(index))
        out.weight.data = self.weight.data[np.asarray(index)].copy()
        return out

    def layer_config(self):
        return {}


def test_a_user_layer_its_config_cannot_rebuild_is_refused_when_saving(tmp_path):
    net, rng = tiny_res(np, seed=9)
    net.scale = ForgetfulGain(6)
    cm = sparse.compact(net, (2, 10, 10))  # it runs: only storing it needs the config
    x = rng.standard_normal((2, 2, 10, 10)).astype(np.float32)
    assert_close(cm(x), dense_forward(net, x))
    with pytest.raises(TypeError, match=r"ForgetfulGain\(\*\*layer_config\(\)\).*rebuild"):
        cm.save(tmp_path / "forgetful.npz")
    assert not (tmp_path / "forgetful.npz").exists()


def test_non_channelwise_unknown_layer_is_refused():
    class MixChannels(L.Module):
        channelwise = False

        def forward(self, x):
            return x * 2.0

    class MixNet(L.Module):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2d(1, 2, 3, padding=1)
            self.mix = MixChannels()

        def forward(self, x):
            h = self.conv(x)
            return self.mix(h) + h

    with pytest.raises(TypeError, match=r"layer mix \(MixChannels\).*select_channels"):
        sparse.compact(MixNet(), (1, 5, 5))


def test_graph_models_need_an_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        sparse.compact(models.resnet8())


# ----- corrupted graph files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    net, _ = tiny_res(np, seed=8)
    cm = sparse.compact(net, (2, 10, 10))
    path = tmp_path_factory.mktemp("graph") / "tiny.npz"
    cm.save(path)
    return path


def _edit(path: Path, edit) -> None:
    arrays, meta = checkpoint.load(path)
    edit(arrays, meta)
    checkpoint.save(path, arrays, meta)


def _step(op):
    return lambda m: next(s for s in m["steps"] if s["op"] == op)


def _meta(fn):
    return lambda a, m: fn(m)


def _array(suffix, fn):
    def edit(a, m):
        key = next(k for k in a if k.endswith(suffix))
        a[key] = fn(a[key])
    return edit


GRAPH_TAMPERS = [
    (_meta(lambda m: m["steps"][3].__setitem__("inputs", [99])), "input = 99"),
    (_meta(lambda m: m["steps"][3].__setitem__("inputs", [-2])), "input = -2"),
    (_meta(lambda m: _step("add")(m).__setitem__("inputs", [])), "inputs"),
    (_meta(lambda m: m["steps"][3].__setitem__("inputs", [1, 2])), "inputs"),
    (_meta(lambda m: m["steps"].append({"op": "teleport", "inputs": [0]})), "teleport"),
    (_meta(lambda m: _step("layer")(m).__setitem__("type", "NoSuchLayer")),
     "unknown layer type 'NoSuchLayer'"),
    (_meta(lambda m: _step("layer")(m).__setitem__("type", "Conv2d")), "not a channelwise"),
    (_meta(lambda m: _step("layer")(m)["config"].__setitem__("channels", 2**40)), "config"),
    (_meta(lambda m: _step("layer")(m)["config"].__setitem__("channels", 3)), "cannot rebuild"),
    (_meta(lambda m: _step("layer")(m).__setitem__("config", {"channels": [[[[[1]]]]]})),
     "nested"),
    (_array(".state.weight", lambda a: np.full_like(a, np.nan)), "NaN"),
    (lambda a, m: a.pop(next(k for k in a if ".state." in k)), "cannot rebuild"),
    (_array(".src0", lambda a: a + 1000), "src0"),
    (_array(".dst1", lambda a: a - 100), "dst1"),
    (_array(".src1", lambda a: a.astype(np.float32)), "integer array"),
    (_meta(lambda m: _step("add")(m).__setitem__("units", 2**40)), "units"),
    (_meta(lambda m: _step("add")(m).__setitem__("units", _step("add")(m)["units"] + 1)),
     "come from no input"),
    (_array(".shift", lambda a: a[:-1]), "scale and shift"),
    (_meta(lambda m: _step("avgpool")(m).__setitem__("padding", 5)), "padding"),
    (_meta(lambda m: _step("avgpool")(m).__setitem__("kernel_size", 2**20)), "does not fit"),
    (_array(".index", lambda a: a + 10), "indices outside"),
    (_meta(lambda m: m.__setitem__("input_shape", [2**20, 2**20, 4])), "values per sample"),
    (_meta(lambda m: m.__setitem__("input_shape", [2, 10])), "input_shape"),
    (_array("source0.kept_out", lambda a: a + 100), "kept_out"),
    (_meta(lambda m: m["sources"][0].__setitem__("name", 7)), "name"),
    (_meta(lambda m: m.__setitem__("version", 3)), "newer"),
    (lambda a, m: a.pop(next(k for k in a if k.endswith(".dst0"))), "missing array"),
]


@pytest.mark.parametrize("tamper,needle", GRAPH_TAMPERS)
def test_corrupted_graph_files_are_refused_in_one_line(graph_file, tmp_path, tamper, needle):
    path = tmp_path / "tiny.npz"
    shutil.copy(graph_file, path)
    _edit(path, tamper)
    with pytest.raises(CheckpointError) as info:
        sparse.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and needle in message, message


def test_the_untampered_graph_file_loads(graph_file):
    cm = sparse.load(graph_file)
    assert not cm.is_chain and any(isinstance(s, LayerStep) for s in cm.steps)
