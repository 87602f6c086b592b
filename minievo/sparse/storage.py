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


def load_compact(path, backend_name: str = "numpy"):
    """Read a CompactModel written by :func:`save_compact`.

    Raises:
        CheckpointError: missing, truncated or foreign file, or a newer format version.
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
    if int(meta.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: compact model format version {meta['version']} is "
                              f"newer than this minievo understands ({VERSION})")

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
            else:
                raise CheckpointError(f"{path}: unknown step {op!r}")
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
    cm = CompactModel(
        steps=steps, input_shape=tuple(meta["input_shape"]), sources=sources,
        leaf_specs=meta["leaf_specs"], leaf_names=meta["leaf_names"],
        output_shape=tuple(meta["output_shape"]),
        out_index=get("out_index") if meta["has_out_index"] else None,
        out_static=get("out_static") if meta["has_out_index"] else None,
    )
    return cm.to(backend_name)
