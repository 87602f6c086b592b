"""Seeded data augmentation for image batches: random crop with zero padding, horizontal flip.

The usual CIFAR recipe: pad each image by ``p`` pixels on every side, cut an H x W window at
a random offset ``(dy, dx)`` in ``[-p, p]``, and mirror it left-right with probability 1/2.
For a batch ``x`` (N, C, H, W) the result is

    out[n, c, i, j] = x[n, c, i + dy[n], j + dx[n]]    (0 where that falls outside x)

and then, for the images with ``flip[n] = 1``, ``out[n] = out[n, :, :, ::-1]``.

The random draws (three small integers per image) come from a NumPy Generator on the host,
so a numpy and a cupy batch get the same draws and identical results; the crop and the flip
are pure data movement on the batch's own device, vectorised over the batch (NumPy: one
strided-window gather, then the flips; CuPy: one gather with a computed index).

Where the padding sits: :class:`~data_loaders.DataLoader` augments *after* it normalises, so
the padded border is 0 in normalised units, i.e. the data set's mean colour. That is the
value a network's own zero padding feeds its convolutions, so the border adds no artificial
edge (a black border, 0 in raw pixels, is about -2 after CIFAR-10's normalisation, a strong
signal the network would learn to ignore). It also keeps augmentation independent of how the
data is stored (uint8 or float) and normalised. (torchvision's common recipe crops before it
normalises, so it pads black; the two are not the same augmentation.)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from minievo import backend as B


def _check_batch(x, what: str) -> None:
    if getattr(x, "ndim", None) != 4:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{what} needs a batch of images (N, C, H, W), got shape {shape}")


def _check_padding(padding: int, height: int, width: int) -> None:
    if padding >= height or padding >= width:
        raise ValueError(f"crop_padding {padding} must be smaller than the image size "
                         f"{height} x {width}")


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")


def _padded(x, p: int, xp):
    """x (N, C, H, W) inside a zero border of ``p`` pixels: (N, C, H + 2p, W + 2p), C order."""
    if p == 0:
        return xp.ascontiguousarray(x)
    n, c, h, w = x.shape
    out = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=x.dtype)
    out[:, :, p:p + h, p:p + w] = x
    return out


def _crop_flip_windows(x, dy, dx, flip, p: int):
    """The NumPy path: every crop of the padded batch as one strided view (no copy), of which
    one fancy index picks each image's window; then the flipped images are mirrored."""
    n, c, h, w = x.shape
    if p:
        pad = _padded(x, p, np)
        s = pad.strides
        windows = as_strided(pad, (n, c, 2 * p + 1, 2 * p + 1, h, w), s + s[2:],
                             writeable=False)
        # advanced indices on axes 0, 2, 3 split by a slice: the batch axis comes first
        out = np.ascontiguousarray(windows[np.arange(n), :, dy + p, dx + p])
    else:
        out = x.copy()
    rows = np.flatnonzero(flip)
    if rows.size:
        out[rows] = out[rows, :, :, ::-1]  # the right side is a copy: no overlap
    return out


