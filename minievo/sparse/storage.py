"""Save and load compact models: one .npz written atomically (temp file, then os.replace).

Two layouts, told apart by the format ``version``:

* version 1, a compact *chain*: arrays named ``step{i}.{field}`` for the compact layers and
  gathers, ``source{j}.{field}`` for what :func:`~minievo.sparse.model.expand` needs,
  ``out_index`` / ``out_static`` when some outputs are constant; the metadata holds the step
  specs, the original layer sequence (``leaf_specs``, ``leaf_names``) and the shapes. Each step
  reads the one before.
* version 2, a compact *graph* (residual networks, batch norm, a user's channelwise layers):
  the same arrays, and each step's spec lists the steps it reads (``inputs``, -1 the model
  input). A step that runs a layer of its own (a user's channelwise layer) records the layer's
  type name (found again in :data:`minievo.layers.LAYER_TYPES`), its ``layer_config()`` and
  its state dict (arrays ``step{i}.state.{key}``).

The JSON metadata goes through :mod:`minievo.checkpoint`, which does the atomic write. Loading
checks every number of the file before it sizes an allocation or reaches a kernel, and walks
the steps' shapes from the input to the output.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from minievo import checkpoint
from minievo import layers as L
from minievo.checkpoint import CheckpointError
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
)
from minievo.sparse.model import SOURCE_ARRAYS, CompactModel, Source
from minievo.sparse.reference import conv_output_hw

FORMAT = "minievo.sparse.compact"
CHAIN_VERSION = 1  # the chain layout
GRAPH_VERSION = 2  # the graph layout
VERSION = GRAPH_VERSION  # the newest this minievo reads

_CONV_FIELDS = ("indptr", "indices", "kernels", "kernel_mask", "bias")
_LINEAR_FIELDS = ("indptr", "indices", "values", "bias")


# ----- saving --------------------------------------------------------------------------------


def _layer_payload(step: LayerStep, key: str, arrays: dict) -> dict:
    layer = step.layer
    name = type(layer).__name__
    if L.LAYER_TYPES.get(name) is not type(layer):
        raise TypeError(f"cannot save a {name} layer: minievo.layers.LAYER_TYPES[{name!r}] is "
                        "another class (two layer classes share the name); rename one")
    spec = step.spec()
    try:
        json.dumps(spec["config"], allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}.layer_config() must return finite JSON values (numbers, "
                        f"strings, lists, dicts), got {spec['config']!r}") from e
    state = layer.state_dict()
    try:  # what loading will do: rebuild from the config, then load the state
        type(layer)(**spec["config"]).load_state_dict(state)
    except Exception as e:  # a user's class: any error means the file could not be read back
        raise TypeError(f"{name}(**layer_config()) with its state dict does not rebuild the "
                        f"layer ({_one_line(e)}); layer_config() must return the constructor "
                        "arguments of the layer as select_channels() made it") from e
    for k, v in state.items():
        arrays[f"{key}.state.{k}"] = v
    return spec


def _step_payload(step, key: str, arrays: dict) -> dict:
    """The stored spec of one step; its arrays go into ``arrays`` under ``key``."""
    if isinstance(step, CompactConv2d):
        for f in _CONV_FIELDS:
            arrays[f"{key}.{f}"] = getattr(step, f)
        if step.bias_map is not None:
            arrays[f"{key}.bias_map"] = step.bias_map
        return {"op": "compact_conv", "in_channels": step.in_channels, "stride": step.stride,
                "padding": step.padding, "method": step.requested_method,
                "bias_map": step.bias_map is not None}
    if isinstance(step, CompactLinear):
        for f in _LINEAR_FIELDS:
            arrays[f"{key}.{f}"] = getattr(step, f)
        return {"op": "compact_linear", "in_features": step.in_features,
                "method": step.requested_method}
    if isinstance(step, Gather):
        arrays[f"{key}.index"] = step.index
    elif isinstance(step, Affine | Sum):
        arrays.update({f"{key}.{k}": v for k, v in step.host_arrays().items() if v is not None})
    elif isinstance(step, LayerStep):
        return _layer_payload(step, key, arrays)
    return step.spec()


def save_compact(cm: CompactModel, path) -> None:
    """Write a :class:`~minievo.sparse.model.CompactModel` to ``path`` atomically (a temp
    file, then os.replace): a chain in the chain layout, a graph in the graph layout."""
    arrays: dict[str, np.ndarray] = {}
    steps = []
    for i, step in enumerate(cm.steps):
        spec = _step_payload(step, f"step{i}", arrays)
        if not cm.is_chain:
            spec["inputs"] = [int(v) for v in cm.inputs[i]]
        steps.append(spec)
    for j, src in enumerate(cm.sources):
        for f in SOURCE_ARRAYS:
            arrays[f"source{j}.{f}"] = getattr(src, f)
    if cm.out_index is not None:
        arrays["out_index"] = cm.out_index
        arrays["out_static"] = cm.out_static
    meta = {
        "format": FORMAT, "version": CHAIN_VERSION if cm.is_chain else GRAPH_VERSION,
        "input_shape": list(cm.input_shape), "output_shape": list(cm.output_shape),
        "steps": steps, "sources": [s.meta() for s in cm.sources],
    }
    if cm.is_chain:
        meta["leaf_specs"], meta["leaf_names"] = cm.leaf_specs, cm.leaf_names
    meta["has_out_index"] = cm.out_index is not None
    checkpoint.save(path, arrays, meta)


# ----- checking what a file says --------------------------------------------------------------

_METHODS = ("auto", "native", "csr", "dense")
_LEAF_OPS = ("conv", "linear", "maxpool", "relu", "flatten", "dropout")
_CHAIN_OPS = ("compact_conv", "compact_linear", "gather", "maxpool", "relu", "flatten",
              "dropout")
_GRAPH_OPS = (*_CHAIN_OPS, "avgpool", "global_avgpool", "affine", "add", "layer")
_BIG = 1 << 24  # bound on sizes, channels, strides read from a file (far above any model)
_MAX_ELEMENTS = 1 << 31  # bound on the elements of one per-sample activation
_MAX_STEPS = 1 << 16
_MAX_INPUTS = 16  # inputs of one addition
_INDEX_KEY = re.compile(r"\.(indptr|indices|index|src\d+|dst\d+)$")


def _fail(path, what: str):
    raise CheckpointError(f"{path}: {what}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_pool_or_dropout(path, spec: dict, where: str) -> None:
    """A max-pool's kernel size and stride are integers >= 1; a dropout's p lies in [0, 1)."""
    if spec["op"] == "maxpool":
        _int(path, spec.get("kernel_size"), f"{where} kernel_size", 1)
        _int(path, spec.get("stride"), f"{where} stride", 1)
        return
    p = spec.get("p")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        _fail(path, f"{where} dropout p = {p!r} must be a number in [0, 1)")


def _int(path, value, what: str, lo: int, hi: int = _BIG) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(path, f"{what} = {value!r} must be an integer in [{lo}, {hi}]")
    return value


def _shape(path, value, what: str, ndims: tuple, lo: int = 1) -> tuple:
    if not isinstance(value, list) or len(value) not in ndims:
        _fail(path, f"{what} = {value!r} must be a list of {' or '.join(map(str, ndims))} "
                    "integers")
    shape = tuple(_int(path, v, f"{what}[{i}]", lo) for i, v in enumerate(value))
    if math.prod(shape) > _MAX_ELEMENTS:
        _fail(path, f"{what} = {value!r} holds more than {_MAX_ELEMENTS} values per sample")
    return shape


def _check_config(path, value, what: str, bound: int, depth: int = 0) -> None:
    """A layer's constructor arguments: small JSON values, integers within ``bound``."""
    if depth > 4:
        _fail(path, f"{what} is nested too deeply")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > bound:
            _fail(path, f"{what} = {value} must lie in [-{bound}, {bound}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            _fail(path, f"{what} = {value!r} must be finite")
    elif isinstance(value, str):
        if len(value) > 200:
            _fail(path, f"{what} is a string of more than 200 characters")
    elif isinstance(value, list | dict):
        if len(value) > 64:
            _fail(path, f"{what} has more than 64 entries")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(value, dict) and not (isinstance(k, str) and k.isidentifier()):
                _fail(path, f"{what} has a key {k!r} that is not an argument name")
            _check_config(path, v, f"{what}[{k!r}]", bound, depth + 1)
    else:
        _fail(path, f"{what} holds a {type(value).__name__}")


def _check_arrays(path, arrays: dict) -> None:
    """Every float array finite; every integer array within int32 (the kernels' index type);
    kernel masks 0 or 1; index arrays one-dimensional integers."""
    for key, a in arrays.items():
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)):
                _fail(path, f"array {key!r} holds NaN or infinite values")
        elif a.dtype.kind in "biu":
            if a.size and (a.min() < -(2**31) or a.max() >= 2**31):
                _fail(path, f"array {key!r} has values outside the 32-bit range")
        else:
            _fail(path, f"array {key!r} has dtype {a.dtype}, not a real number type")
        if key.endswith(".kernel_mask") and a.size and not np.all((a == 0) | (a == 1)):
            _fail(path, f"array {key!r} must hold only 0 and 1")
        if ".state." not in key and _INDEX_KEY.search(key) and (
                a.dtype.kind not in "iu" or a.ndim != 1):
            _fail(path, f"array {key!r} must be a one-dimensional integer array")


