"""Fast max pooling: separable (two passes over strided views), channels-last friendly.

The same function as :func:`minievo.functions.max_pool2d` (tested against it): y is the max
of each k x k window, and the gradient goes to the first maximum in row-major order. Also the
global average pool of a ResNet's head on channels-last memory (:func:`global_avg_pool2d`).
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.pool import check_pool_args


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
        oh, ow = check_pool_args(x, k, s)
        if k > 127:  # window positions are stored as int8
            raise ValueError(f"max_pool2d: the accelerated pool needs kernel_size <= 127, got {k}")
        n, c, h, w = x.shape
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


def max_pool2d(x, kernel_size: int = 2, stride: int | None = None):
    """:func:`minievo.functions.max_pool2d`, computed in two separable passes."""
    return MaxPool2d.apply(x, kernel_size=int(kernel_size),
                           stride=None if stride is None else int(stride))


class GlobalAvgPool2dNHWC(Function):
    """The mean of every channel over its pixels, on channels-last memory.

    Forward: the reference's mean over (H, W) (as fast on either layout). Backward: the
    gradient is written channels-last, so the layers below it receive it in the layout of
    their own saved arrays, without a transposing copy (the reference fills an (N, C, H, W)
    array).
    """

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"global_avg_pool2d expects input of shape (N, C, H, W), got "
                             f"{x.shape}")
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c, h, w = self.x_shape
        gx = xp.empty((n, h, w, c), dtype=gy.dtype)
        gx[...] = (gy / (h * w))[:, None, None, :]
        return gx.transpose(0, 3, 1, 2)


def global_avg_pool2d(x):
    """:func:`minievo.functions.global_avg_pool2d` on channels-last memory: (N, C, H, W) ->
    (N, C), the same values; the input gradient comes back channels-last."""
    return GlobalAvgPool2dNHWC.apply(x)
