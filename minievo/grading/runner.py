"""The grader's side of a grading run: workers with limits, remote task functions, the tests.

For every student and every task, :func:`grade_folder` starts a worker process
(:mod:`minievo.grading.worker`) with the task's time and memory limits, then runs the task's
tests (the instructor's files, loaded once into this process) against this process's own
``minievo``, with the task's function replaced by a *remote* one: a stand-in that sends its
inputs to the worker, where the student's function computes, and takes back the outputs. The
checks of the tests (:class:`minievo.feedback.Check`) and every expected value stay here; this
process never imports the student's package. A worker that loops, exits, crashes or runs out
of memory stops its task only, with the reason recorded; the next task gets a new worker.

Task functions are found from :attr:`minievo.assignments.Task.where`: a function
(``minievo/autograd.py: sum_to``) is replaced wherever this process refers to it (module
attributes, the test modules' imports); a method (``minievo/optim.py: SGD._update``) on its
class, the instance travelling by its attributes. The CUDA task (a ``.cu`` file) replaces
:class:`minievo.kernels.emulate.EmulatedModule`: the worker compiles the student's kernel
source with this checkout's emulator and runs each launch.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minievo.grading import wire

WORKER = Path(__file__).resolve().with_name("worker.py")
_MB = 1 << 20


@dataclass
class Limits:
    """The limits of one grading run.

    Attributes:
        task_s: seconds of worker time (its start, imports and every call) for one task.
        submission_s: seconds of worker time for all tasks of one student.
        memory_mb: address space of a Python task's worker, and resident memory of every
            worker with its children (the CUDA task's sanitized program needs a large address
            space, so its limit is on resident memory only).
        message_mb: the largest message a worker may send.
    """

    task_s: float = 300.0
    submission_s: float = 1800.0
    memory_mb: int = 2048
    message_mb: int = 256

    def check(self) -> Limits:
        """Raise ValueError naming a limit that is not a positive number."""
        for name in ("task_s", "submission_s", "memory_mb", "message_mb"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0 or value != value:
                raise ValueError(f"grading limit {name} must be a positive number, got "
                                 f"{value!r}")
        if self.memory_mb < 256:
            raise ValueError(f"grading limit memory_mb must be at least 256 (NumPy needs about "
                             f"that much address space), got {self.memory_mb}")
        return self


@dataclass
class TaskRun:
    """What one task's worker and tests gave.

    Attributes:
        task: the task id.
        tests: one record per test, in order: ``{"test", "outcome", "error"}`` where outcome
            is "passed", "failed", "skipped" or "not run", and error (when failed)
            ``{"type", "message", "not_implemented"}``.
        stopped: None, or why the task's worker was stopped: ``{"status", "detail", "log"}``
            with status "timeout", "memory", "crashed" or "error".
        package_problem: the stop concerns the whole submission (its package does not import,
            or came from elsewhere): the other tasks are not run.
        minievo_file: where the worker imported ``minievo`` from.
        sanitizer: the CUDA task's sanitizer: "address", or "none" when its kernel was built
            without one; "" when no kernel was built (and for the other tasks).
        seconds: the worker time used.
    """

    task: str
    tests: list[dict] = field(default_factory=list)
    stopped: dict | None = None
    package_problem: bool = False
    minievo_file: str | None = None
    sanitizer: str | None = ""
    seconds: float = 0.0


class Stopped(BaseException):  # noqa: N818 - not an error of the test: a stop of the task
    """The task's worker was stopped. A BaseException, so that no ``except Exception`` of a
    test (``Check.call`` has one) turns it into an ordinary failure."""

    def __init__(self, status: str, detail: str, log: str = ""):
        super().__init__(detail)
        self.status, self.detail, self.log = status, detail, log


class TestDesignError(BaseException):
    """A test hands the student's function something the grader cannot send (a CuPy array, a
    lambda...): a problem of the tests, reported as such, never as the student's failure."""


class SubmissionError(Exception):
    """An exception raised by the student's code in the worker. The grader raises a subclass
    named after the student's exception type, so messages read ``IndexError: ...``."""

    student_traceback = ""


