"""The NumPy/CuPy switch: names, errors that say why and what to do, defaults, mixing."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import minievo.functions as F
from minievo import backend
from minievo.autograd import Tensor
from minievo.backend import BackendError


@pytest.fixture
def fresh_cupy_state(monkeypatch):
    """Forget any cached CuPy import (or import error) for the test; restored afterwards."""
    monkeypatch.setattr(backend, "_cupy_module", None)
    monkeypatch.setattr(backend, "_cupy_error", None)


@pytest.fixture
def fresh_default(monkeypatch):
    """Forget the thread's default backend so that MINIEVO_BACKEND is read again."""
    monkeypatch.setattr(backend._state, "name", None, raising=False)


def _fake_cupy(device_count=None, error=None):
    """A stand-in for the cupy module whose runtime reports ``device_count`` or raises."""

    def get_device_count():
        if error is not None:
            raise error
        return device_count

    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=get_device_count))
    mod.asarray = np.asarray
    return mod


class FakeCupyArray:
    """Looks like a CuPy array to minievo (its type lives in a 'cupy...' module)."""

    def __init__(self, shape=(2,)):
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.ndim = len(shape)


FakeCupyArray.__module__ = "cupy._core.core"


def test_unknown_backend_lists_valid_ones():
    for call in (backend.set_backend, backend.xp_for):
        with pytest.raises(BackendError, match="unknown backend 'tpu'; valid backends are: "
                                               "numpy, cupy"):
            call("tpu")
    with pytest.raises(BackendError, match="valid backends"):
        with backend.using_backend("jax"):
            pass


def test_backend_names_are_case_insensitive():
    with backend.using_backend("NumPy"):
        assert backend.get_backend() == "numpy"


def test_missing_cupy_says_why_and_how_to_install(monkeypatch, fresh_cupy_state):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendError) as info:
        backend.set_backend("cupy")
    msg = str(info.value)
    assert "could not be imported" in msg and "ModuleNotFoundError" in msg
    assert "pip install -e .[gpu]" in msg
    assert not backend.cupy_available()
    assert backend.get_backend() == "numpy"  # the failed switch left the default alone


def test_cupy_without_gpu_says_why(monkeypatch, fresh_cupy_state):
    err = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(error=err))
    with pytest.raises(BackendError) as info:
        backend.xp_for("cupy")
    msg = str(info.value)
    assert "no CUDA device is usable" in msg and "cudaErrorInsufficientDriver" in msg
    assert "nvidia-smi" in msg and "--backend numpy" in msg
    # the verdict is cached: asking again gives the same answer without importing again
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendError, match="cudaErrorInsufficientDriver"):
        backend.set_backend("cupy")


def test_cupy_with_zero_devices(monkeypatch, fresh_cupy_state):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count=0))
    with pytest.raises(BackendError, match="reports no CUDA device"):
        backend.set_backend("cupy")


def test_using_backend_restores_previous_default(monkeypatch, fresh_cupy_state):
    fake = _fake_cupy(device_count=1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with backend.using_backend("numpy"):
        with backend.using_backend("cupy"):
            assert backend.get_backend() == "cupy"
            assert backend.xp_for() is fake
        assert backend.get_backend() == "numpy"
        with pytest.raises(KeyError):
            with backend.using_backend("cupy"):
                raise KeyError("boom")  # restored on the way out of an exception too
        assert backend.get_backend() == "numpy"


def test_minievo_backend_env(monkeypatch, fresh_default, fresh_cupy_state):
    monkeypatch.setenv("MINIEVO_BACKEND", "numpy")
    assert backend.get_backend() == "numpy"
    assert backend.xp_for() is np


def test_minievo_backend_env_unknown(monkeypatch, fresh_default):
    monkeypatch.setenv("MINIEVO_BACKEND", "tpu")
    with pytest.raises(BackendError, match="valid backends are: numpy, cupy"):
        backend.get_backend()


def test_minievo_backend_env_cupy_without_cupy(monkeypatch, fresh_default, fresh_cupy_state):
    monkeypatch.setenv("MINIEVO_BACKEND", "cupy")
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendError, match=r"pip install -e \.\[gpu\]"):
        backend.get_backend()


def test_minievo_backend_env_cupy(monkeypatch, fresh_default, fresh_cupy_state):
    monkeypatch.setenv("MINIEVO_BACKEND", "cupy")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count=1))
    assert backend.get_backend() == "cupy"


def test_mixing_numpy_and_cupy_arrays_names_both():
    with pytest.raises(BackendError) as info:
        backend.get_array_module(np.zeros(2, dtype=np.float32), FakeCupyArray())
    msg = str(info.value)
    assert "numpy.ndarray" in msg and "cupy.ndarray" in msg
    assert "to_backend" in msg or ".to(" in msg  # says how to fix it


def test_mixing_in_an_op_raises_before_computing():
    a = Tensor(np.zeros(2, dtype=np.float32), requires_grad=True)
    b = Tensor(FakeCupyArray())
    for op in (F.add, F.mul, F.matmul):
        with pytest.raises(BackendError, match="numpy.ndarray and a cupy.ndarray"):
            op(a, b)


def test_get_array_module_numpy_and_non_arrays():
    assert backend.get_array_module(np.zeros(1), None, 3.0) is np
    assert backend.get_array_module() is np
    assert backend.backend_of(np.zeros(1)) == "numpy"
    assert backend.backend_of(FakeCupyArray()) == "cupy"


def test_array_helpers(xp, backend_name):
    a = backend.array([1.0, 2.0])
    assert a.dtype == np.float32 and backend.backend_of(a) == backend_name
    assert backend.array([1, 2]).dtype.kind == "i"  # integers stay integers
    assert backend.array([1.0], dtype=np.float64).dtype == np.float64
    moved = backend.to_backend(a, "numpy")
    assert isinstance(moved, np.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(a), [1.0, 2.0])
    assert backend.xp_for(backend_name) is xp


def test_cupy_available_is_a_bool():
    assert isinstance(backend.cupy_available(), bool)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="no CuPy with a GPU")
def test_real_cupy_round_trip():
    import cupy

    x = backend.to_backend(np.arange(3.0), "cupy")
    assert isinstance(x, cupy.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(x), [0.0, 1.0, 2.0])
    with pytest.raises(BackendError, match="numpy.ndarray and a cupy.ndarray"):
        backend.get_array_module(np.zeros(3), x)
