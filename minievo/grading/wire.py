"""The messages between the grader and a submission's worker: plain values and raw arrays.

Both sides of a grading run use this module: the grader (:mod:`minievo.grading.runner`) and
the worker process that runs a student's code (:mod:`minievo.grading.worker`, which loads this
file by its path, so that it never imports a ``minievo`` package). It needs only the standard
library and NumPy, and it never pickles: what crosses the pipe is JSON plus the raw bytes of
NumPy arrays whose dtype is a plain number type. A frame is::

    b"MEVG"  json_length (8 bytes, big-endian)  data_length (8 bytes)  json  data

The JSON describes the value; tagged objects stand for what JSON lacks:

    {"$": "a", "i": k}            array k of the frame (its dtype and shape are in "arrays")
    {"$": "s", "i": k}            a NumPy scalar (0-d array k, given back as a scalar)
    {"$": "t", "v": [...]}        a tuple
    {"$": "m", "v": [[k, v]...]}  a dict (any plain keys)
    {"$": "d", "v": "<f4"}        a dtype (``"type": true``: a scalar type such as np.float32)
    {"$": "g", "v": state}        a np.random.Generator, by its bit generator's state
    {"$": "o", "c": path, "v": state}   an object of a minievo class, by its attributes

A reader checks everything before it builds anything: the magic, the lengths against its limit,
every dtype (booleans, integers, floats and complex numbers only), every shape against the
bytes it has, and the nesting depth. A value that cannot be sent raises :class:`WireError`.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time

import numpy as np

MAGIC = b"MEVG"
_HEADER = struct.Struct(">4sQQ")

#: Array kinds that may cross: bool, signed and unsigned integers, floats, complex numbers.
ARRAY_KINDS = "biufc"

#: The deepest nesting of lists, tuples, dicts and objects a message may hold.
MAX_DEPTH = 48

#: The most arrays one message may hold.
MAX_ARRAYS = 100_000

#: Bit generators a Generator may be rebuilt with.
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class WireError(ValueError):
    """A value that cannot be sent, or a frame that is not a valid message."""


class PeerClosed(EOFError):
    """The other side closed its end of the pipe (the process ended)."""


class Timeout(TimeoutError):
    """No complete frame before the deadline."""


# ----------------------------------------------------------------------------------------------
# Values <-> frames
# ----------------------------------------------------------------------------------------------
def _check_array(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in ARRAY_KINDS or a.dtype.hasobject or a.dtype.fields is not None:
        raise WireError(f"an array of dtype {a.dtype} cannot be sent (numbers and booleans "
                        "only)")
    return a


def encode(value, describe=None) -> bytes:
    """One frame holding ``value``.

    Args:
        value: None, bool, int, float, str, NumPy arrays and scalars, dtypes, tuples, lists,
            dicts, ``np.random.Generator``; other objects when ``describe`` takes them.
        describe: ``describe(obj) -> (class_path, {attribute: value})`` or None for an object
            that cannot be sent.

    Raises:
        WireError: a value (or an array dtype) that cannot be sent, or nesting deeper than
            :data:`MAX_DEPTH`.
    """
    arrays: list[np.ndarray] = []

    def add(a: np.ndarray) -> int:
        if len(arrays) >= MAX_ARRAYS:
            raise WireError(f"more than {MAX_ARRAYS} arrays in one message")
        a = _check_array(a)
        arrays.append(a if a.flags.c_contiguous else a.copy(order="C"))
        return len(arrays) - 1

    def enc(v, depth: int):
        if depth > MAX_DEPTH:
            raise WireError(f"the value is nested deeper than {MAX_DEPTH} levels")
        if v is None or isinstance(v, bool | str):
            return v
        if isinstance(v, np.ndarray):
            return {"$": "a", "i": add(v)}
        if isinstance(v, np.generic):
            return {"$": "s", "i": add(np.asarray(v))}
        if type(v) is int or type(v) is float:
            return v
        if isinstance(v, np.dtype):
            return {"$": "d", "v": _check_array(np.empty(0, v)).dtype.str}
        if isinstance(v, type) and issubclass(v, np.generic):
            return {"$": "d", "v": _check_array(np.empty(0, v)).dtype.str, "type": True}
        if isinstance(v, tuple):
            return {"$": "t", "v": [enc(x, depth + 1) for x in v]}
        if isinstance(v, list):
            return [enc(x, depth + 1) for x in v]
        if isinstance(v, dict):
            return {"$": "m", "v": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
        if isinstance(v, np.random.Generator):
            return {"$": "g", "v": enc(v.bit_generator.state, depth + 1)}
        if isinstance(v, int | float):  # an int or float subclass (IntEnum, ...): its value
            return int(v) if isinstance(v, int) else float(v)
        described = describe(v) if describe is not None else None
        if described is None:
            raise WireError(f"a {type(v).__module__}.{type(v).__qualname__} cannot be sent "
                            "(arrays, numbers, strings, tuples, lists and dicts can)")
        path, state = described
        return {"$": "o", "c": str(path), "v": enc(dict(state), depth + 1)}

    meta = json.dumps({"v": enc(value, 0),
                       "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]},
                      allow_nan=True, separators=(",", ":")).encode("utf-8")
    data = b"".join(a.tobytes() for a in arrays)
    return _HEADER.pack(MAGIC, len(meta), len(data)) + meta + data


def _dtype(text) -> np.dtype:
    if not isinstance(text, str) or len(text) > 8:
        raise WireError(f"bad dtype {text!r}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise WireError(f"bad dtype {text!r}") from exc
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject or dtype.fields is not None:
        raise WireError(f"dtype {dtype} is not allowed (numbers and booleans only)")
    return dtype


def decode(frame: bytes, build_object=None, build_rng=None):
    """The value of one frame (see :func:`encode`).

    Args:
        frame: the bytes of one frame.
        build_object: ``build_object(class_path, state) -> object`` for an object; None keeps
            it as ``{"class": path, "state": state}``.
        build_rng: ``build_rng(state) -> object`` for a Generator; None keeps the state dict.

    Raises:
        WireError: anything malformed (the message says what).
    """
    if len(frame) < _HEADER.size:
        raise WireError("a frame shorter than its header")
    magic, meta_len, data_len = _HEADER.unpack_from(frame)
    if magic != MAGIC or _HEADER.size + meta_len + data_len != len(frame):
        raise WireError("a frame with a bad header")
    try:
        meta = json.loads(frame[_HEADER.size:_HEADER.size + meta_len].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise WireError(f"unreadable JSON in a frame: {str(exc)[:200]}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), list) or "v" not in meta:
        raise WireError("a frame without a value")
    specs = meta["arrays"]
    if len(specs) > MAX_ARRAYS:
        raise WireError(f"more than {MAX_ARRAYS} arrays in one message")
    data = memoryview(frame)[_HEADER.size + meta_len:]
    arrays, offset = [], 0
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], list)
                and len(spec[1]) <= 32):
            raise WireError("a bad array description")
        dtype = _dtype(spec[0])
        shape = spec[1]
        if not all(type(n) is int and n >= 0 for n in shape):
            raise WireError(f"a bad array shape {shape!r}")
        count = 1
        for n in shape:
            count *= n
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(data):
            raise WireError("the arrays of a frame are longer than its data")
        a = (np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
             if count else np.empty(shape, dtype))
        arrays.append(a)
        offset += nbytes
    if offset != len(data):
        raise WireError("a frame with data that no array describes")

    def array(node) -> np.ndarray:
        i = node.get("i")
        if type(i) is not int or not 0 <= i < len(arrays):
            raise WireError("a reference to a missing array")
        return arrays[i]

    def dec(node, depth: int):
        if depth > MAX_DEPTH:
            raise WireError(f"a value nested deeper than {MAX_DEPTH} levels")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [dec(x, depth + 1) for x in node]
        if not isinstance(node, dict):
            raise WireError("a bad value in a frame")
        tag = node.get("$")
        if tag == "a":
            return array(node)
        if tag == "s":
            a = array(node)
            if a.ndim != 0:
                raise WireError("a scalar that is not 0-d")
            return a[()]
        if tag == "t":
            return tuple(dec(x, depth + 1) for x in _list(node.get("v")))
        if tag == "m":
            out = {}
            for pair in _list(node.get("v")):
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise WireError("a bad dict entry")
                key = dec(pair[0], depth + 1)
                try:
                    out[key] = dec(pair[1], depth + 1)
                except TypeError as exc:
                    raise WireError("an unhashable dict key") from exc
            return out
        if tag == "d":
            dtype = _dtype(node.get("v"))
            return dtype.type if node.get("type") else dtype
        if tag == "g":
            state = dec(node.get("v"), depth + 1)
            return build_rng(state) if build_rng is not None else state
        if tag == "o":
            path = node.get("c")
            if not isinstance(path, str) or len(path) > 300:
                raise WireError("a bad class name")
            state = dec(node.get("v"), depth + 1)
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise WireError("a bad object state")
            if build_object is None:
                return {"class": path, "state": state}
            return build_object(path, state)
        raise WireError(f"an unknown tag {str(tag)[:20]!r}")

    return dec(meta["v"], 0)


def _list(value) -> list:
    if not isinstance(value, list):
        raise WireError("a bad list in a frame")
    return value


def make_rng(state) -> np.random.Generator:
    """A Generator in ``state`` (a bit generator's ``.state`` dict)."""
    if not isinstance(state, dict) or state.get("bit_generator") not in BIT_GENERATORS:
        raise WireError("a bad random generator state")
    bit_generator = getattr(np.random, state["bit_generator"])()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise WireError(f"a bad random generator state: {exc}") from exc
    return np.random.Generator(bit_generator)


#: Attributes never sent with an object: the links of the autograd graph.
SKIPPED_ATTRIBUTES = ("creator", "_output")


def _sendable(v, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if v is None or isinstance(v, bool | int | float | str | np.generic | np.dtype):
        return True
    if isinstance(v, np.ndarray):
        return v.dtype.kind in ARRAY_KINDS and not v.dtype.hasobject and v.dtype.fields is None
    if isinstance(v, np.random.Generator):
        return True
    if isinstance(v, tuple | list):
        return len(v) <= 10_000 and all(_sendable(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return len(v) <= 10_000 and all(_sendable(k, depth + 1) and _sendable(x, depth + 1)
                                        for k, x in v.items())
    return _minievo_class(type(v)) and hasattr(v, "__dict__")


def _minievo_class(cls) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == "minievo" or module.startswith("minievo.")


def describe_minievo_object(obj):
    """``("module:QualName", attributes)`` for an object of a class defined in a ``minievo``
    module (a Tensor, a Function, a GeneticEncoding...); None for anything else.

    Attributes that cannot be sent (a weak reference, a function) and the graph links
    (:data:`SKIPPED_ATTRIBUTES`) travel as None.
    """
    cls = type(obj)
    state = getattr(obj, "__dict__", None)
    if not _minievo_class(cls) or not isinstance(state, dict):
        return None
    out = {k: (None if k in SKIPPED_ATTRIBUTES or not _sendable(v) else v)
           for k, v in state.items() if isinstance(k, str)}
    return f"{cls.__module__}:{cls.__qualname__}", out


# ----------------------------------------------------------------------------------------------
# Frames over pipes
# ----------------------------------------------------------------------------------------------
def send(fd: int, frame: bytes, deadline: float | None = None, on_wait=None) -> None:
    """Write a whole frame to ``fd`` (non-blocking with a ``deadline``, time.monotonic())."""
    view = memoryview(frame)
    while view:
        if deadline is not None:
            _wait(fd, deadline, on_wait, write=True)
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        except BrokenPipeError as exc:
            raise PeerClosed("the other end of the pipe is closed") from exc
        view = view[n:]


def recv(fd: int, max_bytes: int, deadline: float | None = None, on_wait=None) -> bytes:
    """Read one whole frame from ``fd``; at most ``max_bytes`` of JSON and data.

    Raises:
        PeerClosed: end of file before a whole frame.
        Timeout: the deadline passed.
        WireError: a bad header or a frame over the limit.
    """
    head = _read_exactly(fd, _HEADER.size, deadline, on_wait)
    magic, meta_len, data_len = _HEADER.unpack(head)
    if magic != MAGIC:
        raise WireError("the other side wrote something that is not a frame")
    if meta_len + data_len > max_bytes:
        raise WireError(f"a message of {meta_len + data_len} bytes, over the limit of "
                        f"{max_bytes} bytes")
    return head + _read_exactly(fd, meta_len + data_len, deadline, on_wait)


def _wait(fd: int, deadline: float, on_wait, write: bool = False) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout("no answer before the deadline")
        ready = select.select([], [fd], [], min(left, 0.2)) if write else \
            select.select([fd], [], [], min(left, 0.2))
        if ready[1 if write else 0]:
            return
        if on_wait is not None:
            on_wait()


def _read_exactly(fd: int, n: int, deadline: float | None, on_wait) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            _wait(fd, deadline, on_wait)
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise PeerClosed("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


__all__ = ["ARRAY_KINDS", "PeerClosed", "Timeout", "WireError", "decode",
           "describe_minievo_object", "encode", "make_rng", "recv", "send"]