# ----------------------------------------------------------------------------------------------
# Values that come back from a worker
# ----------------------------------------------------------------------------------------------
class StudentObject:
    """An object of the student's package, as it came back: its attributes, nothing else."""

    def __init__(self, path: str, state: dict):
        self.__dict__.update(state)
        self._student_class = path

    def __repr__(self) -> str:
        return f"<{self._student_class.replace(':', '.')} object from the submission>"


class RngState:
    """A generator's state as it came back (given back to the test's generator)."""

    def __init__(self, state):
        self.state = state


def _decode(frame: bytes):
    return wire.decode(frame, build_object=StudentObject, build_rng=RngState)


def _write_back(orig, new, depth: int = 0) -> None:
    """Give ``orig`` (an argument of a remote call) the state ``new`` it has after the call in
    the worker: arrays in place, dicts' contents, generators' states, objects' arrays."""
    if depth > 6:
        return
    if isinstance(orig, np.ndarray):
        if isinstance(new, np.ndarray) and new.shape == orig.shape and orig.flags.writeable:
            np.copyto(orig, new, casting="unsafe")
    elif isinstance(orig, np.random.Generator):
        if isinstance(new, RngState):
            with contextlib.suppress(TypeError, ValueError, KeyError):
                orig.bit_generator.state = new.state
    elif isinstance(orig, dict):
        if isinstance(new, dict):
            orig.clear()
            orig.update(new)
    elif isinstance(orig, list | tuple):
        if isinstance(new, list | tuple) and len(new) == len(orig):
            for a, b in zip(orig, new):
                _write_back(a, b, depth + 1)
    elif isinstance(new, StudentObject) and wire.describe_minievo_object(orig) is not None:
        for key, value in vars(new).items():
            if key == "_student_class" or key in wire.SKIPPED_ATTRIBUTES:
                continue
            current = getattr(orig, key, None)
            if isinstance(current, np.ndarray) and isinstance(value, np.ndarray):
                if (value.shape == current.shape and value.dtype == current.dtype
                        and current.flags.writeable):
                    np.copyto(current, value)
                else:  # rebound in the worker (p.data = p.data - ...): rebind here too
                    setattr(orig, key, value)
            elif current is not None and not isinstance(current, bool | int | float | str):
                _write_back(current, value, depth + 1)


_WARNINGS = {name: cls for name, cls in vars(builtins).items()
             if isinstance(cls, type) and issubclass(cls, Warning)}


def _reemit(records) -> None:
    """Raise the worker's warnings here, where the test's warning filters apply."""
    for record in records or []:
        category = _WARNINGS.get(str(record.get("category")), UserWarning)
        warnings.warn(str(record.get("message", "")), category, stacklevel=3)


_MEMORY_NOTE = " (the grader limits the memory of each task: {} MB)"


def _student_exception(error: dict, limits: Limits) -> BaseException:
    """The exception the student's code raised in the worker, re-raised here."""
    message = str(error.get("message", ""))
    if error.get("not_implemented"):
        exc: BaseException = NotImplementedError(message)
    else:
        name = re.sub(r"\W", "_", str(error.get("type", "Error")))[:80] or "Error"
        if name[0].isdigit():
            name = "_" + name
        if name == "MemoryError":
            message += _MEMORY_NOTE.format(limits.memory_mb)
        exc = type(name, (SubmissionError,), {})(message)
    exc.student_traceback = str(error.get("traceback", ""))
    return exc


