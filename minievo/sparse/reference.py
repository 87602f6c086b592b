"""Plain NumPy references for the compact forward pass: slow, short, obviously right.

The fast CPU path (:mod:`minievo.sparse.cpu`), the CuPy RawKernels and their CPU emulation are
all tested against these. Everything here runs in float64 unless told otherwise.
"""

from __future__ import annotations

import numpy as np


def conv_output_hw(h: int, w: int, kh: int, kw: int, stride: int, padding: int) -> tuple[int, int]:
    """Output height and width of a convolution; ValueError when the output would be empty."""
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(
            f"convolution output would be empty: input {h}x{w}, kernel {kh}x{kw}, "
            f"stride {stride}, padding {padding}"
        )
    return oh, ow


def masked_conv2d(x, weight, bias, mask, stride: int = 1, padding: int = 0,
                  dtype=np.float64) -> np.ndarray:
    """Dense convolution with the masked weight: y = conv(x, weight * mask) + bias.

    Args:
        x: (N, C, H, W). weight, mask: (O, C, kh, kw). bias: (O,) or None.
    Returns:
        (N, O, OH, OW) in ``dtype``; one einsum per kernel offset.
    """
    x = np.asarray(x, dtype=dtype)
    w = np.asarray(weight, dtype=dtype) * np.asarray(mask, dtype=dtype)
    o, c, kh, kw = w.shape
    n, _, h, wd = x.shape
    oh, ow = conv_output_hw(h, wd, kh, kw, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((n, o, oh, ow), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            y += np.einsum("nchw,oc->nohw", win, w[:, :, i, j])
    if bias is not None:
        y += np.asarray(bias, dtype=dtype).reshape(1, -1, 1, 1)
    return y


def masked_linear(x, weight, bias, mask, dtype=np.float64) -> np.ndarray:
    """y = x (weight * mask)^T + bias. x (N, in), weight/mask (out, in), bias (out,) or None."""
    w = np.asarray(weight, dtype=dtype) * np.asarray(mask, dtype=dtype)
    y = np.asarray(x, dtype=dtype) @ w.T
    if bias is not None:
        y = y + np.asarray(bias, dtype=dtype)
    return y


def max_pool2d(x, kernel_size: int, stride: int | None = None) -> np.ndarray:
    """Max pooling over the last two axes (any leading axes), no padding."""
    k = int(kernel_size)
    s = k if stride is None else int(stride)
    h, w = x.shape[-2:]
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"max_pool2d: window {k} does not fit an input of {h}x{w}")
    y = None
    for i in range(k):
        for j in range(k):
            v = x[..., i : i + s * oh : s, j : j + s * ow : s]
            y = v.copy() if y is None else np.maximum(y, v)
    return y


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
