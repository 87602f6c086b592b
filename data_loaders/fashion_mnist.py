"""Fashion-MNIST: 70,000 28x28 grayscale images of clothing in 10 classes, MNIST's layout.

Sources, in order: the user's own files (``data_dir``), the Debian package
``dataset-fashion-mnist`` (an installed copy under /usr/share/datasets/fashion-mnist, else
``apt-get download`` of the pinned version, read in place without installing), then the web
mirrors. Verified and cached like MNIST, under ``$MINIEVO_DATA/fashion-mnist/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .sources import (
    DebianSource,
    IdxSet,
    LocalDirSource,
    MirrorSource,
    PackageFile,
    Source,
    fill_cache,
    load_idx_set,
    stderr_log,
)

# sha256 of each decoded array's raw bytes, computed once from the Debian package below.
FASHION_MNIST_DIGESTS = {
    "train-images-idx3-ubyte":
        "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "train-labels-idx1-ubyte":
        "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "t10k-images-idx3-ubyte":
        "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "t10k-labels-idx1-ubyte":
        "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}

FASHION_MNIST = IdxSet(name="fashion-mnist", title="Fashion-MNIST",
                       counts={"train": 60000, "test": 10000}, digests=FASHION_MNIST_DIGESTS)

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

FASHION_MNIST_DEB = PackageFile(
    spec="dataset-fashion-mnist=0.0~git20200523.55506a9-1",
    filename="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
    sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
)
FASHION_MNIST_DEB_FOLDER = "usr/share/datasets/fashion-mnist"
DEBIAN_ROOT = "/"  # where an installed copy of the package would live

FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)


def fashion_mnist_sources(data_dir=None) -> list[Source]:
    """The chain: the user's folder (if given), the Debian package, the web mirrors."""
    chain: list[Source] = [LocalDirSource(data_dir)] if data_dir is not None else []
    chain.append(DebianSource(FASHION_MNIST_DEB, FASHION_MNIST_DEB_FOLDER, DEBIAN_ROOT))
    chain.append(MirrorSource(FASHION_MNIST_MIRRORS))
    return chain


def load_fashion_mnist(split: str = "train", data_dir=None, cache_dir=None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` as (images uint8 (N, 28, 28), labels uint8 (N,)).

    Raises:
        DataError: no source gave verified data; the message lists what each source said.
    """
    return load_idx_set(FASHION_MNIST, split, fashion_mnist_sources(), data_dir=data_dir,
                        cache_dir=cache_dir, log=stderr_log)


def fetch_fashion_mnist(data_dir=None, cache_dir=None, log=print) -> Path:
    """Fill the cache with verified Fashion-MNIST files; print one line per source tried."""
    return fill_cache(FASHION_MNIST, fashion_mnist_sources(data_dir), cache_dir, log=log)