# ----------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------
class Clock:
    """The worker time left to one task and to the whole submission."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.submission_left = float(limits.submission_s)
        self.task_left = float(limits.task_s)

    def new_task(self) -> None:
        self.task_left = float(self.limits.task_s)

    def left(self) -> float:
        return min(self.task_left, self.submission_left)

    def charge(self, seconds: float) -> None:
        self.task_left -= seconds
        self.submission_left -= seconds

    def why(self) -> str:
        if self.submission_left <= self.task_left:
            return (f"the submission's time limit ({self.limits.submission_s:g} s for all its "
                    "tasks) ran out")
        return f"the task's time limit ({self.limits.task_s:g} s) ran out (an endless loop?)"


_SIGNALS = {getattr(signal, name): what for name, what in (
    ("SIGKILL", "was killed (SIGKILL)"), ("SIGSEGV", "crashed (segmentation fault)"),
    ("SIGABRT", "aborted (SIGABRT)"), ("SIGBUS", "crashed (bus error)"),
    ("SIGFPE", "crashed (floating-point exception)"),
    ("SIGXCPU", "used up its CPU time limit (SIGXCPU)"),
    ("SIGXFSZ", "wrote a file over the size limit (SIGXFSZ)")) if hasattr(signal, name)}
_SIGXCPU = getattr(signal, "SIGXCPU", None)


def _session_processes(sid: int) -> list[tuple[int, int]]:
    """(pid, resident bytes) of every process of session ``sid`` (Linux /proc; [] elsewhere)."""
    found = []
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            rest = stat[stat.rindex(b")") + 2:].split()
            if int(rest[3]) == sid:
                found.append((int(name), int(rest[21]) * page))
        except (OSError, ValueError, IndexError):
            continue
    return found


class WorkerProcess:
    """One worker: its process (a session of its own), its private folder and its pipes."""

    def __init__(self, path: list[str], limits: Limits, clock: Clock, cuda: bool = False,
                 verbose: bool = False):
        self.limits, self.clock, self.cuda, self.verbose = limits, clock, cuda, verbose
        self.dir = Path(tempfile.mkdtemp(prefix="minievo-grade-"))  # mode 0700
        self.log_path = self.dir / "worker.log"
        self.doing = "starting"
        self._last_memory_check = 0.0
        config = {
            "path": path,
            "message_mb": limits.message_mb,
            "limits": {
                "cpu_s": int(limits.task_s) + 10,
                "fsize_mb": 128,
                "nofile": 512,
                # A sanitized kernel reserves terabytes of address space: the CUDA task's
                # memory is watched as resident memory instead.
                "address_space_mb": None if cuda else limits.memory_mb,
            },
        }
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "CXX",
                                          "LD_LIBRARY_PATH", "TZ", "SYSTEMROOT")
               if k in os.environ}
        env.update(HOME=str(self.dir), TMPDIR=str(self.dir), MPLBACKEND="Agg",
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   MINIEVO_EMU_CACHE=str(self.dir / "emu"),
                   ASAN_OPTIONS=("detect_leaks=0:abort_on_error=0:"
                                 f"hard_rss_limit_mb={limits.memory_mb}"),
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        request_r, request_w = os.pipe()
        answer_r, answer_w = os.pipe()
        try:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-X", "faulthandler", str(WORKER),
                     str(request_r), str(answer_w), json.dumps(config)],
                    pass_fds=(request_r, answer_w), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, cwd=self.dir, env=env, start_new_session=True)
        except BaseException:
            for fd in (request_r, request_w, answer_r, answer_w):
                os.close(fd)
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        os.close(request_r)
        os.close(answer_w)
        self.request_fd, self.answer_fd = request_w, answer_r
        os.set_blocking(request_w, False)
        os.set_blocking(answer_r, False)

    # ----- one request -------------------------------------------------------------------------
    def request(self, message: dict, doing: str) -> dict:
        """Send a request and wait for the answer within the clock's time.

        Raises:
            Stopped: the worker timed out, exited, crashed, ran out of memory or answered
                something unreadable (it is killed then).
            TestDesignError: the message cannot be sent.
        """
        self.doing = doing
        try:
            frame = wire.encode(message, describe=wire.describe_minievo_object)
        except wire.WireError as exc:
            raise TestDesignError(f"{doing}: {exc}") from None
        start = time.monotonic()
        deadline = start + max(self.clock.left(), 0.0)
        try:
            wire.send(self.request_fd, frame, deadline, self._watch)
            answer = wire.recv(self.answer_fd, self.limits.message_mb * _MB, deadline,
                               self._watch)
        except wire.Timeout:
            self.clock.charge(time.monotonic() - start)
            raise self._stop("timeout", f"{self.clock.why()} while {doing}") from None
        except wire.PeerClosed:
            self.clock.charge(time.monotonic() - start)
            raise self._gone() from None
        except wire.WireError as exc:
            self.clock.charge(time.monotonic() - start)
            raise self._stop("error", f"the worker sent a bad message while {doing}: "
                                      f"{exc}") from None
        self.clock.charge(time.monotonic() - start)
        try:
            reply = _decode(answer)
        except wire.WireError as exc:
            raise self._stop("error", f"the worker sent a bad message while {doing}: "
                                      f"{exc}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise self._stop("error", f"the worker sent a bad answer while {doing}")
        return reply

    def _watch(self) -> None:
        if self.proc.poll() is not None:
            raise self._gone()
        now = time.monotonic()
        if now - self._last_memory_check < 0.5:
            return
        self._last_memory_check = now
        resident = sum(rss for _, rss in _session_processes(self.proc.pid))
        if resident > self.limits.memory_mb * _MB:
            raise self._stop("memory", f"the worker and its children used {resident / _MB:.0f} "
                                       f"MB of memory while {self.doing}, over the limit of "
                                       f"{self.limits.memory_mb} MB")

    def _gone(self) -> Stopped:
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        code = self.proc.returncode
        if code is None:
            what, status = "closed its pipe", "crashed"
        elif code < 0:
            what = _SIGNALS.get(-code, f"was killed by signal {-code}")
            status = "timeout" if -code == _SIGXCPU else "crashed"
        else:
            what = (f"exited with status {code} (os._exit, or exit() outside Python's "
                    "control, in the submission's code?)")
            status = "crashed"
        return self._stop(status, f"the worker {what} while {self.doing}")

    def _stop(self, status: str, detail: str) -> Stopped:
        self.close()
        return Stopped(status, detail, self.log_tail())

    def log_tail(self, size: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def close(self) -> None:
        """Kill the worker and everything it started, close the pipes (the folder stays until
        :meth:`remove`, so that its log can be read)."""
        for fd in ("request_fd", "answer_fd"):
            value = getattr(self, fd, None)
            if value is not None:
                with contextlib.suppress(OSError):
                    os.close(value)
                setattr(self, fd, None)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, _ in _session_processes(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Remote task functions
# ----------------------------------------------------------------------------------------------
class Remote:
    """Calls into one worker, as the tests make them."""

    def __init__(self, worker: WorkerProcess, limits: Limits, verbose: bool = False):
        self.worker, self.limits, self.verbose = worker, limits, verbose

    def raise_error(self, error: dict):
        exc = _student_exception(error, self.limits)
        if self.verbose and exc.student_traceback:
            print(exc.student_traceback, file=sys.stderr)
        raise exc

    def call(self, target: str, owner, args: tuple, kwargs: dict):
        reply = self.worker.request({"op": "call", "target": target, "self": owner,
                                     "args": list(args), "kwargs": dict(kwargs)},
                                    f"running {target}")
        _reemit(reply.get("warnings"))
        if not reply["ok"]:
            self.raise_error(reply.get("error") or {})
        _write_back(args, reply.get("args"))
        _write_back(kwargs, reply.get("kwargs"))
        return reply.get("result")


def _target(task) -> tuple[str, str]:
    """(module, attribute path) of a task's code, from ``Task.where``."""
    path, _, name = task.where.partition(":")
    return path.strip().removesuffix(".py").replace("/", "."), name.strip()


