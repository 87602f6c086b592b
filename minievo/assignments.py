"""Coursework: student copies of minievo with the solutions cut out, and local grading.

The reference solutions of the assignment tasks live in the library itself, each between two
marker comments that name its task::

    def backward(self, gy):
        # BEGIN SOLUTION task 2.1
        ga = gy * self.b if self.needs_grad[0] else None
        ...
        # END SOLUTION

``minievo assignments new DIR`` copies the package into ``DIR`` and replaces every marked block
by a ``raise NotImplementedError("task 2.1: ... - see tutorials/...")`` at the block's
indentation; the task tests (``tests/assignments``), the tutorials and a ``pytest.ini`` come
along. ``minievo assignments grade [DIR]`` runs the task tests against ``DIR``'s copy (or, with
no ``DIR``, against the package this module belongs to) in a separate ``pytest`` process and
prints a table of points. A task scores its points when every test marked with it
(``@pytest.mark.task_2_1``) passes; a task whose tests stop at the NotImplementedError of its
own block is reported as "not implemented".

    minievo assignments list
    minievo assignments new ~/minievo-coursework
    minievo assignments grade ~/minievo-coursework
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
    """

    id: str
    title: str
    points: int
    chapter: str
    where: str

    @property
    def marker(self) -> str:
        """The pytest marker of the task's tests: ``task_2_1`` for task 2.1."""
        return "task_" + self.id.replace(".", "_")

    @property
    def message(self) -> str:
        """The NotImplementedError message of the task's blocks in a student copy."""
        return f"task {self.id}: {self.title} \u2014 see {self.chapter}"


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
         "minievo/functions/math.py: Mul.backward"),
    Task("2.2", "the backward pass of MatMul", 3, _CH[2],
         "minievo/functions/math.py: MatMul.backward"),
    Task("2.3", "sum_to, the reverse of broadcasting", 3, _CH[2],
         "minievo/autograd.py: sum_to"),
    Task("3.1", "the backward pass of the softmax cross-entropy", 3, _CH[3],
         "minievo/functions/nn.py: SoftmaxCrossEntropy.backward"),
    Task("3.2", "the SGD update with momentum, weight decay and Nesterov", 3, _CH[3],
         "minievo/optim.py: SGD._update"),
    Task("4.1", "im2col, the patches of an image as matrix rows", 5, _CH[4],
         "minievo/functions/conv.py: im2col"),
    Task("4.2", "col2im, the adjoint of im2col", 4, _CH[4],
         "minievo/functions/conv.py: col2im"),
    Task("5.1", "the cluster strength A_c at each granularity", 2, _CH[5],
         "minievo/evolution/encoding.py: cluster_strength"),
    Task("5.2", "the synapse and cluster probability exp(s / Z) - 1", 3, _CH[5],
         "minievo/evolution/encoding.py: _probability"),
    Task("6.1", "sampling the offspring mask of one layer", 4, _CH[6],
         "minievo/evolution/synthesis.py: sample_layer_mask"),
    Task("6.2", "the expected number of offspring synapses", 3, _CH[6],
         "minievo/evolution/environment.py: expected_offspring_synapses"),
    Task("7.1", "compaction: the CSR list of live kernels", 5, _CH[7],
         "minievo/sparse/reference.py: kernel_csr"),
)

TASKS_BY_ID: dict[str, Task] = {t.id: t for t in TASKS}

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#[ \t]*BEGIN SOLUTION(?:[ \t]+task[ \t]+(?P<task>\S+))?"
                    r"[ \t]*$")
_END = re.compile(r"^[ \t]*#[ \t]*END SOLUTION[ \t]*$")

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


def stub_lines(task: Task, indent: str) -> list[str]:
    """What replaces a solution block in a student copy."""
    return [
        f"{indent}# TODO task {task.id} ({task.points} points): {task.title}.",
        f"{indent}# Read {task.chapter},",
        f"{indent}# replace this raise by your code, then run: minievo assignments grade .",
        f"{indent}raise NotImplementedError({json.dumps(task.message, ensure_ascii=False)})",
    ]


def strip_solutions(text: str, path: str = "<text>") -> tuple[str, list[SolutionBlock]]:
    """Replace every solution block of ``text`` by its stub; returns (new text, blocks).

    The result is checked to compile, so a marker put where a ``raise`` cannot stand (outside a
    function body, say) is reported here rather than when a student imports the copy.
    """
    blocks = find_blocks(text, path)
    if not blocks:
        return text, blocks
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    previous_end = 0
    for block in blocks:
        out.extend(lines[previous_end : block.begin - 1])
        out.extend(line + "\n" for line in stub_lines(TASKS_BY_ID[block.task], block.indent))
        previous_end = block.end
    out.extend(lines[previous_end:])
    new_text = "".join(out)
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


