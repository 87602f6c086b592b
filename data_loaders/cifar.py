"""CIFAR-10 in its "python version" format: 60,000 32x32 colour images in 10 classes.

The distribution ``cifar-10-python.tar.gz`` holds the folder ``cifar-10-batches-py`` with
``data_batch_1`` .. ``data_batch_5`` (training, 10,000 images each) and ``test_batch``.
Each batch is a Python 2 pickle of a dict with ``data`` (uint8 (n, 3072), the red, green,
then blue planes of each 32x32 image) and ``labels`` (a list of n ints 0-9). Batches are
read with the restricted unpickler, never ``pickle.load``.

Sources: ``data_dir`` (the extracted folder, the folder holding it, or the tarball), then
the cache (``$MINIEVO_DATA/cifar10/cifar-10-python.tar.gz``, sha256-checked on every load),
filled from the web on a miss.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np

from . import sources
from .errors import DataError
from .files import cache_root
from .safe_pickle import safe_load
from .sources import check_sha256, check_split, stderr_log

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_BATCHES = {
    "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    "test": ("test_batch",),
}
CIFAR10_COUNTS = {"train": 50000, "test": 10000}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_URLS = (
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/cifar-10-python.tar.gz",
)


def _get(d: dict, key: str):
    """A key of a batch dict, whether the pickle's strings came back as str or bytes."""
    if key in d:
        return d[key]
    return d.get(key.encode())


def read_cifar_batch(fileobj, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch pickle -> (images uint8 (n, 3, 32, 32), labels uint8 (n,))."""
    d = safe_load(fileobj, name, encoding="bytes")
    if not isinstance(d, dict):
        raise DataError(f"{name}: expected a dict, got {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{name}: 'data' must be a uint8 array of shape (n, 3072), got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: 'labels' is not a list of ints") from exc
    if y.dtype.kind not in "iu" or y.shape != (len(data),):
        raise DataError(
            f"{name}: 'labels' must be {len(data)} ints, got {y.dtype} of shape {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{name}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), y.astype(np.uint8)


def _assemble(parts: dict, split: str, origin: str) -> tuple[np.ndarray, np.ndarray]:
    names = CIFAR10_BATCHES[split]
    missing = [n for n in names if n not in parts]
    if missing:
        raise DataError(f"{origin}: missing {', '.join(missing)}")
    x = np.concatenate([parts[n][0] for n in names])
    y = np.concatenate([parts[n][1] for n in names])
    if len(x) != CIFAR10_COUNTS[split]:
        raise DataError(
            f"{origin}: the {split} batches hold {len(x)} images, expected {CIFAR10_COUNTS[split]}"
        )
    return x, y


def read_cifar_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split from an extracted ``cifar-10-batches-py`` folder."""
    parts = {}
    for n in CIFAR10_BATCHES[split]:
        path = folder / n
        if path.is_file():
            with open(path, "rb") as f:
                parts[n] = read_cifar_batch(f, str(path))
    return _assemble(parts, split, str(folder))


def read_cifar_tarball(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split read straight from ``cifar-10-python.tar.gz`` (nothing is extracted to disk)."""
    wanted = set(CIFAR10_BATCHES[split])
    parts = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile():
                    with tar.extractfile(member) as f:
                        parts[base] = read_cifar_batch(f, f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: corrupt archive: {exc}") from exc
    return _assemble(parts, split, str(path))


def read_cifar_local(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split from a local copy: the tarball, the batches folder, or a folder holding either.

    A tarball named ``cifar-10-python.tar.gz`` must have the official sha256.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.name == CIFAR10_TARBALL:
            check_sha256(path, CIFAR10_SHA256)
        return read_cifar_tarball(path, split)
    for folder in (path, path / CIFAR10_FOLDER):
        if (folder / CIFAR10_BATCHES[split][0]).is_file():
            return read_cifar_folder(folder, split)
    if (path / CIFAR10_TARBALL).is_file():
        return read_cifar_local(path / CIFAR10_TARBALL, split)
    raise DataError(
        f"{path}: no CIFAR-10 here (looked for {CIFAR10_BATCHES[split][0]}, "
        f"{CIFAR10_FOLDER}/ and {CIFAR10_TARBALL})"
    )


def cifar_cache_path(cache_dir=None) -> Path:
    return cache_root(cache_dir) / "cifar10" / CIFAR10_TARBALL


def _cached_ok(path: Path, log) -> bool:
    if not path.is_file():
        return False
    try:
        check_sha256(path, CIFAR10_SHA256)
        return True
    except DataError as exc:
        log(f"CIFAR-10: cache: {exc}; removing it")
        with contextlib.suppress(OSError):
            path.unlink()
        return False


def fetch_cifar10(data_dir=None, cache_dir=None, log=print) -> Path:
    """Put the verified tarball in the cache: copied from ``data_dir`` if it is there, else
    downloaded. Prints one line per source tried; returns the tarball's path.

    Raises:
        DataError: no source gave the verified tarball; lists what each said.
    """
    dest = cifar_cache_path(cache_dir)
    if _cached_ok(dest, log):
        log(f"CIFAR-10: cache {dest}: present and verified")
        return dest
    failures = []
    if data_dir is not None:
        src = Path(data_dir).expanduser()
        src = src if src.is_file() else src / CIFAR10_TARBALL
        try:
            if not src.is_file():
                raise DataError(f"{src}: not found")
            check_sha256(src, CIFAR10_SHA256)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            log(f"CIFAR-10: data-dir {src}: ok, copied to {dest}")
            return dest
        except (DataError, OSError) as exc:
            failures.append(f"data-dir: {exc}")
            log(f"CIFAR-10: data-dir: failed: {exc}")
    for url in CIFAR10_URLS:
        t0 = time.perf_counter()
        try:
            sources.download_url(url, dest, sha256=CIFAR10_SHA256, timeout=60)
        except DataError as exc:
            failures.append(str(exc))
            log(f"CIFAR-10: failed: {exc}")
            continue
        log(f"CIFAR-10: {url}: ok, verified and cached in {dest} "
            f"({time.perf_counter() - t0:.1f} s)")
        return dest
    lines = "\n".join(f"  - {f}" for f in failures)
    raise DataError(
        f"could not get CIFAR-10 from any source:\n{lines}\nDownload {CIFAR10_TARBALL} "
        f"yourself and pass data_dir= (CLI: --data-dir), or put it at {dest}."
    )


def load_cifar10(split: str = "train", data_dir=None, cache_dir=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` as (images uint8 (N, 3, 32, 32), labels uint8 (N,)).

    Reads ``data_dir`` when given (see :func:`read_cifar_local`), else the cached tarball,
    downloading it on a miss.
    """
    check_split(split)
    failure = None
    if data_dir is not None:
        try:
            return read_cifar_local(data_dir, split)
        except DataError as exc:
            failure = f"data-dir: {exc}"
            stderr_log(f"CIFAR-10: {failure}; trying the cache and the web")
    path = cifar_cache_path(cache_dir)
    if not _cached_ok(path, stderr_log):
        try:
            fetch_cifar10(None, cache_dir, log=stderr_log)
        except DataError as exc:
            if failure:
                raise DataError(f"{exc}\n  (and {failure})") from exc
            raise
    return read_cifar_tarball(path, split)