def _namespaces(test_modules) -> list:
    mods = [m for n, m in list(sys.modules.items())
            if m is not None and (n == "minievo" or n.startswith("minievo."))]
    return mods + list(test_modules)


def _replace(original, replacement, test_modules, undo: list) -> None:
    """Put ``replacement`` wherever a module of this process holds ``original``."""
    for module in _namespaces(test_modules):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for key, value in list(namespace.items()):
            if value is original:
                namespace[key] = replacement
                undo.append((namespace, key, original))


def _clear_caches(test_modules) -> None:
    """Forget what a test module memoised (``functools.cache``) from the previous student."""
    for module in test_modules:
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


@contextlib.contextmanager
def remote_task(task, remote: Remote, root: Path, test_modules, sanitize_required: bool):
    """Inside this block the task's function of this process is the student's, remote."""
    undo: list = []
    module_name, target = _target(task)
    try:
        if module_name.endswith(".cu"):
            from minievo import backend
            from minievo.kernels import emulate

            cls = _remote_module_class(remote, root, sanitize_required)
            _replace(emulate.EmulatedModule, cls, test_modules, undo)
            # A GPU run would put the student's kernel into this process: emulated only.
            _replace(backend.cupy_available, _no_cupy, test_modules, undo)
        else:
            module = importlib.import_module(module_name)
            if "." in target:
                owner_name, method = target.rsplit(".", 1)
                owner = module
                for part in owner_name.split("."):
                    owner = getattr(owner, part)
                original = owner.__dict__[method]

                def method_proxy(self, *args, **kwargs):
                    return remote.call(target, self, args, kwargs)

                functools.update_wrapper(method_proxy, original)
                setattr(owner, method, method_proxy)
                undo.append((owner, method, original))
            else:
                original = getattr(module, target)

                def function_proxy(*args, **kwargs):
                    return remote.call(target, None, args, kwargs)

                functools.update_wrapper(function_proxy, original)
                _replace(original, function_proxy, test_modules, undo)
        _clear_caches(test_modules)
        yield
    finally:
        for owner, key, original in reversed(undo):
            if isinstance(owner, dict):
                owner[key] = original
            else:
                setattr(owner, key, original)
        _clear_caches(test_modules)


