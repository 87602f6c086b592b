"""Issue 18, section 3: the silent results, loader gaps and unclear messages of the new input
surfaces (flags, environment variables, checkpoints, pickles, packages, compact models).

Each test feeds the input the issue lists and asserts the one outcome allowed: a one-line
error (``minievo: error: ...`` at the command line, or one exception naming the file or the
variable), a refusal before anything is trained, or a bounded memory use. A traceback, a
silent result or a crash fails the test.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from cli_checks import (
    one_line,
    one_line_error,
    own_settings,  # noqa: F401 (autouse: every test here)
    run_main,
)

import data_loaders as dl
from data_loaders import safe_pickle
from data_loaders.cifar import read_cifar_batch
from data_loaders.sources import read_deb_members
from data_loaders.testing import py2_pickle, write_deb
from minievo import backend, checkpoint, sparse
from minievo import layers as L
from minievo.checkpoint import CheckpointError
from minievo.cli import main
from minievo.evolution.environment import (
    MIN_TARGET_RETENTION,
    EnvironmentalFactor,
    QuantileRetention,
)
from minievo.evolution.lineage import EvolutionConfig
from minievo.experiment import UsageError, make_loaders, numerics_settings
from minievo.kernels import native
from minievo.sparse import cpu

TRAIN = ["train", "--dataset", "synthetic-digits", "--limit-train", "128", "--epochs", "1",
         "--no-progress"]
EVOLVE = ["evolve", "--dataset", "synthetic-digits", "--generations", "1", "--ancestor-epochs",
          "1", "--offspring-epochs", "1", "--limit-train", "128", "--limit-test", "100",
          "--no-progress"]


def _edit_npz(path: Path, edit) -> None:
    """Rewrite the .npz at ``path`` with ``edit(arrays)`` applied (metadata untouched)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A finished one-epoch `minievo train` run (its checkpoint is the file tampered with)."""
    out = tmp_path_factory.mktemp("train") / "run"
    with backend.using_backend("numpy"):
        assert main([*TRAIN, "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------------------------
# silent results
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,needles", [
    ("0.999", ["--val-fraction 0.999", "[0, 0.5]"]),
    ("0.6", ["--val-fraction 0.6", "[0, 0.5]"]),
])
def test_a_validation_fraction_that_leaves_too_little_to_train_on_is_refused(
        tmp_path, capsys, value, needles):
    """--val-fraction 0.999 trained on one image (7.42%, exit 0)."""
    out = tmp_path / "evo"
    status, _, err = run_main(capsys, *EVOLVE, "--val-fraction", value, "--out", str(out))
    one_line_error(status, err, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_a_validation_split_must_leave_one_training_image_per_class():
    # 15 images, half for validation: 7 left to train on, fewer than the 10 classes
    with pytest.raises(UsageError) as info:
        make_loaders("synthetic-digits", 16, 0, limit_train=15, limit_test=10, val_fraction=0.5)
    one_line(info, "--val-fraction 0.5", "leaves 8 for validation and 7 for training",
             "at least 10")
    for bad in (0.51, 0.999, float("nan"), True):
        with pytest.raises(UsageError, match="--val-fraction"):
            make_loaders("synthetic-digits", 16, 0, limit_train=40, val_fraction=bad)
    with pytest.raises(UsageError, match=r"--val-fraction 0\.9.*\[0, 0\.5\]"):
        EvolutionConfig(val_fraction=0.9, target_retention=0.5)
    train, val, _ = make_loaders("synthetic-digits", 16, 0, limit_train=40, limit_test=10,
                                 val_fraction=0.5)
    assert (train.num_samples, val.num_samples) == (20, 20)  # the largest split still works


@pytest.mark.parametrize("value", ["1e-9", "0.001", "0.0099"])
def test_a_target_retention_the_environment_cannot_honour_is_refused(tmp_path, capsys, value):
    """--target-retention 1e-9 gave 15.4x and no warning."""
    out = tmp_path / "evo"
    status, _, err = run_main(capsys, *EVOLVE, "--target-retention", value, "--out", str(out))
    one_line_error(status, err, f"--target-retention {float(value)!r}",
                   f"[{MIN_TARGET_RETENTION:g}, 1]")
    assert not out.exists() or not any(out.iterdir())
    assert EvolutionConfig(target_retention=MIN_TARGET_RETENTION).target_retention == 0.01


def test_the_quantile_control_warns_when_the_target_lies_below_its_reach():
    """Under --retention-control quantile, a target below what the literal normalisation keeps
    used to give that larger retention without a word."""
    rng = np.random.default_rng(0)
    net = L.Sequential(L.Linear(20, 16), L.ReLU(), L.Linear(16, 4))
    for layer in (net.layers[0], net.layers[2]):
        layer.weight.data[...] = rng.standard_normal(layer.weight.data.shape)
    layers = L.prunable_layers(net)
    env = EnvironmentalFactor(1.0, 1.0)
    with pytest.warns(RuntimeWarning, match="out of reach of the quantile control") as record:
        q, kept = QuantileRetention(0.02).solve(layers, env)
    assert q == 1.0 and kept > 0.02
    assert f"{kept:.4f}" in str(record[0].message)  # says what is kept instead
    # a reachable target is met without a warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q, kept = QuantileRetention(0.5).solve(layers, env)
    assert q < 1.0 and abs(kept - 0.5) < 0.01


@pytest.mark.parametrize("masks", [["all"], ["2.mask"]], ids=["every mask", "conv2 only"])
def test_a_checkpoint_with_no_live_path_is_not_trained(train_run, tmp_path, capsys, masks):
    """Masks all zero (or one layer of the chain cut off) trained a dead network (11.35%,
    exit 0): refused on resume and as an --ancestor-path, naming the file."""
    out = tmp_path / "run"
    shutil.copytree(train_run, out)
    ck = out / "checkpoint.npz"
    _edit_npz(ck, lambda a: a.update({k: np.zeros_like(v) for k, v in a.items()
                                      if k.endswith(".mask") and ("all" in masks
                                                                  or k.endswith(masks[0]))}))
    before = ck.read_bytes()
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    one_line_error(status, err, str(ck), "no live path", "all zero")
    assert ck.read_bytes() == before
    evo = tmp_path / "evo"
    status, _, err = run_main(capsys, *EVOLVE, "--ancestor-path", str(ck), "--ancestor-epochs",
                              "0", "--out", str(evo))
    one_line_error(status, err, str(ck), "no live path")
    assert not (evo / "gen_000").exists()


def test_a_resumed_generation_whose_training_file_cuts_every_path_is_refused(tmp_path):
    """The lineage's own train.npz: the generation starts alive, so a file that kills it is
    damaged (training never changes a mask)."""
    from minievo.evolution.lineage import Lineage

    cfg = EvolutionConfig(dataset="synthetic-digits", generations=0, ancestor_epochs=1,
                          offspring_epochs=1, limit_train=64, limit_test=50)
    out = tmp_path / "evo"
    lineage = Lineage(cfg, out, progress=False)
    lineage.run()
    gen0 = out / "gen_000"
    model = checkpoint.load(gen0 / "model.npz")[0]
    state = {f"model/{k}": (np.zeros_like(v) if k.endswith(".mask") else v)
             for k, v in model.items()}
    # a training checkpoint of generation 0 left by an interrupted run, with dead masks
    checkpoint.save(gen0 / "train.npz", state, {"fit_state": {}})
    rows = json.loads((out / "lineage.json").read_text())
    rows["rows"] = []
    (out / "lineage.json").write_text(json.dumps(rows))
    with pytest.raises(CheckpointError) as info:
        Lineage(cfg, out, progress=False).run()
    one_line(info, str(gen0 / "train.npz"), "no live path")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "1e9"])
def test_a_bad_native_build_timeout_is_an_error_not_a_quiet_fallback(tmp_path, capsys,
                                                                     monkeypatch, value):
    """MINIEVO_NATIVE_BUILD_TIMEOUT=0/-1/abc switched the kernel off while config.json said
    "native": true."""
    monkeypatch.setenv("MINIEVO_NATIVE_BUILD_TIMEOUT", value)
    out = tmp_path / "run"
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    one_line_error(status, err, "MINIEVO_NATIVE_BUILD_TIMEOUT", repr(value), "(0, 1000000)")
    assert not out.exists()
    if native.enabled():  # the Python API: the same error at the first use, never remembered
        with pytest.raises(ValueError, match="MINIEVO_NATIVE_BUILD_TIMEOUT"):
            native.load()
        assert "MINIEVO_NATIVE_BUILD_TIMEOUT" in native.status()


def test_the_recorded_native_flag_says_whether_the_kernel_runs(train_run, monkeypatch):
    recorded = json.loads((train_run / "config.json").read_text())["numerics"]
    assert recorded["native"] == (native.enabled() and native.available())
    monkeypatch.setenv("CC", "/nonexistent/cc")  # a kernel that cannot be built
    native.reset()
    try:
        assert native.enabled() and not native.available()
        assert numerics_settings()["native"] is False
    finally:
        monkeypatch.undo()
        native.reset()


# ----------------------------------------------------------------------------------------------
# loader gaps
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "1.5", "0", "-2", "99999"])
def test_a_bad_sparse_thread_count_is_one_line_naming_the_variable(tmp_path, capsys,
                                                                   monkeypatch, value):
    """MINIEVO_SPARSE_THREADS=abc or 1.5 raised a raw ValueError from a compact forward."""
    monkeypatch.setenv("MINIEVO_SPARSE_THREADS", value)
    status, _, err = run_main(capsys, *TRAIN, "--out", str(tmp_path / "run"))
    one_line_error(status, err, "MINIEVO_SPARSE_THREADS", repr(value), "[1, 1024]")
    # the Python API: a compact forward on the csr path reads the variable
    monkeypatch.setattr(cpu, "_num_threads", None)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = sparse.CompactConv2d.from_dense(w, np.zeros(4, np.float32),
                                           (rng.random(w.shape) < 0.5).astype(np.float32),
                                           method="csr")
    with pytest.raises(ValueError) as info:
        conv.forward(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    one_line(info, "MINIEVO_SPARSE_THREADS", repr(value))
    monkeypatch.setenv("MINIEVO_SPARSE_THREADS", "2")
    monkeypatch.setattr(cpu, "_num_threads", None)
    assert cpu.get_num_threads() == 2


def _raw_pickle(*ops: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + b"".join(ops) + pickle.STOP


def _dtype_ops(flags: int) -> bytes:
    """numpy.dtype('u1', False, True) with a BUILD state whose flags are ``flags``."""
    return (pickle.GLOBAL + b"numpy\ndtype\n" + pickle.SHORT_BINUNICODE + b"\x02u1"
            + pickle.NEWFALSE + pickle.NEWTRUE + pickle.TUPLE3 + pickle.REDUCE + pickle.MARK
            + pickle.BININT1 + b"\x03" + pickle.SHORT_BINUNICODE + b"\x01|" + pickle.NONE * 3
            + pickle.BININT + b"\xff\xff\xff\xff" + pickle.BININT + b"\xff\xff\xff\xff"
            + pickle.BININT1 + bytes([flags]) + pickle.TUPLE + pickle.BUILD)


def _array_ops(dtype_ops: bytes) -> bytes:
    """An array of two uint8 values rebuilt as NumPy pickles one, with the given dtype."""
    return (pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n"
            + pickle.GLOBAL + b"numpy\nndarray\n" + pickle.BININT1 + b"\x00" + pickle.TUPLE1
            + pickle.SHORT_BINBYTES + b"\x01b" + pickle.TUPLE3 + pickle.REDUCE + pickle.MARK
            + pickle.BININT1 + b"\x01" + pickle.BININT1 + b"\x02" + pickle.TUPLE1 + dtype_ops
            + pickle.NEWFALSE + pickle.SHORT_BINBYTES + b"\x02\x07\x09" + pickle.TUPLE
            + pickle.BUILD)


def test_the_unpickler_refuses_a_dtype_state_that_sets_hasobject(tmp_path):
    """A BUILD state with flags 1 made a uint8 dtype with hasobject, accepted before; a CIFAR
    batch made so trained and then failed inside NumPy."""
    good = _raw_pickle(_array_ops(_dtype_ops(0)))
    np.testing.assert_array_equal(safe_pickle.safe_loads(good, "batch"), [7, 9])
    for flags in (1, 4, 63):
        with pytest.raises(dl.DataError) as info:
            safe_pickle.safe_loads(_raw_pickle(_array_ops(_dtype_ops(flags))), "batch")
        one_line(info, "batch: cannot unpickle", "refusing the dtype state", f"{flags})")
    # the same dtype given its state again after an array was made with it (memo slot 0)
    late = _raw_pickle(_dtype_ops(0), pickle.MEMOIZE, pickle.POP,
                       _array_ops(pickle.BINGET + b"\x00"), pickle.BINGET + b"\x00",
                       pickle.MARK, pickle.BININT1 + b"\x03", pickle.SHORT_BINUNICODE + b"\x01|",
                       pickle.NONE * 3, pickle.BININT + b"\xff" * 4, pickle.BININT + b"\xff" * 4,
                       pickle.BININT1 + b"\x01", pickle.TUPLE, pickle.BUILD, pickle.TUPLE2)
    with pytest.raises(dl.DataError, match="refusing the dtype state"):
        safe_pickle.safe_loads(late, "batch")
    # BUILD on anything but a dtype or an array
    with pytest.raises(dl.DataError, match="refusing to set the state of a dict"):
        safe_pickle.safe_loads(_raw_pickle(pickle.EMPTY_DICT, pickle.EMPTY_DICT, pickle.BUILD),
                               "batch")
    # a real CIFAR batch with that dtype: refused by the reader, one line naming it
    batch = py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})
    assert read_cifar_batch(io.BytesIO(batch), "data_batch_1")[0].shape == (2, 3, 32, 32)
    old = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    assert batch.count(old) == 1
    bad = batch.replace(old, old.replace(b"K\x00", b"K\x01"))
    with pytest.raises(dl.DataError) as info:
        read_cifar_batch(io.BytesIO(bad), "data_batch_1")
    one_line(info, "data_batch_1", "refusing the dtype state")
    # what NumPy itself writes still loads, byte orders included
    for dt in (">i4", "<i4", "<f8", ">f8", "<U3", "|S2", "|b1"):
        assert safe_pickle.safe_loads(pickle.dumps(np.dtype(dt), protocol=4), "t") == dt
        a = np.array(["ab", "c"] if dt[1] in "US" else [1, 0], dtype=dt)
        got = safe_pickle.safe_loads(pickle.dumps(a, protocol=4), "t")
        assert got.dtype == pickle.loads(pickle.dumps(a, protocol=4)).dtype
        assert (got == a).all()


@pytest.fixture
def compact_linear_file(tmp_path):
    """A compact model of one Linear(36, 100) layer, saved."""
    rng = np.random.default_rng(3)
    net = L.Sequential(L.Linear(36, 100))
    net.layers[0].set_mask((rng.random((100, 36)) < 0.6).astype(np.float32))
    path = tmp_path / "model.npz"
    sparse.compact(net, input_shape=(36,)).save(path)
    return path


def _claim_in_features(path: Path, n: int) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta["input_shape"] = [n] if n <= 1 << 24 else [1, 1 << 12, 1 << 12]
    for spec in meta["steps"]:
        if spec["op"] == "compact_linear":
            spec["in_features"] = n
    for spec in meta["leaf_specs"]:
        if spec["op"] == "linear":
            spec["in_features"] = n
    for src in meta["sources"]:
        src["shape"][1] = min(n, 1 << 24)
    arrays["__meta__"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _claim_a_huge_conv(path: Path, k: int = 1000, c: int = 2048) -> None:
    """Rewrite a compact Conv2d(2, 4, 3) as one live k x k kernel over c input maps: a 5 MB
    file whose layer is (4, c, k, k) dense (30.5 GiB), while its source still says
    (4, 2, 3, 3)."""
    with np.load(path) as z:
        arrays = {key: z[key] for key in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta["input_shape"] = [c, k, k]
    meta["steps"][0]["in_channels"] = c
    maps = arrays["step0.indptr"].size - 1
    arrays.update({"step0.indptr": np.array([0] + [1] * maps, np.int32),
                   "step0.indices": np.zeros(1, np.int32),
                   "step0.kernels": np.zeros((1, k, k), np.float32),
                   "step0.kernel_mask": np.ones((1, k, k), np.uint8),
                   "__meta__": np.array(json.dumps(meta))})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("claim", ["in_features 2000000", "in_features 2**31-1", "conv 30 GiB"])
def test_a_compact_model_claiming_a_huge_layer_is_refused_before_allocating(
        compact_linear_file, tmp_path, claim):
    """in_features 2,147,483,647 raised a raw MemoryError ("2.85 TiB"); at 2,000,000 it
    allocated 1.5 GB (the dense weight and mask) before the shape check. The loader compared
    each layer with its source through to_dense(), sized by the layer's metadata: a conv
    claiming 2048 input maps of one 1000 x 1000 kernel gave "MemoryError: Unable to allocate
    30.5 GiB"."""
    path = compact_linear_file
    if claim.startswith("conv"):
        rng = np.random.default_rng(3)
        net = L.Sequential(L.Conv2d(2, 4, 3))
        net.layers[0].set_mask((rng.random((4, 2, 3, 3)) < 0.6).astype(np.float32))
        path = tmp_path / "conv.npz"
        sparse.compact(net, input_shape=(2, 8, 8)).save(path)
        _claim_a_huge_conv(path)
    else:
        _claim_in_features(path, 2_000_000 if claim.endswith("2000000") else 2**31 - 1)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            sparse.CompactModel.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = one_line(info, str(path))
    assert "expected" in message or "does not fit" in message, message
    bound = max(16 * 2**20, 4 * path.stat().st_size)  # a few times the file, never the claim
    assert peak < bound, f"{peak / 2**20:.0f} MiB traced while refusing the file"


