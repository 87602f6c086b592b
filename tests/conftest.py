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
