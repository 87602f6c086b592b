"""Modules: containers of parameters with a forward pass.

Linear and Conv2d are the *prunable* layers: each carries a mask (the genotype of
docs/method.md#notation), a 0/1 array of the weight's shape, stored once, on the weight
(``layer.weight.mask``; ``layer.mask`` reads it). :meth:`set_mask` zeroes the masked weights and
the optimisers keep them, their gradients and their state at exactly zero (the one place the
mask is applied, :class:`minievo.optim.Optimizer`), so the forward pass simply uses the weight.

The layers call their op through one table, :data:`ops` (the reference ops of
:mod:`minievo.functions` unless :func:`use_ops` installed others). :mod:`minievo.accel` is the
only other table: ``minievo.accel.enable()`` swaps it in, like choosing MiniTorch's
TensorBackend. Nothing here decides between implementations on its own.

**The layer protocol.** Besides its forward, every layer type says here, in its own class,
what the rest of minievo needs to know about it (docs/extending.md): its per-sample output
shape (:meth:`Module.output_shape`), how liveness flows through it
(:meth:`Module.live_outputs`, :meth:`Module.needed_inputs`), its multiply-accumulates
(:meth:`Module.macs`) and, for a prunable weight, its clusters (``granularities``). One walk
over the model (:mod:`minievo.graph`) reads these answers; metrics, compaction, storage and the
report read that walk. The defaults fit a layer without parameters that acts on each channel
on its own (ReLU, Dropout at inference).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minievo import backend, init
from minievo import functions as F
from minievo.autograd import Parameter, Tensor
from minievo.functions.conv import conv_output_size


@dataclass(frozen=True)
class Ops:
    """The implementations of the ops the layers call, in one table.

    Each entry has the signature of the reference op it replaces (``conv2d(x, weight, bias,
    stride, padding)``, ``linear(x, weight, bias)``, ``max_pool2d(x, kernel_size, stride)``,
    ``batch_norm2d(x, gamma, beta, running_mean, running_var, training, momentum, eps)``,
    ``global_avg_pool2d(x)``) and must compute the same function (values and gradients). The
    last two default to the reference ops.
    """

    name: str
    conv2d: Callable
    linear: Callable
    max_pool2d: Callable
    batch_norm2d: Callable = F.batch_norm2d
    global_avg_pool2d: Callable = F.global_avg_pool2d


#: The reference table: the plain ops of minievo.functions, what the chapters teach.
REFERENCE_OPS = Ops("reference", F.conv2d, F.linear, F.max_pool2d, F.batch_norm2d,
                    F.global_avg_pool2d)

#: The table the layers call now.
ops = REFERENCE_OPS


def use_ops(table: Ops) -> Ops:
    """Make the layers call ``table``'s ops from now on; returns the table used before."""
    global ops
    if not isinstance(table, Ops):
        raise TypeError(f"use_ops expects an Ops table, got {type(table).__name__}")
    previous, ops = ops, table
    return previous


def _check_values(name: str, v) -> None:
    """A loaded entry holds real, finite numbers; a mask only 0 and 1 (a mask of 0.5 or NaN
    would silently act as 1)."""
    kind = getattr(getattr(v, "dtype", None), "kind", None)
    if kind not in ("b", "i", "u", "f"):
        raise ValueError(f"state dict entry {name!r} has dtype "
                         f"{getattr(v, 'dtype', type(v).__name__)}, not real numbers")
    xp = backend.get_array_module(v)
    if kind == "f" and not bool(xp.isfinite(v).all()):
        raise ValueError(f"state dict entry {name!r} holds NaN or infinite values")
    if name.rsplit(".", 1)[-1] == "mask" and not bool(((v == 0) | (v == 1)).all()):
        raise ValueError(f"state dict entry {name!r} is a mask and must hold only 0 and 1")


#: Every layer type by class name (filled as classes are defined), so that a stored model
#: names its layer types and loading finds them without importing anything by name.
LAYER_TYPES: dict[str, type] = {}

#: While :func:`trace_calls` runs: the list that records each layer call.
_trace: list | None = None


