"""Training sparse masked layers through the native kernel (minievo.accel.sparse_train).

The sparse path must give the reference path's loss and gradients (float32 rounding aside; the
reference's weight gradient is masked by the optimiser, the sparse one is 0 there already),
keep masked weights at exactly 0 through training, and step aside wherever it does not apply.
"""

from __future__ import annotations

import numpy as np
import pytest

import minievo.functions as F
from minievo import accel, models
from minievo import layers as L
from minievo.accel import sparse_train
from minievo.autograd import Tensor
from minievo.kernels import native
from minievo.optim import SGD
from minievo.sparse.synthetic import set_random_masks
from minievo.testing import gradient_check

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


@pytest.fixture(autouse=True)
def _restore_mode():
    yield
    accel.disable()
    sparse_train.set_mode("auto")


def use(mode: str) -> None:
    """'reference': the layers' reference ops; else the accelerator in sparse mode ``mode``."""
    if mode == "reference":
        accel.disable()
    else:
        accel.enable()
        sparse_train.set_mode(mode)


def loss_and_grads(net, x, t, mode):
    """Loss, input gradient and parameter gradients of one forward/backward in ``mode``."""
    use(mode)
    for p in net.parameters():
        p.grad = None
    xt = Tensor(x, requires_grad=True)
    loss = F.softmax_cross_entropy(net(xt), t)
    loss.backward()
    return float(loss.data), xt.grad.copy(), [p.grad.copy() for p in net.parameters()]


def assert_same(a, b, rtol=2e-5):
    scale = max(1e-12, float(np.abs(a).max()))
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale)


def paths(net) -> list[bool]:
    """Which prunable layers took the sparse path at their last forward."""
    from minievo.layers import prunable_layers

    return [sparse_train.took_sparse_path(layer.weight) for _, layer in prunable_layers(net)]


@pytest.mark.parametrize("n", [1, 63, 64, 130])
@pytest.mark.parametrize("density", [0.02, 0.1, 0.5])
def test_lenet5_gradients_match_the_dense_path(n, density):
    rng = np.random.default_rng(int(density * 100) + n)
    net = set_random_masks(models.lenet5(), rng, density, kernel_level=False,
                           weight_scale=0.1).train()
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, n)
    loss0, gx0, g0 = loss_and_grads(net, x, t, "reference")
    loss1, gx1, g1 = loss_and_grads(net, x, t, "on")
    assert all(paths(net))
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    assert_same(gx0, gx1)
    for a, b, p in zip(g0, g1, net.parameters()):
        if p.mask is not None:
            assert np.all(b[p.mask == 0] == 0)  # masked entries: exactly 0 on the sparse path
            a = a * p.mask  # what the optimiser makes of the reference gradient
        assert_same(a, b)


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_padded_convolutions_and_no_bias(padding, bias):
    rng = np.random.default_rng(padding + 10 * bias)
    net = L.Sequential(L.Conv2d(3, 6, 3, padding=padding, bias=bias), L.ReLU(),
                       L.Conv2d(6, 4, 3, padding=padding, bias=bias), L.Flatten())
    set_random_masks(net, rng, 0.3, kernel_level=False).train()
    x = rng.standard_normal((70, 3, 7, 7)).astype(np.float32)
    feats = (7 + 4 * padding - 4) ** 2 * 4
    t = rng.integers(0, feats, 70)
    loss0, gx0, g0 = loss_and_grads(net, x, t, "reference")
    loss1, gx1, g1 = loss_and_grads(net, x, t, "on")
    assert all(paths(net))
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    assert_same(gx0, gx1)
    for a, b, p in zip(g0, g1, net.parameters()):
        assert_same(a if p.mask is None else a * p.mask, b)


def test_training_keeps_masked_weights_zero_and_follows_the_dense_path():
    """Five SGD steps (momentum, weight decay) in each mode end at the same weights."""
    results = {}
    for mode in ("reference", "off", "on"):
        rng = np.random.default_rng(0)
        net = set_random_masks(models.lenet5(), rng, 0.1, weight_scale=0.1).train()
        opt = SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        use(mode)
        for _ in range(5):
            x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
            opt.zero_grad()
            F.softmax_cross_entropy(net(Tensor(x)), rng.integers(0, 10, 32)).backward()
            opt.step()
        for p in net.parameters():
            if getattr(p, "mask", None) is not None:
                assert np.all(p.data[p.mask == 0] == 0)
        results[mode] = [p.data.copy() for p in net.parameters()]
    for mode in ("off", "on"):
        for a, b in zip(results["reference"], results[mode]):
            assert_same(a, b, rtol=1e-4)


