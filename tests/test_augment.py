"""Seeded augmentation: random crop with zero padding and horizontal flip, in the DataLoader."""

from __future__ import annotations

import numpy as np
import pytest

from data_loaders import Augment, DataLoader, random_crop, random_hflip
from data_loaders import augment as A
from minievo import backend as B
from minievo.experiment import make_loaders


def _images(n=6, shape=(3, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return x, (np.arange(n) % 10).astype(np.uint8)


def _crop_reference(x, dy, dx, flip):
    """Per pixel, straight from the definition: out[n, c, i, j] = x[n, c, i + dy, j + dx]
    (0 outside), then the flipped images mirrored."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for k in range(n):
        for i in range(h):
            for j in range(w):
                si, sj = i + dy[k], j + dx[k]
                if 0 <= si < h and 0 <= sj < w:
                    out[k, :, i, j] = x[k, :, si, sj]
        if flip[k]:
            out[k] = out[k, :, :, ::-1]
    return out


# -- the transform ------------------------------------------------------------------------


def test_crop_and_flip_of_a_fixed_draw_by_hand(xp):
    x = xp.asarray(np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3))
    aug = Augment(crop_padding=1)
    # shifted one row down and one column right: row 0 is x's row 1 behind a zero column
    out = aug.apply(x, np.array([[1], [-1], [0]]))
    np.testing.assert_array_equal(B.to_numpy(out)[0, 0], [[0, 4, 5], [0, 7, 8], [0, 0, 0]])
    out = aug.apply(x, np.array([[1], [-1], [1]]))  # the same crop, mirrored
    np.testing.assert_array_equal(B.to_numpy(out)[0, 0], [[5, 4, 0], [8, 7, 0], [0, 0, 0]])
    out = aug.apply(x, np.array([[-1], [1], [0]]))  # the other corner
    np.testing.assert_array_equal(B.to_numpy(out)[0, 0], [[0, 0, 0], [2, 3, 0], [5, 6, 0]])
    assert B.get_array_module(out) is xp and out.dtype == x.dtype


@pytest.mark.parametrize("padding, hflip", [(4, True), (2, False), (0, True), (3, True)])
def test_both_paths_match_the_reference(xp, padding, hflip):
    """The NumPy strided-window path and the gather path (CuPy's; run here on the test's
    backend) both equal the per-pixel definition, for every kind of draw."""
    x, _ = _images(12, (2, 7, 9), seed=padding)
    aug = Augment(crop_padding=padding, hflip=hflip)
    draws = aug.draw(12, np.random.default_rng(1))
    want = _crop_reference(x, *draws)
    got = aug.apply(xp.asarray(x), draws)
    np.testing.assert_array_equal(B.to_numpy(got), want)
    dev = xp.asarray(draws)
    gathered = A._crop_flip_gather(xp.asarray(x), dev[0], dev[1], dev[2], padding, xp)
    np.testing.assert_array_equal(B.to_numpy(gathered), want)
    windows = A._crop_flip_windows(x, draws[0], draws[1], draws[2], padding)
    np.testing.assert_array_equal(windows, want)
    assert windows.flags.c_contiguous


def test_input_untouched_and_empty_batch(xp):
    x = xp.asarray(np.random.default_rng(0).standard_normal((5, 3, 6, 6)).astype(np.float32))
    before = x.copy()
    out = Augment(crop_padding=2)(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(B.to_numpy(x), B.to_numpy(before))
    empty = Augment()(xp.zeros((0, 3, 8, 8), dtype=np.float32), np.random.default_rng(0))
    assert empty.shape == (0, 3, 8, 8)


def test_flip_mirrors_only_the_drawn_images(xp):
    x, _ = _images(16, (3, 5, 7), seed=2)
    rng = np.random.default_rng(4)
    flips = Augment(crop_padding=0).draw(16, np.random.default_rng(4))[2].astype(bool)
    assert 0 < flips.sum() < 16  # both kinds present, else the test would prove little
    out = B.to_numpy(random_hflip(xp.asarray(x), rng))
    np.testing.assert_array_equal(out[flips], x[flips][..., ::-1])
    np.testing.assert_array_equal(out[~flips], x[~flips])


def test_draws_and_crops_cover_the_offsets_evenly(xp):
    """Offsets read back from the cropped pixels cover -4..4 about uniformly, and about half
    of the images are flipped."""
    n, h, w = 4000, 16, 16
    ramp = 1 + np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)  # pixel value -> (i, j)
    x = xp.asarray(np.broadcast_to(ramp, (n, 1, h, w)))
    out = B.to_numpy(random_crop(x, 4, np.random.default_rng(5)))
    centre = out[:, 0, h // 2, w // 2].astype(np.int64) - 1
    dy, dx = centre // w - h // 2, centre % w - w // 2
    for offsets in (dy, dx):
        values, counts = np.unique(offsets, return_counts=True)
        assert values.tolist() == list(range(-4, 5))
        assert np.all(np.abs(counts / n - 1 / 9) < 0.025), counts  # about 5 sigma
    assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.07  # drawn independently

    flipped = B.to_numpy(random_hflip(x, np.random.default_rng(6)))
    is_flipped = flipped[:, 0, 0, 0] == ramp[0, 0, 0, -1]
    assert np.all(is_flipped | (flipped[:, 0, 0, 0] == ramp[0, 0, 0, 0]))
    assert abs(is_flipped.mean() - 0.5) < 0.04  # 5 sigma of a fair coin over 4000


def test_same_generator_same_result_numpy_and_cupy_agree(xp):
    x, _ = _images(9)
    xf = x.astype(np.float32)
    a = Augment()(xp.asarray(xf), np.random.default_rng(11))
    b = Augment()(xp.asarray(xf), np.random.default_rng(11))
    host = Augment()(xf, np.random.default_rng(11))
    np.testing.assert_array_equal(B.to_numpy(a), B.to_numpy(b))
    np.testing.assert_array_equal(B.to_numpy(a), host)  # bit-identical across backends
    c = Augment()(xp.asarray(xf), np.random.default_rng(12))
    assert not np.array_equal(B.to_numpy(a), B.to_numpy(c))


def test_switching_the_flip_off_keeps_the_crops():
    with_flip = Augment(3, True).draw(50, np.random.default_rng(0))
    without = Augment(3, False).draw(50, np.random.default_rng(0))
    np.testing.assert_array_equal(with_flip[:2], without[:2])
    assert not without[2].any() and with_flip[2].any()
    assert not Augment(0, True).draw(50, np.random.default_rng(0))[:2].any()


# -- in the loader ------------------------------------------------------------------------


def _epoch(loader, epoch=None, start=0):
    return [(B.to_numpy(xb), B.to_numpy(yb)) for xb, yb in loader.batches(epoch, start)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def _loader(x, y, **kw):
    kw = {"batch_size": 8, "seed": 3, "normalize": ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)),
          "augment": Augment(), **kw}
    return DataLoader(x, y, **kw)


def test_loader_batches_are_the_plain_batches_augmented_by_position(backend_name):
    """Batch k of epoch e is the un-augmented batch (same order, same labels) with columns
    lo:hi of augment_draws(e) applied, after normalisation."""
    x, y = _images(30, (3, 10, 10))
    aug, plain = _loader(x, y), _loader(x, y, augment=None)
    for epoch in (0, 1):
        draws = aug.augment_draws(epoch)
        assert draws.shape == (3, 30)
        lo = 0
        for (xa, ya), (xp_, yp) in zip(_epoch(aug, epoch), _epoch(plain, epoch), strict=True):
            np.testing.assert_array_equal(ya, yp)  # augmentation leaves the order alone
            want = Augment().apply(xp_, draws[:, lo:lo + len(ya)])
            np.testing.assert_array_equal(xa, want)
            lo += len(ya)


def test_padding_is_zero_after_normalisation(backend_name):
    """Black images normalise to (0 - mean) / std = -2; the padded border must read 0 (the
    mean colour), not -2 (black): augmentation comes after normalisation."""
    x = np.zeros((64, 1, 8, 8), dtype=np.uint8)
    loader = DataLoader(x, np.zeros(64, np.uint8), batch_size=64, shuffle=False,
                        normalize=(0.5, 0.25), augment=Augment(crop_padding=3, hflip=False))
    xb = B.to_numpy(next(iter(loader))[0])
    dy, dx, _ = loader.augment_draws(0)
    assert set(np.unique(xb).tolist()) == {-2.0, 0.0}
    for k in range(64):
        inside = np.zeros((8, 8), bool)
        inside[max(0, -dy[k]):8 - max(0, dy[k]), max(0, -dx[k]):8 - max(0, dx[k])] = True
        np.testing.assert_array_equal(xb[k, 0][inside], -2.0)
        np.testing.assert_array_equal(xb[k, 0][~inside], 0.0)


def test_same_seed_same_batches_other_seed_other_batches(backend_name):
    x, y = _images(20)
    a, b = _loader(x, y), _loader(x, y)
    for _ in range(2):
        _assert_same([(B.to_numpy(u), B.to_numpy(v)) for u, v in a],
                     [(B.to_numpy(u), B.to_numpy(v)) for u, v in b])
    c = _loader(x, y, seed=4, shuffle=False)
    d = _loader(x, y, seed=5, shuffle=False)  # the same order: only the draws differ
    assert not np.array_equal(_epoch(c, 0)[0][0], _epoch(d, 0)[0][0])


def test_epochs_draw_afresh(backend_name):
    x, y = _images(20)
    loader = _loader(x, y, shuffle=False)  # the same order each epoch
    e0, e1 = _epoch(loader, 0), _epoch(loader, 1)
    np.testing.assert_array_equal(e0[0][1], e1[0][1])
    assert not np.array_equal(e0[0][0], e1[0][0])
    assert not np.array_equal(loader.augment_draws(0), loader.augment_draws(1))


def test_resume_gives_the_uninterrupted_batches(backend_name):
    """A fresh loader set to epoch 2 repeats the epoch-2 batches of one that went through
    epochs 0 and 1, from the start or from the middle of the epoch (as training.fit resumes,
    with batches(epoch, start=k)); the batch size does not change the augmented samples."""
    x, y = _images(30)
    run = _loader(x, y)
    for _ in range(2):
        for _batch in run:
            pass
    uninterrupted = [(B.to_numpy(u), B.to_numpy(v)) for u, v in run]
    assert run.epoch == 3

    resumed = _loader(x, y)
    resumed.set_epoch(2)
    _assert_same([(B.to_numpy(u), B.to_numpy(v)) for u, v in resumed], uninterrupted)
    _assert_same(_epoch(_loader(x, y), 2, start=2), uninterrupted[2:])

    other = _epoch(_loader(x, y, batch_size=7), 2)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in other]),
                                  np.concatenate([b[0] for b in uninterrupted]))


def test_to_keeps_the_augmentation(backend_name):
    x, y = _images(12)
    host = _loader(x, y, backend="numpy")
    moved = host.to(backend_name)
    assert moved.augment == host.augment
    for (xa, _), (xm, _) in zip(_epoch(host, 1), _epoch(moved, 1), strict=True):
        np.testing.assert_allclose(xm, xa, rtol=1e-6)  # normalisation on another device
        np.testing.assert_array_equal(xm == 0, xa == 0)


def test_make_loaders_augments_the_training_loader_only():
    train, val, test = make_loaders("synthetic-digits", 16, seed=1, limit_train=60,
                                    limit_test=20, val_fraction=0.25, augment=True)
    assert train.augment == Augment() and val.augment is None and test.augment is None
    plain_train, plain_val, plain_test = make_loaders("synthetic-digits", 16, seed=1,
                                                      limit_train=60, limit_test=20,
                                                      val_fraction=0.25)
    assert plain_train.augment is None
    for loader, plain in ((val, plain_val), (test, plain_test)):
        _assert_same(_epoch(loader, 3), _epoch(plain, 0))  # no epoch-dependent change
    augmented, unaugmented = _epoch(train, 0), _epoch(plain_train, 0)
    np.testing.assert_array_equal(augmented[0][1], unaugmented[0][1])
    assert not np.array_equal(augmented[0][0], unaugmented[0][0])


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"crop_padding": -1}, ValueError, "crop_padding must be non-negative, got -1"),
        ({"crop_padding": 2.5}, TypeError, "crop_padding must be an int"),
        ({"crop_padding": True}, TypeError, "crop_padding must be an int"),
        ({"hflip": 1}, TypeError, "hflip must be a bool"),
    ],
)
def test_bad_augment_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Augment(**kwargs)


def test_bad_transform_input(xp):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"needs a batch of images \(N, C, H, W\), got shape"):
        random_crop(xp.zeros((2, 8, 8)), 2, rng)
    with pytest.raises(ValueError, match="needs a batch of images"):
        random_hflip(xp.zeros((8, 8)), rng)
    with pytest.raises(ValueError, match="crop_padding 8 must be smaller than the image size"):
        random_crop(xp.zeros((2, 1, 8, 16)), 8, rng)
    with pytest.raises(ValueError, match="crop_padding must be non-negative"):
        random_crop(xp.zeros((2, 1, 8, 8)), -1, rng)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        random_crop(xp.zeros((2, 1, 8, 8)), 2, 0)
    with pytest.raises(ValueError, match=r"draws must have shape \(3, 2\)"):
        Augment().apply(xp.zeros((2, 1, 8, 8)), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"draws out of range"):
        Augment(crop_padding=1).apply(xp.zeros((1, 1, 8, 8)), np.array([[2], [0], [0]]))
    with pytest.raises(ValueError, match=r"draws out of range"):
        Augment(hflip=False).apply(xp.zeros((1, 1, 8, 8)), np.array([[0], [0], [1]]))


def test_bad_loader_augment():
    x, y = _images(4, (1, 8, 8))
    with pytest.raises(TypeError, match="augment must be None or an Augment"):
        DataLoader(x, y, augment=True, backend="numpy")
    with pytest.raises(ValueError, match="crop_padding 8 must be smaller"):
        DataLoader(x, y, augment=Augment(crop_padding=8), backend="numpy")
    with pytest.raises(ValueError, match=r"image samples \(C, H, W\), got sample shape \(5,\)"):
        DataLoader(np.zeros((4, 5), np.float32), y, augment=Augment(), backend="numpy")
    # MNIST-style uint8 (N, H, W) gets its channel axis first, so it can be augmented
    loader = DataLoader(np.zeros((4, 28, 28), np.uint8), y, augment=Augment(),
                        backend="numpy")
    assert next(iter(loader))[0].shape == (4, 1, 28, 28)
    assert "augment=Augment(crop_padding=4, hflip=True)" in repr(loader)