class Module:
    """Base class. Subclasses set Parameters / Modules as attributes and define forward."""

    #: Whether the layer has a prunable weight (a mask, clusters, synapses).
    prunable = False
    #: Whether output unit c depends on input unit c alone (units: the channels of a (C, H, W)
    #: activation, the features of an (F,) one): liveness and need then pass straight through,
    #: and compaction runs the layer on the live channels only (:meth:`select_channels`).
    channelwise = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LAYER_TYPES[cls.__name__] = cls

    def __init__(self):
        self.training = True

    def forward(self, *args):
        raise NotImplementedError

    def __call__(self, *args):
        out = self.forward(*args)
        if _trace is not None and not any(True for _ in self.named_children()):
            _trace.append((self, args, out))  # a leaf layer's call, for minievo.graph
        return out

    # ----- the layer protocol (see the module docstring and docs/extending.md) -------------
    def output_shape(self, shape: tuple) -> tuple:
        """Per-sample output shape for a per-sample input ``shape``; ValueError if it does not
        fit. Default: unchanged."""
        return tuple(shape)

    def live_outputs(self, live: np.ndarray, shape: tuple) -> np.ndarray:
        """Which output units depend on the input, given which input units do.

        Args:
            live: (units,) bool over the input's units (``shape[0]``).
            shape: the per-sample input shape.

        Returns:
            (units,) bool over the output's units. Default: unchanged (channelwise layers).
        """
        return live

    def needed_inputs(self, need: np.ndarray, shape: tuple) -> np.ndarray:
        """Which input units some needed output unit reads (the backward sweep of compaction).
        Default: the same units (channelwise layers). ``shape``: per-sample input shape."""
        return need

    def macs(self, shape: tuple) -> int:
        """Multiply-accumulates per image for per-sample input ``shape`` (synapses only: pooling,
        normalisation and additions are not counted). Default: 0."""
        return 0

    def select_channels(self, index) -> Module:
        """This layer restricted to the input (= output) units ``index`` of a channelwise layer:
        what a compact model runs. Default: the layer itself (no per-channel parameters)."""
        return self

    def layer_config(self) -> dict:
        """The constructor arguments that rebuild this layer (with its state dict); what a
        stored compact model records. Default: none."""
        return {}

    # ----- traversal -------------------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix: str = ""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ----- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and masks as NumPy arrays, keyed by dotted name (``0.weight``, ``0.mask``)."""
        state = OrderedDict()
        for name, module in self.named_modules():
            for key, value in module._own_state().items():
                state[f"{name}.{key}" if name else key] = backend.to_numpy(value).copy()
        return state

    def _own_state(self) -> dict:
        return {k: v.data for k, v in vars(self).items() if isinstance(v, Parameter)}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Load arrays saved by :meth:`state_dict`; shapes and names must match."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"state dict does not fit this model: missing {missing or 'none'}, "
                f"unexpected {unexpected or 'none'}"
            )
        for k, v in state.items():
            if k in own and tuple(np.shape(v)) != own[k].shape:
                raise ValueError(
                    f"state dict entry {k!r} has shape {tuple(np.shape(v))}, model expects "
                    f"{own[k].shape}"
                )
            _check_values(k, v)
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            module._load_own({k[len(prefix):]: v for k, v in state.items()
                              if k.startswith(prefix) and "." not in k[len(prefix):]})

    def _load_own(self, state: dict) -> None:
        for key, value in state.items():
            p = vars(self).get(key)
            if isinstance(p, Parameter):
                # A copy: training updates parameters in place and must never write through
                # into the dict (or checkpoint arrays) the state came from.
                p.data = _like(value, p.data).copy()

    def to(self, name: str):
        """Move every parameter and mask to backend ``name`` ('numpy' or 'cupy'); returns self."""
        for m in self.modules():
            m._to(name)
        return self

    def _to(self, name: str) -> None:
        for value in vars(self).values():
            if isinstance(value, Parameter):
                value.data = backend.to_backend(value.data, name)
                value.grad = None
                if value.mask is not None:
                    value.mask = backend.to_backend(value.mask, name)


