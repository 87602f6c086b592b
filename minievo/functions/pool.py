"""Max pooling: a fast separable version and a plain loop reference to check it against.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // stride + 1. The gradient of a
window goes to its first maximum only, in row-major order (as in Caffe and PyTorch), so ties
are not double counted.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.conv import conv_output_size


def _check(x, k, stride):
    if x.ndim != 4:
        raise ValueError(f"max_pool2d expects input of shape (N, C, H, W), got {x.shape}")
    if not (1 <= k <= 127 and stride >= 1):  # window positions are stored as int8
        raise ValueError(f"max_pool2d: need 1 <= kernel_size <= 127 and stride >= 1, got "
                         f"kernel_size {k}, stride {stride}")
    conv_output_size(x.shape[2], k, stride, 0)
    conv_output_size(x.shape[3], k, stride, 0)


def _window_views(a, axis: int, k: int, s: int, n_out: int):
    """The k strided views of ``a`` along ``axis``: view i holds element i of every window."""
    index = [slice(None)] * a.ndim
    views = []
    for i in range(k):
        index[axis] = slice(i, i + s * (n_out - 1) + 1, s)
        views.append(a[tuple(index)])
    return views


def _running_max(views, xp):
    """Element-wise max over ``views`` and the position (int8) of the first maximum.

    Position i replaces the best so far only when view i is strictly greater, so ties keep the
    earliest. As i only grows, ``max(best_pos, better * i)`` records it without a masked copy.
    """
    best = xp.maximum(views[0], views[1]) if len(views) > 1 else views[0].copy()
    if len(views) == 1:
        return best, xp.zeros(best.shape, dtype=xp.int8)
    pos = (views[1] > views[0]).view(xp.int8)  # bool and int8 share their 1-byte layout
    for i in range(2, len(views)):
        better = views[i] > best
        xp.maximum(pos, better.view(xp.int8) * xp.int8(i), out=pos)
        xp.maximum(best, views[i], out=best)
    return best, pos


def _scatter(g, pos, shape, axis: int, k: int, s: int, n_out: int, xp):
    """The adjoint of one pooling stage: send g to position ``pos`` of each window."""
    covers_all = s == k and shape[axis] == k * n_out
    out = xp.empty(shape, dtype=g.dtype) if covers_all else xp.zeros(shape, dtype=g.dtype)
    for i, view in enumerate(_window_views(out, axis, k, s, n_out)):
        if s >= k:  # windows do not overlap: each input receives from one window at most
            xp.multiply(g, pos == i, out=view)
        else:
            view += g * (pos == i)
    return out


class MaxPool2d(Function):
    """Separable max pooling: the max over the k columns of every window row, then over rows.

    Taking the first maximum within each row and then the first row whose maximum is strictly
    greater picks the first maximum of the window in row-major order, like the reference. Each
    stage is k vectorised passes over strided views (no k*k loop, no gather); on channels-last
    data the row stage runs over long contiguous runs. The stages keep the position (int8) of
    their winner, and backward routes the gradient through the two stages in reverse.

    Gradients are routed by multiplying with 0/1 masks, so a non-finite gradient (inf, nan)
    also turns the other entries of its window into nan; finite gradients are exact.
    """

    def forward(self, x, kernel_size=2, stride=None):
        xp = get_array_module(x)
        k = kernel_size
        s = k if stride is None else stride
        _check(x, k, s)
        n, c, h, w = x.shape
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        xh = x.transpose(0, 2, 3, 1)  # (N, H, W, C): channels-last data is contiguous here
        row_max, self.col_pos = _running_max(_window_views(xh, 2, k, s, ow), xp)  # (N,H,OW,C)
        y, self.row_pos = _running_max(_window_views(row_max, 1, k, s, oh), xp)  # (N,OH,OW,C)
        self.shapes = ((n, h, w, c), row_max.shape)
        self.k, self.s, self.out = k, s, (oh, ow)
        return y.transpose(0, 3, 1, 2)

    def backward(self, gy):
        xp = get_array_module(gy)
        k, s = self.k, self.s
        oh, ow = self.out
        x_shape, row_shape = self.shapes
        g = gy.transpose(0, 2, 3, 1)
        g_rows = _scatter(g, self.row_pos, row_shape, 1, k, s, oh, xp)
        gx = _scatter(g_rows, self.col_pos, x_shape, 2, k, s, ow, xp)
        return gx.transpose(0, 3, 1, 2)


class MaxPool2dReference(Function):
    """Loops over output pixels; first maximum of each window gets the gradient."""

    def forward(self, x, kernel_size=2, stride=None):
        xp = get_array_module(x)
        k = kernel_size
        s = k if stride is None else stride
        _check(x, k, s)
        n, c, h, w = x.shape
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        y = xp.empty((n, c, oh, ow), dtype=x.dtype)
        self.where = xp.empty((n, c, oh, ow, 2), dtype=xp.int64)
        for p in range(oh):
            for q in range(ow):
                win = x[:, :, p * s : p * s + k, q * s : q * s + k].reshape(n, c, k * k)
                a = win.argmax(axis=-1)
                y[:, :, p, q] = win.max(axis=-1)
                self.where[:, :, p, q, 0] = p * s + a // k
                self.where[:, :, p, q, 1] = q * s + a % k
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        n, c, oh, ow = gy.shape
        ni = xp.arange(n)[:, None]
        ci = xp.arange(c)[None, :]
        for p in range(oh):
            for q in range(ow):
                r, t = self.where[:, :, p, q, 0], self.where[:, :, p, q, 1]
                gx[ni, ci, r, t] += gy[:, :, p, q]
        return gx


def max_pool2d(x, kernel_size: int = 2, stride: int | None = None):
    return MaxPool2d.apply(x, kernel_size=int(kernel_size),
                           stride=None if stride is None else int(stride))


def max_pool2d_reference(x, kernel_size: int = 2, stride: int | None = None):
    return MaxPool2dReference.apply(x, kernel_size=int(kernel_size),
                                    stride=None if stride is None else int(stride))
