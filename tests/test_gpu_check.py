"""benchmarks/gpu_check.sh: the dry run CI runs, and the reports it writes from a GPU run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minievo import backend

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

GPU_STEPS = ["train_numpy", "evolve_numpy", "tests_gpu", "bench", "memcheck", "train_cupy",
             "evolve_cupy", "racecheck", "synccheck"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    env = dict(os.environ, OUT=str(out))
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                          env=env, cwd=tmp_path_factory.mktemp("elsewhere"), timeout=300)
    return proc, out


def test_dry_run_skips_every_gpu_step_with_one_line_and_exits_0(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for step in GPU_STEPS + ["install"]:
        skips = [line for line in lines if line.startswith(f"[gpu_check] skip {step}:")]
        assert skips == [f"[gpu_check] skip {step}: dry run (--dry-run)"], step
    assert "[gpu_check] doctor: ok" in " ".join(lines)
    assert "[gpu_check] selfcheck: ok" in " ".join(lines)


def test_dry_run_leaves_a_summary_and_few_files_in_out(dry_run):
    _, out = dry_run
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bundle.tar.gz", "steps.tsv", "summary.md"]  # the device tool: <= 8
    summary = (out / "summary.md").read_text()
    assert "| doctor | ok |" in summary and "| bench | skipped: dry run (--dry-run) |" in summary
    assert "| paper-mnist gen 13 | 23.6x |" in summary  # the committed networks compact
    steps = [line.split("\t")[0] for line in (out / "steps.tsv").read_text().splitlines()]
    assert set(GPU_STEPS) <= set(steps)
    with tarfile.open(out / "bundle.tar.gz") as tar:
        names = tar.getnames()
    assert "./logs/doctor.log" in names and "./summary.md" in names


@pytest.mark.parametrize("args,message", [(["--bogus"], "unknown argument --bogus"),
                                          (["--budget", "5m"], "--budget must be a number")])
def test_bad_arguments_are_refused(args, message, tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path)), timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything ran


# ----- the reports ----------------------------------------------------------------------------


def test_pytest_counts_from_junit_and_from_the_last_line(tmp_path):
    junit = tmp_path / "r.xml"
    junit.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="1" '
                     'failures="2" skipped="3" tests="20" time="1.0"></testsuite></testsuites>')
    log = tmp_path / "r.log"
    log.write_text("....F\n= 2 failed, 15 passed, 3 skipped, 1 error in 12.30s =\n")
    expected = {"passed": 14, "failed": 2, "errors": 1, "skipped": 3}
    assert gpu_check.pytest_counts(log, junit) == expected
    assert gpu_check.pytest_counts(log, None) == {"passed": 15, "failed": 2, "errors": 1,
                                                 "skipped": 3}
    log.write_text("tests/a.py::test_x[cupy] PASSED   [ 1%]\ntests/a.py::test_y FAILED  [ 2%]\n"
                   "tests/b.py::test_z[cupy] SKIPPED (no GPU)  [ 3%]\n")  # stopped mid-run
    assert gpu_check.pytest_counts(log, None) == {"passed": 1, "failed": 1, "errors": 0,
                                                 "skipped": 1, "stopped early": True}
    log.write_text("========= ERROR SUMMARY: 0 errors\n3 passed in 2.0s\n"
                   "========= ERROR SUMMARY: 4 errors\n")
    assert gpu_check.sanitizer_errors(log) == 4
    log.write_text("========= RACECHECK SUMMARY: 5 hazards displayed (2 errors, 3 warnings)\n")
    assert gpu_check.sanitizer_errors(log) == 2
    log.write_text("3 passed in 2.0s\n")
    assert gpu_check.sanitizer_errors(log) is None


def _run_folder(root: Path, name: str, masks: dict, accuracy: float):
    run = root / f"evolve_{name}"
    for g, mask in masks.items():
        d = run / f"gen_{g:03d}"
        d.mkdir(parents=True)
        np.savez(d / "model.npz", **{"0.weight": mask * 0.5, "0.mask": mask})
    rows = ["generation,synapses,test_accuracy,train_seconds"]
    rows += [f"{g},{int(m.sum())},{accuracy},1.5" for g, m in masks.items()]
    (run / "table.csv").write_text("\n".join(rows) + "\n")


def test_evolve_report_compares_the_masks_generation_by_generation(tmp_path):
    rng = np.random.default_rng(0)
    gen0 = np.ones((6, 5), np.float32)
    gen1 = (rng.random((6, 5)) < 0.5).astype(np.float32)
    gen2 = (rng.random((6, 5)) < 0.3).astype(np.float32)
    flipped = gen2.copy()
    flipped[0, :3] = 1 - flipped[0, :3]
    _run_folder(tmp_path, "numpy", {0: gen0, 1: gen1, 2: gen2}, 0.9)
    _run_folder(tmp_path, "cupy", {0: gen0, 1: gen1, 2: flipped}, 0.91)
    gpu_check.main(["evolve", "--out", str(tmp_path)])
    text = (tmp_path / "sections" / "50_evolve.md").read_text()
    assert "**Generation 1 masks: EQUAL.**" in text
    assert "| 2 |" in text and "3 of 30" in text and "| 1 |" in text and "0 of 30" in text
    assert "largest weight difference between the backends 0." in text


def test_evolve_report_says_when_generation_1_differs_or_a_run_is_missing(tmp_path):
    a = np.ones((4, 4), np.float32)
    b = a.copy()
    b[1, 1] = 0
    _run_folder(tmp_path, "numpy", {0: a, 1: a}, 0.9)
    gpu_check.main(["evolve", "--out", str(tmp_path)])
    assert "no finished table for cupy" in (tmp_path / "sections" / "50_evolve.md").read_text()
    _run_folder(tmp_path, "cupy", {0: a, 1: b}, 0.9)
    gpu_check.main(["evolve", "--out", str(tmp_path)])
    assert "NOT EQUAL (1 differ)" in (tmp_path / "sections" / "50_evolve.md").read_text()


def test_train_report_gives_images_per_second_and_accuracy(tmp_path):
    for name, seconds, acc in (("numpy", 30.0, 0.981), ("cupy", 4.0, 0.9805)):
        d = tmp_path / f"train_{name}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "config": {"dataset": "mnist", "limit_train": None},
            "history": [{"epoch": 1, "train_seconds": seconds, "test_accuracy": acc}]}))
    gpu_check.main(["train", "--out", str(tmp_path)])
    text = (tmp_path / "sections" / "40_train.md").read_text()
    assert "| numpy | 2,000 | 98.10% | 30.0 | mnist |" in text
    assert "| cupy | 15,000 | 98.05% | 4.0 | mnist |" in text


def test_summary_joins_header_steps_and_sections(tmp_path):
    (tmp_path / "header.md").write_text("# check\n")
    (tmp_path / "steps.tsv").write_text("bench\tok\t12\t120\tlogs/bench.log\n")
    gpu_check.section(tmp_path, "30_bench", "## bench figures")
    gpu_check.section(tmp_path, "10_first", "## first")
    gpu_check.main(["summary", "--out", str(tmp_path)])
    text = (tmp_path / "summary.md").read_text()
    assert text.index("# check") < text.index("| bench | ok | 12 | 120 |") \
        < text.index("## first") < text.index("## bench figures")


def test_bench_without_a_gpu_says_so(tmp_path, capsys):
    if backend.cupy_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["bench", "--out", str(tmp_path)]) == 2
    assert "bench: needs CuPy with a GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="no CuPy with a GPU")
def test_bench_measures_three_paths_that_agree():
    from minievo import layers as L
    from minievo import models
    from minievo.sparse.synthetic import set_random_masks

    cp = backend.xp_for("cupy")
    rng = np.random.default_rng(0)
    model = set_random_masks(models.lenet5().to("cupy"), rng, 0.1)
    x = cp.asarray(rng.standard_normal((3, 1, 28, 28)).astype(np.float32))
    row = gpu_check.measure("lenet5 10%", model, x, cp)  # raises if the outputs differ
    assert row["batch"] == 3 and row["mac_ratio"] > 3
    assert row["dense_ms"] > 0 and row["rawkernel_ms"] > 0 and row["cupyx_ms"] > 0
    conv = L.Sequential(L.Conv2d(300, 8, 1)).to("cupy")
    xc = cp.asarray(rng.standard_normal((5, 300, 4, 4)).astype(np.float32))
    assert gpu_check.measure("1x1", conv, xc, cp)["mac_ratio"] == 1.0
    text = gpu_check.layout_report(cp, rng, n=64)
    assert "NCHW vs CHWN" in text and "NF vs FN" in text