def _like(value, ref):
    """``value`` as an array of ``ref``'s backend and dtype."""
    arr = backend.to_backend(np.asarray(value) if not hasattr(value, "shape") else value,
                             backend.backend_of(ref))
    return arr.astype(ref.dtype, copy=False)


class _Prunable(Module):
    """Shared mask handling of Linear and Conv2d."""

    prunable = True
    channelwise = False
    #: The cluster granularities of the weight (docs/method.md#clusters); the first is used
    #: unless the lineage asks for another one that the layer has.
    granularities: tuple[str, ...] = ()
    weight: Parameter

    def effective_mask(self, live: np.ndarray) -> np.ndarray:
        """The mask (NumPy bool) without the synapses that read a constant input unit."""
        mask = backend.to_numpy(self.mask) != 0
        return mask & live.reshape((1, -1) + (1,) * (mask.ndim - 2))

    def live_outputs(self, live, shape):
        m = self.effective_mask(live)
        return m.reshape(m.shape[0], -1).any(axis=1)

    def needed_inputs(self, need, shape):
        m = backend.to_numpy(self.mask) != 0
        return m[need].any(axis=0).reshape(m.shape[1], -1).any(axis=1)  # no need: none

    def positions(self, shape: tuple) -> int:
        """How many times per image each synapse is used (output pixels; 1 for Linear)."""
        return int(np.prod(self.output_shape(shape)[1:], dtype=np.int64))

    def macs(self, shape):
        return int((backend.to_numpy(self.mask) != 0).sum()) * self.positions(shape)

    def _init_mask(self):
        xp = backend.get_array_module(self.weight.data)
        self.weight.mask = xp.ones_like(self.weight.data)

    @property
    def mask(self):
        """The 0/1 mask of the weight (stored on the weight: ``self.weight.mask``)."""
        return self.weight.mask

    def set_mask(self, mask) -> None:
        """Install a 0/1 mask of the weight's shape and zero the masked weights."""
        if tuple(mask.shape) != self.weight.shape:
            raise ValueError(
                f"{type(self).__name__}.set_mask: mask shape {tuple(mask.shape)} does not "
                f"match weight shape {self.weight.shape}"
            )
        m = _like(mask, self.weight.data)
        self.weight.mask = (m != 0).astype(self.weight.dtype)
        self.weight.data *= self.weight.mask

    def _own_state(self) -> dict:
        state = super()._own_state()
        state["mask"] = self.mask
        return state

    def _load_own(self, state: dict) -> None:
        mask = state.pop("mask", None)
        super()._load_own(state)
        if mask is not None:
            self.set_mask(mask)


class Linear(_Prunable):
    """y = x W^T + b. weight (out, in), mask (out, in), bias (out,); masked entries of W are 0."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(init.xavier_uniform((out_features, in_features), in_features))
        self.bias = Parameter(init.zeros((out_features,))) if bias else None
        self._init_mask()

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"Linear({self.in_features}, {self.out_features}) expects input of shape "
                f"(N, {self.in_features}), got {x.shape}"
                + (" (missing Flatten?)" if x.ndim == 4 else "")
            )
        return ops.linear(x, self.weight, self.bias)

    granularities = ("neuron",)

    def output_shape(self, shape):
        if len(shape) != 1 or shape[0] != self.in_features:
            raise ValueError(f"{self!r} needs ({self.in_features},) input, got {tuple(shape)}"
                             + (" (missing Flatten?)" if len(shape) == 3 else ""))
        return (self.out_features,)

    def layer_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"


class Conv2d(_Prunable):
    """2-D convolution with a mask. weight (O, I, k, k), mask (O, I, k, k), bias (O,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        k = self.kernel_size
        fan_in = in_channels * k * k
        self.weight = Parameter(init.xavier_uniform((out_channels, in_channels, k, k), fan_in))
        self.bias = Parameter(init.zeros((out_channels,))) if bias else None
        self._init_mask()

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv2d({self.in_channels}, {self.out_channels}, {self.kernel_size}) expects "
                f"input of shape (N, {self.in_channels}, H, W), got {x.shape}"
            )
        return ops.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    granularities = ("kernel", "filter")

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"{self!r} needs ({self.in_channels}, H, W) input, got "
                             f"{tuple(shape)}")
        k = self.kernel_size
        return (self.out_channels, conv_output_size(shape[1], k, self.stride, self.padding),
                conv_output_size(shape[2], k, self.stride, self.padding))

    def layer_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "bias": self.bias is not None}

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, {self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")


class MaxPool2d(Module):
    def __init__(self, kernel_size: int, stride: int | None = None):
        super().__init__()
        self.kernel_size, self.stride = int(kernel_size), stride

    def forward(self, x):
        return ops.max_pool2d(x, self.kernel_size, self.stride)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{self!r} needs (C, H, W) input, got {tuple(shape)}")
        k, s = self.kernel_size, self.stride or self.kernel_size
        return (shape[0], conv_output_size(shape[1], k, s, 0),
                conv_output_size(shape[2], k, s, 0))

    def layer_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride}

    def __repr__(self):
        return f"MaxPool2d({self.kernel_size}, stride={self.stride or self.kernel_size})"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)

    def __repr__(self):
        return "ReLU()"


