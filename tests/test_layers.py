"""Layers: shape errors, masks, state dicts, moving between backends."""

from __future__ import annotations

import numpy as np
import pytest

import minievo.functions as F
from minievo import layers as L
from minievo.autograd import Tensor
from minievo.backend import BackendError, to_numpy
from minievo.testing import assert_allclose_backends


def test_linear_wrong_input_shape_names_expected_shape(xp):
    layer = L.Linear(4, 3)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 4\), got \(2, 5\)"):
        layer(Tensor(xp.zeros((2, 5), dtype=xp.float32)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        layer(Tensor(xp.zeros((2, 2, 2), dtype=xp.float32)))


def test_conv2d_wrong_input_shape_names_expected_shape(xp):
    layer = L.Conv2d(3, 2, 3)
    expected = r"expects input of shape \(N, 3, H, W\), got \(1, 1, 5, 5\)"
    with pytest.raises(ValueError, match=expected):
        layer(Tensor(xp.zeros((1, 1, 5, 5), dtype=xp.float32)))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        layer(Tensor(xp.zeros((3, 5, 5), dtype=xp.float32)))


def test_maxpool_wrong_input_shape(xp):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        L.MaxPool2d(2)(Tensor(xp.zeros((4, 4), dtype=xp.float32)))


def test_layer_shapes_and_dtypes(xp):
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)),
                          dtype=xp.float32))
    conv = L.Conv2d(3, 4, 3, padding=1)
    assert conv.weight.shape == (4, 3, 3, 3) and conv.bias.shape == (4,)
    assert conv.mask.shape == conv.weight.shape and conv.mask.dtype == conv.weight.dtype
    y = L.MaxPool2d(2)(L.ReLU()(conv(x)))
    assert y.shape == (2, 4, 4, 4) and y.dtype == np.float32
    z = L.Linear(64, 5)(L.Flatten()(y))
    assert z.shape == (2, 5) and z.dtype == np.float32


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_mask_is_stored_once_and_applied_by_the_optimiser(kind, xp):
    """The mask lives on the weight; set_mask zeroes the masked weights and the optimiser keeps
    them at zero, so the forward (which uses the weight as it is) is the masked product."""
    from minievo.optim import SGD

    rng = np.random.default_rng(0)
    if kind == "linear":
        layer = L.Linear(5, 4)
        x = Tensor(xp.asarray(rng.standard_normal((3, 5)), dtype=xp.float32))
    else:
        layer = L.Conv2d(2, 3, 3)
        x = Tensor(xp.asarray(rng.standard_normal((2, 2, 5, 5)), dtype=xp.float32))
    mask = (rng.random(layer.weight.shape) > 0.5).astype(np.float32)
    w0 = to_numpy(layer.weight.data).copy()
    layer.set_mask(xp.asarray(mask))
    assert layer.mask is layer.weight.mask  # one array, on the weight
    assert np.all(to_numpy(layer.weight.data)[mask == 0] == 0)  # set_mask zeroes them
    np.testing.assert_array_equal(to_numpy(layer.weight.data)[mask == 1], w0[mask == 1])
    opt = SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(2):
        opt.zero_grad()
        (layer(x) * layer(x)).sum().backward()
        opt.step()
    w = to_numpy(layer.weight.data)
    assert np.all(w[mask == 0] == 0) and np.all(w[mask == 1] != w0[mask == 1])
    w_eff = Tensor(xp.asarray(w * mask))
    want = F.linear(x, w_eff, layer.bias) if kind == "linear" else F.conv2d(x, w_eff, layer.bias)
    assert_allclose_backends(layer(x), want, rtol=1e-6, atol=1e-6)


def test_set_mask_checks_shape_and_binarises(xp):
    layer = L.Linear(3, 2)
    with pytest.raises(ValueError, match=r"mask shape \(3, 2\) does not match weight shape"):
        layer.set_mask(xp.ones((3, 2)))
    layer.set_mask(xp.asarray([[2.0, 0.0, -1.0], [0.0, 0.5, 0.0]]))
    assert_allclose_backends(layer.mask, [[1, 0, 1], [0, 1, 0]])
    assert layer.mask.dtype == layer.weight.dtype
    assert layer.weight.mask is layer.mask


def _net():
    return L.Sequential(L.Conv2d(1, 2, 3), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                        L.Linear(8, 3))


def test_state_dict_round_trip(xp):
    a, b = _net(), _net()
    rng = np.random.default_rng(0)
    a[0].set_mask(xp.asarray((rng.random((2, 1, 3, 3)) > 0.3).astype(np.float32)))
    state = a.state_dict()
    assert set(state) == {"0.weight", "0.bias", "0.mask", "4.weight", "4.bias", "4.mask"}
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b.load_state_dict(state)
    x = Tensor(xp.asarray(rng.standard_normal((2, 1, 6, 6)), dtype=xp.float32))
    assert_allclose_backends(a(x), b(x), rtol=0, atol=0)
    assert_allclose_backends(b[0].mask, a[0].mask)
    # state_dict returns copies: changing them does not change the model
    state["0.weight"][...] = 7
    assert not np.any(to_numpy(a[0].weight.data) == 7)


def test_load_state_dict_mismatch_errors(xp):
    net = _net()
    state = net.state_dict()
    missing = dict(state)
    del missing["4.bias"]
    with pytest.raises(KeyError, match="missing.*4.bias"):
        net.load_state_dict(missing)
    extra = dict(state, **{"9.weight": np.zeros(1)})
    with pytest.raises(KeyError, match="unexpected.*9.weight"):
        net.load_state_dict(extra)
    bad = dict(state, **{"4.weight": np.zeros((3, 9), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"'4.weight' has shape \(3, 9\), model expects \(3, 8\)"):
        net.load_state_dict(bad)


def test_named_parameters_and_modes(xp):
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert len(net.parameters()) == 4
    assert [n for n, _ in L.prunable_layers(net)] == ["0", "4"]
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_dropout_layer_respects_mode(xp):
    layer = L.Dropout(0.5, seed=0)
    x = Tensor(xp.ones((10, 10), dtype=xp.float32))
    assert np.any(to_numpy(layer(x).data) == 0)
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        L.Dropout(1.5)


def test_model_to_numpy(xp):
    net = _net()
    net(Tensor(xp.ones((1, 1, 6, 6), dtype=xp.float32))).sum().backward()
    assert net.to("numpy") is net
    for p in net.parameters():
        assert isinstance(p.data, np.ndarray) and p.grad is None
    for _, layer in L.prunable_layers(net):
        assert isinstance(layer.mask, np.ndarray) and layer.weight.mask is layer.mask
    y = net(Tensor(np.ones((1, 1, 6, 6), dtype=np.float32)))
    assert isinstance(y.data, np.ndarray)


def test_model_to_unknown_backend_raises():
    with pytest.raises(BackendError, match="valid backends are: numpy, cupy"):
        _net().to("tpu")


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="Sequential item 1 is int"):
        L.Sequential(L.ReLU(), 3)
