"""Training sparse layers through the native kernel: forward and backward over live synapses.

Late generations of a lineage keep a few percent of their synapses, yet the masked dense layers
still multiply every zero. With the accelerator on (:func:`minievo.accel.enable`), when the
weight of a :class:`~minievo.layers.Conv2d` or :class:`~minievo.layers.Linear` carries a mask
sparse enough, its forward and backward run through the compiled kernel of
:mod:`minievo.kernels.native` instead, visiting only the live synapses:

* forward: the sparse convolution (a linear layer is the 1x1 case);
* input gradient: the same kernel on the output gradient, zero-padded by ``k - 1 - padding``
  (on the fly, while packing), with the synapse lists regrouped by input map and the taps
  flipped (``w[o, c, ky, kx]``
  becomes a tap at ``(kh-1-ky, kw-1-kx)`` reading map o):

      gx[c, a, b] = sum over live (o, ky, kx) of w[o, c, ky, kx] * gy[o, a + p - ky, b + p - kx]

* weight gradient: ``minievo_sparse_conv_wgrad``, a dot product per live synapse; the masked
  entries of the gradient are exactly 0, as the dense path's ``weight * mask`` makes them;
* bias gradient: a NumPy sum.

The model, the optimiser, checkpoints and the training loop do not change: the accelerated
ops :func:`conv2d` and :func:`linear` (the accelerator's entries for the layers' op table)
decide at each call (:func:`plan_for`) whether the sparse path applies. It does when all of
these hold:
the mode is not ``"off"`` (:func:`set_mode`, ``$MINIEVO_SPARSE_TRAINING``), the arrays are
float32 NumPy, the kernel is available, the weight has a mask, stride is 1 and padding at most
k - 1 (convolutions), and, in mode ``"auto"``, the cost models of :mod:`minievo.sparse.cpu` say
the sparse path is the cheaper and the layer keeps fewer than :data:`TRAIN_MAX_DENSITY` of its
synapses (mode ``"on"`` skips only these last tests). float64 inputs, as in
the gradient checks, always take the dense path.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from minievo import functions as F
from minievo.accel import conv as nhwc
from minievo.autograd import Function, Tensor
from minievo.functions.conv import conv_output_size
from minievo.kernels import native
from minievo.sparse import cpu

MODES = ("auto", "on", "off")
_mode: str | None = None


def get_mode() -> str:
    """'auto' (default, or $MINIEVO_SPARSE_TRAINING), 'on' or 'off'."""
    global _mode
    if _mode is None:
        env = os.environ.get("MINIEVO_SPARSE_TRAINING", "auto").strip().lower()
        if env not in MODES:
            raise ValueError(f"MINIEVO_SPARSE_TRAINING must be one of {', '.join(MODES)}, "
                             f"got {env!r}")
        _mode = env
    return _mode


def set_mode(mode: str) -> None:
    """Choose when masked layers train through the native kernel (see the module docstring)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"sparse training mode must be one of {', '.join(MODES)}, got {mode!r}")
    _mode = mode


class _Plan:
    """The live synapses of one mask, in the orders the three kernels want.

    Built from the mask alone (the weights change every step and are gathered at each forward);
    a weight keeps its plan until :meth:`~minievo.layers.Conv2d.set_mask` installs a new mask.
    """

    def __init__(self, mask: np.ndarray):
        live = np.asarray(mask) != 0
        self.shape = live.shape
        idx = np.nonzero(live)  # sorted by output map / neuron first
        self.index = idx
        self.synapses = len(idx[0])
        self.syn_ptr = cpu.row_pointers(idx[0], self.shape[0])
        # the same synapses grouped by input map / feature, for the input gradient
        self.perm = np.argsort(idx[1], kind="stable")
        self.syn_ptr_t = cpu.row_pointers(idx[1][self.perm], self.shape[1])
        self._off: dict = {}

    def offsets(self, key, build):
        if key not in self._off:
            self._off[key] = build().astype(np.int32)
        return self._off[key]


#: Training takes the sparse path ("auto") only below these fractions of live synapses, on top
#: of the inference cost model. Measured per layer, batch 64, forward + backward, 2 cores
#: (dense ms / sparse ms): LeNet-5 conv2 at 5 / 10 / 20 / 30 % live: 2.2-2.4 / 1.6-1.7 /
#: 1.0-1.3 / 0.7-1.0; conv1 about 1.1-1.2 up to 10 %, 0.8-1.2 beyond; fc1 (800 -> 500) 0.86 at
#: 2 % and worse above, because its dense product is only ~1 ms and the per-synapse sums of the
#: weight gradient cost more than the product saves.
TRAIN_MAX_DENSITY = {"conv": 0.15, "linear": 0.01}


