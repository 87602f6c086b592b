"""The bad-input catalogue: every bad flag, tampered file, hostile data file and cache file
listed in issue 11, each as a row of a table.

Each row asserts the one outcome allowed: a one-line error (``minievo: error: ...`` at the
command line, or one exception naming the file), and that what was there before is intact. A
traceback, a silent result or a crash fails the row. The fuzz test at the end runs the
compact-model loader and the kernel's C entry points under AddressSanitizer and UBSan.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_checks import (
    one_line_error,
    own_settings,  # noqa: F401 (autouse: every test here)
    run_main,
)

import data_loaders as dl
from data_loaders import safe_pickle
from data_loaders.idx import read_idx
from minievo import backend, checkpoint, sparse
from minievo import layers as L
from minievo.checkpoint import CheckpointError
from minievo.cli import main
from minievo.kernels import native
from minievo.runlock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
TRAIN = ["train", "--dataset", "synthetic-digits", "--limit-train", "256", "--epochs", "1",
         "--no-progress"]
EVOLVE = ["evolve", "--dataset", "synthetic-digits", "--generations", "1", "--ancestor-epochs",
          "1", "--offspring-epochs", "1", "--limit-train", "128", "--limit-test", "100",
          "--no-progress"]
REQUIRE_SANITIZERS = os.environ.get("MINIEVO_REQUIRE_SANITIZERS") == "1"


def _need_native():
    """Skip without the native kernel (no C compiler), except in CI, where it must build."""
    if not native.available():
        message = f"no native kernel here: {native.status()}"
        if REQUIRE_SANITIZERS:
            pytest.fail(f"{message}, and MINIEVO_REQUIRE_SANITIZERS=1 requires it")
        pytest.skip(message)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder -> its SHA-256 (what 'intact' is compared with)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


# ----------------------------------------------------------------------------------------------
# 1. bad flags: one line naming flag, value and allowed range; nothing written
# ----------------------------------------------------------------------------------------------
BAD_TRAIN_FLAGS = [
    (["--lr", "0"], ["--lr", "0", "(0, inf)"]),
    (["--lr", "-1"], ["--lr", "-1"]),
    (["--lr", "nan"], ["--lr", "nan", "finite"]),
    (["--lr", "abc"], ["--lr", "'abc'"]),
    (["--momentum", "5"], ["--momentum", "5", "[0, 1)"]),
    (["--momentum", "nan"], ["--momentum", "nan"]),
    (["--weight-decay", "-100"], ["--weight-decay", "-100", "[0, inf)"]),
    (["--batch-size", "0"], ["--batch-size", "0", ">= 1"]),
    (["--batch-size", "1.5"], ["--batch-size", "'1.5'", "integer"]),
    (["--seed", "-1"], ["--seed", "-1", "[0, 4294967295]"]),
    (["--epochs", "0"], ["--epochs", "0", ">= 1"]),
    (["--epochs", "-3"], ["--epochs", "-3"]),
    (["--limit-train", "0"], ["--limit-train", "0", ">= 1"]),
    (["--limit-train", "-1"], ["--limit-train", "-1"]),
    (["--model", "bogus"], ["--model", "'bogus'", "lenet5"]),
    (["--dataset", "bogus"], ["--dataset", "'bogus'", "mnist"]),
    (["--model", "cifar_net"], ["--model cifar_net", "(3, 32, 32)", "(1, 28, 28)"]),
    (["--lr-policy", "cosine"], ["--lr-policy", "'cosine'", "inv, step, fixed"]),
    (["--checkpoint-seconds", "-1"], ["--checkpoint-seconds", "-1"]),
    (["--backend", "tpu"], ["tpu", "numpy"]),
    (["--sparse-training", "maybe"], ["--sparse-training", "'maybe'"]),
]


@pytest.mark.parametrize("flags,needles", BAD_TRAIN_FLAGS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) and v and v[0].startswith("--") else None)
def test_catalogue_bad_train_flag(tmp_path, capsys, flags, needles):
    out = tmp_path / "run"
    status, _, err = run_main(capsys, *TRAIN, *flags, "--out", str(out))
    one_line_error(status, err, *needles)
    assert not out.exists() or not any(out.iterdir())


BAD_EVOLVE_FLAGS = [
    (["--val-fraction", "nan"], ["--val-fraction", "nan"]),
    (["--val-fraction", "1"], ["--val-fraction", "1.0", "[0, 0.5]"]),
    (["--val-fraction", "-0.5"], ["--val-fraction", "-0.5"]),
    (["--val-fraction", "1e-9"], ["--val-fraction", "leaves 0 for validation"]),
    (["--limit-test", "0"], ["--limit-test", "0", ">= 1"]),
    (["--limit-test", "-9999"], ["--limit-test", "-9999"]),
    (["--limit-train", "-1"], ["--limit-train", "-1"]),
    (["--f-s", "0"], ["f_s", "(0, 1]"]),
    (["--f-c", "2"], ["f_c", "(0, 1]"]),
    (["--generations", "-1"], ["generations", "-1"]),
    (["--ancestor-epochs", "-1"], ["--ancestor-epochs", "-1"]),
    (["--offspring-epochs", "-2"], ["--offspring-epochs", "-2"]),
    (["--lr", "0"], ["--lr", "0"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--model", "bogus"], ["'bogus'", "lenet5"]),
    (["--model", "cifar_net"], ["cifar_net", "(3, 32, 32)"]),
    (["--dataset", "bogus"], ["--dataset", "'bogus'"]),
    (["--target-retention", "0"], ["target retention", "(0, 1]"]),
]


@pytest.mark.parametrize("flags,needles", BAD_EVOLVE_FLAGS)
def test_catalogue_bad_evolve_flag(tmp_path, capsys, flags, needles):
    out = tmp_path / "evo"
    status, _, err = run_main(capsys, *EVOLVE, *flags, "--out", str(out))
    one_line_error(status, err, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_catalogue_an_environment_that_kills_every_synapse_is_an_error(tmp_path, capsys):
    """--f-s 1e-30 used to end with 0 synapses and an efficiency of "infx" at exit 0."""
    out = tmp_path / "evo"
    with pytest.warns(RuntimeWarning, match="out of reach"):
        status, _, err = run_main(capsys, *EVOLVE, "--f-s", "1e-30", "--out", str(out))
    one_line_error(status, err, "generation 1", "kept no synapse", "--f-s")
    rows = json.loads((out / "lineage.json").read_text())["rows"]
    assert [r["generation"] for r in rows] == [0]  # generation 0 kept, nothing after it
    assert not (out / "gen_001").exists() or not (out / "gen_001" / "model.npz").exists()


def test_catalogue_other_commands_and_environment(tmp_path, capsys, monkeypatch):
    status, _, err = run_main(capsys, "data", "fetch", "bogus")
    one_line_error(status, err, "'bogus'", "mnist")
    monkeypatch.setenv("MINIEVO_SPARSE_TRAINING", "garbage")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(tmp_path / "a"))
    one_line_error(status, err, "MINIEVO_SPARSE_TRAINING", "'garbage'", "auto, on, off")
    assert not (tmp_path / "a").exists()


def test_catalogue_doctor_with_an_unusable_default_backend():
    if backend.cupy_available():
        pytest.skip("CuPy works here: MINIEVO_BACKEND=cupy is not an unusable backend")
    done = subprocess.run([sys.executable, "-m", "minievo.cli", "doctor"], cwd=ROOT,
                          env=dict(ENV, MINIEVO_BACKEND="cupy"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "backend      default unusable" in done.stdout and "CPU kernel" in done.stdout


def test_catalogue_output_folder_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(target))
    one_line_error(status, err, "is a file, not a folder")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(target / "below"))
    one_line_error(status, err)
    assert target.read_text() == "keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_catalogue_read_only_output_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        status, _, err = run_main(capsys, *TRAIN, "--out", str(ro / "run"))
        one_line_error(status, err, "ermission")
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------------------------
# 2. tampered files of a training run: one line naming the file; the folder intact
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    with backend.using_backend("numpy"):
        assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def _edit_npz(path: Path, edit) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    original = arrays["__meta__"]
    meta = json.loads(str(original))
    edit(arrays, meta)
    if arrays.get("__meta__") is original:  # the edit changed the dict, not the raw text
        arrays["__meta__"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _set_fit(key, value):
    return lambda a, m: m["fit_state"].__setitem__(key, value)


def _set_array(key, fn):
    def edit(a, m):
        a[key] = fn(a[key])
    return edit


def _huge_claim(path: Path) -> None:
    """A member whose .npy header claims far more data than the member holds."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (3 * 2**28,)})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("model/huge.npy", header.getvalue() + b"\0" * 64)


