"""Compact layers: a masked Conv2d / Linear with its dead synapses, kernels and maps left out.

:class:`CompactConv2d` keeps, per output map, the list of its live kernels: CSR over (output
map, input map) pairs (``indptr``, ``indices``) with the kh*kw weights of each live kernel
(``kernels``) and which of its taps are synapses (``kernel_mask``). :class:`CompactLinear` keeps
the live synapses in CSR over rows. Both run

* on NumPy arrays through :mod:`minievo.sparse.cpu` (the compiled native kernel, scipy.sparse
  or dense BLAS, chosen per layer by cost models), and
* on CuPy arrays through the RawKernels of ``minievo/kernels`` (:mod:`minievo.sparse.gpu`).

Host copies of the arrays are always kept (they are small); ``.to('cupy')`` adds device copies.
The layers are inference-only (no autograd).

The public ``forward`` takes the usual layouts (NCHW, (N, F)); the compact model chains the
``forward_bl`` methods, which work on batch-last activations ((C, H, W, N) and (F, N)): the
batch is the innermost axis, so every spatial operation moves long runs of memory (fast in
NumPy, coalesced on a GPU), and flattening maps to features is free.
"""

from __future__ import annotations

import numpy as np

from minievo import backend
from minievo.autograd import Tensor, no_grad
from minievo.backend import BackendError, get_array_module, is_cupy_array
from minievo.sparse import cpu, gpu
from minievo.sparse.reference import conv_output_hw, kernel_csr, row_pointers


def _host(a, dtype) -> np.ndarray:
    return np.ascontiguousarray(backend.to_numpy(a), dtype=dtype)


def batch_first(h):
    """Batch-last (..., N) -> C-contiguous (N, ...), on either backend."""
    if is_cupy_array(h):
        return get_array_module(h).ascontiguousarray(h.transpose(h.ndim - 1, *range(h.ndim - 1)))
    return cpu.batch_first(h)


def _gather_unless_native(x, in_index, layer):
    """(x, in_index) for a layer's forward: the native CPU kernel reads x[in_index] through its
    offsets; every other path gets the gathered copy."""
    if in_index is None or (not is_cupy_array(x) and layer.method == "native"):
        return x, in_index
    gather = layer._gather
    if gather is None or gather.source is not in_index:  # one Gather (and device index) per
        gather = layer._gather = Gather(in_index)        # index array, not one per call
    return gather.forward_bl(x), None


def _copy_into(out, y, index=None):
    if index is None:
        out[...] = y
    else:
        out[index] = y
    return out


def unwrap(x):
    """Raw array of a Tensor (or the array itself)."""
    return x.data if hasattr(x, "data") and hasattr(x, "grad") else x


def _check_csr_host(indptr: np.ndarray, indices: np.ndarray, rows: int, cols: int, what: str):
    if indptr.ndim != 1 or indptr.shape[0] != rows + 1:
        raise ValueError(f"{what}: indptr must have shape ({rows + 1},), got {indptr.shape}")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise ValueError(f"{what}: indptr must start at 0, never decrease and end at "
                         f"{indices.shape[0]} (the number of indices)")
    if indices.size and (indices.min() < 0 or indices.max() >= cols):
        raise ValueError(f"{what}: indices must lie in [0, {cols}), got "
                         f"[{indices.min()}, {indices.max()}]")
    for r in range(rows):  # sorted, no duplicates: one entry per (row, column)
        seg = indices[indptr[r] : indptr[r + 1]]
        if seg.size > 1 and np.any(np.diff(seg) <= 0):
            raise ValueError(f"{what}: the indices of row {r} must be strictly increasing")


