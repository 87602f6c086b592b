"""Launching the cluster-sparse RawKernels: argument checks, launch shapes, int32 sizes.

The functions here take the kernel to launch as an argument: a ``cupy.RawKernel`` (from
:func:`minievo.kernels.get_kernel`) with CuPy arrays on a GPU, or an
:class:`~minievo.kernels.emulate.EmulatedKernel` with NumPy arrays in the tests. Both are
called the same way, ``kernel(grid, block, args)``, so the tests exercise this very code.

Input rules, checked before every launch (a wrong array is never read as garbage):

* dtype: activations, weights and biases must be float32 and index arrays int32; anything else
  raises TypeError naming the array and the fix (``x.astype(xp.float32)``). Nothing is
  converted silently: a float64 input would lose precision unnoticed.
* layout: the convolution reads each H x W image plane as a contiguous block and steps between
  images and channels with the array's own strides, so NCHW arrays and their channel-major
  transposes (C, N, H, W) are used in place. An array whose planes are not contiguous (a
  sliced or flipped view) is copied with ``ascontiguousarray`` first. The linear kernel reads
  any 2-D strides. Index and weight arrays are made contiguous.
* sizes: every size, stride and index must fit a 32-bit int (they are passed as numpy.int32);
  larger inputs raise ValueError asking for smaller batches.
* shapes: the channel count of x must match the layer, the CSR arrays must agree with each
  other; mismatches raise ValueError with the shapes in the message.
* CSR values: ``indptr`` must start at 0, never decrease and end at the number of indices, and
  every index must name an existing input map or feature (one reduction and one host read,
  on the device for CuPy arrays; ``csr_checked=True`` skips it for arrays checked once
  already, as the compact layers do at ``.to('cupy')``). A wrong device ``indptr`` would
  otherwise read past the weights.
* device: every CuPy array must live on the current device (``cupy.cuda.Device()``); a launch
  on one GPU with arrays of another would read foreign memory.
"""

from __future__ import annotations

import numpy as np

from minievo.backend import get_array_module
from minievo.sparse.reference import conv_output_hw

CONV_FILE, CONV_KERNEL = "sparse_conv2d.cu", "cluster_sparse_conv2d_forward"
LINEAR_FILE, LINEAR_KERNEL = "sparse_linear.cu", "csr_linear_forward"

#: Must equal MINIEVO_CONV_TILE_FLOATS in sparse_conv2d.cu: the largest kh*kw staged in
#: shared memory.
CONV_TILE_FLOATS = 2048

INT32_MAX = np.iinfo(np.int32).max


def _i32(value: int, what: str) -> np.int32:
    value = int(value)
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"{what} = {value} does not fit a 32-bit int; use smaller batches")
    return np.int32(value)


def _check_float32(name: str, a) -> None:
    if a.dtype != np.float32:
        raise TypeError(
            f"{name} must be float32 for the sparse kernels, got {a.dtype}; convert it first, "
            f"e.g. {name}.astype(xp.float32)"
        )


def _check_int32(name: str, a) -> None:
    if a.dtype != np.int32:
        raise TypeError(f"{name} must be int32, got {a.dtype}")


def _contiguous(xp, a):
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def csr_errors(indptr, indices, cols: int | None = None):
    """Counts of the ways CSR arrays can be wrong, in one small array of 4 ints, computed where
    the arrays live (NumPy or CuPy; no host read here): [indptr[0] != 0, indptr[-1] != nnz,
    decreasing steps of indptr, indices outside [0, cols) (0 when ``cols`` is None)]."""
    xp = get_array_module(indptr, indices)
    nnz = indices.shape[0]
    first, last = indptr[:1], indptr[-1:]
    out_of_range = ((indices < 0) | (indices >= cols)).sum() if cols is not None else 0
    return xp.stack([
        (first != 0).sum(), (last != nnz).sum(), (indptr[1:] < indptr[:-1]).sum(),
        xp.asarray(out_of_range).astype(xp.int64).reshape(()),
    ]).astype(xp.int64)