def _object_member(path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("model/evil.npy", buf.getvalue())


TRAIN_TAMPERS = [
    ("config.json", lambda p: p.write_text("{not json"), "config.json"),
    ("config.json", lambda p: p.write_text("[]"), "config.json"),
    ("checkpoint.npz", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
     "not a readable checkpoint"),
    ("checkpoint.npz", lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    ("checkpoint.npz", lambda p: _edit_npz(p, lambda a, m: a.__setitem__(
        "__meta__", np.array("{oops"))), "not valid JSON"),
    ("checkpoint.npz", lambda p: _edit_npz(p, lambda a, m: a.__setitem__(
        "__meta__", np.array("[1, 2]"))), "not a JSON object"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_fit("epoch", -1)), "fit_state epoch"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_fit("epoch", 99)), "(99)"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_fit("step_in_epoch", 100000)),
     "outside this run"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_fit("epoch", "1")), "fit_state epoch"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_fit("history", "x")), "history"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_fit("train_seconds", float("nan"))),
     "train_seconds"),
    ("checkpoint.npz", lambda p: _edit_npz(p, lambda a, m: m.__setitem__(
        "optim_scalars", {"lr": "fast"})), "optim_scalars"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_array(
        "model/0.weight", lambda w: np.where(w > 0, np.nan, w).astype(w.dtype))), "NaN"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_array(
        "model/0.weight", lambda w: w.astype(np.complex64) * 1j)), "complex"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_array(
        "model/0.mask", lambda m: m * 0.5)), "only 0 and 1"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_array(
        "model/0.mask", lambda m: np.full_like(m, np.nan))), "NaN"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_array(
        "model/0.weight", lambda w: w.reshape(-1))), "shape"),
    ("checkpoint.npz", lambda p: _edit_npz(p, lambda a, m: a.__setitem__(
        "model/9.weight", np.zeros(3, np.float32))), "unexpected"),
    ("checkpoint.npz", lambda p: _edit_npz(p, lambda a, m: a.pop("model/0.bias")), "missing"),
    ("checkpoint.npz", lambda p: _edit_npz(p, _set_array(
        "model/0.bias", lambda b: np.array(["x"] * b.size))), "real numbers"),
    ("checkpoint.npz", _huge_claim, "claims"),
    ("checkpoint.npz", _object_member, "not a plain numeric array"),
    ("checkpoint.npz", lambda p: (p.unlink(), p.mkdir()), "checkpoint"),
]


