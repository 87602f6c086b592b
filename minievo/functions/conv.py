"""2-D convolution: a fast im2col version and a plain loop version to check it against.

Shapes: input x (N, C, H, W), weight (O, C, kh, kw), bias (O,), output (N, O, OH, OW) with
OH = (H + 2*padding - kh) // stride + 1 (likewise OW).

im2col turns the convolution into one matrix product. Every output position (n, oh, ow) reads a
kh*kw*C patch of the input; lay those patches out as the rows of a matrix ``cols`` of shape
(N*OH*OW, kh*kw*C) and the convolution is ``cols @ W_mat.T`` with W_mat the weight as an
(O, kh*kw*C) matrix. The patches are taken as a strided *view* of the padded input (no copy)
and copied once into the contiguous ``cols`` that the matrix product wants.

Memory layout (why the fast path is fast): activations live *channels-last* in memory, (N, H, W,
C), and are handed around as (N, C, H, W) views of it. Then

* a patch row (i, j, c) of ``cols`` is kw*C consecutive floats of the input per kernel row, so
  the im2col copy moves long runs instead of single floats;
* the GEMM result (N*OH*OW, O) already *is* the channels-last output: no transposing copy;
* the backward pass gets its gradient in the same layout from the max-pool above it.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module


def conv_output_size(size: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution (or pooling) along one axis; raises if it would be empty."""
    out = (size + 2 * padding - k) // stride + 1
    if out < 1:
        raise ValueError(
            f"convolution output would be empty: input {size}, kernel {k}, stride {stride}, "
            f"padding {padding}"
        )
    return out


def _as_strided(xp, x, shape, strides):
    if xp.__name__ == "cupy":
        from cupy.lib.stride_tricks import as_strided
    else:
        from numpy.lib.stride_tricks import as_strided
    return as_strided(x, shape=shape, strides=strides)


def pad2d(x, padding: int):
    """Zero-pad the two spatial axes of an (N, C, H, W) array."""
    if padding == 0:
        return x
    xp = get_array_module(x)
    p = padding
    return xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def patches_view(x_padded, kh: int, kw: int, stride: int):
    """A (N, OH, OW, C, kh, kw) strided view: [n, oh, ow] is the patch under output (oh, ow).

    ``x_padded`` is (N, C, H, W) with any strides. No data is copied; the view steps through
    the input ``stride`` pixels per output pixel.
    """
    xp = get_array_module(x_padded)
    n, c, h, w = x_padded.shape
    oh = (h - kh) // stride + 1
    ow = (w - kw) // stride + 1
    sn, sc, sh, sw = x_padded.strides
    return _as_strided(
        xp, x_padded, (n, oh, ow, c, kh, kw), (sn, sh * stride, sw * stride, sc, sh, sw)
    )


def _channels_last(x):
    """x (N, C, H, W) as a C-contiguous (N, H, W, C) array (free when already laid out so)."""
    xp = get_array_module(x)
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1))


