"""compact(model): a masked Sequential model with its dead structure removed, and back.

What "dead" means (docs/method.md#dead-structure): a filter or neuron with no live incoming synapse
produces a constant (its bias, then whatever ReLU / pooling make of it), and the synapses that
read it add a constant to the next layer. The compact model keeps that behaviour exactly:

1. A forward sweep marks every map / feature *dynamic* (depends on the input) or *static*. A
   unit is dynamic when at least one live synapse reads a dynamic unit. The static values are
   computed once, by running the masked dense layers on the static part (float64).
2. The static contribution to each layer is folded into it: into the bias when it is the same at
   every output pixel (always, for unpadded convolutions and linear layers), else into a
   per-pixel ``bias_map``.
3. A backward sweep marks the units the output *needs*: the model's outputs, and every dynamic
   unit read by a live synapse of a needed unit. A layer computes only its needed dynamic
   outputs; the input maps (or features) nobody reads are dropped by a Gather before the first
   layer. Model outputs that are static are filled in from their constant values.

The compact model remembers everything it dropped (the original biases, the synapses it does
not execute), so :func:`expand` rebuilds the original masked dense model exactly, and
:meth:`CompactModel.summary` reports both the sampled and the effective counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minievo import backend
from minievo import layers as L
from minievo.backend import BackendError, get_array_module, is_cupy_array
from minievo.sparse import reference as ref
from minievo.sparse.layers import (
    CompactConv2d,
    CompactLinear,
    Flatten,
    Gather,
    Identity,
    MaxPool,
    ReLU,
    batch_first,
    unwrap,
)

SUPPORTED = (L.Conv2d, L.Linear, L.MaxPool2d, L.ReLU, L.Flatten, L.Dropout)


def _leaf_layers(model, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(model, L.Sequential):
        out = []
        for i, layer in enumerate(model.layers):
            out += _leaf_layers(layer, f"{prefix}{i}" if not prefix else f"{prefix}.{i}")
        return out
    if isinstance(model, SUPPORTED):
        return [(prefix or "0", model)]
    names = ", ".join(c.__name__ for c in SUPPORTED)
    where = f" (at {prefix})" if prefix else ""
    raise TypeError(f"compact() handles Sequential models built from {names}; got "
                    f"{type(model).__name__}{where}")


def _out_shape(layer, shape: tuple) -> tuple:
    """Per-sample output shape of a leaf layer; ValueError when the input does not fit."""
    if isinstance(layer, L.Conv2d):
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise ValueError(f"{layer!r} needs ({layer.in_channels}, H, W) input, got {shape}")
        k = layer.kernel_size
        return (layer.out_channels,
                *ref.conv_output_hw(shape[1], shape[2], k, k, layer.stride, layer.padding))
    if isinstance(layer, L.Linear):
        if len(shape) != 1 or shape[0] != layer.in_features:
            raise ValueError(f"{layer!r} needs ({layer.in_features},) input, got {shape}")
        return (layer.out_features,)
    if isinstance(layer, L.MaxPool2d):
        if len(shape) != 3:
            raise ValueError(f"{layer!r} needs (C, H, W) input, got {shape}")
        k = layer.kernel_size
        s = layer.stride or k
        return (shape[0], *ref.conv_output_hw(shape[1], shape[2], k, k, s, 0))
    if isinstance(layer, L.Flatten):
        return (int(np.prod(shape)),)
    return shape


def _propagate(leaves, shape: tuple) -> list[tuple]:
    shapes = [tuple(shape)]
    for _, layer in leaves:
        shapes.append(_out_shape(layer, shapes[-1]))
    return shapes


def _infer_input_shape(leaves) -> tuple:
    first = leaves[0][1]
    if isinstance(first, L.Linear):
        return (first.in_features,)
    linear_after_flatten = None
    for i, (_, layer) in enumerate(leaves):
        if isinstance(layer, L.Flatten):
            for _, nxt in leaves[i + 1 :]:
                if isinstance(nxt, L.Linear):
                    linear_after_flatten = (i, nxt)
                    break
                if isinstance(nxt, L.Conv2d | L.MaxPool2d | L.Flatten):
                    break
            break
    if linear_after_flatten is not None:
        i, lin = linear_after_flatten
        if i == 0:
            return (lin.in_features,)
        if isinstance(first, L.Conv2d):
            for side in range(1, 2049):  # the square input whose flattened maps fit the Linear
                shape = (first.in_channels, side, side)
                try:
                    flat = int(np.prod(_propagate(leaves[:i], shape)[-1]))
                except ValueError:
                    continue
                if flat == lin.in_features:
                    return shape
    raise ValueError("cannot infer the input shape of this model; pass input_shape=(C, H, W)")


@dataclass
class _Info:
    name: str
    layer: object
    in_shape: tuple
    out_shape: tuple
    dyn_in: np.ndarray | None = None
    dyn_out: np.ndarray | None = None
    static_out: np.ndarray | None = None
    need_in: np.ndarray | None = None
    kept_out: np.ndarray | None = None
    live: np.ndarray | None = None  # conv: (O, I) live kernels; linear: (O, I) synapses
    w: np.ndarray | None = None
    mask: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def prunable(self) -> bool:
        return isinstance(self.layer, L.Conv2d | L.Linear)


def _units(shape: tuple) -> int:
    return shape[0]  # maps for (C, H, W), features for (F,)


def _analyse(leaves, input_shape) -> list[_Info]:
    shapes = _propagate(leaves, input_shape)
    infos = [_Info(n, layer, shapes[i], shapes[i + 1]) for i, (n, layer) in enumerate(leaves)]
    dyn = np.ones(_units(input_shape), dtype=bool)
    static = np.zeros(input_shape)
    for info in infos:
        layer = info.layer
        info.dyn_in = dyn
        if info.prunable:
            mask = backend.to_numpy(layer.mask) != 0
            w = backend.to_numpy(layer.weight.data).astype(np.float32) * mask
            o = w.shape[0]
            b = (np.zeros(o, np.float32) if layer.bias is None
                 else backend.to_numpy(layer.bias.data).astype(np.float32))
            info.w, info.mask, info.bias = w, mask, b
            info.live = mask.reshape(o, w.shape[1], -1).any(2)
            info.dyn_out = (info.live & dyn[None, :]).any(1)
            s_in = static.copy()
            s_in[dyn] = 0
            if isinstance(layer, L.Conv2d):
                static = ref.masked_conv2d(s_in[None], w, b, mask, layer.stride,
                                           layer.padding)[0]
            else:
                static = ref.masked_linear(s_in[None], w, b, mask)[0]
            dyn = info.dyn_out
        elif isinstance(layer, L.ReLU):
            static = np.maximum(static, 0)
        elif isinstance(layer, L.MaxPool2d):
            static = ref.max_pool2d(static, layer.kernel_size, layer.stride)
        elif isinstance(layer, L.Flatten) and len(info.in_shape) == 3:
            dyn = np.repeat(dyn, int(np.prod(info.in_shape[1:])))
            static = static.reshape(-1)
        info.dyn_out = dyn
        info.static_out = static
    need = np.ones(_units(infos[-1].out_shape), dtype=bool)
    for info in reversed(infos):
        if info.prunable:
            kept = need & info.dyn_out
            info.kept_out = np.flatnonzero(kept)
            need = info.dyn_in & info.live[kept].any(0)
        elif isinstance(info.layer, L.Flatten) and len(info.in_shape) == 3:
            need = need.reshape(info.in_shape[0], -1).any(1)
        info.need_in = need
    return infos


@dataclass
class _Source:
    """What :func:`expand` needs to rebuild one prunable layer exactly."""

    kind: str  # 'conv' or 'linear'
    shape: tuple  # weight shape
    stride: int
    padding: int
    has_bias: bool
    out_hw: tuple  # output pixels per map (conv) or (1, 1)
    bias: np.ndarray
    kept_out: np.ndarray  # original output units computed by the compact layer
    present_in: np.ndarray  # original input units read by it (its columns)
    residual_index: np.ndarray  # flat indices (into the weight) of synapses not executed
    residual_value: np.ndarray
    step: int = -1  # index of the compact layer in CompactModel.steps (-1: none)

    def meta(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "stride": self.stride,
                "padding": self.padding, "has_bias": self.has_bias,
                "out_hw": list(self.out_hw), "step": self.step}


_SRC_ARRAYS = ("bias", "kept_out", "present_in", "residual_index", "residual_value")


def _fold_offset(offset: np.ndarray):
    """(bias, bias_map) for an output offset (O, OH, OW): a plain bias when constant per map."""
    first = offset[:, :1, :1]
    scale = max(1.0, float(np.abs(offset).max(initial=0.0)))
    if np.all(np.abs(offset - first) <= 1e-12 * scale):
        return offset[:, 0, 0].astype(np.float32), None
    return np.zeros(offset.shape[0], np.float32), offset.astype(np.float32)


def _leaf_spec(layer) -> dict:
    if isinstance(layer, L.Conv2d):
        return {"op": "conv"}
    if isinstance(layer, L.Linear):
        return {"op": "linear"}
    if isinstance(layer, L.MaxPool2d):
        return {"op": "maxpool", "kernel_size": layer.kernel_size,
                "stride": layer.stride or layer.kernel_size}
    if isinstance(layer, L.ReLU):
        return {"op": "relu"}
    if isinstance(layer, L.Flatten):
        return {"op": "flatten"}
    return {"op": "dropout", "p": float(layer.p)}


@dataclass
class CompactModel:
    """A compact, inference-only model: run it like the masked dense one.

    Attributes:
        steps: the compact layers and parameter-free steps, in order.
        input_shape: per-sample input shape, e.g. (1, 28, 28).
        out_index / out_static: when some model outputs are constant, the computed outputs go
            to ``out_index`` and the rest come from ``out_static`` (per-sample output shape).
        sources: per prunable layer of the original model, what expand() needs.
        leaf_specs: the original layer sequence (ops and hyper-parameters).
    """

    steps: list
    input_shape: tuple
    sources: list[_Source]
    leaf_specs: list[dict]
    leaf_names: list[str]
    output_shape: tuple
    out_index: np.ndarray | None = None
    out_static: np.ndarray | None = None
    backend: str = "numpy"
    _dev: dict = field(default_factory=dict, repr=False)

    # ----- running ---------------------------------------------------------------------------
    def to(self, name: str) -> CompactModel:
        """Move the compact layers to backend ``name``; returns self."""
        name = backend.check_name(name)
        for step in self.steps:
            if hasattr(step, "to"):
                step.to(name)
        self._dev = {}
        if name == "cupy" and self.out_index is not None:
            self._dev = {"out_index": backend.to_backend(self.out_index, "cupy"),
                         "out_static": backend.to_backend(self.out_static, "cupy")}
        self.backend = name
        return self

    def _check_input(self, x):
        kind = "cupy" if is_cupy_array(x) else "numpy"
        if kind != self.backend:
            raise BackendError(
                f"the compact model lives on {self.backend} but got a {kind} array; use "
                f"compact_model.to({kind!r}) or minievo.backend.to_backend(x, {self.backend!r})"
            )
        if x.dtype != np.float32:
            raise TypeError(f"the compact model needs float32 input, got {x.dtype}; convert "
                            "with x.astype(xp.float32)")
        per_sample = tuple(x.shape[1:])
        flat_first = self.leaf_specs and self.leaf_specs[0]["op"] == "flatten"
        if x.ndim < 2 or (per_sample != tuple(self.input_shape) and not (
                flat_first and int(np.prod(per_sample)) == int(np.prod(self.input_shape)))):
            raise ValueError(f"the compact model expects input (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")

    def forward(self, x):
        """Run the model. x: (N, *input_shape) float32, NumPy or CuPy (or a Tensor).

        Returns:
            The output array, (N, *output_shape), on the backend of x.
        """
        x = unwrap(x)
        self._check_input(x)
        xp = get_array_module(x)
        n = x.shape[0]
        # Batch-last inside: (C, H, W, N) maps, (F, N) features (see minievo.sparse.layers).
        # On the CPU the input starts as a transposed view: the native kernel reads it in place
        # and the other paths make the copy they need.
        if self.leaf_specs[0]["op"] == "flatten" or x.ndim == 2:
            h = x.reshape(n, -1).T
        else:
            h = x.transpose(1, 2, 3, 0)
        if self.backend == "cupy":
            h = xp.ascontiguousarray(h)
        steps = self.steps
        i = 0
        in_index = None
        while i < len(steps):
            step = steps[i]
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            if isinstance(step, Gather) and isinstance(nxt, (CompactConv2d, CompactLinear)):
                in_index = step.index  # the layer reads its maps where they are (native CPU)
                i += 1
                continue
            # Fused on the CPU: conv + max-pool, and a ReLU right after either layer kind.
            pool = None
            if isinstance(step, CompactConv2d) and isinstance(nxt, MaxPool):
                pool = (nxt.kernel_size, nxt.stride)
                i += 1
                nxt = steps[i + 1] if i + 1 < len(steps) else None
            if isinstance(step, (CompactConv2d, CompactLinear)):
                relu = isinstance(nxt, ReLU)
                kwargs = {"relu": relu} if pool is None else {"relu": relu, "pool": pool}
                if in_index is not None:
                    kwargs["in_index"], in_index = in_index, None
                i += 2 if relu else 1
                if i >= len(steps) and self.backend == "numpy":
                    # the last layer writes a batch-first result directly
                    return self._last_layer_batch_first(step, h, n, kwargs)
                h = step.forward_bl(h, **kwargs)
                continue
            if isinstance(step, ReLU):  # in place, unless h still is (a view of) the input
                h = step.forward_bl(h, inplace=not xp.may_share_memory(h, x))
            else:
                h = step.forward_bl(h)
            i += 1
        if self.out_index is not None:
            static = self._dev.get("out_static") if self.backend == "cupy" else self.out_static
            index = self._dev.get("out_index") if self.backend == "cupy" else self.out_index
            full = xp.empty((*self.output_shape, n), dtype=xp.float32)
            full[...] = static[..., None]
            if index.size:
                full[index] = h
            h = full
        return batch_first(h)

    __call__ = forward

    def _last_layer_batch_first(self, step, h, n: int, kwargs: dict) -> np.ndarray:
        """Run the model's last (compact) layer straight into the batch-first output; a
        transposing copy of a large batch-last result cost as much as a sparse layer."""
        final = np.empty((n, *self.output_shape), dtype=np.float32)
        if self.out_index is None:
            step.forward_bl(h, out=final.transpose(*range(1, final.ndim), 0), **kwargs)
            return final
        static = np.ones(self.output_shape[0], dtype=bool)
        static[self.out_index] = False
        final[:, static] = self.out_static[static]
        step.forward_bl(h, out=final.transpose(*range(1, final.ndim), 0),
                        out_index=self.out_index, **kwargs)
        return final

    def predict(self, x, batch_size: int = 1000):
        """Class indices (argmax of the outputs), computed in batches."""
        x = unwrap(x)
        xp = get_array_module(x)
        outs = [self.forward(x[i : i + batch_size]).argmax(axis=1)
                for i in range(0, x.shape[0], batch_size)]
        return xp.concatenate(outs) if outs else xp.zeros((0,), dtype=xp.int64)

    @property
    def compact_layers(self) -> list:
        return [s for s in self.steps if isinstance(s, CompactConv2d | CompactLinear)]

    def __repr__(self):
        inner = "\n".join(f"  {s!r}" for s in self.steps)
        return f"CompactModel(input {self.input_shape}\n{inner}\n)"

    def summary(self):
        """Synapses, clusters and multiply-accumulates per image (see :mod:`summary`)."""
        from minievo.sparse.summary import summarize  # noqa: PLC0415

        return summarize(self)

    # ----- saving ----------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the compact model to ``path`` (.npz) atomically (temp file, then os.replace)."""
        from minievo.sparse.storage import save_compact  # noqa: PLC0415

        save_compact(self, path)

    @staticmethod
    def load(path, backend_name: str = "numpy") -> CompactModel:
        """Read a compact model written by :meth:`save`."""
        from minievo.sparse.storage import load_compact  # noqa: PLC0415

        return load_compact(path, backend_name)


