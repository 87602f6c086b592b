"""The accelerator's ResNet ops against their references: channels-last batch norm, global
average pool, the convolution's transposed-convolution input gradient and its weight gradient,
and a whole ResNet on both paths (values, gradients, running statistics, memory layout)."""

from __future__ import annotations

import numpy as np
import pytest

import minievo.accel
import minievo.functions as F
from minievo import init, layers, models
from minievo.accel import conv as accel_conv
from minievo.accel import norm as accel_norm
from minievo.accel import pool as accel_pool
from minievo.autograd import Function, Tensor
from minievo.backend import get_array_module, to_numpy
from minievo.testing import assert_allclose_backends, gradient_check


def _r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


class _ToChannelsLast(Function):
    """Identity on values; the output is an (N, C, H, W) view of channels-last memory, as the
    accelerated convolution hands it over. The gradient passes through unchanged."""

    def forward(self, x):
        return accel_conv.channels_last(x).transpose(0, 3, 1, 2)

    def backward(self, gy):
        return gy


class _Probe(Function):
    """Identity that records the gradient it receives (a leaf's .grad may be a copy)."""

    seen: list = []

    def forward(self, x):
        return x

    def backward(self, gy):
        _Probe.seen.append(gy)
        return gy


def _grad_into(fn, x, gy):
    """The gradient ``fn`` sends back to its input x, as it leaves fn's backward."""
    _Probe.seen = []
    fn(_Probe.apply(Tensor(x, requires_grad=True))).backward(gy)
    return _Probe.seen[0]


def _channels_last_memory(a) -> bool:
    """True when the (N, C, H, W) array ``a`` is a view of C-contiguous (N, H, W, C) memory."""
    return bool(a.transpose(0, 2, 3, 1).flags.c_contiguous)


def _gy(shape, xp, channels_last: bool, seed=7):
    g = xp.asarray(_r(*shape, seed=seed))
    return g.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2) if channels_last else g


def _run(fn, arrays, gy):
    """fn on fresh tensors of ``arrays`` (all requiring grad), backward with ``gy``."""
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    y = fn(*ts)
    y.backward(gy)
    return y, [t.grad for t in ts]


# ----- batch norm -------------------------------------------------------------------------------