def test_auto_follows_the_cost_model():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))
    use("auto")
    dense = set_random_masks(models.lenet5(), rng, 1.0)
    dense(x)
    assert not any(paths(dense))
    sparse = set_random_masks(models.lenet5(), rng, 0.005)
    sparse(x)
    assert all(paths(sparse))
    sparse_train.set_mode("off")
    assert sparse_train.plan_for(sparse[2].weight, np.zeros((8, 20, 12, 12), np.float32)) is None


def test_where_the_sparse_path_does_not_apply():
    rng = np.random.default_rng(2)
    sparse_train.set_mode("on")
    def plan(layer, x):
        return sparse_train.plan_for(layer.weight, x, layer.stride, layer.padding)

    strided = set_random_masks(L.Sequential(L.Conv2d(2, 3, 3, stride=2)), rng, 0.2)[0]
    assert plan(strided, np.zeros((1, 2, 9, 9), np.float32)) is None
    wide_pad = set_random_masks(L.Sequential(L.Conv2d(2, 3, 3, padding=3)), rng, 0.2)[0]
    assert plan(wide_pad, np.zeros((1, 2, 9, 9), np.float32)) is None
    full = L.Conv2d(20, 50, 5)  # an all-ones mask: BLAS, unless the mode forces the kernel
    assert plan(full, np.zeros((1, 20, 12, 12), np.float32)) is not None
    sparse_train.set_mode("auto")
    assert plan(full, np.zeros((1, 20, 12, 12), np.float32)) is None
    sparse_train.set_mode("on")
    conv = set_random_masks(L.Sequential(L.Conv2d(2, 3, 3)), rng, 0.2)[0]
    first = plan(conv, np.zeros((1, 2, 9, 9), np.float32))
    assert first is not None and plan(conv, np.zeros((2, 2, 9, 9), np.float32)) is first
    assert plan(conv, np.zeros((1, 2, 9, 9), np.float64)) is None
    conv.set_mask(conv.mask.copy())  # a new mask: a new plan
    second = plan(conv, np.zeros((1, 2, 9, 9), np.float32))
    assert second is not None and second is not first


def test_float64_gradient_check_takes_the_dense_path():
    """Gradient checks run in float64, which the kernel does not take: they check the dense
    path, and the tests above tie the sparse path to it."""
    rng = np.random.default_rng(3)
    use("on")
    conv = set_random_masks(L.Sequential(L.Conv2d(2, 3, 3)), rng, 0.3)[0]
    conv.weight.data = conv.weight.data.astype(np.float64)
    conv.bias.data = conv.bias.data.astype(np.float64)
    conv.set_mask(conv.mask.astype(np.float64))
    x = rng.standard_normal((2, 2, 5, 5))
    assert sparse_train.plan_for(conv.weight, x) is None
    gradient_check(lambda a: conv(a), [x])


def test_without_the_kernel_training_stays_dense(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIEVO_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-here")
    native.reset()
    try:
        rng = np.random.default_rng(4)
        use("on")
        net = set_random_masks(models.lenet5(), rng, 0.05).train()
        x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
        F.softmax_cross_entropy(net(Tensor(x)), rng.integers(0, 10, 4)).backward()
        assert not any(paths(net))
    finally:
        native.reset()


def test_modes_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="auto, on, off"):
        sparse_train.set_mode("fast")
    monkeypatch.setenv("MINIEVO_SPARSE_TRAINING", "sometimes")
    monkeypatch.setattr(sparse_train, "_mode", None)
    with pytest.raises(ValueError, match="MINIEVO_SPARSE_TRAINING must be one of"):
        sparse_train.get_mode()


@pytest.mark.parametrize("n", [64, 200])
def test_threads_split_maps_or_batch_with_identical_results(n):
    """A batch of one tile is shared out by groups of maps, a longer one by slices. Each float32
    sum runs in the same order as on one thread; only the float64 partial weight gradients of
    batch slices are added in another order, below float32's resolution."""
    from minievo import sparse

    rng = np.random.default_rng(5)
    net = set_random_masks(models.lenet5(), rng, 0.1, kernel_level=False).train()
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, n)
    old = sparse.get_num_threads()
    try:
        sparse.set_num_threads(1)
        one = loss_and_grads(net, x, t, "on")
        sparse.set_num_threads(3)
        three = loss_and_grads(net, x, t, "on")
    finally:
        sparse.set_num_threads(old)
    assert one[0] == three[0]
    np.testing.assert_array_equal(one[1], three[1])
    for a, b in zip(one[2], three[2]):
        if n <= 64:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
