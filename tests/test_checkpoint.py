"""Atomic .npz checkpoints: round trip, corrupt files, and failures in the middle of a write."""

from __future__ import annotations

import os

import numpy as np
import pytest

from minievo import backend
from minievo import checkpoint as ckpt


def _arrays(xp):
    return {
        "0.weight": xp.arange(12, dtype=xp.float32).reshape(3, 4) / 7,
        "0.mask": xp.asarray([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=xp.float32),
        "steps": xp.asarray(5, dtype=xp.int64),
    }


def _leftovers(folder):
    """Files in ``folder`` other than the checkpoints themselves (temp files)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".npz")


def test_round_trip_keeps_arrays_dtypes_and_meta(tmp_path, xp):
    arrays = _arrays(xp)
    meta = {"model": "lenet5", "history": [{"epoch": 1, "loss": 0.25}], "note": None}
    path = tmp_path / "sub" / "run.npz"  # missing folders are created
    ckpt.save(path, arrays, meta)

    loaded, loaded_meta = ckpt.load(path)
    assert loaded_meta == meta
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert isinstance(loaded[k], np.ndarray)  # always NumPy on the way back
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], backend.to_numpy(v))
    assert _leftovers(path.parent) == []


def test_save_overwrites_the_previous_checkpoint(tmp_path):
    path = tmp_path / "c.npz"
    ckpt.save(path, {"a": np.zeros(3)}, {"n": 1})
    ckpt.save(path, {"a": np.ones(3)}, {"n": 2})
    arrays, meta = ckpt.load(path)
    assert meta == {"n": 2}
    np.testing.assert_array_equal(arrays["a"], np.ones(3))


def test_reserved_array_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        ckpt.save(tmp_path / "c.npz", {"__meta__": np.zeros(1)})


def test_missing_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "nothing.npz"
    with pytest.raises(ckpt.CheckpointError, match="nothing.npz"):
        ckpt.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "broken.npz"
    ckpt.save(path, _arrays(np), {"model": "lenet5"})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a zip file" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_npz_without_metadata_is_not_a_minievo_checkpoint(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(ckpt.CheckpointError, match=r"plain\.npz.*not a minievo checkpoint"):
        ckpt.load(path)


def test_failed_rename_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    ckpt.save(path, {"w": np.arange(4.0)}, {"step": 1})
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save(path, {"w": np.zeros(4)}, {"step": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    arrays, meta = ckpt.load(path)
    assert meta == {"step": 1}


def test_interrupt_during_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    """A KeyboardInterrupt (not an Exception) in the middle of writing the bytes."""
    path = tmp_path / "c.npz"
    ckpt.save(path, {"w": np.arange(4.0)}, {"step": 1})
    before = path.read_bytes()

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, {"w": np.zeros(4)}, {"step": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_write_text_round_trip(tmp_path):
    path = tmp_path / "a" / "b.json"
    ckpt.atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_a_checkpoint_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    # /dev/zero would be read until memory runs out and a FIFO would block for ever
    zero = tmp_path / "model.npz"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ckpt.CheckpointError, match="not a regular file"):
        ckpt.load(zero)
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    with pytest.raises(ckpt.CheckpointError, match="not a regular file"):
        ckpt.load(fifo)
    with pytest.raises(ckpt.CheckpointError, match="not a regular file"):
        ckpt.load(tmp_path)  # a folder


def test_a_file_far_larger_than_the_limit_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.npz"
    with open(big, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MiB of nothing
    with pytest.raises(ckpt.CheckpointError, match="more than a checkpoint may hold"):
        ckpt.load(big, max_bytes=1 << 20)