@pytest.mark.parametrize("size", [b"-5", b"+5", b"1_0", b"-100000", b"abc"])
def test_a_deb_member_with_a_bad_size_is_one_line(tmp_path, size):
    """A .deb member with a negative size raised a raw ValueError."""
    deb = write_deb(tmp_path / "p.deb", {"usr/share/a/x.bin": b"hello"}, compression="gz")
    raw = deb.read_bytes()
    for member in (b"debian-binary", b"data.tar.gz"):
        at = raw.index(member)
        bad = tmp_path / "bad.deb"
        bad.write_bytes(raw[:at + 48] + size.ljust(10) + raw[at + 58:])
        with pytest.raises(dl.DataError) as info:
            read_deb_members(bad, {"usr/share/a/x.bin": "x"})
        one_line(info, "bad.deb: corrupt ar member header", repr(size.decode()))
    assert read_deb_members(deb, {"usr/share/a/x.bin": "x"}) == {"x": b"hello"}


@pytest.fixture(scope="module")
def rewind_run(tmp_path_factory):
    """A finished two-generation --offspring-init rewind lineage."""
    out = tmp_path_factory.mktemp("rewind") / "evo"
    args = [*EVOLVE, "--generations", "2", "--offspring-init", "rewind", "--out", str(out)]
    with backend.using_backend("numpy"):
        assert main(args) == 0
    return out, args


