"""Grading that a submission cannot fake or stop (minievo.grading).

The verdict is made in the grader's process, from the grader's tests; the student's code runs
in one worker process per task, with limits. These tests attack it the ways issue 18 found
(a conftest.py that turns tests into no-ops, an atexit handler that rewrites the report, an
edited ``Check.fail``), grade a class whose submissions loop, exit and lack their package, and
check what the CUDA task's feedback shows. Short timeouts keep them quick.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minievo import assignments as A
from minievo.grading import runner, wire
from minievo.kernels import emulate

REPO = Path(__file__).resolve().parents[1]
TOTAL = sum(t.points for t in A.TASKS)


def _cli(args, cwd, timeout=900, prefix=()):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    command = [*prefix, sys.executable, "-m", "minievo.cli", "assignments", "grade", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _records(path: Path) -> dict[str, dict]:
    return {r["student"]: r for r in map(json.loads, path.read_text().splitlines())}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def blank(tmp_path_factory) -> Path:
    """A fresh student copy: every task a stub."""
    dest = tmp_path_factory.mktemp("grading") / "blank"
    A.new_assignment(dest)
    return dest


@pytest.fixture(scope="module")
def solved(blank, tmp_path_factory) -> Path:
    """The blank copy with every solution put back: the full-points submission."""
    dest = tmp_path_factory.mktemp("grading") / "full"
    shutil.copytree(blank, dest)
    for blocks in A.collect_blocks().values():
        for block in blocks:
            shutil.copy(REPO / block.path, dest / block.path)
    return dest


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _wrong_csr(folder: Path) -> Path:
    """Task 7.1 (5 points) answered with int64 indices: the submission earns 46 - 5 = 41."""
    _edit(folder / "minievo" / "sparse" / "reference.py",
          "cols.astype(np.int32), kernels", "cols.astype(np.int64), kernels")
    return folder


# ----- the three attacks of issue 18 ----------------------------------------------------------
def _attack_conftest(folder: Path) -> None:
    # Turns every collected test into a no-op, wherever pytest would look for it.
    text = ("def pytest_collection_modifyitems(items):\n"
            "    for item in items:\n"
            "        item.runtest = lambda: None\n")
    for where in (folder, folder / "tests", folder / "tests" / "assignments"):
        (where / "conftest.py").write_text(text)
    (folder / "sitecustomize.py").write_text("import builtins\nbuiltins.GRADED = 46\n")
    # ... and the copy's own task tests, replaced by tests that always pass.
    (folder / "tests" / "assignments" / "test_assignment_tasks.py").write_text(
        "import pytest\n\n" + "".join(
            f"@pytest.mark.{t.marker}\ndef test_{t.marker}():\n    pass\n\n\n"
            for t in A.TASKS))


def _attack_atexit(folder: Path) -> None:
    # Rewrites the grader's report file at exit, and prints a forged total.
    forged = {"tests": {}, "collect_errors": [], "minievo_file": str(folder / "minievo")}
    with open(folder / "minievo" / "__init__.py", "a") as f:
        f.write(
            "\nimport atexit as _atexit, json as _json, os as _os\n"
            "def _forge():\n"
            "    for _name in ('MINIEVO_GRADE_REPORT', 'MINIEVO_GRADE_JSON'):\n"
            "        _path = _os.environ.get(_name)\n"
            "        if _path:\n"
            f"            open(_path, 'w').write(_json.dumps({forged!r}))\n"
            "    print('total                46 / 46', flush=True)\n"
            "_atexit.register(_forge)\n")


def _attack_check(folder: Path) -> None:
    # The copy's own Check never fails, and its call() swallows every exception.
    path = folder / "minievo" / "feedback.py"
    _edit(path, "        raise TaskFailure(self.task, self.case, expected, got, hint)",
          "        return None")
    _edit(path, "        except (NotImplementedError, TaskFailure):\n            raise",
          "        except BaseException:\n            return None")
    _edit(path, "        if not bool(condition):", "        if False:")


ATTACKS = {"conftest": _attack_conftest, "atexit": _attack_atexit, "check": _attack_check}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_on_a_blank_copy_scores_zero(attack, blank, tmp_path):
    folder = _copy(blank, tmp_path / f"blank-{attack}")
    ATTACKS[attack](folder)
    out = tmp_path / "grades.jsonl"
    proc = _cli([str(folder), "--hidden", "--json", str(out), "--timeout", "60"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = _records(out)[folder.name]
    assert (record["earned"], record["total"]) == (0, TOTAL), proc.stdout
    assert {r["status"] for r in record["results"]} == {"not implemented"}, proc.stdout
    assert re.search(rf"^total\s+0 / {TOTAL}\s*$", proc.stdout, re.M), proc.stdout
    assert "46 / 46" not in proc.stdout


def test_all_three_attacks_on_the_41_point_code_score_41(solved, tmp_path):
    folder = _wrong_csr(_copy(solved, tmp_path / "wrong-csr"))
    for attack in ATTACKS.values():
        attack(folder)
    out, book = tmp_path / "grades.jsonl", tmp_path / "grades.csv"
    proc = _cli([str(folder), "--hidden", "--json", str(out), "--gradebook", str(book),
                 "--timeout", "120"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = _records(out)[folder.name]
    status = {r["id"]: r["status"] for r in record["results"]}
    assert record["earned"] == TOTAL - A.get_task("7.1").points == 41, proc.stdout
    assert status.pop("7.1") == "failed" and set(status.values()) == {"passed"}, proc.stdout
    failure = next(r for r in record["results"] if r["id"] == "7.1")["failures"][0]
    assert "indices.dtype = dtype('int32')" in failure["message"], failure
    assert re.search(rf"^total\s+41 / {TOTAL}\s*$", proc.stdout, re.M), proc.stdout
    rows = list(csv.DictReader(book.open()))
    assert [(r["student"], r["total"], r["7.1"]) for r in rows] == [("wrong-csr", "41", "0")]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_alone_leaves_a_wrong_answer_wrong(attack, solved, tmp_path):
    folder = _wrong_csr(_copy(solved, tmp_path / f"wrong-{attack}"))
    ATTACKS[attack](folder)
    report = A.grade(folder, tasks=["2.1", "7.1"], hidden=True, timeout=60)
    assert [(r.id, r.status, r.earned) for r in report.results] == [
        ("2.1", "passed", 2), ("7.1", "failed", 0)]


def test_a_deleted_module_is_not_replaced_by_the_graders_own(solved, tmp_path):
    # With the reference installed in editable mode, its import finder would hand a worker
    # the reference's optim.py for a copy that has none: the worker uses the standard finders
    # only, and the grader checks where every minievo module came from.
    folder = _copy(solved, tmp_path / "no-optim")
    (folder / "minievo" / "optim.py").unlink()
    report = A.grade(folder, tasks=["3.2", "2.1"], timeout=60)
    (optim, mul) = report.results
    assert (optim.status, optim.earned, mul.status) == ("error", 0, "passed")
    assert "No module named 'minievo.optim'" in optim.detail


# ----- a class that loops, exits and lacks its package ----------------------------------------
def test_a_class_of_five_gets_a_grade_each_with_the_reason_for_every_zero(blank, solved,
                                                                            tmp_path):
    klass = tmp_path / "class"
    klass.mkdir()
    _copy(blank, klass / "blank")
    _copy(solved, klass / "full")
    loop = _copy(solved, klass / "loop")
    _edit(loop / "minievo" / "autograd.py", "    # BEGIN SOLUTION task 2.3\n",
          "    # BEGIN SOLUTION task 2.3\n    while True:\n        pass\n")
    exits = _copy(solved, klass / "exit")
    _edit(exits / "minievo" / "functions" / "conv.py", "    # BEGIN SOLUTION task 4.1\n",
          "    # BEGIN SOLUTION task 4.1\n    import os\n    os._exit(0)\n")
    missing = _copy(solved, klass / "missing")
    shutil.rmtree(missing / "minievo")
    tasks = ["2.1", "2.3", "4.1", "7.1"]
    out, book, feedback = tmp_path / "class.jsonl", tmp_path / "class.csv", tmp_path / "fb"
    args = [str(klass / n) for n in ("blank", "full", "loop", "exit", "missing")]
    for t in tasks:
        args += ["--task", t]
    proc = _cli([*args, "--hidden", "--timeout", "15", "--json", str(out), "--gradebook",
                 str(book), "--feedback-dir", str(feedback)], tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    records = _records(out)
    assert list(records) == ["blank", "full", "loop", "exit", "missing"]
    status = {s: {r["id"]: (r["status"], r["earned"]) for r in rec["results"]}
              for s, rec in records.items()}
    assert set(status["blank"].values()) == {("not implemented", 0)}
    assert status["full"] == {"2.1": ("passed", 2), "2.3": ("passed", 3), "4.1": ("passed", 5),
                              "7.1": ("passed", 5)}
    # One looping task zeroes that task only.
    assert status["loop"] == {**status["full"], "2.3": ("timeout", 0)}
    assert status["exit"] == {**status["full"], "4.1": ("crashed", 0)}
    assert set(status["missing"].values()) == {("error", 0)}
    # Every zero comes with its reason.
    for student, rec in records.items():
        for r in rec["results"]:
            if r["earned"] == 0:
                assert r["detail"], (student, r)
    loop_23 = next(r for r in records["loop"]["results"] if r["id"] == "2.3")
    assert "time limit (15 s)" in loop_23["detail"] and "sum_to" in loop_23["detail"]
    exit_41 = next(r for r in records["exit"]["results"] if r["id"] == "4.1")
    assert "exited with status 0" in exit_41["detail"] and "im2col" in exit_41["detail"]
    assert "holds no minievo package" in records["missing"]["error"]
    # The gradebook: one row per student, one column per task, the total.
    rows = list(csv.DictReader(book.open()))
    assert [r["student"] for r in rows] == list(records)
    assert [int(r["total"]) for r in rows] == [0, 15, 12, 10, 0]
    assert all(list(r)[:6] == ["student", *tasks, "total"] for r in rows)
    assert "2.3 timeout" in rows[2]["note"] and "4.1 crashed" in rows[3]["note"]
    # One feedback file per student.
    assert sorted(p.name for p in feedback.iterdir()) == sorted(f"{s}.txt" for s in records)
    assert "not graded: " in (feedback / "missing.txt").read_text()
    assert "2.3  timeout: " in (feedback / "loop.txt").read_text()


def test_a_task_over_its_memory_limit_fails_with_the_limit_named(solved, tmp_path):
    folder = _copy(solved, tmp_path / "hog")
    _edit(folder / "minievo" / "sparse" / "reference.py", "    # BEGIN SOLUTION task 7.1\n",
          "    # BEGIN SOLUTION task 7.1\n    hog = np.ones(1 << 31)  # 16 GB\n")
    report = A.grade(folder, tasks=["7.1", "2.1"], timeout=60, memory_mb=1024)
    hog, fine = report.results
    assert (hog.status, hog.earned, fine.status) == ("failed", 0, "passed")
    assert "MemoryError" in hog.failures[0]["message"]
    assert "limits the memory of each task: 1024 MB" in hog.failures[0]["message"]


def test_a_package_that_exits_on_import_stops_that_student_only(solved, tmp_path):
    folder = _copy(solved, tmp_path / "exit-on-import")
    with open(folder / "minievo" / "__init__.py", "a") as f:
        f.write("\nimport os as _os\n_os._exit(3)\n")
    report = A.grade(folder, tasks=["2.1", "2.3"], timeout=60)
    assert [(r.status, r.earned) for r in report.results] == [("crashed", 0), ("crashed", 0)]
    assert "exited with status 3" in report.error and "importing" in report.error


# ----- the CUDA task: its sanitizer and its feedback ------------------------------------------
needs_gpp = pytest.mark.skipif(emulate.gpp_path() is None, reason="g++ is not installed")


@needs_gpp
def test_cuda_feedback_shows_the_compile_log_and_the_sanitizer_report_in_full(solved,
                                                                              tmp_path):
    source = "minievo/kernels/sparse_conv2d.cu"
    typo = _copy(solved, tmp_path / "typo")
    _edit(typo / source, "const int c = c_tile[s];", "const int c = c_tile[s]")
    oob = _copy(solved, tmp_path / "oob")
    _edit(oob / source, "if (ih < 0 || ih >= H) continue;", "")
    _edit(oob / source, "if (iw < 0 || iw >= W) continue;", "")
    barrier = _copy(solved, tmp_path / "barrier")
    _edit(barrier / source, "        __syncthreads();\n        if (active) {",
          "        if (active) __syncthreads();\n        if (active) {")
    feedback = tmp_path / "fb"
    proc = _cli([str(typo), str(oob), str(barrier), "--task", "7.2", "--hidden",
                 "--feedback-dir", str(feedback), "--timeout", "300"], tmp_path, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    typo_text = (feedback / "typo.txt").read_text()
    assert "g++ could not compile sparse_conv2d.cu" in typo_text
    assert re.search(r"sparse_conv2d\.cu:\d+:\d+: error: expected", typo_text)  # the log
    if "AddressSanitizer on" in proc.stdout:
        oob_text = (feedback / "oob.txt").read_text()
        assert "AddressSanitizer" in oob_text and "overflow" in oob_text, oob_text
        assert "SUMMARY" in oob_text  # the report's last line: shown in full
    barrier_text = (feedback / "barrier.txt").read_text()
    assert "divergent __syncthreads()" in barrier_text, barrier_text


@needs_gpp
def test_hidden_refuses_without_addresssanitizer_unless_allowed(tmp_path):
    # Under an address-space limit a sanitized program cannot start: the run is refused in
    # one line; with --allow-no-sanitizer it grades, and says the sanitizer was off.
    prefix = ("bash", "-c", 'ulimit -v 6000000 && exec "$@"', "limited")
    refused = _cli([str(REPO), "--hidden", "--task", "7.2"], tmp_path, prefix=prefix)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("minievo: error: --hidden grades task 7.2 (CUDA) under "
                                     "AddressSanitizer, which does not work here")
    assert len(refused.stderr.strip().splitlines()) == 1 and not refused.stdout
    allowed = _cli([str(REPO), "--hidden", "--task", "7.2", "--allow-no-sanitizer",
                    "--memory", "4096"], tmp_path, prefix=prefix)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "AddressSanitizer OFF" in allowed.stdout
    assert "AddressSanitizer on" not in allowed.stdout


def test_the_sanitizer_check_refuses_only_for_hidden_cuda_grading(monkeypatch):
    runner.sanitizer_problem.cache_clear()
    monkeypatch.setattr(emulate, "gpp_path", lambda: None)
    cuda, other = [A.get_task("7.2")], [A.get_task("2.1")]
    with pytest.raises(A.AssignmentError, match="g\\+\\+ is not installed; .*--allow-no-san"):
        A._check_sanitizer(cuda, hidden=True, allow_no_sanitizer=False)
    assert A._check_sanitizer(cuda, hidden=True, allow_no_sanitizer=True) is False
    assert A._check_sanitizer(cuda, hidden=False, allow_no_sanitizer=False) is False
    assert A._check_sanitizer(other, hidden=True, allow_no_sanitizer=False) is False
    runner.sanitizer_problem.cache_clear()


# ----- the wire: plain values only ---------------------------------------------------------------
def test_wire_round_trips_plain_values_and_keeps_their_types():
    rng = np.random.default_rng(3)
    rng.random(5)
    value = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "f": 0.1, "big": 2**100,
             "t": (np.float32(1.5), None, True, "x"), 3: [np.zeros((0, 4)), np.dtype("<f4")],
             "s": np.float64(2.0), "kind": np.float32, "rng": rng}
    back = wire.decode(wire.encode(value), build_rng=wire.make_rng)
    assert back["a"].dtype == np.int32 and back["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["f"] == 0.1 and back["big"] == 2**100 and back[3][0].shape == (0, 4)
    assert back["t"] == (1.5, None, True, "x") and type(back["t"][0]) is np.float32
    assert type(back["s"]) is np.float64 and back["kind"] is np.float32
    assert back[3][1] == np.dtype("<f4") and back["a"].flags.writeable
    assert back["rng"].random() == rng.random()


@pytest.mark.parametrize("bad", [np.array([object()]), np.array(["text"]), lambda: 1,
                                 {1, 2}])
def test_wire_refuses_what_is_not_plain(bad):
    with pytest.raises(wire.WireError, match="cannot be sent"):
        wire.encode({"x": bad})


def test_wire_refuses_bad_frames():
    good = wire.encode([np.ones(3)])
    with pytest.raises(wire.WireError, match="bad header"):
        wire.decode(good[:-1])
    forged = good.replace(b'"<f8"', b'"|O8"')
    with pytest.raises(wire.WireError, match="bad dtype|not allowed"):
        wire.decode(forged)
    deep = b'{"v":' + b"[" * 5000 + b"]" * 5000 + b',"arrays":[]}'
    frame = wire._HEADER.pack(wire.MAGIC, len(deep), 0) + deep
    with pytest.raises(wire.WireError):
        wire.decode(frame)
    r, w = os.pipe()
    try:
        os.write(w, wire._HEADER.pack(wire.MAGIC, 10**12, 0))
        with pytest.raises(wire.WireError, match="over the limit"):
            wire.recv(r, max_bytes=1 << 20)
    finally:
        os.close(r)
        os.close(w)
