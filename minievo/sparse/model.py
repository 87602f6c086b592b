"""compact(model): a masked model with its dead structure removed.

What "dead" means (docs/method.md#dead-structure): a filter or neuron with no live incoming
synapse produces a constant (its bias, then whatever ReLU, pooling or batch norm make of it),
and the synapses that read it add a constant to the next layer. The compact model keeps that
behaviour exactly. It reads the one walk of the model (:func:`minievo.graph.walk`), so it takes
whatever the walk follows: Sequential stacks and residual networks written as ordinary Python.

1. The walk marks every unit (map or feature) of every node *live* (depends on the input) or
   constant, from the layers' own answers (the layer protocol of :mod:`minievo.layers`). The
   constant values are computed once, by running each layer's own forward on the constant part
   of its input (float64 where the layer allows it).
2. The constant contribution to a Conv2d / Linear is folded into it: into the bias when it is
   the same at every output pixel (always, for unpadded convolutions and linear layers), else
   into a per-pixel ``bias_map``. A residual addition adds the constant part of a branch the
   same way. A batch norm right after a convolution that nothing else reads is folded into
   that convolution's weights and bias.
3. The backward sweep (:func:`minievo.graph.needed`) marks the units the output *needs*. A
   layer computes only its needed live outputs; the input maps (or features) nobody reads are
   dropped by a Gather before the first layer. Model outputs that are constant are filled in
   from their values.

The compact model runs its steps in forward order on batch-last activations; each step reads
the outputs of earlier steps (``inputs``; a chain simply reads the step before). A chain of
Conv2d, Linear, MaxPool2d, ReLU, Flatten and Dropout also remembers everything it dropped
(the original biases, the synapses it does not execute), so :func:`expand` rebuilds the
original masked dense model exactly; the counts of :func:`~minievo.sparse.summary.summarize`
cover both kinds. Saving, loading and the summary live in :mod:`~minievo.sparse.storage` and
:mod:`~minievo.sparse.summary` (``CompactModel.save``, ``.load`` and ``.summary`` are bound to
them by :mod:`minievo.sparse`); this module imports neither.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from minievo import backend, graph
from minievo import layers as L
from minievo.autograd import Tensor, no_grad
from minievo.backend import BackendError, get_array_module, is_cupy_array
from minievo.sparse.layers import (
    Affine,
    AvgPool,
    CompactConv2d,
    CompactLinear,
    Flatten,
    Gather,
    GlobalAvgPool,
    Identity,
    LayerStep,
    MaxPool,
    ReLU,
    Sum,
    batch_first,
    unwrap,
)

#: The layer types of a compact chain (the stored format that :func:`expand` rebuilds).
CHAIN_TYPES = (L.Conv2d, L.Linear, L.MaxPool2d, L.ReLU, L.Flatten, L.Dropout)

#: Compact steps of the channelwise layer types minievo knows, by exact type: (layer, kept
#: channel indices) -> step. Any other channelwise layer runs its own forward, restricted to the
#: kept channels by its ``select_channels`` (:class:`~minievo.sparse.layers.LayerStep`).
CHANNEL_STEPS = {
    L.ReLU: lambda layer, index: ReLU(),
    L.MaxPool2d: lambda layer, index: MaxPool(layer.kernel_size, layer.stride),
    L.AvgPool2d: lambda layer, index: AvgPool(layer.kernel_size, layer.stride, layer.padding),
    L.GlobalAvgPool2d: lambda layer, index: GlobalAvgPool(),
    L.BatchNorm2d: lambda layer, index: Affine(*(a[index] for a in layer.scale_shift())),
}


@dataclass
class Source:
    """What a prunable layer of the original model became (for :func:`expand` and the counts).

    ``name`` is the layer's node name in a graph model ('' in a chain, whose ``leaf_names``
    name it).
    """

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
    name: str = ""

    def meta(self) -> dict:
        meta = {"kind": self.kind, "shape": list(self.shape), "stride": self.stride,
                "padding": self.padding, "has_bias": self.has_bias,
                "out_hw": list(self.out_hw), "step": self.step}
        if self.name:
            meta["name"] = self.name
        return meta


#: The array fields of a :class:`Source`, as stored.
SOURCE_ARRAYS = ("bias", "kept_out", "present_in", "residual_index", "residual_value")


def _fold_offset(offset: np.ndarray):
    """(bias, bias_map) for an output offset (O, OH, OW): a plain bias when constant per map."""
    first = offset[:, :1, :1]
    scale = max(1.0, float(np.abs(offset).max(initial=0.0)))
    if np.all(np.abs(offset - first) <= 1e-12 * scale):
        return offset[:, 0, 0].astype(np.float32), None
    return np.zeros(offset.shape[0], np.float32), offset.astype(np.float32)


def _unit_offset(offset: np.ndarray) -> np.ndarray | None:
    """A residual addition's constant part: None when zero, (U,) when the same at every pixel
    of a map, else (U, H, W)."""
    if not np.any(offset):
        return None
    if offset.ndim == 1:
        return offset.astype(np.float32)
    bias, bias_map = _fold_offset(offset)
    return bias if bias_map is None else bias_map


@dataclass
class CompactModel:
    """A compact, inference-only model: run it like the masked dense one.

    Attributes:
        steps: the compact layers and parameter-free steps, in forward order.
        input_shape: per-sample input shape, e.g. (1, 28, 28).
        sources: per prunable layer of the original model, what it became.
        leaf_specs, leaf_names: a chain's original layer sequence (ops and hyper-parameters;
            dotted names); empty for a graph model.
        output_shape: per-sample output shape.
        out_index / out_static: when some model outputs are constant, the computed outputs go
            to ``out_index`` and the rest come from ``out_static`` (per-sample output shape).
        inputs: per step, the steps whose outputs it reads (-1: the model input); None for a
            chain (each step reads the one before).
    """

    steps: list
    input_shape: tuple
    sources: list[Source]
    leaf_specs: list[dict]
    leaf_names: list[str]
    output_shape: tuple
    out_index: np.ndarray | None = None
    out_static: np.ndarray | None = None
    inputs: list[list[int]] | None = None
    backend: str = "numpy"
    _dev: dict = field(default_factory=dict, repr=False)

    @property
    def is_chain(self) -> bool:
        """Whether this is a compact chain (stored in the chain format; :func:`expand` works)."""
        return self.inputs is None

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

    def _flat_first(self) -> bool:
        return bool(self.leaf_specs) and self.leaf_specs[0]["op"] == "flatten"

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
        if x.ndim < 2 or (per_sample != tuple(self.input_shape) and not (
                self._flat_first() and int(np.prod(per_sample)) == int(np.prod(self.input_shape)))):
            raise ValueError(f"the compact model expects input (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")

    def step_inputs(self) -> list[list[int]]:
        """Per step, the steps whose outputs it reads (-1: the model input)."""
        if self.inputs is None:
            return [[i - 1] for i in range(len(self.steps))]
        return self.inputs

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
        if self._flat_first():
            h = x.reshape(n, -1).T
        else:
            h = x.transpose(*range(1, x.ndim), 0)
        if self.backend == "cupy":
            h = xp.ascontiguousarray(h)
        steps, ins = self.steps, self.step_inputs()
        last = len(steps) - 1
        readers = {-1: 0}
        for reads in ins:
            for v in reads:
                readers[v] = readers.get(v, 0) + 1

        def alone(i: int) -> bool:  # step i+1 exists and is the only reader of step i
            return i < last and ins[i + 1] == [i] and readers.get(i) == 1

        values = {-1: h}
        i = 0
        while i < len(steps):
            start, step = i, steps[i]
            args = [values[v] for v in ins[i]]
            kwargs: dict = {}
            if isinstance(step, Gather) and alone(i) and isinstance(
                    steps[i + 1], CompactConv2d | CompactLinear):
                kwargs["in_index"] = step.index  # the layer reads its maps where they are
                i += 1
                step = steps[i]
            if isinstance(step, CompactConv2d | CompactLinear):
                # Fused on the CPU: conv + max-pool, and a ReLU right after either layer kind.
                if isinstance(step, CompactConv2d) and alone(i) and isinstance(steps[i + 1],
                                                                               MaxPool):
                    i += 1
                    kwargs["pool"] = (steps[i].kernel_size, steps[i].stride)
                kwargs["relu"] = alone(i) and isinstance(steps[i + 1], ReLU)
                i += kwargs["relu"]
                if i == last and self.backend == "numpy":
                    # the last layer writes a batch-first result directly
                    return self._last_layer_batch_first(step, args[0], n, kwargs)
                out = step.forward_bl(args[0], **kwargs)
            elif isinstance(step, ReLU | Sum):  # in place when nothing else reads the input
                mine = readers[ins[i][0]] == 1 and not xp.may_share_memory(args[0], x)
                out = step.forward_bl(*args, inplace=mine)
            else:
                out = step.forward_bl(*args)
            for v in ins[start]:
                readers[v] -= 1
                if readers[v] == 0:
                    del values[v]
            values[i] = out
            i += 1
        h = values[last] if steps else h
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
        if self.inputs is None:
            inner = "\n".join(f"  {s!r}" for s in self.steps)
        else:
            inner = "\n".join(f"  {i}: {s!r} <- {self.inputs[i]}"
                              for i, s in enumerate(self.steps))
        return f"CompactModel(input {self.input_shape}\n{inner}\n)"


# ----- compaction ----------------------------------------------------------------------------


def _is_leaf(module) -> bool:
    return not any(True for _ in module.named_children())


def _leaves(model) -> list[tuple[str, L.Module]]:
    """(dotted name, layer) of every leaf module (empty Sequentials aside), in definition
    order."""
    return [(name or "0", m) for name, m in model.named_modules()
            if _is_leaf(m) and not isinstance(m, L.Sequential)]


def _chain_leaves(model, structure) -> list | None:
    """The leaves of a model that is a chain of :data:`CHAIN_TYPES` in definition order (the
    layers the walk does not see, Dropout at inference, included); None for any other model."""
    if not structure.is_chain():
        return None
    leaves = _leaves(model)
    if any(type(m) not in CHAIN_TYPES for _, m in leaves):
        return None
    walked = [n.layer for n in structure.nodes[1:]]
    run = [m for _, m in leaves if type(m) is not L.Dropout]
    if len(run) != len(walked) or any(a is not b for a, b in zip(run, walked)):
        return None
    return leaves


def _infer_input_shape(leaves: list) -> tuple:
    """The input shape a Sequential stack implies: a Linear's features, or the square image
    whose maps flatten into the first Linear after a Flatten."""
    first = leaves[0]
    if isinstance(first, L.Linear):
        return (first.in_features,)
    flat = next((i for i, m in enumerate(leaves) if isinstance(m, L.Flatten)), None)
    after = None if flat is None else next((m for m in leaves[flat + 1 :] if m.prunable), None)
    if isinstance(after, L.Linear):
        if flat == 0:
            return (after.in_features,)
        if isinstance(first, L.Conv2d):
            for side in range(1, 2049):  # the square input whose flattened maps fit the Linear
                shape = (first.in_channels, side, side)
                try:
                    for layer in leaves[:flat]:
                        shape = layer.output_shape(shape)
                except ValueError:
                    continue
                if int(np.prod(shape)) == after.in_features:
                    return (first.in_channels, side, side)
    raise ValueError("cannot infer the input shape of this model; pass input_shape=(C, H, W)")


def _run_static(layer, args: list, name: str, xp) -> np.ndarray:
    """The layer's own forward on one constant sample (float64, or float32 where the layer
    needs it), as a NumPy float64 array."""
    error = None
    for dtype in (np.float64, np.float32):
        try:
            with no_grad():
                out = layer(*(Tensor(xp.asarray(a[None], dtype=dtype)) for a in args))
            return backend.to_numpy(unwrap(out))[0].astype(np.float64)
        except (TypeError, ValueError) as e:
            error = e
    raise TypeError(f"compact(): layer {name} ({type(layer).__name__}) fails on its constant "
                    f"input: {error}") from error


def _static_values(nodes, xp) -> list[np.ndarray]:
    """Per node, its output when the live input units are zero: the exact value of its
    constant units, and for a Conv2d / Linear / Add the constant part of the live ones. The
    layers run on the reference ops (whatever table is installed), so the values do not
    depend on an accelerator."""
    static = [np.zeros(nodes[0].out_shape)]
    previous = L.use_ops(L.REFERENCE_OPS)
    try:
        for node in nodes[1:]:
            layer = node.layer
            separate = layer.prunable or len(node.inputs) > 1
            args = []
            for i in node.inputs:
                s = static[i]
                if separate:  # the live units are computed by the compact layer itself
                    s = s.copy()
                    s[nodes[i].live] = 0
                args.append(s)
            static.append(_run_static(layer, args, node.name, xp))
    finally:
        L.use_ops(previous)
    return static


def _positions(held: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Where ``units`` (a subset of the sorted ``held``) sit in ``held``."""
    return np.searchsorted(held, units).astype(np.int64)