class Flatten(Module):
    channelwise = False

    def forward(self, x):
        return F.flatten(x, 1)

    def output_shape(self, shape):
        return (int(np.prod(shape, dtype=np.int64)),)

    def live_outputs(self, live, shape):
        # channel c becomes the flattened features c*H*W ... (c+1)*H*W - 1
        return np.repeat(live, int(np.prod(shape[1:], dtype=np.int64)))

    def needed_inputs(self, need, shape):
        return need.reshape(shape[0], -1).any(axis=1)

    def __repr__(self):
        return "Flatten()"


class Dropout(Module):
    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout probability must lie in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)
        self._device_rng = None  # a CuPy generator seeded once from self.rng, on first GPU use

    def forward(self, x):
        rng = self.rng
        if self.training and self.p > 0 and backend.is_cupy_array(getattr(x, "data", x)):
            if self._device_rng is None:
                cp = backend.xp_for("cupy")
                self._device_rng = cp.random.default_rng(int(self.rng.integers(2**63)))
            rng = self._device_rng  # masks drawn on the device, never copied from the host
        return F.dropout(x, self.p, self.training, rng)

    def layer_config(self):
        return {"p": self.p}

    def __repr__(self):
        return f"Dropout(p={self.p})"


class BatchNorm2d(Module):
    """Batch normalisation of each channel of (N, C, H, W) (Ioffe and Szegedy 2015).

    Training: y = gamma * (x - mean) / sqrt(var + eps) + beta with the batch's mean and (biased)
    variance per channel, and the running statistics move towards them by ``momentum``.
    Evaluation: the running statistics instead, so the layer is a fixed affine map per channel
    (which is why compaction can fold it into the convolution before it). ``weight`` is gamma,
    ``bias`` beta; ``running_mean`` and ``running_var`` are state, not parameters.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if isinstance(num_features, bool) or int(num_features) != num_features or \
                num_features < 1:
            raise ValueError(f"BatchNorm2d needs num_features >= 1, got {num_features!r}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm2d momentum must lie in [0, 1], got {momentum}")
        if not eps > 0:
            raise ValueError(f"BatchNorm2d eps must be > 0, got {eps}")
        self.num_features, self.momentum, self.eps = int(num_features), momentum, eps
        self.weight = Parameter(init.ones((self.num_features,)))
        self.bias = Parameter(init.zeros((self.num_features,)))
        self.running_mean = init.zeros((self.num_features,))
        self.running_var = init.ones((self.num_features,))

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"{self!r} expects input of shape (N, {self.num_features}, H, W), "
                             f"got {x.shape}")
        return ops.batch_norm2d(x, self.weight, self.bias, self.running_mean,
                                self.running_var, self.training, self.momentum, self.eps)

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.num_features:
            raise ValueError(f"{self!r} needs ({self.num_features}, H, W) input, got "
                             f"{tuple(shape)}")
        return tuple(shape)

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation-mode map as NumPy float64 (scale, shift): y = scale * x + shift."""
        gamma, beta = (backend.to_numpy(p.data).astype(np.float64)
                       for p in (self.weight, self.bias))
        mean, var = (backend.to_numpy(a).astype(np.float64)
                     for a in (self.running_mean, self.running_var))
        scale = gamma / np.sqrt(var + self.eps)
        return scale, beta - scale * mean

    def select_channels(self, index):
        index = np.asarray(index, dtype=np.int64)
        out = BatchNorm2d(len(index), self.momentum, self.eps)
        out.load_state_dict({k: v[index] for k, v in self.state_dict().items()})
        out.train(self.training)
        return out.to(backend.backend_of(self.weight.data))

    def layer_config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}

    def _own_state(self) -> dict:
        state = super()._own_state()
        state["running_mean"], state["running_var"] = self.running_mean, self.running_var
        return state

    def _load_own(self, state: dict) -> None:
        stats = {k: state.pop(k) for k in ("running_mean", "running_var") if k in state}
        super()._load_own(state)
        for key, value in stats.items():
            setattr(self, key, _like(value, self.weight.data).copy())
        if bool((backend.to_numpy(self.running_var) < 0).any()):
            raise ValueError("state dict entry 'running_var' holds negative variances")

    def _to(self, name: str) -> None:
        super()._to(name)
        self.running_mean = backend.to_backend(self.running_mean, name)
        self.running_var = backend.to_backend(self.running_var, name)

    def __repr__(self):
        return f"BatchNorm2d({self.num_features})"