def _parts(n: int, syn_ptr: np.ndarray, work: int, tile: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, o0, o1) pieces of a kernel call for the threads: slices of the batch when it
    has enough tiles, else groups of output maps with about equal synapse counts (a training
    batch of 64 is a single tile)."""
    maps = len(syn_ptr) - 1
    threads = cpu.get_num_threads() if work > cpu.THREAD_MIN_WORK else 1
    batch = cpu.batch_slices(n, tile, threads)
    if len(batch) >= threads or maps < 2:
        return [(a, b, 0, maps) for a, b in batch]
    goal = np.linspace(0, syn_ptr[-1], threads + 1)[1:-1]
    cuts = sorted({0, maps, *(int(c) for c in np.searchsorted(syn_ptr, goal))})
    return [(0, n, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _conv(kernel, x4, syn_ptr, off, vals, out_hw, bias, out4, n: int, work: int,
          pad: int = 0) -> None:
    """out4 = the sparse convolution of x4 (both (C, H, W, N) views), on the threads."""
    def call(part):
        n0, n1, o0, o1 = part
        kernel.conv(x4, syn_ptr[o0:o1 + 1], off, vals, out_hw, 1, bias[o0:o1], None, None,
                    False, out4[o0:o1], n0, n1, pad=pad)

    cpu.run_parallel(call, _parts(n, syn_ptr, work, kernel.tile))


def _wgrad(kernel, x4, syn_ptr, off, gy4, n: int, work: int, pad: int = 0) -> np.ndarray:
    """Weight gradient of the live synapses (float64): threads on batch slices sum partial
    arrays, threads on map groups fill disjoint parts of one array."""
    parts = _parts(n, syn_ptr, work, kernel.tile)
    batch_split = len(parts) > 1 and parts[0][3] - parts[0][2] == len(syn_ptr) - 1
    sums = [np.zeros(len(off), np.float64) for _ in (parts if batch_split else parts[:1])]

    def call(job):
        (n0, n1, o0, o1), g = job
        kernel.wgrad(x4, syn_ptr[o0:o1 + 1], off, 1, gy4[o0:o1], g, n0, n1, pad=pad)

    jobs = list(zip(parts, sums if batch_split else sums * len(parts)))
    cpu.run_parallel(call, jobs)
    return np.sum(sums, axis=0) if len(sums) > 1 else sums[0]


def _dense_grad(plan: _Plan, values: np.ndarray, dtype) -> np.ndarray:
    g = np.zeros(plan.shape, dtype=dtype)
    g[plan.index] = values
    return g


def _channels_last(n: int, c: int, h: int, w: int) -> np.ndarray:
    """An (N, C, H, W) float32 view of channels-last memory, the layout the accelerated conv
    and pooling work in (minievo.accel.conv)."""
    return np.empty((n, h, w, c), np.float32).transpose(0, 3, 1, 2)


def _bl(a: np.ndarray) -> np.ndarray:
    """The (C, H, W, N) view the kernel takes of an (N, C, H, W) array (no copy)."""
    return a.transpose(1, 2, 3, 0)


class SparseConv2d(Function):
    """Masked convolution (stride 1) over the live synapses; see the module docstring."""

    def forward(self, x, w, b=None, plan: _Plan = None, padding: int = 0):
        kernel = native.load()
        o, c, kh, kw = plan.shape
        n, _, h, wd = x.shape
        p = padding
        hp, wp = h + 2 * p, wd + 2 * p
        oh, ow = conv_output_size(h, kh, 1, p), conv_output_size(wd, kw, 1, p)
        _, ci, ky, kx = plan.index
        off = plan.offsets(("fwd", hp, wp), lambda: (ci * hp + ky) * wp + kx)
        vals = np.ascontiguousarray(w[plan.index], dtype=np.float32)
        bias = np.zeros(o, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
        y = _channels_last(n, o, oh, ow)
        _conv(kernel, _bl(x), plan.syn_ptr, off, vals, (oh, ow), bias, _bl(y), n,
              plan.synapses * oh * ow * n, p)
        self.saved = (x, vals, off, w.dtype)
        self.plan, self.padding, self.has_bias = plan, p, b is not None
        return y

    def backward(self, gy):
        kernel = native.load()
        x, vals, off, w_dtype = self.saved
        plan, p = self.plan, self.padding
        o, c, kh, kw = plan.shape
        n, _, h, wd = x.shape
        oh, ow = gy.shape[2:]
        gy = np.asarray(gy, dtype=np.float32)
        gx = gw = gb = None
        if self.needs_grad[1]:
            g = _wgrad(kernel, _bl(x), plan.syn_ptr, off, _bl(gy), n,
                       plan.synapses * oh * ow * n, p)
            gw = _dense_grad(plan, g, w_dtype)
        if self.has_bias and self.needs_grad[2]:
            gb = gy.sum(axis=(0, 2, 3))
        if self.needs_grad[0]:
            q = kh - 1 - p  # the output gradient padded by q gives an H x W input gradient
            hg, wg = oh + 2 * q, ow + 2 * q
            oi, _, ky, kx = (a[plan.perm] for a in plan.index)
            off_t = plan.offsets(("grad", hg, wg),
                                 lambda: (oi * hg + (kh - 1 - ky)) * wg + (kw - 1 - kx))
            vals_t = np.ascontiguousarray(vals[plan.perm])
            zeros = np.zeros(c, np.float32)
            gx = _channels_last(n, c, h, wd)
            _conv(kernel, _bl(gy), plan.syn_ptr_t, off_t, vals_t, (h, wd), zeros, _bl(gx), n,
                  plan.synapses * h * wd * n, q)
        return (gx, gw, gb) if self.has_bias else (gx, gw)


class SparseLinear(Function):
    """Masked fully connected layer over the live synapses (the 1x1 case of SparseConv2d)."""

    def forward(self, x, w, b=None, plan: _Plan = None):
        kernel = native.load()
        o, f = plan.shape
        n = x.shape[0]
        vals = np.ascontiguousarray(w[plan.index], dtype=np.float32)
        bias = np.zeros(o, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
        y = np.empty((n, o), np.float32)
        x4 = x.T[:, None, None, :]  # (F, 1, 1, N) view: read in place
        off = plan.offsets("fwd", lambda: plan.index[1])
        _conv(kernel, x4, plan.syn_ptr, off, vals, (1, 1), bias, y.T[:, None, None, :], n,
              plan.synapses * n)
        self.saved = (x4, vals, off, w.dtype)
        self.plan, self.has_bias = plan, b is not None
        return y

    def backward(self, gy):
        kernel = native.load()
        x4, vals, off, w_dtype = self.saved
        plan = self.plan
        o, f = plan.shape
        n = gy.shape[0]
        gy = np.asarray(gy, dtype=np.float32)
        gy4 = gy.T[:, None, None, :]
        gx = gw = gb = None
        if self.needs_grad[1]:
            g = _wgrad(kernel, x4, plan.syn_ptr, off, gy4, n, plan.synapses * n)
            gw = _dense_grad(plan, g, w_dtype)
        if self.has_bias and self.needs_grad[2]:
            gb = gy.sum(axis=0)
        if self.needs_grad[0]:
            off_t = plan.offsets("grad", lambda: plan.index[0][plan.perm])
            gx = np.empty((n, f), np.float32)
            vals_t = np.ascontiguousarray(vals[plan.perm])
            zeros = np.zeros(f, np.float32)
            _conv(kernel, gy4, plan.syn_ptr_t, off_t, vals_t, (1, 1), zeros,
                  gx.T[:, None, None, :], n, plan.synapses * n)
        return (gx, gw, gb) if self.has_bias else (gx, gw)


#: weight (Parameter) -> (mask, plan, wanted): the plan of its current mask, built once.
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: weight -> whether its last forward took the sparse path (benchmarks and tests report it).
_last_sparse: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def took_sparse_path(weight) -> bool:
    """True when the last accelerated forward with this weight ran over its live synapses."""
    return _last_sparse.get(weight, False)


def plan_for(weight, x, stride: int = 1, padding: int = 0) -> _Plan | None:
    """The plan when a forward of ``weight`` on ``x`` should take the sparse path, else None.

    ``weight`` is a Parameter of shape (O, C, kh, kw) (convolution) or (out, in) (linear) whose
    ``mask`` the layer set; a weight without a mask never takes the sparse path.
    """
    _last_sparse[weight] = False
    mode = get_mode()
    mask = getattr(weight, "mask", None)
    data = x.data if isinstance(x, Tensor) else x
    if (mode == "off" or mask is None or not isinstance(data, np.ndarray)
            or data.dtype != np.float32 or weight.data.dtype != np.float32):
        return None
    conv = weight.ndim == 4
    if conv and (stride != 1 or padding > weight.shape[2] - 1 or padding > weight.shape[3] - 1):
        return None
    cached = _plans.get(weight)
    if cached is not None and cached[0] is mask:
        plan, wanted = cached[1], cached[2]
    else:
        plan = _Plan(mask)
        total = int(np.prod(plan.shape))
        if conv:
            o, c, kh, kw = plan.shape
            wanted = cpu.choose_conv_method(plan.synapses, o, c, kh, kw) == "native"
        else:
            wanted = cpu.choose_method(plan.synapses, total) == "native"
        wanted = wanted and plan.synapses < TRAIN_MAX_DENSITY["conv" if conv else "linear"] * total
        _plans[weight] = (mask, plan, wanted)
    if not (wanted or mode == "on") or not native.available():
        return None
    _last_sparse[weight] = True
    return plan


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0):
    """The accelerated :func:`minievo.functions.conv2d`: over the live synapses when
    :func:`plan_for` says so, else the channels-last im2col of :mod:`minievo.accel.conv`."""
    plan = plan_for(weight, x, stride, padding)
    if plan is None:
        return nhwc.conv2d(x, weight, bias, stride, padding)
    args = (x, weight) if bias is None else (x, weight, bias)
    return SparseConv2d.apply(*args, plan=plan, padding=int(padding))


def linear(x, weight, bias=None):
    """The accelerated :func:`minievo.functions.linear`: over the live synapses when
    :func:`plan_for` says so, else the reference (one BLAS product)."""
    plan = plan_for(weight, x)
    if plan is None:
        return F.linear(x, weight, bias)
    args = (x, weight) if bias is None else (x, weight, bias)
    return SparseLinear.apply(*args, plan=plan)