def check_csr(indptr, indices, rows: int, name: str = "weight", cols: int | None = None,
              values: bool = True) -> None:
    """Checks of CSR arrays: shapes (indptr (rows+1,), indices 1-D), and unless ``values`` is
    False their values (:func:`csr_errors`: one host read, also for CuPy arrays)."""
    if indptr.ndim != 1 or indptr.shape[0] != rows + 1:
        raise ValueError(f"{name}: indptr has shape {indptr.shape}, expected ({rows + 1},)")
    if indices.ndim != 1:
        raise ValueError(f"{name}: indices must be 1-D, got shape {indices.shape}")
    if not values:
        return
    start, end, decreasing, outside = (int(v) for v in csr_errors(indptr, indices, cols).tolist())
    if start or end or decreasing:
        raise ValueError(
            f"{name}: indptr must start at 0, never decrease and end at the number of "
            f"indices ({indices.shape[0]}); got start {int(indptr[0])}, end {int(indptr[-1])}, "
            f"{decreasing} decreasing step(s)"
        )
    if outside:
        raise ValueError(f"{name}: {outside} index(es) outside [0, {cols})")


def check_same_device(arrays: dict, current: int) -> None:
    """Refuse a launch whose CuPy arrays do not all live on device ``current``: ``arrays``
    maps names to arrays; NumPy arrays (no device id) are ignored."""
    for name, a in arrays.items():
        dev = getattr(getattr(a, "device", None), "id", None)
        if dev is not None and dev != current:
            raise ValueError(
                f"{name} lives on GPU {dev} but the current device is GPU {current}; launch "
                f"inside `with cupy.cuda.Device({dev}):` or move the arrays (model.to('cupy') "
                "copies to the current device)"
            )


def _check_device(xp, **arrays) -> None:
    if xp is not np:
        check_same_device(arrays, xp.cuda.Device().id)


def _block_size(work: int) -> int:
    """Threads per block for ``work`` outputs: a warp multiple, 32..256."""
    threads = 32
    while threads < work and threads < 256:
        threads *= 2
    return threads


#: Axis order of each conv layout, as a permutation of (N, C, H, W).
CONV_LAYOUTS = {"NCHW": (0, 1, 2, 3), "CHWN": (1, 2, 3, 0)}


