"""CUDA sources for minievo's RawKernels, and the tools that load, compile and check them.

The ``*.cu`` files in this folder are package data. Each holds one or more
``extern "C" __global__`` kernels written so that the *same text* compiles three ways:

* on a GPU, through :func:`get_kernel` (a ``cupy.RawKernel``, compiled lazily on first use and
  cached for the process; CuPy also keeps its own on-disk cache of the binaries);
* to PTX without any GPU, through :func:`compile_to_ptx` (NVRTC via CuPy's binding, or ``nvcc``);
* to a CPU program with g++ and the emulation header ``cuda_emu.h``
  (see :mod:`minievo.kernels.emulate`), which the tests run against the NumPy reference.

Example:
    >>> from minievo import kernels
    >>> [p.name for p in kernels.kernel_files()]
    ['sparse_conv2d.cu', 'sparse_linear.cu']
    >>> kernels.entry_points(kernels.read_source("sparse_linear.cu"))
    ['csr_linear_forward']
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent

#: PTX target when none is given, for NVRTC and nvcc alike: compute capability 7.5 (Turing), the
#: oldest that both accept without complaint (NVRTC 12.9 warns that targets before 7.5 are
#: deprecated; nvcc 13.0 lists compute_75 as its oldest, see ``nvcc --list-gpu-arch``), and
#: new enough for everything the kernels use. PTX of 7.5 is JIT-compiled for any newer GPU.
DEFAULT_PTX_ARCH = "compute_75"

_ENTRY_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)

#: C parameter types the kernels may use, and the NumPy dtype each one means.
C_TYPES = {
    "float": "float32",
    "double": "float64",
    "int": "int32",
    "unsigned int": "uint32",
    "long long": "int64",
}


class KernelCompileError(RuntimeError):
    """A .cu source failed to compile; the message carries the compiler's log."""


@dataclass(frozen=True)
class KernelParam:
    """One parameter of a kernel signature, e.g. ``const float* __restrict__ x``."""

    name: str
    ctype: str  # a key of C_TYPES
    pointer: bool
    const: bool

    @property
    def dtype(self) -> str:
        return C_TYPES[self.ctype]