class AvgPool2d(Module):
    """Average over k x k windows (zero padding counts in the average, divisor k*k)."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = int(kernel_size), stride, int(padding)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{self!r} needs (C, H, W) input, got {tuple(shape)}")
        k, s = self.kernel_size, self.stride or self.kernel_size
        return (shape[0], conv_output_size(shape[1], k, s, self.padding),
                conv_output_size(shape[2], k, s, self.padding))

    def layer_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def __repr__(self):
        return (f"AvgPool2d({self.kernel_size}, stride={self.stride or self.kernel_size}, "
                f"padding={self.padding})")


class GlobalAvgPool2d(Module):
    """The mean of each channel over all pixels: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        return ops.global_avg_pool2d(x)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"GlobalAvgPool2d needs (C, H, W) input, got {tuple(shape)}")
        return (shape[0],)

    def __repr__(self):
        return "GlobalAvgPool2d()"


class Add(Module):
    """The sum of two activations of one shape: a residual connection's merge.

    A user's forward may simply write ``a + b``; :mod:`minievo.graph` sees that addition as this
    layer. An output unit depends on the input when it does in either branch, so a channel fed
    by an addition is dead only when it is dead in every branch (the channels of the branches
    are tied).
    """

    arity = 2

    def forward(self, a, b):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"Add needs two inputs of one shape, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        return a + b

    def output_shape(self, *shapes):
        if len(shapes) != 2 or tuple(shapes[0]) != tuple(shapes[1]):
            raise ValueError(f"Add needs two inputs of one shape, got {list(shapes)}")
        return tuple(shapes[0])

    # A layer of several inputs gets lists: one live array and one shape per input.
    def live_outputs(self, live, shape):
        return np.logical_or.reduce(live)

    def needed_inputs(self, need, shape):
        return [need for _ in shape]

    def __repr__(self):
        return "Add()"


class Sequential(Module):
    """Layers applied in order; children are named '0', '1', ..."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential item {i} is {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)
        self.layers = list(layers)

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


def prunable_layers(model: Module) -> list[tuple[str, _Prunable]]:
    """The (name, layer) pairs of every Linear and Conv2d, in forward order."""
    return [(name, m) for name, m in model.named_modules() if m.prunable]


@contextlib.contextmanager
def trace_calls():
    """Record every leaf layer call (layer, inputs, output) made inside the block, in order:
    how :mod:`minievo.graph` sees a model's structure from one forward pass."""
    global _trace
    if _trace is not None:
        raise RuntimeError("trace_calls() does not nest")
    _trace = []
    try:
        yield _trace
    finally:
        _trace = None
