"""The BLAS kernels and the CPU in a run's config.json, and the resume check on them.

OpenBLAS picks its kernels by CPU (Haswell, SkylakeX, ...), and two kernel sets round matrix
products differently, so a run resumed under other kernels does not repeat an uninterrupted
one. ``numerics_settings()`` records the library, its version and kernel architecture, the
threads it runs and the CPU model; a resume under another library, version or architecture
warns (``--strict-numerics`` refuses), another CPU with the same kernels stays silent, and a
run recorded before the kernels were (or with threadpoolctl missing) resumes silently.

The runs are `minievo train` on 256 synthetic digits for one epoch, called in-process as
tests/test_cli.py does for its error cases; one end-to-end check forces real kernels with
``OPENBLAS_CORETYPE`` in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import one_line_error, run_main

from minievo import backend, experiment
from minievo.cli import main
from minievo.runlock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--dataset", "synthetic-digits", "--limit-train", "256", "--epochs", "1",
         "--no-progress"]
NEW_KEYS = ("blas_library", "blas_version", "blas_architecture", "blas_num_threads", "cpu")


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    with backend.using_backend("numpy"):
        assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def doctored(train_run, tmp_path, monkeypatch):
    """A copy of the finished run and a function that edits its recorded numerics."""
    monkeypatch.delenv("MINIEVO_STRICT_NUMERICS", raising=False)
    out = tmp_path / "run"
    shutil.copytree(train_run, out)

    def edit(change):
        path = out / "config.json"
        record = json.loads(path.read_text())
        change(record["numerics"])
        path.write_text(json.dumps(record))

    return out, edit


def snapshot(folder: Path) -> dict:
    """The run's files (the run lock, which names its latest holder, aside)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != LOCK_NAME}


def _numpys_blas() -> dict:
    """threadpoolctl's entry for NumPy's own BLAS, read here independently of minievo."""
    from threadpoolctl import threadpool_info

    libs = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert libs, "no BLAS loaded"
    return next((lib for lib in libs if "numpy" in lib["filepath"].lower()), libs[0])


# ----------------------------------------------------------------------------------------------
# the record
# ----------------------------------------------------------------------------------------------
def test_the_record_names_the_kernels_the_threads_and_the_cpu(train_run):
    recorded = json.loads((train_run / "config.json").read_text())["numerics"]
    assert set(recorded) >= {"accel", "sparse_training", "native", "blas_threads", *NEW_KEYS}
    lib = _numpys_blas()
    assert recorded["blas_library"] == lib["internal_api"]
    assert recorded["blas_version"] == lib["version"]
    assert recorded["blas_architecture"] == (lib.get("architecture") or "unknown")
    assert recorded["blas_num_threads"] == lib["num_threads"] >= 1
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (cpuinfo.read_text(errors="replace").splitlines() if cpuinfo.exists() else [])
             if line.split(":", 1)[0].strip() == "model name"]
    if names:
        assert recorded["cpu"] == names[0]
    assert isinstance(recorded["cpu"], str) and recorded["cpu"]


def test_the_record_is_unknown_without_threadpoolctl_and_never_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    settings = experiment.numerics_settings()
    assert {k: settings[k] for k in NEW_KEYS[:4]} == dict.fromkeys(NEW_KEYS[:4], "unknown")
    monkeypatch.undo()

    import threadpoolctl

    def broken():
        raise RuntimeError("dlopen failed")

    monkeypatch.setattr(threadpoolctl, "threadpool_info", broken)
    assert experiment.blas_kernels() == dict.fromkeys(NEW_KEYS[:4], "unknown")
    # a library threadpoolctl knows only in part (MKL reports no architecture)
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [
        {"user_api": "openmp", "internal_api": "openmp", "num_threads": 8, "filepath": "x"},
        {"user_api": "blas", "internal_api": "mkl", "version": "2024.1", "num_threads": 4,
         "filepath": "/opt/libmkl_rt.so"}])
    assert experiment.blas_kernels() == {"blas_library": "mkl", "blas_version": "2024.1",
                                         "blas_architecture": "unknown", "blas_num_threads": 4}


