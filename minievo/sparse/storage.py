"""Save and load compact models: one .npz written atomically (temp file, then os.replace).

Layout: arrays named ``step{i}.{field}`` for the compact layers and gathers,
``source{j}.{field}`` for what :func:`~minievo.sparse.model.expand` needs, ``out_index`` /
``out_static`` when some outputs are constant; the JSON metadata (``format``, ``version``,
the step and layer specs, shapes) goes through :mod:`minievo.checkpoint`, which does the
atomic write.
"""

from __future__ import annotations

import numpy as np

from minievo import checkpoint
from minievo.checkpoint import CheckpointError
from minievo.sparse.reference import conv_output_hw

FORMAT = "minievo.sparse.compact"
VERSION = 1

_CONV_FIELDS = ("indptr", "indices", "kernels", "kernel_mask", "bias")
_LINEAR_FIELDS = ("indptr", "indices", "values", "bias")


def save_compact(cm, path) -> None:
    """Write a CompactModel to ``path`` atomically."""
    from minievo.sparse.layers import CompactConv2d, CompactLinear, Gather  # noqa: PLC0415
    from minievo.sparse.model import _SRC_ARRAYS  # noqa: PLC0415

    arrays: dict[str, np.ndarray] = {}
    steps = []
    for i, step in enumerate(cm.steps):
        if isinstance(step, CompactConv2d):
            spec = {"op": "compact_conv", "in_channels": step.in_channels,
                    "stride": step.stride, "padding": step.padding,
                    "method": step._method, "bias_map": step.bias_map is not None}
            for f in _CONV_FIELDS:
                arrays[f"step{i}.{f}"] = getattr(step, f)
            if step.bias_map is not None:
                arrays[f"step{i}.bias_map"] = step.bias_map
        elif isinstance(step, CompactLinear):
            spec = {"op": "compact_linear", "in_features": step.in_features,
                    "method": step._method}
            for f in _LINEAR_FIELDS:
                arrays[f"step{i}.{f}"] = getattr(step, f)
        elif isinstance(step, Gather):
            spec = step.spec()
            arrays[f"step{i}.index"] = step.index
        else:
            spec = step.spec()
        steps.append(spec)
    for j, src in enumerate(cm.sources):
        for f in _SRC_ARRAYS:
            arrays[f"source{j}.{f}"] = getattr(src, f)
    if cm.out_index is not None:
        arrays["out_index"] = cm.out_index
        arrays["out_static"] = cm.out_static
    meta = {
        "format": FORMAT, "version": VERSION, "input_shape": list(cm.input_shape),
        "output_shape": list(cm.output_shape), "steps": steps,
        "sources": [s.meta() for s in cm.sources], "leaf_specs": cm.leaf_specs,
        "leaf_names": cm.leaf_names, "has_out_index": cm.out_index is not None,
    }
    checkpoint.save(path, arrays, meta)


_METHODS = ("auto", "native", "csr", "dense")
_LEAF_OPS = ("conv", "linear", "maxpool", "relu", "flatten", "dropout")
_BIG = 1 << 24  # bound on sizes, channels, strides read from a file (far above any model)


def _fail(path, what: str):
    raise CheckpointError(f"{path}: {what}")


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
    return tuple(_int(path, v, f"{what}[{i}]", lo) for i, v in enumerate(value))


def _check_arrays(path, arrays: dict) -> None:
    """Every float array finite; every integer array within int32 (the kernels' index type);
    kernel masks 0 or 1."""
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
        if key.endswith(".indptr") or key.endswith(".indices") or key.endswith(".index"):
            if a.dtype.kind not in "iu" or a.ndim != 1:
                _fail(path, f"array {key!r} must be a one-dimensional integer array")


def _check_meta(path, meta: dict) -> None:
    """Types and ranges of every number of the metadata, before anything is built."""
    for key, kind in (("input_shape", list), ("output_shape", list), ("steps", list),
                      ("sources", list), ("leaf_specs", list), ("leaf_names", list),
                      ("has_out_index", bool)):
        if not isinstance(meta.get(key), kind):
            _fail(path, f"metadata field {key!r} is missing or not a {kind.__name__}")
    _shape(path, meta["input_shape"], "input_shape", (1, 3))
    _shape(path, meta["output_shape"], "output_shape", (1, 3))
    for i, spec in enumerate(meta["steps"]):
        if not isinstance(spec, dict):
            _fail(path, f"step {i} is not a JSON object")
        op = spec.get("op")
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
        elif op not in ("relu", "flatten", "gather"):
            _fail(path, f"unknown step {op!r}")
        if op in ("compact_conv", "compact_linear") and spec.get("method") not in _METHODS:
            _fail(path, f"step {i} method {spec.get('method')!r} is not one of "
                        f"{', '.join(_METHODS)}")
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
    if not meta["steps"] and not meta["has_out_index"]:
        _fail(path, "a compact model without steps must give its constant outputs "
                    "(out_index / out_static)")


def _check_sources(path, sources: list, steps: list) -> None:
    """What expand() indexes with must lie inside the layer it rebuilds."""
    from minievo.sparse.layers import CompactConv2d, CompactLinear  # noqa: PLC0415

    for j, src in enumerate(sources):
        o, i = src.shape[:2]
        size = int(np.prod(src.shape))
        for name, arr, bound in (("kept_out", src.kept_out, o), ("present_in", src.present_in, i),
                                 ("residual_index", src.residual_index, size)):
            if arr.ndim != 1 or arr.dtype.kind not in "iu" or (
                    arr.size and (arr.min() < 0 or arr.max() >= bound)):
                _fail(path, f"source {j} {name} must be integers in [0, {bound})")
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
            w = step.to_dense()[0]
            want = (src.kept_out.size, src.present_in.size, *src.shape[2:])
            if w.shape != want:
                _fail(path, f"source {j}: step {src.step} has weights {w.shape}, expected {want}")