def _model_backend(leaves) -> str:
    for _, layer in leaves:
        if getattr(layer, "prunable", False):
            return backend.backend_of(layer.weight.data)
    return "numpy"


def compact(model, input_shape: tuple | None = None, method: str = "auto") -> CompactModel:
    """The compact form of a masked model (Sequential of Conv2d, Linear, MaxPool2d, ReLU,
    Flatten, Dropout; Dropout acts as at inference).

    Args:
        model: the masked dense model (either backend; the compact model goes to the same one).
        input_shape: per-sample input shape, e.g. (1, 28, 28). Inferred when a Flatten feeds a
            Linear (square inputs) or the model starts with Flatten or Linear.
        method: CPU path of every compact layer: 'auto' (by cost model), 'native', 'csr' or
            'dense'.

    Returns:
        A :class:`CompactModel` whose forward equals the masked dense forward (float tolerance).
    """
    if method not in ("auto", "native", "csr", "dense"):
        raise ValueError(f"method must be 'auto', 'native', 'csr' or 'dense', got {method!r}")
    if method == "native":
        from minievo.kernels import native  # noqa: PLC0415

        native.load()  # NativeUnavailable, with the reason, now rather than at the first call
    leaves = _leaf_layers(model)
    if not leaves:
        raise ValueError("compact() got an empty model")
    if input_shape is None:
        input_shape = _infer_input_shape(leaves)
    input_shape = tuple(int(s) for s in input_shape)
    if leaves[0][1].__class__ is L.Flatten:
        input_shape = (int(np.prod(input_shape)),)  # Flatten first: any (N, ...) of that size
        leaves_for_analysis = leaves[1:]
        steps: list = [Flatten()]
    else:
        leaves_for_analysis = leaves
        steps = []
    if not leaves_for_analysis:
        raise ValueError("compact() got a model without layers after Flatten")
    infos = _analyse(leaves_for_analysis, input_shape)
    sources: list[_Source] = []
    present = np.arange(_units(input_shape))
    started = False
    constant = False
    for info in infos:
        layer = info.layer
        if info.prunable:
            kept = info.kept_out
            if not started:
                started = True
                sel = np.flatnonzero(info.need_in)
                if sel.size != present.size:
                    steps.append(Gather(sel))
                    present = sel
            is_conv = isinstance(layer, L.Conv2d)
            exec_mask = np.zeros_like(info.mask)
            if kept.size and present.size and not constant:
                exec_mask[np.ix_(kept, present)] = info.mask[np.ix_(kept, present)]
            residual = np.flatnonzero(info.mask & ~exec_mask)
            src = _Source(
                kind="conv" if is_conv else "linear", shape=info.w.shape,
                stride=getattr(layer, "stride", 1), padding=getattr(layer, "padding", 0),
                has_bias=layer.bias is not None,
                out_hw=tuple(info.out_shape[1:]) if is_conv else (1, 1),
                bias=info.bias.copy(), kept_out=kept.astype(np.int64),
                present_in=present.astype(np.int64), residual_index=residual.astype(np.int64),
                residual_value=info.w.reshape(-1)[residual].astype(np.float32),
            )
            sources.append(src)
            if kept.size == 0 or constant:
                constant = True  # nothing downstream depends on the input any more
                present = np.zeros(0, dtype=np.int64)
                continue
            w = info.w[np.ix_(kept, present)]
            m = info.mask[np.ix_(kept, present)]
            offset = info.static_out[kept]
            if is_conv:
                compact_layer = CompactConv2d.from_dense(w, None, m, layer.stride, layer.padding,
                                                         method=method)
                compact_layer.bias, compact_layer.bias_map = _fold_offset(offset)
            else:
                compact_layer = CompactLinear.from_dense(w, None, m, method=method)
                compact_layer.bias = offset.astype(np.float32)
            src.step = len(steps)
            steps.append(compact_layer)
            present = kept
        elif constant:
            continue
        elif isinstance(layer, L.Flatten):
            if len(info.in_shape) == 3:
                hw = int(np.prod(info.in_shape[1:]))
                present = (present[:, None] * hw + np.arange(hw)).reshape(-1)
            steps.append(Flatten())
        elif isinstance(layer, L.MaxPool2d):
            steps.append(MaxPool(layer.kernel_size, layer.stride))
        elif isinstance(layer, L.ReLU):
            steps.append(ReLU())
        else:
            steps.append(Identity(layer.p))
    output_shape = infos[-1].out_shape
    out_index = out_static = None
    if constant or present.size != _units(output_shape):
        out_index = present.astype(np.int64) if not constant else np.zeros(0, np.int64)
        out_static = infos[-1].static_out.astype(np.float32)
        if constant:
            steps = []
    cm = CompactModel(
        steps=steps, input_shape=input_shape, sources=sources,
        leaf_specs=[_leaf_spec(layer) for _, layer in leaves],
        leaf_names=[name for name, _ in leaves], output_shape=tuple(output_shape),
        out_index=out_index, out_static=out_static,
    )
    return cm.to(_model_backend(leaves))


