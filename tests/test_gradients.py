"""Numerical gradient checks for every op in minievo.functions, on every backend.

Each case is (fn, inputs): float inputs are checked, integer arrays (labels) are constants.
Inputs are tiny and float64, and kept away from kinks (relu at 0, ties in a max) so central
differences are valid.
"""

from __future__ import annotations

import numpy as np
import pytest

import minievo.functions as F
from minievo.accel import conv as accel_conv
from minievo.accel import pool as accel_pool
from minievo.autograd import Tensor
from minievo.backend import get_array_module
from minievo.testing import gradient_check


def _r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _pos(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


def _away_from_zero(*shape, seed=0):
    x = _r(*shape, seed=seed)
    return np.where(np.abs(x) < 0.1, 0.3, x)


def _distinct(*shape, seed=0):
    """Values with gaps of 0.05 (no ties within eps), in random order."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.05 - 1.0).reshape(shape)


def _batch_norm(bn, training):
    """bn with fixed running statistics on x's backend (arrays, not inputs: not checked)."""
    def fn(x, gamma, beta):
        xp = get_array_module(x.data)
        return bn(x, gamma, beta, xp.asarray([0.2, -0.1]), xp.asarray([0.5, 2.0]), training)
    return fn


def _dropout(x):
    # A fresh generator with the same seed on every call: the same mask each time.
    return F.dropout(x, 0.4, training=True, rng=np.random.default_rng(5))


CASES = {
    # element-wise binary ops, same shapes and broadcast shapes
    "add": (F.add, [_r(2, 3), _r(2, 3, seed=1)]),
    "add_broadcast": (F.add, [_r(2, 3, 4), _r(3, 1, seed=1)]),
    "sub": (F.sub, [_r(2, 3), _r(2, 3, seed=1)]),
    "sub_broadcast": (F.sub, [_r(4,), _r(3, 4, seed=1)]),
    "mul": (F.mul, [_r(2, 3), _r(2, 3, seed=1)]),
    "mul_broadcast": (F.mul, [_r(2, 1, 4), _r(3, 1, seed=1)]),
    "div": (F.div, [_r(2, 3), _pos(2, 3, seed=1)]),
    "div_broadcast": (F.div, [_r(2, 3), _pos(3, seed=1)]),
    "neg": (F.neg, [_r(2, 3)]),
    "pow_int": (lambda a: F.pow(a, 3), [_r(2, 3)]),
    "pow_frac": (lambda a: F.pow(a, 2.5), [_pos(2, 3)]),
    "pow_neg": (lambda a: F.pow(a, -1), [_pos(2, 3)]),
    "matmul": (F.matmul, [_r(2, 3), _r(3, 4, seed=1)]),
    "exp": (F.exp, [_r(2, 3)]),
    "log": (F.log, [_pos(2, 3)]),
    "relu": (F.relu, [_away_from_zero(3, 4)]),
    "sigmoid": (F.sigmoid, [_r(3, 4) * 3]),
    "tanh": (F.tanh, [_r(3, 4)]),
    # reductions
    "sum_all": (F.sum, [_r(2, 3, 4)]),
    "sum_axis": (lambda a: F.sum(a, axis=1), [_r(2, 3, 4)]),
    "sum_axes_keepdims": (lambda a: F.sum(a, axis=(0, 2), keepdims=True), [_r(2, 3, 4)]),
    "mean_all": (F.mean, [_r(2, 3, 4)]),
    "mean_axis": (lambda a: F.mean(a, axis=-1), [_r(2, 3, 4)]),
    "mean_keepdims": (lambda a: F.mean(a, axis=(1,), keepdims=True), [_r(2, 3, 4)]),
    "max_all": (F.max, [_distinct(2, 3, 4)]),
    "max_axis": (lambda a: F.max(a, axis=1), [_distinct(2, 3, 4)]),
    "max_keepdims": (lambda a: F.max(a, axis=(0, 2), keepdims=True), [_distinct(2, 3, 4)]),
    # shape ops
    "reshape": (lambda a: F.reshape(a, (4, 6)), [_r(2, 3, 4)]),
    "transpose_reverse": (F.transpose, [_r(2, 3, 4)]),
    "transpose_axes": (lambda a: F.transpose(a, (2, 0, 1)), [_r(2, 3, 4)]),
    "flatten": (F.flatten, [_r(2, 3, 2, 2)]),
    "getitem_slice": (lambda a: F.getitem(a, (slice(None), slice(1, 3))), [_r(3, 4)]),
    "getitem_int": (lambda a: F.getitem(a, 1), [_r(3, 4)]),
    "getitem_repeated": (lambda a: F.getitem(a, np.array([0, 2, 0])), [_r(3, 4)]),
    # layers
    "linear": (F.linear, [_r(4, 3), _r(5, 3, seed=1), _r(5, seed=2)]),
    "linear_nobias": (F.linear, [_r(4, 3), _r(5, 3, seed=1)]),
    "conv2d": (F.conv2d, [_r(2, 3, 5, 5), _r(4, 3, 3, 3, seed=1), _r(4, seed=2)]),
    "conv2d_stride2_pad1": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                            [_r(2, 2, 5, 6), _r(3, 2, 3, 3, seed=1), _r(3, seed=2)]),
    "conv2d_pad2_nobias": (lambda x, w: F.conv2d(x, w, padding=2),
                           [_r(1, 2, 4, 4), _r(2, 2, 3, 3, seed=1)]),
    "conv2d_1channel": (F.conv2d, [_r(2, 1, 7, 7), _r(2, 1, 3, 3, seed=1), _r(2, seed=2)]),
    "conv2d_stride3_k2": (lambda x, w, b: F.conv2d(x, w, b, stride=3),
                          [_r(1, 2, 7, 8), _r(2, 2, 2, 2, seed=1), _r(2, seed=2)]),
    "conv2d_reference": (F.conv2d_reference,
                         [_r(2, 3, 5, 5), _r(4, 3, 3, 3, seed=1), _r(4, seed=2)]),
    "conv2d_reference_stride2_pad1": (
        lambda x, w, b: F.conv2d_reference(x, w, b, stride=2, padding=1),
        [_r(2, 2, 5, 6), _r(3, 2, 3, 3, seed=1), _r(3, seed=2)]),
    "max_pool2d_k2s2": (lambda x: F.max_pool2d(x, 2), [_distinct(2, 2, 4, 6)]),
    "max_pool2d_k2s2_odd": (lambda x: F.max_pool2d(x, 2), [_distinct(1, 2, 5, 5)]),
    "max_pool2d_k3s2": (lambda x: F.max_pool2d(x, 3, 2), [_distinct(2, 2, 7, 5)]),
    "max_pool2d_k3s1": (lambda x: F.max_pool2d(x, 3, 1), [_distinct(1, 2, 5, 6)]),
    "accel_max_pool2d_k3s2": (lambda x: accel_pool.max_pool2d(x, 3, 2),
                              [_distinct(2, 2, 7, 5)]),
    "accel_conv2d_stride2_pad1": (lambda x, w, b: accel_conv.conv2d(x, w, b, stride=2, padding=1),
                                  [_r(2, 2, 5, 6), _r(3, 2, 3, 3, seed=1), _r(3, seed=2)]),
    "avg_pool2d_k3s2p1": (lambda x: F.avg_pool2d(x, 3, 2, 1), [_r(2, 2, 7, 6)]),
    "global_avg_pool2d": (F.global_avg_pool2d, [_r(2, 3, 4, 5)]),
    "batch_norm2d_train": (_batch_norm(F.batch_norm2d, True),
                           [_r(3, 2, 2, 3), _r(2, seed=1), _r(2, seed=2)]),
    "batch_norm2d_eval": (_batch_norm(F.batch_norm2d, False),
                          [_r(3, 2, 2, 3), _r(2, seed=1), _r(2, seed=2)]),
    "batch_norm2d_reference_train": (_batch_norm(F.batch_norm2d_reference, True),
                                     [_r(3, 2, 2, 3), _r(2, seed=1), _r(2, seed=2)]),
    "dropout": (_dropout, [_r(4, 5)]),
    "log_softmax": (F.log_softmax, [_r(3, 5)]),
    "log_softmax_axis0": (lambda x: F.log_softmax(x, axis=0), [_r(3, 5)]),
    "softmax_cross_entropy": (F.softmax_cross_entropy,
                              [_r(4, 5), np.array([0, 3, 4, 3], dtype=np.int64)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradient(name, xp):
    fn, inputs = CASES[name]
    report = gradient_check(fn, [xp.asarray(a) for a in inputs])
    assert report.n_elements == sum(a.size for a in inputs if a.dtype.kind == "f")


def test_every_exported_op_has_a_gradient_case():
    helpers = {"im2col", "col2im"}  # array helpers, not differentiable ops
    covered = {n for n in F.__all__ if n in CASES or any(c.startswith(n + "_") for c in CASES)}
    missing = [n for n in F.__all__ if n not in covered | helpers]
    assert not missing, f"ops without a gradient check: {missing}"


def test_gradient_check_reports_the_worst_element():
    from minievo.autograd import Function

    class WrongSquare(Function):  # backward drops the gradient of one element
        def forward(self, a):
            self.a = a
            return a * a

        def backward(self, gy):
            g = 2 * gy * self.a
            g[1, 1] = 0
            return g

    x = np.array([[1.0, 2.0], [3.0, -4.0]])
    with pytest.raises(AssertionError) as info:
        gradient_check(lambda t: WrongSquare.apply(t), [x])
    msg = str(info.value)
    assert "input 0" in msg and "element (1, 1)" in msg
    for word in ("analytic", "numeric", "abs err", "rel err"):
        assert word in msg


def test_gradient_check_passes_constants_through():
    # Only the Tensor that requires grad is checked; the constant and the int pass through.
    w = Tensor(_r(3, 2), requires_grad=False)
    report = gradient_check(lambda x, c, k: F.matmul(x, c) * k, [_r(2, 3), w, 3])
    assert [r.index for r in report.inputs] == [0]
    assert report.max_abs_err < 1e-6
    assert "passed" in str(report)


def test_gradient_check_needs_a_differentiable_input():
    with pytest.raises(ValueError, match="no input requires grad"):
        gradient_check(F.exp, [Tensor(_r(2))])