def _check_step_spec(path, spec, i: int, ops: tuple, graph: bool) -> None:
    """Types and ranges of one step's metadata."""
    if not isinstance(spec, dict):
        _fail(path, f"step {i} is not a JSON object")
    op = spec.get("op")
    if op not in ops:
        _fail(path, f"unknown step {op!r}")
    if graph:
        ins = spec.get("inputs")
        arity = (1, _MAX_INPUTS) if op == "add" else (1, 1)
        if not isinstance(ins, list) or not arity[0] <= len(ins) <= arity[1]:
            _fail(path, f"step {i} inputs = {ins!r} must be a list of {arity[0]} to "
                        f"{arity[1]} step indices")
        for v in ins:
            _int(path, v, f"step {i} input", -1, i - 1)
    if op == "compact_conv":
        _int(path, spec.get("in_channels"), f"step {i} in_channels", 1)
        _int(path, spec.get("stride"), f"step {i} stride", 1)
        _int(path, spec.get("padding"), f"step {i} padding", 0)
        if not isinstance(spec.get("bias_map"), bool):
            _fail(path, f"step {i} bias_map must be true or false")
    elif op == "compact_linear":
        _int(path, spec.get("in_features"), f"step {i} in_features", 1, 2**31 - 1)
    elif op in ("maxpool", "dropout"):
        _check_pool_or_dropout(path, spec, f"step {i}")
    elif op == "avgpool":
        _int(path, spec.get("kernel_size"), f"step {i} kernel_size", 1)
        _int(path, spec.get("stride"), f"step {i} stride", 1)
        _int(path, spec.get("padding"), f"step {i} padding", 0, spec["kernel_size"] // 2)
    elif op == "add":
        _int(path, spec.get("units"), f"step {i} units", 1)
        if not isinstance(spec.get("offset"), bool):
            _fail(path, f"step {i} offset must be true or false")
    elif op == "layer":
        name = spec.get("type")
        if not isinstance(name, str) or name not in L.LAYER_TYPES:
            _fail(path, f"step {i}: unknown layer type {name!r} (define or import its class "
                        "before loading)")
        if not isinstance(spec.get("config"), dict):
            _fail(path, f"step {i} config must be a JSON object")
    if op in ("compact_conv", "compact_linear") and spec.get("method") not in _METHODS:
        _fail(path, f"step {i} method {spec.get('method')!r} is not one of "
                    f"{', '.join(_METHODS)}")


def _check_meta(path, meta: dict, chain: bool) -> None:
    """Types and ranges of every number of the metadata, before anything is built."""
    fields = [("input_shape", list), ("output_shape", list), ("steps", list),
              ("sources", list), ("has_out_index", bool)]
    if chain:
        fields[4:4] = [("leaf_specs", list), ("leaf_names", list)]
    for key, kind in fields:
        if not isinstance(meta.get(key), kind):
            _fail(path, f"metadata field {key!r} is missing or not a {kind.__name__}")
    _shape(path, meta["input_shape"], "input_shape", (1, 3))
    _shape(path, meta["output_shape"], "output_shape", (1, 3))
    if len(meta["steps"]) > _MAX_STEPS:
        _fail(path, f"{len(meta['steps'])} steps, more than {_MAX_STEPS}")
    for i, spec in enumerate(meta["steps"]):
        _check_step_spec(path, spec, i, _CHAIN_OPS if chain else _GRAPH_OPS, not chain)
    if chain:
        n_prunable = 0
        for i, spec in enumerate(meta["leaf_specs"]):
            op = spec.get("op") if isinstance(spec, dict) else None
            if op not in _LEAF_OPS:
                _fail(path, f"leaf layer {i} has unknown op {op!r}")
            n_prunable += op in ("conv", "linear")
            if op in ("maxpool", "dropout"):
                _check_pool_or_dropout(path, spec, f"leaf layer {i}")
        if len(meta["leaf_names"]) != len(meta["leaf_specs"]) or not all(
                isinstance(n, str) for n in meta["leaf_names"]):
            _fail(path, "leaf_names must be one string per leaf layer")
        if n_prunable != len(meta["sources"]):
            _fail(path, f"{len(meta['sources'])} sources for {n_prunable} conv/linear layers")
    for j, sm in enumerate(meta["sources"]):
        if not isinstance(sm, dict) or sm.get("kind") not in ("conv", "linear"):
            _fail(path, f"source {j} is not a conv or linear layer description")
        _shape(path, sm.get("shape"), f"source {j} shape", (4,) if sm["kind"] == "conv" else (2,))
        _int(path, sm.get("stride"), f"source {j} stride", 1)
        _int(path, sm.get("padding"), f"source {j} padding", 0)
        _shape(path, sm.get("out_hw"), f"source {j} out_hw", (2,))
        _int(path, sm.get("step"), f"source {j} step", -1, len(meta["steps"]) - 1)
        if not isinstance(sm.get("has_bias"), bool):
            _fail(path, f"source {j} has_bias must be true or false")
        if not chain and not isinstance(sm.get("name"), str):
            _fail(path, f"source {j} name must be a string")
    if not meta["steps"] and not meta["has_out_index"]:
        _fail(path, "a compact model without steps must give its constant outputs "
                    "(out_index / out_static)")


def _weight_shape(step) -> tuple:
    """The dense weight shape of a compact layer, (O, C, kh, kw) or (O, F), from its
    attributes alone (never :meth:`to_dense`, which would allocate it: a file may claim any
    size)."""
    if isinstance(step, CompactConv2d):
        return (step.out_channels, step.in_channels, *step.kernel_size)
    return (step.out_features, step.in_features)


def _check_sources(path, sources: list, steps: list) -> None:
    """What expand() and the counts index with must lie inside the layer it describes."""
    for j, src in enumerate(sources):
        o, i = src.shape[:2]
        size = int(np.prod(src.shape))
        for name, arr, bound in (("kept_out", src.kept_out, o), ("present_in", src.present_in, i),
                                 ("residual_index", src.residual_index, size)):
            if arr.ndim != 1 or arr.dtype.kind not in "iu" or (
                    arr.size and (arr.min() < 0 or arr.max() >= bound)):
                _fail(path, f"source {j} {name} must be integers in [0, {bound})")
            if arr.size > bound:
                _fail(path, f"source {j} {name} holds {arr.size} entries, more than the "
                            f"{bound} of its layer")
        if src.residual_value.shape != src.residual_index.shape:
            _fail(path, f"source {j} residual_value does not match residual_index")
        if src.bias.shape != (o,):
            _fail(path, f"source {j} bias has shape {src.bias.shape}, expected ({o},)")
        if src.step >= 0:
            step = steps[src.step]
            kind = CompactConv2d if src.kind == "conv" else CompactLinear
            if not isinstance(step, kind):
                _fail(path, f"source {j} points at step {src.step}, which is not a compact "
                            f"{src.kind} layer")
            have = _weight_shape(step)
            want = (src.kept_out.size, src.present_in.size, *src.shape[2:])
            if have != want:
                _fail(path, f"source {j}: step {src.step} has weights {have}, expected {want}")


# ----- building the steps, walking their shapes -----------------------------------------------


def _layer_step(path, i: int, spec: dict, shape: tuple, arrays: dict):
    """A user's (or any registered) channelwise layer, rebuilt from its config and state."""
    name = spec["type"]
    cls = L.LAYER_TYPES[name]
    if not (isinstance(cls, type) and issubclass(cls, L.Module)) or cls.prunable or \
            not cls.channelwise:
        _fail(path, f"step {i}: layer type {name!r} is not a channelwise layer")
    _check_config(path, spec["config"], f"step {i} config", max(1024, *shape))
    prefix = f"step{i}.state."
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    try:
        layer = cls(**spec["config"])
        layer.load_state_dict(state)
        out = tuple(layer.output_shape(shape))
    except Exception as e:  # a user's class: any error it raises is a bad file here
        _fail(path, f"step {i}: cannot rebuild {name}(**{spec['config']}) with its state "
                    f"({_one_line(e)})")
    if out[:1] != shape[:1]:
        _fail(path, f"step {i}: {name} turns {shape} into {out}; a channelwise layer keeps "
                    "the channels")
    return LayerStep(layer), out


def _sum_step(path, i: int, spec: dict, shapes: list, get):
    rest = shapes[0][1:]
    if any(s[1:] != rest for s in shapes):
        _fail(path, f"step {i} adds inputs of shapes {shapes}")
    units = spec["units"]
    src = [get(f"step{i}.src{k}") for k in range(len(shapes))]
    dst = [get(f"step{i}.dst{k}") for k in range(len(shapes))]
    for k, (s, d) in enumerate(zip(src, dst)):
        if s.size and (s.min() < 0 or s.max() >= shapes[k][0]):
            _fail(path, f"step {i} src{k}: indices outside the {shapes[k][0]} units of input {k}")
        if d.size and (d.min() < 0 or d.max() >= units):
            _fail(path, f"step {i} dst{k}: indices outside its {units} units")
    covered = np.zeros(units, dtype=bool)
    for d in dst:
        covered[d] = True
    if not covered.all():
        _fail(path, f"step {i}: output units {np.flatnonzero(~covered)[:5].tolist()} come from "
                    "no input")
    offset = get(f"step{i}.offset") if spec["offset"] else None
    if offset is not None and offset.shape not in ((units,), (units, *rest)):
        _fail(path, f"step {i} offset has shape {offset.shape}, expected ({units},) or "
                    f"{(units, *rest)}")
    return Sum(units, src, dst, offset), (units, *rest)


def _build_step(path, i: int, spec: dict, shapes: list, get, arrays: dict):
    """(step, per-sample output shape) of stored step i reading inputs of ``shapes``."""
    op = spec["op"]
    shape = shapes[0]
    where = f"step {i} ({op})"
    if op == "add":
        return _sum_step(path, i, spec, shapes, get)
    if op == "layer":
        return _layer_step(path, i, spec, shape, arrays)
    if op == "compact_conv":
        step = CompactConv2d(
            get(f"step{i}.indptr"), get(f"step{i}.indices"), get(f"step{i}.kernels"),
            get(f"step{i}.bias"), spec["in_channels"], spec["stride"], spec["padding"],
            kernel_mask=get(f"step{i}.kernel_mask"),
            bias_map=get(f"step{i}.bias_map") if spec["bias_map"] else None,
            method=spec["method"])
        kh, kw = step.kernel_size
        if len(shape) != 3 or shape[0] != step.in_channels or kh < 1 or kw < 1:
            _fail(path, f"step {i} ({step!r}) does not fit input {shape}")
        oh, ow = step.output_hw(*shape[1:])
        if step.bias_map is not None and step.bias_map.shape[1:] != (oh, ow):
            _fail(path, f"step {i} ({step!r}): bias_map {step.bias_map.shape} does not fit its "
                        f"output {oh}x{ow}")
        return step, (step.out_channels, oh, ow)
    if op == "compact_linear":
        step = CompactLinear(get(f"step{i}.indptr"), get(f"step{i}.indices"),
                             get(f"step{i}.values"), get(f"step{i}.bias"), spec["in_features"],
                             method=spec["method"])
        if len(shape) != 1 or shape[0] != step.in_features:
            _fail(path, f"step {i} ({step!r}) does not fit input {shape}")
        return step, (step.out_features,)
    if op == "gather":
        step = Gather(get(f"step{i}.index"))
        if step.index.size and (step.index.min() < 0 or step.index.max() >= shape[0]):
            _fail(path, f"step {i} ({step!r}): indices outside the {shape[0]} units it reads")
        return step, (step.index.size, *shape[1:])
    if op in ("maxpool", "avgpool"):
        k, pad = spec["kernel_size"], spec["padding"] if op == "avgpool" else 0
        if len(shape) != 3 or min(shape[1:]) + 2 * pad < k or pad > min(shape[1:]):
            _fail(path, f"{where} with window {k} does not fit input {shape}")
        step = (MaxPool(k, spec["stride"]) if op == "maxpool"
                else AvgPool(k, spec["stride"], pad))
        return step, (shape[0], *conv_output_hw(shape[1], shape[2], k, k, spec["stride"], pad))
    if op == "global_avgpool":
        if len(shape) != 3:
            _fail(path, f"{where} does not fit input {shape}")
        return GlobalAvgPool(), (shape[0],)
    if op == "affine":
        step = Affine(get(f"step{i}.scale"), get(f"step{i}.shift"))
        if step.scale.shape != shape[:1]:
            _fail(path, f"{where} scales {step.scale.shape[0]} units, its input has {shape[0]}")
        return step, shape
    if op == "flatten":
        return Flatten(), (math.prod(shape),)
    return (ReLU() if op == "relu" else Identity(spec["p"])), shape


def _check_output(path, cm: CompactModel, shape: tuple) -> None:
    """The last step's shape against output_shape, out_index and out_static."""
    out = tuple(cm.output_shape)
    if cm.out_index is None:
        if shape != out:
            _fail(path, f"the steps give outputs {shape}, the file says {out}")
        return
    idx, static = cm.out_index, cm.out_static
    if static.shape != out:
        _fail(path, f"out_static has shape {static.shape}, expected {out}")
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= out[0])) or (
            np.unique(idx).size != idx.size):
        _fail(path, f"out_index must hold distinct outputs in [0, {out[0]})")
    if cm.steps and (shape[0] != idx.size or shape[1:] != out[1:]):
        _fail(path, f"the steps give outputs {shape}, out_index places {idx.size} of {out}")