@pytest.mark.parametrize("damage,needle", [
    (lambda a: a.__setitem__("0.weight", np.full_like(a["0.weight"], np.nan)), "NaN"),
    (lambda a: a.__setitem__("0.weight", a["0.weight"][:1]), "expected (20, 1, 5, 5)"),
    (lambda a: a.pop("0.weight"), "0.weight"),
], ids=["nan", "shape", "missing"])
def test_a_damaged_generation0_init_is_refused_on_resume(rewind_run, tmp_path, capsys, damage,
                                                         needle):
    """A corrupted generation0_init.npz under --offspring-init rewind gave a traceback on
    resume (when generation 2 rewinds to it)."""
    src, args = rewind_run
    out = tmp_path / "evo"
    shutil.copytree(src, out)
    record = json.loads((out / "lineage.json").read_text())
    record["rows"] = record["rows"][:-1]  # generation 2 not yet done: an interrupted run
    (out / "lineage.json").write_text(json.dumps(record))
    shutil.rmtree(out / "gen_002")
    init = out / "generation0_init.npz"
    _edit_npz(init, damage)
    status, _, err = run_main(capsys, *args[:-1], str(out))
    one_line_error(status, err, str(init), needle)
    assert not (out / "gen_002").exists()


# ----------------------------------------------------------------------------------------------
# unclear messages
# ----------------------------------------------------------------------------------------------
def test_a_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    """'No space left on device' used to come without the path: a full disk fails the write
    or fsync of an open file, and the system names none."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    real = os.fdopen

    def full_disk(fd, *args, **kwargs):  # minievo's temporary files write to /dev/full
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".") and name.endswith(".tmp"):
            os.close(fd)
            return open("/dev/full", *args, **kwargs)
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", full_disk)
    out = tmp_path / "run"
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    monkeypatch.undo()
    one_line_error(status, err, "No space left on device", str(out / "config.json"))
    assert not out.exists() or not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(OSError) as info:  # the writer itself, for every caller
        monkeypatch.setattr(os, "fdopen", full_disk)
        checkpoint.save(tmp_path / "m.npz", {"w": np.zeros(3)})
    monkeypatch.undo()
    assert info.value.filename == str(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    checkpoint.save(tmp_path / "m.npz", {"w": np.zeros(3)})  # the disk "has room" again
    assert checkpoint.load(tmp_path / "m.npz")[0]["w"].shape == (3,)


@pytest.mark.parametrize("name", ["lineage.json", "config.json"])
def test_a_resumed_run_whose_record_is_a_fifo_or_dev_zero_is_refused_at_once(tmp_path, name):
    """Resuming reads config.json and lineage.json: neither may block (a FIFO) or fill memory
    (/dev/zero); each is refused in one line naming it."""
    from minievo.evolution.lineage import Lineage

    cfg = EvolutionConfig(dataset="synthetic-digits", generations=0, ancestor_epochs=1,
                          offspring_epochs=1, limit_train=64, limit_test=50)
    out = tmp_path / "evo"
    Lineage(cfg, out, progress=False, log=lambda line: None).run()
    for make in (lambda p: os.mkfifo(p), lambda p: p.symlink_to("/dev/zero")):
        (out / name).unlink()
        make(out / name)
        with pytest.raises((CheckpointError, UsageError)) as info:
            Lineage(cfg, out, progress=False, log=lambda line: None).run()
        one_line(info, name)