def _check_chain(path, cm) -> None:
    """Walk the steps' shapes from input_shape to output_shape, as forward() will."""
    from minievo.sparse.layers import (  # noqa: PLC0415
        CompactConv2d,
        CompactLinear,
        Flatten,
        Gather,
        MaxPool,
    )

    shape = tuple(cm.input_shape)
    try:
        for i, step in enumerate(cm.steps):
            where = f"step {i} ({step!r})"
            if isinstance(step, Gather):
                if step.index.ndim != 1 or (step.index.size and (
                        step.index.min() < 0 or step.index.max() >= shape[0])):
                    _fail(path, f"{where}: indices outside the {shape[0]} units it reads")
                shape = (step.index.size, *shape[1:])
            elif isinstance(step, CompactConv2d):
                kh, kw = step.kernel_size
                if len(shape) != 3 or shape[0] != step.in_channels or kh < 1 or kw < 1:
                    _fail(path, f"{where} does not fit input {shape}")
                oh, ow = step.output_hw(*shape[1:])
                if step.bias_map is not None and step.bias_map.shape[1:] != (oh, ow):
                    _fail(path, f"{where}: bias_map {step.bias_map.shape} does not fit its "
                                f"output {oh}x{ow}")
                shape = (step.out_channels, oh, ow)
            elif isinstance(step, CompactLinear):
                if len(shape) != 1 or shape[0] != step.in_features:
                    _fail(path, f"{where} does not fit input {shape}")
                shape = (step.out_features,)
            elif isinstance(step, MaxPool):
                k, st = step.kernel_size, step.stride
                if len(shape) != 3 or min(shape[1:]) < k:
                    _fail(path, f"{where} does not fit input {shape}")
                shape = (shape[0], *conv_output_hw(shape[1], shape[2], k, k, st, 0))
            elif isinstance(step, Flatten):
                shape = (int(np.prod(shape)),)
    except ValueError as exc:  # conv_output_hw: empty output
        _fail(path, f"inconsistent compact model ({exc})")
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


def load_compact(path, backend_name: str = "numpy"):
    """Read a CompactModel written by :func:`save_compact`.

    Every number of the file (metadata and arrays) is checked before a layer is built, and the
    layers' shapes are walked from the input to the output, so nothing the file says reaches a
    kernel unchecked.

    Raises:
        CheckpointError: missing, truncated, foreign or inconsistent file, or a newer format
            version (one line naming the file and the problem).
    """
    from minievo.sparse.layers import (  # noqa: PLC0415
        CompactConv2d,
        CompactLinear,
        Flatten,
        Gather,
        Identity,
        MaxPool,
        ReLU,
    )
    from minievo.sparse.model import _SRC_ARRAYS, CompactModel, _Source  # noqa: PLC0415

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
    _check_meta(path, meta)
    _check_arrays(path, arrays)

    def get(key):
        if key not in arrays:
            raise CheckpointError(f"{path}: compact model is missing array {key!r}")
        return arrays[key]

    steps = []
    try:
        for i, spec in enumerate(meta["steps"]):
            op = spec["op"]
            if op == "compact_conv":
                steps.append(CompactConv2d(
                    get(f"step{i}.indptr"), get(f"step{i}.indices"), get(f"step{i}.kernels"),
                    get(f"step{i}.bias"), spec["in_channels"], spec["stride"], spec["padding"],
                    kernel_mask=get(f"step{i}.kernel_mask"),
                    bias_map=get(f"step{i}.bias_map") if spec["bias_map"] else None,
                    method=spec["method"]))
            elif op == "compact_linear":
                steps.append(CompactLinear(
                    get(f"step{i}.indptr"), get(f"step{i}.indices"), get(f"step{i}.values"),
                    get(f"step{i}.bias"), spec["in_features"], method=spec["method"]))
            elif op == "gather":
                steps.append(Gather(get(f"step{i}.index")))
            elif op == "maxpool":
                steps.append(MaxPool(spec["kernel_size"], spec["stride"]))
            elif op == "relu":
                steps.append(ReLU())
            elif op == "flatten":
                steps.append(Flatten())
            elif op == "dropout":
                steps.append(Identity(spec["p"]))
        sources = []
        for j, sm in enumerate(meta["sources"]):
            fields = {f: get(f"source{j}.{f}") for f in _SRC_ARRAYS}
            sources.append(_Source(kind=sm["kind"], shape=tuple(sm["shape"]),
                                   stride=sm["stride"], padding=sm["padding"],
                                   has_bias=sm["has_bias"], out_hw=tuple(sm["out_hw"]),
                                   step=sm["step"], **fields))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed compact model metadata ({exc})") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: inconsistent compact model ({exc})") from exc
    _check_sources(path, sources, steps)
    cm = CompactModel(
        steps=steps, input_shape=tuple(meta["input_shape"]), sources=sources,
        leaf_specs=meta["leaf_specs"], leaf_names=meta["leaf_names"],
        output_shape=tuple(meta["output_shape"]),
        out_index=get("out_index") if meta["has_out_index"] else None,
        out_static=get("out_static") if meta["has_out_index"] else None,
    )
    _check_chain(path, cm)
    return cm.to(backend_name)
