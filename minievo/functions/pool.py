"""Max pooling, the reference version: every window as a row, its maximum and where it was.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // stride + 1 (likewise OW).

    y[n, c, p, q] = max over 0 <= i, j < k of x[n, c, p*stride + i, q*stride + j]

The gradient of a window goes to its first maximum only, in row-major order (as in Caffe and
PyTorch), so ties are not double counted. The faster two-pass version lives in
:mod:`minievo.accel` and is tested against this one.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.conv import as_strided, conv_output_size


def check_pool_args(x, k: int, stride: int) -> tuple[int, int]:
    """Raise a ValueError unless x (N, C, H, W) can be pooled; returns (OH, OW)."""
    if x.ndim != 4:
        raise ValueError(f"max_pool2d expects input of shape (N, C, H, W), got {x.shape}")
    if k < 1 or stride < 1:
        raise ValueError(f"max_pool2d: need kernel_size >= 1 and stride >= 1, got "
                         f"kernel_size {k}, stride {stride}")
    return conv_output_size(x.shape[2], k, stride, 0), conv_output_size(x.shape[3], k, stride, 0)


def pool_windows(x, k: int, stride: int):
    """The k x k windows of x (N, C, H, W) as an (N, C, OH, OW, k*k) array (one copy)."""
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, k, stride, 0), conv_output_size(w, k, stride, 0)
    sn, sc, sh, sw = x.strides
    view = as_strided(x, (n, c, oh, ow, k, k), (sn, sc, sh * stride, sw * stride, sh, sw))
    return view.reshape(n, c, oh, ow, k * k)


class MaxPool2d(Function):
    """Forward: the maximum of each window and (argmax) the position of its first maximum.

    Backward: for each offset (i, j) of the window, the windows whose maximum sat there send
    their gradient to the input pixel at that offset (one strided add per offset).
    """

    def forward(self, x, kernel_size=2, stride=None):
        k = kernel_size
        s = k if stride is None else stride
        check_pool_args(x, k, s)
        windows = pool_windows(x, k, s)
        self.argmax = windows.argmax(axis=-1)  # the first maximum, row-major in the window
        self.x_shape, self.k, self.s = x.shape, k, s
        return windows.max(axis=-1)

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