def launch_conv2d(kernel, x, indptr, indices, kernels, bias, stride: int = 1,
                  padding: int = 0, layout: str = "NCHW", threads: int | None = None,
                  csr_checked: bool = False):
    """Run the cluster-sparse convolution kernel; returns the output array.

    Args:
        kernel: ``cupy.RawKernel`` or ``EmulatedKernel`` of ``cluster_sparse_conv2d_forward``.
        x: input, (N, C, H, W) for layout 'NCHW' or (C, H, W, N) for 'CHWN' (batch last: the
            compact model's layout, coalesced on a GPU); float32. An array that is not
            C-contiguous is copied first.
        indptr (O+1,), indices (nnz,): int32 CSR over live kernels; kernels (nnz, kh, kw)
            float32; bias (O,) float32.
        stride, padding: as in Conv2d.
        layout: 'NCHW' or 'CHWN', for both x and the result.
        threads: threads per block (default: 32..256, enough for the map).
        csr_checked: the CSR values were checked once already (skips :func:`csr_errors`).

    Returns:
        y, (N, O, OH, OW) or (O, OH, OW, N) following ``layout``.
    """
    xp = get_array_module(x, indptr, indices, kernels, bias)
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"layout must be one of {list(CONV_LAYOUTS)}, got {layout!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D ({layout}), got shape {x.shape}")
    for name, a in (("x", x), ("kernels", kernels), ("bias", bias)):
        _check_float32(name, a)
    for name, a in (("indptr", indptr), ("indices", indices)):
        _check_int32(name, a)
    if kernels.ndim != 3:
        raise ValueError(f"kernels must be (nnz, kh, kw), got shape {kernels.shape}")
    o = indptr.shape[0] - 1
    if o < 1:
        raise ValueError("indptr must have at least 2 entries (one output map)")
    if bias.shape != (o,):
        raise ValueError(f"bias has shape {bias.shape}, expected ({o},) for {o} output maps")
    if kernels.shape[0] != indices.shape[0]:
        raise ValueError(f"{indices.shape[0]} kernel indices but {kernels.shape[0]} kernels")
    _check_device(xp, x=x, indptr=indptr, indices=indices, kernels=kernels, bias=bias)
    kh, kw = kernels.shape[1:]
    if kh * kw == 0:
        raise ValueError(f"kernels of {kh}x{kw} have no taps; a conv kernel needs kh, kw >= 1")
    if kh * kw > CONV_TILE_FLOATS:
        raise ValueError(f"kernel {kh}x{kw} too large for the shared-memory tile "
                         f"({CONV_TILE_FLOATS} floats)")
    if int(stride) < 1 or int(padding) < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    x = _contiguous(xp, x)
    perm = CONV_LAYOUTS[layout]
    where = [perm.index(axis) for axis in range(4)]  # position of N, C, H, W in the layout
    n, c, h, w = (x.shape[where[a]] for a in range(4))
    check_csr(indptr, indices, o, "conv weight", cols=c, values=not csr_checked)
    oh, ow = conv_output_hw(h, w, kh, kw, int(stride), int(padding))
    y_nchw = (n, o, oh, ow)
    y = xp.empty(tuple(y_nchw[a] for a in perm), dtype=xp.float32)
    item = x.itemsize
    xs = [x.strides[where[a]] // item for a in range(4)]
    ys = [y.strides[where[a]] // item for a in range(4)]
    work = n * oh * ow
    threads = _block_size(work) if threads is None else int(threads)
    blocks = -(-work // threads)
    if blocks > INT32_MAX:
        raise ValueError(f"grid of {blocks} blocks is too large; use smaller batches")
    if o > 65535:
        raise ValueError(f"{o} output maps exceed the grid's y limit (65535)")
    _i32(max(x.size, y.size), "array size")
    if work == 0:
        return y
    args = (
        x, _contiguous(xp, indptr), _contiguous(xp, indices), _contiguous(xp, kernels),
        _contiguous(xp, bias), y,
        *(_i32(v, "size") for v in (n, c, h, w, o, kh, kw, oh, ow, stride, padding)),
        *(_i32(v, "x stride") for v in xs), *(_i32(v, "y stride") for v in ys),
    )
    kernel((int(blocks), o), (threads,), args)
    return y


def launch_linear(kernel, x, indptr, indices, values, bias, layout: str = "NF",
                  threads: int | None = None, csr_checked: bool = False):
    """Run the CSR linear kernel; returns the output.

    Args:
        kernel: ``cupy.RawKernel`` or ``EmulatedKernel`` of ``csr_linear_forward``.
        x: (N, F) for layout 'NF', (F, N) for 'FN' (feature-major, the fast one on a GPU).
        indptr, indices, values, bias: the CSR rows, indptr (O+1,) and indices (nnz,) int32,
            values (nnz,) float32; the bias (O,) float32.
        layout: 'NF' or 'FN' for both x and the result.
        csr_checked: the CSR values were checked once already (skips :func:`csr_errors`).

    Returns:
        y, (N, O) or (O, N) following ``layout``.
    """
    xp = get_array_module(x, indptr, indices, values, bias)
    if layout not in ("NF", "FN"):
        raise ValueError(f"layout must be 'NF' or 'FN', got {layout!r}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D ({layout}), got shape {x.shape}")
    for name, a in (("x", x), ("values", values), ("bias", bias)):
        _check_float32(name, a)
    for name, a in (("indptr", indptr), ("indices", indices)):
        _check_int32(name, a)
    o = indptr.shape[0] - 1
    if o < 1:
        raise ValueError("indptr must have at least 2 entries (one output neuron)")
    if bias.shape != (o,):
        raise ValueError(f"bias has shape {bias.shape}, expected ({o},)")
    if values.shape != indices.shape:
        raise ValueError(f"values {values.shape} and indices {indices.shape} differ in shape")
    _check_device(xp, x=x, indptr=indptr, indices=indices, values=values, bias=bias)
    x = _contiguous(xp, x)
    n, f = x.shape if layout == "NF" else x.shape[::-1]
    check_csr(indptr, indices, o, "linear weight", cols=f, values=not csr_checked)
    y = xp.empty((n, o) if layout == "NF" else (o, n), dtype=xp.float32)
    item = x.itemsize
    # element strides of the batch and feature axes, for x and y
    x_sn, x_sf = (x.strides[0] // item, x.strides[1] // item)[:: 1 if layout == "NF" else -1]
    y_sn, y_so = (y.strides[0] // item, y.strides[1] // item)[:: 1 if layout == "NF" else -1]
    threads = _block_size(n) if threads is None else int(threads)
    tiles = -(-n // threads) if n else 0
    if tiles * o > INT32_MAX:
        raise ValueError(f"grid of {tiles * o} blocks is too large; use smaller batches")
    _i32(max(x.size, y.size), "array size")
    if n == 0:
        return y
    args = (
        x, _contiguous(xp, indptr), _contiguous(xp, indices), _contiguous(xp, values),
        _contiguous(xp, bias), y,
        _i32(n, "batch"), _i32(f, "features"), _i32(o, "outputs"),
        _i32(x_sn, "x stride"), _i32(x_sf, "x stride"), _i32(y_sn, "y stride"),
        _i32(y_so, "y stride"),
    )
    kernel((int(tiles * o),), (threads,), args)
    return y
