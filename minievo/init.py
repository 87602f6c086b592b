"""Seeded weight initialisation.

Initial values are always drawn by NumPy from one seeded generator and then moved to the
default backend, so a CPU run and a GPU run with the same seed start from the same network.
"""

from __future__ import annotations

import math

import numpy as np

from minievo import backend

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the generator used for weight initialisation."""
    global _generator
    _generator = np.random.default_rng(seed)


def get_generator() -> np.random.Generator:
    return _generator


def _to_default(a: np.ndarray):
    return backend.to_backend(a.astype(backend.DEFAULT_DTYPE), backend.get_backend())


def xavier_uniform(shape, fan_in: int, rng: np.random.Generator | None = None):
    """Caffe's "xavier" filler: U(-a, a) with a = sqrt(3 / fan_in)."""
    rng = rng or _generator
    a = math.sqrt(3.0 / fan_in)
    return _to_default(rng.uniform(-a, a, size=shape))


def kaiming_uniform(shape, fan_in: int, rng: np.random.Generator | None = None):
    """He initialisation for ReLU networks: U(-a, a) with a = sqrt(6 / fan_in)."""
    rng = rng or _generator
    a = math.sqrt(6.0 / fan_in)
    return _to_default(rng.uniform(-a, a, size=shape))


def zeros(shape):
    return backend.xp_for().zeros(shape, dtype=backend.DEFAULT_DTYPE)


def ones(shape):
    return backend.xp_for().ones(shape, dtype=backend.DEFAULT_DTYPE)