def _no_cupy() -> bool:
    return False


_MAX_KERNEL_SOURCE = 2 * _MB


def _student_kernel(source, root: Path) -> Path:
    """The student's file for a kernel the test names by this checkout's path or name."""
    from minievo.kernels import KERNEL_DIR

    path = Path(str(source))
    if path.is_file() and path.resolve().parent != Path(KERNEL_DIR).resolve():
        return path  # a source the test wrote itself
    return root / "minievo" / "kernels" / path.name


def _remote_module_class(remote: Remote, root: Path, sanitize_required: bool):
    from minievo import kernels

    class RemoteModule:
        """Stands for ``EmulatedModule`` during the CUDA task: the student's kernel source,
        compiled and launched in the worker with this checkout's emulator."""

        def __init__(self, source, sanitize="address", cache_dir=None, optimize="-O1"):
            self.path = _student_kernel(source, root)
            try:
                if self.path.stat().st_size > _MAX_KERNEL_SOURCE:
                    raise ValueError(f"{self.path.name} is larger than "
                                     f"{_MAX_KERNEL_SOURCE // _MB} MB")
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(f"the submission's kernel source cannot be read: "
                                        f"{exc}") from None
            reply = remote.worker.request({"op": "cuda_build", "filename": self.path.name,
                                           "text": text, "sanitize": sanitize},
                                          f"compiling {self.path.name}")
            if not reply["ok"]:
                remote.raise_error(reply.get("error") or {})
            self.sanitizer = reply.get("sanitizer")
            remote.worker.sanitizer = self.sanitizer or "none"
            if sanitize == "address" and sanitize_required and self.sanitizer != "address":
                raise remote.worker._stop(
                    "error", "AddressSanitizer did not work in the worker, and this run "
                             "requires it (--allow-no-sanitizer grades without it)")
            self.names = [str(n) for n in reply.get("names") or []]
            self._key = reply.get("module")
            # Which arguments are outputs: from this checkout's copy of the kernel (the task
            # is the tile loop; the signature is given), never from the worker.
            own = kernels.kernel_path(self.path.name)
            own_text = own.read_text() if own.is_file() else ""
            self.signatures = {name: kernels.kernel_signature(own_text, name)
                               for name in self.names if own_text and name in
                               kernels.entry_points(own_text)}

        def get_function(self, name):
            if name not in self.signatures:
                raise ValueError(f"{self.path.name} has no kernel {name!r}; it has "
                                 f"{self.names}")
            return RemoteKernel(self, name, self.signatures[name])

    class RemoteKernel:
        def __init__(self, module, name, params):
            self.module, self.name, self.params = module, name, params

        def __call__(self, grid, block, args, timeout: float = 300.0):
            args = tuple(args)
            sent = []
            for i, a in enumerate(args):
                p = self.params[i] if i < len(self.params) else None
                if p is not None and p.pointer and not p.const and isinstance(a, np.ndarray):
                    # An output: the kernel must write it. Never send what the buffer held.
                    a = np.full_like(a, np.nan) if a.dtype.kind in "fc" else np.zeros_like(a)
                sent.append(a)
            reply = remote.worker.request(
                {"op": "cuda_launch", "module": self.module._key, "name": self.name,
                 "grid": grid, "block": block, "args": sent, "timeout": float(timeout)},
                f"running {self.name}")
            if not reply["ok"]:
                remote.raise_error(reply.get("error") or {})
            back = reply.get("args") or []
            for i, (a, new) in enumerate(zip(args, back)):
                p = self.params[i] if i < len(self.params) else None
                if (p is not None and p.pointer and not p.const and isinstance(a, np.ndarray)
                        and isinstance(new, np.ndarray) and new.shape == a.shape):
                    np.copyto(a, new, casting="unsafe")

    RemoteModule.__name__ = RemoteModule.__qualname__ = "EmulatedModule"
    RemoteKernel.__name__ = RemoteKernel.__qualname__ = "EmulatedKernel"
    return RemoteModule


