"""Fast batch normalisation on channels-last memory: the function of
:func:`minievo.functions.batch_norm2d`, computed on the (N*H*W, C) matrix the convolutions of
:mod:`minievo.accel.conv` hand over.

The reference works on the (N, C, H, W) view and reduces over axes (0, 2, 3), which on
channels-last memory are strided reductions with short inner loops. Here the activation is the
C-contiguous matrix X (M, C), M = N*H*W, and

* every pass runs on a wide view of X, (M/r, r*C), against per-channel vectors tiled r times
  (:func:`widen`), so NumPy's inner loops run over r*C floats rather than C (16 in a ResNet's
  first stage): the per-channel sums are the column sums of the wide view folded over r, the
  sums of products an ``einsum`` (no temporary product array);
* the result stays channels-last, handed on as an (N, C, H, W) view like the convolution's.

The arithmetic is regrouped to use few passes over memory: with xc = x - mean, s = 1/sqrt(var +
eps) and a = gamma * s, the forward is y = xc * a + beta and the training backward

    dx = a * (g - mean(g) - xc * s^2 * mean(g * xc))

(the reference's formula with xhat = xc * s). The results equal the reference to rounding;
tests/test_accel_resnet.py checks values, gradients and running statistics against it.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.norm import check_batch_norm_args, update_running_stats

#: Wide rows hold at most this many floats (more gains nothing: the loop is long enough).
WIDE_ROW = 1024


def widen(m: int, c: int) -> int:
    """How many rows r of an (m, c) matrix to view as one row: the largest power of two that
    divides m with r * c <= :data:`WIDE_ROW` (1 when c alone is that wide)."""
    r = 1
    while m % (2 * r) == 0 and 2 * r * c <= WIDE_ROW:
        r *= 2
    return r


def _channels_last(x, xp):
    """x (N, C, H, W) as C-contiguous (N, H, W, C) memory: free when it already is (the
    output of :mod:`minievo.accel.conv`; that module is not imported here, since a student
    copy of the package replaces it, see :data:`minievo.assignments.STUDENT_REPLACEMENTS`)."""
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _channel_sums(aw, r: int, c: int):
    """Per-channel sums of a wide (M/r, r*C) view: the column sums, folded over the r
    pixels of a wide row. (C,)"""
    return aw.sum(axis=0).reshape(r, c).sum(axis=0)


def _channel_dots(aw, bw, r: int, c: int, xp):
    """Per-channel sums of aw * bw (two wide views of one shape), without the product as a
    temporary (einsum). (C,)"""
    return xp.einsum("ij,ij->j", aw, bw).reshape(r, c).sum(axis=0)


class BatchNorm2dNHWC(Function):
    """Batch normalisation of (N, C, H, W) on channels-last memory (see the module docstring).

    Every pass runs over the wide view (M/r, r*C) of the (M, C) matrix. Forward saves xc (the
    centred input, a fresh array; in evaluation mode only when gamma needs a gradient), s and
    a; the input itself is not kept.
    """

    def forward(self, x, gamma, beta, running_mean=None, running_var=None, training=True,
                momentum=0.1, eps=1e-5):
        check_batch_norm_args(x, gamma, beta, running_mean, running_var, training, momentum,
                              eps)
        xp = get_array_module(x, running_mean, running_var)
        n, c, h, w = x.shape
        m = n * h * w
        r = widen(m, c)
        # free when x came from an accelerated conv
        xw = _channels_last(x, xp).reshape(m // r, r * c)
        if training:
            mean = _channel_sums(xw, r, c) / m
            xc = xw - xp.tile(mean, r)  # fresh: kept for backward
            var = _channel_dots(xc, xc, r, c, xp) / m
            update_running_stats(running_mean, running_var, mean, var, m, momentum)
        else:
            mean = running_mean.astype(x.dtype, copy=False)
            var = running_var.astype(x.dtype, copy=False)
            # Kept only for gamma's gradient (evaluation mode rarely trains gamma).
            xc = xw - xp.tile(mean, r) if self.needs_grad[1] else None
        s = 1.0 / xp.sqrt(var + eps)  # (C,)
        a = gamma * s
        if training:
            y = xc * xp.tile(a, r)
            y += xp.tile(beta, r)
        else:
            y = xw * xp.tile(a, r)
            y += xp.tile(beta - mean * a, r)
        self.xc, self.s, self.a, self.training = xc, s, a, training
        return y.reshape(n, h, w, c).transpose(0, 3, 1, 2)

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c, h, w = gy.shape
        m = n * h * w
        r = widen(m, c)
        # gy may be shared (an addition hands it to both inputs): read only
        gw = _channels_last(gy, xp).reshape(m // r, r * c)
        gbeta = _channel_sums(gw, r, c)
        gx = ggamma = gxc = None
        if self.xc is not None:
            gxc = _channel_dots(gw, self.xc, r, c, xp)  # sum(g * xc) per channel
            ggamma = gxc * self.s  # sum(g * xhat)
        if self.needs_grad[0]:
            gx = gw * xp.tile(self.a, r)
            if self.training:
                # gx = a * (g - gbeta/m) - xc * (a * s^2 * gxc/m)
                k = self.a * self.s * self.s * gxc / m
                gx -= self.xc * xp.tile(k, r)
                gx -= xp.tile(self.a * gbeta / m, r)
            gx = gx.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return (gx, ggamma if self.needs_grad[1] else None,
                gbeta if self.needs_grad[2] else None)


def batch_norm2d(x, gamma, beta, running_mean, running_var, training: bool,
                 momentum: float = 0.1, eps: float = 1e-5):
    """:func:`minievo.functions.batch_norm2d` on channels-last memory: the same arguments,
    checks and results; y (N, C, H, W) is a view of channels-last memory.

    Args:
        x: input of shape (N, C, H, W) (any layout; channels-last memory is used as is).
        gamma, beta: per-channel scale and shift, shape (C,).
        running_mean, running_var: raw (C,) arrays, updated in place in training mode.
        training: batch statistics (True) or the running ones (False).
        momentum: weight of the new batch statistics in the running ones.
        eps: added to the variance before the square root.

    Returns:
        y of shape (N, C, H, W), the dtype of x.
    """
    return BatchNorm2dNHWC.apply(x, gamma, beta, running_mean=running_mean,
                                 running_var=running_var, training=bool(training),
                                 momentum=float(momentum), eps=float(eps))