class _DeviceMixin:
    """Backend bookkeeping shared by the compact layers."""

    backend = "numpy"
    _device_names: tuple[str, ...] = ()
    _gather = None  # the Gather of the input index the model passes (see _gather_unless_native)

    def to(self, name: str):
        """Keep device copies on backend ``name`` ('numpy' or 'cupy'), on the current device;
        returns self. The device CSR is checked there once (one host read), so launches skip
        it."""
        name = backend.check_name(name)
        self._gather = None
        if name == "cupy":
            cp = backend.xp_for("cupy")
            self._dev = {k: cp.asarray(getattr(self, k)) for k in self._device_names
                         if getattr(self, k) is not None}
            gpu.check_csr(self._dev["indptr"], self._dev["indices"], self.indptr.shape[0] - 1,
                          type(self).__name__, cols=self._in_units)
        else:
            self._dev = None
        self.backend = name
        return self

    def _check_backend(self, x):
        kind = "cupy" if is_cupy_array(x) else "numpy"
        if kind != self.backend:
            raise BackendError(
                f"{type(self).__name__} lives on {self.backend} but got a {kind} array; move "
                f"one of them, e.g. model.to({kind!r}) or minievo.backend.to_backend(x, "
                f"{self.backend!r})"
            )


class CompactConv2d(_DeviceMixin):
    """Cluster-sparse Conv2d: per output map, only its live kernels.

    Args:
        indptr: (O+1,) CSR row pointers over live kernels.
        indices: (nnz,) input map of each live kernel (increasing within a row).
        kernels: (nnz, kh, kw) kernel weights (masked taps are 0).
        kernel_mask: (nnz, kh, kw) 0/1, which taps are synapses (default: all).
        bias: (O,) bias of each output map.
        in_channels: number of input maps C.
        stride, padding: as in Conv2d.
        bias_map: optional (O, OH, OW) offset added per output pixel (set by :func:`compact`
            when constant input maps are folded into a padded convolution).
        method: CPU path, 'native', 'csr', 'dense' or 'auto' (by cost model, see :mod:`cpu`).

    Shapes: forward x (N, C, H, W) -> (N, O, OH, OW).
    """

    _device_names = ("indptr", "indices", "kernels", "bias", "bias_map")

    def __init__(self, indptr, indices, kernels, bias, in_channels: int, stride: int = 1,
                 padding: int = 0, kernel_mask=None, bias_map=None, method: str = "auto"):
        self.indptr = _host(indptr, np.int32)
        self.indices = _host(indices, np.int32)
        self.kernels = _host(kernels, np.float32)
        self.in_channels = int(in_channels)
        self.stride, self.padding = int(stride), int(padding)
        if self.kernels.ndim != 3 or self.kernels.shape[0] != self.indices.shape[0]:
            raise ValueError(f"kernels must have shape (nnz={self.indices.shape[0]}, kh, kw), "
                             f"got {self.kernels.shape}")
        if self.stride < 1 or self.padding < 0:
            raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
        o = self.indptr.shape[0] - 1
        if o < 1:
            raise ValueError("a compact conv needs at least one output map")
        _check_csr_host(self.indptr, self.indices, o, self.in_channels, "CompactConv2d")
        self.bias = _host(bias, np.float32)
        if self.bias.shape != (o,):
            raise ValueError(f"bias must have shape ({o},), got {self.bias.shape}")
        if kernel_mask is None:
            kernel_mask = np.ones(self.kernels.shape, dtype=np.uint8)
        self.kernel_mask = _host(kernel_mask, np.uint8)
        if self.kernel_mask.shape != self.kernels.shape:
            raise ValueError(f"kernel_mask shape {self.kernel_mask.shape} differs from kernels "
                             f"{self.kernels.shape}")
        self.kernels = self.kernels * (self.kernel_mask != 0)
        self.bias_map = None if bias_map is None else _host(bias_map, np.float32)
        if self.bias_map is not None and (self.bias_map.ndim != 3 or self.bias_map.shape[0] != o):
            raise ValueError(f"bias_map must have shape ({o}, OH, OW), got {self.bias_map.shape}")
        self._method = method
        self._cpu: cpu.ConvWeights | None = None
        self._dev = None

    @classmethod
    def from_dense(cls, weight, bias, mask, stride: int = 1, padding: int = 0,
                   method: str = "auto") -> CompactConv2d:
        """The compact form of a masked dense conv (every map kept; dead kernels dropped).

        Args:
            weight, mask: (O, C, kh, kw); bias: (O,) or None.
        """
        weight, mask = backend.to_numpy(weight), backend.to_numpy(mask)
        if weight.ndim != 4 or mask.shape != weight.shape:
            raise ValueError(f"weight must be (O, C, kh, kw) and mask the same shape, got "
                             f"{weight.shape} and {mask.shape}")
        indptr, indices, kernels = kernel_csr(weight, mask)
        live = np.asarray(mask) != 0
        o, c = weight.shape[:2]
        kmask = live.reshape(o, c, *weight.shape[2:])[np.nonzero(live.reshape(o, c, -1).any(2))]
        b = np.zeros(o, np.float32) if bias is None else backend.to_numpy(bias)
        return cls(indptr, indices, kernels, b, c, stride, padding, kernel_mask=kmask,
                   method=method)

    # ----- shape information -------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def _in_units(self) -> int:
        return self.in_channels

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.kernels.shape[1:])

    @property
    def nnz(self) -> int:
        """Live kernels (clusters at kernel granularity)."""
        return int(self.indices.shape[0])

    @property
    def synapses(self) -> int:
        return int(np.count_nonzero(self.kernel_mask))

    @property
    def method(self) -> str:
        return self.cpu_weights.method

    @property
    def requested_method(self) -> str:
        """The CPU path asked for at construction ('auto' lets the cost model choose)."""
        return self._method

    @property
    def cpu_weights(self) -> cpu.ConvWeights:
        if self._cpu is None:
            self._cpu = cpu.ConvWeights(self.indptr, self.indices, self.kernels,
                                        self.kernel_mask, self.in_channels, self._method)
        return self._cpu

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.kernel_size
        return conv_output_hw(h, w, kh, kw, self.stride, self.padding)

    def to_dense(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weight, bias, mask) of the equivalent masked dense conv (bias_map not included)."""
        kh, kw = self.kernel_size
        o, c = self.out_channels, self.in_channels
        w = np.zeros((o, c, kh, kw), np.float32)
        m = np.zeros((o, c, kh, kw), np.float32)
        rows = np.repeat(np.arange(o), np.diff(self.indptr))
        w[rows, self.indices] = self.kernels
        m[rows, self.indices] = self.kernel_mask
        return w, self.bias.copy(), m

    # ----- forward -----------------------------------------------------------------------------
    def forward_bl(self, x, pool: tuple[int, int] | None = None, relu: bool = False,
                   out=None, out_index=None, in_index=None):
        """Batch-last forward: x (C, H, W, N) -> (O, OH, OW, N), either backend.

        ``pool`` = (kernel_size, stride) applies a max pooling too (fused on the CPU), and
        ``relu`` then a ReLU (fused into the native CPU kernel). ``out``: an optional array for
        the result, e.g. a transposed batch-first one, and ``out_index`` the maps of ``out``
        that receive it; ``in_index`` the maps of x the layer reads (see
        :func:`cpu.conv2d_chwn`).
        """
        self._check_backend(x)
        x, in_index = _gather_unless_native(x, in_index, self)
        if x.ndim != 4 or (x.shape[0] if in_index is None else len(in_index)) != self.in_channels:
            raise ValueError(f"CompactConv2d expects batch-last input ({self.in_channels}, "
                             f"H, W, N), got {tuple(x.shape)}")
        hw = tuple(x.shape[1:3])
        if self.bias_map is not None and self.bias_map.shape[1:] != self.output_hw(*hw):
            raise ValueError(f"this compact conv was built for output maps of "
                             f"{self.bias_map.shape[1:]}; input {hw} gives "
                             f"{self.output_hw(*hw)}")
        if x.dtype != np.float32:
            raise TypeError(f"CompactConv2d needs float32 input, got {x.dtype}; convert with "
                            "x.astype(xp.float32)")
        if is_cupy_array(x):
            from minievo.kernels import get_kernel  # noqa: PLC0415

            y = self.kernel_forward(x, get_kernel(gpu.CONV_FILE, gpu.CONV_KERNEL), self._dev)
            y = y if pool is None else MaxPool(*pool).forward_bl(y)
            y = ReLU().forward_bl(y, inplace=True) if relu else y
            return y if out is None else _copy_into(out, y, out_index)
        return cpu.conv2d_chwn(x, self.cpu_weights, self.bias, self.stride, self.padding,
                               self.bias_map, pool, relu, out, out_index, in_index)

    def host_arrays(self) -> dict:
        """The layer's arrays on the host, keyed like the device copies."""
        return {k: getattr(self, k) for k in self._device_names if getattr(self, k) is not None}

    def kernel_forward(self, x, kernel, arrays: dict):
        """The GPU path: batch-last x (C, H, W, N) through ``kernel`` (a cupy.RawKernel, or an
        emulated one on NumPy arrays with ``arrays=self.host_arrays()`` in the tests)."""
        y = gpu.launch_conv2d(kernel, x, arrays["indptr"], arrays["indices"],
                              arrays["kernels"], arrays["bias"], self.stride, self.padding,
                              layout="CHWN", csr_checked=True)
        if self.bias_map is not None:
            y += arrays["bias_map"][..., None]
        return y

    def forward(self, x):
        """x (N, C, H, W) float32 (NumPy or CuPy, or a Tensor) -> (N, O, OH, OW) array."""
        x = unwrap(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CompactConv2d expects input (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        xp = get_array_module(x)
        h = x.transpose(1, 2, 3, 0)  # the CPU paths copy it as they need
        if is_cupy_array(x):
            return batch_first(self.forward_bl(xp.ascontiguousarray(h)))
        y = np.empty((x.shape[0], self.out_channels, *self.output_hw(*x.shape[2:])), np.float32)
        self.forward_bl(h, out=y.transpose(1, 2, 3, 0))
        return y

    __call__ = forward

    def __repr__(self):
        kh, kw = self.kernel_size
        return (f"CompactConv2d({self.in_channels}, {self.out_channels}, {kh}x{kw}, "
                f"stride={self.stride}, padding={self.padding}, live kernels={self.nnz})")


class CompactLinear(_DeviceMixin):
    """Sparse Linear: the live synapses of each output neuron, CSR over rows.

    Args:
        indptr: (O+1,), indices: (nnz,) input features, values: (nnz,) weights (a synapse whose
            weight is 0 is still stored: it is live in the mask), bias: (O,).
        in_features: F.
        method: CPU path, 'native', 'csr', 'dense' or 'auto'.

    Shapes: forward x (N, F) -> (N, O).
    """

    _device_names = ("indptr", "indices", "values", "bias")

    def __init__(self, indptr, indices, values, bias, in_features: int, method: str = "auto"):
        self.indptr = _host(indptr, np.int32)
        self.indices = _host(indices, np.int32)
        self.values = _host(values, np.float32)
        self.in_features = int(in_features)
        o = self.indptr.shape[0] - 1
        if o < 1:
            raise ValueError("a compact linear layer needs at least one output neuron")
        if self.values.shape != self.indices.shape:
            raise ValueError(f"values {self.values.shape} and indices {self.indices.shape} "
                             "must have the same shape")
        _check_csr_host(self.indptr, self.indices, o, self.in_features, "CompactLinear")
        self.bias = _host(bias, np.float32)
        if self.bias.shape != (o,):
            raise ValueError(f"bias must have shape ({o},), got {self.bias.shape}")
        self._method = method
        self._cpu: cpu.LinearWeights | None = None
        self._dev = None

    @classmethod
    def from_dense(cls, weight, bias, mask, method: str = "auto") -> CompactLinear:
        """The compact form of a masked dense linear layer (every neuron kept)."""
        weight, mask = backend.to_numpy(weight), backend.to_numpy(mask)
        if weight.ndim != 2 or mask.shape != weight.shape:
            raise ValueError(f"weight must be (out, in) and mask the same shape, got "
                             f"{weight.shape} and {mask.shape}")
        live = mask != 0
        rows, cols = np.nonzero(live)
        indptr = row_pointers(rows, weight.shape[0])
        b = np.zeros(weight.shape[0], np.float32) if bias is None else backend.to_numpy(bias)
        return cls(indptr, cols, weight[rows, cols], b, weight.shape[1], method=method)

    @property
    def out_features(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def _in_units(self) -> int:
        return self.in_features

    @property
    def synapses(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nnz(self) -> int:
        return self.synapses

    @property
    def method(self) -> str:
        return self.cpu_weights.method

    @property
    def requested_method(self) -> str:
        """The CPU path asked for at construction ('auto' lets the cost model choose)."""
        return self._method

    @property
    def cpu_weights(self) -> cpu.LinearWeights:
        if self._cpu is None:
            self._cpu = cpu.LinearWeights(self.indptr, self.indices, self.values,
                                          self.in_features, self._method)
        return self._cpu

    def to_dense(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weight, bias, mask) of the equivalent masked dense linear layer."""
        o, f = self.out_features, self.in_features
        w = np.zeros((o, f), np.float32)
        m = np.zeros((o, f), np.float32)
        rows = np.repeat(np.arange(o), np.diff(self.indptr))
        w[rows, self.indices] = self.values
        m[rows, self.indices] = 1
        return w, self.bias.copy(), m

    def forward_bl(self, x, relu: bool = False, out=None, out_index=None, in_index=None):
        """Batch-last (feature-major) forward: x (F, N) -> (O, N), either backend; ``relu``
        applies a ReLU too (fused into the native CPU kernel); ``out``: an optional array for
        the result, ``out_index`` its rows that receive it; ``in_index`` the features of x
        the layer reads."""
        self._check_backend(x)
        x, in_index = _gather_unless_native(x, in_index, self)
        if x.ndim != 2 or (x.shape[0] if in_index is None else len(in_index)) != self.in_features:
            raise ValueError(f"CompactLinear expects feature-major input ({self.in_features}, "
                             f"N), got {tuple(x.shape)}")
        if x.dtype != np.float32:
            raise TypeError(f"CompactLinear needs float32 input, got {x.dtype}; convert with "
                            "x.astype(xp.float32)")
        if is_cupy_array(x):
            from minievo.kernels import get_kernel  # noqa: PLC0415

            y = self.kernel_forward(x, get_kernel(gpu.LINEAR_FILE, gpu.LINEAR_KERNEL),
                                    self._dev)
            y = ReLU().forward_bl(y, inplace=True) if relu else y
            return y if out is None else _copy_into(out, y, out_index)
        return self.cpu_weights.forward_fm(x, self.bias, relu, out, out_index, in_index)

    def host_arrays(self) -> dict:
        """The layer's arrays on the host, keyed like the device copies."""
        return {k: getattr(self, k) for k in self._device_names}

    def kernel_forward(self, x, kernel, arrays: dict):
        """The GPU path: feature-major x (F, N) through ``kernel`` (see CompactConv2d)."""
        return gpu.launch_linear(kernel, x, arrays["indptr"], arrays["indices"],
                                 arrays["values"], arrays["bias"], layout="FN",
                                 csr_checked=True)

    def forward(self, x):
        """x (N, F) float32 (NumPy or CuPy, or a Tensor) -> (N, O) array."""
        x = unwrap(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"CompactLinear expects input (N, {self.in_features}), got "
                             f"{tuple(x.shape)}")
        if is_cupy_array(x):
            return batch_first(self.forward_bl(x.T))
        y = np.empty((x.shape[0], self.out_features), np.float32)
        self.forward_bl(x.T, out=y.T)
        return y

    __call__ = forward

    def __repr__(self):
        return (f"CompactLinear({self.in_features}, {self.out_features}, "
                f"synapses={self.synapses})")


# ---------------------------------------------------------------------------------------------
# Parameter-free steps of a compact model, on batch-last activations.


class MaxPool:
    """Max pooling over the spatial axes of (C, H, W, N)."""

    def __init__(self, kernel_size: int, stride: int | None = None):
        self.kernel_size = int(kernel_size)
        self.stride = self.kernel_size if stride is None else int(stride)
        if self.kernel_size < 1 or self.stride < 1:
            raise ValueError(f"max pooling needs a window and stride >= 1, got "
                             f"{self.kernel_size}, {self.stride}")

    def forward_bl(self, x):
        xp = get_array_module(x)
        k, s = self.kernel_size, self.stride
        h, w = x.shape[1:3]
        oh, ow = conv_output_hw(h, w, k, k, s, 0)
        out = None
        for i in range(k):
            for j in range(k):
                v = x[:, i : i + s * oh : s, j : j + s * ow : s]
                if out is None:
                    out = xp.array(v, copy=True, order="C")
                else:
                    xp.maximum(out, v, out=out)
        return out

    def spec(self) -> dict:
        return {"op": "maxpool", "kernel_size": self.kernel_size, "stride": self.stride}

    def __repr__(self):
        return f"MaxPool({self.kernel_size}, stride={self.stride})"


class ReLU:
    def forward_bl(self, x, inplace: bool = False):
        """max(x, 0); ``inplace`` overwrites x (the model does so for arrays it made itself)."""
        xp = get_array_module(x)
        return xp.maximum(x, 0, out=x) if inplace else xp.maximum(x, 0)

    def spec(self) -> dict:
        return {"op": "relu"}

    def __repr__(self):
        return "ReLU()"


class Flatten:
    """(C, H, W, N) -> (C*H*W, N): features in the order of Flatten on NCHW (free: a view)."""

    def forward_bl(self, x):
        return x.reshape(-1, x.shape[-1])

    def spec(self) -> dict:
        return {"op": "flatten"}

    def __repr__(self):
        return "Flatten()"


class Identity:
    """Dropout at inference."""

    def __init__(self, p: float = 0.0):
        self.p = float(p)

    def forward_bl(self, x):
        return x

    def spec(self) -> dict:
        return {"op": "dropout", "p": self.p}

    def __repr__(self):
        return f"Identity(dropout p={self.p})"


class Gather:
    """Keep the units ``index`` of axis 0 (input maps or features the model reads)."""

    def __init__(self, index):
        self.source = index  # the array given (a layer reuses its Gather while it is the same)
        self.index = _host(index, np.int64)
        self._dev_index = None

    def forward_bl(self, x):
        if is_cupy_array(x):
            if self._dev_index is None:
                self._dev_index = backend.to_backend(self.index, "cupy")
            return x[self._dev_index]
        return x[self.index]

    def spec(self) -> dict:
        return {"op": "gather"}

    def __repr__(self):
        return f"Gather({self.index.size} units)"


# ---------------------------------------------------------------------------------------------
# Steps of a compact graph model (residual networks; see minievo.sparse.model), batch-last too.


class _HostArrays:
    """A step's arrays: host copies always, device copies made on the first CuPy input."""

    _dev: dict | None = None

    def host_arrays(self) -> dict:
        raise NotImplementedError

    def to(self, name: str):
        """Drop or make the device copies for backend ``name``; returns self."""
        name = backend.check_name(name)
        self._dev = None
        if name == "cupy":
            self._dev = {k: backend.to_backend(v, "cupy") for k, v in self.host_arrays().items()
                         if v is not None}
        return self

    def _arrays_for(self, x) -> dict:
        if not is_cupy_array(x):
            return self.host_arrays()
        if self._dev is None:
            self.to("cupy")
        return self._dev


def _unit_shape(a, ndim: int) -> tuple:
    """Shape that broadcasts a per-unit array ``a`` ((U,) or (U, ...)) against (U, ..., N)."""
    return (*a.shape, *(1,) * (ndim - a.ndim))


class AvgPool:
    """Average pooling over the spatial axes of (C, H, W, N), as AvgPool2d: k x k windows,
    zero padding counted in the average (divisor k*k)."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        self.kernel_size = int(kernel_size)
        self.stride = self.kernel_size if stride is None else int(stride)
        self.padding = int(padding)
        if self.kernel_size < 1 or self.stride < 1 or self.padding < 0:
            raise ValueError(f"average pooling needs a window and stride >= 1 and padding >= 0, "
                             f"got {self.kernel_size}, {self.stride}, {self.padding}")

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        k = self.kernel_size
        return conv_output_hw(h, w, k, k, self.stride, self.padding)

    def forward_bl(self, x):
        """x (C, H, W, N) -> (C, OH, OW, N)."""
        xp = get_array_module(x)
        k, s, p = self.kernel_size, self.stride, self.padding
        oh, ow = self.output_hw(*x.shape[1:3])
        if p:
            x = xp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out = xp.zeros((x.shape[0], oh, ow, x.shape[3]), dtype=x.dtype)
        for i in range(k):
            for j in range(k):
                out += x[:, i : i + s * oh : s, j : j + s * ow : s]
        out *= np.float32(1.0 / (k * k))
        return out

    def spec(self) -> dict:
        return {"op": "avgpool", "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding}

    def __repr__(self):
        return f"AvgPool({self.kernel_size}, stride={self.stride}, padding={self.padding})"


class GlobalAvgPool:
    """The mean of each map: (C, H, W, N) -> (C, N)."""

    def forward_bl(self, x):
        return x.mean(axis=(1, 2))

    def spec(self) -> dict:
        return {"op": "global_avgpool"}

    def __repr__(self):
        return "GlobalAvgPool()"


class Affine(_HostArrays):
    """y = scale * x + shift for each unit of axis 0: batch norm at inference where it cannot
    be folded into the convolution before it.

    Args:
        scale, shift: (U,) per unit (map or feature), stored as float32.
    """

    def __init__(self, scale, shift):
        self.scale = _host(scale, np.float32)
        self.shift = _host(shift, np.float32)
        if self.scale.ndim != 1 or self.shift.shape != self.scale.shape:
            raise ValueError(f"scale and shift must be two (U,) arrays, got {self.scale.shape} "
                             f"and {self.shift.shape}")

    def host_arrays(self) -> dict:
        return {"scale": self.scale, "shift": self.shift}

    def forward_bl(self, x):
        """x (U, ..., N) -> the same shape."""
        if x.shape[0] != self.scale.shape[0]:
            raise ValueError(f"Affine over {self.scale.shape[0]} units got input "
                             f"{tuple(x.shape)}")
        a = self._arrays_for(x)
        shape = _unit_shape(a["scale"], x.ndim)
        return x * a["scale"].reshape(shape) + a["shift"].reshape(shape)

    def spec(self) -> dict:
        return {"op": "affine"}

    def __repr__(self):
        return f"Affine({self.scale.shape[0]} units)"


class Sum(_HostArrays):
    """A residual addition on the units a compact model keeps.

    Input k adds its units ``src[k]`` (positions along its axis 0) to the output units
    ``dst[k]``; ``offset`` adds the constant part (the static value of the units that are
    constant in one branch and computed in another).

    Args:
        units: the output's units U.
        src, dst: per input, two (m_k,) integer arrays of equal length; ``dst[k]`` distinct.
        offset: None, (U,) or (U, *spatial) float32.
    """

    def __init__(self, units: int, src: list, dst: list, offset=None):
        self.units = int(units)
        self.src = [_host(a, np.int64) for a in src]
        self.dst = [_host(a, np.int64) for a in dst]
        if not self.src or len(self.src) != len(self.dst):
            raise ValueError("Sum needs one src and one dst index per input, at least one")
        for k, (s, d) in enumerate(zip(self.src, self.dst)):
            if s.ndim != 1 or s.shape != d.shape:
                raise ValueError(f"Sum input {k}: src and dst must be two (m,) arrays of one "
                                 f"length, got {s.shape} and {d.shape}")
            if d.size and (d.min() < 0 or d.max() >= self.units or
                           np.unique(d).size != d.size):
                raise ValueError(f"Sum input {k}: dst must hold distinct units in "
                                 f"[0, {self.units})")
            if s.size and s.min() < 0:
                raise ValueError(f"Sum input {k}: src must hold non-negative positions")
        self.offset = None if offset is None else _host(offset, np.float32)
        if self.offset is not None and (self.offset.ndim < 1 or
                                        self.offset.shape[0] != self.units):
            raise ValueError(f"Sum offset must have shape ({self.units}, ...), got "
                             f"{self.offset.shape}")
        # an index that keeps every unit in order is skipped (no copy)
        self._src_range = [bool(np.array_equal(s, np.arange(s.size))) for s in self.src]
        self._dst_all = [d.size == self.units and bool(np.array_equal(d, np.arange(d.size)))
                         for d in self.dst]

    def host_arrays(self) -> dict:
        arrays = {"offset": self.offset}
        for k, (s, d) in enumerate(zip(self.src, self.dst)):
            arrays[f"src{k}"], arrays[f"dst{k}"] = s, d
        return arrays

    def forward_bl(self, *xs, inplace: bool = False):
        """xs[k] (units_k, ..., N) -> (U, ..., N); ``inplace`` lets the sum overwrite xs[0]
        (the model does so when nothing else reads it)."""
        if len(xs) != len(self.src):
            raise ValueError(f"Sum expects {len(self.src)} inputs, got {len(xs)}")
        xp = get_array_module(xs[0])
        a = self._arrays_for(xs[0])
        out = None
        for k, x in enumerate(xs):
            src = self.src[k]
            if src.size and src.max() >= x.shape[0]:
                raise ValueError(f"Sum input {k} has {x.shape[0]} units, the step reads unit "
                                 f"{src.max()}")
            v = x if self._src_range[k] and src.size == x.shape[0] else x[a[f"src{k}"]]
            if self._dst_all[k]:
                if out is None:
                    out = v.copy() if v is x and not (inplace and k == 0) else v
                else:
                    out += v
                continue
            if out is None:
                out = xp.zeros((self.units, *x.shape[1:]), dtype=x.dtype)
            out[a[f"dst{k}"]] += v
        if self.offset is not None:
            out += a["offset"].reshape(_unit_shape(a["offset"], out.ndim))
        return out

    def spec(self) -> dict:
        return {"op": "add", "units": self.units, "offset": self.offset is not None}

    def __repr__(self):
        return f"Sum({len(self.src)} inputs -> {self.units} units)"


class LayerStep:
    """A minievo layer run through its own forward (no autograd) on batch-last activations:
    how a compact model runs a channelwise layer it has no compact step for (a user's layer
    type), restricted to the kept channels by the layer's ``select_channels``.

    Args:
        layer: the (restricted) layer; it is put in evaluation mode.
    """

    def __init__(self, layer):
        self.layer = layer
        layer.eval()

    def to(self, name: str):
        self.layer.to(backend.check_name(name))
        return self

    def forward_bl(self, x):
        """x (C, ..., N) -> the layer's output, batch-last, float32."""
        xp = get_array_module(x)
        with no_grad():
            y = unwrap(self.layer(Tensor(batch_first(x))))
        y = y.transpose(*range(1, y.ndim), 0)
        return xp.ascontiguousarray(y, dtype=xp.float32)

    def spec(self) -> dict:
        return {"op": "layer", "type": type(self.layer).__name__,
                "config": self.layer.layer_config()}

    def __repr__(self):
        return f"LayerStep({self.layer!r})"
