"""Fashion-MNIST (Debian package source) and CIFAR-10 (python batches), on tiny fakes."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from data_loaders import (
    DataError,
    cifar,
    fashion_mnist,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    sources,
)
from data_loaders.files import array_sha256, sha256_file
from data_loaders.idx import idx_bytes
from data_loaders.sources import IdxSet, PackageFile, read_deb_members
from data_loaders.testing import py2_pickle, tiny_idx_set, write_cifar_batches, write_deb

COUNTS = {"train": 5, "test": 3}
FOLDER = "usr/share/datasets/fashion-mnist"
_real_download = sources.download_url  # captured at import, before any monkeypatching


def _offline(what):
    def fail(*args, **kwargs):
        raise DataError(f"{what}: offline in tests")
    return fail


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "pip_download", _offline("pip"))
    monkeypatch.setattr(sources, "download_url", _offline("web"))
    monkeypatch.setattr(sources, "apt_download", _offline("apt"))
    monkeypatch.setenv("MINIEVO_DATA", str(tmp_path / "cache"))


# -- Fashion-MNIST --------------------------------------------------------------------------

@pytest.fixture
def fashion(offline, monkeypatch, tmp_path):
    arrays = tiny_idx_set(COUNTS, seed=5)
    spec = IdxSet(name="fashion-mnist", title="Fashion-MNIST", counts=COUNTS,
                  digests={s: array_sha256(a) for s, a in arrays.items()})
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST", spec)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", str(tmp_path / "root"))  # not installed
    return arrays


@pytest.fixture
def fake_apt(fashion, monkeypatch, tmp_path):
    """A fake .deb like dataset-fashion-mnist's, served by a fake ``apt-get download``."""
    files = {f"{FOLDER}/{stem}.gz": gzip.compress(idx_bytes(a))
             for stem, a in fashion.items()}
    files["usr/share/doc/dataset-fashion-mnist/copyright"] = b"MIT"
    deb = write_deb(tmp_path / fashion_mnist.FASHION_MNIST_DEB.filename, files)
    calls = []

    def apt_download(spec, dest):
        calls.append(spec)
        return shutil.copy(deb, dest / deb.name)

    monkeypatch.setattr(sources, "apt_download", apt_download)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DEB",
                        PackageFile(fashion_mnist.FASHION_MNIST_DEB.spec, deb.name,
                                    sha256_file(deb)))
    return calls


def _check(got, arrays, split):
    img, lab = sources.STANDARD_FILES[split]
    np.testing.assert_array_equal(got[0], arrays[img])
    np.testing.assert_array_equal(got[1], arrays[lab])
    assert got[0].dtype == np.uint8 and got[1].dtype == np.uint8


def test_fashion_from_debian_package(fashion, fake_apt, tmp_path):
    lines = []
    fashion_mnist.fetch_fashion_mnist(log=lines.append)
    assert fake_apt == ["dataset-fashion-mnist=0.0~git20200523.55506a9-1"]
    assert "debian package dataset-fashion-mnist=" in lines[0] and "ok, 4 file(s)" in lines[0]
    assert sorted(os.listdir(tmp_path / "cache" / "fashion-mnist")) == sorted(
        s + ".gz" for s in fashion)
    for split in ("train", "test"):
        _check(load_fashion_mnist(split), fashion, split)
    _check(load_dataset("Fashion_MNIST", "test"), fashion, "test")
    assert len(fake_apt) == 1


def test_fashion_deb_checksum_mismatch(fashion, fake_apt, monkeypatch, tmp_path):
    deb = fashion_mnist.FASHION_MNIST_DEB
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DEB",
                        PackageFile(deb.spec, deb.filename, "f" * 64))
    with pytest.raises(DataError) as err:
        fashion_mnist.fetch_fashion_mnist(log=lambda m: None)
    msg = str(err.value)
    assert f"{deb.filename}: sha256 mismatch: expected {'f' * 64}, got {deb.sha256}" in msg
    assert "web mirrors: web: offline in tests" in msg
    assert not (tmp_path / "cache" / "fashion-mnist").exists() or \
        os.listdir(tmp_path / "cache" / "fashion-mnist") == []


def test_fashion_installed_copy_is_used_without_apt(fashion, monkeypatch, tmp_path):
    installed = tmp_path / "root" / FOLDER
    for stem, a in fashion.items():
        (installed / (stem + ".gz")).parent.mkdir(parents=True, exist_ok=True)
        (installed / (stem + ".gz")).write_bytes(gzip.compress(idx_bytes(a)))
    _check(load_fashion_mnist("train"), fashion, "train")


