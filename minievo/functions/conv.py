"""2-D convolution: im2col + one matrix product, and a plain loop version to check it against.

Shapes: input x (N, C, H, W), weight (O, C, kh, kw), bias (O,), output (N, O, OH, OW) with
OH = (H + 2*padding - kh) // stride + 1 (likewise OW).

im2col turns the convolution into one matrix product. Every output position (n, oh, ow) reads a
C*kh*kw patch of the input; lay those patches out as the rows of a matrix ``cols`` of shape
(N*OH*OW, C*kh*kw), columns in the order (c, i, j), and the convolution is ``cols @ W_mat.T``
with W_mat = weight.reshape(O, C*kh*kw), the same order. The patches are taken as a strided
*view* of the padded input (no copy) and copied once into the contiguous ``cols``.

This is the reference path: plain NCHW arrays, nothing else. The faster channels-last version
lives in :mod:`minievo.accel` and is tested against this one.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module


def conv_output_size(size: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution (or pooling) along one axis; raises if it would be empty.

    out = (size + 2*padding - k) // stride + 1
    """
    out = (size + 2 * padding - k) // stride + 1
    if out < 1:
        raise ValueError(
            f"convolution output would be empty: input {size}, kernel {k}, stride {stride}, "
            f"padding {padding}"
        )
    return out


def as_strided(x, shape, strides):
    """A view of ``x`` with the given shape and byte strides (NumPy or CuPy): no copy."""
    if get_array_module(x).__name__ == "cupy":
        from cupy.lib.stride_tricks import as_strided as strided
    else:
        from numpy.lib.stride_tricks import as_strided as strided
    return strided(x, shape=shape, strides=strides)


