"""The IDX file format (MNIST's), plain or gzipped, read and written with strict checks.

An IDX file is a 4-byte magic number, one 4-byte big-endian size per dimension, then the
values in C order, big-endian::

    00 00 TT NN   d1 d2 ... dN   data...

``TT`` is the type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64) and ``NN`` the number of dimensions. The reader refuses anything that does not
add up (bad magic, unknown type, a payload shorter or longer than the header says) with a
:class:`~data_loaders.errors.DataError` naming the file and the problem. Gzip is detected
from the first two bytes, not from the file name.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import atomic_write

TYPE_CODES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.newbyteorder("=").str: code for code, dt in TYPE_CODES.items()}
_TYPE_LIST = "0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64"
GZIP_MAGIC = b"\x1f\x8b"
MAX_NDIM = 32
_CHUNK = 1 << 22
#: The largest payload read (1 GiB; MNIST's largest file holds 47 MB). A header claiming more
#: is refused before anything is read, so a tiny file cannot make the reader allocate gigabytes.
MAX_PAYLOAD_BYTES = 1 << 30


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a native-endian, writable NumPy array.

    Raises:
        DataError: the file is missing, not IDX, corrupt, truncated, or has trailing bytes.
    """
    name = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{name}: cannot open: {exc.strerror or exc}") from exc
    with f:
        head = f.read(2)
        f.seek(0)
        if head == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=f, mode="rb") as g:
                return _parse(g, name, None)
        return _parse(f, name, os.fstat(f.fileno()).st_size)