@pytest.mark.parametrize("name,tamper,needle", TRAIN_TAMPERS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(TRAIN_TAMPERS)])
def test_catalogue_tampered_training_run(train_run, tmp_path, capsys, name, tamper, needle):
    out = tmp_path / "run"
    shutil.copytree(train_run, out)
    tamper(out / name)
    before = snapshot(out)
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    one_line_error(status, err, needle)
    assert name in err
    assert snapshot(out) == before  # nothing rewritten, nothing deleted


# ----------------------------------------------------------------------------------------------
# 3. tampered files of an evolution run, and the report over them
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evolve_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evolve") / "evo"
    with backend.using_backend("numpy"):
        assert main([*EVOLVE, "--out", str(out)]) == 0
    return out


def _json_edit(edit):
    def apply(p: Path):
        data = json.loads(p.read_text())
        edit(data)
        p.write_text(json.dumps(data))
    return apply


EVOLVE_TAMPERS = [
    ("config.json", lambda p: p.write_text("\0\0garbage"), "config.json"),
    ("lineage.json", lambda p: p.write_text("{"), "lineage.json"),
    ("lineage.json", _json_edit(lambda d: d.__setitem__("rows", {"a": 1})), "lineage.json"),
    ("lineage.json", _json_edit(lambda d: d["rows"][1].__setitem__("generation", 7)),
     "lineage.json"),
    ("gen_001/model.npz", lambda p: _edit_npz(p, _set_array(
        "0.weight", lambda w: w[:1])), "shape"),
    ("gen_001/model.npz", lambda p: _edit_npz(p, lambda a, m: a.__setitem__(
        "extra", np.zeros(2, np.float32))), "unexpected"),
    ("gen_001/model.npz", lambda p: _edit_npz(p, _set_array(
        "2.weight", lambda w: np.full_like(w, np.nan))), "NaN"),
    ("gen_001/model.npz", lambda p: _edit_npz(p, lambda a, m: [
        a.__setitem__(k, np.zeros_like(a[k])) for k in list(a) if k.endswith(".mask")]),
     "all zero"),
    ("gen_001/model.npz", lambda p: _edit_npz(p, lambda a, m: m.__setitem__(
        "model", "cifar_net")), "checkpoint is of model"),
    ("gen_001/model.npz", lambda p: p.write_bytes(b"PK\x03\x04broken"),
     "not a readable checkpoint"),
    ("generation0_init.npz", lambda p: p.write_bytes(p.read_bytes()[:100]),
     "not a readable checkpoint"),
]


