"""Shared fixtures: every backend-agnostic test body runs on each available backend."""

from __future__ import annotations

import os

# Many tiny matrix products: one BLAS thread is faster, and stable on a shared 2-core machine.
# Set before NumPy loads OpenBLAS (the environment of the test run and its subprocesses).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest

from minievo import backend


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
def _native_kernel_cache(tmp_path_factory):
    """Build the native CPU kernel once per test session, in a fresh folder (so the tests check
    that it builds from the source, never a library left over from an earlier version)."""
    from minievo.kernels import native

    old = os.environ.get("MINIEVO_NATIVE_CACHE")
    os.environ["MINIEVO_NATIVE_CACHE"] = str(tmp_path_factory.mktemp("native-cache"))
    native.reset()
    yield
    if old is None:
        os.environ.pop("MINIEVO_NATIVE_CACHE", None)
    else:
        os.environ["MINIEVO_NATIVE_CACHE"] = old
    native.reset()


@pytest.fixture
def dense_layers():
    """Masked layers take their dense path (im2col + BLAS) for the duration of a test: the
    reference that the compact and native paths are compared with must not be one of them."""
    from minievo.sparse import train as sparse_train

    old = sparse_train.get_mode()
    sparse_train.set_mode("off")
    yield
    sparse_train.set_mode(old)
