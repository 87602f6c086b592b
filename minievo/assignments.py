"""Coursework: student copies of minievo with the solutions cut out, and grading.

The reference solutions of the assignment tasks live in the library itself, each between two
marker comments that name its task (``//`` instead of ``#`` in a ``.cu`` file)::

    def backward(self, gy):
        # BEGIN SOLUTION task 2.1
        ga = gy * self.b if self.needs_grad[0] else None
        ...
        # END SOLUTION

``minievo assignments new DIR`` (instructor) writes a standalone student package into ``DIR``:
the whole library with every marked block replaced by a stub (``raise
NotImplementedError("task 2.1: ... - see tutorials/...")``; in CUDA a ``// NOT IMPLEMENTED:``
comment that :mod:`minievo.kernels` refuses to compile), the visible task tests
(``tests/assignments``), the tutorials, ``setup.cfg``/``pyproject.toml`` so that students
install it with ``pip install -e "DIR[course]"`` into an environment of their own, and a
marker file. The hidden tests (``tests/assignments_hidden``) stay in the instructor's
checkout.

``minievo assignments grade [DIR ...]`` runs the task tests in a separate ``pytest`` process
that imports only the graded folder's ``minievo`` and prints a table of points and, for every
failing test, the case, expected and got, and the chapter section to reread. Without ``DIR``
it grades the student copy at or above the working folder, and refuses where there is none.
``--hidden`` (instructor) adds the hidden tests; ``--json PATH`` writes one JSON record per
folder. A task scores its points when every test marked with it (``@pytest.mark.task_2_1``)
passes; a task whose tests stop at its own stub is "not implemented".

    minievo assignments list
    minievo assignments new ~/minievo-coursework
    minievo assignments grade                                  # inside a student copy
    minievo assignments grade class/* --hidden --json grades.jsonl   # instructor
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minievo.experiment import UsageError


@dataclass(frozen=True)
class Task:
    """One assignment task.

    Attributes:
        id: "chapter.number", e.g. "2.1"; its tests carry the marker ``task_2_1``.
        title: what to write, in a few words.
        points: what the task is worth when all of its tests pass.
        chapter: the tutorial chapter that explains it (a path inside the repository).
        where: the file and function holding the solution block.
        section: the section of the chapter to reread when a test fails.
    """

    id: str
    title: str
    points: int
    chapter: str
    where: str
    section: str = ""

    @property
    def marker(self) -> str:
        """The pytest marker of the task's tests: ``task_2_1`` for task 2.1."""
        return "task_" + self.id.replace(".", "_")

    @property
    def message(self) -> str:
        """The NotImplementedError message of the task's blocks in a student copy."""
        return f"task {self.id}: {self.title} \u2014 see {self.chapter}"

    @property
    def reread(self) -> str:
        """Where to read again: ``chapter 2, section "3. The backward passes you will write"
        (tutorials/02_autodiff_from_scratch.py)``."""
        chapter = int(self.id.split(".")[0])
        return f'chapter {chapter}, section "{self.section}" ({self.chapter})'


_CH = {
    2: "tutorials/02_autodiff_from_scratch.py",
    3: "tutorials/03_layers_losses_optimisers.py",
    4: "tutorials/04_convolution_and_lenet5.py",
    5: "tutorials/05_genetic_encoding.py",
    6: "tutorials/06_evolutionary_synthesis.py",
    7: "tutorials/07_cluster_sparse_inference.py",
}

