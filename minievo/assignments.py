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

``minievo assignments grade [DIR ...]`` grades with the verdict made outside the student's
code (:mod:`minievo.grading`): the grader's own task tests run in the grader's process, and
each task's function of the graded folder runs in a worker process of its own, with a time and
a memory limit, that receives the test inputs and sends back plain arrays. It prints a table of
points and, for every failing test, the case, expected and got, and the chapter section to
reread. Without ``DIR`` it grades the student copy at or above the working folder, and refuses
where there is none. ``--hidden`` (instructor) adds the hidden tests; ``--json PATH`` writes
one JSON record per folder, ``--gradebook CSV`` one row per student, ``--feedback-dir DIR`` one
file per student. A task scores its points when every test marked with it
(``@pytest.mark.task_2_1``) passes; a task whose tests stop at its own stub is "not
implemented"; a task whose worker loops, crashes or exits scores 0 with the reason.

    minievo assignments list
    minievo assignments new ~/minievo-coursework
    minievo assignments grade                                  # inside a student copy
    minievo assignments grade class/* --hidden --json grades.jsonl \\
        --gradebook grades.csv --feedback-dir feedback                # instructor
"""

from __future__ import annotations

import json
import os
import re
import shutil
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

        The grader runs the task tests of `tests/assignments`, each task's code of this
        folder's `minievo` in a process of its own (with a time and a memory limit: an endless
        loop costs that task only), and lists every failing test: the case, what was expected
        and what came back, and the section of the chapter to reread. A task scores its
        points when all of its tests pass. Your instructor grades with the reference's tests,
        visible and hidden (more cases than these), so make the code right, not just the
        visible cases. Task 7.2 (CUDA) is graded on the CPU through the emulator and needs
        g++. The chapters cite the method as `docs/method.md#...`: it is in `docs/`.

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


#: Files of the package that a student copy replaces whole, because they hold a near relative
#: of a task's answer outside its solution block. The accelerator's channels-last im2col/col2im
#: differ from tasks 4.1/4.2 only in the order of the columns, so in a student copy the
#: accelerator's convolution is the student's own reference convolution.
STUDENT_REPLACEMENTS = {
    "accel/conv.py": (
        '"""The accelerator\'s convolution in a student copy: your own im2col convolution.\n\n'
        "The reference package has a channels-last im2col here, close to the answers of tasks\n"
        "4.1 and 4.2, so a student copy uses :func:`minievo.functions.conv.conv2d` (your tasks)\n"
        'instead. Results are the same; only the speed differs.\n"""\n\n'
        "from minievo.functions.conv import conv2d\n\n"
        '__all__ = ["conv2d"]\n'
    ),
}


#: The pages of ``docs/`` copied into a student copy: the chapters cite them.
STUDENT_DOCS = ("method.md", "extending.md", "teaching.md")


def new_assignment(dest, force: bool = False, pkg: Path | None = None) -> dict:
    """Write a student copy into ``dest``; returns a summary dict.

    ``dest`` becomes a standalone package: ``minievo/`` (every solution block replaced by its
    stub), ``data_loaders/``, the visible task tests ``tests/assignments/``, ``tutorials/``,
    the pages the chapters cite (:data:`STUDENT_DOCS`, in ``docs/``),
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
        for name in ("minievo", "data_loaders", "tests", "tutorials", "docs"):
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
    for rel, text in STUDENT_REPLACEMENTS.items():
        (dest / "minievo" / rel).write_text(text, encoding="utf-8")
    data = root / "data_loaders"
    if data.is_dir():
        shutil.copytree(data, dest / "data_loaders", ignore=_IGNORE)
    shutil.copytree(tests, dest / "tests" / "assignments", ignore=_IGNORE)
    tutorials = root / "tutorials"
    if tutorials.is_dir():
        shutil.copytree(tutorials, dest / "tutorials", ignore=_IGNORE)
    # The pages the chapters cite (docs/method.md#..., docs/extending.md, docs/teaching.md).
    for name in STUDENT_DOCS:
        if (root / "docs" / name).is_file():
            (dest / "docs").mkdir(exist_ok=True)
            shutil.copy2(root / "docs" / name, dest / "docs" / name)
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
#: Statuses of a task whose worker was stopped (see :mod:`minievo.grading`).
STOP_STATUSES = ("timeout", "memory", "crashed", "error")


@dataclass
class TaskResult:
    """The grade of one task.

    Attributes:
        status: "passed", "failed", "not implemented", "blocked" (stopped at another task's
            NotImplementedError), "no tests", or, when the task's worker was stopped,
            "timeout", "memory", "crashed" or "error" (the package does not import, the
            folder has none...).
        detail: one line: why the task did not pass.
        failures: every test of the task that did not pass, each ``{"test", "message"}``; the
            message of a task test gives the case, expected and got, and a hint.
        reread: the chapter section to read again.
        log: for a stopped task, the end of what its worker printed (a crash's traceback).
        sanitizer: the CUDA task: "address" when AddressSanitizer checked the kernel, "none"
            when the kernel ran without it; "" when no kernel ran (and for the other tasks).
        seconds: worker time the task used.
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
    log: str = ""
    sanitizer: str = ""
    seconds: float = 0.0


@dataclass
class GradeReport:
    """All task results of one folder."""

    directory: str
    minievo_file: str | None
    results: list[TaskResult] = field(default_factory=list)
    collect_errors: list[dict] = field(default_factory=list)
    hidden: bool = False
    error: str | None = None

    @property
    def student(self) -> str:
        return Path(self.directory).name

    @property
    def earned(self) -> int:
        return sum(r.earned for r in self.results)

    @property
    def total(self) -> int:
        return sum(r.points for r in self.results)

    def as_dict(self) -> dict:
        """The machine-readable record of this copy (one line of ``--json``)."""
        return {"student": self.student, "directory": self.directory,
                "minievo_file": self.minievo_file, "hidden_tests": self.hidden,
                "earned": self.earned, "total": self.total, "error": self.error,
                "results": [asdict(r) for r in self.results],
                "collect_errors": self.collect_errors}


_NAMED_TASK = re.compile(r"\btask (\d+\.\d+)\b")

#: The longest exception text kept in a failure (a compile log, a sanitizer report).
MAX_MESSAGE = 8000


def _failure_message(task: Task, record: dict) -> str:
    error = record["error"] or {"type": record["outcome"], "message": ""}
    message = str(error["message"]).strip()
    if error["type"] != "TaskFailure":
        # Not one of the tests' own checks (an exception in the code under test, a stopped
        # worker): the whole message (a compile log, a sanitizer report) and where to read.
        message = f"{error['type']}: {message[:MAX_MESSAGE]}\nhint: reread {task.reread}."
    return message


def _classify(task: Task, records: list[dict], stopped: dict | None = None) -> TaskResult:
    """A task's result from its test records (see :class:`minievo.grading.TaskRun`)."""
    n = len(records)
    passed = sum(1 for r in records if r["outcome"] == "passed")
    result = TaskResult(task.id, task.title, task.points, 0, "passed", n, passed,
                        reread=task.reread)
    if stopped is not None:
        result.status, result.detail = stopped["status"], stopped["detail"]
        result.log = stopped.get("log", "")
        result.failures = [{"test": r["test"], "message": _failure_message(task, r)}
                           for r in records if r["outcome"] == "failed"]
        return result
    if n == 0:
        result.status, result.detail = "no tests", f"no test is marked {task.marker}"
        return result
    ran = [r for r in records if r["outcome"] != "skipped"]
    if ran and passed == len(ran):
        result.earned = task.points
        return result
    if not ran:
        result.status, result.detail = "no tests", "every test of the task was skipped"
        return result
    failures = [r for r in ran if r["outcome"] != "passed"]
    not_impl = [r for r in failures if r["error"] and r["error"].get("not_implemented")]
    if len(not_impl) == len(failures):
        record = not_impl[0]
        others = [(m.group(1), r) for r in not_impl
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
    failing = [r for r in failures if not (r["error"] or {}).get("not_implemented")]
    result.status = "failed"
    result.failures = [{"test": r["test"], "message": _failure_message(task, r)}
                       for r in failing]
    result.detail = f"{len(failing)} of {n} tests failed; reread {task.reread}"
    return result


def _error_report(root: Path, chosen: list[Task], message: str, hidden: bool) -> GradeReport:
    """The report of a folder that could not be graded at all: every task 0, with the reason."""
    report = GradeReport(str(root), None, hidden=hidden, error=message)
    for task in chosen:
        report.results.append(TaskResult(task.id, task.title, task.points, 0, "error", 0, 0,
                                         detail=message, reread=task.reread))
    return report


def visible_tests_dir() -> Path:
    """The visible task tests the grader uses: those beside its own package (the
    instructor's checkout, or the student copy the grader runs from), never the graded
    folder's, which its student may have edited."""
    return package_dir().parent / "tests" / "assignments"


def _test_files(hidden: bool) -> list[tuple[Path, bool]]:
    visible = visible_tests_dir()
    if not visible.is_dir():
        raise AssignmentError(f"no task tests in {visible}; grade from a source checkout of "
                              "minievo or from a student copy")
    files = [(p, False) for p in sorted(visible.glob("test_*.py"))]
    if hidden:
        hidden_dir = hidden_tests_dir()
        if not hidden_dir.is_dir():
            raise AssignmentError(f"--hidden needs the hidden tests ({hidden_dir}), which only "
                                  "the instructor's checkout of minievo has")
        files += [(p, True) for p in sorted(hidden_dir.glob("test_*.py"))]
    return files


def _check_sanitizer(chosen: list[Task], hidden: bool, allow_no_sanitizer: bool) -> bool:
    """Whether the CUDA task must run under AddressSanitizer; refuses when it cannot."""
    from minievo.grading import sanitizer_problem

    cuda = [t for t in chosen if t.where.split(":")[0].endswith(".cu")]
    if not cuda or not hidden or allow_no_sanitizer:
        return False
    problem = sanitizer_problem()
    if problem:
        raise AssignmentError(
            f"--hidden grades task {cuda[0].id} (CUDA) under AddressSanitizer, which does not "
            f"work here: {problem}; fix that, or pass --allow-no-sanitizer to grade the kernel "
            "without it (an out-of-bounds read then goes unseen)")
    return True


def grade(directory=None, tasks: list[str] | None = None, timeout: float = 300.0,
          verbose: bool = False, hidden: bool = False, memory_mb: int = 2048,
          submission_timeout: float = 1800.0, allow_no_sanitizer: bool = False) -> GradeReport:
    """Grade a copy of minievo: every task's tests, the student's code in worker processes.

    The tests are the grader's (:func:`visible_tests_dir`, and with ``hidden`` the
    instructor's); they run in this process against this process's minievo, with each task's
    function sent to a worker that imports the graded folder's package (see
    :mod:`minievo.grading`). Nothing of the graded folder is imported here.

    Args:
        directory: a student copy (a folder holding ``minievo/``), or a source checkout; None:
            the student copy at or above the working directory (:func:`find_copy`), never the
            installed package.
        tasks: task ids to grade (default all).
        timeout: seconds of worker time per task (its start, imports and calls).
        verbose: print every test's outcome and the student's tracebacks to stderr.
        hidden: add the hidden tests of the instructor's checkout (:func:`hidden_tests_dir`),
            which a student copy does not have; then the CUDA task must run under
            AddressSanitizer unless ``allow_no_sanitizer``.
        memory_mb: memory limit of each task's worker, in MB.
        submission_timeout: seconds of worker time for all tasks of the folder.
        allow_no_sanitizer: with ``hidden``, grade the CUDA task even where AddressSanitizer
            does not work.

    Raises:
        AssignmentError: no student copy, no package in the folder, no tests beside the
            grader, no hidden tests here, AddressSanitizer unavailable (see above), or a bad
            limit.
    """
    from minievo.grading import Limits, collect, grade_folder

    root = find_copy() if directory is None else Path(directory).resolve()
    if not (root / "minievo" / "__init__.py").is_file():
        raise AssignmentError(f"{root} holds no minievo package (minievo/__init__.py); "
                              "give the folder made by `minievo assignments new`")
    chosen = [get_task(t) for t in tasks] if tasks else list(TASKS)
    try:
        limits = Limits(task_s=timeout, submission_s=submission_timeout,
                        memory_mb=memory_mb).check()
    except ValueError as exc:
        raise AssignmentError(str(exc)) from None
    required = _check_sanitizer(chosen, hidden, allow_no_sanitizer)
    cases, modules = collect(_test_files(hidden))
    # --allow-no-sanitizer is the instructor's explicit word: the task tests' own switch for a
    # test suite that must have the sanitizers (MINIEVO_REQUIRE_SANITIZERS, set by CI) does
    # not overrule it while this grading runs.
    saved = os.environ.pop("MINIEVO_REQUIRE_SANITIZERS", None) if allow_no_sanitizer else None
    try:
        runs = grade_folder(root, chosen, cases, modules, limits, sanitize_required=required,
                            verbose=verbose)
    finally:
        if saved is not None:
            os.environ["MINIEVO_REQUIRE_SANITIZERS"] = saved
    imported = next((r.minievo_file for r in runs if r.minievo_file), None)
    report = GradeReport(str(root), imported, hidden=hidden)
    problems = [r for r in runs if r.package_problem and r.stopped]
    if problems:
        report.error = problems[0].stopped["detail"]
    for task, run in zip(chosen, runs):
        result = _classify(task, run.tests, run.stopped)
        result.sanitizer, result.seconds = run.sanitizer, round(run.seconds, 3)
        report.results.append(result)
    return report


def _indent(text: str, prefix: str, max_lines: int | None = 60) -> list[str]:
    lines = text.splitlines() or [""]
    if max_lines is not None and len(lines) > max_lines:
        more = len(lines) - max_lines + 1
        lines = lines[: max_lines - 1] + [f"... ({more} more lines: see --feedback-dir or "
                                          "--json)"]
    return [prefix + line for line in lines]


def format_report(report: GradeReport, max_lines: int | None = 60) -> str:
    """The points table, then every task that did not pass with each failing test: the case,
    expected and got, and the section to reread (``max_lines`` per message; None: all)."""
    width = max(len(r.title) for r in report.results) if report.results else 10
    head = f"{'task':<5} {'title':<{width}}  {'tests':>6}  {'result':<16} {'points':>7}"
    hidden = " (with the hidden tests)" if report.hidden else ""
    lines = [f"grading {report.directory}{hidden}"]
    lines.append(f"(minievo imported from {report.minievo_file})" if report.minievo_file
                 else "(the folder's minievo was not imported)")
    if report.error:
        lines.append(f"not graded: {report.error}")
    lines += ["", head, "-" * len(head)]
    for r in report.results:
        tests = f"{r.passed}/{r.tests}"
        lines.append(f"{r.id:<5} {r.title:<{width}}  {tests:>6}  {r.status:<16} "
                     f"{r.earned:>3} / {r.points:<2}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<5} {'':<{width}}  {'':>6}  {'':<16} "
                 f"{report.earned:>3} / {report.total:<2}")
    for r in (r for r in report.results if r.sanitizer):
        state = "on" if r.sanitizer == "address" else "OFF (out-of-bounds reads go unseen)"
        lines.append(f"task {r.id}: the kernel ran in the CPU emulator, AddressSanitizer {state}")
    details = [r for r in report.results if r.status != "passed"]
    if details:
        lines += ["", "not passed:"]
        for r in details:
            lines.append(f"  {r.id}  {r.status}: {r.detail}")
            for failure in r.failures:
                lines.append(f"    - {failure['test']}")
                lines += _indent(failure["message"], "        ", max_lines)
            if r.log:
                lines.append("    the worker's last output:")
                lines += _indent(r.log, "        ", max_lines)
    return "\n".join(lines)


def write_gradebook(path, reports: list[GradeReport]) -> None:
    """A CSV gradebook: one row per student, one column per task (its points), the total."""
    import csv

    tasks = [r.id for r in reports[0].results] if reports else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["student", *tasks, "total", "out of", "note"])
        for report in reports:
            earned = {r.id: r.earned for r in report.results}
            stopped = [f"{r.id} {r.status}" for r in report.results if r.status in STOP_STATUSES]
            note = report.error or "; ".join(stopped)
            out.writerow([report.student, *(earned.get(t, 0) for t in tasks), report.earned,
                          report.total, note])


def write_feedback(folder, reports: list[GradeReport]) -> list[Path]:
    """One feedback file per student, ``FOLDER/<student>.txt``: the report with every message
    in full (compile logs and sanitizer reports included)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for report in reports:
        path = folder / f"{report.student}.txt"
        path.write_text(format_report(report, max_lines=None) + "\n", encoding="utf-8")
        written.append(path)
    return written


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
    names = [Path(f).resolve().name for f in folders if f is not None]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AssignmentError(f"two folders are named {twice[0]!r}: the gradebook and the "
                              "feedback files name each student by the folder's name")
    options = dict(tasks=args.task, timeout=args.timeout, verbose=args.verbose,
                   hidden=args.hidden, memory_mb=args.memory,
                   submission_timeout=args.submission_timeout,
                   allow_no_sanitizer=args.allow_no_sanitizer)
    # A class (several folders, or a gradebook asked for): a folder that cannot be graded is
    # recorded with its reason, and the others are graded.
    klass = len(folders) > 1 or bool(args.gradebook) or bool(args.feedback_dir)
    if klass:
        chosen = [get_task(t) for t in args.task] if args.task else list(TASKS)
        _check_sanitizer(chosen, args.hidden, args.allow_no_sanitizer)
    reports = []
    for folder in folders:
        try:
            reports.append(grade(folder, **options))
        except AssignmentError as exc:
            if not klass or folder is None or "holds no minievo package" not in str(exc):
                raise
            reports.append(_error_report(Path(folder).resolve(), chosen, str(exc), args.hidden))
        print(format_report(reports[-1]) + ("\n" if len(folders) > 1 else ""), flush=True)
    if args.json:
        lines = "".join(json.dumps(r.as_dict()) + "\n" for r in reports)
        Path(args.json).write_text(lines, encoding="utf-8")
    if args.gradebook:
        write_gradebook(args.gradebook, reports)
    if args.feedback_dir:
        write_feedback(args.feedback_dir, reports)
    return 0 if all(r.earned == r.total and not r.error for r in reports) else 1


def _positive(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 256:
        raise argparse.ArgumentTypeError(f"expected at least 256 (MB), got {text!r}")
    return value


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
    q.add_argument("--gradebook", metavar="CSV",
                   help="also write a gradebook: one row per student, one column per task, "
                        "the total")
    q.add_argument("--feedback-dir", metavar="DIR",
                   help="also write one feedback file per student, DIR/<folder name>.txt")
    q.add_argument("--timeout", type=_positive, default=300.0, metavar="S",
                   help="seconds each task's worker may use (default 300)")
    q.add_argument("--submission-timeout", type=_positive, default=1800.0, metavar="S",
                   help="seconds all tasks of one folder may use (default 1800)")
    q.add_argument("--memory", type=_positive_int, default=2048, metavar="MB",
                   help="memory limit of each task's worker (default 2048)")
    q.add_argument("--allow-no-sanitizer", action="store_true",
                   help="with --hidden: grade the CUDA task even where AddressSanitizer does "
                        "not work (otherwise the run is refused)")
    q.add_argument("-v", "--verbose", action="store_true",
                   help="print every test's outcome and the student's tracebacks")
    q.set_defaults(func=cmd_grade)


__all__ = [
    "AssignmentError", "GradeReport", "SolutionBlock", "TASKS", "TASKS_BY_ID", "Task",
    "TaskResult", "add_commands", "collect_blocks", "find_blocks", "format_report", "get_task",
    "COPY_MARKER", "find_copy", "grade", "hidden_tests_dir", "new_assignment",
    "strip_solutions",
]
