"""The process a submission's code runs in: one per student and task, started by the grader.

Run as a script (``python -I -B worker.py REQUEST_FD ANSWER_FD CONFIG``), never imported by the
code it runs. Before it reads anything it sets its own resource limits (address space, CPU
time, file size, open files; no core files), so that everything it later imports or runs
inherits them. It then answers the grader's requests, one at a time, on two pipes:

``hello``
    import the modules named (``sys.path`` was set from CONFIG, the submission's folder
    first); answer where ``minievo`` came from, or the import error.
``call``
    call one function of the submission (``sum_to``) or one method (``Mul.backward``) on an
    object rebuilt from its attributes, with the inputs given; answer the result, the
    arguments as they are after the call (an optimiser updates its parameter in place, a
    generator advances), the warnings raised, or the exception with its traceback.
``cuda_build`` / ``cuda_launch``
    compile a kernel source with the grader's CPU emulator (AddressSanitizer when asked) and
    launch it; answer the output arrays, or the compile log / sanitizer report.

The worker never sees an expected value: the grader keeps them and compares in its own
process. Whatever the submission does here (a loop, ``os._exit``, a crash, printing, editing
its own ``minievo.feedback``) changes at most what this process answers for its own task.
It needs only the standard library and NumPy, and loads :mod:`wire` from the file beside it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import traceback
import warnings
from pathlib import Path

_MB = 1 << 20


def _set_limits(limits: dict) -> None:
    import resource

    def cap(which, value):
        if value is None:
            return
        soft, hard = resource.getrlimit(which)
        value = int(value)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_CPU, limits.get("cpu_s"))
    cap(resource.RLIMIT_FSIZE, None if limits.get("fsize_mb") is None
        else limits["fsize_mb"] * _MB)
    cap(resource.RLIMIT_NOFILE, limits.get("nofile"))
    if limits.get("address_space_mb"):
        cap(resource.RLIMIT_AS, limits["address_space_mb"] * _MB)


def _load_wire():
    spec = importlib.util.spec_from_file_location(
        "_minievo_grading_wire", Path(__file__).resolve().with_name("wire.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _error(exc: BaseException) -> dict:
    """What the grader learns about an exception of the submission's code."""
    text = traceback.format_exception(type(exc), exc, exc.__traceback__)
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a __str__ of the submission's that fails
        message = "<the exception's message could not be read>"
    return {"type": type(exc).__name__[:100], "message": message[:20_000],
            "traceback": "".join(text)[-8000:],
            "not_implemented": isinstance(exc, NotImplementedError)}


