"""File helpers: the cache location, atomic writes and sha256 digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_ENV = "MINIEVO_DATA"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The data cache folder: ``cache_dir``, else ``$MINIEVO_DATA``, else ``~/.cache/minievo``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minievo"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Open a temporary file next to ``path`` for binary writing; rename it into place on success.

    The final name either does not exist or holds a complete file: a failure (or an
    interrupt) while writing removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def array_sha256(a: np.ndarray) -> str:
    """Hex sha256 of an array's raw bytes in C order.

    For a uint8 array this equals the sha256 of the data part of its IDX file (the file
    without its header), whether that file is stored plain or gzipped.
    """
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()
