"""Forward values and fast-versus-reference equality of the ops in minievo.functions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minievo.functions as F
from minievo.accel import conv as accel_conv
from minievo.autograd import Tensor, sum_to
from minievo.backend import get_array_module, to_numpy
from minievo.functions.conv import col2im, conv_output_size, im2col
from minievo.testing import assert_allclose_backends


def _run(fn, arrays, gy_seed=1, **kw):
    """Forward and backward of fn on copies of ``arrays``: (y, [input grads]) as NumPy arrays.

    ``a.copy(order="K")`` keeps the memory layout of ``a`` (channels-last stays channels-last).
    """
    ts = [Tensor(a.copy(order="K"), requires_grad=True) for a in arrays]
    y = fn(*ts, **kw)
    xp = get_array_module(arrays[0])
    gy = xp.asarray(np.random.default_rng(gy_seed).standard_normal(y.shape), dtype=y.dtype)
    y.backward(gy)
    return y.numpy(), [to_numpy(t.grad) for t in ts]


def _channels_last(xp, a):
    """The same (N, C, H, W) values, stored channels-last (as conv outputs are)."""
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# ----- convolution: im2col + GEMM against the loop reference ---------------------------------
CONV_CASES = [
    # (N, C, H, W, O, k, stride, padding)
    (2, 3, 7, 6, 4, 3, 1, 0),
    (2, 3, 7, 6, 4, 3, 2, 1),
    (2, 1, 9, 9, 3, 3, 1, 0),  # one input channel: accel's transposed im2col path
    (2, 1, 9, 8, 3, 3, 2, 2),
    (1, 2, 5, 5, 2, 5, 1, 0),  # kernel as large as the input
    (3, 4, 8, 9, 5, 2, 3, 1),  # stride larger than the kernel
]


CONV_IMPLS = {"im2col": F.conv2d, "accel_nhwc": accel_conv.conv2d}


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("impl", list(CONV_IMPLS))
def test_conv2d_matches_reference(case, bias, impl, xp):
    n, c, h, w, o, k, s, p = case
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((n, c, h, w)))
    wt = xp.asarray(rng.standard_normal((o, c, k, k)))
    arrays = [x, wt, xp.asarray(rng.standard_normal(o))] if bias else [x, wt]
    y, grads = _run(CONV_IMPLS[impl], arrays, stride=s, padding=p)
    y_ref, grads_ref = _run(F.conv2d_reference, arrays, stride=s, padding=p)
    assert y.shape == (n, o, conv_output_size(h, k, s, p), conv_output_size(w, k, s, p))
    assert_allclose_backends(y, y_ref, rtol=1e-10, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        assert_allclose_backends(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", list(CONV_IMPLS))
def test_conv2d_float32_stays_float32_and_matches_float64(impl, xp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    conv = CONV_IMPLS[impl]
    y32, g32 = _run(conv, [xp.asarray(x, dtype=xp.float32), xp.asarray(w, dtype=xp.float32)])
    y64, g64 = _run(conv, [xp.asarray(x), xp.asarray(w)])
    assert y32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32)
    assert_allclose_backends(y32, y64, rtol=1e-4, atol=1e-4)
    for a, b in zip(g32, g64):
        assert_allclose_backends(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", list(CONV_IMPLS))
def test_conv2d_input_layout_does_not_matter(impl, xp):
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 3, 6, 6)))
    w = xp.asarray(rng.standard_normal((2, 3, 3, 3)))
    y1, g1 = _run(CONV_IMPLS[impl], [x, w], padding=1)
    y2, g2 = _run(CONV_IMPLS[impl], [_channels_last(xp, x), w], padding=1)
    assert_allclose_backends(y1, y2, rtol=1e-12, atol=1e-12)
    assert_allclose_backends(g1[0], g2[0], rtol=1e-12, atol=1e-12)


def test_im2col_and_col2im_are_adjoint(xp):
    # <im2col(x), D> == <x, col2im(D)> for every x and D: col2im is the transpose of im2col.
    rng = np.random.default_rng(0)
    for c in (1, 3):
        x = xp.asarray(rng.standard_normal((2, c, 6, 5)))
        cols, (oh, ow) = im2col(x, 3, 2, stride=2, padding=1)
        assert cols.shape == (2 * oh * ow, c * 3 * 2)
        d = xp.asarray(rng.standard_normal(cols.shape))
        back = col2im(d, x.shape, 3, 2, 2, 1)
        assert back.shape == x.shape
        lhs, rhs = float((cols * d).sum()), float((x * back).sum())
        assert abs(lhs - rhs) < 1e-9 * max(1.0, abs(lhs))


def test_conv2d_shape_errors(xp):
    x = Tensor(xp.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"input has 3 channels but the weight expects 2"):
        F.conv2d(x, Tensor(xp.zeros((4, 2, 3, 3))))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        F.conv2d(Tensor(xp.zeros((3, 5, 5))), Tensor(xp.zeros((4, 3, 3, 3))))
    with pytest.raises(ValueError, match="bias shape"):
        F.conv2d(x, Tensor(xp.zeros((4, 3, 3, 3))), Tensor(xp.zeros(3)))
    with pytest.raises(ValueError, match="output would be empty"):
        F.conv2d(x, Tensor(xp.zeros((4, 3, 7, 7))))


# ----- max pooling: separable fast version against the loop reference ------------------------
POOL_CASES = [
    # (shape, kernel, stride)
    ((2, 3, 8, 8), 2, None),
    ((2, 3, 9, 7), 2, 2),  # odd sizes: the last row / column is not pooled
    ((2, 3, 9, 9), 3, 2),  # overlapping windows
    ((2, 3, 7, 8), 3, 1),  # overlapping, stride 1
    ((2, 2, 8, 8), 2, 3),  # gaps between windows
    ((1, 2, 6, 6), 3, 3),
    ((2, 2, 5, 5), 1, 1),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[str(c) for c in POOL_CASES])
@pytest.mark.parametrize("data", ["random", "ties", "constant"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_pool2d_matches_reference(case, data, layout, xp):
    shape, k, s = case
    rng = np.random.default_rng(0)
    if data == "random":
        a = rng.standard_normal(shape)
    elif data == "ties":
        a = rng.integers(0, 3, size=shape).astype(np.float64)  # many equal maxima
    else:
        a = np.ones(shape)
    x = xp.asarray(a)
    if layout == "channels_last":
        x = _channels_last(xp, x)
    y, (g,) = _run(F.max_pool2d, [x], kernel_size=k, stride=s)
    y_ref, (g_ref,) = _run(F.max_pool2d_reference, [x], kernel_size=k, stride=s)
    assert_allclose_backends(y, y_ref, rtol=0, atol=0)
    # overlapping windows add several contributions: order of additions may differ
    assert_allclose_backends(g, g_ref, rtol=1e-12, atol=1e-12)


def test_max_pool2d_tie_goes_to_first_maximum_in_row_major_order(xp):
    # Window [[1, 5], [5, 1]]: the maxima are at (0, 1) and (1, 0); (0, 1) comes first.
    x = Tensor(xp.asarray([[[[1.0, 5.0], [5.0, 1.0]]]]), requires_grad=True)
    F.max_pool2d(x, 2).backward(xp.ones((1, 1, 1, 1)))
    assert_allclose_backends(x.grad, np.array([[[[0.0, 1.0], [0.0, 0.0]]]]))
    # all equal: the first element gets it all
    x = Tensor(xp.full((1, 1, 2, 2), 3.0), requires_grad=True)
    F.max_pool2d(x, 2).backward(xp.ones((1, 1, 1, 1)))
    assert_allclose_backends(x.grad, np.array([[[[1.0, 0.0], [0.0, 0.0]]]]))


def test_max_pool2d_values(xp):
    x = xp.arange(16.0).reshape(1, 1, 4, 4)
    y = F.max_pool2d(Tensor(x), 2)
    assert_allclose_backends(y, np.array([[[[5.0, 7.0], [13.0, 15.0]]]]))
    y = F.max_pool2d(Tensor(x), 3, 1)
    assert_allclose_backends(y, np.array([[[[10.0, 11.0], [14.0, 15.0]]]]))


def test_max_pool2d_errors(xp):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        F.max_pool2d(Tensor(xp.zeros((2, 4, 4))), 2)
    with pytest.raises(ValueError, match="output would be empty"):
        F.max_pool2d(Tensor(xp.zeros((1, 1, 2, 2))), 3)
    with pytest.raises(ValueError, match="stride >= 1"):
        F.max_pool2d(Tensor(xp.zeros((1, 1, 4, 4))), 2, 0)


# ----- element-wise, reductions, losses: values against NumPy ---------------------------------
def test_elementwise_values(xp):
    a = np.array([[0.5, -1.0, 2.0]])
    b = np.array([[2.0, 4.0, -0.5]])
    ta, tb = Tensor(xp.asarray(a)), Tensor(xp.asarray(b))
    checks = [
        (ta + tb, a + b), (ta - tb, a - b), (ta * tb, a * b), (ta / tb, a / b), (-ta, -a),
        (ta ** 2, a**2), (2 - ta, 2 - a), (1 / tb, 1 / b), (F.exp(ta), np.exp(a)),
        (F.relu(ta), np.maximum(a, 0)), (F.tanh(ta), np.tanh(a)),
        (F.sigmoid(ta), 1 / (1 + np.exp(-a))), (F.log(tb * tb), np.log(b * b)),
        (ta @ tb.T, a @ b.T),
    ]
    for got, want in checks:
        assert_allclose_backends(got, want, rtol=1e-12, atol=1e-12)


def test_python_scalars_keep_dtype(xp):
    x = Tensor(xp.ones(3, dtype=xp.float32))
    for y in (x + 1, 2 * x, x / 3, 1 - x, x ** 2, x.sum(), x.mean()):
        assert y.dtype == np.float32


def test_float64_reductions_stay_float64(xp):
    # Regression: NumPy's full reductions return scalars, which once came back as float32.
    x = Tensor(xp.asarray([1.0, 1e-9]))
    for y in (x.sum(), x.mean(), x.max()):
        assert y.dtype == np.float64
    assert float(x.sum().data) == 1.0 + 1e-9


def test_reductions(xp):
    a = np.random.default_rng(0).standard_normal((2, 3, 4))
    t = Tensor(xp.asarray(a))
    assert_allclose_backends(F.sum(t, axis=(0, 2)), a.sum(axis=(0, 2)))
    assert_allclose_backends(F.mean(t, axis=1, keepdims=True), a.mean(axis=1, keepdims=True))
    assert_allclose_backends(F.max(t, axis=-1), a.max(axis=-1))
    assert_allclose_backends(F.max(t), a.max())


def test_max_splits_gradient_between_ties(xp):
    x = Tensor(xp.asarray([1.0, 3.0, 3.0]), requires_grad=True)
    F.max(x).backward()
    assert_allclose_backends(x.grad, [0.0, 0.5, 0.5])


def test_log_softmax_and_cross_entropy(xp):
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])  # the second row would overflow exp
    logp = z - z.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    assert_allclose_backends(F.log_softmax(Tensor(xp.asarray(z))), logp, rtol=1e-12)
    labels = np.array([2, 1])
    loss = F.softmax_cross_entropy(Tensor(xp.asarray(z)), xp.asarray(labels))
    assert np.isclose(float(loss.data), -(logp[0, 2] + logp[1, 1]) / 2)
    assert np.isfinite(float(loss.data))


def test_cross_entropy_errors(xp):
    z = Tensor(xp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        F.softmax_cross_entropy(z, xp.asarray([0, 3]))
    with pytest.raises(ValueError, match="does not match batch"):
        F.softmax_cross_entropy(z, xp.asarray([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        F.softmax_cross_entropy(Tensor(xp.zeros(3)), xp.asarray([0]))


def test_dropout(xp):
    x = Tensor(xp.ones((200, 50)))
    y = F.dropout(x, 0.25, rng=np.random.default_rng(0)).numpy()
    kept = y != 0
    assert np.allclose(y[kept], 1 / 0.75)
    assert 0.7 < kept.mean() < 0.8
    assert F.dropout(x, 0.25, training=False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout(x, 1.0)


def test_dropout_same_seed_same_mask(xp):
    x = Tensor(xp.ones((4, 5)))
    a = F.dropout(x, 0.5, rng=np.random.default_rng(3)).numpy()
    b = F.dropout(x, 0.5, rng=np.random.default_rng(3)).numpy()
    assert np.array_equal(a, b)


def test_shape_ops(xp):
    a = np.arange(24.0).reshape(2, 3, 4)
    t = Tensor(xp.asarray(a))
    assert_allclose_backends(t.reshape(4, 6), a.reshape(4, 6))
    assert_allclose_backends(t.T, a.T)
    assert_allclose_backends(t.transpose(1, 0, 2), a.transpose(1, 0, 2))
    assert_allclose_backends(F.flatten(t), a.reshape(2, 12))
    assert_allclose_backends(t[1, :, ::2], a[1, :, ::2])
    with pytest.raises(ValueError, match="not a permutation"):
        t.transpose(0, 0, 1)


def test_linear_and_matmul_errors(xp):
    with pytest.raises(ValueError, match="input has 3 features but the weight expects 4"):
        F.linear(Tensor(xp.zeros((2, 3))), Tensor(xp.zeros((5, 4))))
    with pytest.raises(ValueError, match="matmul shape mismatch"):
        F.matmul(Tensor(xp.zeros((2, 3))), Tensor(xp.zeros((2, 3))))
    with pytest.raises(TypeError, match="constant"):
        F.pow(Tensor(xp.zeros(2)), Tensor(xp.zeros(2)))


# ----- shape rules (hypothesis, NumPy only: pure shape arithmetic) ----------------------------
@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 12), k=st.integers(1, 5), stride=st.integers(1, 4),
    padding=st.integers(0, 2),
)
def test_conv_output_size_rule(size, k, stride, padding):
    expected = (size + 2 * padding - k) // stride + 1
    if expected < 1:
        with pytest.raises(ValueError, match="empty"):
            conv_output_size(size, k, stride, padding)
        return
    assert conv_output_size(size, k, stride, padding) == expected
    # ... and it is the size the op really produces
    x = Tensor(np.zeros((1, 1, size, size)))
    w = Tensor(np.zeros((1, 1, k, k)))
    assert F.conv2d(x, w, stride=stride, padding=padding).shape == (1, 1, expected, expected)


@st.composite
def _broadcast_pair(draw):
    """A target shape and a shape that broadcasts to it (dropped leading axes, 1s)."""
    target = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))
    lead = draw(st.integers(0, len(target)))
    small = [1 if draw(st.booleans()) else n for n in target[lead:]]
    return tuple(target), tuple(small)


@settings(max_examples=60, deadline=None)
@given(_broadcast_pair())
def test_sum_to_inverts_broadcasting(pair):
    target, small = pair
    rng = np.random.default_rng(0)
    g = rng.standard_normal(target)
    out = sum_to(g, small)
    assert out.shape == small
    # sum_to is the adjoint of broadcasting: <broadcast(v), g> == <v, sum_to(g)>
    v = rng.standard_normal(small)
    assert np.isclose((np.broadcast_to(v, target) * g).sum(), (v * out).sum())


@settings(max_examples=30, deadline=None)
@given(_broadcast_pair())
def test_binary_op_gradients_have_input_shapes(pair):
    big, small = pair
    a = Tensor(np.ones(big), requires_grad=True)
    b = Tensor(np.full(small, 2.0), requires_grad=True)
    for op in (F.add, F.sub, F.mul, F.div):
        a.grad = b.grad = None
        op(a, b).sum().backward()
        assert a.grad.shape == big and b.grad.shape == small


# ----- glibc malloc tuning (a process-wide setting made on import) ----------------------------
def test_malloc_tuning_is_idempotent_and_can_be_switched_off():
    import os
    import subprocess
    import sys

    from minievo.functions import _malloc

    assert _malloc.tune_glibc_malloc() is _malloc.tune_glibc_malloc()
    code = "import minievo.functions as F; from minievo.functions import _malloc; " \
           "print(_malloc._applied)"
    env = dict(os.environ, MINIEVO_MALLOPT="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "False"
