"""Mini-batches from in-memory arrays, on either backend.

The whole data set stays one contiguous array, in its stored dtype (uint8 images stay uint8:
four times less memory and memory traffic than float32). Each batch is one gather with a
slice of the epoch's permutation, then a single cast-and-scale into a fresh float array.

Shuffling is reproducible and resumable: the order of epoch ``e`` is a function of
``(seed, e)`` only. Each ``iter(loader)`` uses the current epoch and moves on to the next, so
a plain ``for epoch ...: for xb, yb in loader:`` sees a new order every epoch; to resume a
run at epoch ``e`` call ``loader.set_epoch(e)`` (and ``loader.batches(e, start=k)`` to
resume in the middle of one).

Augmentation (``augment=Augment()``, random crop and flip) follows the same rule: the draws
of epoch ``e`` are a function of ``(seed, e)`` only, one set per position in the epoch's
order, so a resumed run, at an epoch boundary or mid-epoch, gets the very batches of an
uninterrupted one, and the batch size does not change them. It is applied after
normalisation (the padded border is 0 in normalised units; see data_loaders.augment).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator

import numpy as np

from minievo import backend as B

from .augment import Augment

#: The augmentation draws of an epoch come from a child of the shuffle's seed sequence
#: ``[seed, epoch]`` (spawn key, ASCII "aug"): a stream of its own, so turning augmentation
#: on leaves the order unchanged. (Not the entropy ``[seed, epoch, k]``: NumPy pads the
#: entropy with zeros, so ``[seed, epoch, 0]`` would be the shuffle's stream itself.)
_AUGMENT_STREAM = 0x617567


def _as_numpy_or_backend(a):
    return a if B.is_cupy_array(a) else np.asarray(a)


class DataLoader:
    """Iterate ``(x_batch, y_batch)`` over arrays ``x`` (N, ...) and labels ``y`` (N,).

    Args:
        x: the inputs. uint8 data is scaled by 1/255 to [0, 1]; uint8 (N, H, W) images get
            a channel axis, (N, 1, H, W).
        y: integer labels, yielded as int64.
        batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
        shuffle: a fresh seeded permutation each epoch; else the stored order.
        seed: the shuffling seed.
        drop_last: skip a final incomplete batch.
        normalize: None, or ``(mean, std)`` applied after scaling, ``(x - mean) / std``;
            each a number or one value per channel (axis 1).
        dtype: the float dtype of x batches.
        backend: 'numpy' or 'cupy' (None: the current default backend); the data is moved
            there once, and batches are built there.
        augment: None, or an :class:`~data_loaders.augment.Augment` applied to every batch
            after normalisation, seeded by ``(seed, epoch)``; needs image samples (C, H, W).
    """

    def __init__(self, x, y, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, normalize=None, dtype=np.float32,
                 backend: str | None = None, augment: Augment | None = None):
        x, y = _as_numpy_or_backend(x), _as_numpy_or_backend(y)
        if y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has shape {y.shape}; expected "
                             f"({len(x)},)")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if x.dtype == np.uint8 and x.ndim == 3:
            x = x[:, None]
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a float dtype, got {self.dtype}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got {y.dtype}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.normalize = normalize
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment must be None or an Augment, got {type(augment).__name__}")
        if augment is not None:
            augment.check_shape(tuple(x.shape[1:]))
        self.augment = augment
        self.epoch = 0
        self._scale, self._shift = self._affine(x, normalize)
        self._x_host, self._y_host = x, y
        self._label_range = None
        self._place(B.get_backend() if backend is None else backend)

    # -- setup --------------------------------------------------------------------------

    def _affine(self, x, normalize):
        """(scale, shift) with batch = stored * scale + shift, as numpy arrays or None."""
        scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
        if normalize is None:
            return (None if scale == 1.0 else np.asarray(scale, self.dtype)), None
        try:
            mean, std = normalize
        except (TypeError, ValueError):
            raise ValueError("normalize must be None or a (mean, std) pair") from None
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if np.any(std <= 0):
            raise ValueError(f"normalize std must be positive, got {std}")
        if mean.ndim > 1 or std.ndim > 1:
            raise ValueError("normalize mean and std must be numbers or 1-D sequences")
        if max(mean.size, std.size) > 1:  # per channel: broadcast along axis 1
            channels = x.shape[1] if x.ndim > 1 else 0
            for v in (mean, std):
                if v.size not in (1, channels):
                    raise ValueError(
                        f"normalize has {v.size} values but x has {channels} channels on axis 1"
                    )
            shape = (1, -1) + (1,) * (x.ndim - 2)
            mean, std = mean.reshape(shape), std.reshape(shape)
        return (scale / std).astype(self.dtype), (-mean / std).astype(self.dtype)

    def _place(self, name: str) -> None:
        xp = B.xp_for(name)  # raises BackendError for an unknown or unusable backend
        self.backend = "numpy" if xp is np else "cupy"
        self._xp = xp
        self._x = xp.ascontiguousarray(B.to_backend(self._x_host, self.backend))
        self._y = xp.ascontiguousarray(B.to_backend(self._y_host, self.backend)).astype(
            np.int64, copy=False)
        self._a = None if self._scale is None else B.to_backend(self._scale, self.backend)
        self._b = None if self._shift is None else B.to_backend(self._shift, self.backend)

    def to(self, backend: str) -> DataLoader:
        """A loader over the same data whose batches live on ``backend`` (same epoch)."""
        other = copy.copy(self)
        other._place(backend)
        return other

    # -- sizes and order ----------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return len(self._y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input sample as yielded, e.g. (1, 28, 28)."""
        return tuple(self._x.shape[1:])

    def fingerprint(self) -> str:
        """A sha256 of the samples, labels and how they are served (normalisation, dtype,
        augmentation): a resumed run checks that it is given the same data."""
        h = hashlib.sha256()
        for a in (self._x_host, self._y_host):
            a = B.to_numpy(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((self.normalize, np.dtype(self.dtype).str, self.augment)).encode())
        return h.hexdigest()

    def label_range(self) -> tuple[int, int]:
        """(smallest, largest) label, found once on the host: training checks the labels
        against the model's classes once per loader instead of once per batch (a device
        sync per batch on a GPU). (0, -1) when there are no samples."""
        if self._label_range is None:
            y = B.to_numpy(self._y_host)
            self._label_range = (int(y.min()), int(y.max())) if y.size else (0, -1)
        return self._label_range

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` produce epoch ``epoch``'s order."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (int64 indices, on the host); a function of
        ``(seed, epoch)`` only."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        rng = np.random.default_rng([self.seed, int(epoch)])
        return rng.permutation(self.num_samples).astype(np.int64)

    def augment_draws(self, epoch: int) -> np.ndarray | None:
        """The augmentation draws of ``epoch``: int64 (3, num_samples) on the host, column
        ``k`` for the k-th sample of the epoch's order (see ``Augment.draw``); a function of
        ``(seed, epoch)`` only. None without augmentation."""
        if self.augment is None:
            return None
        seq = np.random.SeedSequence([self.seed, int(epoch)], spawn_key=(_AUGMENT_STREAM,))
        return self.augment.draw(self.num_samples, np.random.default_rng(seq))

    # -- batches ------------------------------------------------------------------------

    def _make(self, sel, draws=None):
        xb = self._x[sel].astype(self.dtype)  # a fresh array: the gather, then one cast
        if self._a is not None:
            xb *= self._a
        if self._b is not None:
            xb += self._b
        if draws is not None:
            xb = self.augment.apply(xb, draws)
        return xb, self._y[sel]

    def batches(self, epoch: int | None = None, start: int = 0) -> Iterator[tuple]:
        """The batches of ``epoch`` (default: the current one) from batch index ``start`` on.

        Does not change ``self.epoch``.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        n, bs = self.num_samples, self.batch_size
        stop = len(self) * bs if self.drop_last else n
        order = draws = None
        if self.shuffle:
            order = self._xp.asarray(self.permutation(epoch))
        if self.augment is not None:  # one transfer per epoch, like the order
            draws = self._xp.asarray(self.augment_draws(epoch))
        for lo in range(int(start) * bs, stop, bs):
            hi = min(lo + bs, n)
            yield self._make(slice(lo, hi) if order is None else order[lo:hi],
                             None if draws is None else draws[:, lo:hi])

    def __iter__(self) -> Iterator[tuple]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def __repr__(self) -> str:
        return (f"DataLoader({self.num_samples} samples of {self.sample_shape}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_last={self.drop_last}, normalize={self.normalize}, "
                f"augment={self.augment}, backend={self.backend!r}, epoch={self.epoch})")


def split_train_val(x, y, val_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Carve a seeded random validation split out of a training set.

    Returns ``((x_train, y_train), (x_val, y_val))``, new arrays in which the samples keep
    their original relative order; ``round(len(x) * val_fraction)`` go to validation.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(x)
    n_val = int(round(n * val_fraction))
    perm = np.random.default_rng(seed).permutation(n)
    val = np.sort(perm[:n_val])
    train = np.sort(perm[n_val:])
    return (x[train], y[train]), (x[val], y[val])
