"""Fast convolution: the im2col of :mod:`minievo.functions.conv`, laid out channels-last.

Same operation, same results (tested against the reference), different memory layout.
Activations live *channels-last* in memory, (N, H, W, C), and are handed around as (N, C, H, W)
views of it. Then

* a patch row (i, j, c) of ``cols`` is kw*C consecutive floats of the input per kernel row, so
  the im2col copy moves long runs instead of single floats;
* the GEMM result (N*OH*OW, O) already *is* the channels-last output: no transposing copy;
* the backward pass gets its gradient in the same layout from the max-pool or the batch norm
  above it (:mod:`minievo.accel.pool`, :mod:`minievo.accel.norm`).
"""

from __future__ import annotations

import numpy as np

from minievo.autograd import Function
from minievo.backend import get_array_module
from minievo.functions.conv import as_strided, check_conv_args, conv_output_size


def channels_last(x):
    """x (N, C, H, W) as a C-contiguous (N, H, W, C) array (free when already laid out so)."""
    xp = get_array_module(x)
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1))


def im2col_nhwc(x, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """Patches of x (N, C, H, W) as rows: an (N*OH*OW, kh*kw*C) matrix, and (OH, OW).

    The columns run over (i, j, c) with the channel fastest. Built with one contiguous copy of
    a strided view; for a single input channel (the first layer) the copy would move runs of
    only kw floats, so the matrix is then built transposed, (kh*kw, N*OH*OW), in runs of OW
    floats, and returned as its transposed view: a valid (N*OH*OW, kh*kw) matrix in Fortran
    order, which BLAS multiplies without a copy.
    """
    xp = get_array_module(x)
    oh = conv_output_size(x.shape[2], kh, stride, padding)
    ow = conv_output_size(x.shape[3], kw, stride, padding)
    xh = channels_last(x)
    if padding:
        p = padding
        xh = xp.pad(xh, ((0, 0), (p, p), (p, p), (0, 0)))
    n, hp, wp, c = xh.shape
    sn, sh, sw, sc = xh.strides
    if c == 1 and stride == 1 and ow > kw:
        view = as_strided(xh, (kh, kw, n, oh, ow), (sh, sw, sn, sh, sw))
        return xp.ascontiguousarray(view).reshape(kh * kw, n * oh * ow).T, (oh, ow)
    view = as_strided(xh, (n, oh, ow, kh, kw, c), (sn, sh * stride, sw * stride, sh, sw, sc))
    return xp.ascontiguousarray(view).reshape(n * oh * ow, kh * kw * c), (oh, ow)


def col2im_nhwc(dcols, x_shape, kh: int, kw: int, stride: int, padding: int, oh: int, ow: int):
    """The adjoint of :func:`im2col_nhwc`: add every patch gradient back onto its input pixels.

    ``dcols`` has shape (N, OH, OW, kh, kw, C) (any strides). One strided add per kernel offset
    (i, j). Returns the (N, C, H, W) gradient as a view of channels-last memory.
    """
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


def add_bias_rows(y, b) -> None:
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


#: Rows per block of the weight-gradient product when NumPy's BLAS runs one thread.
WGRAD_ROWS = 512

_blas = []  # [threadpoolctl's controller of NumPy's BLAS, or None], filled on first use


def blas_threads() -> int | None:
    """The threads NumPy's BLAS uses now (threadpoolctl), or None when that cannot be told."""
    if not _blas:
        try:
            from threadpoolctl import ThreadpoolController

            libs = [lib for lib in ThreadpoolController().lib_controllers
                    if lib.user_api == "blas"]
            # NumPy's own library first (SciPy may load a second one)
            libs.sort(key=lambda lib: "numpy" not in str(lib.filepath).lower())
            _blas.append(libs[0] if libs else None)
        except Exception:  # a missing or broken threadpoolctl: no blocking, nothing else
            _blas.append(None)
    try:
        return int(_blas[0].get_num_threads()) if _blas[0] is not None else None
    except Exception:
        return None


def _cols_t_times(cols, g):
    """cols^T g, (K, O): the weight gradient's product.

    With one BLAS thread it is summed over blocks of :data:`WGRAD_ROWS` rows of a
    C-contiguous NumPy ``cols``. Measured with OpenBLAS 0.3.31 (Haswell kernels), one thread,
    CPU time on a shared machine: ResNet-20's 32-channel layers (32768 x 288 cols) 38 ms in
    one product, 23 ms in blocks; LeNet-5 conv2 15 against 7.6 ms; no change at 16 and 64
    channels. With two threads every block pays for waking the other thread (measured
    slower), so the product is then one call.
    """
    rows = WGRAD_ROWS
    if (cols.shape[0] <= 2 * rows or not isinstance(cols, np.ndarray)
            or not cols.flags.c_contiguous or blas_threads() != 1):
        return cols.T @ g
    out = cols[:rows].T @ g[:rows]
    for s in range(rows, cols.shape[0], rows):
        out += cols[s : s + rows].T @ g[s : s + rows]
    return out


class Conv2dNHWC(Function):
    """Convolution via channels-last im2col and one GEMM; the backward reuses ``cols``.

    Backward, with gy as the matrix G (N*OH*OW, O) (free: gy is channels-last in memory):

    * weight: dW_mat = G^T cols, one GEMM. For a convolution whose output is as large as its
      input (stride 1, the 3x3 padding-1 layers of a ResNet) it is computed as
      dW_mat^T = cols^T G, (kh*kw*C, O), in row blocks with one BLAS thread
      (:func:`_cols_t_times`): the same sums in another order, which OpenBLAS runs faster when
      O is small (measured, one thread: ResNet-20's 16-channel layers 62 -> 40 ms). The other
      convolutions (LeNet-5's, a strided projection) keep the single G^T cols product, so
      their rounding, and the committed paper-mnist tables, stay as they were (the reordered
      product changes LeNet-5's last bits);
    * bias: the column sums of G;
    * input, stride 1 and an output as large as the input (the 3x3, padding-1 convolutions of
      a ResNet): the transposed convolution, i.e. the im2col of gy zero-padded by
      k - 1 - padding times the flipped kernels, (N*H*W, kh*kw*O) @ (kh*kw*O, C). One im2col
      copy and one GEMM replace the patch gradients and col2im's kh*kw strided adds (measured,
      one thread, ResNet-20 16-channel layer: 54 ms against 76 ms);
    * input, otherwise: the patch gradients G W_mat, added back by :func:`col2im_nhwc`. They
      are computed as one batched GEMM per kernel offset, (kh*kw, N*OH*OW, C), rather than one
      (N*OH*OW, kh*kw*C) product: then each of col2im's kh*kw strided adds reads contiguous
      runs of OW*C floats instead of runs of C (measured on LeNet-5 conv2: 2.7 ms against
      4.6 ms). When the output is smaller than the input (LeNet-5: no padding) this does less
      work than the transposed convolution, whose im2col spans every input pixel.
    """

    def forward(self, x, w, b=None, stride=1, padding=0):
        check_conv_args(x, w, b)
        n = x.shape[0]
        o, c, kh, kw = w.shape
        cols, (oh, ow) = im2col_nhwc(x, kh, kw, stride, padding)
        w_mat = w.transpose(0, 2, 3, 1).reshape(o, -1)  # (O, kh*kw*C), matching the columns
        y = cols @ w_mat.T  # (N*OH*OW, O)
        if b is not None:
            add_bias_rows(y, b)
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
        same = stride == 1 and (oh, ow) == tuple(self.x_shape[2:])
        if self.needs_grad[1] and same:
            gw = _cols_t_times(self.cols, gy_mat).reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
            gw = xp.ascontiguousarray(gw)  # (O, C, kh, kw) like the weight
        elif self.needs_grad[1]:
            gw = (gy_mat.T @ self.cols).reshape(o, kh, kw, c).transpose(0, 3, 1, 2)
            gw = xp.ascontiguousarray(gw)
        if self.has_bias and self.needs_grad[2]:
            # Column sums as a GEMV: sum(axis=0) over 36864 short rows is 15x slower.
            gb = xp.ones(gy_mat.shape[0], dtype=gy_mat.dtype) @ gy_mat
        if self.needs_grad[0] and same:
            gx = self._input_grad_transposed(gy)
        elif self.needs_grad[0]:
            n = self.x_shape[0]
            w_per_offset = self.w_mat.reshape(o, kh * kw, c).transpose(1, 0, 2)  # (kh*kw, O, C)
            d = xp.matmul(gy_mat, w_per_offset)  # (kh*kw, N*OH*OW, C)
            dcols = d.reshape(kh, kw, n, oh, ow, c).transpose(2, 3, 4, 0, 1, 5)
            gx = col2im_nhwc(dcols, self.x_shape, kh, kw, stride, padding, oh, ow)
        return (gx, gw, gb) if self.has_bias else (gx, gw)

    def _input_grad_transposed(self, gy):
        """gx (N, C, H, W), channels-last memory, as the stride-1 convolution of gy with the
        flipped kernels: gx[c] = sum over (o, i, j) of w[o, c, kh-1-i, kw-1-j] * gy_pad[o].
        Here (output as large as the input) kh = kw = 2*padding + 1, and gy is padded by
        kh - 1 - padding = padding."""
        kh, kw, _, padding, _, _ = self.args
        o, c = self.w_shape[0], self.w_shape[1]
        n, _, h, w = self.x_shape
        # w_mat (O, kh*kw*C) has columns (i, j, c): flip i and j, then rows (i, j, o), cols c
        w_flip = self.w_mat.reshape(o, kh, kw, c)[:, ::-1, ::-1, :].transpose(1, 2, 0, 3)
        w_flip = w_flip.reshape(kh * kw * o, c)
        cols, _ = im2col_nhwc(gy, kh, kw, 1, kh - 1 - padding)  # (N*H*W, kh*kw*O)
        return (cols @ w_flip).reshape(n, h, w, c).transpose(0, 3, 1, 2)


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0):
    """:func:`minievo.functions.conv2d` in channels-last memory (same signature and result)."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return Conv2dNHWC.apply(*args, stride=int(stride), padding=int(padding))