def pad2d(x, padding: int):
    """Zero-pad the two spatial axes of an (N, C, H, W) array."""
    if padding == 0:
        return x
    xp = get_array_module(x)
    p = padding
    return xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def im2col(x, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """The patches of x (N, C, H, W) as the rows of a matrix, and the output size (OH, OW).

    Returns ``cols`` of shape (N*OH*OW, C*kh*kw): row (n, oh, ow) (row-major) holds the patch
    x_pad[n, :, oh*stride : oh*stride + kh, ow*stride : ow*stride + kw], its columns in the
    order (c, i, j) (row-major), so that ``cols @ w.reshape(O, -1).T`` is the convolution as an
    (N*OH*OW, O) matrix.
    """
    # BEGIN SOLUTION task 4.1
    n, c, h, w = x.shape
    oh = conv_output_size(h, kh, stride, padding)
    ow = conv_output_size(w, kw, stride, padding)
    xpad = get_array_module(x).ascontiguousarray(pad2d(x, padding))
    sn, sc, sh, sw = xpad.strides
    # view[n, oh, ow, c, i, j] = xpad[n, c, oh*stride + i, ow*stride + j]
    view = as_strided(xpad, (n, oh, ow, c, kh, kw), (sn, sh * stride, sw * stride, sc, sh, sw))
    return view.reshape(n * oh * ow, c * kh * kw), (oh, ow)  # the reshape makes the one copy
    # END SOLUTION


def col2im(dcols, x_shape, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """The adjoint of :func:`im2col`: add every patch gradient back onto the pixels it read.

    ``dcols`` has im2col's shape and order, (N*OH*OW, C*kh*kw); returns dx of shape x_shape =
    (N, C, H, W). A pixel read by several patches receives the sum of their entries, so that
    <im2col(x), D> = <x, col2im(D)> for every x and D.
    """
    # BEGIN SOLUTION task 4.2
    xp = get_array_module(dcols)
    n, c, h, w = x_shape
    oh = conv_output_size(h, kh, stride, padding)
    ow = conv_output_size(w, kw, stride, padding)
    d = dcols.reshape(n, oh, ow, c, kh, kw)
    dx = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=dcols.dtype)
    for i in range(kh):  # one strided add per kernel offset (i, j)
        for j in range(kw):
            dx[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += (
                d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
            )
    return dx[:, :, padding : padding + h, padding : padding + w]
    # END SOLUTION


def check_conv_args(x, w, b) -> None:
    """Raise a ValueError naming the shapes when x, w, b cannot be convolved."""
    if x.ndim != 4:
        raise ValueError(f"conv2d expects input of shape (N, C, H, W), got {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"conv2d expects weight of shape (O, C, kh, kw), got {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: input has {x.shape[1]} channels but the weight expects {w.shape[1]} "
            f"(input {x.shape}, weight {w.shape})"
        )
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"conv2d: bias shape {b.shape} does not match {w.shape[0]} filters")


class Conv2d(Function):
    """Convolution as im2col and one GEMM; the backward reuses the saved ``cols``.

    Forward: Y = cols W_mat^T + b, with W_mat = w.reshape(O, C*kh*kw).
    Backward, with G the output gradient as an (N*OH*OW, O) matrix:

    * weight: dW_mat = G^T cols;
    * bias: the column sums of G;
    * input: the patch gradients G W_mat, added back onto the input by :func:`col2im`.
    """

    def forward(self, x, w, b=None, stride=1, padding=0):
        check_conv_args(x, w, b)
        xp = get_array_module(x)
        n = x.shape[0]
        o, _, kh, kw = w.shape
        cols, (oh, ow) = im2col(x, kh, kw, stride, padding)
        w_mat = w.reshape(o, -1)
        y = cols @ w_mat.T  # (N*OH*OW, O)
        if b is not None:
            y += b
        self.cols, self.w_mat, self.w_shape, self.x_shape = cols, w_mat, w.shape, x.shape
        self.args = (kh, kw, stride, padding)
        self.has_bias = b is not None
        return xp.ascontiguousarray(y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))

    def backward(self, gy):
        kh, kw, stride, padding = self.args
        o = self.w_shape[0]
        g = gy.transpose(0, 2, 3, 1).reshape(-1, o)  # (N*OH*OW, O), rows (n, oh, ow)
        gx = gw = gb = None
        if self.needs_grad[1]:
            gw = (g.T @ self.cols).reshape(self.w_shape)
        if self.has_bias and self.needs_grad[2]:
            gb = g.sum(axis=0)
        if self.needs_grad[0]:
            gx = col2im(g @ self.w_mat, self.x_shape, kh, kw, stride, padding)
        return (gx, gw, gb) if self.has_bias else (gx, gw)


class Conv2dReference(Function):
    """The same convolution as plain loops over the kernel offsets (for tests and chapters).

    y[n, o, p, q] = b[o] + sum_{c, i, j} x_pad[n, c, p*s + i, q*s + j] * w[o, c, i, j]
    """

    def forward(self, x, w, b=None, stride=1, padding=0):
        check_conv_args(x, w, b)
        xp = get_array_module(x)
        o, c, kh, kw = w.shape
        xpad = pad2d(x, padding)
        oh = conv_output_size(x.shape[2], kh, stride, padding)
        ow = conv_output_size(x.shape[3], kw, stride, padding)
        y = xp.zeros((x.shape[0], o, oh, ow), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                window = xpad[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
                y += xp.einsum("nchw,oc->nohw", window, w[:, :, i, j])
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.xpad, self.w, self.args = xpad, w, (stride, padding, oh, ow)
        self.has_bias = b is not None
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        stride, padding, oh, ow = self.args
        o, c, kh, kw = self.w.shape
        gw = xp.zeros_like(self.w)
        gxpad = xp.zeros_like(self.xpad)
        for i in range(kh):
            for j in range(kw):
                sl = (slice(None), slice(None), slice(i, i + stride * oh, stride),
                      slice(j, j + stride * ow, stride))
                gw[:, :, i, j] = xp.einsum("nohw,nchw->oc", gy, self.xpad[sl])
                gxpad[sl] += xp.einsum("nohw,oc->nchw", gy, self.w[:, :, i, j])
        gx = gxpad[:, :, padding:-padding, padding:-padding] if padding else gxpad
        gb = gy.sum(axis=(0, 2, 3))
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0):
    """2-D convolution (cross-correlation, as in every DL framework) via im2col + GEMM."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return Conv2d.apply(*args, stride=int(stride), padding=int(padding))


def conv2d_reference(x, weight, bias=None, stride: int = 1, padding: int = 0):
    """Loop version of :func:`conv2d` with the same signature and result."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return Conv2dReference.apply(*args, stride=int(stride), padding=int(padding))
