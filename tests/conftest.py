"""Shared fixtures: every backend-agnostic test body runs on each available backend."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

# Many tiny matrix products: one BLAS thread is faster, and stable on a shared 2-core machine.
# Set before NumPy loads OpenBLAS (the environment of the test run and its subprocesses).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_NATIVE_CACHE = tempfile.mkdtemp(prefix="minievo-native-tests-")
os.environ["MINIEVO_NATIVE_CACHE"] = _NATIVE_CACHE

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minievo import backend  # noqa: E402


def _backend_params():
    return [
        pytest.param("numpy", id="numpy"),
        pytest.param(
            "cupy",
            id="cupy",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not backend.cupy_available(), reason="no CuPy with a GPU"),
            ],
        ),
    ]


@pytest.fixture(params=_backend_params())
def backend_name(request):
    """The name of a backend to test on; the default backend is set to it for the test."""
    with backend.using_backend(request.param):
        yield request.param


@pytest.fixture
def xp(backend_name):
    """The array module (numpy or cupy) of the backend under test."""
    return backend.xp_for(backend_name)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def _native_kernel_cache():
    """The native CPU kernel is built once per test session, in a fresh folder (so the tests
    check that it builds from the source, never a library left over from an earlier version),
    and the user's own cache is never touched. The folder is set when this file is imported,
    so that subprocesses whose environment is copied early (the chapter runs) use it too."""
    yield
    shutil.rmtree(_NATIVE_CACHE, ignore_errors=True)


@pytest.fixture
def dense_layers():
    """Masked layers take the reference ops (im2col + BLAS) for the duration of a test: the
    reference that the compact and native paths are compared with must not be one of them."""
    from minievo import layers

    old = layers.use_ops(layers.REFERENCE_OPS)
    yield
    layers.use_ops(old)


@pytest.fixture(autouse=True)
def _reference_ops_after_each_test():
    """A test that turns the accelerator on (minievo.accel.enable, the CLI's default) leaves
    the next test the reference ops and the default sparse-training mode."""
    yield
    from minievo import layers

    layers.use_ops(layers.REFERENCE_OPS)
    accel_train = sys.modules.get("minievo.accel.sparse_train")
    if accel_train is not None:
        accel_train.set_mode("auto")