def test_numpys_own_blas_is_recorded_when_scipy_loads_another(monkeypatch):
    import threadpoolctl

    scipy_lib = {"user_api": "blas", "internal_api": "openblas", "version": "0.3.21",
                 "architecture": "Zen", "num_threads": 2,
                 "filepath": "/site-packages/scipy.libs/libscipy_openblas.so"}
    numpy_lib = {"user_api": "blas", "internal_api": "openblas", "version": "0.3.31",
                 "architecture": "Haswell", "num_threads": 1,
                 "filepath": "/site-packages/numpy.libs/libscipy_openblas64_.so"}
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [scipy_lib, numpy_lib])
    assert experiment.blas_kernels() == {"blas_library": "openblas", "blas_version": "0.3.31",
                                         "blas_architecture": "Haswell", "blas_num_threads": 1}


def test_the_cpu_model_falls_back_to_the_platform(monkeypatch):
    import platform

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(experiment, "open", no_proc, raising=False)
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert experiment.cpu_model() == "arm"
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert experiment.cpu_model() == "aarch64"


# ----------------------------------------------------------------------------------------------
# the check on resume
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,other", [("blas_architecture", "SkylakeX"),
                                       ("blas_version", "0.3.2"),
                                       ("blas_library", "mkl"),
                                       ("numpy_simd", "X86_V3 X86_V4 AVX512_ICL")])
def test_a_resume_under_other_kernels_warns_and_strict_refuses(doctored, capsys, monkeypatch,
                                                               key, other):
    out, edit = doctored
    now = experiment.numerics_settings()[key]
    edit(lambda n: n.__setitem__(key, other))
    before = snapshot(out)
    status, _, err = run_main(capsys, *TRAIN, "--strict-numerics", "--out", str(out))
    one_line_error(status, err, f"{key} {other!r} -> {now!r}", "--strict-numerics")
    assert snapshot(out) == before
    monkeypatch.setenv("MINIEVO_STRICT_NUMERICS", "1")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    one_line_error(status, err, f"{key} {other!r} -> {now!r}")
    monkeypatch.delenv("MINIEVO_STRICT_NUMERICS")
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    warnings = [line for line in err.splitlines() if line.startswith("minievo: warning:")]
    assert status == 0 and len(warnings) == 1, err
    assert f"{key} {other!r} -> {now!r}" in warnings[0]
    assert "on CPU" not in warnings[0]  # the same CPU is not named as a difference


def test_the_warning_names_the_cpu_when_the_kernels_and_the_cpu_differ(doctored, capsys):
    out, edit = doctored

    def change(n):
        n["blas_architecture"], n["cpu"] = "SkylakeX", "Intel(R) Xeon(R) Gold 6248"

    edit(change)
    status, _, err = run_main(capsys, *TRAIN, "--out", str(out))
    assert status == 0 and "blas_architecture 'SkylakeX' ->" in err, err
    assert "on CPU 'Intel(R) Xeon(R) Gold 6248' -> " in err


def test_another_cpu_or_thread_count_with_the_same_kernels_stays_silent(doctored, capsys):
    out, edit = doctored

    def change(n):
        n["cpu"], n["blas_num_threads"] = "Some Other CPU @ 9.9GHz", 96

    edit(change)
    status, _, err = run_main(capsys, *TRAIN, "--strict-numerics", "--out", str(out))
    assert status == 0 and "warning" not in err and "error" not in err, err


@pytest.mark.parametrize("record", ["without the new keys", "kernels unknown", "no numerics"])
def test_a_run_recorded_before_the_kernels_resumes_silently(doctored, capsys, record):
    out, edit = doctored
    if record == "without the new keys":
        edit(lambda n: [n.pop(k) for k in NEW_KEYS])
    elif record == "kernels unknown":  # started without threadpoolctl
        edit(lambda n: n.update(dict.fromkeys(NEW_KEYS[:4], "unknown")))
    else:
        path = out / "config.json"
        old = json.loads(path.read_text())
        path.write_text(json.dumps({"kind": old["kind"], "config": old["config"]}))
    status, stdout, err = run_main(capsys, *TRAIN, "--strict-numerics", "--out", str(out))
    assert status == 0 and "warning" not in err and "error" not in err, err
    assert "test accuracy" in stdout
    # the settings recorded before the kernels are still compared
    if record == "without the new keys":
        edit(lambda n: n.__setitem__("native", not n["native"]))
        status, _, err = run_main(capsys, *TRAIN, "--strict-numerics", "--out", str(out))
        one_line_error(status, err, "native", "--strict-numerics")


