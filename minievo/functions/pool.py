"""Max pooling: a fast version for the common non-overlapping case and a plain loop reference.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // stride + 1. The gradient of a
window goes to its first maximum only (as in Caffe and PyTorch), so ties are not double counted.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.conv import conv_output_size, patches_view


def _check(x, k, stride):
    if x.ndim != 4:
        raise ValueError(f"max_pool2d expects input of shape (N, C, H, W), got {x.shape}")
    conv_output_size(x.shape[2], k, stride, 0)
    conv_output_size(x.shape[3], k, stride, 0)


class MaxPool2d(Function):
    def forward(self, x, kernel_size=2, stride=None):
        xp = get_array_module(x)
        k = kernel_size
        s = k if stride is None else stride
        _check(x, k, s)
        n, c, h, w = x.shape
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        if s == k and h == oh * k and w == ow * k:
            # Non-overlapping tiles: splitting H and W into (OH, k) and (OW, k) is a free view.
            win = x.reshape(n, c, oh, k, ow, k).transpose(0, 1, 2, 4, 3, 5)
        else:
            win = patches_view(xp.ascontiguousarray(x), k, k, s)
            win = win.transpose(0, 3, 1, 2, 4, 5)  # (N, C, OH, OW, k, k)
        win = xp.ascontiguousarray(win).reshape(n, c, oh, ow, k * k)
        self.arg = win.argmax(axis=-1)[..., None]
        self.x_shape, self.k, self.s, self.out = x.shape, k, s, (oh, ow)
        return xp.take_along_axis(win, self.arg, axis=-1)[..., 0]

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c, h, w = self.x_shape
        k, s = self.k, self.s
        oh, ow = self.out
        gwin = xp.zeros((n, c, oh, ow, k * k), dtype=gy.dtype)
        xp.put_along_axis(gwin, self.arg, gy[..., None], axis=-1)
        gwin = gwin.reshape(n, c, oh, ow, k, k)
        if s == k and h == oh * k and w == ow * k:
            return gwin.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        for i in range(k):  # overlapping windows: add each offset's share back
            for j in range(k):
                gx[:, :, i : i + s * oh : s, j : j + s * ow : s] += gwin[..., i, j]
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