class Worker:
    """The state of one worker: the task's module, the emulated kernels built so far."""

    def __init__(self, wire, private_dir: Path):
        self.wire = wire
        self.private = private_dir
        self.module = None
        self.kernels = {}

    # ----- objects of the submission's package, rebuilt from their attributes ---------------
    def build_object(self, path: str, state: dict):
        module_name, _, qualname = path.partition(":")
        if not (module_name == "minievo" or module_name.startswith("minievo.")):
            raise self.wire.WireError(f"objects of {module_name} are not rebuilt here")
        try:
            owner = importlib.import_module(module_name)
            for part in qualname.split("."):
                owner = getattr(owner, part)
        except Exception as exc:  # noqa: BLE001 - the submission's package may lack it
            raise self.wire.WireError(f"the submission has no {module_name}.{qualname} "
                                      f"({type(exc).__name__}: {exc})") from None
        if not isinstance(owner, type):
            raise self.wire.WireError(f"{module_name}.{qualname} is not a class")
        obj = owner.__new__(owner)
        for key, value in state.items():
            object.__setattr__(obj, key, value)
        return obj

    def decode(self, frame: bytes):
        return self.wire.decode(frame, build_object=self.build_object,
                                build_rng=self.wire.make_rng)

    # ----- requests ----------------------------------------------------------------------------
    def hello(self, msg: dict) -> dict:
        stage = "minievo"
        try:
            for stage in msg["modules"]:
                self.module = importlib.import_module(stage)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: reported, not obeyed
            return {"ok": False, "stage": stage, "error": _error(exc)}
        mod = sys.modules.get("minievo")
        files = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())
                 if name == "minievo" or name.startswith("minievo.")}
        return {"ok": True, "minievo_file": getattr(mod, "__file__", None), "files": files}

    def call(self, msg: dict) -> dict:
        args, kwargs = list(msg.get("args") or []), dict(msg.get("kwargs") or {})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                target = msg["target"]
                if msg.get("self") is not None:
                    fn = getattr(msg["self"], target.rsplit(".", 1)[-1])
                else:
                    fn = self.module
                    for part in target.split("."):
                        fn = getattr(fn, part)
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: reported, not obeyed
                return {"ok": False, "error": _error(exc), "warnings": _warnings(caught)}
        return {"ok": True, "result": result, "args": args, "kwargs": kwargs,
                "warnings": _warnings(caught)}

    def cuda_build(self, msg: dict) -> dict:
        import hashlib

        from minievo.kernels import emulate

        name = Path(msg["filename"]).name
        key = hashlib.sha256(f"{name}\0{msg.get('sanitize')}\0{msg['text']}".encode()
                             ).hexdigest()[:16]
        if key not in self.kernels:
            # The source alone, in a folder of its own: only the grader's cuda_emu.h is found.
            # Same text, same folder: a second build of it is the emulator's cache hit.
            folder = self.private / f"kernel-{key}"
            folder.mkdir(exist_ok=True)
            source = folder / name
            source.write_text(msg["text"], encoding="utf-8")
            try:
                self.kernels[key] = emulate.EmulatedModule(source, sanitize=msg.get("sanitize"),
                                                           cache_dir=self.private / "emu")
            except BaseException as exc:  # noqa: BLE001 - the compile log goes back
                self.kernels[key] = _error(exc)
        module = self.kernels[key]
        if isinstance(module, dict):
            return {"ok": False, "error": module}
        return {"ok": True, "module": key, "sanitizer": module.sanitizer,
                "names": list(module.names)}

    def cuda_launch(self, msg: dict) -> dict:
        args = list(msg["args"])
        try:
            kernel = self.kernels[msg["module"]].get_function(msg["name"])
            kernel(tuple(msg["grid"]), tuple(msg["block"]), tuple(args),
                   timeout=float(msg.get("timeout", 300.0)))
        except BaseException as exc:  # noqa: BLE001 - the sanitizer report goes back
            return {"ok": False, "error": _error(exc)}
        return {"ok": True, "args": args}


def _warnings(caught) -> list[dict]:
    return [{"category": w.category.__name__[:100], "message": str(w.message)[:2000]}
            for w in caught[:20]]


def main(argv: list[str]) -> int:
    request_fd, answer_fd = int(argv[1]), int(argv[2])
    config = json.loads(argv[3])
    _set_limits(config.get("limits", {}))
    # The submission's folder first (or, for a kernel, the grader's package), then the
    # grader's other entries (NumPy...): set before anything is imported.
    sys.path[:] = [str(p) for p in config["path"]]
    # Only the standard finders: an editable install's finder would hand out the grader's
    # own module for one that the submission lacks (a deleted minievo/optim.py, say).
    sys.meta_path[:] = [f for f in sys.meta_path
                        if getattr(f, "__module__", "").startswith("_frozen_importlib")]
    importlib.invalidate_caches()
    wire = _load_wire()
    max_bytes = int(config.get("message_mb", 256)) * _MB
    worker = Worker(wire, Path.cwd())
    handlers = {"hello": worker.hello, "call": worker.call, "cuda_build": worker.cuda_build,
                "cuda_launch": worker.cuda_launch}
    while True:
        try:
            frame = wire.recv(request_fd, max_bytes)
        except wire.PeerClosed:
            return 0
        try:
            msg = worker.decode(frame)
            answer = handlers[msg["op"]](msg)
        except BaseException as exc:  # noqa: BLE001 - a request the submission cannot serve
            answer = {"ok": False, "error": _error(exc)}
        try:
            out = wire.encode(answer, describe=wire.describe_minievo_object)
        except BaseException as exc:  # noqa: BLE001 - e.g. a result that cannot be sent
            out = wire.encode({"ok": False, "error": _error(TypeError(
                f"the grader cannot take what came back: {exc}"))})
        wire.send(answer_fd, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
