"""Synthetic sets and the data set registry."""

from __future__ import annotations

import numpy as np
import pytest

from data_loaders import (
    DATASETS,
    load_dataset,
    make_blobs,
    make_digits_like,
    make_spirals,
)
from data_loaders.__main__ import main as cli_main


@pytest.mark.parametrize("make", [make_blobs, make_spirals])
def test_points_sets(make):
    x, y = make(n=90, n_classes=3, seed=4)
    assert x.shape == (90, 2) and x.dtype == np.float32
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [30, 30, 30]
    x2, y2 = make(n=90, n_classes=3, seed=4)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = make(n=90, n_classes=3, seed=5)
    assert not np.array_equal(x, x3)


def test_blobs_dimension_and_separation():
    x, y = make_blobs(n=300, n_classes=4, dim=5, seed=0, spread=0.5)
    assert x.shape == (300, 5)
    centres = np.stack([x[y == k].mean(0) for k in range(4)])
    pred = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (pred == y).mean() > 0.95


def test_digits_like_shapes_and_determinism():
    x, y = make_digits_like(50, seed=0)
    assert x.shape == (50, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (50,) and y.dtype == np.uint8 and np.bincount(y).tolist() == [5] * 10
    x2, y2 = make_digits_like(50, seed=0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    small, _ = make_digits_like(4, seed=0, size=16, n_classes=4)
    assert small.shape == (4, 1, 16, 16)


def test_digits_like_is_learnable():
    """Class means already separate the classes well; a convnet does far better."""
    x, y = make_digits_like(2000, seed=0)
    xt, yt = make_digits_like(500, seed=1)
    f = x.reshape(len(x), -1).astype(np.float32) / 255
    ft = xt.reshape(len(xt), -1).astype(np.float32) / 255
    centres = np.stack([f[y == k].mean(0) for k in range(10)])
    centres -= centres.mean(1, keepdims=True)
    pred = np.argmax(ft @ centres.T, axis=1)
    assert (pred == yt).mean() > 0.5


def test_registry_and_load_dataset_synthetic():
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10", "synthetic-digits"}
    info = DATASETS["mnist"]
    assert info.shape == (1, 28, 28) and info.n_classes == 10
    assert info.normalize == ((0.1307,), (0.3081,))
    assert DATASETS["cifar10"].shape == (3, 32, 32) and len(DATASETS["cifar10"].mean) == 3
    x, y = load_dataset("synthetic-digits", "test", n=30)
    assert x.shape == (30, 1, 28, 28)
    xs, _ = load_dataset("digits", "train", n=30)
    assert not np.array_equal(x, xs)  # the split picks the seed
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("mnist", "valid")


def test_synthetic_stats_match_registry():
    x, _ = make_digits_like(2000, seed=0)
    f = x / 255.0
    info = DATASETS["synthetic-digits"]
    assert abs(f.mean() - info.mean[0]) < 0.01 and abs(f.std() - info.std[0]) < 0.01


def test_cli_info(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIEVO_DATA", str(tmp_path))
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {tmp_path}" in out and "fashion-mnist" in out
    assert cli_main(["fetch", "synthetic-digits"]) == 0
    assert cli_main(["fetch", "nope"]) == 1