#: The tasks, in the order of the chapters.
TASKS: tuple[Task, ...] = (
    Task("2.1", "the backward pass of Mul", 2, _CH[2],
         "minievo/functions/math.py: Mul.backward", "3. The backward passes you will write"),
    Task("2.2", "the backward pass of MatMul", 3, _CH[2],
         "minievo/functions/math.py: MatMul.backward", "3. The backward passes you will write"),
    Task("2.3", "sum_to, the reverse of broadcasting", 3, _CH[2],
         "minievo/autograd.py: sum_to", "3. The backward passes you will write"),
    Task("3.1", "the backward pass of the softmax cross-entropy", 3, _CH[3],
         "minievo/functions/nn.py: SoftmaxCrossEntropy.backward",
         "3. The loss: softmax cross-entropy"),
    Task("3.2", "the SGD update with momentum, weight decay and Nesterov", 3, _CH[3],
         "minievo/optim.py: SGD._update", "4. Optimisers"),
    Task("4.1", "im2col, the patches of an image as matrix rows", 5, _CH[4],
         "minievo/functions/conv.py: im2col", "2. im2col: a convolution is one matrix product"),
    Task("4.2", "col2im, the adjoint of im2col", 4, _CH[4],
         "minievo/functions/conv.py: col2im", "3. The backward pass, and col2im"),
    Task("5.1", "the cluster strength A_c at each granularity", 2, _CH[5],
         "minievo/evolution/encoding.py: cluster_strength", "3. Synaptic clusters"),
    Task("5.2", "the synapse and cluster probability exp(s / Z) - 1", 3, _CH[5],
         "minievo/evolution/encoding.py: _probability", "2. Synapses: strength and probability"),
    Task("6.1", "sampling the offspring mask of one layer", 4, _CH[6],
         "minievo/evolution/synthesis.py: sample_layer_mask", "2. One generation, step by step"),
    Task("6.2", "the expected number of offspring synapses", 3, _CH[6],
         "minievo/evolution/environment.py: expected_offspring_synapses",
         "2. One generation, step by step"),
    Task("7.1", "compaction: the CSR list of live kernels", 5, _CH[7],
         "minievo/sparse/reference.py: kernel_csr", "2. The CSR list of live kernels"),
    Task("7.2", "the CUDA cluster-sparse convolution: its tile loop", 6, _CH[7],
         "minievo/kernels/sparse_conv2d.cu: cluster_sparse_conv2d_forward",
         "Your turn: the kernel's tile loop (task 7.2)"),
)

TASKS_BY_ID: dict[str, Task] = {t.id: t for t in TASKS}

# A marker is a Python comment (#) or, in a .cu file, a C++ one (//).
_BEGIN = re.compile(r"^(?P<indent>[ \t]*)(?:#|//)[ \t]*BEGIN SOLUTION"
                    r"(?:[ \t]+task[ \t]+(?P<task>\S+))?[ \t]*$")
_END = re.compile(r"^[ \t]*(?:#|//)[ \t]*END SOLUTION[ \t]*$")

#: The source files that may hold solution blocks.
_SOURCE_GLOBS = ("*.py", "*.cu")

#: Files and folders never copied into a student copy.
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.so", "*.egg-info",
                                 ".pytest_cache", "figures", "*.ipynb", "runs")


#: This module, relative to the package: skipped when looking for blocks (its docstring shows
#: what a block looks like).
_THIS = Path("assignments.py")


class AssignmentError(UsageError):
    """A problem with markers, folders or a grading run, reported as one line by the CLI."""


def get_task(task_id: str) -> Task:
    """The task with this id ("2.1"); the error lists the valid ids."""
    if task_id not in TASKS_BY_ID:
        raise AssignmentError(f"unknown task {task_id!r}; tasks are: {', '.join(TASKS_BY_ID)}")
    return TASKS_BY_ID[task_id]


# ----------------------------------------------------------------------------------------------
# Solution blocks
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SolutionBlock:
    """One marked block: lines ``begin`` .. ``end`` (1-based, markers included) of ``path``."""

    path: str
    task: str
    begin: int
    end: int
    indent: str


