"""Atomic ``.npz`` checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed to disk, and only
then renamed over the final name (``os.replace`` is atomic on POSIX). A run killed at any
moment therefore leaves either the previous checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from minievo.backend import to_numpy

_META_KEY = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another model or run."""


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename).

    Raises:
        OSError: as the system gives it, with ``filename`` set to ``path`` when the system
            named no file (a full disk fails the write or the fsync of an open file, and
            "No space left on device" alone would not say where).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the user's umask
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(path)  # a system error (errno, strerror) that named no file
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


#: Default cap on the uncompressed size of all members of a checkpoint read by :func:`load`.
MAX_BYTES = 1 << 30


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path):
    """(shape, dtype) from the .npy header of one member, checked against the size the zip
    directory gives it, before any of its data is read."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{path}: member {info.filename!r} has .npy version "
                                  f"{version}")
        header = f.tell()
    if dtype.hasobject or dtype.kind not in "biufcU":
        raise CheckpointError(f"{path}: member {info.filename!r} has dtype {dtype}, not a "
                              "plain numeric array")
    want = header + math.prod(shape) * dtype.itemsize
    if info.file_size != want:
        raise CheckpointError(f"{path}: member {info.filename!r} claims {info.file_size} bytes "
                              f"but its header says {shape} {dtype} ({want} bytes)")
    return shape, dtype


def load(path: str | os.PathLike, max_bytes: int | None = None,
         expected: dict | None = None, finite: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Load ``(arrays, meta)`` saved by :func:`save`.

    Every member's size, dtype and shape are checked before it is read: the members together
    may hold at most ``max_bytes`` (default :data:`MAX_BYTES`), and a member named in
    ``expected`` (name -> shape) must have that shape. With ``finite``, every floating-point
    array must hold finite numbers only (a model's starting weights, say).

    Raises:
        CheckpointError: when the file is missing, truncated, too large, not a minievo
            checkpoint, or a member does not fit (one line naming the file and the problem).
    """
    path = Path(path)
    limit = MAX_BYTES if max_bytes is None else int(max_bytes)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    # Only a regular file: zipfile would read a FIFO until a writer comes (a hang) and
    # /dev/zero until memory runs out, looking for the end of an archive.
    if not stat.S_ISREG(path.stat().st_mode):
        raise CheckpointError(f"{path}: not a regular file (a checkpoint is a .npz file)")
    if path.stat().st_size > limit + (64 << 20):
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, more than a checkpoint "
                              f"may hold (limit {limit} bytes of arrays)")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > limit:
                raise CheckpointError(f"{path}: its members hold {total} bytes uncompressed, "
                                      f"more than the limit of {limit} bytes")
            arrays = {}
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                shape, _ = _member_header(zf, info, path)
                if expected is not None and name in expected and tuple(shape) != tuple(
                        expected[name]):
                    raise CheckpointError(f"{path}: array {name!r} has shape {tuple(shape)}, "
                                          f"expected {tuple(expected[name])}")
                with zf.open(info) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if _META_KEY not in arrays:
        raise CheckpointError(f"{path}: not a minievo checkpoint (no metadata)")
    meta_array = arrays.pop(_META_KEY)
    try:
        meta = json.loads(str(meta_array)) if meta_array.dtype.kind == "U" else None
    except ValueError as exc:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its metadata is not a JSON object")
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: array {name!r} has dtype {a.dtype}; checkpoints "
                                  "hold real numbers only")
        if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
            raise CheckpointError(f"{path}: array {name!r} holds NaN or infinite values")
    return arrays, meta


def has_live_path(model, input_shape: tuple) -> bool:
    """Whether some output of ``model`` depends on its input through live synapses.

    Args:
        model: a minievo model (its masks say which synapses are live).
        input_shape: one sample's shape, e.g. (1, 28, 28).
    """
    from minievo import graph  # noqa: PLC0415

    return bool(np.asarray(graph.walk(model, tuple(input_shape)).output.live).any())


def check_live_path(path: str | os.PathLike, model, input_shape: tuple) -> None:
    """Refuse to train or resume a model through which no input reaches the output.

    A model loaded from ``path`` whose masks leave no path from the input to any output (every
    mask all zero, or one layer of a chain cut off completely) computes a constant: training
    it moves only the biases that follow the cut, and it ends at the majority class's accuracy
    with exit status 0. The walk (:func:`minievo.graph.walk`, one forward of a zero image)
    says which outputs depend on the input.

    Args:
        path: the file the model's state came from (named in the error).
        model: the loaded model.
        input_shape: one sample's shape, e.g. (1, 28, 28).

    Raises:
        CheckpointError: when no output depends on the input (one line naming the file).
    """
    from minievo import graph  # noqa: PLC0415

    structure = graph.walk(model, tuple(input_shape))
    if not bool(np.asarray(structure.output.live).any()):
        dead = [n.name for n in structure.prunable()
                if getattr(n.layer, "mask", None) is not None
                and not bool((to_numpy(n.layer.mask) != 0).any())]
        where = (f"the masks of layers {', '.join(dead)} are all zero" if dead else
                 "its masks leave no connected path")
        raise CheckpointError(f"{path}: no live path from the input to the output ({where}); "
                              "training it would learn only a constant")
