"""Atomic ``.npz`` checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed to disk, and only
then renamed over the final name (``os.replace`` is atomic on POSIX). A run killed at any
moment therefore leaves either the previous checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from minievo.backend import to_numpy

_META_KEY = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another model or run."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save(path: str | os.PathLike, arrays: dict, meta: dict | None = None) -> None:
    """Save named arrays (either backend) and a JSON-able ``meta`` dict to ``path`` atomically."""
    import io

    payload = {k: to_numpy(v) for k, v in arrays.items()}
    if _META_KEY in payload:
        raise ValueError(f"array name {_META_KEY!r} is reserved")
    payload[_META_KEY] = np.array(json.dumps(meta or {}))
    buf = io.BytesIO()
    np.savez(buf, **payload)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Load ``(arrays, meta)`` saved by :func:`save`.

    Raises:
        CheckpointError: when the file is missing, truncated or not a minievo checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if _META_KEY not in arrays:
        raise CheckpointError(f"{path}: not a minievo checkpoint (no metadata)")
    meta = json.loads(str(arrays.pop(_META_KEY)))
    return arrays, meta
