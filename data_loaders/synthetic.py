"""Small seeded synthetic data sets for tests and the first chapters (no download needed).

- :func:`make_blobs`: Gaussian clusters, one per class (linearly separable-ish).
- :func:`make_spirals`: interleaved spiral arms (needs a hidden layer).
- :func:`make_digits_like`: 28x28 images whose class is the orientation of a thick stroke,
  drawn at a random place, length, width and brightness, with noise. A small convnet learns
  it in a few hundred steps; a linear model does noticeably worse.

Every generator is a pure function of its arguments: the same seed gives the same arrays.
"""

from __future__ import annotations

import numpy as np


def make_blobs(n: int = 300, n_classes: int = 3, dim: int = 2, seed: int = 0,
               spread: float = 1.0, radius: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in ``dim`` dimensions around ``n_classes`` random centres.

    Returns (x float32 (n, dim), y int64 (n,)); classes are balanced up to one point.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres *= radius / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    y = rng.permutation(np.arange(n) % n_classes)
    x = centres[y] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32), y.astype(np.int64)


def make_spirals(n: int = 300, n_classes: int = 2, noise: float = 0.1, turns: float = 1.5,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 2-D points on ``n_classes`` interleaved spiral arms, radius up to 1.

    Returns (x float32 (n, 2), y int64 (n,)).
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % n_classes)
    t = rng.uniform(0.05, 1.0, size=n)  # position along the arm; the radius grows with it
    angle = 2 * np.pi * (turns * t + y / n_classes)
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    x += noise * rng.normal(size=x.shape) * t[:, None]
    return x.astype(np.float32), y.astype(np.int64)


def make_digits_like(n: int = 1000, seed: int = 0, size: int = 28, n_classes: int = 10,
                     noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of one stroke each, whose orientation is the class.

    Class ``k`` is a bar at ``k * 180 / n_classes`` degrees, jittered by up to a fifth of the
    gap between classes; its centre, length, width and brightness vary per image, and
    Gaussian pixel noise is added. Returns (x uint8 (n, 1, size, size), y uint8 (n,)),
    MNIST's dtypes, so the same loader and normalisation code applies.
    """
    if n_classes > 255:
        raise ValueError("at most 255 classes (labels are uint8)")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % n_classes)
    gap = np.pi / n_classes
    theta = y * gap + rng.uniform(-0.2, 0.2, size=n) * gap
    s = size / 28.0
    cx = size / 2 + rng.uniform(-4, 4, size=n) * s
    cy = size / 2 + rng.uniform(-4, 4, size=n) * s
    half_len = rng.uniform(7, 11, size=n) * s
    half_width = rng.uniform(0.9, 1.8, size=n) * s
    bright = rng.uniform(0.7, 1.0, size=n)

    coords = np.arange(size, dtype=np.float32) + 0.5
    px = coords[None, None, :] - cx[:, None, None].astype(np.float32)
    py = coords[None, :, None] - cy[:, None, None].astype(np.float32)
    ux = np.cos(theta).astype(np.float32)[:, None, None]
    uy = np.sin(theta).astype(np.float32)[:, None, None]
    along = px * ux + py * uy  # (n, size, size) coordinates in the stroke's frame
    across = np.abs(px * uy - py * ux)
    # distance to the segment, then a one-pixel antialiased edge
    dist = np.hypot(np.maximum(np.abs(along) - half_len[:, None, None], 0), across)
    img = np.clip(half_width[:, None, None] + 0.5 - dist, 0, 1) * bright[:, None, None]
    img += noise * rng.standard_normal(img.shape, dtype=np.float32)
    x = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return x[:, None], y.astype(np.uint8)
