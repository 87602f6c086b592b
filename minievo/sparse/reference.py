"""Plain NumPy references for the compact forward pass: slow, short, obviously right.

The fast CPU path (:mod:`minievo.sparse.cpu`), the CuPy RawKernels and their CPU emulation are
all tested against these. Everything here runs in float64 unless told otherwise.
"""

from __future__ import annotations

import numpy as np

from minievo.autograd import no_grad
from minievo.functions.conv import conv2d_reference, conv_output_size
from minievo.functions.pool import max_pool


def conv_output_hw(h: int, w: int, kh: int, kw: int, stride: int, padding: int) -> tuple[int, int]:
    """Output height and width of a convolution (:func:`~minievo.functions.conv.conv_output_size`
    on each axis); ValueError when the output would be empty."""
    return conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)


def masked_conv2d(x, weight, bias, mask, stride: int = 1, padding: int = 0,
                  dtype=np.float64) -> np.ndarray:
    """Dense convolution with the masked weight: y = conv(x, weight * mask) + bias.

    Args:
        x: (N, C, H, W). weight, mask: (O, C, kh, kw). bias: (O,) or None.
    Returns:
        (N, O, OH, OW) in ``dtype``; one einsum per kernel offset
        (:class:`minievo.functions.conv.Conv2dReference`).
    """
    w = np.asarray(weight, dtype=dtype) * np.asarray(mask, dtype=dtype)
    b = None if bias is None else np.asarray(bias, dtype=dtype)
    with no_grad():  # the loop convolution of minievo.functions, on plain arrays
        return conv2d_reference(np.asarray(x, dtype=dtype), w, b, stride, padding).data


def masked_linear(x, weight, bias, mask, dtype=np.float64) -> np.ndarray:
    """y = x (weight * mask)^T + bias. x (N, in), weight/mask (out, in), bias (out,) or None."""
    w = np.asarray(weight, dtype=dtype) * np.asarray(mask, dtype=dtype)
    y = np.asarray(x, dtype=dtype) @ w.T
    if bias is not None:
        y = y + np.asarray(bias, dtype=dtype)
    return y


def max_pool2d(x, kernel_size: int, stride: int | None = None) -> np.ndarray:
    """Max pooling over the last two axes (any leading axes), no padding: the values of
    :func:`minievo.functions.pool.max_pool`."""
    k = int(kernel_size)
    return max_pool(x, k, k if stride is None else int(stride))[0]


def row_pointers(rows: np.ndarray, count: int) -> np.ndarray:
    """int32 CSR row pointers (count + 1,) of entries sorted by ``rows`` (values 0 .. count - 1):
    row r owns entries ptr[r] .. ptr[r + 1] - 1."""
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=count))]).astype(np.int32)


def relu(x) -> np.ndarray:
    return np.maximum(x, 0)


def kernel_csr(weight, mask):
    """CSR over (output map, input map) kernel pairs of a masked conv weight.

    A kernel (o, i) is live when any of its kh*kw mask entries is 1.

    Returns:
        indptr (O+1,) int32, indices (nnz,) int32 (input maps), kernels (nnz, kh, kw) float32
        holding weight * mask.
    """
    # BEGIN SOLUTION task 7.1
    w = np.asarray(weight, dtype=np.float32) * (np.asarray(mask) != 0)
    o, c, kh, kw = w.shape
    live = (np.asarray(mask) != 0).reshape(o, c, kh * kw).any(axis=2)
    rows, cols = np.nonzero(live)  # row-major: sorted by o, then i
    kernels = np.ascontiguousarray(w[rows, cols], dtype=np.float32)
    return row_pointers(rows, o), cols.astype(np.int32), kernels
    # END SOLUTION


def csr_conv2d(x, indptr, indices, kernels, bias, stride: int = 1, padding: int = 0,
               out_channels: int | None = None) -> np.ndarray:
    """The cluster-sparse convolution written as the GPU kernel computes it, in float64.

    ``y[n, o] = bias[o] + sum over k in row o of conv(x[n, indices[k]], kernels[k])``; a Python
    loop over live kernels (the definition the RawKernel and the fast CPU path must match).
    """
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    o = len(indptr) - 1 if out_channels is None else out_channels
    kh, kw = kernels.shape[1:]
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((n, o, oh, ow))
    y += np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
    for row in range(o):
        for k in range(indptr[row], indptr[row + 1]):
            ch = indices[k]
            for i in range(kh):
                for j in range(kw):
                    win = xp[:, ch, i : i + stride * oh : stride, j : j + stride * ow : stride]
                    y[:, row] += float(kernels[k, i, j]) * win
    return y


def csr_linear(x, indptr, indices, values, bias) -> np.ndarray:
    """y[n, o] = bias[o] + sum_k values[k] x[n, indices[k]] over row o, in float64."""
    x = np.asarray(x, dtype=np.float64)
    o = len(indptr) - 1
    y = np.tile(np.asarray(bias, dtype=np.float64), (x.shape[0], 1))
    for row in range(o):
        sl = slice(indptr[row], indptr[row + 1])
        y[:, row] += x[:, indices[sl]] @ np.asarray(values[sl], dtype=np.float64)
    return y