# ----------------------------------------------------------------------------------------------
# The tests, loaded once into this process
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One test (one parametrised case) of one task."""

    task: str
    name: str
    fn: object
    kwargs: dict
    skip: str | None = None


_TASK_MARK = re.compile(r"^task_(\d+)_(\d+)$")
_LOADED: dict = {}


def load_test_module(path: Path, hidden: bool):
    """Import a task test file into this process (once per file version)."""
    from minievo.assignments import AssignmentError

    path = Path(path).resolve()
    stamp = path.stat().st_mtime_ns
    key = (str(path), hidden)
    if key in _LOADED and _LOADED[key][0] == stamp:
        return _LOADED[key][1]
    name = f"_minievo_task_tests_{'hidden' if hidden else 'visible'}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise AssignmentError(f"{path}: the task tests do not import: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    _LOADED[key] = (stamp, module)
    return module


def _auto_id(value, name: str, index: int) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return str(value)
    return f"{name}{index}"


def _expand(fn) -> list[tuple[str, dict, str | None]]:
    """(id, kwargs, skip reason) of every case of a test function, as pytest would run it."""
    from minievo.assignments import AssignmentError

    cases: list[tuple[list[str], dict, str | None]] = [([], {}, None)]
    skip = None
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "skip":
            skip = mark.kwargs.get("reason", mark.args[0] if mark.args else "skipped")
        elif mark.name == "skipif":
            condition = mark.args[0] if mark.args else False
            if not isinstance(condition, bool | np.bool_):
                raise AssignmentError(f"{fn.__name__}: only boolean skipif conditions are "
                                      "supported by the grader")
            if condition:
                skip = mark.kwargs.get("reason", "skipped")
        elif mark.name == "parametrize":
            names = mark.args[0]
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) \
                else list(names)
            ids = mark.kwargs.get("ids")
            new = []
            for index, values in enumerate(mark.args[1]):
                case_id, marks = None, ()
                if hasattr(values, "values") and hasattr(values, "marks"):  # pytest.param
                    case_id, marks, values = values.id, values.marks, values.values
                values = tuple(values) if len(names) > 1 else (values,)
                if case_id is None:
                    if isinstance(ids, list | tuple):
                        case_id = str(ids[index])
                    else:
                        parts = []
                        for name, v in zip(names, values):
                            got = ids(v) if callable(ids) else None
                            parts.append(str(got) if got is not None else
                                         _auto_id(v, name, index))
                        case_id = "-".join(parts)
                case_skip = next((m.kwargs.get("reason", "skipped") for m in marks
                                  if m.name == "skip"), None)
                for id_parts, kwargs, old_skip in cases:
                    new.append((id_parts + [case_id], {**kwargs, **dict(zip(names, values))},
                                old_skip or case_skip))
            cases = new
    needed = [p.name for p in inspect.signature(fn).parameters.values()
              if p.default is inspect.Parameter.empty]
    out = []
    for id_parts, kwargs, case_skip in cases:
        missing = [n for n in needed if n not in kwargs]
        if missing:
            raise AssignmentError(f"{fn.__name__} asks for {', '.join(missing)}; a task test "
                                  "may use parametrize, never fixtures")
        out.append(("-".join(id_parts), kwargs, skip or case_skip))
    return out


def collect(test_files: list[tuple[Path, bool]]) -> tuple[dict[str, list[Case]], list]:
    """The cases of every task in these files, and the modules loaded."""
    from minievo.assignments import AssignmentError

    by_task: dict[str, list[Case]] = {}
    modules = []
    for path, hidden in test_files:
        module = load_test_module(path, hidden)
        modules.append(module)
        for name, fn in vars(module).items():
            if not name.startswith("test_") or not callable(fn):
                continue
            tasks = sorted({f"{m.group(1)}.{m.group(2)}" for mark in getattr(fn, "pytestmark", [])
                            if (m := _TASK_MARK.match(mark.name))})
            if not tasks:
                continue
            if len(tasks) > 1:
                raise AssignmentError(f"{path.name}::{name} is marked with tasks "
                                      f"{', '.join(tasks)}; a task test belongs to one task")
            for case_id, kwargs, skip in _expand(fn):
                label = f"{name}[{case_id}]" if case_id else name
                by_task.setdefault(tasks[0], []).append(
                    Case(tasks[0], label + (" (hidden)" if hidden else ""), fn, kwargs, skip))
    return by_task, modules


def _run_case(case: Case) -> dict:
    from minievo.feedback import TaskFailure

    record = {"test": case.name, "outcome": "passed", "error": None}
    if case.skip:
        record["outcome"] = "skipped"
        return record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the submission's warnings, unless a test asks
            case.fn(**case.kwargs)
    except (Stopped, TestDesignError, KeyboardInterrupt):
        raise
    except TaskFailure as exc:
        record.update(outcome="failed", error={"type": "TaskFailure", "message": str(exc),
                                               "not_implemented": False})
    except NotImplementedError as exc:
        record.update(outcome="failed", error={"type": "NotImplementedError",
                                               "message": str(exc), "not_implemented": True})
    except BaseException as exc:  # noqa: BLE001 - pytest.skip, pytest.fail, any error
        if type(exc).__name__ == "Skipped":
            record["outcome"] = "skipped"
            return record
        record.update(outcome="failed", error={"type": type(exc).__name__,
                                               "message": str(exc)[:8000],
                                               "not_implemented": False})
    return record


# ----------------------------------------------------------------------------------------------
# One student
# ----------------------------------------------------------------------------------------------
def _worker_path(first: Path, grader_root: Path) -> list[str]:
    """``sys.path`` of a worker: ``first``, then this process's entries that hold no other
    ``minievo`` (NumPy and the rest of the environment)."""
    out = [str(first)]
    for entry in sys.path:
        if not entry or entry == ".":
            continue
        p = Path(entry)
        with contextlib.suppress(OSError):
            if (p / "minievo" / "__init__.py").is_file() and p.resolve() != first.resolve():
                continue
        if entry not in out:
            out.append(entry)
    return out


def _foreign_modules(files, root: Path) -> list[tuple[str, str]]:
    """The minievo modules a worker loaded from outside the graded folder's package."""
    package = (root / "minievo").resolve()
    out = []
    for name, file in (files or {}).items() if isinstance(files, dict) else []:
        if file is None:
            continue
        try:
            inside = Path(str(file)).resolve().is_relative_to(package)
        except (OSError, ValueError):
            inside = False
        if not inside:
            out.append((str(name), str(file)))
    return out