class _Compiler:
    """Turns the walked graph of a masked model into compact steps, node by node.

    For each node it tracks the units its step computes (``held``: sorted indices, a superset
    of the needed live units, all of them live) and the step that computes them (``value``;
    -1: the model input; None: nothing, every unit is constant). ``raw`` marks nodes whose
    units come from the input through parameter-free steps only: the first Conv2d / Linear
    after them gathers the input units it reads.
    """

    def __init__(self, structure, method: str, leaves: list | None, xp):
        self.nodes = structure.nodes
        self.method = method
        self.chain = leaves is not None
        need = graph.needed(structure)
        self.present = [need[n.index] & n.live for n in self.nodes]
        self.static = _static_values(self.nodes, xp)
        self.steps: list = []
        self.inputs: list[list[int]] = []
        self.sources: list[Source] = []
        units = self.nodes[0].out_shape[0]
        self.held = {0: np.arange(units)}
        self.value: dict[int, int | None] = {0: -1}
        self.raw = {0: True}
        self.folded: set[int] = set()
        # Dropout leaves of a chain, after the node they follow (0: before the first layer).
        self.dropouts: dict[int, list] = {}
        if leaves is not None:
            after = 0
            for _, layer in leaves:
                if type(layer) is L.Dropout:
                    self.dropouts.setdefault(after, []).append(layer)
                else:
                    after += 1

    def emit(self, step, inputs: list[int]) -> int:
        self.steps.append(step)
        self.inputs.append(list(inputs))
        return len(self.steps) - 1

    def _set(self, node, held, value, raw: bool) -> None:
        self.held[node.index] = np.asarray(held, dtype=np.int64)
        self.value[node.index] = value
        self.raw[node.index] = raw

    def run(self) -> None:
        self._dropouts(0)
        for node in self.nodes[1:]:
            if node.index in self.folded:
                continue
            layer = node.layer
            if layer.prunable:
                self._prunable(node)
            elif getattr(layer, "arity", 1) > 1:
                self._add(node)
            elif type(layer) is L.Flatten:
                self._flatten(node)
            elif layer.channelwise:
                self._channelwise(node)
            else:
                raise TypeError(
                    f"compact() cannot run layer {node.name} ({type(layer).__name__}): it is "
                    "not channelwise (an output unit reads other input units) and is none of "
                    "Conv2d, Linear, Flatten, Add. Declare channelwise = True and implement "
                    "select_channels() and layer_config() if each output channel depends only "
                    "on the same input channel (docs/extending.md)")
            self._dropouts(node.index)

    def _dropouts(self, index: int) -> None:
        for layer in self.dropouts.get(index, []):
            v = self.value[index]
            if v is not None:
                self.value[index] = self.emit(Identity(layer.p), [v])

    def _fold_target(self, node):
        """The batch norm (any channelwise layer with ``scale_shift()``) that alone reads
        ``node``, to be folded into its weights; None if there is none."""
        if len(node.consumers) != 1:
            return None
        reader = self.nodes[node.consumers[0]]
        layer = reader.layer
        if reader.inputs != [node.index] or not layer.channelwise or not callable(
                getattr(layer, "scale_shift", None)):
            return None
        return reader

    def _prunable(self, node) -> None:
        layer = node.layer
        if not isinstance(layer, L.Conv2d | L.Linear):
            raise TypeError(f"compact() has compact forms of Conv2d and Linear; layer "
                            f"{node.name} ({type(layer).__name__}) is prunable without one")
        i = node.inputs[0]
        is_conv = isinstance(layer, L.Conv2d)
        kept = np.flatnonzero(self.present[node.index])
        mask = backend.to_numpy(layer.mask) != 0
        w = backend.to_numpy(layer.weight.data).astype(np.float32) * mask
        bias = (np.zeros(w.shape[0], np.float32) if layer.bias is None
                else backend.to_numpy(layer.bias.data).astype(np.float32))
        cols, src = self.held[i], self.value[i]
        if self.raw[i]:  # the input units this layer reads, gathered from the input
            sel = np.flatnonzero(layer.needed_inputs(self.present[node.index], node.in_shape)
                                 & self.nodes[i].live)
            if sel.size != cols.size:
                if kept.size:
                    src = self.emit(Gather(_positions(cols, sel)), [src])
                cols = sel
        exec_mask = np.zeros_like(mask)
        if kept.size and cols.size:
            exec_mask[np.ix_(kept, cols)] = mask[np.ix_(kept, cols)]
        residual = np.flatnonzero(mask & ~exec_mask)
        source = Source(
            kind="conv" if is_conv else "linear", shape=w.shape,
            stride=getattr(layer, "stride", 1), padding=getattr(layer, "padding", 0),
            has_bias=layer.bias is not None,
            out_hw=tuple(node.out_shape[1:]) if is_conv else (1, 1),
            bias=bias.copy(), kept_out=kept.astype(np.int64),
            present_in=cols.astype(np.int64), residual_index=residual.astype(np.int64),
            residual_value=w.reshape(-1)[residual].astype(np.float32),
            name="" if self.chain else node.name,
        )
        self.sources.append(source)
        target = node
        if kept.size == 0:
            self._set(node, kept, None, False)
            return
        wk = w[np.ix_(kept, cols)]
        mk = mask[np.ix_(kept, cols)]
        offset = self.static[node.index][kept]
        bn = self._fold_target(node)
        if bn is not None:
            scale, shift = (np.asarray(a, dtype=np.float64)[kept] for a in bn.layer.scale_shift())
            wk = (wk * scale.reshape(_per_row(wk))).astype(np.float32)
            offset = scale.reshape(_per_row(offset)) * offset + shift.reshape(_per_row(offset))
            self.folded.add(bn.index)
            target = bn
        if is_conv:
            step = CompactConv2d.from_dense(wk, None, mk, layer.stride, layer.padding,
                                            method=self.method)
            step.bias, step.bias_map = _fold_offset(offset)
        else:
            step = CompactLinear.from_dense(wk, None, mk, method=self.method)
            step.bias = offset.astype(np.float32)
        source.step = self.emit(step, [src])
        self._set(node, kept, source.step, False)
        if target is not node:
            self._set(target, kept, source.step, False)

    def _add(self, node) -> None:
        if type(node.layer) is not L.Add:
            raise TypeError(f"compact() runs additions (Add) of several inputs; layer "
                            f"{node.name} ({type(node.layer).__name__}) has several inputs")
        out = np.flatnonzero(self.present[node.index])
        if out.size == 0:
            self._set(node, out, None, False)
            return
        src, dst, reads = [], [], []
        for i in node.inputs:
            live = self.nodes[i].live[out]  # the output units this input computes
            if not live.any():
                continue
            src.append(_positions(self.held[i], out[live]))
            dst.append(np.flatnonzero(live))
            reads.append(self.value[i])
        step = Sum(out.size, src, dst, _unit_offset(self.static[node.index][out]))
        self._set(node, out, self.emit(step, reads), False)

    def _flatten(self, node) -> None:
        i = node.inputs[0]
        if not self.present[node.index].any():
            self._set(node, [], None, self.raw[i])
            return
        hw = int(np.prod(node.in_shape[1:], dtype=np.int64))
        held = (self.held[i][:, None] * hw + np.arange(hw)).reshape(-1)
        self._set(node, held, self.emit(Flatten(), [self.value[i]]), self.raw[i])

    def _channelwise(self, node) -> None:
        i = node.inputs[0]
        if not self.present[node.index].any():
            self._set(node, [], None, self.raw[i])
            return
        layer, held = node.layer, self.held[i]
        make = CHANNEL_STEPS.get(type(layer))
        if make is not None:
            step = make(layer, held)
        else:
            chosen = layer.select_channels(held)
            if not isinstance(chosen, L.Module):
                raise TypeError(f"{type(layer).__name__}.select_channels() must return a "
                                f"minievo Module, got {type(chosen).__name__}")
            step = LayerStep(copy.deepcopy(chosen) if chosen is layer else chosen)
        self._set(node, held, self.emit(step, [self.value[i]]), self.raw[i])