def dense_weights(cm: CompactModel, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, mask) of prunable layer j of the original model, rebuilt exactly."""
    src = cm.sources[j]
    w = np.zeros(src.shape, np.float32)
    m = np.zeros(src.shape, np.float32)
    if src.step >= 0:
        cw, _, cmask = cm.steps[src.step].to_dense()
        idx = np.ix_(src.kept_out, src.present_in)
        w[idx] = cw
        m[idx] = cmask
    w.reshape(-1)[src.residual_index] = src.residual_value
    m.reshape(-1)[src.residual_index] = 1
    return w, m


def expand(cm: CompactModel, backend_name: str | None = None):
    """The masked dense model a compact model came from (a Sequential), exactly.

    Weights, masks and biases equal the original's (masked weights are 0, as the dense layers
    keep them). Dropout layers come back with their p.
    """
    layers = []
    j = 0
    for spec in cm.leaf_specs:
        op = spec["op"]
        if op in ("conv", "linear"):
            src = cm.sources[j]
            w, m = dense_weights(cm, j)
            if op == "conv":
                o, c, k, _ = src.shape
                layer = L.Conv2d(c, o, k, stride=src.stride, padding=src.padding,
                                 bias=src.has_bias)
            else:
                o, f = src.shape
                layer = L.Linear(f, o, bias=src.has_bias)
            layer.weight.data = backend.to_backend(w, backend.backend_of(layer.weight.data))
            if src.has_bias:
                layer.bias.data = backend.to_backend(src.bias.astype(np.float32),
                                                     backend.backend_of(layer.bias.data))
            layer.set_mask(m)
            layers.append(layer)
            j += 1
        elif op == "maxpool":
            layers.append(L.MaxPool2d(spec["kernel_size"], spec["stride"]))
        elif op == "relu":
            layers.append(L.ReLU())
        elif op == "flatten":
            layers.append(L.Flatten())
        else:
            layers.append(L.Dropout(spec["p"]))
    model = L.Sequential(*layers)
    model.eval()
    name = backend_name or cm.backend
    return model.to(name)
