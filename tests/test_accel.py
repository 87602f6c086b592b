"""The accelerator's switch, its op table, and the CLI default (minievo.accel).

The fast ops themselves are tested against their references beside them: convolution and
max-pool in tests/test_functions.py and tests/test_gradients.py, sparse training in
tests/test_sparse_train.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import minievo.accel
import minievo.functions as F
from minievo import backend, layers, models
from minievo import checkpoint as ckpt
from minievo.accel import conv as accel_conv
from minievo.accel import pool as accel_pool
from minievo.accel import sparse_train
from minievo.autograd import Tensor
from minievo.cli import main
from minievo.sparse import cpu


def test_enable_disable_and_the_context_manager_swap_one_table():
    assert not minievo.accel.enabled() and layers.ops is layers.REFERENCE_OPS
    minievo.accel.enable()
    assert minievo.accel.enabled() and layers.ops is minievo.accel.OPS
    with minievo.accel.accelerated(False):
        assert layers.ops is layers.REFERENCE_OPS
        with minievo.accel.accelerated():
            assert minievo.accel.enabled()
        assert not minievo.accel.enabled()
    assert minievo.accel.enabled()  # restored on the way out
    minievo.accel.disable()
    assert layers.ops is layers.REFERENCE_OPS
    with pytest.raises(TypeError, match="Ops table"):
        layers.use_ops("accel")


def test_the_table_holds_the_accelerated_ops():
    table = minievo.accel.OPS
    assert table.conv2d is sparse_train.conv2d and table.linear is sparse_train.linear
    assert table.max_pool2d is accel_pool.max_pool2d
    ref = layers.REFERENCE_OPS
    assert (ref.conv2d, ref.linear, ref.max_pool2d) == (F.conv2d, F.linear, F.max_pool2d)


def test_a_dense_lenet5_gives_the_same_loss_and_gradients_on_both_paths():
    """The whole network, dense weights (no sparse kernel): accelerated conv and pool against
    the reference, float32, forward and backward."""
    rng = np.random.default_rng(0)
    net = models.lenet5()
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, 8)
    results = []
    for on in (False, True):
        with minievo.accel.accelerated(on):
            for p in net.parameters():
                p.grad = None
            xt = Tensor(x, requires_grad=True)
            loss = F.softmax_cross_entropy(net(xt), t)
            loss.backward()
            results.append((float(loss.data), xt.grad, [p.grad for p in net.parameters()]))
    (l0, gx0, g0), (l1, gx1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-5)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-4, atol=1e-6)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(np.abs(a).max()))


def test_accelerated_linear_without_a_sparse_plan_is_the_reference():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((4, 6)).astype(np.float32))
    w = layers.Linear(6, 3).weight  # all-ones mask: dense, no plan in mode "auto"
    y = sparse_train.linear(x, w)
    np.testing.assert_array_equal(y.data, F.linear(x, w).data)
    assert not sparse_train.took_sparse_path(w)


def test_accelerated_conv_rejects_what_the_reference_rejects():
    x = Tensor(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="input has 3 channels but the weight expects 2"):
        accel_conv.conv2d(x, Tensor(np.zeros((4, 2, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="output would be empty"):
        accel_conv.conv2d(x, Tensor(np.zeros((4, 3, 7, 7), np.float32)))
    with pytest.raises(ValueError, match="kernel_size <= 127"):
        accel_pool.max_pool2d(Tensor(np.zeros((1, 1, 130, 130), np.float32)), 128)


@pytest.mark.parametrize("in_place_kernel", [True, False], ids=["scipy_kernel", "fallback"])
def test_csr_accumulate_with_and_without_scipys_private_kernel(in_place_kernel):
    """y += A @ X through SciPy's private in-place kernel, or the public product when it is
    missing: the same sums either way (CI runs both)."""
    rng = np.random.default_rng(2)
    dense = rng.standard_normal((7, 9)).astype(np.float32) * (rng.random((7, 9)) < 0.3)
    v = rng.standard_normal((9, 5)).astype(np.float32)
    y0 = rng.standard_normal((7, 5)).astype(np.float32)
    y = y0.copy()
    cpu.accumulate(sp.csr_matrix(dense), v, y, in_place_kernel=in_place_kernel)
    np.testing.assert_allclose(y, y0 + dense @ v, rtol=1e-5, atol=1e-5)
    y = y0.copy()
    cpu.accumulate(dense, v, y, in_place_kernel=in_place_kernel)  # a dense matrix: BLAS
    np.testing.assert_allclose(y, y0 + dense @ v, rtol=1e-5, atol=1e-5)


TRAIN = ["train", "--model", "lenet300_100", "--dataset", "synthetic-digits", "--limit-train",
         "128", "--epochs", "1", "--no-progress"]


def test_the_cli_turns_the_accelerator_on_unless_told_not_to(tmp_path, capsys):
    weights = {}
    for flag in ((), ("--no-accel",)):
        out = tmp_path / ("ref" if flag else "accel")
        with backend.using_backend("numpy"):
            assert main([*TRAIN, *flag, "--out", str(out)]) == 0
        assert minievo.accel.enabled() is not bool(flag)
        arrays, _ = ckpt.load(out / "checkpoint.npz")
        weights[bool(flag)] = {k: v for k, v in arrays.items() if k.startswith("model/")}
        minievo.accel.disable()
    capsys.readouterr()
    for k, v in weights[False].items():
        np.testing.assert_allclose(weights[True][k], v, rtol=1e-4, atol=1e-5)
