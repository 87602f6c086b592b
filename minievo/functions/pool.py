"""Max pooling, the reference version: the maximum of every window, and where it was.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // stride + 1 (likewise OW).

    y[n, c, p, q] = max over 0 <= i, j < k of x[n, c, p*stride + i, q*stride + j]

The gradient of a window goes to its first maximum only, in row-major order (as in Caffe and
PyTorch), so ties are not double counted. The faster two-pass version lives in
:mod:`minievo.accel` and is tested against this one.

Average pooling (:func:`avg_pool2d`, :func:`global_avg_pool2d`) follows at the end of the file.
"""

from __future__ import annotations

from numbers import Integral

from minievo.autograd import Function, Tensor
from minievo.backend import get_array_module
from minievo.functions.conv import col2im, conv_output_size, im2col


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


# ----- average pooling ------------------------------------------------------------------------
# Average pooling is a convolution of each channel with a constant k x k kernel of 1/(k*k), so
# it reuses the convolution's im2col (the windows as rows) and col2im (its adjoint). Zero
# padding counts in the average: the divisor is always k*k (PyTorch's count_include_pad=True).


def check_avg_pool_args(x, kernel_size, stride, padding) -> None:
    """Raise a ValueError (TypeError for non-integers) unless x can be average-pooled."""
    if x.ndim != 4:
        raise ValueError(f"avg_pool2d expects input of shape (N, C, H, W), got {x.shape}")
    for name, v in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding)):
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise TypeError(f"avg_pool2d: {name} must be an int, got {v!r}")
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"avg_pool2d: need kernel_size >= 1 and stride >= 1, got "
                         f"kernel_size {kernel_size}, stride {stride}")
    if not 0 <= padding <= kernel_size // 2:
        # Wider padding would give windows of padding only; PyTorch refuses it too.
        raise ValueError(f"avg_pool2d: padding must lie in [0, kernel_size // 2] = "
                         f"[0, {kernel_size // 2}], got {padding}")


class AvgPool2d(Function):
    """Forward: the mean of every k x k window of the zero-padded input, per channel.

    y[n, c, p, q] = 1/(k*k) * sum over 0 <= i, j < k of x_pad[n, c, p*s + i, q*s + j]

    Backward: every window sends gy / (k*k) to each of its k*k pixels; :func:`col2im` adds
    the contributions of overlapping windows and drops those that fell on the padding.
    """

    def forward(self, x, kernel_size, stride=None, padding=0):
        k = kernel_size
        s = k if stride is None else stride
        check_avg_pool_args(x, k, s, padding)
        k, s, padding = int(k), int(s), int(padding)
        xp = get_array_module(x)
        n, c = x.shape[:2]
        cols, (oh, ow) = im2col(x, k, k, s, padding)  # (N*OH*OW, C*k*k), columns (c, i, j)
        y = cols.reshape(-1, c, k * k).mean(axis=2)  # (N*OH*OW, C)
        self.x_shape, self.args = x.shape, (k, s, padding)
        return xp.ascontiguousarray(y.reshape(n, oh, ow, c).transpose(0, 3, 1, 2))

    def backward(self, gy):
        xp = get_array_module(gy)
        k, s, padding = self.args
        c = gy.shape[1]
        g = gy.transpose(0, 2, 3, 1).reshape(-1, c, 1) / (k * k)  # (N*OH*OW, C, 1)
        # the same gradient for every pixel of a window: columns (c, i, j) as in im2col
        dcols = xp.broadcast_to(g, (g.shape[0], c, k * k)).reshape(g.shape[0], c * k * k)
        return col2im(dcols, self.x_shape, k, k, s, padding)


def avg_pool2d(x, kernel_size: int, stride: int | None = None, padding: int = 0) -> Tensor:
    """Average pooling over k x k windows, zero padding counted in every average.

    Args:
        x: input of shape (N, C, H, W).
        kernel_size: window size k.
        stride: step between windows; defaults to kernel_size.
        padding: zeros added on each side of H and W, at most kernel_size // 2.

    Returns:
        y of shape (N, C, OH, OW) with OH = (H + 2*padding - k) // stride + 1 (likewise OW),
        each value the window sum divided by k*k.

    Raises:
        ValueError: x not 4-D, kernel_size or stride < 1, padding outside
            [0, kernel_size // 2], or an empty output.
        TypeError: kernel_size, stride or padding not an int.
    """
    return AvgPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding)


class GlobalAvgPool2d(Function):
    """Forward: the mean over H and W, (N, C, H, W) -> (N, C).

    Backward: every pixel of channel c receives gy[n, c] / (H*W).
    """

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"global_avg_pool2d expects input of shape (N, C, H, W), got "
                             f"{x.shape}")
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        xp = get_array_module(gy)
        h, w = self.x_shape[2:]
        gx = xp.empty(self.x_shape, dtype=gy.dtype)
        gx[...] = (gy / (h * w))[:, :, None, None]
        return gx


def global_avg_pool2d(x) -> Tensor:
    """The mean of every channel over its H x W map: (N, C, H, W) -> (N, C).

    Raises:
        ValueError: x not 4-D.
    """
    return GlobalAvgPool2d.apply(x)