def find_blocks(text: str, path: str = "<text>") -> list[SolutionBlock]:
    """The solution blocks of a source text, in order.

    Raises:
        AssignmentError: for a block without a task id, an unknown task, a nested or unclosed
            block, an END without a BEGIN, or an empty block; the message gives file and line.
    """
    blocks: list[SolutionBlock] = []
    open_at: tuple[int, str, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        begin = _BEGIN.match(line)
        if begin:
            if open_at is not None:
                raise AssignmentError(f"{path}:{number}: BEGIN SOLUTION inside the block opened "
                                      f"at line {open_at[0]}")
            task = begin.group("task")
            if task is None:
                raise AssignmentError(f"{path}:{number}: BEGIN SOLUTION needs a task id, e.g. "
                                      "'# BEGIN SOLUTION task 2.1'")
            if task not in TASKS_BY_ID:
                raise AssignmentError(f"{path}:{number}: unknown task {task!r} (tasks: "
                                      f"{', '.join(TASKS_BY_ID)})")
            open_at = (number, task, begin.group("indent"))
        elif _END.match(line):
            if open_at is None:
                raise AssignmentError(f"{path}:{number}: END SOLUTION without a BEGIN SOLUTION")
            if number == open_at[0] + 1:
                raise AssignmentError(f"{path}:{open_at[0]}: empty solution block")
            blocks.append(SolutionBlock(path, open_at[1], open_at[0], number, open_at[2]))
            open_at = None
    if open_at is not None:
        raise AssignmentError(f"{path}:{open_at[0]}: BEGIN SOLUTION is never closed by "
                              "END SOLUTION")
    return blocks


def stub_lines(task: Task, indent: str, cuda: bool = False) -> list[str]:
    """What replaces a solution block in a student copy (``cuda``: in a .cu file)."""
    if cuda:
        # CUDA cannot raise; minievo.kernels refuses to compile a source holding this line
        # and raises NotImplementedError with its message instead.
        return [
            f"{indent}// TODO task {task.id} ({task.points} points): {task.title}.",
            f"{indent}// Read {task.chapter},",
            f"{indent}// replace these lines by your code, then run: minievo assignments grade",
            f"{indent}// {NOT_IMPLEMENTED_CU} {task.message}",
        ]
    return [
        f"{indent}# TODO task {task.id} ({task.points} points): {task.title}.",
        f"{indent}# Read {task.chapter},",
        f"{indent}# replace this raise by your code, then run: minievo assignments grade",
        f"{indent}raise NotImplementedError({json.dumps(task.message, ensure_ascii=False)})",
    ]


#: The line that marks an unwritten block of a .cu file (see minievo.kernels).
NOT_IMPLEMENTED_CU = "NOT IMPLEMENTED:"


def strip_solutions(text: str, path: str = "<text>") -> tuple[str, list[SolutionBlock]]:
    """Replace every solution block of ``text`` by its stub; returns (new text, blocks).

    The result of a Python file is checked to compile, so a marker put where a ``raise``
    cannot stand (outside a function body, say) is reported here rather than when a student
    imports the copy. In a ``.cu`` file the stub is comments only.
    """
    blocks = find_blocks(text, path)
    if not blocks:
        return text, blocks
    cuda = path.endswith(".cu")
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    previous_end = 0
    for block in blocks:
        out.extend(lines[previous_end : block.begin - 1])
        out.extend(line + "\n"
                   for line in stub_lines(TASKS_BY_ID[block.task], block.indent, cuda))
        previous_end = block.end
    out.extend(lines[previous_end:])
    new_text = "".join(out)
    if cuda:
        return new_text, blocks
    try:
        compile(new_text, path, "exec")
    except SyntaxError as exc:
        raise AssignmentError(f"{path}: the student version does not compile ({exc}); a "
                              "solution block must be the whole tail of a function body or "
                              "a statement list inside one") from exc
    return new_text, blocks


def package_dir() -> Path:
    """The folder of the minievo package this module belongs to."""
    return Path(__file__).resolve().parent


def _source_files(pkg: Path) -> list[Path]:
    """The files of a package that may hold solution blocks (not this module)."""
    files = {path for pattern in _SOURCE_GLOBS for path in pkg.rglob(pattern)}
    return sorted(path for path in files
                  if "__pycache__" not in path.parts and path.relative_to(pkg) != _THIS)


def collect_blocks(pkg: Path | None = None) -> dict[str, list[SolutionBlock]]:
    """{task id: its blocks} over the .py and .cu files of the package (paths relative to its
    parent)."""
    pkg = package_dir() if pkg is None else Path(pkg)
    found: dict[str, list[SolutionBlock]] = {t.id: [] for t in TASKS}
    for path in _source_files(pkg):
        rel = path.relative_to(pkg.parent).as_posix()
        for block in find_blocks(path.read_text(encoding="utf-8"), rel):
            found[block.task].append(block)
    return found


# ----------------------------------------------------------------------------------------------
# minievo assignments new
# ----------------------------------------------------------------------------------------------
def _find_tests_dir(root: Path) -> Path:
    return root / "tests" / "assignments"


def hidden_tests_dir() -> Path:
    """The hidden task tests of the checkout this module belongs to (never in a copy)."""
    return package_dir().parent / "tests" / "assignments_hidden"


#: The file that marks the root of a student copy (``grade`` without a folder looks for it).
COPY_MARKER = ".minievo-coursework"


def find_copy(start: Path | None = None) -> Path:
    """The student copy holding ``start`` (default: the working directory): the nearest folder
    at or above it with a :data:`COPY_MARKER` file.

    Raises:
        AssignmentError: there is none; the message says what to do.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in (here, *here.parents):
        if (folder / COPY_MARKER).is_file():
            return folder
    raise AssignmentError(f"no student copy in {here} or above it (no {COPY_MARKER} file); "
                          "cd into the folder made by `minievo assignments new`, or name it: "
                          "minievo assignments grade DIR")


def _pytest_ini() -> str:
    lines = ["[pytest]", "testpaths = tests/assignments", "markers ="]
    lines += [f"    {t.marker}: task {t.id}, {t.title} ({t.points} points)" for t in TASKS]
    return "\n".join(lines) + "\n"


def _student_readme() -> str:
    total = sum(t.points for t in TASKS)
    rows = "\n".join(f"| {t.id} | {t.title} | {t.points} | `{t.where}` | {t.reread} |"
                     for t in TASKS)
    return textwrap.dedent("""\
        # minievo coursework

        This folder is a complete copy of minievo in which the solution of every task below
        was replaced by a stub: `raise NotImplementedError(...)` in Python, a
        `// NOT IMPLEMENTED:` comment in the CUDA file. Install it into an environment of its
        own (not next to another minievo), from this folder:

            python -m venv .venv && . .venv/bin/activate
            pip install -e ".[course]"        # NumPy, SciPy, Matplotlib, pytest, notebooks

        Read the chapter, write the code where the `TODO` comment is, and grade your work:

            minievo assignments grade                 # from this folder (or give its path)
            minievo assignments grade --task 2.1      # one task

        The grader runs the task tests in `tests/assignments` with pytest against the
        `minievo` package of this folder and lists every failing test: the case, what was
        expected and what came back, and the section of the chapter to reread. A task scores
        its points when all of its tests pass. Your instructor may grade with more tests
        than these (hidden ones), so make the code right, not just the visible cases. Task
        7.2 (CUDA) is graded on the CPU through the emulator and needs g++.

        The tutorials run against your copy too, once the tasks they use are done:

            MINIEVO_FAST=1 python tutorials/02_autodiff_from_scratch.py

        | task | what | points | where | reread |
        |---|---|---:|---|---|
        """) + rows + f"\n\nTotal: {total} points.\n"


def _copy_package_files(root: Path, dest: Path) -> None:
    """The files that make ``dest`` pip-installable on its own: setup.cfg, pyproject.toml (from
    the checkout when it has them) and README.md (the coursework instructions)."""
    for name in ("setup.cfg", "pyproject.toml", "LICENSE"):
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    if not (dest / "setup.cfg").is_file() and not (dest / "pyproject.toml").is_file():
        (dest / "setup.cfg").write_text(textwrap.dedent("""\
            [metadata]
            name = minievo
            version = 0.0.0

            [options]
            packages = find:
            install_requires =
                numpy
                scipy
                matplotlib
            include_package_data = True

            [options.package_data]
            minievo = kernels/*.cu, kernels/*.h, kernels/*.c

            [options.extras_require]
            course =
                pytest

            [options.entry_points]
            console_scripts =
                minievo = minievo.cli:main
            """), encoding="utf-8")
    (dest / "README.md").write_text(_student_readme(), encoding="utf-8")


def new_assignment(dest, force: bool = False, pkg: Path | None = None) -> dict:
    """Write a student copy into ``dest``; returns a summary dict.

    ``dest`` becomes a standalone package: ``minievo/`` (every solution block replaced by its
    stub), ``data_loaders/``, the visible task tests ``tests/assignments/``, ``tutorials/``,
    ``setup.cfg`` and ``pyproject.toml`` (so ``pip install -e DIR`` works without the
    reference), ``pytest.ini``, ``README.md`` and ``ASSIGNMENTS.md`` (the instructions) and the
    marker file :data:`COPY_MARKER`. The hidden tests (``tests/assignments_hidden``) stay with
    the instructor.

    Raises:
        AssignmentError: ``dest`` exists and is not empty (without ``force``), a task has no
            solution block, or the markers are malformed.
    """
    pkg = package_dir() if pkg is None else Path(pkg).resolve()
    root = pkg.parent
    dest = Path(dest).resolve()
    if dest == pkg or dest in pkg.parents or pkg in dest.parents:
        raise AssignmentError(f"{dest} holds or lies inside the package being copied ({pkg}); "
                              "choose a folder outside it")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise AssignmentError(f"{dest} exists and is not empty; choose a new folder or pass "
                                  "--force to overwrite the copy there")
        for name in ("minievo", "data_loaders", "tests", "tutorials"):
            if (dest / name).is_dir():
                shutil.rmtree(dest / name)
    blocks = collect_blocks(pkg)
    missing = [t for t, b in blocks.items() if not b]
    if missing:
        raise AssignmentError(
            f"no solution block for task(s) {', '.join(missing)} in {pkg}; is this already a "
            "student copy? Run `minievo assignments new` from the reference package")
    tests = _find_tests_dir(root)
    if not tests.is_dir():
        raise AssignmentError(f"no task tests in {tests}; run from a source checkout of minievo")

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(pkg, dest / "minievo", ignore=_IGNORE)
    stubbed = 0
    for path in _source_files(dest / "minievo"):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(dest).as_posix()
        new_text, found = strip_solutions(text, rel)
        if found:
            path.write_text(new_text, encoding="utf-8")
            stubbed += len(found)
    data = root / "data_loaders"
    if data.is_dir():
        shutil.copytree(data, dest / "data_loaders", ignore=_IGNORE)
    shutil.copytree(tests, dest / "tests" / "assignments", ignore=_IGNORE)
    tutorials = root / "tutorials"
    if tutorials.is_dir():
        shutil.copytree(tutorials, dest / "tutorials", ignore=_IGNORE)
    _copy_package_files(root, dest)
    (dest / "pytest.ini").write_text(_pytest_ini(), encoding="utf-8")
    (dest / "ASSIGNMENTS.md").write_text(_student_readme(), encoding="utf-8")
    (dest / COPY_MARKER).write_text(json.dumps(
        {"tasks": [t.id for t in TASKS], "points": sum(t.points for t in TASKS)}) + "\n",
        encoding="utf-8")
    return {"dest": str(dest), "blocks": stubbed, "tasks": len(TASKS),
            "points": sum(t.points for t in TASKS)}


# ----------------------------------------------------------------------------------------------
# minievo assignments grade
# ----------------------------------------------------------------------------------------------
# The pytest plugin of a grading run. It is written to a temporary folder and loaded with
# ``-p``, so it works whatever state the graded copy is in (even one that does not import).
_PLUGIN = '''\
"""Written by minievo.assignments.grade: records each test's task markers and outcome."""
import importlib.util
import json
import os
import re
import sys

_TASK = re.compile(r"^task_(\\d+)_(\\d+)$")
_tests = {}
_collect_errors = []


def _last_line(text):
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def pytest_configure(config):
    for line in json.loads(os.environ.get("MINIEVO_GRADE_MARKERS", "[]")):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(items):
    for item in items:
        tasks = set()
        for mark in item.iter_markers():
            m = _TASK.match(mark.name)
            if m:
                tasks.add(m.group(1) + "." + m.group(2))
        _tests[item.nodeid] = {"tasks": sorted(tasks), "outcome": "not run", "error": None}


def pytest_exception_interact(node, call, report):
    record = _tests.get(node.nodeid)
    if record is None or record["error"] is not None or call.excinfo is None:
        return
    exc = call.excinfo.value
    record["error"] = {"type": type(exc).__name__, "message": str(exc)[:2000],
                       "not_implemented": isinstance(exc, NotImplementedError)}


def pytest_runtest_logreport(report):
    record = _tests.get(report.nodeid)
    if record is None:
        return
    if report.failed:
        record["outcome"] = "failed"
        record.setdefault("report", _last_line(report.longreprtext))
    elif report.skipped and record["outcome"] == "not run":
        record["outcome"] = "skipped"
    elif report.when == "call" and record["outcome"] == "not run":
        record["outcome"] = "passed"


def pytest_collectreport(report):
    if report.failed:
        text = report.longreprtext
        where = [ln.lstrip("E").strip() for ln in text.splitlines() if 'File "' in ln]
        message = _last_line(text).lstrip("E").strip()
        if where:
            message += " (" + where[-1] + ")"
        _collect_errors.append({"nodeid": report.nodeid, "message": message})


def pytest_sessionfinish(session, exitstatus):
    for record in _tests.values():
        text = record.pop("report", "")
        if record["outcome"] == "failed" and record["error"] is None:
            record["error"] = {"type": "failure", "message": text, "not_implemented": False}
    mod = sys.modules.get("minievo")
    with open(os.environ["MINIEVO_GRADE_REPORT"], "w") as f:
        json.dump({"tests": _tests, "collect_errors": _collect_errors,
                   "minievo_file": getattr(mod, "__file__", None)}, f)
'''


@dataclass
class TaskResult:
    """The grade of one task.

    Attributes:
        status: "passed", "failed", "not implemented", "blocked" (stopped at another task's
            NotImplementedError), "no tests" or "error" (the tests could not be collected).
        detail: one line: why the task did not pass.
        failures: every test of the task that did not pass, each ``{"test", "message"}``; the
            message of a task test gives the case, expected and got, and a hint.
        reread: the chapter section to read again.
    """

    id: str
    title: str
    points: int
    earned: int
    status: str
    tests: int
    passed: int
    detail: str = ""
    failures: list[dict] = field(default_factory=list)
    reread: str = ""


@dataclass
class GradeReport:
    """All task results of one grading run."""

    directory: str
    minievo_file: str | None
    results: list[TaskResult] = field(default_factory=list)
    collect_errors: list[dict] = field(default_factory=list)
    hidden: bool = False

    @property
    def earned(self) -> int:
        return sum(r.earned for r in self.results)

    @property
    def total(self) -> int:
        return sum(r.points for r in self.results)

    def as_dict(self) -> dict:
        """The machine-readable record of this copy (one line of ``--json``)."""
        return {"student": Path(self.directory).name, "directory": self.directory,
                "minievo_file": self.minievo_file, "hidden_tests": self.hidden,
                "earned": self.earned, "total": self.total,
                "results": [asdict(r) for r in self.results],
                "collect_errors": self.collect_errors}


_NAMED_TASK = re.compile(r"\btask (\d+\.\d+)\b")


def _test_name(nodeid: str) -> str:
    """``tests/assignments/test_x.py::test_y[case]`` -> ``test_y[case]`` (hidden tests are
    marked as such)."""
    name = nodeid.split("::")[-1]
    return f"{name} (hidden)" if "hidden" in nodeid.split("::")[0] else name


def _failure_message(task: Task, record: dict) -> str:
    error = record["error"] or {"type": record["outcome"], "message": ""}
    message = error["message"].strip()
    if error["type"] != "TaskFailure":
        # Not one of the tests' own checks (an exception in the code under test, say):
        # give the exception and where to read.
        first = message.splitlines()[0][:300] if message else ""
        message = f"{error['type']}: {first}\nhint: reread {task.reread}."
    return message


def _classify(task: Task, records: list[tuple[str, dict]], collect_errors: list[dict]
              ) -> TaskResult:
    n = len(records)
    passed = sum(1 for _, r in records if r["outcome"] == "passed")
    result = TaskResult(task.id, task.title, task.points, 0, "passed", n, passed,
                        reread=task.reread)
    if n == 0:
        result.status = "error" if collect_errors else "no tests"
        result.detail = (f"the tests could not be collected: {collect_errors[0]['message']}"
                         if collect_errors else f"no test is marked {task.marker}")
        return result
    if passed == n:
        result.earned = task.points
        return result
    failures = [(nodeid, r) for nodeid, r in records if r["outcome"] != "passed"]
    not_impl = [(nodeid, r) for nodeid, r in failures
                if r["error"] and r["error"].get("not_implemented")]
    if len(not_impl) == len(failures):
        nodeid, record = not_impl[0]
        others = [(m.group(1), r) for _, r in not_impl
                  if (m := _NAMED_TASK.search(r["error"]["message"])) and m.group(1) != task.id]
        if others:  # a test of this task went through another task's stub
            other, record = others[0]
            result.status = "blocked"
            result.detail = (f"stopped at task {other}, which its tests use: "
                             f"NotImplementedError: {record['error']['message']}")
        else:
            result.status = "not implemented"
            result.detail = f"NotImplementedError: {record['error']['message']}"
        return result
    failing = [(i, r) for i, r in failures if not (r["error"] or {}).get("not_implemented")]
    result.status = "failed" if any(r["outcome"] == "failed" for _, r in failing) else \
        failing[0][1]["outcome"]
    result.failures = [{"test": _test_name(nodeid), "message": _failure_message(task, r)}
                       for nodeid, r in failing]
    result.detail = (f"{len(failing)} of {n} tests failed; reread {task.reread}")
    return result


def _run_pytest(root: Path, test_dirs: list[Path], chosen: list[Task], timeout: float,
                verbose: bool, tmp: Path) -> dict:
    """Run the task tests of ``chosen`` in ``test_dirs`` against ``root``'s minievo; returns
    what the plugin recorded."""
    Path(tmp, "_minievo_grader.py").write_text(_PLUGIN, encoding="utf-8")
    report_path = Path(tmp, "report.json")
    env = dict(os.environ)
    # Only the graded folder's minievo: it comes first on the path (and is the working
    # directory, which ``python -m`` puts before PYTHONPATH), so it shadows an installed one;
    # the report checks where minievo came from.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(tmp)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["MINIEVO_GRADE_REPORT"] = str(report_path)
    env["MINIEVO_GRADE_MARKERS"] = json.dumps(
        [f"{t.marker}: task {t.id}, {t.title}" for t in TASKS])
    env.setdefault("MPLBACKEND", "Agg")
    cmd = [sys.executable, "-m", "pytest", *map(str, test_dirs), "-p", "_minievo_grader",
           "-p", "no:cacheprovider", "--rootdir", str(root),
           "-m", " or ".join(t.marker for t in chosen)]
    cmd += ["-q", "--tb=short"] if verbose else ["-q", "--tb=no", "--no-header", "-rN"]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, timeout=timeout,
                              stdout=None if verbose else subprocess.PIPE,
                              stderr=None if verbose else subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as exc:
        raise AssignmentError(f"the task tests did not finish within {timeout:.0f} s "
                              "(an endless loop?)") from exc
    if not report_path.exists():
        tail = (proc.stdout or "")[-2000:]
        raise AssignmentError(f"pytest stopped before grading (exit {proc.returncode}):\n"
                              f"{tail}")
    return json.loads(report_path.read_text())


def grade(directory=None, tasks: list[str] | None = None, timeout: float = 900.0,
          verbose: bool = False, hidden: bool = False) -> GradeReport:
    """Run the task tests against a copy of minievo and score them.

    Args:
        directory: a student copy (a folder holding ``minievo/`` and ``tests/assignments/``),
            or a source checkout; None: the student copy at or above the working directory
            (:func:`find_copy`), never the installed package.
        tasks: task ids to grade (default all).
        timeout: seconds before the pytest run is stopped.
        verbose: let pytest print its own report too.
        hidden: add the hidden tests of the instructor's checkout
            (:func:`hidden_tests_dir`), which a student copy does not have.

    Raises:
        AssignmentError: no student copy, no package or tests in the folder, no hidden tests
            here, the tests imported minievo from somewhere else, or the run timed out.
    """
    root = find_copy() if directory is None else Path(directory).resolve()
    if not (root / "minievo" / "__init__.py").is_file():
        raise AssignmentError(f"{root} holds no minievo package (minievo/__init__.py); "
                              "give the folder made by `minievo assignments new`")
    tests = _find_tests_dir(root)
    if not tests.is_dir():
        raise AssignmentError(f"no task tests in {tests}; grade a student copy or a source "
                              "checkout of minievo")
    chosen = [get_task(t) for t in tasks] if tasks else list(TASKS)
    if importlib.util.find_spec("pytest") is None:
        raise AssignmentError("grading runs the task tests with pytest, which is not "
                              "installed: pip install pytest (or pip install -e '.[course]')")
    hidden_src = hidden_tests_dir()
    if hidden and not hidden_src.is_dir():
        raise AssignmentError(f"--hidden needs the hidden tests ({hidden_src}), which only the "
                              "instructor's checkout of minievo has")
    with tempfile.TemporaryDirectory(prefix="minievo-grade-") as tmp:
        test_dirs = [tests]
        if hidden:
            # A copy outside every checkout, so that no conftest.py of the instructor's tests
            # is loaded and only the graded folder's minievo is importable.
            shutil.copytree(hidden_src, Path(tmp, "hidden"), ignore=_IGNORE)
            test_dirs.append(Path(tmp, "hidden"))
        data = _run_pytest(root, test_dirs, chosen, timeout, verbose, Path(tmp))
    imported = data.get("minievo_file")
    if imported and Path(root / "minievo") not in Path(imported).resolve().parents:
        raise AssignmentError(f"the tests imported minievo from {imported}, not from {root}; "
                              "is a PYTHONPATH entry or an installed copy shadowing it?")
    report = GradeReport(str(root), imported, collect_errors=data["collect_errors"],
                         hidden=hidden)
    for task in chosen:
        records = [(nodeid, r) for nodeid, r in data["tests"].items() if task.id in r["tasks"]]
        report.results.append(_classify(task, records, data["collect_errors"]))
    return report


def _indent(text: str, prefix: str, max_lines: int = 8) -> list[str]:
    lines = text.splitlines() or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + ["..."]
    return [prefix + line for line in lines]


def format_report(report: GradeReport) -> str:
    """The points table, then every test that did not pass, task by task: the case, expected
    and got, and the section to reread."""
    width = max(len(r.title) for r in report.results) if report.results else 10
    head = f"{'task':<5} {'title':<{width}}  {'tests':>6}  {'result':<16} {'points':>7}"
    hidden = " (with the hidden tests)" if report.hidden else ""
    lines = [f"grading {report.directory}{hidden}",
             f"(minievo imported from {report.minievo_file})", "", head, "-" * len(head)]
    for r in report.results:
        tests = f"{r.passed}/{r.tests}"
        lines.append(f"{r.id:<5} {r.title:<{width}}  {tests:>6}  {r.status:<16} "
                     f"{r.earned:>3} / {r.points:<2}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<5} {'':<{width}}  {'':>6}  {'':<16} "
                 f"{report.earned:>3} / {report.total:<2}")
    details = [r for r in report.results if r.status != "passed"]
    if details:
        lines += ["", "not passed:"]
        for r in details:
            lines.append(f"  {r.id}  {r.status}: {r.detail}")
            for failure in r.failures:
                lines.append(f"    - {failure['test']}")
                lines += _indent(failure["message"], "        ")
    return "\n".join(lines)


def format_task_list() -> str:
    width = max(len(t.title) for t in TASKS)
    lines = [f"{'task':<5} {'title':<{width}}  {'points':>6}  where"]
    for t in TASKS:
        lines.append(f"{t.id:<5} {t.title:<{width}}  {t.points:>6}  {t.where}  ({t.chapter})")
    lines.append(f"{'total':<5} {'':<{width}}  {sum(t.points for t in TASKS):>6}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    print(format_task_list())
    return 0


def cmd_new(args) -> int:
    summary = new_assignment(args.dir, force=args.force)
    print(f"wrote a student copy to {summary['dest']}: {summary['tasks']} tasks "
          f"({summary['blocks']} solution blocks replaced), {summary['points']} points.")
    print(f"Start with {Path(summary['dest']) / 'ASSIGNMENTS.md'}; grade with: "
          f"minievo assignments grade {summary['dest']}")
    return 0


def cmd_grade(args) -> int:
    folders = args.dir or [None]
    if len(set(map(str, folders))) != len(folders):
        raise AssignmentError("a folder is named twice")
    reports = [grade(folder, tasks=args.task, timeout=args.timeout, verbose=args.verbose,
                     hidden=args.hidden) for folder in folders]
    print("\n\n".join(format_report(r) for r in reports))
    if args.json:
        lines = "".join(json.dumps(r.as_dict()) + "\n" for r in reports)
        Path(args.json).write_text(lines, encoding="utf-8")
    return 0 if all(r.earned == r.total for r in reports) else 1


def add_commands(sub) -> None:
    """Add ``minievo assignments list | new DIR | grade [DIR]`` to the CLI's subparsers."""
    p = sub.add_parser("assignments", help="coursework: student copies and local grading",
                       description=__doc__.split("\n\n")[0])
    actions = p.add_subparsers(dest="action", required=True)

    q = actions.add_parser("list", help="the tasks and their points")
    q.set_defaults(func=cmd_list)

    q = actions.add_parser("new", help="write a student copy (solutions replaced by stubs)")
    q.add_argument("dir", help="a new (or empty) folder")
    q.add_argument("--force", action="store_true",
                   help="overwrite the minievo, tests and tutorials folders of a previous copy")
    q.set_defaults(func=cmd_new)

    q = actions.add_parser("grade", help="run the task tests and print the points")
    q.add_argument("dir", nargs="*", default=None,
                   help="student copies (default: the copy at or above the working folder); "
                        "several folders grade a class")
    q.add_argument("--hidden", action="store_true",
                   help="instructor: add the hidden tests of this checkout")
    q.add_argument("--task", action="append", metavar="ID",
                   help="grade only this task (repeatable), e.g. --task 2.1")
    q.add_argument("--json", metavar="PATH",
                   help="also write the results as JSON Lines: one record per folder")
    q.add_argument("--timeout", type=float, default=900.0,
                   help="seconds before the test run is stopped (default 900)")
    q.add_argument("-v", "--verbose", action="store_true", help="show pytest's own report")
    q.set_defaults(func=cmd_grade)


__all__ = [
    "AssignmentError", "GradeReport", "SolutionBlock", "TASKS", "TASKS_BY_ID", "Task",
    "TaskResult", "add_commands", "collect_blocks", "find_blocks", "format_report", "get_task",
    "COPY_MARKER", "find_copy", "grade", "hidden_tests_dir", "new_assignment",
    "strip_solutions",
]
