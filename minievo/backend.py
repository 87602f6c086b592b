"""The NumPy/CuPy switch.

Two rules keep the same code running on the CPU and on the GPU:

1. *The data decides.* Every op asks ``xp = get_array_module(x)`` and works on whatever kind
   of array it was handed. Nothing moves between devices behind the user's back.
2. *A default backend only decides where new arrays are created* (parameters, random masks,
   data batches). Choose it with :func:`set_backend`, the :func:`using_backend` context
   manager, the ``MINIEVO_BACKEND`` environment variable or the CLI's ``--backend`` flag.

Transfers are explicit: :func:`to_backend` (and ``model.to(...)``, ``loader.to(...)``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from types import ModuleType

import numpy as np

BACKENDS = ("numpy", "cupy")
DEFAULT_DTYPE = np.float32

_state = threading.local()
_cupy_module: ModuleType | None = None
_cupy_error: str | None = None


class BackendError(RuntimeError):
    """Raised for an unknown backend, an unusable CuPy, or arrays of two backends mixed."""


def check_name(name: str) -> str:
    """The backend name in lower case; BackendError listing the valid ones when unknown."""
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise BackendError(
            f"unknown backend {name!r}; valid backends are: {', '.join(BACKENDS)}"
        )
    return name.lower()


def _load_cupy() -> ModuleType:
    """Import CuPy and check that a GPU answers; raise a BackendError that says why not."""
    global _cupy_module, _cupy_error
    if _cupy_module is not None:
        return _cupy_module
    if _cupy_error is not None:
        raise BackendError(_cupy_error)
    try:
        import cupy  # noqa: PLC0415
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        _cupy_error = (
            f"the cupy backend needs CuPy, which could not be imported ({type(exc).__name__}: "
            f"{exc}). Install it with: pip install -e .[gpu]  (cupy-cuda12x, for CUDA 12 "
            "drivers)"
        )
        raise BackendError(_cupy_error) from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        _cupy_error = (
            f"CuPy is installed but no CUDA device is usable ({type(exc).__name__}: {exc}). "
            "Check the NVIDIA driver (nvidia-smi), that the CUDA 12 build of CuPy matches it "
            "(pip install -e .[gpu] installs cupy-cuda12x), or use --backend numpy."
        )
        raise BackendError(_cupy_error) from exc
    if n < 1:
        _cupy_error = "CuPy is installed but reports no CUDA device; use --backend numpy."
        raise BackendError(_cupy_error)
    _cupy_module = cupy
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    try:
        _load_cupy()
    except BackendError:
        return False
    return True


def _env_default() -> str:
    name = os.environ.get("MINIEVO_BACKEND", "numpy")
    return check_name(name)


def get_backend() -> str:
    """The name of the current default backend ('numpy' or 'cupy')."""
    name = getattr(_state, "name", None)
    if name is None:
        name = _env_default()
        if name == "cupy":
            _load_cupy()
        _state.name = name
    return name


def set_backend(name: str) -> None:
    """Make ``name`` the default backend for newly created arrays.

    Raises:
        BackendError: for an unknown name, or 'cupy' when CuPy or a GPU is missing.
    """
    name = check_name(name)
    if name == "cupy":
        _load_cupy()
    _state.name = name


@contextlib.contextmanager
def using_backend(name: str):
    """Context manager: ``with using_backend('cupy'): ...`` restores the old default after."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        _state.name = old


def xp_for(name: str | None = None) -> ModuleType:
    """The array module (numpy or cupy) of a backend name, or of the default backend."""
    name = get_backend() if name is None else check_name(name)
    return _load_cupy() if name == "cupy" else np


def is_cupy_array(x) -> bool:
    # Checked by type name so that CuPy is never imported just to answer "no".
    return type(x).__module__.startswith("cupy")


def get_array_module(*arrays) -> ModuleType:
    """Return numpy or cupy according to the arrays given (the data decides).

    Raises:
        BackendError: when NumPy and CuPy arrays are mixed in one call.
    """
    kinds = {("cupy" if is_cupy_array(a) else "numpy") for a in arrays if a is not None
             and hasattr(a, "shape")}
    if len(kinds) > 1:
        raise BackendError(
            "an op received both a numpy.ndarray and a cupy.ndarray; move everything to one "
            "device first, e.g. model.to('cupy') and loader.to('cupy'), or "
            "minievo.backend.to_backend(x, 'cupy')"
        )
    if kinds == {"cupy"}:
        return _load_cupy()
    return np


def backend_of(x) -> str:
    """'cupy' for a CuPy array, else 'numpy'."""
    return "cupy" if is_cupy_array(x) else "numpy"


def to_backend(x, name: str):
    """Copy an array to the named backend (a no-op when it is already there)."""
    name = check_name(name)
    if name == "cupy":
        cp = _load_cupy()
        return cp.asarray(x)
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of any array of either backend."""
    return x.get() if is_cupy_array(x) else np.asarray(x)


def array(data, dtype=None, backend: str | None = None):
    """Create an array on the default (or named) backend, float32 unless told otherwise."""
    xp = xp_for(backend)
    if dtype is None:
        arr = xp.asarray(data)
        if arr.dtype.kind == "f":
            arr = arr.astype(DEFAULT_DTYPE, copy=False)
        return arr
    return xp.asarray(data, dtype=dtype)