def run_task(task, root: Path, cases: list[Case], test_modules, limits: Limits, clock: Clock,
             sanitize_required: bool = True, verbose: bool = False) -> TaskRun:
    """Start the task's worker and run its cases; the worker is killed at the end."""
    from minievo.assignments import package_dir

    run = TaskRun(task.id)
    if not cases:
        return run
    cuda = task.where.split(":")[0].strip().endswith(".cu")
    grader_root = package_dir().parent
    clock.new_task()
    used_before = clock.submission_left
    worker = WorkerProcess(_worker_path(grader_root if cuda else root, grader_root), limits,
                           clock, cuda=cuda, verbose=verbose)
    worker.sanitizer = ""
    case_index = 0
    try:
        if cuda:
            hello = worker.request({"op": "hello", "modules": ["minievo.kernels.emulate"]},
                                   "starting")
            if not hello["ok"]:
                raise worker._stop("error", "the grader's emulator does not import in the "
                                            f"worker: {hello['error'].get('message')}")
        else:
            run.package_problem = True  # until the package has imported
            hello = worker.request({"op": "hello", "modules": ["minievo"]},
                                   "importing the submission's minievo")
            if not hello["ok"]:
                error = hello.get("error") or {}
                raise worker._stop("error", "the submission's minievo does not import: "
                                            f"{error.get('type')}: {error.get('message')}")
            run.minievo_file = hello.get("minievo_file")
            if not run.minievo_file or (root / "minievo").resolve() not in \
                    Path(run.minievo_file).resolve().parents:
                run.package_problem = True
                raise worker._stop("error", f"the worker imported minievo from "
                                            f"{run.minievo_file}, not from {root}")
            run.package_problem = False
            module_name, _ = _target(task)
            hello = worker.request({"op": "hello", "modules": [module_name]},
                                   f"importing {module_name}")
            foreign = _foreign_modules(hello.get("files"), root)
            if foreign:
                run.package_problem = True
                raise worker._stop("error", f"the worker imported {foreign[0][0]} from "
                                            f"{foreign[0][1]}, outside {root}")
            if not hello["ok"]:
                error = hello.get("error") or {}
                if error.get("not_implemented"):  # a stub at import time: not implemented
                    run.tests = [{"test": c.name, "outcome": "failed",
                                  "error": {"type": "NotImplementedError",
                                            "message": str(error.get("message")),
                                            "not_implemented": True}} for c in cases]
                    return run
                raise worker._stop("error", f"{module_name} does not import: "
                                            f"{error.get('type')}: {error.get('message')}")
        remote = Remote(worker, limits, verbose)
        with remote_task(task, remote, root, test_modules, sanitize_required):
            for index, case in enumerate(cases):
                case_index = index
                record = _run_case(case)
                run.tests.append(record)
                if verbose:
                    print(f"  {task.id} {case.name}: {record['outcome']}", file=sys.stderr)
    except Stopped as stop:
        run.stopped = {"status": stop.status, "detail": stop.detail, "log": stop.log}
        if case_index < len(cases) and len(run.tests) == case_index:
            run.tests.append({"test": cases[case_index].name, "outcome": "failed",
                              "error": {"type": stop.status, "message": stop.detail,
                                        "not_implemented": False}})
        run.tests += [{"test": c.name, "outcome": "not run", "error": None}
                      for c in cases[len(run.tests):]]
    finally:
        worker.remove()
        run.sanitizer = worker.sanitizer
        run.seconds = used_before - clock.submission_left
    return run