@pytest.mark.parametrize("name,tamper,needle", EVOLVE_TAMPERS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EVOLVE_TAMPERS)])
def test_catalogue_tampered_evolution_run(evolve_run, tmp_path, capsys, name, tamper, needle):
    out = tmp_path / "evo"
    shutil.copytree(evolve_run, out)
    tamper(out / name)
    before = snapshot(out)
    status, _, err = run_main(capsys, *EVOLVE, "--out", str(out))
    one_line_error(status, err, needle)
    assert name.split("/")[-1] in err
    assert snapshot(out) == before


REPORT_TAMPERS = [
    _json_edit(lambda d: d["rows"][0].pop("synapses")),
    _json_edit(lambda d: d["rows"][1].__setitem__("test_accuracy", "high")),
    _json_edit(lambda d: d["rows"].__setitem__(0, [1, 2])),
    lambda p: p.write_text("null"),
]


@pytest.mark.parametrize("tamper", REPORT_TAMPERS)
def test_catalogue_report_over_tampered_rows(evolve_run, tmp_path, capsys, tamper):
    out = tmp_path / "evo"
    shutil.copytree(evolve_run, out)
    tamper(out / "lineage.json")
    before = snapshot(out)
    status, _, err = run_main(capsys, "report", str(out))
    one_line_error(status, err, "lineage.json")
    assert snapshot(out) == before


# ----------------------------------------------------------------------------------------------
# 4. starting, failing and restarting cleanly
# ----------------------------------------------------------------------------------------------
def _metrics(out: Path) -> dict:
    """The table of a training run (its timings left out)."""
    m = json.loads((out / "metrics.json").read_text())
    history = [{k: v for k, v in row.items() if "second" not in k} for row in m["history"]]
    return {"history": history, "test_accuracy": m["test_accuracy"]}


