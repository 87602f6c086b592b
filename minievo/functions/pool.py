"""Max pooling: a fast version for the common non-overlapping case and a plain loop reference.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // stride + 1. The gradient of a
window goes to its first maximum only (as in Caffe and PyTorch), so ties are not double counted.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.conv import conv_output_size


def _check(x, k, stride):
    if x.ndim != 4:
        raise ValueError(f"max_pool2d expects input of shape (N, C, H, W), got {x.shape}")
    conv_output_size(x.shape[2], k, stride, 0)
    conv_output_size(x.shape[3], k, stride, 0)


class MaxPool2d(Function):
    """Running maximum over the k*k strided views x[:, :, i::s, j::s] of the windows.

    Each view is one offset (i, j) of every window at once, so the work is k*k vectorised
    comparisons. ``self.index`` keeps, per output, which offset won (first maximum on ties),
    and backward routes the gradient there. Results keep the memory layout of the input
    (channels-last data from a convolution stays channels-last).
    """

    def forward(self, x, kernel_size=2, stride=None):
        xp = get_array_module(x)
        k = kernel_size
        s = k if stride is None else stride
        _check(x, k, s)
        n, c, h, w = x.shape
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        y = index = None
        for i in range(k):
            for j in range(k):
                v = x[:, :, i : i + s * oh : s, j : j + s * ow : s]
                if y is None:
                    y = v.copy(order="K")
                    index = xp.zeros(y.shape, dtype=xp.int8)
                    continue
                better = v > y
                xp.copyto(index, i * k + j, where=better)
                xp.maximum(y, v, out=y)
        self.index, self.x, self.k, self.s, self.out = index, x, k, s, (oh, ow)
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        k, s = self.k, self.s
        oh, ow = self.out
        gx = xp.zeros_like(self.x)
        for i in range(k):
            for j in range(k):
                gx[:, :, i : i + s * oh : s, j : j + s * ow : s] += gy * (self.index == i * k + j)
        return gx


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
