"""The IDX reader and writer: round trips, strict validation, atomic writes."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_loaders import DataError, read_idx, read_idx_bytes, write_idx
from data_loaders import idx as idx_mod
from data_loaders.idx import idx_bytes

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
         np.float64: 0x0E}


def _sample(dtype, shape=(3, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_each_dtype(tmp_path, dtype, gz):
    a = _sample(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == gz
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    assert b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable and b.flags.c_contiguous


def test_header_layout_is_big_endian(tmp_path):
    a = np.array([[1, 2, 3], [4, 5, 258]], dtype=np.int16)
    data = idx_bytes(a)
    assert data[:4] == bytes([0, 0, 0x0B, 2])
    assert struct.unpack(">II", data[4:12]) == (2, 3)
    assert data[12:] == a.astype(">i2").tobytes()
    assert len(data) == 12 + a.size * 2


def test_gzip_detected_by_magic_not_name(tmp_path):
    a = _sample(np.uint8, (4, 2))
    misnamed_gz = tmp_path / "plain-name"
    write_idx(misnamed_gz, a, compress=True)
    misnamed_plain = tmp_path / "x.gz"
    write_idx(misnamed_plain, a, compress=False)
    np.testing.assert_array_equal(read_idx(misnamed_gz), a)
    np.testing.assert_array_equal(read_idx(misnamed_plain), a)


def test_gzip_output_is_deterministic(tmp_path):
    a = _sample(np.uint8, (10, 3))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write_idx(tmp_path / "one" / "a.gz", a)
    write_idx(tmp_path / "two" / "a.gz", a)
    assert (tmp_path / "one" / "a.gz").read_bytes() == (tmp_path / "two" / "a.gz").read_bytes()


def test_empty_dimension_round_trips(tmp_path):
    a = np.zeros((0, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "e.gz", a)
    assert read_idx(tmp_path / "e.gz").shape == (0, 28, 28)


# -- validation: every bad file is a DataError naming the file and the problem -------------

def _write(tmp_path, name, data: bytes, gz=False):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_truncated_payload(tmp_path, gz):
    data = idx_bytes(np.zeros((6, 28, 28), np.uint8))
    path = _write(tmp_path, "train-images-idx3-ubyte" + (".gz" if gz else ""), data[:-100], gz)
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "truncated: header says 6x28x28 = 4704 bytes of data, file has 4604" in msg


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_trailing_bytes(tmp_path, gz):
    data = idx_bytes(np.arange(10, dtype=np.int32)) + b"\x00\x01\x02"
    path = _write(tmp_path, "lab.idx", data, gz)
    with pytest.raises(DataError, match=r"lab\.idx: 3 trailing bytes: header says 10 int32"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_wrong_size_header(tmp_path, gz):
    data = bytearray(idx_bytes(np.zeros((5, 4), np.float32)))
    data[4:8] = struct.pack(">I", 7)  # header claims 7 rows, file has 5
    path = _write(tmp_path, "w.idx", bytes(data), gz)
    with pytest.raises(DataError, match="truncated: header says 7x4 float32"):
        read_idx(path)


@pytest.mark.parametrize(
    "magic, pattern",
    [
        (b"\x01\x00\x08\x01", "bad magic number 01000801"),
        (b"\x00\x00\x07\x01", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x40", "64 dimensions"),
        (b"<htm", "looks like HTML"),
    ],
)
def test_bad_magic(tmp_path, magic, pattern):
    path = _write(tmp_path, "m.idx", magic + b"\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match=pattern) as err:
        read_idx(path)
    assert "m.idx" in str(err.value)


def test_short_files(tmp_path):
    with pytest.raises(DataError, match="file has 2 bytes"):
        read_idx(_write(tmp_path, "a", b"\x00\x00"))
    with pytest.raises(DataError, match="header declares 3 dimensions"):
        read_idx(_write(tmp_path, "b", b"\x00\x00\x08\x03\x00\x00\x00\x02"))
    with pytest.raises(DataError, match="file has 0 bytes"):
        read_idx(_write(tmp_path, "c", b""))


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(_sample(np.uint8, (50, 50))))
    cut = _write(tmp_path, "cut.gz", good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.gz: truncated gzip stream"):
        read_idx(cut)
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # inside the CRC32 / size trailer
    bad = _write(tmp_path, "crc.gz", bytes(flipped))
    with pytest.raises(DataError, match="crc.gz: corrupt gzip data"):
        read_idx(bad)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.idx: cannot open"):
        read_idx(tmp_path / "nope.idx")


def test_huge_header_in_gzip_does_not_allocate(tmp_path):
    data = b"\x00\x00\x0e\x03" + struct.pack(">III", 2**32 - 1, 2**32 - 1, 2**32 - 1)
    with pytest.raises(DataError, match="more than the cap of"):
        read_idx(_write(tmp_path, "huge.gz", data + b"\x00" * 8, gz=True))


@pytest.mark.parametrize("bad", [np.int64, np.uint16, np.float16, np.bool_, np.complex64])
def test_writer_refuses_unsupported_dtypes(tmp_path, bad):
    with pytest.raises(DataError, match="IDX cannot store dtype"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=bad))
    assert not (tmp_path / "x.idx").exists()


def test_writer_refuses_scalars(tmp_path):
    with pytest.raises(DataError, match="1 to 32 dimensions"):
        write_idx(tmp_path / "x.idx", np.uint8(3))


# -- atomic writes --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_failed_write_leaves_no_file(tmp_path, monkeypatch, name):
    def half_then_fail(f, header, payload):
        f.write(header)
        f.write(payload.reshape(-1).view(np.uint8)[: payload.nbytes // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(idx_mod, "_write_payload", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        write_idx(tmp_path / name, np.ones((100, 10), np.uint8))
    assert os.listdir(tmp_path) == []  # neither the final name nor a temporary file


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.idx.gz"
    old = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(path, old)

    def fail(f, header, payload):
        f.write(header)
        raise KeyboardInterrupt

    monkeypatch.setattr(idx_mod, "_write_payload", fail)
    with pytest.raises(KeyboardInterrupt):
        write_idx(path, np.zeros((5, 5), np.uint8))
    np.testing.assert_array_equal(read_idx(path), old)
    assert os.listdir(tmp_path) == ["keep.idx.gz"]


# -- properties -----------------------------------------------------------------------------

_arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(
        dtype=dt,
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
        elements=(st.floats(width=np.dtype(dt).itemsize * 8, allow_nan=False)
                  if np.dtype(dt).kind == "f" else None),
    )
)


@settings(max_examples=60, deadline=None)
@given(a=_arrays, gz=st.booleans())
def test_property_round_trip_bytes(a, gz):
    data = idx_bytes(a)
    b = read_idx_bytes(gzip.compress(data, mtime=0) if gz else data)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=_arrays)
def test_property_round_trip_files(tmp_path, a):
    write_idx(tmp_path / "p.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "p.gz"), a)


def _only_data_error(data: bytes):
    """Parsing may succeed (if the bytes happen to be valid) or raise DataError, nothing else."""
    try:
        out = read_idx_bytes(data, "fuzz")
    except DataError as exc:
        assert str(exc).startswith("fuzz")
        return None
    assert isinstance(out, np.ndarray)
    return out


@settings(max_examples=80, deadline=None)
@given(a=_arrays, data=st.data(), gz=st.booleans())
def test_property_truncation_is_rejected(a, data, gz):
    full = idx_bytes(a)
    cut = data.draw(st.integers(0, len(full) - 1))
    blob = full[:cut]
    if gz:
        blob = gzip.compress(blob)
    with pytest.raises(DataError):
        read_idx_bytes(blob, "fuzz")


@settings(max_examples=60, deadline=None)
@given(a=_arrays, extra=st.binary(min_size=1, max_size=20))
def test_property_trailing_bytes_rejected(a, extra):
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx_bytes(idx_bytes(a) + extra, "fuzz")


@settings(max_examples=150, deadline=None)
@given(blob=st.one_of(
    st.binary(max_size=64),
    st.builds(lambda code, nd, rest: bytes([0, 0, code, nd]) + rest,
              st.sampled_from([8, 9, 11, 12, 13, 14, 10, 0xFF]), st.integers(0, 6),
              st.binary(max_size=64)),
))
def test_property_garbage_only_raises_data_error(blob):
    _only_data_error(blob)
    _only_data_error(gzip.compress(blob))
    _only_data_error(b"\x1f\x8b" + blob)  # gzip magic on garbage


@settings(max_examples=80, deadline=None)
@given(a=_arrays, data=st.data())
def test_property_mutations_only_raise_data_error(a, data):
    blob = bytearray(gzip.compress(idx_bytes(a), mtime=0))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    _only_data_error(bytes(blob))
