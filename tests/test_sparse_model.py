"""expand(compact(m)) == m, save / load, summary counts, and errors for bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

from minievo import backend, models, sparse
from minievo import layers as L
from minievo.autograd import Tensor, no_grad
from minievo.backend import BackendError, to_numpy
from minievo.checkpoint import CheckpointError
from minievo.sparse.synthetic import set_random_masks


@pytest.fixture(autouse=True)
def _dense_reference(dense_layers):
    """The masked dense models these tests compare against run their dense path."""



def assert_close(actual, expected, rtol=1e-5):
    actual, expected = to_numpy(actual), to_numpy(expected)
    scale = max(1e-6, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def dense_forward(model, x):
    with no_grad():
        return model(Tensor(x)).data


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    assert [repr(x) for x in a.layers] == [repr(x) for x in b.layers]


def _dead_lenet(xp, rng):
    net = set_random_masks(models.lenet5(), rng, 0.3, bias_scale=1.0)
    m0 = to_numpy(net[0].mask).copy()
    m0[[0, 5]] = 0
    net[0].set_mask(xp.asarray(m0))
    m7 = to_numpy(net[7].mask).copy()
    m7[4] = 0
    net[7].set_mask(xp.asarray(m7))
    return net


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 1.0])
def test_expand_compact_is_the_original(xp, backend_name, density):
    rng = np.random.default_rng(int(density * 100))
    net = set_random_masks(models.lenet5(), rng, density, kernel_level=False)
    back = sparse.expand(sparse.compact(net))
    assert_same_model(back, net)
    x = xp.asarray(rng.standard_normal((4, 1, 28, 28)).astype(np.float32))
    assert_close(dense_forward(back, x), dense_forward(net, x), rtol=1e-6)


def test_expand_keeps_dropped_structure(xp):
    rng = np.random.default_rng(1)
    net = _dead_lenet(xp, rng)
    cm = sparse.compact(net)
    assert sum(s.residual_index.size for s in cm.sources) > 0  # something was not executed
    assert_same_model(sparse.expand(cm), net)


def test_expand_other_architectures(xp):
    rng = np.random.default_rng(2)
    for net in (models.lenet300_100(), models.cifar_net(dropout=0.25)):
        set_random_masks(net, rng, 0.2)
        assert_same_model(sparse.expand(sparse.compact(net)), net)


def test_save_load_roundtrip(xp, backend_name, tmp_path):
    rng = np.random.default_rng(3)
    net = _dead_lenet(xp, rng)
    cm = sparse.compact(net)
    path = tmp_path / "sub" / "lenet.npz"
    cm.save(path)
    assert sorted(os.listdir(path.parent)) == ["lenet.npz"]  # no temporary file left behind
    loaded = sparse.load(path, backend_name)
    x = xp.asarray(rng.standard_normal((6, 1, 28, 28)).astype(np.float32))
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(cm(x)))
    assert_same_model(sparse.expand(loaded), net)
    assert loaded.summary().as_dict() == cm.summary().as_dict()


def test_save_overwrites_atomically(tmp_path):
    rng = np.random.default_rng(4)
    a = sparse.compact(set_random_masks(models.lenet5(), rng, 0.2))
    b = sparse.compact(set_random_masks(models.lenet5(), rng, 0.6))
    path = tmp_path / "m.npz"
    sparse.save(a, path)
    sparse.save(b, path)
    assert os.listdir(tmp_path) == ["m.npz"]
    assert sparse.load(path).summary().synapses == b.summary().synapses


def test_save_load_constant_and_padded_models(tmp_path):
    rng = np.random.default_rng(5)
    net = L.Sequential(L.Conv2d(2, 4, 3, padding=1), L.ReLU(), L.Flatten(), L.Linear(64, 3))
    set_random_masks(net, rng, 1.0, bias_scale=1.0)
    m0 = net[0].mask.copy()
    m0[1] = 0
    net[0].set_mask(m0)
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    for model in (net, set_random_masks(models.lenet5(), rng, 0.0)):
        cm = sparse.compact(model, input_shape=x.shape[1:] if model is net else None)
        cm.save(tmp_path / "c.npz")
        loaded = sparse.load(tmp_path / "c.npz")
        xin = x if model is net else rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
        np.testing.assert_array_equal(loaded(xin), cm(xin))
        assert_same_model(sparse.expand(loaded), model)


def test_load_rejects_bad_files(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        sparse.load(missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        sparse.load(garbage)
    from minievo import checkpoint

    other = tmp_path / "other.npz"
    checkpoint.save(other, {"w": np.zeros(3)}, {"format": "something else"})
    with pytest.raises(CheckpointError, match="not a compact model"):
        sparse.load(other)
    cm = sparse.compact(set_random_masks(models.lenet5(), np.random.default_rng(0), 0.5))
    good = tmp_path / "good.npz"
    cm.save(good)
    arrays, meta = checkpoint.load(good)
    del arrays["step0.indices"]
    checkpoint.save(tmp_path / "cut.npz", arrays, meta)
    with pytest.raises(CheckpointError, match="missing array 'step0.indices'"):
        sparse.load(tmp_path / "cut.npz")
    meta["version"] = 99
    checkpoint.save(tmp_path / "new.npz", arrays, meta)
    with pytest.raises(CheckpointError, match="newer"):
        sparse.load(tmp_path / "new.npz")


# ----- summary -------------------------------------------------------------------------------


def test_summary_of_the_dense_lenet5():
    s = sparse.compact(models.lenet5()).summary()
    # docs/method.md#experiment
    assert s.dense_synapses == s.synapses == s.effective_synapses == 430_500
    assert [r.kernels for r in s.layers] == [20, 1000, 500, 10]
    assert [r.clusters for r in s.layers] == [20, 50, 500, 10]
    assert s.macs_dense == s.macs_effective == 20 * 25 * 576 + 50 * 500 * 64 + 400_000 + 5000
    assert s.synaptic_efficiency == 1.0
    text = str(s)
    assert "430,500" in text and "synaptic efficiency 1.0x" in text


def test_summary_counts_sampled_and_effective():
    net = models.lenet5()
    m0 = np.zeros((20, 1, 5, 5), np.float32)
    m0[0, 0, 2, 2] = 1  # filter 0: one synapse
    m0[1] = 1  # filter 1: 25 synapses; filters 2..19 dead
    net[0].set_mask(m0)
    m2 = np.zeros((50, 20, 5, 5), np.float32)
    m2[0, 0] = 1  # reads the live filter 0: executed
    m2[0, 5, 0, :3] = 1  # reads dead filter 5: folded into the bias, not executed
    m2[3, 1, 1, 1] = 1  # output map 3: one synapse from live filter 1
    net[2].set_mask(m2)  # maps 0 and 3 are the only dynamic ones
    m5 = np.zeros((500, 800), np.float32)
    m5[7, 0:16] = 1  # neuron 7 reads map 0 (features 0..15)
    m5[8, 16:18] = 1  # neuron 8 reads conv2 map 1 (constant: map 1 has no synapse)
    m5[9, 48:50] = 1  # neuron 9 reads conv2 map 3, which makes conv1 filter 1 needed
    net[5].set_mask(m5)
    m7 = np.zeros((10, 500), np.float32)
    m7[:, 7] = 1
    m7[1, 9] = 1
    m7[2, 8] = 1  # neuron 8 is constant: folded into the bias
    m7[5, 100] = 1  # neuron 100 has no synapse: constant
    net[7].set_mask(m7)
    s = sparse.compact(net).summary()
    conv1, conv2, fc1, fc2 = s.layers
    assert (conv1.synapses, conv1.effective_synapses, conv1.kernels, conv1.clusters) == (
        26, 26, 2, 2)
    assert (conv2.synapses, conv2.effective_synapses) == (25 + 3 + 1, 25 + 1)
    assert (conv2.kernels, conv2.effective_kernels, conv2.clusters, conv2.effective_clusters) == (
        3, 2, 2, 2)
    assert (fc1.synapses, fc1.effective_synapses, fc1.clusters, fc1.effective_clusters) == (
        20, 18, 3, 2)
    assert (fc2.synapses, fc2.effective_synapses, fc2.clusters, fc2.effective_clusters) == (
        13, 11, 10, 10)
    assert conv1.macs_effective == 26 * 576 and conv2.macs_effective == 26 * 64
    assert s.macs_effective == 26 * 576 + 26 * 64 + 18 + 11
    assert s.synaptic_efficiency == pytest.approx(430_500 / (26 + 29 + 20 + 13))
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert_close(sparse.compact(net)(x), dense_forward(net, x))


# ----- bad input -----------------------------------------------------------------------------


def test_wrong_input_shape_and_dtype(xp):
    cm = sparse.compact(set_random_masks(models.lenet5(), np.random.default_rng(0), 0.3))
    with pytest.raises(ValueError, match=r"expects input \(N, 1, 28, 28\)"):
        cm(xp.zeros((2, 1, 32, 32), dtype=xp.float32))
    with pytest.raises(TypeError, match="float32.*float64"):
        cm(xp.zeros((2, 1, 28, 28), dtype=xp.float64))
    layer = cm.compact_layers[1]
    with pytest.raises(ValueError, match="CompactConv2d expects input"):
        layer(xp.zeros((2, layer.in_channels + 1, 12, 12), dtype=xp.float32))
    fc = cm.compact_layers[2]
    with pytest.raises(ValueError, match="CompactLinear expects input"):
        fc(xp.zeros((2, 3), dtype=xp.float32))


def test_unsupported_models_are_refused():
    class Odd(L.Module):
        channelwise = False  # an output channel reads other channels: no compact form

        def forward(self, x):
            return x * 2.0

    with pytest.raises(TypeError, match=r"layer 1 \(Odd\).*not channelwise"):
        sparse.compact(L.Sequential(L.Conv2d(1, 2, 3), Odd()), input_shape=(1, 5, 5))
    with pytest.raises(ValueError, match="input_shape"):
        sparse.compact(L.Sequential(L.Conv2d(1, 2, 3), L.ReLU()))
    with pytest.raises(ValueError, match="method"):
        sparse.compact(models.lenet5(), method="fast")
    cm = sparse.compact(L.Sequential(L.Conv2d(1, 2, 3), L.ReLU()), input_shape=(1, 5, 5))
    assert cm(np.zeros((1, 1, 5, 5), np.float32)).shape == (1, 2, 3, 3)


def test_bad_compact_layer_arrays():
    with pytest.raises(ValueError, match="indices must lie in"):
        sparse.CompactConv2d([0, 1], [3], np.zeros((1, 3, 3)), [0.0], in_channels=2)
    with pytest.raises(ValueError, match="never decrease"):
        sparse.CompactLinear([0, 2, 1], [0, 1], [1.0, 2.0], [0.0, 0.0], in_features=4)
    with pytest.raises(ValueError, match="strictly increasing"):
        sparse.CompactLinear([0, 2], [1, 1], [1.0, 2.0], [0.0], in_features=4)
    with pytest.raises(ValueError, match="bias must have shape"):
        sparse.CompactLinear([0, 1], [1], [1.0], [0.0, 1.0], in_features=4)
    with pytest.raises(ValueError, match="mask the same shape"):
        sparse.CompactConv2d.from_dense(np.zeros((2, 1, 3, 3)), None, np.zeros((2, 1, 3, 2)))


def test_mixing_backends_is_refused():
    cm = sparse.compact(set_random_masks(models.lenet5(), np.random.default_rng(0), 0.3))

    class FakeCupyArray:  # looks like a CuPy array to minievo.backend.is_cupy_array
        __module__ = "cupy._core.core"
        dtype = np.dtype(np.float32)
        shape = (1, 1, 28, 28)
        ndim = 4

    with pytest.raises(BackendError, match="compact_model.to"):
        cm(FakeCupyArray())


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="no CuPy with a GPU")
def test_compact_model_moves_between_backends():
    import cupy as cp

    rng = np.random.default_rng(12)
    net = set_random_masks(models.lenet5().to("cupy"), rng, 0.2)
    cm = sparse.compact(net)
    assert cm.backend == "cupy"
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    on_gpu = to_numpy(cm(cp.asarray(x)))
    cm.to("numpy")
    assert_close(cm(x), on_gpu)
    with pytest.raises(BackendError, match="compact_model.to"):
        cm(cp.asarray(x))
