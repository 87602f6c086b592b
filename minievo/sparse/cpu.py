"""Fast CPU forward of the compact layers: NumPy + scipy.sparse or BLAS, chosen per layer.

Convolution works on batch-last activations x (C, H, W, N); see :func:`conv2d_chwn` for
the stride-1 scheme, which copies each input row run once (kh times less data than im2col)
and turns the kernel column into an offset into that buffer. The batch is processed in chunks
so that the buffers stay in cache.

A layer runs one of three ways:

* ``"native"``: the compiled direct convolution of ``minievo/kernels/sparse_cpu.c`` (see
  :mod:`minievo.kernels.native`), which visits only the live synapses and keeps its sums in
  vector registers; built with the system C compiler on first use. It is the fastest way for
  every sparse layer we measured; without a C compiler the other two take over.

The other two work on the products ``weights @ rows``:

* ``"csr"``: ``scipy.sparse`` csr matrices of the live synapses; the work is proportional to
  the live synapses. scipy's kernel is single threaded but releases the GIL, so the chunks
  run on a small thread pool (:func:`set_num_threads`).
* ``"dense"``: the compacted weight (dead filters and input maps already removed) as dense
  matrices, multiplied by BLAS (multi-threaded by itself).

Which one a layer uses is decided per layer by small cost models (:func:`choose_conv_method`,
:func:`choose_method`), calibrated with ``benchmarks/sparse_forward.py --sweep``.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from numpy.lib.stride_tricks import as_strided

from minievo.kernels import native
from minievo.sparse.reference import conv_output_hw, row_pointers

METHODS = ("native", "csr", "dense")

#: Linear layers without the native kernel: below this fraction of live synapses (of the
#: compacted O x F weight) the csr product is used, above it dense BLAS. Measured on one
#: core, LeNet-5 fc1 (800 -> 500, batch 1000): csr 3.5 / 6.4 / 9.4 / 11.8 / 17.5 ms at
#: 5 / 10 / 15 / 20 / 30 % live, dense 9.1 ms (scipy's csr kernel runs ~7 GMAC/s, OpenBLAS ~45).
CSR_MAX_DENSITY = 0.15

#: Convolutions choose with a cost model per output pixel (ns, one core, measured with
#: benchmarks/sparse_forward.py --sweep --single-thread on LeNet-5 layers):
#:   dense = C*kh*kw * (COPY_NS + BLAS_NS * O)        patch copy + BLAS GEMM
#:   csr   = C*kh * COPY_NS + CSR_NS * synapses + COPY_NS * O   row copy + csr + fill/crop
#: It puts the crossover for LeNet-5 conv2 near 28 % live kernels (measured: csr faster at
#: 20 %, dense at 50 %), and sends tiny compacted layers (conv1 with a few filters), whose cost
#: is the patch copy, to the csr path.
COPY_NS, BLAS_NS, CSR_NS = 1.0, 0.025, 0.14

#: The native kernel in the same units: NATIVE_NS per live synapse, plus NATIVE_COPY_NS per
#: input value packed (scaled to one output pixel) and per output written. Measured on LeNet-5
#: conv2, one core, batch 1000 (benchmarks/sparse_forward.py --sweep --single-thread): native
#: 107 / 54 / 21 / 20 / 15 ms at 100 / 50 / 20 / 10 / 5 % live kernels, dense 82 ms at any
#: density (about 13 GMAC/s against BLAS's 20 with its im2col copy).
NATIVE_NS, NATIVE_COPY_NS = 0.075, 0.5

#: Linear layers with the native kernel: dense BLAS when ``synapses * NATIVE_LINEAR_NS`` is
#: more than ``O * F * BLAS_LINEAR_NS`` (ns per image). Measured on LeNet-5 fc1 (800 -> 500,
#: batch 1000, one core): native 1.7 / 2.9 / 6.1 / 9.1 / 14.4 ms at 5 / 10 / 20 / 30 / 50 %
#: live synapses, dense 8.9 ms; the crossover is near 29 %.
NATIVE_LINEAR_NS, BLAS_LINEAR_NS = 0.075, 0.022

#: Native kernel calls with fewer multiply-adds than this run on one thread: a thread hand-off
#: costs tens of microseconds, and for LeNet-5 fc1 at 2 % live synapses (0.5 M per call at
#: batch 64) two threads made a training step slower (2.6 ms against 1.7).
THREAD_MIN_WORK = 4_000_000

#: Dense (BLAS) path: floats of the patch matrix per chunk of the batch (64 MiB). Few, large
#: GEMMs: on one core the chunk size hardly matters (LeNet-5 conv2, batch 1000: 78 ms with
#: 4 MiB chunks, 76 ms with 64 MiB), but multi-threaded OpenBLAS pays a synchronisation per
#: call, which on a busy machine made 4 MiB chunks 3.4x slower than 64 MiB ones (752 / 220 ms).
CHUNK_FLOATS = 1 << 24

#: csr path: output columns (pixels x images) per chunk. scipy's kernel adds one input row into
#: one output row at a time; with rows of ~4096 floats the output row stays in L1 and the rate
#: peaks (measured on LeNet-5 conv2 at 10 % live kernels, one core: 5.2 GMAC/s at 480
#: columns, 7.1 at 3840, 6.2 at 9600, 4.2 at 19200).
CSR_CHUNK_COLUMNS = 4096

#: ... but never fewer images per chunk than this: the batch is the innermost axis, so the
#: chunk is the length of every contiguous run NumPy copies (runs of 6 floats made the copies
#: and crops of LeNet-5 conv1 take 40 ms instead of 10).
MIN_CHUNK_IMAGES = 64

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_num_threads: int | None = None


#: The most threads ``$MINIEVO_SPARSE_THREADS`` may ask for (each holds a slice of the batch).
MAX_THREADS = 1024


def threads_from_environment() -> int | None:
    """``$MINIEVO_SPARSE_THREADS`` as a number of threads, or None when it is unset or empty.

    Raises:
        ValueError: when it is not a whole number in [1, :data:`MAX_THREADS`] (one line naming
            the variable, the value and what is allowed).
    """
    text = os.environ.get("MINIEVO_SPARSE_THREADS", "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_THREADS):
        raise ValueError(f"MINIEVO_SPARSE_THREADS={text!r}: allowed: a whole number of threads "
                         f"in [1, {MAX_THREADS}]")
    return int(text)


def get_num_threads() -> int:
    """Threads used by the csr products (default: $MINIEVO_SPARSE_THREADS or the CPU count, at
    most 4).

    Raises:
        ValueError: when $MINIEVO_SPARSE_THREADS is set to anything but a whole number in
            [1, :data:`MAX_THREADS`].
    """
    global _num_threads
    if _num_threads is None:
        env = threads_from_environment()
        _num_threads = env if env is not None else min(4, os.cpu_count() or 1)
    return max(1, _num_threads)


def set_num_threads(n: int) -> None:
    """Set the number of threads of the csr products (1 turns threading off)."""
    global _num_threads, _pool
    if int(n) < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    with _pool_lock:
        _num_threads = int(n)
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


def run_parallel(fn, parts: list) -> None:
    """Run fn(part) for every part; on the pool when there is more than one part."""
    global _pool
    if len(parts) <= 1:
        for p in parts:
            fn(p)
        return
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(get_num_threads(), thread_name_prefix="minievo-sparse")
        pool = _pool
    for future in [pool.submit(fn, p) for p in parts]:
        future.result()


def native_available() -> bool:
    """True when the compiled kernel can be used (see :mod:`minievo.kernels.native`)."""
    return native.available()


def choose_method(live: int, total: int, allow_native: bool | None = None) -> str:
    """The method for a linear product with ``live`` of ``total`` weight entries live.

    ``allow_native``: whether 'native' may be chosen (default: when the kernel is available).
    """
    if total == 0:
        return "dense"
    if allow_native is None:
        allow_native = native_available()
    if allow_native:
        return "native" if live * NATIVE_LINEAR_NS < total * BLAS_LINEAR_NS else "dense"
    return "csr" if live / total < CSR_MAX_DENSITY else "dense"


def choose_conv_method(synapses: int, out_channels: int, in_channels: int, kh: int,
                       kw: int, in_pixels_per_out: float = 1.0,
                       allow_native: bool | None = None) -> str:
    """The method for a compact conv, by the cost models above (:data:`COPY_NS`).

    ``in_pixels_per_out``: input pixels per output pixel (H*W / (OH*OW); about 1 for small
    kernels), which scales the native kernel's packing cost.
    """
    dense = in_channels * kh * kw * (COPY_NS + BLAS_NS * out_channels)
    csr = in_channels * kh * COPY_NS + CSR_NS * synapses + COPY_NS * out_channels
    if allow_native is None:
        allow_native = native_available()
    if allow_native:
        own = NATIVE_NS * synapses + NATIVE_COPY_NS * (
            in_channels * in_pixels_per_out + out_channels)
        if own < dense:
            return "native"
    return "csr" if csr < dense else "dense"


def _check_method(method: str) -> None:
    if method not in (*METHODS, "auto"):
        raise ValueError(f"method must be one of {', '.join(METHODS)} or 'auto', got "
                         f"{method!r}")
    if method == "native":
        native.load()  # raises NativeUnavailable with the reason


def scipy_csr_matvecs():
    """scipy's in-place kernel ``csr_matvecs`` (y += A @ X), or None where it is missing.

    It is private SciPy API (``scipy.sparse._sparsetools``), used only through
    :func:`accumulate`, which falls back to the public ``y += A @ X`` (one more pass) when a
    SciPy release moves or drops it; the tests run both ways.
    """
    try:
        from scipy.sparse._sparsetools import csr_matvecs  # noqa: PLC0415
    except ImportError:
        return None
    return csr_matvecs


_CSR_MATVECS = scipy_csr_matvecs()


def accumulate(matrix, v: np.ndarray, y: np.ndarray, in_place_kernel: bool = True) -> None:
    """y += matrix @ v for C-contiguous float32 v (K, L) and y (O, L).

    A csr matrix goes through scipy's own kernel, which adds into y in place (the public
    ``matrix @ v`` would allocate the product and need one more pass to add it);
    ``in_place_kernel=False``, or a SciPy without that kernel, takes the public product.
    """
    if in_place_kernel and sp.issparse(matrix) and _CSR_MATVECS is not None:
        _CSR_MATVECS(matrix.shape[0], matrix.shape[1], v.shape[1], matrix.indptr,
                     matrix.indices, matrix.data, v.reshape(-1), y.reshape(-1))
    else:
        y += matrix @ v


class ConvWeights:
    """The compacted conv weight prepared for the CPU: csr matrices or dense matrices.

    Two arrangements of the same synapses, built on first use:

    * :meth:`by_column_shift`: ``kw`` matrices (O, C*kh), one per kernel column kx, entry
      [o, c*kh + ky] = w[o, c, ky, kx] -- for the stride-1 path, which reads every input row
      run once and lets the kx shift be an offset into that buffer;
    * :meth:`full`: one (O, C*kh*kw) matrix over (c, ky, kx) -- for strided convolutions.

    Args:
        indptr, indices, kernels: CSR over live kernels (see :func:`reference.kernel_csr`).
        kernel_mask: (nnz, kh, kw) 0/1 taps of the live kernels (synapses).
        in_channels: C of the compact layer.
        method: 'native', 'csr', 'dense' or 'auto' (:func:`choose_conv_method`).
    """

    def __init__(self, indptr, indices, kernels, kernel_mask, in_channels: int,
                 method: str = "auto"):
        _check_method(method)
        o = len(indptr) - 1
        nnz, kh, kw = kernels.shape
        self.out_channels, self.in_channels, self.kh, self.kw = o, in_channels, kh, kw
        live = np.asarray(kernel_mask, dtype=bool)
        self.synapses = int(live.sum())
        self.method = (choose_conv_method(self.synapses, o, in_channels, kh, kw)
                       if method == "auto" else method)
        k, ky, kx = np.nonzero(live)  # one entry per synapse, grouped by output map
        self._rows = np.repeat(np.arange(o), np.diff(indptr))[k]
        self._c = np.asarray(indices, dtype=np.int64)[k]
        self._ky, self._kx = ky, kx
        self._vals = np.asarray(kernels, dtype=np.float32)[k, ky, kx]
        self._syn_ptr = row_pointers(self._rows, o)  # the native kernel's synapses per map
        self._shifted: list | None = None
        self._full = None
        self._offsets: dict[tuple[int, int], np.ndarray] = {}
        self._workspace = threading.local()  # per-thread buffers, reused between calls

    def native_arrays(self, h: int, w: int, in_index=None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(syn_ptr, off, w) for the native kernel on padded inputs of h x w pixels.

        ``in_index``: the layer's input map c is map ``in_index[c]`` of the array it is given
        (the model's input, whose unread maps are skipped by the offsets instead of a copy).
        """
        key = (h, w, None if in_index is None else np.asarray(in_index).tobytes())
        if key not in self._offsets:
            chan = self._c if in_index is None else np.asarray(in_index)[self._c]
            self._offsets[key] = ((chan * h + self._ky) * w + self._kx).astype(np.int32)
        return self._syn_ptr, self._offsets[key], self._vals

    def buffers(self, rsize: int, ysize: int, slack: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and output buffers of at least these sizes, kept for the next call.

        Reusing them spares the page faults of fresh large allocations on every batch.
        ``slack``: extra floats after the rows, read by the kx shift.
        """
        ws = self._workspace
        r, y = getattr(ws, "r", None), getattr(ws, "y", None)
        if r is None or r.size < rsize + slack:
            r = ws.r = np.empty(rsize + slack, dtype=np.float32)
        if y is None or y.size < ysize:
            y = ws.y = np.empty(ysize, dtype=np.float32)
        return r, y

    def _matrix(self, rows, cols, vals, ncols):
        o = self.out_channels
        if self.method == "csr":
            m = sp.csr_matrix((vals, (rows, cols)), shape=(o, ncols), dtype=np.float32)
            m.sum_duplicates()
            m.sort_indices()
            m.indptr = m.indptr.astype(np.int32)
            m.indices = m.indices.astype(np.int32)
            return m
        dense = np.zeros((o, ncols), dtype=np.float32)
        dense[rows, cols] = vals
        return dense

    def by_column_shift(self) -> list:
        if self._shifted is None:
            ck = self.in_channels * self.kh
            cols = self._c * self.kh + self._ky
            self._shifted = [
                self._matrix(self._rows[self._kx == j], cols[self._kx == j],
                             self._vals[self._kx == j], ck)
                for j in range(self.kw)
            ]
        return self._shifted

    def full(self):
        if self._full is None:
            cols = (self._c * self.kh + self._ky) * self.kw + self._kx
            self._full = self._matrix(self._rows, cols, self._vals,
                                      self.in_channels * self.kh * self.kw)
        return self._full


def _pad_chwn(x: np.ndarray, padding: int) -> np.ndarray:
    if padding == 0:
        return x
    p = padding
    c, h, w, n = x.shape
    xp = np.zeros((c, h + 2 * p, w + 2 * p, n), dtype=x.dtype)
    xp[:, p : p + h, p : p + w] = x
    return xp


def batch_slices(n: int, tile: int, threads: int) -> list[tuple[int, int]]:
    """[n0, n1) ranges of about equal size for the threads, cut at multiples of ``tile``."""
    tiles = -(-n // tile)
    parts = max(1, min(threads, tiles))
    cuts = [min(n, (tiles * i // parts) * tile) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _native_call(n: int, work: int, call) -> None:
    """Run ``call(n0, n1)`` over the batch, on the thread pool when there is enough work
    (``work``: multiply-adds of the whole batch)."""
    tile = native.load().tile
    threads = get_num_threads() if work > THREAD_MIN_WORK else 1
    run_parallel(lambda part: call(*part), batch_slices(n, tile, threads))


def _conv_native(x, weights: ConvWeights, bias, stride, padding, oh, ow, bias_map, pool, relu,
                 out, out_index, in_index):
    kernel = native.load()
    c, h, w, n = x.shape
    syn_ptr, off, vals = weights.native_arrays(h + 2 * padding, w + 2 * padding, in_index)
    shape = (oh, ow) if pool is None else conv_output_hw(oh, ow, pool[0], pool[0], pool[1], 0)
    if out is None:
        out = np.empty((weights.out_channels, *shape, n), dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if bias_map is not None:
        bias_map = np.ascontiguousarray(bias_map, dtype=np.float32)

    out_map = None if out_index is None else np.asarray(out_index, dtype=np.int32)

    def call(n0, n1):
        kernel.conv(x, syn_ptr, off, vals, (oh, ow), stride, bias, bias_map, pool, relu, out,
                    n0, n1, out_map, pad=padding)

    _native_call(n, weights.synapses * oh * ow * n, call)
    return out


def conv2d_chwn(x: np.ndarray, weights: ConvWeights, bias: np.ndarray, stride: int = 1,
                padding: int = 0, bias_map: np.ndarray | None = None,
                pool: tuple[int, int] | None = None, relu: bool = False,
                out: np.ndarray | None = None, out_index=None, in_index=None) -> np.ndarray:
    """Compact convolution on batch-last activations (C, H, W, N).

    Batch last, every spatial operation (copying rows, cropping, pooling, flattening) moves
    runs of many images at once instead of a few pixels, which is what NumPy is fast at.

    Stride 1 (the usual case) never builds an im2col matrix. For a chunk of m images, every
    input map c and kernel row ky, it copies the OH input rows ky .. ky+OH-1 into a buffer
    ``R`` (C*kh rows of OH*W*m values, kh times less data than im2col's C*kh*kw rows). The
    kernel column kx is then just an offset: the contiguous (C*kh, OH*W*m) view of ``R``
    starting kx*m floats later holds, at column (oh, w, n), the pixel x[c, oh+ky, w+kx, n]. So

        y = sum over kx of  W_kx @ R[kx*m:]      (W_kx: the (O, C*kh) weights of column kx)

    with y computed on an OH x W grid: the columns w >= OW read wrapped-around pixels and are
    cropped (W/OW more work: 1.5x for LeNet-5 conv2, 1.17x for conv1). Each product
    accumulates into y in place (scipy's csr kernel). The dense (BLAS) method and strided
    convolutions copy ordinary patches (im2col, no cropped columns) and do one product.

    Args:
        x: (C, H, W, N) float32.
        weights: the prepared weight (C must equal ``weights.in_channels``).
        bias: (O,) float32, added to every output pixel.
        stride, padding: as in Conv2d.
        bias_map: optional (O, OH, OW) per-pixel offset added on top of ``bias`` (the folded
            contribution of constant input maps when the layer pads its input).
        pool: optional (kernel_size, stride) of a max pooling applied right away (fused: the
            full-size output is never written out and read back; a per-map bias commutes with
            the maximum and is added after it).
        relu: apply max(., 0) last (fused into the native kernel).
        out: optional float32 array (O, OH, OW, N) (pooled: (O, PH, PW, N)) for the result;
            the native kernel writes it directly, also when it is a transposed batch-first
            array (which spares the model's last layer a transposing copy).
        out_index: with ``out``, the maps of ``out`` that receive the O output maps (the model's
            last layer, when some of the model's outputs are constant).
        in_index: the maps of x the layer reads (its input map c is x[in_index[c]]): the
            model's Gather of its input, which the native kernel does through its offsets.

    Returns:
        (O, OH, OW, N) float32, C-contiguous (pooled: (O, PH, PW, N)).
    """
    if in_index is not None and weights.method != "native":
        x, in_index = x[in_index], None
    c, h, w, n = x.shape if in_index is None else (len(in_index), *x.shape[1:])
    if c != weights.in_channels:
        raise ValueError(f"compact conv expects {weights.in_channels} input maps, got {c}")
    kh, kw, o = weights.kh, weights.kw, weights.out_channels
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    if pool is not None and min(oh, ow) < pool[0]:
        raise ValueError(f"max pooling window {pool[0]} does not fit maps of {oh}x{ow}")
    if pool is not None and (pool[0] < 1 or pool[1] < 1):
        raise ValueError(f"max pooling needs a window and stride >= 1, got {tuple(pool)}")
    if weights.method == "native":  # reads x in place, padding it on the fly
        return _conv_native(x, weights, bias, stride, padding, oh, ow, bias_map, pool, relu,
                            out, out_index, in_index)
    x = np.ascontiguousarray(_pad_chwn(x, padding))
    sc, sh, sw, sn = x.strides
    # csr: the shifted-row scheme (kh times less copying; the products dominate anyway).
    # dense: ordinary patches, no cropped columns, one BLAS product with K = C*kh*kw.
    shift = stride == 1 and weights.method == "csr"
    gw = x.shape[2] if shift else ow  # width of the output grid computed
    g = oh * gw
    k_rows = c * kh if shift else c * kh * kw
    offset = bias.reshape(o, 1, 1, 1) if bias_map is None else (
        bias.reshape(o, 1, 1) + bias_map).reshape(o, oh, ow, 1)
    if pool is not None:
        pk, ps = pool
        ph, pw = (oh - pk) // ps + 1, (ow - pk) // ps + 1
        result = np.empty((o, ph, pw, n), dtype=np.float32)
    else:
        result = np.empty((o, oh, ow, n), dtype=np.float32)
    target, out = out, result
    if weights.method == "csr":
        nb = CSR_CHUNK_COLUMNS // g
    else:
        nb = CHUNK_FLOATS // max(1, k_rows * g)
    nb = int(max(1, min(n, max(nb, MIN_CHUNK_IMAGES))))
    chunks = [(n0, min(n, n0 + nb)) for n0 in range(0, n, nb)]
    threads = get_num_threads() if weights.method == "csr" else 1
    parts = [chunks[i::threads] for i in range(min(threads, len(chunks)))]
    mats = weights.by_column_shift() if shift else [weights.full()]

    def work(part):
        rbuf, ybuf = weights.buffers(k_rows * nb * g, o * nb * g, kw * nb)
        for n0, n1 in part:
            m = n1 - n0
            size = k_rows * m * g
            xs = x[..., n0:n1]
            if shift:
                win = as_strided(xs, (c, kh, g, m), (sc, sh, sw, sn))
                np.copyto(rbuf[:size].reshape(c, kh, g, m), win)
                # read by the kx shift into cropped columns: zeros, not stale NaNs/denormals
                rbuf[size : size + kw * m] = 0.0
            else:
                win = as_strided(xs, (c, kh, kw, oh, ow, m),
                                 (sc, sh, sw, sh * stride, sw * stride, sn))
                np.copyto(rbuf[:size].reshape(c, kh, kw, oh, ow, m), win)
            y = ybuf[: o * m * g].reshape(o, m * g)
            if weights.method == "dense":  # one product (no shift): BLAS writes y directly
                np.matmul(mats[0], rbuf[:size].reshape(k_rows, m * g), out=y)
            else:
                y.fill(0.0)
                for kx, mat in enumerate(mats):
                    accumulate(mat, rbuf[kx * m : kx * m + size].reshape(k_rows, m * g), y)
            grid = y.reshape(o, oh, gw, m)
            dst = out[..., n0:n1]
            if pool is None:
                np.add(grid[:, :, :ow], offset, out=dst)
                continue
            src = grid if bias_map is None else grid[:, :, :ow] + offset
            for i in range(pk):
                for j in range(pk):
                    v = src[:, i : i + ps * ph : ps, j : j + ps * pw : ps]
                    if i == 0 and j == 0:
                        np.copyto(dst, v)
                    else:
                        np.maximum(dst, v, out=dst)
            if bias_map is None:
                dst += offset

    run_parallel(work, parts)
    if relu:
        np.maximum(out, 0.0, out=out)
    return out if target is None else _store(target, out, out_index)


def _store(target: np.ndarray, result: np.ndarray, index) -> np.ndarray:
    """target[...] = result, or target[index] = result (index: maps of target)."""
    if index is None:
        target[...] = result
    else:
        target[index] = result
    return target


class LinearWeights:
    """The compacted linear weight for the CPU: native or csr (split by rows for the threads),
    or dense."""

    def __init__(self, indptr, indices, values, in_features: int, method: str = "auto"):
        _check_method(method)
        o = len(indptr) - 1
        self.out_features, self.in_features = o, in_features
        self.synapses = int(len(indices))
        total = o * in_features
        self.method = choose_method(self.synapses, total) if method == "auto" else method
        csr = sp.csr_matrix(
            (np.asarray(values, dtype=np.float32), np.asarray(indices), np.asarray(indptr)),
            shape=(o, in_features),
        )
        csr.sort_indices()
        if self.method == "native":
            self.matrix = csr
            self._native = (csr.indptr.astype(np.int32), csr.indices.astype(np.int32),
                            np.ascontiguousarray(csr.data, dtype=np.float32))
        elif self.method == "csr":
            self.matrix = csr
        else:
            self.matrix = csr.toarray()
        self._blocks: dict[int, list] = {}

    def _row_blocks(self, parts: int) -> list:
        """The csr matrix cut into ``parts`` row blocks of about equal synapse count."""
        if parts not in self._blocks:
            indptr = self.matrix.indptr
            bounds = np.searchsorted(indptr, np.linspace(0, indptr[-1], parts + 1)[1:-1])
            edges = [0, *sorted(set(int(b) for b in bounds)), self.out_features]
            blocks = []
            for a, b in zip(edges, edges[1:]):
                if b > a:
                    m = self.matrix[a:b]
                    m.indptr = m.indptr.astype(np.int32)
                    m.indices = m.indices.astype(np.int32)
                    blocks.append((a, b, m))
            self._blocks[parts] = blocks
        return self._blocks[parts]

    def forward_fm(self, x: np.ndarray, bias: np.ndarray, relu: bool = False,
                   out: np.ndarray | None = None, out_index=None,
                   in_index=None) -> np.ndarray:
        """x (F, N) feature-major -> (O, N) float32; ``relu`` applies max(., 0) last; ``out``
        an optional (O, N) array for the result, ``out_index`` its rows that receive it;
        ``in_index`` the features of x the layer reads (see :func:`conv2d_chwn`)."""
        if in_index is not None and self.method != "native":
            x, in_index = x[in_index], None
        if (x.shape[0] if in_index is None else len(in_index)) != self.in_features:
            raise ValueError(f"compact linear expects {self.in_features} input features, "
                             f"got {x.shape[0]}")
        n = x.shape[1]
        if self.method == "native":  # a 1x1 "convolution" of F input maps of 1 pixel
            kernel = native.load()
            x4 = x[:, None, None, :]  # read in place (batch-last or transposed batch-first)
            if out is None:
                out = np.empty((self.out_features, n), dtype=np.float32)
            out4 = out[:, None, None, :]
            bias = np.ascontiguousarray(bias, dtype=np.float32)
            indptr, indices, values = self._native
            if in_index is not None:
                indices = np.asarray(in_index)[indices].astype(np.int32)

            out_map = None if out_index is None else np.asarray(out_index, dtype=np.int32)

            def call(n0, n1):
                kernel.conv(x4, indptr, indices, values, (1, 1), 1, bias, None, None, relu,
                            out4, n0, n1, out_map)

            _native_call(n, self.synapses * n, call)
            return out
        result = self._forward_products(x, bias)
        if relu:
            np.maximum(result, 0.0, out=result)
        return result if out is None else _store(out, result, out_index)

    def _forward_products(self, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        if self.method == "dense":
            out = self.matrix @ x
            out += bias[:, None]
            return out
        x = np.ascontiguousarray(x)
        out = np.empty((self.out_features, n), dtype=np.float32)
        threads = get_num_threads() if self.synapses * n > 2_000_000 else 1

        def work(block):
            a, b, m = block
            out[a:b] = bias[a:b, None]
            accumulate(m, x, out[a:b])

        run_parallel(work, self._row_blocks(threads))
        return out


def batch_first(h: np.ndarray) -> np.ndarray:
    """A batch-last array (..., N) as a C-contiguous batch-first one (N, ...).

    Copied 64 feature rows at a time: NumPy's one-shot transposing copy reads with a stride of
    N floats and ran 3.6x slower (LeNet-5 conv2 output, 3.2 M floats: 12.8 ms against 3.5 ms).
    """
    n = h.shape[-1]
    flat = np.ascontiguousarray(h).reshape(-1, n)
    out = np.empty((n, flat.shape[0]), dtype=h.dtype)
    for i in range(0, flat.shape[0], 64):
        out[:, i : i + 64] = flat[i : i + 64].T
    return out.reshape(n, *h.shape[:-1])