def _per_row(a: np.ndarray) -> tuple:
    """Shape that broadcasts one value per row (axis 0) of ``a``."""
    return (-1, *(1,) * (a.ndim - 1))


def _model_backend(model) -> str:
    for p in model.parameters():
        return backend.backend_of(p.data)
    return "numpy"


def compact(model, input_shape: tuple | None = None, method: str = "auto") -> CompactModel:
    """The compact form of a masked model, at inference (batch norm with its running
    statistics, dropout off).

    Any model :func:`minievo.graph.walk` follows: Conv2d, Linear, Flatten, residual additions
    and channelwise layers (ReLU, pooling, batch norm, a user's layer with ``select_channels``).

    Args:
        model: the masked dense model (either backend; the compact model goes to the same one).
        input_shape: per-sample input shape, e.g. (1, 28, 28). For a Sequential stack it may
            be left out when a Flatten feeds a Linear (square inputs) or the model starts with
            Flatten or Linear.
        method: CPU path of every compact layer: 'auto' (by cost model), 'native', 'csr' or
            'dense'.

    Returns:
        A :class:`CompactModel` whose forward equals the masked dense forward (float tolerance).

    Raises:
        TypeError: a layer compaction cannot run (naming it and what to implement).
        ValueError: bad ``method``, or an input shape that cannot be inferred or does not fit.
    """
    if method not in ("auto", "native", "csr", "dense"):
        raise ValueError(f"method must be 'auto', 'native', 'csr' or 'dense', got {method!r}")
    if not isinstance(model, L.Module):
        raise TypeError(f"compact() expects a minievo Module, got {type(model).__name__}")
    if method == "native":
        from minievo.kernels import native  # noqa: PLC0415

        native.load()  # NativeUnavailable, with the reason, now rather than at the first call
    leaves = [m for _, m in _leaves(model)]
    if not leaves:
        raise ValueError("compact() got an empty model")
    sequential = isinstance(model, L.Sequential)
    if input_shape is None:
        if not sequential:
            raise ValueError("pass input_shape=(C, H, W) to compact() for a model that is not "
                             "a Sequential stack")
        input_shape = _infer_input_shape(leaves)
    input_shape = tuple(int(s) for s in input_shape)
    if sequential and type(leaves[0]) is L.Flatten and all(
            type(m) in CHAIN_TYPES for m in leaves):
        input_shape = (int(np.prod(input_shape)),)  # Flatten first: any (N, ...) of that size
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        structure = graph.walk(model, input_shape)
        chain = _chain_leaves(model, structure)
        compiler = _Compiler(structure, method, chain, backend.xp_for(_model_backend(model)))
        compiler.run()
    finally:
        for m, mode in modes:
            m.training = mode
    out = structure.output
    held = compiler.held[out.index]
    steps, inputs = compiler.steps, compiler.inputs
    out_index = out_static = None
    if held.size != out.out_shape[0]:
        out_index = held.astype(np.int64)
        out_static = compiler.static[out.index].astype(np.float32)
        if held.size == 0:
            steps, inputs = [], []
    cm = CompactModel(
        steps=steps, input_shape=input_shape, sources=compiler.sources,
        leaf_specs=[_leaf_spec(m) for _, m in chain] if chain else [],
        leaf_names=[name for name, _ in chain] if chain else [],
        output_shape=tuple(out.out_shape), out_index=out_index, out_static=out_static,
        inputs=None if chain else inputs,
    )
    return cm.to(_model_backend(model))


