"""Max pooling, the reference version: the maximum of every window, and where it was.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // stride + 1 (likewise OW).

    y[n, c, p, q] = max over 0 <= i, j < k of x[n, c, p*stride + i, q*stride + j]

The gradient of a window goes to its first maximum only, in row-major order (as in Caffe and
PyTorch), so ties are not double counted. The faster two-pass version lives in
:mod:`minievo.accel` and is tested against this one.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.conv import conv_output_size


def check_pool_args(x, k: int, stride: int) -> tuple[int, int]:
    """Raise a ValueError unless x (N, C, H, W) can be pooled; returns (OH, OW)."""
    if x.ndim != 4:
        raise ValueError(f"max_pool2d expects input of shape (N, C, H, W), got {x.shape}")
    if k < 1 or stride < 1:
        raise ValueError(f"max_pool2d: need kernel_size >= 1 and stride >= 1, got "
                         f"kernel_size {k}, stride {stride}")
    return conv_output_size(x.shape[2], k, stride, 0), conv_output_size(x.shape[3], k, stride, 0)


def max_pool(x, k: int, stride: int):
    """The maximum of every k x k window over the last two axes of x, and where it was.

    Returns (y, argmax): y[..., p, q] = max over 0 <= i, j < k of x[..., p*s + i, q*s + j],
    and argmax[..., p, q] = i*k + j of the first maximum in row-major order. One pass per
    offset (i, j) over the strided view of the pixels at that offset of every window.
    """
    xp = get_array_module(x)
    oh = conv_output_size(x.shape[-2], k, stride, 0)
    ow = conv_output_size(x.shape[-1], k, stride, 0)
    y = argmax = None
    for i in range(k):
        for j in range(k):
            v = x[..., i : i + stride * oh : stride, j : j + stride * ow : stride]
            if y is None:
                y, argmax = v.copy(), xp.zeros(v.shape, dtype=xp.int64)
                continue
            better = v > y  # strictly greater: on a tie the earlier position stays
            y = xp.where(better, v, y)
            argmax = xp.where(better, i * k + j, argmax)
    return y, argmax


class MaxPool2d(Function):
    """Forward: the maximum of each window and (argmax) the position of its first maximum.

    Backward: for each offset (i, j) of the window, the windows whose maximum sat there send
    their gradient to the input pixel at that offset (one strided add per offset).
    """

    def forward(self, x, kernel_size=2, stride=None):
        k = kernel_size
        s = k if stride is None else stride
        check_pool_args(x, k, s)
        y, self.argmax = max_pool(x, k, s)
        self.x_shape, self.k, self.s = x.shape, k, s
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        k, s = self.k, self.s
        oh, ow = gy.shape[2:]
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        for i in range(k):
            for j in range(k):
                won = self.argmax == i * k + j
                gx[:, :, i : i + s * oh : s, j : j + s * ow : s] += xp.where(won, gy, 0)
        return gx


def max_pool2d(x, kernel_size: int = 2, stride: int | None = None):
    """Max pooling over k x k windows (stride k by default), no padding."""
    return MaxPool2d.apply(x, kernel_size=int(kernel_size),
                           stride=None if stride is None else int(stride))
