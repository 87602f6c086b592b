"""Data sets for minievo: readers, verified sources with a cache, synthetic sets, a loader.

    from data_loaders import load_dataset, DataLoader, DATASETS
    x, y = load_dataset("mnist", "train")            # uint8 (60000, 28, 28), uint8 (60000,)
    info = DATASETS["mnist"]
    loader = DataLoader(x, y, batch_size=64, normalize=info.normalize)
    for xb, yb in loader:                            # float32 (64, 1, 28, 28), int64 (64,)
        ...

``DataLoader(..., augment=Augment())`` adds seeded random crops and flips (CIFAR-style).

Real data sets are cached under ``$MINIEVO_DATA`` (default ``~/.cache/minievo``);
``python -m data_loaders fetch mnist`` fills the cache ahead of time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .augment import Augment, random_crop, random_hflip
from .cifar import CIFAR10_CLASSES, fetch_cifar10, load_cifar10
from .errors import DataError
from .fashion_mnist import FASHION_MNIST_CLASSES, fetch_fashion_mnist, load_fashion_mnist
from .files import cache_root
from .idx import read_idx, read_idx_bytes, write_idx
from .loader import DataLoader, split_train_val
from .mnist import fetch_mnist, load_mnist
from .synthetic import make_blobs, make_digits_like, make_spirals

__all__ = [
    "DATASETS", "Augment", "DataError", "DataLoader", "DatasetInfo", "cache_root",
    "fetch_cifar10", "fetch_dataset", "fetch_fashion_mnist", "fetch_mnist", "load_cifar10",
    "load_dataset", "load_fashion_mnist", "load_mnist", "make_blobs", "make_digits_like",
    "make_spirals", "random_crop", "random_hflip", "read_idx", "read_idx_bytes",
    "split_train_val", "write_idx",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set.

    ``shape`` is one sample as :class:`DataLoader` yields it (C, H, W); ``mean``/``std`` are
    per channel, of pixels scaled to [0, 1] (over the training set).
    """

    name: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_train: int
    n_test: int

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def normalize(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``, ready for ``DataLoader(normalize=...)``."""
        return self.mean, self.std


_DIGITS = tuple(str(i) for i in range(10))
_ORIENTATIONS = tuple(f"{18 * i} deg" for i in range(10))

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), _DIGITS, (0.1307,), (0.3081,), 60000, 10000),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), FASHION_MNIST_CLASSES,
                                 (0.2860,), (0.3530,), 60000, 10000),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), CIFAR10_CLASSES,
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50000, 10000),
    "synthetic-digits": DatasetInfo("synthetic-digits", (1, 28, 28), _ORIENTATIONS,
                                    (0.1128,), (0.2042,), 10000, 2000),
}

_ALIASES = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "digits": "synthetic-digits"}


def dataset_name(name: str) -> str:
    """The canonical name of a data set ('Fashion_MNIST' -> 'fashion-mnist')."""
    key = str(name).lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return key


def load_dataset(name: str, split: str = "train", data_dir=None, cache_dir=None,
                 n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) NumPy arrays of a data set split ('train' or 'test').

    x is uint8: (N, 28, 28) for MNIST and Fashion-MNIST, (N, 3, 32, 32) for CIFAR-10,
    (N, 1, 28, 28) for synthetic-digits; y is uint8 (N,). ``n`` keeps the first n samples
    (for synthetic-digits it is the number generated; its split picks the seed).

    Raises:
        DataError: the data could not be found, fetched or verified.
    """
    key = dataset_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits are: train, test")
    if key == "synthetic-digits":
        info = DATASETS[key]
        count = n if n is not None else (info.n_train if split == "train" else info.n_test)
        return make_digits_like(count, seed=0 if split == "train" else 1)
    loader = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist,
              "cifar10": load_cifar10}[key]
    x, y = loader(split, data_dir=data_dir, cache_dir=cache_dir)
    if n is not None:
        x, y = x[:n].copy(), y[:n].copy()
    return x, y


def fetch_dataset(name: str, data_dir=None, cache_dir=None, log=print):
    """Fill the cache for a data set; prints one line per source tried. Returns the path."""
    key = dataset_name(name)
    if key == "synthetic-digits":
        log("synthetic-digits: generated on the fly, nothing to fetch")
        return None
    fetch = {"mnist": fetch_mnist, "fashion-mnist": fetch_fashion_mnist,
             "cifar10": fetch_cifar10}[key]
    return fetch(data_dir=data_dir, cache_dir=cache_dir, log=log)