def _leaf_spec(layer) -> dict:
    """The stored description of a chain layer (:data:`CHAIN_TYPES`)."""
    op = {L.Conv2d: "conv", L.Linear: "linear", L.MaxPool2d: "maxpool", L.ReLU: "relu",
          L.Flatten: "flatten", L.Dropout: "dropout"}[type(layer)]
    if op == "maxpool":
        return {"op": op, "kernel_size": layer.kernel_size,
                "stride": layer.stride or layer.kernel_size}
    if op == "dropout":
        return {"op": op, "p": float(layer.p)}
    return {"op": op}


# ----- back to the dense model ---------------------------------------------------------------


def _need_chain(cm: CompactModel, what: str) -> None:
    if not cm.is_chain:
        raise ValueError(f"{what} rebuilds compact chains only; this compact model is a graph "
                         "(residual additions, folded batch norms): keep the original model or "
                         "its checkpoint to get the dense weights back")


def dense_mask(cm: CompactModel, j: int) -> np.ndarray:
    """The 0/1 float32 mask of prunable layer j of the original model, rebuilt exactly."""
    src = cm.sources[j]
    m = np.zeros(src.shape, np.float32)
    if src.step >= 0:
        m[np.ix_(src.kept_out, src.present_in)] = cm.steps[src.step].to_dense()[2]
    m.reshape(-1)[src.residual_index] = 1
    return m


def dense_weights(cm: CompactModel, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, mask) of prunable layer j of the original chain model, rebuilt exactly."""
    _need_chain(cm, "dense_weights()")
    src = cm.sources[j]
    w = np.zeros(src.shape, np.float32)
    if src.step >= 0:
        w[np.ix_(src.kept_out, src.present_in)] = cm.steps[src.step].to_dense()[0]
    w.reshape(-1)[src.residual_index] = src.residual_value
    return w, dense_mask(cm, j)


def expand(cm: CompactModel, backend_name: str | None = None):
    """The masked dense model a compact chain came from (a Sequential), exactly.

    Weights, masks and biases equal the original's (masked weights are 0, as the dense layers
    keep them). Dropout layers come back with their p. A compact graph model is refused
    (ValueError): its batch norms are folded into the convolutions.
    """
    _need_chain(cm, "expand()")
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