def test_fashion_data_dir(fashion, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    for stem, a in fashion.items():
        (d / stem).write_bytes(idx_bytes(a))
    _check(load_fashion_mnist("test", data_dir=d), fashion, "test")


def test_read_deb_members(tmp_path):
    deb = write_deb(tmp_path / "p.deb", {"usr/share/a/x.bin": b"hello", "usr/b": b"no"},
                    compression="gz")
    assert read_deb_members(deb, {"usr/share/a/x.bin": "x"}) == {"x": b"hello"}
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04 not a deb")
    with pytest.raises(DataError, match="bad.deb: not a Debian package"):
        read_deb_members(tmp_path / "bad.deb", {})
    (tmp_path / "cut.deb").write_bytes(deb.read_bytes()[:-40])
    with pytest.raises(DataError, match="cut.deb: truncated data.tar.gz"):
        read_deb_members(tmp_path / "cut.deb", {})


def test_fashion_real_constants():
    assert fashion_mnist.FASHION_MNIST.counts == {"train": 60000, "test": 10000}
    assert len(fashion_mnist.FASHION_MNIST_DIGESTS) == 4
    assert fashion_mnist.FASHION_MNIST_DEB.sha256 == (
        "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0")


# -- CIFAR-10 -------------------------------------------------------------------------------

@pytest.fixture
def tiny_cifar(offline, monkeypatch, tmp_path):
    """Batches of 2 (train, 5 batches) and 3 (test) images in tmp/src/cifar-10-batches-py."""
    monkeypatch.setattr(cifar, "CIFAR10_COUNTS", {"train": 10, "test": 3})
    expected = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    return expected


def _tarball(tmp_path, name="cifar-10-python.tar.gz", reverse=False):
    src = tmp_path / "src" / "cifar-10-batches-py"
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(src.iterdir(), reverse=reverse):
            tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
    return path


def _check_cifar(got, expected):
    x, y = got
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32)
    assert y.dtype == np.uint8 and y.shape == (len(x),)
    np.testing.assert_array_equal(x, expected[0])
    np.testing.assert_array_equal(y, expected[1])


@pytest.mark.parametrize("where", ["folder", "parent"])
def test_cifar_from_local_folder(tiny_cifar, tmp_path, where):
    d = tmp_path / "src" / ("cifar-10-batches-py" if where == "folder" else "")
    for split in ("train", "test"):
        _check_cifar(load_cifar10(split, data_dir=d), tiny_cifar[split])
    assert not (tmp_path / "cache").exists()


def test_cifar_from_tarball_in_any_member_order(tiny_cifar, tmp_path):
    tar = _tarball(tmp_path, name="my-copy.tgz", reverse=True)  # not the official name
    _check_cifar(load_cifar10("train", data_dir=tar), tiny_cifar["train"])
    _check_cifar(load_dataset("cifar-10", "test", data_dir=tar), tiny_cifar["test"])


def test_cifar_official_name_must_match_sha(tiny_cifar, tmp_path):
    tar = _tarball(tmp_path)
    with pytest.raises(DataError) as err:
        load_cifar10("test", data_dir=tmp_path)
    msg = str(err.value)
    assert f"expected {cifar.CIFAR10_SHA256}, got {sha256_file(tar)}" in msg
    assert "web: offline in tests" in msg


def test_cifar_fetch_from_web_verifies_and_caches(tiny_cifar, monkeypatch, tmp_path):
    tar = _tarball(tmp_path)
    monkeypatch.setattr(sources, "download_url", _real_download)  # file:// URLs only
    monkeypatch.setattr(cifar, "CIFAR10_URLS", ((tmp_path / "missing.tgz").as_uri(),
                                                tar.as_uri()))
    monkeypatch.setattr(cifar, "CIFAR10_SHA256", sha256_file(tar))
    lines = []
    path = cifar.fetch_cifar10(log=lines.append)
    assert path == tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz"
    assert "failed" in lines[0] and "ok, verified and cached" in lines[1]
    _check_cifar(load_cifar10("train"), tiny_cifar["train"])
    # a corrupted cache is noticed on load, removed and fetched again
    path.write_bytes(b"junk")
    _check_cifar(load_cifar10("test"), tiny_cifar["test"])


def test_cifar_web_checksum_mismatch_leaves_nothing(tiny_cifar, monkeypatch, tmp_path):
    tar = _tarball(tmp_path)
    monkeypatch.setattr(sources, "download_url", _real_download)  # file:// URLs only
    monkeypatch.setattr(cifar, "CIFAR10_URLS", (tar.as_uri(),))
    with pytest.raises(DataError, match=f"sha256 mismatch: expected {cifar.CIFAR10_SHA256}"):
        load_cifar10("train")
    assert os.listdir(tmp_path / "cache" / "cifar10") == []


@pytest.mark.parametrize(
    "batch, pattern",
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}, "labels outside 0..9"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [1, 2]}, r"shape \(n, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, "uint8 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "must be 2 ints"),
        ([1, 2], "expected a dict"),
    ],
)
def test_cifar_bad_batches(tmp_path, batch, pattern):
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_pickle(batch))
    with open(path, "rb") as f, pytest.raises(DataError, match=pattern):
        cifar.read_cifar_batch(f, str(path))


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_malicious_batch(tiny_cifar, tmp_path):
    (tmp_path / "src" / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(DataError, match="test_batch: cannot unpickle: .*refusing"):
        cifar.read_cifar_local(tmp_path / "src", "test")


def test_cifar_missing_batch_and_wrong_count(tiny_cifar, monkeypatch, tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        cifar.read_cifar_local(folder, "train")
    monkeypatch.setattr(cifar, "CIFAR10_COUNTS", {"train": 10, "test": 4})
    with pytest.raises(DataError, match="hold 3 images, expected 4"):
        cifar.read_cifar_local(folder, "test")


def test_cifar_nothing_local(tiny_cifar, tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 here"):
        cifar.read_cifar_local(tmp_path / "cache", "train")