def grade_folder(root: Path, tasks, cases: dict[str, list[Case]], test_modules,
                 limits: Limits, sanitize_required: bool = True, verbose: bool = False
                 ) -> list[TaskRun]:
    """Every task of one student, each in its own worker; a stop ends that task only (or,
    when the student's package itself does not import, every task)."""
    clock = Clock(limits)
    runs: list[TaskRun] = []
    problem: dict | None = None
    for task in tasks:
        if problem is not None:
            runs.append(TaskRun(task.id, stopped=dict(problem), package_problem=True))
            continue
        if clock.submission_left <= 0:
            runs.append(TaskRun(task.id, stopped={
                "status": "timeout", "log": "",
                "detail": f"not run: the submission's time limit ({limits.submission_s:g} s "
                          "for all its tasks) was used up"}))
            continue
        run = run_task(task, root, cases.get(task.id, []), test_modules, limits, clock,
                       sanitize_required, verbose)
        runs.append(run)
        if run.package_problem and run.stopped is not None:
            problem = {**run.stopped, "log": ""}
    return runs


# ----------------------------------------------------------------------------------------------
# AddressSanitizer
# ----------------------------------------------------------------------------------------------
@functools.cache
def sanitizer_problem() -> str | None:
    """Why AddressSanitizer cannot check the CUDA task here, or None when it works."""
    from minievo.kernels import emulate

    gpp = emulate.gpp_path()
    if gpp is None:
        return "g++ is not installed"
    with tempfile.TemporaryDirectory(prefix="minievo-asan-") as tmp:
        works = emulate._sanitizer_works(gpp, tuple(emulate.SANITIZERS["address"]), Path(tmp))
    if not works:
        return ("a threaded test program built with -fsanitize=address does not run "
                "(a `ulimit -v` address-space limit stops it, for one)")
    return None


__all__ = ["Case", "Limits", "Stopped", "TaskRun", "collect", "grade_folder",
           "sanitizer_problem"]