def read_idx_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Like :func:`read_idx` for the bytes of a file already in memory (plain or gzipped)."""
    data = bytes(data)
    if data[:2] == GZIP_MAGIC:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as g:
            return _parse(g, name, None)
    return _parse(io.BytesIO(data), name, len(data))


def _parse(f, name: str, file_size: int | None) -> np.ndarray:
    """Parse one IDX stream. ``file_size`` is known for plain files, None for gzip streams."""
    gz = file_size is None
    try:
        return _parse_checked(f, name, file_size)
    except EOFError as exc:
        raise DataError(f"{name}: truncated gzip stream ({exc})") from exc
    except (OSError, zlib.error) as exc:
        what = "corrupt gzip data" if gz else "read error"
        raise DataError(f"{name}: {what} ({exc})") from exc


def _describe(dims: tuple[int, ...], dtype: np.dtype) -> str:
    shape = "x".join(str(d) for d in dims)
    if dtype.itemsize == 1:
        return shape
    return f"{shape} {dtype.newbyteorder('=').name} ({dtype.itemsize} bytes each)"


def _parse_checked(f, name: str, file_size: int | None) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(
            f"{name}: truncated: an IDX file starts with a 4-byte magic number, file has "
            f"{len(magic)} bytes"
        )
    if magic[0] != 0 or magic[1] != 0:
        hint = " (this looks like HTML, not IDX)" if magic[:1] == b"<" else ""
        raise DataError(
            f"{name}: bad magic number {magic.hex()}: an IDX file starts with two zero "
            f"bytes{hint}"
        )
    code, ndim = magic[2], magic[3]
    if code not in TYPE_CODES:
        raise DataError(
            f"{name}: bad magic number {magic.hex()}: unknown IDX type code 0x{code:02X} "
            f"(valid: {_TYPE_LIST})"
        )
    if not 1 <= ndim <= MAX_NDIM:
        raise DataError(
            f"{name}: bad magic number {magic.hex()}: {ndim} dimensions (must be 1 to {MAX_NDIM})"
        )
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(
            f"{name}: truncated: header declares {ndim} dimensions ({4 * ndim} bytes of sizes), "
            f"file ends after {len(raw_dims)} of them"
        )
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = TYPE_CODES[code]
    nbytes = math.prod(dims) * dtype.itemsize
    desc = _describe(dims, dtype)
    header = 4 + 4 * ndim
    if nbytes > MAX_PAYLOAD_BYTES:
        raise DataError(
            f"{name}: header says {desc} = {nbytes} bytes of data, more than the cap of "
            f"{MAX_PAYLOAD_BYTES} bytes (data_loaders.idx.MAX_PAYLOAD_BYTES)"
        )

    if file_size is not None:  # plain file: check the size before allocating anything
        have = file_size - header
        if have < nbytes:
            raise DataError(
                f"{name}: truncated: header says {desc} = {nbytes} bytes of data, file has {have}"
            )
        if have > nbytes:
            raise DataError(
                f"{name}: {have - nbytes} trailing bytes: header says {desc} = {nbytes} bytes "
                f"of data, file has {have}"
            )
        buf = bytearray(nbytes)
        got = f.readinto(buf) if nbytes else 0
        if got != nbytes:  # the file shrank under us
            raise DataError(
                f"{name}: truncated: header says {desc} = {nbytes} bytes of data, read {got}"
            )
    else:  # gzip stream: the size is unknown until read; pieces are kept until it is known,
        # so a header that lies costs no more memory than the data really there
        pieces, got = [], 0
        while got < nbytes:
            piece = f.read(min(_CHUNK, nbytes - got))
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        if got < nbytes:
            raise DataError(
                f"{name}: truncated: header says {desc} = {nbytes} bytes of data, file has "
                f"{got}"
            )
        buf = bytearray(nbytes)
        at = 0
        for piece in pieces:
            buf[at : at + len(piece)] = piece
            at += len(piece)
        del pieces
        extra = 0
        while piece := f.read(_CHUNK):
            extra += len(piece)
        if extra:
            raise DataError(
                f"{name}: {extra} trailing bytes: header says {desc} = {nbytes} bytes of data, "
                f"file has {nbytes + extra}"
            )

    arr = np.frombuffer(buf, dtype=dtype).reshape(dims)
    if not arr.dtype.isnative:
        arr.byteswap(inplace=True)
        arr = arr.view(arr.dtype.newbyteorder("="))
    return arr


def idx_header(array: np.ndarray) -> bytes:
    """The IDX header (magic number and sizes) that describes ``array``.

    Raises:
        DataError: the dtype has no IDX type code, or the shape cannot be written.
    """
    a = np.asarray(array)
    code = _CODE_OF.get(a.dtype.newbyteorder("=").str) if a.dtype.kind in "uif" else None
    if code is None:
        raise DataError(
            f"IDX cannot store dtype {a.dtype}; supported: uint8, int8, int16, int32, float32, "
            "float64 (convert first, e.g. a.astype(np.int32))"
        )
    if not 1 <= a.ndim <= MAX_NDIM:
        raise DataError(f"IDX stores arrays of 1 to {MAX_NDIM} dimensions, not {a.ndim}")
    if any(d >= 2**32 for d in a.shape):
        raise DataError(f"IDX sizes are 32-bit; shape {a.shape} does not fit")
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """The bytes of a plain (uncompressed) IDX file holding ``array``."""
    a = np.asarray(array)
    header = idx_header(a)
    return header + np.ascontiguousarray(a, dtype=a.dtype.newbyteorder(">")).tobytes()


def write_idx(
    path: str | os.PathLike, array: np.ndarray, compress: bool | None = None,
    compresslevel: int = 6,
) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz`` (or ``compress``).

    The write is atomic: the data goes to a temporary file in the same folder, which is
    renamed over ``path`` only once complete, so ``path`` never holds a partial file.
    The gzip header carries no timestamp, so equal arrays give equal files.
    """
    path = Path(path)
    a = np.asarray(array)
    header = idx_header(a)
    payload = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder(">"))
    if compress is None:
        compress = path.suffix == ".gz"
    with atomic_write(path) as f:
        if compress:
            inner = path.name[:-3] if path.name.endswith(".gz") else path.name
            with gzip.GzipFile(filename=inner, mode="wb", fileobj=f,
                               compresslevel=compresslevel, mtime=0) as g:
                _write_payload(g, header, payload)
        else:
            _write_payload(f, header, payload)


def _write_payload(f, header: bytes, payload: np.ndarray) -> None:
    f.write(header)
    flat = payload.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _CHUNK):
        f.write(flat[start:start + _CHUNK])