def test_a_folder_holding_only_a_killed_first_write_is_reused(train_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.k1x_3abz.tmp").write_text('{"kind": "tr')  # the write a kill cut
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    assert status == 0, err
    assert not list(out.glob(".*.tmp"))
    assert _metrics(out) == _metrics(train_run)


def test_a_failed_start_leaves_the_folder_reusable_by_the_corrected_command(
        train_run, evolve_run, tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = run_main(capsys, *TRAIN, "--model", "cifar_net", "--out", str(out))
    one_line_error(status, err, "cifar_net")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    assert status == 0, err
    assert _metrics(out) == _metrics(train_run)
    # a run killed after writing its config but before producing anything, then corrected
    evo = tmp_path / "evo"
    evo.mkdir()
    (evo / "config.json").write_text(json.dumps({"kind": "evolve", "config": {"seed": 9}}))
    status, _, err = run_main(capsys, *EVOLVE, "--out", str(evo))
    assert status == 0, err
    assert "starting it over" in err
    rows = json.loads((evo / "lineage.json").read_text())["rows"]
    ref = json.loads((evolve_run / "lineage.json").read_text())["rows"]
    assert [r["test_accuracy"] for r in rows] == [r["test_accuracy"] for r in ref]


def test_stale_tmp_files_are_removed_on_start(train_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(train_run, out)
    stale = [out / ".checkpoint.npz.ab12cd34.tmp", out / ".metrics.json.zz_9yy8x.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    keep = out / ".notes.tmp"  # not one of minievo's temporary names
    keep.write_text("mine")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    assert status == 0, err
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


def test_numerics_settings_are_recorded_and_checked_on_resume(train_run, tmp_path, capsys,
                                                              monkeypatch):
    import minievo.accel
    from minievo.experiment import numerics_settings

    recorded = json.loads((train_run / "config.json").read_text())["numerics"]
    with minievo.accel.accelerated():  # the CLI's default path
        assert recorded == numerics_settings()
    assert set(recorded) >= {"accel", "sparse_training", "native", "blas_threads"}
    assert recorded["accel"] is True
    out = tmp_path / "run"
    shutil.copytree(train_run, out)
    monkeypatch.setenv("MINIEVO_NATIVE", "0")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    assert status == 0 and "minievo: warning:" in err and "native True -> False" in err
    before = snapshot(out)
    status, _, err = run_main(capsys, *TRAIN, "--strict-numerics", "--out", str(out))
    one_line_error(status, err, "native True -> False", "--strict-numerics")
    assert snapshot(out) == before


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        checkpoint.atomic_write_text(tmp_path / "a.json", "{}")
        checkpoint.save(tmp_path / "b.npz", {"x": np.zeros(2)})
    finally:
        os.umask(old)
    for name in ("a.json", "b.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def _kill_and_rerun(out: Path, delay: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "minievo.cli", *TRAIN, "--checkpoint-seconds", "0",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("delay", [0.6, 1.5])
def test_a_kill_at_any_moment_then_the_same_command_gives_the_uninterrupted_table(
        train_run, tmp_path, delay):
    out = tmp_path / "run"
    done = _kill_and_rerun(out, delay)
    assert done.returncode == 0, done.stderr
    assert _metrics(out) == _metrics(train_run)
    assert not list(out.rglob("*.tmp"))


# ----------------------------------------------------------------------------------------------
# 5. hostile data files: bounded memory, a DataError
# ----------------------------------------------------------------------------------------------
def _pickle_calling_ndarray(shape, dtype="f8") -> bytes:
    """A pickle that calls numpy.ndarray(shape, dtype) itself (NumPy never writes this)."""
    return (b"\x80\x02cnumpy\nndarray\n" + pickle.dumps(tuple(shape), 2)[2:-1]
            + pickle.dumps(dtype, 2)[2:-1] + b"\x86R.")


def _pickle_reconstruct(shape, code: bytes) -> bytes:
    """_reconstruct(ndarray, shape, code), the code as a Python 2 string (as in CIFAR)."""
    return (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            + pickle.dumps(tuple(shape), 2)[2:-1] + b"U" + bytes([len(code)]) + code
            + b"\x87R.")


HOSTILE_PICKLES = [
    (_pickle_calling_ndarray((200000, 3072)), "numpy.ndarray"),
    (_pickle_calling_ndarray((2,), "O"), "numpy.ndarray"),
    (_pickle_reconstruct((200000, 3072), b"b"), "shape"),
    (_pickle_reconstruct((0,), b"O"), "object"),
    (b"\x80\x02cos\nsystem\n.", "os.system"),
]


@pytest.mark.parametrize("data,needle", HOSTILE_PICKLES)
def test_catalogue_hostile_pickles_are_refused_before_allocating(data, needle):
    with pytest.raises(dl.DataError, match=needle):
        safe_pickle.safe_loads(data, "batch")


def test_a_real_numpy_pickle_still_loads():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    got = safe_pickle.safe_loads(pickle.dumps({"data": a, "labels": [1, 2, 3]}, 4), "batch")
    np.testing.assert_array_equal(got["data"], a)
    assert got["labels"] == [1, 2, 3]


def test_catalogue_idx_gzip_bomb_stops_at_the_cap(tmp_path):
    import gzip

    path = tmp_path / "bomb.gz"
    header = b"\x00\x00\x08\x02" + (2**32 - 1).to_bytes(4, "big") * 2
    with gzip.open(path, "wb") as f:
        f.write(header + b"\0" * (1 << 20))
    with pytest.raises(dl.DataError, match="more than the cap of 1073741824 bytes"):
        read_idx(path)


def test_catalogue_npz_member_larger_than_the_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.npz"
    checkpoint.save(path, {"w": np.zeros(1 << 16, np.float32)})
    with pytest.raises(CheckpointError, match="more than the limit of 1000 bytes"):
        checkpoint.load(path, max_bytes=1000)
    with pytest.raises(CheckpointError, match=r"array 'w' has shape \(65536,\), expected"):
        checkpoint.load(path, expected={"w": (3,)})
    assert checkpoint.load(path)[0]["w"].shape == (1 << 16,)


# ----------------------------------------------------------------------------------------------
# 6. the compact-model loader: every number of the file checked
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compact_file(tmp_path_factory):
    rng = np.random.default_rng(3)
    net = L.Sequential(L.Conv2d(2, 4, 3), L.MaxPool2d(2), L.ReLU(), L.Flatten(),
                       L.Linear(36, 5))
    for layer in (net.layers[0], net.layers[4]):
        layer.set_mask((rng.random(layer.weight.data.shape) < 0.6).astype(np.float32))
    cm = sparse.compact(net, input_shape=(2, 8, 8))
    path = tmp_path_factory.mktemp("compact") / "model.npz"
    cm.save(path)
    return path


def _meta_edit(edit):
    return lambda a, m: (edit(m), a.__setitem__("__meta__", np.array(json.dumps(m))))


def _step(op):
    def find(m):
        return next(s for s in m["steps"] if s["op"] == op)
    return find


COMPACT_TAMPERS = [
    (_meta_edit(lambda m: _step("maxpool")(m).__setitem__("kernel_size", 0)), "kernel_size"),
    (_meta_edit(lambda m: _step("maxpool")(m).__setitem__("kernel_size", -1)), "kernel_size"),
    (_meta_edit(lambda m: _step("maxpool")(m).__setitem__("stride", 0)), "stride"),
    (_meta_edit(lambda m: _step("maxpool")(m).__setitem__("kernel_size", 9)), "does not fit"),
    (_meta_edit(lambda m: _step("compact_conv")(m).__setitem__("stride", 0)), "stride"),
    (_meta_edit(lambda m: _step("compact_conv")(m).__setitem__("padding", -1)), "padding"),
    (_meta_edit(lambda m: _step("compact_conv")(m).__setitem__("padding", 3)), "does not fit"),
    (_meta_edit(lambda m: _step("compact_conv")(m).__setitem__("in_channels", 1)),
     "compact"),
    (_meta_edit(lambda m: _step("compact_conv")(m).__setitem__("method", "fast")), "method"),
    (_meta_edit(lambda m: _step("compact_linear")(m).__setitem__("in_features", 2**40)),
     "in_features"),
    (_meta_edit(lambda m: m.__setitem__("version", "1")), "version"),
    (_meta_edit(lambda m: m.__setitem__("version", 99)), "newer"),
    (_meta_edit(lambda m: m.__setitem__("input_shape", [2, 0, 8])), "input_shape"),
    (_meta_edit(lambda m: m.__setitem__("input_shape", [2, 12, 12])), "does not fit"),
    (_meta_edit(lambda m: m.__setitem__("output_shape", [6])), "outputs"),
    (_meta_edit(lambda m: m.__setitem__("steps", [])), "step"),
    (_meta_edit(lambda m: (m.__setitem__("steps", []), [
        s.__setitem__("step", -1) for s in m["sources"]])), "without steps"),
    (_meta_edit(lambda m: m["steps"].append({"op": "teleport"})), "teleport"),
    (_meta_edit(lambda m: m["sources"][0].__setitem__("step", 17)), "source 0 step"),
    (_meta_edit(lambda m: m["leaf_specs"][1].__setitem__("stride", -3)), "leaf layer 1"),
    (_meta_edit(lambda m: m["leaf_names"].pop()), "leaf_names"),
    (_meta_edit(lambda m: m.pop("has_out_index")), "has_out_index"),
    (_set_array("step0.indptr", lambda a: a.astype(np.int64) + 2**32), "32-bit"),
    (_set_array("step0.indices", lambda a: -a - 1), "indices"),
    (_set_array("step0.kernel_mask", lambda a: a * 0.5), "only 0 and 1"),
    (_set_array("step0.kernels", lambda a: np.full_like(a, np.nan)), "NaN"),
    (_set_array("step0.kernels", lambda a: a.astype(np.complex64)), "complex"),
    (_set_array("step0.bias", lambda a: a[:-1]), "bias"),
    (_set_array("source0.kept_out", lambda a: a + 100), "kept_out"),
    (_set_array("source1.residual_index", lambda a: np.append(a, 10**6)), "residual"),
    (lambda a, m: a.pop("step0.indptr"), "missing array"),
]


@pytest.mark.parametrize("tamper,needle", COMPACT_TAMPERS)
def test_catalogue_tampered_compact_model(compact_file, tmp_path, tamper, needle):
    path = tmp_path / "model.npz"
    shutil.copy(compact_file, path)
    _edit_npz(path, tamper)
    with pytest.raises(CheckpointError) as info:
        sparse.CompactModel.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and needle in message, message


def test_the_item1_reproducer_is_a_one_line_error_and_the_kernel_refuses_it_too(
        compact_file, tmp_path):
    """Pooling of size 0 or -1 from a model file: refused by the loader; and a MaxPool of that
    size built by hand is refused by the native layer (and by the C code behind it)."""
    from minievo.sparse.layers import MaxPool

    path = tmp_path / "model.npz"
    for k in (0, -1):
        shutil.copy(compact_file, path)
        _edit_npz(path, _meta_edit(lambda m, k=k: _step("maxpool")(m).__setitem__(
            "kernel_size", k)))
        with pytest.raises(CheckpointError, match=f"kernel_size = {k} must be"):
            sparse.CompactModel.load(path)
    _need_native()
    cm = sparse.CompactModel.load(compact_file)
    conv = cm.compact_layers[0]
    conv._cpu = None
    conv._method = "native"
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 70)).astype(np.float32)
    for k, s in ((0, 1), (-1, 2), (2, 0)):
        with pytest.raises(ValueError, match="max pooling"):
            conv.forward_bl(x, pool=(k, s))
        assert MaxPool(2).kernel_size == 2


def test_c_entry_point_refuses_inconsistent_pooling_and_output_sizes():
    _need_native()
    k = native.load()
    f32, i32 = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int32)
    strides = ctypes.c_longlong * 4
    x = np.ones(4 * 4 * 8, np.float32)
    syn_ptr, off = np.array([0, 1], np.int32), np.zeros(1, np.int32)
    w, b = np.ones(1, np.float32), np.zeros(1, np.float32)
    out = np.full(4 * 4 * 8, 7.0, np.float32)

    def call(pool_k, pool_s, out_h, out_w):
        return k._conv(x.ctypes.data_as(f32), 1, 4, 4, 8, strides(128, 32, 8, 1), 0, 1,
                       syn_ptr.ctypes.data_as(i32), off.ctypes.data_as(i32),
                       w.ctypes.data_as(f32), 4, 4, 1, b.ctypes.data_as(f32), None, pool_k,
                       pool_s, 0, out_h, out_w, out.ctypes.data_as(f32), None,
                       strides(out_h * out_w * 8, out_w * 8, 8, 1), 0, 8)

    for args in ((-1, 2, 4, 4), (0, 1, 2, 2), (2, 0, 2, 2), (5, 1, 1, 1), (2, 2, 3, 3)):
        assert call(*args) == 2, args
        assert np.all(out == 7.0)  # nothing written
    assert call(2, 2, 2, 2) == 0 and np.all(out[: 2 * 2 * 8] == 1.0)


def test_misaligned_input_gives_the_aligned_result():
    _need_native()
    k = native.load()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 5, 9)).astype(np.float32)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    mis = raw[1:].view(np.float32).reshape(x.shape)
    mis[...] = x
    assert not mis.flags.aligned
    syn_ptr, off = np.array([0, 2], np.int32), np.array([0, 26], np.int32)
    w, b = np.array([1.5, -2.0], np.float32), np.zeros(1, np.float32)
    outs = []
    for src in (x, mis):
        out = np.empty((1, 4, 4, 9), np.float32)
        k.conv(src, syn_ptr, off, w, (4, 4), 1, b, None, None, False, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    # offset 26 = (channel 1 * 5 + row 0) * 5 + column 1
    want = 1.5 * x[0, :4, :4] - 2.0 * x[1, 0:4, 1:5]
    np.testing.assert_allclose(outs[0][0], want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 7. the native kernel cache: only a library this user built is loaded
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def cache(monkeypatch, tmp_path):
    if native.compiler() is None:
        if REQUIRE_SANITIZERS:
            pytest.fail("no C compiler, and MINIEVO_REQUIRE_SANITIZERS=1 requires one")
        pytest.skip("no C compiler")
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("MINIEVO_NATIVE_CACHE", str(d))
    # built by another process: this one must not have the library mapped while a test
    # truncates or replaces it (that is the situation of a later run)
    done = subprocess.run([sys.executable, "-c", "from minievo.kernels import native; "
                           "print(native.load().path)"], cwd=ROOT, env=dict(
                               ENV, MINIEVO_NATIVE_CACHE=str(d)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    native.reset()
    yield d, Path(done.stdout.strip())
    native.reset()


def _planted_library(tmp_path: Path, marker: Path) -> bytes:
    src = tmp_path / "evil.c"
    src.write_text(f"""
#include <stdio.h>
__attribute__((constructor)) static void run(void) {{
    FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}
}}
int minievo_sparse_cpu_version(void) {{ return {native.ABI_VERSION}; }}
""")
    lib = tmp_path / "evil.so"
    subprocess.run([native.compiler(), "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    return lib.read_bytes()


CACHE_ATTACKS = ["truncated", "planted", "symlink", "world-writable", "no-record", "bad-record"]


@pytest.mark.parametrize("attack", CACHE_ATTACKS)
def test_catalogue_untrusted_cache_file_is_rebuilt_never_loaded(cache, tmp_path, capfd, attack):
    d, lib = cache
    marker = tmp_path / "constructor-ran"
    good = lib.read_bytes()
    if attack == "truncated":
        lib.write_bytes(good[: len(good) // 3])
    elif attack == "planted":
        lib.write_bytes(_planted_library(tmp_path, marker))
    elif attack == "symlink":
        evil = tmp_path / "elsewhere.so"
        evil.write_bytes(_planted_library(tmp_path, marker))
        lib.unlink()
        lib.symlink_to(evil)
    elif attack == "world-writable":
        lib.chmod(0o777)
    elif attack == "no-record":
        Path(str(lib) + ".sha256").unlink()
    else:
        Path(str(lib) + ".sha256").write_text("0" * 64)
    capfd.readouterr()
    k = native.load()
    err = capfd.readouterr().err
    assert "cannot be trusted" in err and "rebuilding" in err, err
    assert not marker.exists()
    assert k.path == lib and not lib.is_symlink()
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == Path(
        str(lib) + ".sha256").read_text().strip()
    assert stat.S_IMODE(lib.stat().st_mode) & 0o022 == 0


def test_a_killed_builds_leftovers_are_removed_by_the_next_build(cache):
    d, lib = cache
    old = d / f"{lib.name}.abc123.tmp"
    young = d / f"{lib.name}.def456.tmp"  # maybe a build under way in another process
    for p in (old, young):
        p.write_bytes(b"\0" * 100)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    lib.unlink()
    native.load()
    assert not old.exists() and young.exists()


def test_a_hanging_compiler_times_out_and_the_numpy_paths_take_over(tmp_path, monkeypatch,
                                                                     capfd):
    cc = tmp_path / "slowcc"
    cc.write_text("#!/bin/sh\nsleep 60\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("MINIEVO_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIEVO_NATIVE_BUILD_TIMEOUT", "1")
    native.reset()
    native._compiler_version.cache_clear()
    try:
        t0 = time.perf_counter()
        assert not native.available()
        assert time.perf_counter() - t0 < 10
        assert "took more than 1 s" in capfd.readouterr().err
        assert "MINIEVO_NATIVE_BUILD_TIMEOUT" in native.status()
    finally:
        native.reset()
        native._compiler_version.cache_clear()


# ----------------------------------------------------------------------------------------------
# 8. fuzzing under AddressSanitizer + UBSan (bounded: fixed seeds, a few hundred cases each)
# ----------------------------------------------------------------------------------------------
def _libasan() -> str | None:
    cc = native.compiler()
    if cc is None:
        return None
    try:
        found = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return found if found and os.path.isabs(found) and os.path.exists(found) else None


@pytest.mark.parametrize("seed", [11, 12])
def test_fuzz_loader_and_entry_points_under_sanitizers(tmp_path, seed):
    asan = _libasan()
    if asan is None:
        message = "AddressSanitizer (libasan) is not available to the C compiler here"
        if REQUIRE_SANITIZERS:
            pytest.fail(f"{message}, and MINIEVO_REQUIRE_SANITIZERS=1 requires it")
        pytest.skip(message)
    env = dict(ENV, MINIEVO_NATIVE_CACHE=str(tmp_path / "cache"), MINIEVO_NATIVE_SANITIZE="1",
               LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_native.py"), str(seed),
                           "250"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    loader, entry = summary["loader"], summary["entry_points"]
    assert loader["cases"] == 250 and loader["forward_error"] == 0
    assert loader["refused"] > 0 and loader["forward_ok"] > 0  # both kinds were reached
    assert entry["ok"] > 0 and entry["refused"] > 0
    assert summary["wrapper"]["ok"] > 0 and summary["wrapper"]["refused"] > 0
    built = list((tmp_path / "cache").glob("sparse_cpu-*.so"))
    assert built, "the fuzz run did not build the sanitized kernel"
