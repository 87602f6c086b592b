"""Coursework tooling: solution markers, student copies and grading, in both directions.

The reference (this checkout) must score every point, hidden tests included; a fresh student
copy must import and score nothing, each task stopping at the NotImplementedError of its own
block, also when installed into a virtual environment of its own without the reference.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minievo import assignments as A

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, timeout=300):
    # This checkout on the path (as an editable install would put it): the grader must still
    # grade the copy it is given, never this reference.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    dest = tmp_path_factory.mktemp("coursework") / "copy"
    proc = _run(["-m", "minievo.cli", "assignments", "new", str(dest)], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "solution blocks replaced" in proc.stdout
    return dest


# ----- markers -------------------------------------------------------------------------------
def test_every_task_has_a_block_a_test_and_a_registered_marker():
    blocks = A.collect_blocks()
    tests = "".join(p.read_text() for p in (REPO / "tests" / "assignments").glob("test_*.py"))
    pyproject = (REPO / "pyproject.toml").read_text()
    hidden = "".join(p.read_text() for p in A.hidden_tests_dir().glob("test_*.py"))
    for task in A.TASKS:
        assert blocks[task.id], f"task {task.id} has no solution block"
        assert f"@pytest.mark.{task.marker}" in tests, f"task {task.id} has no test"
        assert f"@pytest.mark.{task.marker}" in hidden, f"task {task.id} has no hidden test"
        chapter = (REPO / task.chapter).read_text()
        assert f"# ## {task.section}" in chapter, f"task {task.id}: no section {task.section!r}"
        assert f'"{task.marker}:' in pyproject, f"marker {task.marker} is not registered"
        assert (REPO / task.chapter).is_file(), f"task {task.id} points to a missing chapter"
        assert any(b.path == task.where.split(":")[0] for b in blocks[task.id]), task.where


@pytest.mark.parametrize("text, error", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n",
     r":2: .*needs a task id"),
    ("def f():\n    # BEGIN SOLUTION task 9.9\n    return 1\n    # END SOLUTION\n",
     r":2: unknown task '9.9'"),
    ("def f():\n    # BEGIN SOLUTION task 2.1\n    # BEGIN SOLUTION task 2.2\n", r":3: .*inside"),
    ("def f():\n    # BEGIN SOLUTION task 2.1\n    return 1\n", r":2: .*never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", r":3: END SOLUTION without"),
    ("def f():\n    # BEGIN SOLUTION task 2.1\n    # END SOLUTION\n", r":2: empty"),
])
def test_malformed_markers_are_reported_with_file_and_line(text, error):
    with pytest.raises(A.AssignmentError, match="x.py" + error):
        A.find_blocks(text, "x.py")


def test_a_stub_keeps_the_indentation_and_raises_naming_the_task():
    text = ("class K:\n"
            "    def f(self, x):\n"
            "        y = x + 1\n"
            "        # BEGIN SOLUTION task 5.1\n"
            "        return y * 2\n"
            "        # END SOLUTION\n"
            "\n"
            "\n"
            "def g():\n"
            "    return 3\n")
    new, blocks = A.strip_solutions(text, "k.py")
    assert [(b.task, b.begin, b.end, b.indent) for b in blocks] == [("5.1", 4, 6, " " * 8)]
    assert "return y * 2" not in new and "SOLUTION" not in new
    assert '        raise NotImplementedError("task 5.1: ' in new
    assert new.endswith("def g():\n    return 3\n")
    namespace: dict = {}
    exec(compile(new, "k.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"^task 5\.1: .* see tutorials/05_"):
        namespace["K"]().f(1)
    assert namespace["g"]() == 3


def test_a_block_where_no_raise_can_stand_is_refused():
    text = "def f():\n# BEGIN SOLUTION task 2.1\n    return 1\n# END SOLUTION\n"
    with pytest.raises(A.AssignmentError, match="does not compile"):
        A.strip_solutions(text, "bad.py")


# ----- the reference scores every point ----------------------------------------------------------
def test_grading_the_reference_gives_full_points_with_the_hidden_tests(tmp_path):
    out = tmp_path / "grade.json"
    proc = _run(["-m", "minievo.cli", "assignments", "grade", str(REPO), "--hidden", "--json",
                 str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)  # shown in CI's log with -rA / on failure
    report = json.loads(out.read_text())
    assert report["hidden_tests"] is True
    assert Path(report["minievo_file"]).resolve().parent == REPO / "minievo"
    assert report["earned"] == report["total"] == sum(t.points for t in A.TASKS)
    for r in report["results"]:
        assert r["status"] == "passed" and r["tests"] > 0 and r["passed"] == r["tests"], r
    assert re.search(r"^total\s+(\d+) / \1\s*$", proc.stdout, re.M), proc.stdout
    assert "(with the hidden tests)" in proc.stdout


# ----- a fresh student copy scores nothing, task by task -----------------------------------------
def test_student_copy_holds_the_stubs_and_no_solution(student_copy):
    assert (student_copy / "tests" / "assignments" / "test_assignment_tasks.py").is_file()
    for name in ("pytest.ini", "ASSIGNMENTS.md", "README.md", "setup.cfg", "pyproject.toml",
                 A.COPY_MARKER, "data_loaders/__init__.py", "minievo/kernels/cuda_emu.h",
                 "docs/method.md", "minievo/grading/worker.py"):
        assert (student_copy / name).is_file(), name
    assert not (student_copy / "tests" / "assignments_hidden").exists()
    hidden_names = {p.name for p in A.hidden_tests_dir().rglob("*.py")}
    assert not {p.name for p in student_copy.rglob("*.py")} & hidden_names
    assert not list(student_copy.rglob("__pycache__"))
    assert A.collect_blocks(student_copy / "minievo") == {t.id: [] for t in A.TASKS}
    for task_id, blocks in A.collect_blocks().items():
        for block in blocks:
            reference = (REPO / block.path).read_text()
            copied = (student_copy / block.path).read_text()
            assert copied == A.strip_solutions(reference, block.path)[0]
            message = A.get_task(task_id).message
            if block.path.endswith(".cu"):
                assert f"// NOT IMPLEMENTED: {message}" in copied
            else:
                assert json.dumps(message, ensure_ascii=False) in copied
            # no line of the solution survives (its comments and blank lines aside)
            solution = reference.splitlines()[block.begin : block.end - 1]
            code = [ln.strip() for ln in solution if ln.strip()[:1] not in ("", "#", "/")]
            lines = reference.splitlines()
            outside = set(map(str.strip, lines[: block.begin - 1] + lines[block.end :]))
            copied_lines = set(map(str.strip, copied.splitlines()))
            assert [ln for ln in code if ln in copied_lines and ln not in outside] == [], block


def test_student_copy_replaces_the_near_answers_of_the_accelerator(student_copy):
    # The channels-last im2col/col2im of minievo.accel.conv would answer tasks 4.1/4.2 up to a
    # permutation of the columns: the copy's accelerator uses the student's convolution.
    reference = (REPO / "minievo" / "accel" / "conv.py").read_text()
    assert "def im2col_nhwc" in reference  # the thing being kept out
    copied = (student_copy / "minievo" / "accel" / "conv.py").read_text()
    assert copied == A.STUDENT_REPLACEMENTS["accel/conv.py"]
    assert "def " not in copied and "as_strided" not in copied and "transpose" not in copied
    env = {**os.environ, "PYTHONPATH": str(student_copy)}
    proc = subprocess.run(
        [sys.executable, "-c", "import minievo, minievo.accel.conv as c, minievo.functions.conv "
         "as f; assert c.conv2d is f.conv2d; print(minievo.__file__)"],
        cwd=student_copy, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Path(proc.stdout.strip()).resolve().parent == student_copy / "minievo"


def test_student_copy_imports(student_copy):
    # Every module that imports in the reference must import in the copy.
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import minievo\n"
        "ok = []\n"
        "for m in pkgutil.walk_packages(minievo.__path__, 'minievo.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "        ok.append(m.name)\n"
        "    except Exception:\n"
        "        pass\n"
        "print(json.dumps({'file': minievo.__file__, 'ok': sorted(ok)}))\n"
    )
    ref = _run(["-c", script], cwd=REPO)
    copy = _run(["-c", script], cwd=student_copy)
    assert ref.returncode == 0 and copy.returncode == 0, ref.stderr + copy.stderr
    ref_info, copy_info = json.loads(ref.stdout), json.loads(copy.stdout)
    assert Path(copy_info["file"]).resolve().parent == (student_copy / "minievo").resolve()
    assert set(ref_info["ok"]) <= set(copy_info["ok"])
    assert "minievo.functions.math" in copy_info["ok"]
    plain = _run(["-c", "import minievo"], cwd=student_copy)
    assert plain.returncode == 0, plain.stderr


def _assert_zero_with_not_implemented(report: dict, stdout: str, copy: Path) -> None:
    assert Path(report["minievo_file"]).resolve().parent == (copy / "minievo").resolve()
    assert report["earned"] == 0 and report["total"] == sum(t.points for t in A.TASKS)
    assert not report["collect_errors"]
    for r in report["results"]:
        assert r["status"] == "not implemented", r
        assert r["tests"] > 0 and r["passed"] == 0
        assert r["detail"].startswith(f"NotImplementedError: task {r['id']}: "), r
    for task in A.TASKS:
        assert re.search(rf"^{re.escape(task.id)}\s.*not implemented\s+0 / {task.points}",
                         stdout, re.M), stdout
    assert re.search(r"^total\s+0 / \d+", stdout, re.M)


def test_grading_a_fresh_student_copy_gives_zero_with_not_implemented_per_task(
        student_copy, tmp_path):
    # With no folder, from a sub-folder of the copy: the copy is graded, not the reference
    # (whose editable install is on this interpreter's path).
    out = tmp_path / "grade.json"
    proc = _run(["-m", "minievo.cli", "assignments", "grade", "--hidden", "--json", str(out)],
                cwd=student_copy / "tutorials")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["hidden_tests"] is True and report["student"] == student_copy.name
    _assert_zero_with_not_implemented(report, proc.stdout, student_copy)


def test_grade_without_a_folder_outside_a_copy_refuses_in_one_line(tmp_path):
    proc = _run(["-m", "minievo.cli", "assignments", "grade"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("minievo: error: no student copy in ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "grading" not in proc.stdout


def test_a_class_is_graded_into_one_json_record_per_student(student_copy, tmp_path):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    shutil.copytree(student_copy, alice)
    shutil.copytree(student_copy, bob)
    shutil.copy(REPO / "minievo" / "autograd.py", bob / "minievo" / "autograd.py")
    out = tmp_path / "class.jsonl"
    proc = _run(["-m", "minievo.cli", "assignments", "grade", str(alice), str(bob), "--task",
                 "2.3", "--task", "5.1", "--json", str(out)], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["student"] for r in records] == ["alice", "bob"]
    assert [r["earned"] for r in records] == [0, A.get_task("2.3").points]
    assert [[x["status"] for x in r["results"]] for r in records] == [
        ["not implemented", "not implemented"], ["passed", "not implemented"]]


def test_a_restored_solution_scores_its_points(student_copy, tmp_path):
    work = tmp_path / "partial"
    shutil.copytree(student_copy, work)
    shutil.copy(REPO / "minievo" / "functions" / "math.py",
                work / "minievo" / "functions" / "math.py")
    report = A.grade(work, tasks=["2.1", "2.2", "5.1"])
    status = {r.id: (r.status, r.earned) for r in report.results}
    assert status == {"2.1": ("passed", 2), "2.2": ("passed", 3), "5.1": ("not implemented", 0)}
    assert "not implemented" in A.format_report(report)


def test_a_wrong_solution_lists_every_failing_test_with_case_and_hint(student_copy, tmp_path):
    work = tmp_path / "wrong"
    shutil.copytree(student_copy, work)
    path = work / "minievo" / "functions" / "math.py"
    text = path.read_text()
    stub = json.dumps(A.get_task("2.1").message, ensure_ascii=False)
    path.write_text(text.replace(f"raise NotImplementedError({stub})",
                                 "return gy * self.a, gy * self.b", 1))
    report = A.grade(work, tasks=["2.1"], hidden=True)
    result = report.results[0]
    assert result.status == "failed" and result.earned == 0
    assert len(result.failures) == result.tests - result.passed >= 3
    for failure in result.failures:
        assert failure["message"].startswith("case: "), failure
        assert "\nexpected: " in failure["message"] and "\ngot: " in failure["message"]
        assert 'Reread chapter 2, section "3. The backward passes you will write"' in \
            failure["message"]
    assert any(f["test"].endswith("(hidden)") for f in result.failures)
    text = A.format_report(report)
    for failure in result.failures:
        assert f"    - {failure['test']}" in text


# ----- bad input -----------------------------------------------------------------------------
def test_new_refuses_a_non_empty_folder_and_the_checkout_itself(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(A.AssignmentError, match="not empty"):
        A.new_assignment(tmp_path)
    with pytest.raises(A.AssignmentError, match="inside the package"):
        A.new_assignment(REPO)


def test_grade_needs_a_folder_with_a_package(tmp_path):
    with pytest.raises(A.AssignmentError, match="holds no minievo package"):
        A.grade(tmp_path)
    with pytest.raises(A.AssignmentError, match="unknown task '8.8'"):
        A.grade(REPO, tasks=["8.8"])


def test_cli_usage_errors_are_one_line(tmp_path):
    proc = _run(["-m", "minievo.cli", "assignments", "grade", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("minievo: error: ") and "Traceback" not in proc.stderr
    listing = _run(["-m", "minievo.cli", "assignments", "list"], cwd=tmp_path)
    assert listing.returncode == 0
    for task in A.TASKS:
        assert task.id in listing.stdout


# ----- a student copy in a virtual environment of its own ---------------------------------------
def test_a_student_copy_in_its_own_venv_without_the_reference_imports_and_scores_zero(
        student_copy, tmp_path):
    """Offline: the venv gets this interpreter's site-packages (NumPy, pytest...) as plain path
    entries, and the copy the way an editable install adds it. A path entry in a .pth file does
    not run the .pth files inside that folder, so the reference's editable install there stays
    invisible. (.ci/run does the real thing online: pip install -e COPY[course] from PyPI.)"""
    import site
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    deps = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
            if Path(p).is_dir()]
    Path(purelib, "system_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = subprocess.run([str(python), "-c", "import numpy, pytest, minievo"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    if "No module named 'numpy'" in probe.stderr:
        pytest.fail("the venv does not see NumPy through system_deps.pth: " + probe.stderr)
    if probe.returncode == 0:
        pytest.skip("minievo is installed as a plain package in site-packages (not editable), "
                    "so a venv sharing those packages cannot hide it")
    assert "No module named 'minievo'" in probe.stderr, probe.stderr

    copy = tmp_path / "alice"
    shutil.copytree(student_copy, copy)
    Path(purelib, "minievo_copy.pth").write_text(str(copy) + "\n")
    where = subprocess.run([str(python), "-c", "import minievo; print(minievo.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve().parent == (copy / "minievo").resolve()

    out = tmp_path / "grade.json"
    proc = subprocess.run([str(python), "-m", "minievo.cli", "assignments", "grade", "--json",
                           str(out)], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["hidden_tests"] is False
    _assert_zero_with_not_implemented(report, proc.stdout, copy)
    refused = subprocess.run([str(python), "-m", "minievo.cli", "assignments", "grade",
                              "--hidden"], cwd=copy, env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.startswith("minievo: error: --hidden needs the hidden tests")
