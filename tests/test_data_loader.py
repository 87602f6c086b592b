"""DataLoader: batching, seeded resumable shuffling, scaling and normalisation, backends."""

from __future__ import annotations

import numpy as np
import pytest

from data_loaders import DATASETS, DataLoader, split_train_val
from minievo import backend as B


def _data(n=10, shape=(28, 28), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    return x, y


def _host(a):
    return B.to_numpy(a)


def test_batches_shapes_dtypes_and_channel_axis():
    x, y = _data(10)
    loader = DataLoader(x, y, batch_size=4, shuffle=False, backend="numpy")
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    assert [b[0].shape for b in batches] == [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)]
    xb, yb = batches[0]
    assert xb.dtype == np.float32 and yb.dtype == np.int64
    np.testing.assert_allclose(xb[:, 0], x[:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(yb, y[:4])
    assert loader.sample_shape == (1, 28, 28) and loader.num_samples == 10


def test_drop_last():
    x, y = _data(10)
    loader = DataLoader(x, y, batch_size=4, drop_last=True, backend="numpy")
    sizes = [len(b[1]) for b in loader]
    assert len(loader) == 2 and sizes == [4, 4]
    assert len(DataLoader(x, y, batch_size=5, drop_last=True, backend="numpy")) == 2
    assert len(DataLoader(x, y, batch_size=11, drop_last=True, backend="numpy")) == 0
    assert len(DataLoader(x, y, batch_size=11, backend="numpy")) == 1


def test_shuffle_covers_every_sample_once_per_epoch():
    x, y = _data(23)
    y = np.arange(23, dtype=np.int64)
    loader = DataLoader(x, y, batch_size=5, seed=3, backend="numpy")
    for _ in range(3):
        seen = np.concatenate([yb for _, yb in loader])
        assert sorted(seen.tolist()) == list(range(23))
        assert seen.tolist() != list(range(23))  # shuffled


def test_batches_match_their_labels_after_shuffling():
    x, _ = _data(30)
    y = np.arange(30)
    loader = DataLoader(x, y, batch_size=7, seed=1, backend="numpy")
    for xb, yb in loader:
        np.testing.assert_allclose(xb[:, 0], x[yb] / 255.0, rtol=1e-6)


def _orders(loader, epochs):
    return [np.concatenate([yb for _, yb in loader]).tolist() for _ in range(epochs)]


def test_shuffling_depends_only_on_seed_and_epoch():
    x, _ = _data(50)
    y = np.arange(50)
    a = _orders(DataLoader(x, y, batch_size=8, seed=7, backend="numpy"), 3)
    b = _orders(DataLoader(x, y, batch_size=8, seed=7, backend="numpy"), 3)
    assert a == b  # reproducible
    assert a[0] != a[1] != a[2]  # a new order every epoch
    c = _orders(DataLoader(x, y, batch_size=8, seed=8, backend="numpy"), 1)
    assert c[0] != a[0]  # the seed matters
    # the batch size does not change the order
    d = _orders(DataLoader(x, y, batch_size=13, seed=7, backend="numpy"), 3)
    assert d == a


def test_set_epoch_resumes():
    x, _ = _data(40)
    y = np.arange(40)
    run = DataLoader(x, y, batch_size=6, seed=2, backend="numpy")
    orders = _orders(run, 4)
    resumed = DataLoader(x, y, batch_size=6, seed=2, backend="numpy")
    resumed.set_epoch(2)
    assert _orders(resumed, 2) == orders[2:]
    assert resumed.epoch == 4
    # resume in the middle of an epoch: skip the batches already done
    rest = [yb.tolist() for _, yb in resumed.batches(epoch=1, start=3)]
    full = [yb.tolist() for _, yb in resumed.batches(epoch=1)]
    assert rest == full[3:] and resumed.epoch == 4
    np.testing.assert_array_equal(resumed.permutation(1), orders[1])
    with pytest.raises(ValueError):
        resumed.set_epoch(-1)


def test_no_shuffle_keeps_order_every_epoch():
    x, _ = _data(9)
    y = np.arange(9)
    loader = DataLoader(x, y, batch_size=4, shuffle=False, backend="numpy")
    assert _orders(loader, 2) == [list(range(9))] * 2


def test_normalisation_scalar_and_per_channel():
    x, y = _data(6)
    mean, std = DATASETS["mnist"].normalize
    xb, _ = next(iter(DataLoader(x, y, batch_size=6, shuffle=False, normalize=(mean, std),
                                 backend="numpy")))
    np.testing.assert_allclose(xb[:, 0], (x / 255.0 - mean[0]) / std[0], rtol=1e-5, atol=1e-6)

    rgb = np.random.default_rng(1).integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    m, s = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    xb, _ = next(iter(DataLoader(rgb, np.zeros(4, int), batch_size=4, shuffle=False,
                                 normalize=(m, s), backend="numpy")))
    want = (rgb / 255.0 - np.array(m)[None, :, None, None]) / np.array(s)[None, :, None, None]
    np.testing.assert_allclose(xb, want, rtol=1e-5, atol=1e-5)


def test_float_inputs_are_not_rescaled():
    x = np.linspace(-1, 1, 12, dtype=np.float64).reshape(6, 2)
    y = np.arange(6)
    xb, yb = next(iter(DataLoader(x, y, batch_size=6, shuffle=False, backend="numpy")))
    assert xb.dtype == np.float32 and xb.shape == (6, 2)
    np.testing.assert_allclose(xb, x, rtol=1e-6)
    xb, _ = next(iter(DataLoader(x, y, batch_size=6, shuffle=False, normalize=(0.5, 2.0),
                                 dtype=np.float64, backend="numpy")))
    assert xb.dtype == np.float64
    np.testing.assert_allclose(xb, (x - 0.5) / 2.0)


def test_batches_are_fresh_arrays():
    x, y = _data(4)
    loader = DataLoader(x, y, batch_size=4, shuffle=False, backend="numpy")
    xb, _ = next(iter(loader))
    xb[...] = 0  # the caller may write into a batch without touching the data set
    xb2, _ = next(iter(loader))
    assert xb2.max() > 0


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"normalize": (0.1,)}, "normalize must be"),
        ({"normalize": (0.1, 0.0)}, "std must be positive"),
        ({"normalize": ((0.1, 0.2), (1, 1))}, "2 values but x has 1 channels"),
        ({"dtype": np.int32}, "float dtype"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    x, y = _data(4)
    with pytest.raises(ValueError, match=pattern):
        DataLoader(x, y, backend="numpy", **kwargs)


def test_length_mismatch():
    x, y = _data(4)
    with pytest.raises(ValueError, match="x has 4 samples"):
        DataLoader(x, y[:3], backend="numpy")


def test_default_backend_and_to(backend_name):
    """Batches live on the loader's backend; .to() moves a copy, same data and epoch."""
    xp = B.xp_for(backend_name)
    x, y = _data(10)
    loader = DataLoader(x, y, batch_size=4, seed=5, normalize=((0.5,), (0.25,)))
    assert loader.backend == backend_name  # None means the current default backend
    xb, yb = next(iter(loader))
    assert B.get_array_module(xb) is xp and B.get_array_module(yb) is xp
    assert xb.dtype == np.float32 and yb.dtype == np.int64

    host = DataLoader(x, y, batch_size=4, seed=5, normalize=((0.5,), (0.25,)),
                      backend="numpy")
    host.set_epoch(1)
    moved = host.to(backend_name)
    assert moved.backend == backend_name and moved.epoch == 1 and host.backend == "numpy"
    for (xa, ya), (xm, ym) in zip(host.batches(1), moved.batches(1), strict=True):
        assert B.get_array_module(xm) is xp
        np.testing.assert_allclose(_host(xm), xa, rtol=1e-6)
        np.testing.assert_array_equal(_host(ym), ya)
    back = moved.to("numpy")
    assert isinstance(next(iter(back))[0], np.ndarray)


def test_loader_accepts_backend_arrays(backend_name):
    xp = B.xp_for(backend_name)
    x, y = _data(8)
    loader = DataLoader(xp.asarray(x), xp.asarray(y), batch_size=8, shuffle=False,
                        backend="numpy")
    xb, yb = next(iter(loader))
    assert isinstance(xb, np.ndarray)
    np.testing.assert_allclose(xb[:, 0], x / 255.0, rtol=1e-6)


def test_split_train_val():
    x = np.arange(100).reshape(100, 1)
    y = np.arange(100)
    (xt, yt), (xv, yv) = split_train_val(x, y, 0.2, seed=0)
    assert len(xv) == 20 and len(xt) == 80
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(100))
    assert set(yt.tolist()).isdisjoint(yv.tolist())
    assert (np.diff(yt) > 0).all() and (np.diff(yv) > 0).all()  # original order kept
    np.testing.assert_array_equal(xt[:, 0], yt)
    (_, yt2), (_, yv2) = split_train_val(x, y, 0.2, seed=0)
    np.testing.assert_array_equal(yv, yv2)
    (_, _), (_, yv3) = split_train_val(x, y, 0.2, seed=1)
    assert yv3.tolist() != yv.tolist()
    (_, yt0), (_, yv0) = split_train_val(x, y, 0.0)
    assert len(yv0) == 0 and len(yt0) == 100
    with pytest.raises(ValueError):
        split_train_val(x, y, 1.0)