def _bn_args(xp, c):
    return xp.asarray(_r(c, seed=11) * 0.2), xp.asarray(np.abs(_r(c, seed=12)) + 0.5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_batch_norm_gradient(training, layout, xp):
    # eps=0.1 makes a misplaced eps visible; in training mode a backward without the terms
    # through the batch mean and variance fails.
    def fn(x, gamma, beta):
        rm, rv = xp.asarray([0.3, -0.2, 1.0]), xp.asarray([0.5, 2.0, 0.05])
        x = _ToChannelsLast.apply(x) if layout == "channels_last" else x
        return accel_norm.batch_norm2d(x, gamma, beta, rm, rv, training, momentum=0.3,
                                       eps=0.1)

    inputs = [xp.asarray(a) for a in (_r(3, 3, 2, 4), _r(3, seed=1), _r(3, seed=2))]
    report = gradient_check(fn, inputs)
    assert report.n_elements == 72 + 3 + 3


# (N, C, H, W): wide rows of 2..64 pixels, an odd pixel count (no widening), many channels
SHAPES = [(4, 3, 5, 2), (8, 16, 4, 4), (3, 5, 3, 3), (2, 1100, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_batch_norm_equals_the_reference(shape, training, layout, xp):
    """Values, the gradients of x, gamma and beta, and the running statistics, for an output
    gradient in either layout; the output is channels-last memory either way."""
    n, c, h, w = shape
    x = xp.asarray(_r(*shape) * 3 + 1.5)
    if layout == "channels_last":
        x = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    gamma, beta = xp.asarray(_r(c, seed=1)), xp.asarray(_r(c, seed=2))
    for gy_channels_last in (False, True):
        gy = _gy(shape, xp, gy_channels_last)
        out = {}
        for name, bn in (("accel", accel_norm.batch_norm2d), ("reference", F.batch_norm2d)):
            rm, rv = _bn_args(xp, c)
            y, grads = _run(lambda a, g, b, bn=bn, rm=rm, rv=rv: bn(a, g, b, rm, rv, training,
                                                                   momentum=0.2, eps=1e-3),
                            [x, gamma, beta], gy)
            out[name] = (y.data, grads, rm, rv)
        (y, grads, rm, rv), (y_ref, grads_ref, rm_ref, rv_ref) = out.values()
        assert _channels_last_memory(y)
        assert_allclose_backends(y, y_ref, rtol=1e-12, atol=1e-12)
        for g, g_ref in zip(grads, grads_ref):
            assert_allclose_backends(g, g_ref, rtol=1e-10, atol=1e-11)
        assert_allclose_backends(rm, rm_ref, rtol=1e-13, atol=1e-15)
        assert_allclose_backends(rv, rv_ref, rtol=1e-13, atol=1e-15)


def test_batch_norm_float32_stays_float32_and_close(xp):
    x = xp.asarray(_r(16, 8, 6, 6) * 2 + 3, dtype=xp.float32)
    gamma, beta = xp.ones(8, dtype=xp.float32), xp.zeros(8, dtype=xp.float32)
    ys = []
    for bn in (accel_norm.batch_norm2d, F.batch_norm2d):
        rm, rv = xp.zeros(8, dtype=xp.float32), xp.ones(8, dtype=xp.float32)
        ys.append(bn(Tensor(x), Tensor(gamma), Tensor(beta), rm, rv, True).data)
    assert ys[0].dtype == xp.float32
    assert_allclose_backends(ys[0], ys[1], rtol=1e-4, atol=1e-5)


def test_batch_norm_rejects_what_the_reference_rejects(xp):
    x = Tensor(xp.zeros((2, 3, 4, 4)))
    g = xp.ones(3)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        accel_norm.batch_norm2d(x, xp.ones(4), g, xp.zeros(3), xp.ones(3), True)
    with pytest.raises(TypeError, match="running_mean must be a raw array"):
        accel_norm.batch_norm2d(x, g, g, Tensor(xp.zeros(3)), xp.ones(3), True)
    with pytest.raises(ValueError, match="more than one value per channel"):
        accel_norm.batch_norm2d(Tensor(xp.zeros((1, 3, 1, 1))), g, g, xp.zeros(3), xp.ones(3),
                                True)


@pytest.mark.parametrize("m, c, r", [(8192, 16, 64), (8192, 64, 16), (6, 16, 2), (7, 16, 1),
                                     (4096, 1024, 1), (4096, 1100, 1), (96, 3, 32)])
def test_widen_picks_the_largest_power_of_two_row_group(m, c, r):
    assert accel_norm.widen(m, c) == r
    assert m % r == 0 and (r == 1 or r * c <= accel_norm.WIDE_ROW)


# ----- global average pool ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_global_avg_pool_equals_the_reference_and_returns_a_channels_last_gradient(layout, xp):
    x = xp.asarray(_r(3, 5, 4, 6))
    if layout == "channels_last":
        x = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    gy = xp.asarray(_r(3, 5, seed=3))
    y, (gx,) = _run(accel_pool.global_avg_pool2d, [x], gy)
    y_ref, (gx_ref,) = _run(F.global_avg_pool2d, [x], gy)
    assert_allclose_backends(y.data, y_ref.data, rtol=1e-13, atol=1e-14)
    assert_allclose_backends(gx, gx_ref, rtol=1e-13, atol=1e-14)
    assert _channels_last_memory(_grad_into(accel_pool.global_avg_pool2d, x, gy))
    gradient_check(accel_pool.global_avg_pool2d, [x])
    with pytest.raises(ValueError, match=r"expects input of shape \(N, C, H, W\)"):
        accel_pool.global_avg_pool2d(Tensor(xp.zeros((2, 3))))


# ----- convolution: the ResNet shapes -----------------------------------------------------------

# (in channels, out channels, kernel, stride, padding): 3x3 "same" (transposed-convolution
# input gradient), 1x1 and 5x5 "same", then shapes that keep col2im: stride 2 (a ResNet's
# downsampling conv and its 1x1 projection) and no padding (LeNet-5)
CONVS = [(3, 4, 3, 1, 1), (4, 4, 1, 1, 0), (2, 3, 5, 1, 2), (3, 5, 3, 2, 1), (3, 5, 1, 2, 0),
         (3, 2, 3, 1, 0)]


@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "c{}-o{}-k{}-s{}-p{}".format(*s))
def test_conv_gradient(spec, xp):
    c, o, k, s, p = spec
    inputs = [xp.asarray(_r(2, c, 6, 5)), xp.asarray(_r(o, c, k, k, seed=1)),
              xp.asarray(_r(o, seed=2))]
    gradient_check(lambda x, w, b: accel_conv.conv2d(x, w, b, s, p), inputs)


@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "c{}-o{}-k{}-s{}-p{}".format(*s))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_conv_equals_the_reference(spec, layout, xp):
    c, o, k, s, p = spec
    x = xp.asarray(_r(3, c, 8, 7))
    if layout == "channels_last":
        x = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    w, b = xp.asarray(_r(o, c, k, k, seed=1)), xp.asarray(_r(o, seed=2))
    oh, ow = (8 + 2 * p - k) // s + 1, (7 + 2 * p - k) // s + 1
    for gy_channels_last in (False, True):
        gy = _gy((3, o, oh, ow), xp, gy_channels_last)
        y, grads = _run(lambda *a: accel_conv.conv2d(*a, s, p), [x, w, b], gy)
        y_ref, grads_ref = _run(lambda *a: F.conv2d(*a, s, p), [x, w, b], gy)
        assert _channels_last_memory(y.data)
        assert_allclose_backends(y.data, y_ref.data, rtol=1e-12, atol=1e-12)
        for g, g_ref in zip(grads, grads_ref):
            assert_allclose_backends(g, g_ref, rtol=1e-11, atol=1e-11)
        assert grads[1].flags.c_contiguous  # (O, C, kh, kw) like the weight


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_weight_gradient_in_row_blocks(threads, monkeypatch):
    """The blocked weight-gradient product (one BLAS thread) sums the same numbers, including
    a last block that is only partly filled; with more threads it is one product."""
    monkeypatch.setattr(accel_conv, "WGRAD_ROWS", 16)
    monkeypatch.setattr(accel_conv, "blas_threads", lambda: threads)
    cols = _r(3 * 16 + 5, 7)
    g = _r(3 * 16 + 5, 4, seed=1)
    np.testing.assert_allclose(accel_conv._cols_t_times(cols, g), cols.T @ g, rtol=1e-12)
    x, w = _r(2, 3, 7, 6), _r(4, 3, 3, 3, seed=1)  # 84 rows of cols: 6 blocks
    gy = _r(2, 4, 7, 6, seed=2)
    _, grads = _run(lambda a, b: accel_conv.conv2d(a, b, None, 1, 1), [x, w], gy)
    _, grads_ref = _run(lambda a, b: F.conv2d(a, b, None, 1, 1), [x, w], gy)
    np.testing.assert_allclose(grads[1], grads_ref[1], rtol=1e-11, atol=1e-12)


def test_blas_threads_reports_numpys_blas():
    n = accel_conv.blas_threads()
    assert n is None or n >= 1


def test_same_size_conv_input_gradient_is_channels_last(xp):
    """The transposed-convolution input gradient comes back channels-last, ready for the
    batch norm and convolution below it."""
    w = Tensor(xp.asarray(_r(4, 3, 3, 3, seed=1)), requires_grad=True)
    gx = _grad_into(lambda x: accel_conv.conv2d(x, w, None, 1, 1), xp.asarray(_r(2, 3, 6, 6)),
                    xp.asarray(_r(2, 4, 6, 6, seed=2)))
    assert _channels_last_memory(gx)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_input_gradient_is_channels_last(training, xp):
    g, b = xp.asarray(_r(3, seed=1)), xp.asarray(_r(3, seed=2))
    gx = _grad_into(lambda x: accel_norm.batch_norm2d(x, g, b, xp.zeros(3), xp.ones(3),
                                                      training),
                    xp.asarray(_r(4, 3, 5, 5)), xp.asarray(_r(4, 3, 5, 5, seed=3)))
    assert _channels_last_memory(gx)


# ----- the whole network ------------------------------------------------------------------------


def _float64(model):
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    for m in model.modules():
        if isinstance(m, layers.BatchNorm2d):
            m.running_mean = m.running_mean.astype(np.float64)
            m.running_var = m.running_var.astype(np.float64)
    return model


def _state(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [8, 14])
def test_a_resnet_trains_the_same_on_both_paths(depth, backend_name, xp):
    """Loss, input and parameter gradients, and the running statistics after a training step,
    float64, accelerated against reference; then the evaluation-mode outputs."""
    init.manual_seed(3)
    net = _float64(models.ResNet(depth)).to(backend_name)
    start = _state(net)
    x = xp.asarray(_r(4, 3, 8, 8, seed=4))
    t = xp.asarray(np.random.default_rng(5).integers(0, 10, 4))
    results = {}
    for on in (False, True):
        net.load_state_dict(start)
        net.train()
        with minievo.accel.accelerated(on):
            for p in net.parameters():
                p.grad = None
            xt = Tensor(x.copy(), requires_grad=True)
            loss = F.softmax_cross_entropy(net(xt), t)
            loss.backward()
            stats = _state(net)
            net.eval()
            y_eval = net(Tensor(x)).data
        results[on] = (float(loss.data), to_numpy(xt.grad),
                       [to_numpy(p.grad) for p in net.parameters()], stats, to_numpy(y_eval))
    (l0, gx0, g0, s0, e0), (l1, gx1, g1, s1, e1) = results[False], results[True]
    assert l1 == pytest.approx(l0, rel=1e-12)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-9, atol=1e-13)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    assert s0.keys() == s1.keys() and any("running_var" in k for k in s0)
    for k in s0:
        np.testing.assert_allclose(s1[k], s0[k], rtol=1e-12, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(e1, e0, rtol=1e-10, atol=1e-12)


def test_the_accelerated_resnet_keeps_activations_channels_last(xp, backend_name):
    """No layer of the accelerated forward hands on NCHW memory (each would cost the next
    layer a transposing copy)."""
    net = models.resnet8().to(backend_name)
    x = Tensor(xp.asarray(_r(2, 3, 8, 8), dtype=xp.float32))
    with minievo.accel.accelerated(), layers.trace_calls() as calls:
        net(x)
    four_d = [(type(m).__name__, out.data) for m, _, out in calls if out.ndim == 4]
    assert len(four_d) > 10
    assert all(_channels_last_memory(a) for _, a in four_d), [
        name for name, a in four_d if not _channels_last_memory(a)]
    assert get_array_module(four_d[0][1]) is xp


def test_the_tables_route_batch_norm_and_the_global_pool():
    assert minievo.accel.OPS.batch_norm2d is accel_norm.batch_norm2d
    assert minievo.accel.OPS.global_avg_pool2d is accel_pool.global_avg_pool2d
    ref = layers.REFERENCE_OPS
    assert (ref.batch_norm2d, ref.global_avg_pool2d) == (F.batch_norm2d, F.global_avg_pool2d)
    # a table that names only the original ops gets the reference ones for the rest
    table = layers.Ops("partial", F.conv2d, F.linear, F.max_pool2d)
    assert table.batch_norm2d is F.batch_norm2d