# ----------------------------------------------------------------------------------------------
# end to end: real kernels forced by OPENBLAS_CORETYPE
# ----------------------------------------------------------------------------------------------
def _env(coretype: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MINIEVO_STRICT_NUMERICS", "MINIEVO_NATIVE", "MINIEVO_SPARSE_TRAINING")}
    env.update(OPENBLAS_CORETYPE=coretype, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _architecture(coretype: str) -> str | None:
    """The kernels OpenBLAS runs with OPENBLAS_CORETYPE=coretype, or None when they crash."""
    probe = ("import numpy as np; from minievo.experiment import blas_kernels; "
             "np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32); "
             "print(blas_kernels()['blas_architecture'])")
    result = subprocess.run([sys.executable, "-c", probe], env=_env(coretype), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def test_a_resume_under_really_other_kernels_warns(tmp_path):
    first, second = "Sandybridge", "Haswell"  # AVX and AVX2 kernels
    if _architecture(first) != first or _architecture(second) != second:
        pytest.skip(f"OpenBLAS here cannot run both {first} and {second} kernels")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "minievo.cli", *TRAIN, "--out", str(out)]
    run = subprocess.run(cmd, env=_env(first), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "config.json").read_text())["numerics"]["blas_architecture"] \
        == first
    again = subprocess.run(cmd + ["--strict-numerics"], env=_env(second), cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert f"blas_architecture {first!r} -> {second!r}" in again.stderr, again.stderr
    same = subprocess.run(cmd + ["--strict-numerics"], env=_env(first), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr


# ----------------------------------------------------------------------------------------------
# The warning on a busy machine: threaded BLAS beside busy processes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("load", "cores", "threads", "warns"), [
    (2.0, 2, 2, True),    # every core already busy
    (7.5, 2, 2, True),
    (1.9, 2, 2, False),   # a core is free
    (7.5, 2, 1, False),   # one BLAS thread: nothing to spin
    (3.0, 4, 4, False),
    (4.0, 4, 4, True),
])
def test_the_busy_warning_needs_threaded_blas_and_every_core_busy(load, cores, threads, warns):
    text = experiment.busy_machine_warning(load=load, cores=cores, blas_threads=threads)
    if not warns:
        assert text is None
        return
    assert "\n" not in text
    assert f"load {load:.1f} on {cores} cores" in text
    assert f"BLAS runs {threads} threads" in text
    assert "OPENBLAS_NUM_THREADS=1" in text


def test_the_busy_warning_reads_the_load_the_cores_and_the_blas_threads(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 1.0, 1.0))
    monkeypatch.setattr(experiment, "usable_cores", lambda: 2)
    monkeypatch.setattr(experiment, "blas_kernels", lambda: {"blas_num_threads": 2})
    assert "load 5.0 on 2 cores" in experiment.busy_machine_warning()
    # threadpoolctl missing: the threads are unknown, and no guess is printed
    monkeypatch.setattr(experiment, "blas_kernels",
                        lambda: {"blas_num_threads": experiment.UNKNOWN})
    assert experiment.busy_machine_warning() is None

    def no_load():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", no_load)
    monkeypatch.setattr(experiment, "blas_kernels", lambda: {"blas_num_threads": 2})
    assert experiment.busy_machine_warning() is None


def test_the_usable_cores_follow_the_affinity():
    cores = experiment.usable_cores()
    assert cores >= 1
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))


@pytest.fixture
def busy(monkeypatch):
    """A machine whose every core is busy, with NumPy's BLAS on 4 threads."""
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(experiment, "usable_cores", lambda: 2)
    monkeypatch.setattr(experiment, "blas_kernels", lambda: {"blas_num_threads": 4})


def test_a_command_that_trains_warns_once_on_a_busy_machine(busy, tmp_path, capsys):
    status, _, err = run_main(capsys, *TRAIN, "--out", tmp_path / "run")
    assert status == 0, err
    warnings = [line for line in err.splitlines() if "machine is busy" in line]
    assert len(warnings) == 1 and warnings[0].startswith("minievo: warning: "), err
    assert "load 9.0 on 2 cores" in warnings[0] and "BLAS runs 4 threads" in warnings[0]


def test_a_sweep_and_the_commands_that_do_not_train_stay_silent(busy, tmp_path, capsys):
    # a sweep's workers run one BLAS thread each: no warning, whatever the sweep then does
    (tmp_path / "file").write_text("not a folder")
    _, _, err = run_main(capsys, "sweep", "--out", tmp_path / "file" / "sweep", "--seeds", "0",
                         "--no-progress")
    assert "machine is busy" not in err
    status, _, err = run_main(capsys, "data", "fetch", "nonexistent")
    assert status == 2 and "machine is busy" not in err
