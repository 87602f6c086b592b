"""Batch normalisation and average pooling: values against NumPy, gradients, running
statistics, dtypes, shape rules and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minievo.functions as F
from minievo.autograd import Tensor, no_grad
from minievo.backend import get_array_module, to_numpy
from minievo.testing import assert_allclose_backends, gradient_check


def _r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _forward_backward(fn, arrays, *args, **kw):
    """fn(*tensors, *args, **kw) on copies of ``arrays``, then backward with a fixed random
    output gradient: (y, [input grads]) as NumPy arrays."""
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    y = fn(*ts, *args, **kw)
    xp = get_array_module(arrays[0])
    gy = xp.asarray(np.random.default_rng(1).standard_normal(y.shape), dtype=y.dtype)
    y.backward(gy)
    return y.numpy(), [to_numpy(t.grad) for t in ts]


def _bn_numpy(x, gamma, beta, mean, var, eps):
    """Batch norm in plain NumPy with the given per-channel statistics."""
    def c(v):
        return v.reshape(1, -1, 1, 1)
    return c(gamma) * (x - c(mean)) / np.sqrt(c(var) + eps) + c(beta)


# ----- batch norm ---------------------------------------------------------------------------
BN_FNS = {"fast": F.batch_norm2d, "reference": F.batch_norm2d_reference}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", list(BN_FNS))
def test_batch_norm2d_gradient(impl, training, xp):
    # In training mode the numerical gradient goes through the batch mean and variance, so a
    # backward without their terms fails; eps=0.1 makes a misplaced eps visible.
    bn = BN_FNS[impl]

    def fn(x, gamma, beta):
        rm, rv = xp.asarray([0.3, -0.2, 1.0]), xp.asarray([0.5, 2.0, 0.05])
        return bn(x, gamma, beta, rm, rv, training, momentum=0.3, eps=0.1)

    inputs = [xp.asarray(a) for a in (_r(3, 3, 2, 4), _r(3, seed=1), _r(3, seed=2))]
    report = gradient_check(fn, inputs)
    assert report.n_elements == 72 + 3 + 3


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm2d_matches_reference(training, xp):
    arrays = [xp.asarray(a) for a in (_r(4, 3, 5, 2), _r(3, seed=1), _r(3, seed=2))]
    results = {}
    for name, bn in BN_FNS.items():
        rm, rv = xp.asarray([0.1, 0.2, -0.3]), xp.asarray([1.5, 0.7, 0.2])
        y, grads = _forward_backward(bn, arrays, rm, rv, training, momentum=0.2)
        results[name] = (y, grads, to_numpy(rm), to_numpy(rv))
    (y, grads, rm, rv), (y_ref, grads_ref, rm_ref, rv_ref) = results.values()
    assert_allclose_backends(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        assert_allclose_backends(g, g_ref, rtol=1e-10, atol=1e-12)
    assert_allclose_backends(rm, rm_ref, rtol=1e-12, atol=1e-15)
    assert_allclose_backends(rv, rv_ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("impl", list(BN_FNS))
def test_batch_norm2d_training_values_against_numpy(impl, xp):
    x = _r(5, 3, 2, 3) * np.array([1.0, 0.1, 4.0]).reshape(1, 3, 1, 1) + 2.0
    gamma, beta = _r(3, seed=1), _r(3, seed=2)
    y = BN_FNS[impl](Tensor(xp.asarray(x)), Tensor(xp.asarray(gamma)), xp.asarray(beta),
                     xp.zeros(3), xp.ones(3), True, eps=0.05)
    want = _bn_numpy(x, gamma, beta, x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)), 0.05)
    assert_allclose_backends(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", list(BN_FNS))
def test_batch_norm2d_running_stats_after_two_training_calls(impl, xp):
    # The running variance takes the unbiased batch variance (ddof=1; here m = 2*3*3 = 18,
    # so the biased one would be off by 18/17); the default momentum is 0.1.
    x1, x2 = _r(2, 2, 3, 3) * 3.0 + 1.0, _r(2, 2, 3, 3, seed=5) * 0.5 - 2.0
    rm, rv = xp.zeros(2), xp.ones(2)
    gamma, beta = Tensor(xp.ones(2), requires_grad=True), Tensor(xp.zeros(2))
    BN_FNS[impl](Tensor(xp.asarray(x1)), gamma, beta, rm, rv, True)
    with no_grad():  # updated whether or not a graph is recorded
        BN_FNS[impl](Tensor(xp.asarray(x2)), gamma, beta, rm, rv, True)
    want_m, want_v = np.zeros(2), np.ones(2)
    for x in (x1, x2):
        want_m = 0.9 * want_m + 0.1 * x.mean(axis=(0, 2, 3))
        want_v = 0.9 * want_v + 0.1 * x.var(axis=(0, 2, 3), ddof=1)
    assert_allclose_backends(rm, want_m, rtol=1e-12, atol=1e-15)
    assert_allclose_backends(rv, want_v, rtol=1e-12, atol=1e-15)
    # evaluation mode reads the running statistics and leaves them alone
    before = to_numpy(rm).copy(), to_numpy(rv).copy()
    BN_FNS[impl](Tensor(xp.asarray(x1)), gamma, beta, rm, rv, False)
    assert_allclose_backends(rm, before[0], rtol=0, atol=0)
    assert_allclose_backends(rv, before[1], rtol=0, atol=0)


@pytest.mark.parametrize("impl", list(BN_FNS))
def test_batch_norm2d_eval_is_the_running_affine_map(impl, xp):
    x = _r(3, 3, 2, 2) + 5.0  # far from the running mean: batch statistics would differ
    gamma, beta = _r(3, seed=1), _r(3, seed=2)
    rm, rv = np.array([0.5, -1.0, 2.0]), np.array([0.01, 1.0, 4.0])
    eps = 1e-3  # comparable to a variance of 0.01: a misplaced eps shows
    scale = gamma / np.sqrt(rv + eps)
    shift = beta - rm * scale
    want = x * scale.reshape(1, 3, 1, 1) + shift.reshape(1, 3, 1, 1)
    bn = BN_FNS[impl]
    args = (Tensor(xp.asarray(gamma)), Tensor(xp.asarray(beta)), xp.asarray(rm), xp.asarray(rv),
            False)
    y = bn(Tensor(xp.asarray(x)), *args, eps=eps)
    assert_allclose_backends(y, want, rtol=1e-12, atol=1e-12)
    # one sample at a time gives the same: nothing depends on the batch (N*H*W = 1 is fine)
    one = bn(Tensor(xp.asarray(x[1:2, :, :1, :1])), *args, eps=eps)
    assert_allclose_backends(one, want[1:2, :, :1, :1], rtol=1e-12, atol=1e-12)


def test_batch_norm2d_constant_gamma_beta_still_give_the_input_gradient(xp):
    # gamma and beta as plain arrays (no gradient wanted): x gets the same gradient as when
    # all three are trained
    arrays = [xp.asarray(a) for a in (_r(2, 2, 3, 3), _r(2, seed=1), _r(2, seed=2))]
    _, (gx_all, _, _) = _forward_backward(F.batch_norm2d, arrays, xp.zeros(2), xp.ones(2),
                                          True)
    x = Tensor(arrays[0].copy(), requires_grad=True)
    y = F.batch_norm2d(x, arrays[1], arrays[2], xp.zeros(2), xp.ones(2), True)
    y.backward(xp.asarray(np.random.default_rng(1).standard_normal(y.shape)))
    assert_allclose_backends(x.grad, gx_all, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", list(BN_FNS))
def test_batch_norm2d_float32_stays_float32(impl, training, xp):
    x, gamma, beta = _r(4, 3, 4, 4), _r(3, seed=1), _r(3, seed=2)
    out = {}
    for dt in (np.float32, np.float64):
        # float64 running statistics must not turn a float32 input into float64
        rm, rv = xp.asarray([0.1, 0.0, -0.2]), xp.asarray([1.0, 0.5, 2.0])
        arrays = [xp.asarray(a, dtype=dt) for a in (x, gamma, beta)]
        out[dt] = _forward_backward(BN_FNS[impl], arrays, rm, rv, training)
    y32, g32 = out[np.float32]
    y64, g64 = out[np.float64]
    assert y32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32)
    assert_allclose_backends(y32, y64, rtol=1e-4, atol=1e-4)
    for a, b in zip(g32, g64):
        assert_allclose_backends(a, b, rtol=1e-4, atol=1e-4)
    # float32 running statistics stay float32 after the in-place update
    rm, rv = xp.zeros(3, dtype=xp.float32), xp.ones(3, dtype=xp.float32)
    BN_FNS[impl](Tensor(xp.asarray(x, dtype=xp.float32)), xp.asarray(gamma, dtype=xp.float32),
                 xp.asarray(beta, dtype=xp.float32), rm, rv, training)
    assert rm.dtype == np.float32 and rv.dtype == np.float32


@pytest.mark.parametrize("impl", list(BN_FNS))
def test_batch_norm2d_errors(impl, xp):
    bn = BN_FNS[impl]
    x = Tensor(xp.zeros((2, 3, 4, 4)))
    g, rm = xp.ones(3), xp.zeros(3)
    with pytest.raises(ValueError, match=r"x of shape \(N, C, H, W\)"):
        bn(Tensor(xp.zeros((2, 3, 4))), g, g, rm, rm.copy(), True)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        bn(x, xp.ones(2), g, rm, rm.copy(), True)
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\)"):
        bn(x, g, xp.ones((3, 1)), rm, rm.copy(), True)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        bn(x, g, g, rm, xp.ones(4), False)
    with pytest.raises(TypeError, match="running_mean must be a raw array"):
        bn(x, g, g, Tensor(rm), rm.copy(), True)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\]"):
        bn(x, g, g, rm, rm.copy(), True, momentum=1.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        bn(x, g, g, rm, rm.copy(), True, eps=0.0)
    with pytest.raises(ValueError, match=r"more than one value per channel \(N\*H\*W > 1\)"):
        bn(Tensor(xp.zeros((1, 3, 1, 1))), g, g, rm, rm.copy(), True)


# ----- average pooling ----------------------------------------------------------------------
def _avg_pool_by_loops(x, k, s, p):
    """Average pooling by a loop over output pixels; the padding zeros count (divisor k*k)."""
    n, c, h, w = x.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = np.empty((n, c, oh, ow))
    for i, j in np.ndindex(oh, ow):
        y[:, :, i, j] = xpad[:, :, i * s : i * s + k, j * s : j * s + k].sum(axis=(2, 3)) / k**2
    return y


AVG_CASES = [
    # (shape, kernel, stride, padding)
    ((2, 3, 8, 8), 2, None, 0),
    ((2, 3, 9, 7), 2, 2, 0),  # odd sizes: the last row / column is not pooled
    ((2, 2, 7, 6), 3, 2, 0),  # overlapping windows
    ((2, 2, 6, 7), 3, 1, 1),  # overlapping, padded
    ((1, 2, 7, 7), 2, 3, 1),  # gaps between windows, padded
    ((2, 1, 5, 6), 5, 2, 2),
    ((2, 2, 4, 4), 1, 1, 0),
]


@pytest.mark.parametrize("case", AVG_CASES, ids=[str(c) for c in AVG_CASES])
def test_avg_pool2d_values(case, xp):
    shape, k, s, p = case
    x = _r(*shape)
    y = F.avg_pool2d(Tensor(xp.asarray(x)), k, s, p)
    assert_allclose_backends(y, _avg_pool_by_loops(x, k, k if s is None else s, p),
                             rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", AVG_CASES, ids=[str(c) for c in AVG_CASES])
def test_avg_pool2d_gradient(case, xp):
    shape, k, s, p = case
    report = gradient_check(lambda x: F.avg_pool2d(x, k, s, p), [xp.asarray(_r(*shape))])
    assert report.n_elements == int(np.prod(shape))


def test_avg_pool2d_counts_padding_in_the_average(xp):
    # A 2x2 input of ones, kernel 3, padding 1: every window holds 4 ones and 5 zeros.
    x = Tensor(xp.ones((1, 1, 2, 2)), requires_grad=True)
    y = F.avg_pool2d(x, 3, 1, 1)
    assert_allclose_backends(y, np.full((1, 1, 2, 2), 4 / 9), rtol=1e-12)
    y.backward(xp.ones(y.shape))
    assert_allclose_backends(x.grad, np.full((1, 1, 2, 2), 4 / 9), rtol=1e-12)


def test_global_avg_pool2d_values_and_gradient(xp):
    x = _r(2, 3, 4, 5)
    y = F.global_avg_pool2d(Tensor(xp.asarray(x)))
    assert_allclose_backends(y, x.mean(axis=(2, 3)), rtol=1e-12, atol=1e-12)
    report = gradient_check(F.global_avg_pool2d, [xp.asarray(x)])
    assert report.n_elements == x.size
    # the same as one window covering the whole (square) map
    sq = Tensor(xp.asarray(_r(2, 3, 4, 4)))
    assert_allclose_backends(F.global_avg_pool2d(sq), F.avg_pool2d(sq, 4).reshape(2, 3),
                             rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["avg_pool2d", "global_avg_pool2d"])
def test_pooling_float32_stays_float32(op, xp):
    fn = (lambda t: F.avg_pool2d(t, 3, 2, 1)) if op == "avg_pool2d" else F.global_avg_pool2d
    x = _r(2, 3, 7, 6)
    y32, (g32,) = _forward_backward(fn, [xp.asarray(x, dtype=xp.float32)])
    y64, (g64,) = _forward_backward(fn, [xp.asarray(x)])
    assert y32.dtype == np.float32 and g32.dtype == np.float32
    assert_allclose_backends(y32, y64, rtol=1e-5, atol=1e-6)
    assert_allclose_backends(g32, g64, rtol=1e-5, atol=1e-6)


def test_pooling_errors(xp):
    x = Tensor(xp.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"avg_pool2d expects input of shape \(N, C, H, W\)"):
        F.avg_pool2d(Tensor(xp.zeros((2, 4, 4))), 2)
    with pytest.raises(ValueError, match="kernel_size >= 1 and stride >= 1"):
        F.avg_pool2d(x, 0)
    with pytest.raises(ValueError, match="kernel_size >= 1 and stride >= 1"):
        F.avg_pool2d(x, 2, 0)
    with pytest.raises(ValueError, match=r"padding must lie in \[0, kernel_size // 2\]"):
        F.avg_pool2d(x, 3, 1, 2)
    with pytest.raises(ValueError, match=r"padding must lie in \[0, kernel_size // 2\]"):
        F.avg_pool2d(x, 2, 1, -1)
    with pytest.raises(ValueError, match="output would be empty"):
        F.avg_pool2d(x, 5)
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        F.avg_pool2d(x, 2.5)
    with pytest.raises(ValueError, match=r"global_avg_pool2d expects input of shape"):
        F.global_avg_pool2d(Tensor(xp.zeros((2, 4))))


# ----- shape rule (hypothesis, NumPy only: pure shape arithmetic) -----------------------------
@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 12), w=st.integers(1, 12), k=st.integers(1, 5),
    stride=st.one_of(st.none(), st.integers(1, 4)), data=st.data(),
)
def test_avg_pool2d_output_shape_rule(h, w, k, stride, data):
    padding = data.draw(st.integers(0, k // 2), label="padding")
    s = k if stride is None else stride
    oh, ow = (h + 2 * padding - k) // s + 1, (w + 2 * padding - k) // s + 1
    x = Tensor(np.ones((2, 3, h, w)), requires_grad=True)
    if oh < 1 or ow < 1:
        with pytest.raises(ValueError, match="empty"):
            F.avg_pool2d(x, k, stride, padding)
        return
    y = F.avg_pool2d(x, k, stride, padding)
    assert y.shape == (2, 3, oh, ow)
    y.sum().backward()
    assert x.grad.shape == x.shape
    if padding == 0:
        # every window averages k*k real ones, and hands a total of exactly 1 back to them
        assert np.allclose(y.numpy(), 1.0)
        assert np.isclose(float(x.grad.sum()), 2 * 3 * oh * ow)