def kernel_files() -> list[Path]:
    """The ``.cu`` files shipped with minievo, sorted by name."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def kernel_path(name: str) -> Path:
    """Path of a kernel source (``'sparse_linear.cu'``); raises FileNotFoundError naming the
    available ones."""
    path = KERNEL_DIR / name
    if not path.is_file():
        names = ", ".join(p.name for p in kernel_files())
        raise FileNotFoundError(f"no kernel source {name!r} in {KERNEL_DIR}; available: {names}")
    return path


def read_source(name: str) -> str:
    """The text of a kernel source shipped with the package.

    Raises:
        NotImplementedError: the source is a student copy's, with an assignment block still
            to write (see :func:`check_implemented`).
    """
    return check_implemented(kernel_path(name).read_text())


# The stub that `minievo assignments new` leaves where a CUDA solution block was.
_NOT_IMPLEMENTED_RE = re.compile(r"^[ \t]*//[ \t]*NOT IMPLEMENTED:[ \t]*(.+?)[ \t]*$", re.M)


def check_implemented(source: str) -> str:
    """``source`` itself, unless it holds an unwritten assignment block (a line
    ``// NOT IMPLEMENTED: task 7.2: ...``): then NotImplementedError with that message, so a
    stub is never compiled into a kernel that silently computes the wrong thing."""
    match = _NOT_IMPLEMENTED_RE.search(source)
    if match:
        raise NotImplementedError(match.group(1))
    return source


def _strip_comments(source: str) -> str:
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", " ", source)


def entry_points(source: str) -> list[str]:
    """Names of the ``extern "C" __global__`` kernels defined in a CUDA source text."""
    return [m.group(1) for m in _ENTRY_RE.finditer(_strip_comments(source))]


def kernel_signature(source: str, name: str) -> list[KernelParam]:
    """Parse the parameter list of kernel ``name`` in ``source``.

    Only the simple types of :data:`C_TYPES`, optionally ``const``, optionally a pointer, with an
    optional ``__restrict__``, are understood; anything else raises ValueError (the emulation
    driver must know how to pass every argument).
    """
    for m in _ENTRY_RE.finditer(_strip_comments(source)):
        if m.group(1) != name:
            continue
        params = []
        for raw in m.group(2).split(","):
            text = " ".join(raw.replace("*", " * ").split())
            if not text:
                continue
            tokens = [t for t in text.split(" ") if t != "__restrict__"]
            pname = tokens[-1]
            pointer = "*" in tokens
            const = "const" in tokens
            ctype = " ".join(t for t in tokens[:-1] if t not in ("*", "const"))
            if ctype not in C_TYPES or tokens.count("*") > 1:
                raise ValueError(f"kernel {name}: unsupported parameter type in {raw.strip()!r}")
            params.append(KernelParam(pname, ctype, pointer, const))
        return params
    raise ValueError(f"no kernel named {name!r} in the source (found: {entry_points(source)})")


# ---------------------------------------------------------------------------------------------
# PTX compilation without a GPU


def nvrtc_available() -> bool:
    """True when CuPy's NVRTC binding loads (no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415

        nvrtc.getVersion()
    except Exception:
        return False
    return True


def nvcc_path() -> str | None:
    """The ``nvcc`` on PATH (or in /usr/local/cuda/bin), or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin/nvcc")
    return str(candidate) if candidate.is_file() else None


def ptx_compilers() -> list[str]:
    """Which of 'nvrtc' and 'nvcc' can compile to PTX here (preferred first)."""
    found = []
    if nvrtc_available():
        found.append("nvrtc")
    if nvcc_path():
        found.append("nvcc")
    return found


def _ptx_nvrtc(source: str, filename: str, arch: str) -> str:
    from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415

    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "--std=c++14"])
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise KernelCompileError(f"NVRTC could not compile {filename}:\n{log}") from exc
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def _ptx_nvcc(source: str, filename: str, arch: str | None) -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        raise KernelCompileError("nvcc not found")
    with tempfile.TemporaryDirectory(prefix="minievo-ptx-") as tmp:
        src = Path(tmp) / filename
        src.write_text(source)
        out = Path(tmp) / "out.ptx"
        target = [f"--gpu-architecture={arch}"] if arch else []
        proc = subprocess.run(
            [nvcc, "--ptx", *target, "-std=c++14", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise KernelCompileError(f"nvcc could not compile {filename}:\n{proc.stderr}")
        return out.read_text()


def compile_to_ptx(name_or_path: str | Path, arch: str | None = None,
                   compiler: str = "auto") -> str:
    """Compile a kernel source to PTX text, without needing a GPU.

    Args:
        name_or_path: a shipped source name (``'sparse_linear.cu'``) or a path to a .cu file.
        arch: virtual architecture, e.g. ``'compute_80'``; None: :data:`DEFAULT_PTX_ARCH`.
        compiler: ``'nvrtc'``, ``'nvcc'`` or ``'auto'`` (NVRTC through CuPy when it loads,
            else nvcc).

    Raises:
        KernelCompileError: the source does not compile (the message holds the log), or no
            compiler is available (the message says how to get one).
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = kernel_path(str(name_or_path))
    source = check_implemented(path.read_text())
    if compiler == "auto":
        found = ptx_compilers()
        if not found:
            raise KernelCompileError(
                "no CUDA compiler: install NVRTC (pip install nvidia-cuda-nvrtc-cu12 cupy-cuda12x)"
                " or put nvcc on PATH"
            )
        compiler = found[0]
    if compiler == "nvrtc":
        return _ptx_nvrtc(source, path.name, arch or DEFAULT_PTX_ARCH)
    if compiler == "nvcc":
        return _ptx_nvcc(source, path.name, arch or DEFAULT_PTX_ARCH)
    raise ValueError(f"unknown compiler {compiler!r}; use 'nvrtc', 'nvcc' or 'auto'")


# ---------------------------------------------------------------------------------------------
# Resources per kernel (registers, shared memory, spills), from ptxas, without a GPU

#: Real architectures the resource check assembles every kernel for: Turing to Blackwell.
RESOURCE_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")

#: The static shared memory a block may use on every architecture (48 KB; more needs dynamic
#: shared memory and an opt-in at launch).
MAX_STATIC_SHARED = 48 * 1024

_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers.*?(?:(\d+) bytes smem|$)", re.M)


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reports for one kernel on one architecture."""

    kernel: str
    arch: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int

    def problems(self) -> list[str]:
        """Why this kernel would fail or be slow on a GPU: empty when it is fine."""
        found = []
        if self.shared_bytes > MAX_STATIC_SHARED:
            found.append(f"{self.kernel} on {self.arch}: {self.shared_bytes} bytes of static "
                         f"shared memory, more than {MAX_STATIC_SHARED} (the launch would fail)")
        if self.spill_stores or self.spill_loads:
            found.append(f"{self.kernel} on {self.arch}: registers spill ({self.spill_stores} "
                         f"bytes stored, {self.spill_loads} bytes loaded)")
        return found


def ptxas_path() -> str | None:
    """The ``ptxas`` on PATH (or in /usr/local/cuda/bin), or None."""
    found = shutil.which("ptxas")
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin/ptxas")
    return str(candidate) if candidate.is_file() else None


def parse_ptxas_log(log: str) -> list[KernelResources]:
    """The per-kernel figures of a ``ptxas -v`` log (one entry per compiled kernel)."""
    found = []
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", log):
        entry = _PTXAS_ENTRY.search(block)
        used = _PTXAS_USED.search(block)
        if not entry or not used:
            continue
        frame = _PTXAS_FRAME.search(block)
        stack, stores, loads = (int(v) for v in frame.groups()) if frame else (0, 0, 0)
        found.append(KernelResources(entry.group(1), entry.group(2), int(used.group(1)),
                                     int(used.group(2) or 0), stack, stores, loads))
    return found


def kernel_resources(name_or_path: str | Path, arch: str = "sm_90",
                     extra_options: tuple[str, ...] = ()) -> tuple[list[KernelResources], str]:
    """Assemble a kernel source for real architecture ``arch`` with ``ptxas -v``.

    Returns (the figures of every kernel, ptxas's error text or '' when it succeeded): a kernel
    ptxas refuses (too much shared memory, say) still has its figures reported.

    Raises:
        KernelCompileError: no ptxas, or the source does not compile to PTX.
    """
    ptxas = ptxas_path()
    if ptxas is None:
        raise KernelCompileError("ptxas not found: put the CUDA toolkit's bin folder on PATH")
    ptx = compile_to_ptx(name_or_path, arch=DEFAULT_PTX_ARCH)
    with tempfile.TemporaryDirectory(prefix="minievo-ptxas-") as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [ptxas, "-v", f"--gpu-name={arch}", *extra_options, "-o", str(Path(tmp) / "k.cubin"),
             str(src)], capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    errors = "\n".join(line for line in log.splitlines() if "error" in line)
    if proc.returncode != 0 and not errors:
        errors = log.strip() or f"ptxas exited with status {proc.returncode}"
    return parse_ptxas_log(log), errors


def resource_problems(name_or_path: str | Path, archs=RESOURCE_ARCHS,
                      extra_options: tuple[str, ...] = ()) -> list[str]:
    """Every reason (shared memory over 48 KB, register spills, a ptxas error) why the kernels of
    a source would not run well on one of ``archs``; empty when there is none."""
    problems = []
    for arch in archs:
        figures, errors = kernel_resources(name_or_path, arch, extra_options)
        if errors:
            problems.append(f"ptxas ({arch}): {errors}")
        for fig in figures:
            problems.extend(fig.problems())
    return problems


# ---------------------------------------------------------------------------------------------
# RawKernels on a GPU


@functools.cache
def get_kernel(filename: str, name: str):
    """The ``cupy.RawKernel`` for kernel ``name`` of ``filename``, created once per process.

    CuPy compiles it on the first launch (lazily) and caches the binary on disk.
    """
    import cupy  # noqa: PLC0415

    source = read_source(filename)
    if name not in entry_points(source):
        raise ValueError(f"{filename} has no kernel {name!r}; it has {entry_points(source)}")
    return cupy.RawKernel(source, name, options=("--std=c++14",))


__all__ = [
    "C_TYPES",
    "DEFAULT_PTX_ARCH",
    "KERNEL_DIR",
    "KernelCompileError",
    "KernelParam",
    "KernelResources",
    "MAX_STATIC_SHARED",
    "RESOURCE_ARCHS",
    "compile_to_ptx",
    "entry_points",
    "check_implemented",
    "get_kernel",
    "kernel_files",
    "kernel_path",
    "kernel_resources",
    "kernel_signature",
    "nvcc_path",
    "nvrtc_available",
    "parse_ptxas_log",
    "ptxas_path",
    "ptx_compilers",
    "read_source",
    "resource_problems",
]