def load_compact(path, backend_name: str = "numpy") -> CompactModel:
    """Read a CompactModel written by :func:`save_compact` (either layout).

    Every number of the file (metadata and arrays) is checked before a step is built, each
    step's input shapes are known before it is built, and the shapes are walked from the
    input to the output, so nothing the file says reaches a kernel unchecked.

    Raises:
        CheckpointError: missing, truncated, foreign or inconsistent file, an unknown layer
            type, or a newer format version (one line naming the file and the problem).
    """
    arrays, meta = checkpoint.load(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a compact model (format {meta.get('format')!r})")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: compact model format version {version!r} is not a "
                              "positive integer")
    if version > VERSION:
        raise CheckpointError(f"{path}: compact model format version {meta['version']} is "
                              f"newer than this minievo understands ({VERSION})")
    chain = version == CHAIN_VERSION
    _check_meta(path, meta, chain)
    _check_arrays(path, arrays)

    def get(key):
        if key not in arrays:
            raise CheckpointError(f"{path}: compact model is missing array {key!r}")
        return arrays[key]

    n = len(meta["steps"])
    inputs = [[i - 1] for i in range(n)] if chain else [s["inputs"] for s in meta["steps"]]
    shapes = {-1: tuple(meta["input_shape"])}
    steps = []
    try:
        for i, spec in enumerate(meta["steps"]):
            step, shapes[i] = _build_step(path, i, spec, [shapes[v] for v in inputs[i]], get,
                                          arrays)
            steps.append(step)
        sources = []
        for j, sm in enumerate(meta["sources"]):
            fields = {f: get(f"source{j}.{f}") for f in SOURCE_ARRAYS}
            sources.append(Source(kind=sm["kind"], shape=tuple(sm["shape"]),
                                  stride=sm["stride"], padding=sm["padding"],
                                  has_bias=sm["has_bias"], out_hw=tuple(sm["out_hw"]),
                                  step=sm["step"], name=sm.get("name", ""), **fields))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed compact model metadata ({exc})") from exc
    except ValueError as exc:  # a layer's own checks, or conv_output_hw: empty output
        raise CheckpointError(f"{path}: inconsistent compact model ({exc})") from exc
    except MemoryError as exc:  # a last resort: every size above is checked before use
        raise CheckpointError(f"{path}: the model it describes does not fit in memory "
                              f"({_one_line(exc)})") from None
    _check_sources(path, sources, steps)
    cm = CompactModel(
        steps=steps, input_shape=shapes[-1], sources=sources,
        leaf_specs=meta["leaf_specs"] if chain else [],
        leaf_names=meta["leaf_names"] if chain else [],
        output_shape=tuple(meta["output_shape"]),
        out_index=get("out_index") if meta["has_out_index"] else None,
        out_static=get("out_static") if meta["has_out_index"] else None,
        inputs=None if chain else inputs,
    )
    _check_output(path, cm, shapes[n - 1] if n else shapes[-1])
    return cm.to(backend_name)
