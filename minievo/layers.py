"""Modules: containers of parameters with a forward pass.

Linear and Conv2d are the *prunable* layers: each carries a mask (the genotype of METHOD.md), a
0/1 array of the weight's shape. The forward pass uses ``weight * mask``, and the optimisers
keep masked weights and their state at exactly zero.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from minievo import backend, init
from minievo import functions as F
from minievo.autograd import Parameter, Tensor


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

class Module:
    """Base class. Subclasses set Parameters / Modules as attributes and define forward."""

    prunable = False

    def __init__(self):
        self.training = True

    def forward(self, *args):
        raise NotImplementedError

    def __call__(self, *args):
        return self.forward(*args)

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


def _like(value, ref):
    """``value`` as an array of ``ref``'s backend and dtype."""
    arr = backend.to_backend(np.asarray(value) if not hasattr(value, "shape") else value,
                             backend.backend_of(ref))
    return arr.astype(ref.dtype, copy=False)


class _Prunable(Module):
    """Shared mask handling of Linear and Conv2d."""

    prunable = True
    weight: Parameter

    def _init_mask(self):
        xp = backend.get_array_module(self.weight.data)
        self.mask = xp.ones_like(self.weight.data)
        self.weight.mask = self.mask

    def set_mask(self, mask) -> None:
        """Install a 0/1 mask of the weight's shape and zero the masked weights."""
        if tuple(mask.shape) != self.weight.shape:
            raise ValueError(
                f"{type(self).__name__}.set_mask: mask shape {tuple(mask.shape)} does not "
                f"match weight shape {self.weight.shape}"
            )
        m = _like(mask, self.weight.data)
        self.mask = (m != 0).astype(self.weight.dtype)
        self.weight.mask = self.mask
        self.weight.data *= self.mask

    def masked_weight(self) -> Tensor:
        # Multiplying by the mask in the graph also masks the weight's gradient.
        return self.weight * self.mask

    def _own_state(self) -> dict:
        state = super()._own_state()
        state["mask"] = self.mask
        return state

    def _load_own(self, state: dict) -> None:
        mask = state.pop("mask", None)
        super()._load_own(state)
        if mask is not None:
            self.set_mask(mask)

    def _to(self, name: str) -> None:
        super()._to(name)
        self.mask = backend.to_backend(self.mask, name)
        self.weight.mask = self.mask


class Linear(_Prunable):
    """y = x (W * M)^T + b. weight (out, in), mask (out, in), bias (out,)."""

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
            )
        plan = _sparse_plan(self, x)
        if plan is not None:  # a sparse mask: forward and backward over the live synapses
            return _sparse_train().linear(self, x, plan)
        return F.linear(x, self.masked_weight(), self.bias)

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
        plan = _sparse_plan(self, x)
        if plan is not None:  # a sparse mask: forward and backward over the live synapses
            return _sparse_train().conv2d(self, x, plan)
        return F.conv2d(x, self.masked_weight(), self.bias, self.stride, self.padding)

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, {self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")


def _sparse_train():
    from minievo.sparse import train  # noqa: PLC0415  (minievo.sparse builds on this module)

    return train


def _sparse_plan(layer, x):
    """The layer's sparse-training plan when it applies (see :mod:`minievo.sparse.train`)."""
    if getattr(layer, "mask", None) is None:
        return None
    return _sparse_train().plan_for(layer, x)


class MaxPool2d(Module):
    def __init__(self, kernel_size: int, stride: int | None = None):
        super().__init__()
        self.kernel_size, self.stride = int(kernel_size), stride

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def __repr__(self):
        return f"MaxPool2d({self.kernel_size}, stride={self.stride or self.kernel_size})"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)

    def __repr__(self):
        return "ReLU()"


class Flatten(Module):
    def forward(self, x):
        return F.flatten(x, 1)

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

    def __repr__(self):
        return f"Dropout(p={self.p})"


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