def _crop_flip_gather(x, dy, dx, flip, p: int, xp):
    """Any backend: one gather from the flattened padded batch with a computed flat index;
    the flip is folded into the column index. On a GPU that is a few small kernels."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * p, w + 2 * p
    pad = _padded(x, p, xp).reshape(-1)
    j = xp.arange(w, dtype=np.int64)
    cols = xp.where(flip[:, None] != 0, w - 1 - j, j)  # (N, W)
    corner = xp.arange(n, dtype=np.int64) * (c * hp * wp) + (dy + p) * wp + (dx + p)  # (N,)
    inner = (xp.arange(c, dtype=np.int64)[:, None] * (hp * wp)
             + xp.arange(h, dtype=np.int64)[None, :] * wp)  # (C, H)
    index = corner[:, None, None, None] + inner[None, :, :, None] + cols[:, None, None, :]
    return xp.take(pad, index)


@dataclass(frozen=True)
class Augment:
    """Random crop from a zero-padded image and random horizontal flip, on (N, C, H, W) batches.

    Args:
        crop_padding: the border ``p`` in pixels; offsets are drawn uniformly in ``[-p, p]``
            on each axis. 0 turns cropping off.
        hflip: mirror each image left-right with probability 1/2.

    ``draw`` takes the random numbers, ``apply`` moves the pixels; ``aug(x, rng)`` does both.
    Cropping draws come first, then flips; a part that is off draws nothing, so turning the
    flip off leaves the crops of the same generator unchanged.
    """

    crop_padding: int = 4
    hflip: bool = True

    def __post_init__(self):
        p = self.crop_padding
        if isinstance(p, bool) or not isinstance(p, int | np.integer):
            raise TypeError(f"crop_padding must be an int, got {type(p).__name__}")
        if p < 0:
            raise ValueError(f"crop_padding must be non-negative, got {p}")
        if not isinstance(self.hflip, bool | np.bool_):
            raise TypeError(f"hflip must be a bool, got {type(self.hflip).__name__}")
        object.__setattr__(self, "crop_padding", int(p))
        object.__setattr__(self, "hflip", bool(self.hflip))

    def check_shape(self, sample_shape: tuple[int, ...]) -> None:
        """ValueError unless one sample of shape ``sample_shape`` can be augmented: (C, H, W)
        with the padding smaller than H and W."""
        if len(sample_shape) != 3:
            raise ValueError(f"augmentation needs image samples (C, H, W), got sample shape "
                             f"{tuple(sample_shape)}")
        _check_padding(self.crop_padding, sample_shape[1], sample_shape[2])

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The random numbers for ``n`` images.

        Args:
            n: the number of images.
            rng: the generator to draw from (advanced by the draw).

        Returns:
            int64 (3, n), on the host: rows ``dy``, ``dx`` (each in ``[-p, p]``; 0 when the
            crop is off) and ``flip`` (0 or 1; 0 when the flip is off).
        """
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        _check_rng(rng)
        out = np.zeros((3, n), dtype=np.int64)
        p = self.crop_padding
        if p:
            out[:2] = rng.integers(-p, p + 1, size=(2, n))
        if self.hflip:
            out[2] = rng.integers(0, 2, size=n)
        return out

    def apply(self, x, draws):
        """Crop and flip a batch as ``draws`` say.

        Args:
            x: (N, C, H, W) numpy or cupy array, any dtype; not modified.
            draws: (3, N) integers from :meth:`draw` (on the host, or on x's device).

        Returns:
            A new array like ``x`` (N, C, H, W), on x's backend.
        """
        _check_batch(x, "crop and flip")
        n, _, h, w = x.shape
        _check_padding(self.crop_padding, h, w)
        if not B.is_cupy_array(draws):
            draws = np.asarray(draws)
        if tuple(draws.shape) != (3, n):
            raise ValueError(f"draws must have shape (3, {n}) for a batch of {n} images, got "
                             f"{tuple(draws.shape)}")
        p = self.crop_padding
        if isinstance(draws, np.ndarray) and draws.size:  # on a device: trusted, no sync
            top = int(self.hflip)
            if (draws[:2].min() < -p or draws[:2].max() > p or draws[2].min() < 0
                    or draws[2].max() > top):
                raise ValueError(f"draws out of range: offsets must be in [-{p}, {p}] and "
                                 f"flips in {(0, 1)[:top + 1]}")
        xp = B.get_array_module(x)
        draws = xp.asarray(draws, dtype=np.int64)
        if xp is np:
            return _crop_flip_windows(x, draws[0], draws[1], draws[2], p)
        return _crop_flip_gather(x, draws[0], draws[1], draws[2], p, xp)

    def __call__(self, x, rng: np.random.Generator):
        """``apply(x, draw(len(x), rng))``: a randomly cropped and flipped copy of x
        (N, C, H, W)."""
        _check_batch(x, "crop and flip")
        return self.apply(x, self.draw(x.shape[0], rng))


def random_crop(x, padding: int, rng: np.random.Generator):
    """Random crops of a batch from a zero border of ``padding`` pixels.

    Args:
        x: (N, C, H, W) numpy or cupy array.
        padding: the border in pixels, ``0 <= padding < min(H, W)``.
        rng: the NumPy generator the offsets are drawn from (on the host).

    Returns:
        A new (N, C, H, W) array on x's backend.
    """
    return Augment(crop_padding=padding, hflip=False)(x, rng)


def random_hflip(x, rng: np.random.Generator):
    """Mirror each image of a batch left-right with probability 1/2.

    Args:
        x: (N, C, H, W) numpy or cupy array.
        rng: the NumPy generator the coin flips are drawn from (on the host).

    Returns:
        A new (N, C, H, W) array on x's backend.
    """
    return Augment(crop_padding=0, hflip=True)(x, rng)