def im2col(x, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """Patches of x (N, C, H, W) as rows: an (N*OH*OW, kh*kw*C) matrix, and (OH, OW).

    The columns run over (i, j, c) with the channel fastest. Built with one contiguous copy of
    a strided view; for a single input channel (the first layer) the copy would move runs of
    only kw floats, so the matrix is then built transposed, (kh*kw, N*OH*OW), in runs of OW
    floats, and returned as its transposed view: a valid (N*OH*OW, kh*kw) matrix in Fortran
    order, which BLAS multiplies without a copy.
    """
    # BEGIN SOLUTION task 4.1
    xp = get_array_module(x)
    xh = _channels_last(x)
    if padding:
        p = padding
        xh = xp.pad(xh, ((0, 0), (p, p), (p, p), (0, 0)))
    n, hp, wp, c = xh.shape
    oh = (hp - kh) // stride + 1
    ow = (wp - kw) // stride + 1
    sn, sh, sw, sc = xh.strides
    if c == 1 and stride == 1 and ow > kw:
        view = _as_strided(xp, xh, (kh, kw, n, oh, ow), (sh, sw, sn, sh, sw))
        return xp.ascontiguousarray(view).reshape(kh * kw, n * oh * ow).T, (oh, ow)
    view = _as_strided(xp, xh, (n, oh, ow, kh, kw, c),
                       (sn, sh * stride, sw * stride, sh, sw, sc))
    return xp.ascontiguousarray(view).reshape(n * oh * ow, kh * kw * c), (oh, ow)
    # END SOLUTION


def col2im(dcols, x_shape, kh: int, kw: int, stride: int, padding: int, oh: int, ow: int):
    """The adjoint of im2col: add every patch gradient back onto the input positions it read.

    ``dcols`` has shape (N, OH, OW, kh, kw, C) (any strides). One strided add per kernel offset
    (i, j): kh*kw vectorised adds instead of a loop over output pixels. Returns the (N, C, H, W)
    gradient as a view of channels-last memory.
    """
    # BEGIN SOLUTION task 4.2
    xp = get_array_module(dcols)
    n, c, h, w = x_shape
    hp, wp = h + 2 * padding, w + 2 * padding
    dx = xp.zeros((n, hp, wp, c), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :] += dcols[
                :, :, :, i, j, :
            ]
    if padding:
        dx = dx[:, padding:-padding, padding:-padding, :]
    return dx.transpose(0, 3, 1, 2)
    # END SOLUTION


def _add_bias_rows(y, b):
    """y (R, O) += b (O,), in place.

    With few channels (20 in LeNet's conv1) a plain ``y += b`` runs NumPy's inner loop over
    only O floats per row; viewing y as (R/m, m*O) against b tiled m times gives the same sums
    in longer runs (measured 0.46 -> 0.22 ms on LeNet-5 conv1, batch 64).
    """
    xp = get_array_module(y)
    r, o = y.shape
    m = 1
    while r % (2 * m) == 0 and 2 * m * o <= 1024:
        m *= 2
    y.reshape(r // m, m * o)[...] += xp.tile(b, m)


def _check_conv_args(x, w, b):
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
    """Convolution via im2col and one GEMM; the backward reuses the saved ``cols``.

    Backward, with gy as the matrix G (N*OH*OW, O) (free: gy is channels-last in memory):

    * weight: dW_mat = G^T cols, one GEMM;
    * bias: the column sums of G;
    * input: the patch gradients G W_mat, added back by :func:`col2im`. They are computed as
      one batched GEMM per kernel offset, (kh*kw, N*OH*OW, C), rather than one (N*OH*OW,
      kh*kw*C) product: then each of col2im's kh*kw strided adds reads contiguous runs of
      OW*C floats instead of runs of C (measured on LeNet-5 conv2: 2.7 ms against 4.6 ms).
    """

    def forward(self, x, w, b=None, stride=1, padding=0):
        _check_conv_args(x, w, b)
        n, _, h, wd = x.shape
        o, c, kh, kw = w.shape
        conv_output_size(h, kh, stride, padding)
        conv_output_size(wd, kw, stride, padding)
        cols, (oh, ow) = im2col(x, kh, kw, stride, padding)
        w_mat = w.transpose(0, 2, 3, 1).reshape(o, -1)  # (O, kh*kw*C), matching the columns
        y = cols @ w_mat.T  # (N*OH*OW, O)
        if b is not None:
            _add_bias_rows(y, b)
        self.cols, self.w_mat, self.w_shape, self.x_shape = cols, w_mat, w.shape, x.shape
        self.args = (kh, kw, stride, padding, oh, ow)
        self.has_bias = b is not None
        # NHWC in memory, returned as an NCHW view: no transposing copy on the way out.
        return y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)

    def backward(self, gy):
        xp = get_array_module(gy)
        kh, kw, stride, padding, oh, ow = self.args
        o, c = self.w_shape[0], self.w_shape[1]
        gy_mat = gy.transpose(0, 2, 3, 1).reshape(-1, o)  # (N*OH*OW, O)
        gx = gw = gb = None
        if self.needs_grad[1]:
            gw = (gy_mat.T @ self.cols).reshape(o, kh, kw, c).transpose(0, 3, 1, 2)
            gw = xp.ascontiguousarray(gw)  # (O, C, kh, kw) like the weight
        if self.has_bias and self.needs_grad[2]:
            # Column sums as a GEMV: sum(axis=0) over 36864 short rows is 15x slower.
            gb = xp.ones(gy_mat.shape[0], dtype=gy_mat.dtype) @ gy_mat
        if self.needs_grad[0]:
            n = self.x_shape[0]
            w_per_offset = self.w_mat.reshape(o, kh * kw, c).transpose(1, 0, 2)  # (kh*kw, O, C)
            d = xp.matmul(gy_mat, w_per_offset)  # (kh*kw, N*OH*OW, C)
            dcols = d.reshape(kh, kw, n, oh, ow, c).transpose(2, 3, 4, 0, 1, 5)
            gx = col2im(dcols, self.x_shape, kh, kw, stride, padding, oh, ow)
        return (gx, gw, gb) if self.has_bias else (gx, gw)


class Conv2dReference(Function):
    """The same convolution as plain loops over the kernel offsets (for tests and chapters).

    y[n, o, p, q] = b[o] + sum_{c, i, j} x_pad[n, c, p*s + i, q*s + j] * w[o, c, i, j]
    """

    def forward(self, x, w, b=None, stride=1, padding=0):
        _check_conv_args(x, w, b)
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
