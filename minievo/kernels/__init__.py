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

#: PTX target NVRTC compiles for when none is given: compute capability 7.0 (Volta), old enough
#: for every GPU CuPy 13+ supports, new enough for everything the kernels use. nvcc, when given
#: no target, uses its own default (CUDA 13 dropped compute_70).
DEFAULT_PTX_ARCH = "compute_70"

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
        arch: virtual architecture, e.g. ``'compute_75'``; None: :data:`DEFAULT_PTX_ARCH` for
            NVRTC, nvcc's own default for nvcc.
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
        return _ptx_nvcc(source, path.name, arch)
    raise ValueError(f"unknown compiler {compiler!r}; use 'nvrtc', 'nvcc' or 'auto'")


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
    "compile_to_ptx",
    "entry_points",
    "check_implemented",
    "get_kernel",
    "kernel_files",
    "kernel_path",
    "kernel_signature",
    "nvcc_path",
    "nvrtc_available",
    "ptx_compilers",
    "read_source",
]
