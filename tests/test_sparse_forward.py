"""Compact layers and models compute what the masked dense layers compute (both backends)."""

from __future__ import annotations

import numpy as np
import pytest

from minievo import layers as L
from minievo import models, sparse
from minievo.autograd import Tensor, no_grad
from minievo.backend import to_numpy
from minievo.kernels import native
from minievo.sparse import cpu
from minievo.sparse.synthetic import random_mask, set_random_masks

DENSITIES = [0.01, 0.05, 0.1, 0.2, 0.5, 1.0]

#: The CPU paths of the compact layers. The native one needs a C compiler; where there is one,
#: a kernel that fails to build fails these tests (it does not skip).
NEEDS_CC = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")
METHODS = [pytest.param("native", marks=NEEDS_CC), "csr", "dense"]


@pytest.fixture(autouse=True)
def _dense_reference(dense_layers):
    """The masked dense models these tests compare against run their dense path."""



def assert_close(actual, expected, rtol=1e-5):
    """Equal to ``rtol`` relative to the largest magnitude of the expected output."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape
    scale = max(1e-6, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def dense_forward(model, x):
    with no_grad():
        return model(Tensor(x)).data


# ----- single layers -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("density", DENSITIES)
def test_compact_conv_equals_masked_conv(xp, backend_name, density, method):
    rng = np.random.default_rng(int(density * 1000))
    conv = set_random_masks(L.Sequential(L.Conv2d(16, 24, 5)), rng, density)[0]
    x = xp.asarray(rng.standard_normal((7, 16, 12, 12)).astype(np.float32))
    cc = sparse.CompactConv2d.from_dense(conv.weight.data, conv.bias.data, conv.mask,
                                         method=method).to(backend_name)
    assert_close(cc(x), dense_forward(conv, x))


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (2, 2), (3, 1)])
@pytest.mark.parametrize("method", METHODS)
def test_compact_conv_stride_and_padding(xp, backend_name, stride, padding, method):
    rng = np.random.default_rng(stride * 10 + padding)
    conv = set_random_masks(L.Sequential(L.Conv2d(5, 7, 3, stride=stride, padding=padding)), rng,
                            0.4, kernel_level=False)[0]
    x = xp.asarray(rng.standard_normal((3, 5, 11, 9)).astype(np.float32))
    cc = sparse.CompactConv2d.from_dense(conv.weight.data, conv.bias.data, conv.mask, stride,
                                         padding, method=method).to(backend_name)
    assert_close(cc(x), dense_forward(conv, x))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("density", DENSITIES)
def test_compact_linear_equals_masked_linear(xp, backend_name, density, method):
    rng = np.random.default_rng(int(density * 1000) + 1)
    lin = set_random_masks(L.Sequential(L.Linear(300, 70)), rng, density)[0]
    x = xp.asarray(rng.standard_normal((33, 300)).astype(np.float32))
    cl = sparse.CompactLinear.from_dense(lin.weight.data, lin.bias.data, lin.mask,
                                         method=method).to(backend_name)
    assert_close(cl(x), dense_forward(lin, x))


def test_layer_without_bias(xp, backend_name):
    rng = np.random.default_rng(2)
    conv = L.Conv2d(3, 4, 3, bias=False)
    conv.set_mask(xp.asarray(random_mask(rng, conv.weight.shape, 0.5, True)))
    x = xp.asarray(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    cc = sparse.CompactConv2d.from_dense(conv.weight.data, None, conv.mask).to(backend_name)
    assert_close(cc(x), dense_forward(conv, x))


def test_cpu_threads_and_chunks_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(3)
    conv = set_random_masks(L.Sequential(L.Conv2d(6, 9, 3, padding=1)), rng, 0.3)[0]
    x = rng.standard_normal((37, 6, 10, 10)).astype(np.float32)
    ref = dense_forward(conv, x)
    original_threads = cpu.get_num_threads()
    # chunks of 1 image, of 5 (the last one ragged), and the whole batch
    for threads, columns, floats in [(1, 1, 1), (2, 500, 3000), (3, 1 << 20, 1 << 24)]:
        monkeypatch.setattr(cpu, "CSR_CHUNK_COLUMNS", columns)
        monkeypatch.setattr(cpu, "CHUNK_FLOATS", floats)
        monkeypatch.setattr(cpu, "MIN_CHUNK_IMAGES", 1)
        sparse.set_num_threads(threads)
        try:
            for method in ("native", "csr", "dense") if native.available() else ("csr",
                                                                                   "dense"):
                cc = sparse.CompactConv2d.from_dense(conv.weight.data, conv.bias.data,
                                                     conv.mask, padding=1, method=method)
                assert_close(cc(x), ref)
        finally:
            sparse.set_num_threads(original_threads)


def test_auto_method_follows_density():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((20, 30)).astype(np.float32)
    sparse_layer = sparse.CompactLinear.from_dense(w, None, random_mask(rng, w.shape, 0.05, 0))
    dense_layer = sparse.CompactLinear.from_dense(w, None, np.ones_like(w))
    want = "native" if native.available() else "csr"
    assert sparse_layer.method == want and dense_layer.method == "dense"


def test_cost_models_choose_by_density():
    """LeNet-5 conv2 (20 -> 50 maps, 5x5) and fc1 (800 -> 500), with and without the native
    kernel: sparse layers go to a sparse path, dense ones to BLAS."""
    for allow, sparse_method in [(True, "native"), (False, "csr")]:
        for density, want in [(0.02, sparse_method), (0.1, sparse_method), (1.0, "dense")]:
            synapses = int(density * 25_000)
            assert cpu.choose_conv_method(synapses, 50, 20, 5, 5, allow_native=allow) == want
            assert cpu.choose_method(int(density * 400_000), 400_000, allow) == want
    assert cpu.choose_method(0, 0) == "dense"


# ----- whole models --------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_level", [True, False], ids=["kernel-masks", "synapse-masks"])
@pytest.mark.parametrize("density", DENSITIES)
def test_lenet5_compact_equals_masked_dense(xp, density, kernel_level):
    rng = np.random.default_rng(int(density * 100) + kernel_level)
    net = set_random_masks(models.lenet5(), rng, density, kernel_level)
    x = xp.asarray(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
    cm = sparse.compact(net)
    assert_close(cm(x), dense_forward(net, x))


@pytest.mark.parametrize("method", METHODS)
def test_lenet5_forced_methods(xp, method):
    rng = np.random.default_rng(5)
    net = set_random_masks(models.lenet5(), rng, 0.3)
    x = xp.asarray(rng.standard_normal((9, 1, 28, 28)).astype(np.float32))
    cm = sparse.compact(net, method=method)
    assert all(layer.method == method for layer in cm.compact_layers)
    assert_close(cm(x), dense_forward(net, x))


def test_dead_filter_is_a_folded_constant(xp):
    """A conv1 filter with no live synapse outputs its bias everywhere; conv2 reads it."""
    rng = np.random.default_rng(6)
    net = set_random_masks(models.lenet5(), rng, 1.0, bias_scale=1.0)
    m0 = to_numpy(net[0].mask).copy()
    m0[[3, 7, 11]] = 0  # three dead filters in conv1, their biases are non-zero
    net[0].set_mask(xp.asarray(m0))
    m5 = to_numpy(net[5].mask).copy()
    m5[[0, 10, 499]] = 0  # three dead neurons in fc1 (ReLU of a constant)
    net[5].set_mask(xp.asarray(m5))
    x = xp.asarray(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))
    cm = sparse.compact(net)
    conv1, conv2, fc1 = cm.compact_layers[:3]
    assert conv1.out_channels == 17 and conv2.in_channels == 17
    assert fc1.out_features == 497
    assert_close(cm(x), dense_forward(net, x))


def test_padded_convs_fold_constants_into_a_bias_map(xp):
    """With padding, a constant input map contributes differently at the border."""
    rng = np.random.default_rng(7)
    net = L.Sequential(L.Conv2d(3, 8, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                       L.Conv2d(8, 6, 3, padding=1), L.ReLU(), L.Flatten(), L.Linear(96, 5))
    set_random_masks(net, rng, 1.0, bias_scale=1.0)
    m0 = to_numpy(net[0].mask).copy()
    m0[[1, 4]] = 0
    net[0].set_mask(xp.asarray(m0))
    net[0].bias.data[1] = 0.5  # positive: the constant survives the ReLU
    x = xp.asarray(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    cm = sparse.compact(net)
    assert cm.compact_layers[1].bias_map is not None
    assert_close(cm(x), dense_forward(net, x))


def test_unused_input_maps_and_outputs(xp):
    """Input maps nobody reads are gathered away; a constant model output is filled in."""
    rng = np.random.default_rng(8)
    net = set_random_masks(models.lenet300_100(), rng, 0.5)
    m1 = to_numpy(net[1].mask).copy()
    m1[:, :200] = 0  # the first 200 pixels are never read
    net[1].set_mask(xp.asarray(m1))
    m5 = to_numpy(net[5].mask).copy()
    m5[[2, 6]] = 0  # two classes are constant
    net[5].set_mask(xp.asarray(m5))
    x = xp.asarray(rng.standard_normal((6, 1, 28, 28)).astype(np.float32))
    cm = sparse.compact(net)
    assert cm.out_index is not None and cm.out_index.size == 8
    assert cm.compact_layers[0].in_features == 584
    assert_close(cm(x), dense_forward(net, x))


def test_fully_dead_model_is_constant(xp):
    rng = np.random.default_rng(9)
    net = set_random_masks(models.lenet5(), rng, 1.0)
    net[2].set_mask(xp.zeros(net[2].weight.shape, dtype=xp.float32))
    x = xp.asarray(rng.standard_normal((5, 1, 28, 28)).astype(np.float32))
    cm = sparse.compact(net)
    assert cm.compact_layers == []
    out = cm(x)
    assert_close(out, dense_forward(net, x))
    assert float(xp.abs(out - out[:1]).max()) == 0.0


def test_cifar_net_with_dropout(xp):
    rng = np.random.default_rng(10)
    net = set_random_masks(models.cifar_net(dropout=0.5), rng, 0.2)
    x = xp.asarray(rng.standard_normal((3, 3, 32, 32)).astype(np.float32))
    assert_close(sparse.compact(net)(x), dense_forward(net, x))


def test_tensor_input_and_predict(xp):
    rng = np.random.default_rng(11)
    net = set_random_masks(models.lenet5(), rng, 0.3)
    x = xp.asarray(rng.standard_normal((12, 1, 28, 28)).astype(np.float32))
    cm = sparse.compact(net)
    assert_close(cm(Tensor(x)), dense_forward(net, x))
    pred = cm.predict(x, batch_size=5)
    np.testing.assert_array_equal(to_numpy(pred), to_numpy(dense_forward(net, x)).argmax(1))


def test_evolved_lenet5_compact_equals_masked_dense(xp):
    """Masks from repeated evolutionary synthesis (docs/method.md#sampling): whole clusters
    vanish, filters and neurons die and leave constants behind."""
    import warnings

    from minievo.evolution.environment import TargetRetention
    from minievo.evolution.synthesis import synthesize_offspring
    from minievo.layers import prunable_layers

    rng = np.random.default_rng(12)
    net = set_random_masks(models.lenet5(), rng, 1.0, bias_scale=1.0)
    x = xp.asarray(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
    efficiencies = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # retention out of reach: fine here
        for _ in range(12):
            masks = synthesize_offspring(net, TargetRetention(0.6), rng, synapse_quantile=0.5,
                                         cluster_quantile=0.5, scope="network")
            for (_, layer), mask in zip(prunable_layers(net), masks):
                layer.set_mask(mask)
            cm = sparse.compact(net)
            assert_close(cm(x), dense_forward(net, x))
            efficiencies.append(cm.summary().synaptic_efficiency)
    assert efficiencies[-1] > 50  # the lineage got really sparse


def test_input_is_never_modified(xp):
    rng = np.random.default_rng(13)
    net = set_random_masks(L.Sequential(L.ReLU(), L.Flatten(), L.Linear(12, 3)), rng, 0.5)
    x = xp.asarray(rng.standard_normal((1, 3, 2, 2)).astype(np.float32))
    before = to_numpy(x).copy()
    cm = sparse.compact(net, input_shape=(3, 2, 2))
    assert_close(cm(x), dense_forward(net, x))
    np.testing.assert_array_equal(to_numpy(x), before)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pool", [(2, 2), (3, 2), (2, 1)])
def test_conv_with_fused_pooling(xp, method, pool):
    """Conv followed by MaxPool runs fused on the CPU, with a plain bias or a bias map."""
    rng = np.random.default_rng(14)
    net = L.Sequential(L.Conv2d(3, 5, 3, padding=1), L.MaxPool2d(*pool),
                       L.Conv2d(5, 4, 3, padding=1), L.MaxPool2d(*pool), L.Flatten())
    set_random_masks(net, rng, 0.6, bias_scale=1.0)
    m0 = to_numpy(net[0].mask).copy()
    m0[2] = 0  # a constant map: the second conv gets a per-pixel bias map
    net[0].set_mask(xp.asarray(m0))
    x = xp.asarray(rng.standard_normal((6, 3, 9, 9)).astype(np.float32))
    cm = sparse.compact(net, input_shape=(3, 9, 9), method=method)
    assert cm.compact_layers[1].bias_map is not None
    assert_close(cm(x), dense_forward(net, x))