def collect_blocks(pkg: Path | None = None) -> dict[str, list[SolutionBlock]]:
    """{task id: its blocks} over every .py file of the package (paths relative to its parent)."""
    pkg = package_dir() if pkg is None else Path(pkg)
    found: dict[str, list[SolutionBlock]] = {t.id: [] for t in TASKS}
    for path in sorted(pkg.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(pkg) == _THIS:
            continue
        rel = path.relative_to(pkg.parent).as_posix()
        for block in find_blocks(path.read_text(encoding="utf-8"), rel):
            found[block.task].append(block)
    return found


# ----------------------------------------------------------------------------------------------
# minievo assignments new
# ----------------------------------------------------------------------------------------------
def _find_tests_dir(root: Path) -> Path:
    return root / "tests" / "assignments"


def _pytest_ini() -> str:
    lines = ["[pytest]", "testpaths = tests/assignments", "markers ="]
    lines += [f"    {t.marker}: task {t.id}, {t.title} ({t.points} points)" for t in TASKS]
    return "\n".join(lines) + "\n"


def _student_readme() -> str:
    total = sum(t.points for t in TASKS)
    rows = "\n".join(f"| {t.id} | {t.title} | {t.points} | `{t.where}` | `{t.chapter}` |"
                     for t in TASKS)
    return textwrap.dedent("""\
        # minievo coursework

        This folder is a copy of minievo in which the solution of every task below was replaced
        by `raise NotImplementedError(...)`. Read the chapter, write the code where the `TODO`
        comment is, and grade your work locally:

            minievo assignments grade .            # from this folder; or give its path

        The grader runs the task tests in `tests/assignments` with pytest (`pip install pytest`)
        against the `minievo` package of this folder (it puts this folder first on
        `PYTHONPATH`). A task scores its points when all of its tests pass. To run the tests
        of one task yourself:

            PYTHONPATH=. python -m pytest tests/assignments -m task_2_1

        The tutorials run against your copy too, once the tasks they use are done:

            PYTHONPATH=. MINIEVO_FAST=1 python tutorials/02_autodiff_from_scratch.py

        | task | what | points | where | chapter |
        |---|---|---:|---|---|
        """) + rows + f"\n\nTotal: {total} points.\n"


def new_assignment(dest, force: bool = False, pkg: Path | None = None) -> dict:
    """Write a student copy into ``dest``; returns a summary dict.

    ``dest`` gets ``minievo/`` (solution blocks replaced by stubs), ``data_loaders/``,
    ``tests/assignments/``, ``tutorials/`` (when the source checkout has them), ``pytest.ini``
    and ``ASSIGNMENTS.md``.

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
    for path in sorted((dest / "minievo").rglob("*.py")):
        if path.relative_to(dest / "minievo") == _THIS:
            continue  # its docstring shows the markers; it holds no solution
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
    (dest / "pytest.ini").write_text(_pytest_ini(), encoding="utf-8")
    (dest / "ASSIGNMENTS.md").write_text(_student_readme(), encoding="utf-8")
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
        detail: the first failure: exception type and message, and the test.
    """

    id: str
    title: str
    points: int
    earned: int
    status: str
    tests: int
    passed: int
    detail: str = ""


@dataclass
class GradeReport:
    """All task results of one grading run."""

    directory: str
    minievo_file: str | None
    results: list[TaskResult] = field(default_factory=list)
    collect_errors: list[dict] = field(default_factory=list)

    @property
    def earned(self) -> int:
        return sum(r.earned for r in self.results)

    @property
    def total(self) -> int:
        return sum(r.points for r in self.results)

    def as_dict(self) -> dict:
        return {"directory": self.directory, "minievo_file": self.minievo_file,
                "earned": self.earned, "total": self.total,
                "results": [asdict(r) for r in self.results],
                "collect_errors": self.collect_errors}


_NAMED_TASK = re.compile(r"\btask (\d+\.\d+)\b")


def _classify(task: Task, records: list[tuple[str, dict]], collect_errors: list[dict]
              ) -> TaskResult:
    n = len(records)
    passed = sum(1 for _, r in records if r["outcome"] == "passed")
    result = TaskResult(task.id, task.title, task.points, 0, "passed", n, passed)
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
        named = _NAMED_TASK.search(record["error"]["message"])
        if named and named.group(1) != task.id:
            result.status = "blocked"
            result.detail = (f"stopped at task {named.group(1)}, which its tests use: "
                             f"NotImplementedError: {record['error']['message']}")
        else:
            result.status = "not implemented"
            result.detail = f"NotImplementedError: {record['error']['message']}"
        return result
    failing = [(i, r) for i, r in failures if not (r["error"] or {}).get("not_implemented")]
    nodeid, record = failing[0]
    result.status = "failed" if record["outcome"] == "failed" else record["outcome"]
    error = record["error"] or {"type": record["outcome"], "message": ""}
    message = error["message"].strip().splitlines()[0] if error["message"].strip() else ""
    result.detail = f"{error['type']}: {message[:300]} (in {nodeid.split('::')[-1]})"
    return result


def grade(directory=None, tasks: list[str] | None = None, timeout: float = 900.0,
          verbose: bool = False) -> GradeReport:
    """Run the task tests against a copy of minievo and score them.

    Args:
        directory: a student copy (a folder holding ``minievo/`` and ``tests/assignments/``);
            None grades the package this module belongs to (the reference, in a checkout).
        tasks: task ids to grade (default all).
        timeout: seconds before the pytest run is stopped.
        verbose: let pytest print its own report too.

    Raises:
        AssignmentError: no package or tests in the folder, the tests imported minievo from
            somewhere else, or the run timed out.
    """
    if directory is None:
        root = package_dir().parent
    else:
        root = Path(directory).resolve()
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
                              "installed: pip install pytest (or pip install -e '.[test]')")
    with tempfile.TemporaryDirectory(prefix="minievo-grade-") as tmp:
        Path(tmp, "_minievo_grader.py").write_text(_PLUGIN, encoding="utf-8")
        report_path = Path(tmp, "report.json")
        env = dict(os.environ)
        # The graded folder first (and the working directory, which ``python -m`` puts
        # before PYTHONPATH), so its minievo shadows any installed one.
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root), tmp] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["MINIEVO_GRADE_REPORT"] = str(report_path)
        env["MINIEVO_GRADE_MARKERS"] = json.dumps(
            [f"{t.marker}: task {t.id}, {t.title}" for t in TASKS])
        env.setdefault("MPLBACKEND", "Agg")
        cmd = [sys.executable, "-m", "pytest", str(tests), "-p", "_minievo_grader",
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
        data = json.loads(report_path.read_text())
    imported = data.get("minievo_file")
    if imported and Path(root / "minievo") not in Path(imported).resolve().parents:
        raise AssignmentError(f"the tests imported minievo from {imported}, not from {root}; "
                              "is a PYTHONPATH entry or an installed copy shadowing it?")
    report = GradeReport(str(root), imported, collect_errors=data["collect_errors"])
    for task in chosen:
        records = [(nodeid, r) for nodeid, r in data["tests"].items() if task.id in r["tasks"]]
        report.results.append(_classify(task, records, data["collect_errors"]))
    return report


def format_report(report: GradeReport) -> str:
    """The points table, then one line of detail per task that did not pass."""
    width = max(len(r.title) for r in report.results) if report.results else 10
    head = f"{'task':<5} {'title':<{width}}  {'tests':>6}  {'result':<16} {'points':>7}"
    lines = [f"grading {report.directory}", f"(minievo imported from {report.minievo_file})", "",
             head, "-" * len(head)]
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
        lines += [f"  {r.id}  {r.status}: {r.detail}" for r in details]
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
    report = grade(args.dir, tasks=args.task, timeout=args.timeout, verbose=args.verbose)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
    return 0 if report.earned == report.total else 1


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
    q.add_argument("dir", nargs="?", default=None,
                   help="the student copy (default: this installed minievo, the reference)")
    q.add_argument("--task", action="append", metavar="ID",
                   help="grade only this task (repeatable), e.g. --task 2.1")
    q.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    q.add_argument("--timeout", type=float, default=900.0,
                   help="seconds before the test run is stopped (default 900)")
    q.add_argument("-v", "--verbose", action="store_true", help="show pytest's own report")
    q.set_defaults(func=cmd_grade)


__all__ = [
    "AssignmentError", "GradeReport", "SolutionBlock", "TASKS", "TASKS_BY_ID", "Task",
    "TaskResult", "add_commands", "collect_blocks", "find_blocks", "format_report", "get_task",
    "grade", "new_assignment", "strip_solutions",
]
