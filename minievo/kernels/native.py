"""The compiled CPU kernel of the compact layers: ``sparse_cpu.c``, built on first use.

minievo ships the C source, not a binary. The first time a compact layer asks for the native
path, :func:`load` compiles ``sparse_cpu.c`` with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) for this very CPU (``-O3 -march=native``), keeps the shared library in a
cache folder, and loads it with :mod:`ctypes`. Later runs load the cached library (a few ms).

Nothing else depends on it: without a C compiler (or with ``MINIEVO_NATIVE=0``) the compact
layers use the NumPy/scipy.sparse path, which gives the same results more slowly, and
:func:`status` says why (``minievo doctor`` prints it).

The cache key is a hash of the source, the compiler's version, the flags and the CPU's model
and feature flags, so a library built for one machine is never loaded on another (a shared home
folder on a cluster, say), where ``-march=native`` code could die of an illegal instruction.

Folder: ``$MINIEVO_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/minievo/native``, else
``~/.cache/minievo/native``. Writes are atomic (compile to a temporary name, then rename), so
two processes building at once never load half a file.

A cached library is loaded only when it can be trusted: a regular file (not a symlink) owned by
this user and writable by no one else, in a folder of the same kind, whose SHA-256 equals the
one recorded next to it (``<name>.sha256``) when it was built. Anything else (a truncated or
planted file, a missing record) is rebuilt, with a message on stderr. A build that takes more
than ``$MINIEVO_NATIVE_BUILD_TIMEOUT`` seconds (default 60) is stopped, and the compact layers
fall back to the NumPy paths, with a message. A value of that variable that is not a number of
seconds in (0, 1e6) (``0``, ``-1``, ``abc``) is a ValueError naming it, not a quiet fallback.

ctypes releases the GIL during the call, so :mod:`minievo.sparse.cpu` runs slices of the batch
on a few Python threads at once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from minievo.checkpoint import current_umask as checkpoint_umask
from minievo.functions.conv import conv_output_size

from . import KERNEL_DIR

SOURCE = KERNEL_DIR / "sparse_cpu.c"

#: The kernel's interface version (``minievo_sparse_cpu_version()``); a library reporting
#: another one is rebuilt.
ABI_VERSION = 7

#: Compiler flags, tried in order until one set works (-march=native is not known to every
#: compiler; without it the library is portable and somewhat slower).
FLAG_SETS = (
    ["-O3", "-std=gnu11", "-march=native", "-fPIC", "-shared"],
    ["-O3", "-std=gnu11", "-fPIC", "-shared"],
)

#: The flags of a build under AddressSanitizer and UBSan (``MINIEVO_NATIVE_SANITIZE=1``, for
#: the fuzz test: the process must preload libasan). Part of the cache key like any flags.
SANITIZE_FLAGS = ["-O1", "-g", "-std=gnu11", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-fPIC", "-shared"]


def _flag_sets() -> tuple:
    if os.environ.get("MINIEVO_NATIVE_SANITIZE") == "1":
        return (SANITIZE_FLAGS,)
    return FLAG_SETS


_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_int = ctypes.c_int

_ERRORS = {1: "could not allocate the kernel's workspace",
           2: "inconsistent sizes (batch range, padding, pooling or output size)",
           3: "output size, stride or offsets reach outside x"}


class NativeUnavailable(RuntimeError):
    """The native kernel cannot be used here; the message says why and what to do."""


def enabled() -> bool:
    """False when ``MINIEVO_NATIVE`` is set to 0 / false / no / off."""
    return os.environ.get("MINIEVO_NATIVE", "1").strip().lower() not in ("0", "false", "no",
                                                                          "off")


def compiler() -> str | None:
    """Path of the C compiler: ``$CC`` if set (None when it is not found), else the first of
    cc, gcc, clang on PATH."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def cache_dir() -> Path:
    """Where compiled libraries are kept (see the module docstring)."""
    env = os.environ.get("MINIEVO_NATIVE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minievo" / "native"


def _cpu_identity() -> str:
    """Model name and feature flags of this CPU (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = []
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("model name", "flags", "features", "cpu part", "isa") and line not in keep:
            keep.append(line)
        if not line.strip() and keep:  # the first processor's block is enough
            break
    return "\n".join([platform.machine(), *keep])


#: The longest build ``$MINIEVO_NATIVE_BUILD_TIMEOUT`` may allow, in seconds.
MAX_BUILD_TIMEOUT = 1e6


def build_timeout() -> float:
    """Seconds a build may take (``$MINIEVO_NATIVE_BUILD_TIMEOUT``, default 60).

    Raises:
        ValueError: when the variable is set to anything but a finite number of seconds in
            (0, :data:`MAX_BUILD_TIMEOUT`) (one line naming it). A bad value is a mistake to
            fix, not a reason to switch the kernel off quietly: :func:`load` passes the error
            on instead of falling back to the NumPy paths.
    """
    text = os.environ.get("MINIEVO_NATIVE_BUILD_TIMEOUT", "").strip() or "60"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < MAX_BUILD_TIMEOUT:  # also NaN and inf
        raise ValueError(f"MINIEVO_NATIVE_BUILD_TIMEOUT={text!r}: allowed: a number of "
                         f"seconds in (0, {MAX_BUILD_TIMEOUT:.0f})")
    return value


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout the whole group is killed (a compiler's
    children too) and subprocess.TimeoutExpired raised."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@functools.cache
def _compiler_version(cc: str) -> str:
    try:
        return _run([cc, "--version"], min(10.0, build_timeout())).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library_path(cc: str, flags: list[str]) -> Path:
    """The cached library for this source, compiler, flag set and CPU."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), _compiler_version(cc).encode(), " ".join(flags).encode(),
                 _cpu_identity().encode(), str(ABI_VERSION).encode()):
        h.update(part)
        h.update(b"\0")
    suffix = ".dll" if os.name == "nt" else ".so"
    return cache_dir() / f"sparse_cpu-{h.hexdigest()[:16]}{suffix}"


class _BuildTimeout(NativeUnavailable):
    """The compiler ran past :func:`build_timeout`."""


def _hash_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(cc: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_owned(target.parent, "folder")
    _remove_stale_builds(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    timeout = build_timeout()
    try:
        try:
            done = _run([cc, *flags, str(SOURCE), "-o", tmp], timeout)
        except subprocess.TimeoutExpired:
            raise _BuildTimeout(f"{cc} took more than {timeout:g} s to compile {SOURCE.name} "
                                "(stopped; set MINIEVO_NATIVE_BUILD_TIMEOUT to wait longer)"
                                ) from None
        if done.returncode != 0:
            raise NativeUnavailable(f"{cc} {' '.join(flags)} failed:\n{done.stderr.strip()}")
        os.chmod(tmp, 0o755 & ~checkpoint_umask())
        digest = _sha256(Path(tmp))
        # The record first: a library without a matching record is never loaded.
        fd, tmp_hash = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp",
                                        dir=target.parent)
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
        os.chmod(tmp_hash, 0o644 & ~checkpoint_umask())
        os.replace(tmp_hash, _hash_path(target))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_builds(folder: Path) -> None:
    """Temporary files of builds killed before they finished (older than any build may run;
    a build under way in another process is younger)."""
    limit = time.time() - 2 * build_timeout() - 60
    for p in folder.glob("sparse_cpu-*.tmp"):
        try:
            if p.lstat().st_mtime < limit:
                p.unlink()
        except OSError:
            pass


def _check_owned(path: Path, what: str) -> os.stat_result:
    """The stat of ``path``; NativeUnavailable unless it is a real (not symlinked) file or
    folder owned by this user and writable by no one else."""
    st = os.lstat(path)
    kind_ok = stat.S_ISDIR(st.st_mode) if what == "folder" else stat.S_ISREG(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not kind_ok:
        raise NativeUnavailable(f"{path} is not a plain {what} (a symlink or another kind); "
                                "refusing to use it")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise NativeUnavailable(f"{path} is owned by uid {st.st_uid}, not by this user; "
                                "refusing to use it")
    if st.st_mode & 0o022:
        raise NativeUnavailable(f"{path} is writable by others (mode "
                                f"{stat.S_IMODE(st.st_mode):o}); refusing to use it")
    return st


def _trusted(path: Path) -> str | None:
    """None when the cached library at ``path`` may be loaded, else why not."""
    try:
        _check_owned(path.parent, "folder")
        _check_owned(path, "file")
        record = _hash_path(path)
        _check_owned(record, "file")
        want = record.read_text().strip()
        if _sha256(path) != want:
            return "its SHA-256 differs from the one recorded when it was built"
    except FileNotFoundError as e:
        return f"{e.filename} is missing"
    except (NativeUnavailable, OSError) as e:
        return str(e)
    return None


_Strides = ctypes.c_longlong * 4


def element_strides(a: np.ndarray) -> tuple[int, ...] | None:
    """The strides of ``a`` in elements, or None when one is not a whole number of them."""
    if any(st % a.itemsize for st in a.strides):
        return None
    return tuple(st // a.itemsize for st in a.strides)


def _check(what: str, checks: list) -> None:
    """Refuse arrays that are not NumPy, of another dtype, not C-contiguous (unless the name is
    in the layout-checked set) or of another shape."""
    for name, arr, dtype, shape in checks:
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{what}: {name} must be a NumPy array, got {type(arr).__name__}")
        if arr.dtype != dtype:
            raise TypeError(f"{what}: {name} must be {np.dtype(dtype).name}, got {arr.dtype}")
        if name not in ("x", "out", "gy") and not arr.flags.c_contiguous:
            raise ValueError(f"{what}: {name} must be C-contiguous")
        if not arr.flags.aligned:
            raise ValueError(f"{what}: {name} is not aligned to its {arr.itemsize}-byte "
                             "elements")
        if shape is not None and arr.shape != shape:
            raise ValueError(f"{what}: {name} has shape {arr.shape}, expected {shape}")


def _readable(what: str, name: str, a) -> tuple[np.ndarray, tuple[int, ...]]:
    """(a, its element strides); a is copied only in the rare case that its strides are not
    whole elements."""
    if not isinstance(a, np.ndarray) or a.ndim != 4:
        raise ValueError(f"{what} expects {name} (C, H, W, N) as a NumPy array, got "
                         f"{getattr(a, 'shape', type(a).__name__)}")
    strides = element_strides(a)
    if strides is None or not a.flags.aligned:
        a = np.array(a, order="C")  # aligned, whole-element strides
        strides = element_strides(a)
    return a, strides


def _check_size(what: str, c: int, h: int, w: int) -> None:
    """The kernel indexes an image's packed pixels with int; every offset is checked in C."""
    if c * h * w >= 2**31:
        raise ValueError(f"{what}: more than 2**31 input values per image")


def _raise_for(what: str, rc: int) -> None:
    """Every error code of the kernel is a ValueError (it wrote nothing out of bounds)."""
    if rc != 0:
        raise ValueError(f"{what}: {_ERRORS.get(rc, f'error code {rc}')}")


def _check_pointers(what: str, syn_ptr: np.ndarray, off: np.ndarray) -> None:
    """syn_ptr: non-decreasing indices into off (a slice of a longer syn_ptr is fine: a thread
    may run some of the maps)."""
    if off.ndim != 1:
        raise ValueError(f"{what}: off must be one-dimensional, got shape {off.shape}")
    if syn_ptr.size and (syn_ptr[0] < 0 or syn_ptr[-1] > off.size
                         or np.any(np.diff(syn_ptr) < 0)):
        raise ValueError(f"{what}: syn_ptr must be non-decreasing indices into off "
                         f"(0..{off.size})")


def _batch_range(n_begin: int, n_end: int | None, n: int) -> int:
    n_end = n if n_end is None else n_end
    if not 0 <= n_begin <= n_end <= n:
        raise ValueError(f"batch range [{n_begin}, {n_end}) outside 0..{n}")
    return n_end


class NativeKernel:
    """The loaded library, with argument checks in front of its entry points."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        version = lib.minievo_sparse_cpu_version()
        if version != ABI_VERSION:
            raise NativeUnavailable(f"{path} has interface version {version}, this minievo "
                                    f"needs {ABI_VERSION}; delete it to rebuild")
        self.tile = int(lib.minievo_sparse_cpu_tile())
        fn = lib.minievo_sparse_conv
        fn.restype = _int
        fn.argtypes = [_f32p, _int, _int, _int, _int,          # x, C, H, W, N
                       _Strides, _int,                         # x strides, pad
                       _int, _i32p, _i32p, _f32p,              # O, syn_ptr, off, w
                       _int, _int, _int,                       # OH, OW, stride
                       _f32p, _f32p,                           # bias, bias_map
                       _int, _int, _int,                       # pool_k, pool_s, relu
                       _int, _int,                             # out_h, out_w
                       _f32p, _i32p, _Strides,                 # out, out_map, out strides
                       _int, _int]                             # n_begin, n_end
        self._conv = fn
        fn = lib.minievo_sparse_conv_wgrad
        fn.restype = _int
        fn.argtypes = [_f32p, _int, _int, _int, _int,          # x, C, H, W, N
                       _Strides, _int,                         # x strides, pad
                       _int, _i32p, _i32p,                     # O, syn_ptr, off
                       _int, _int, _int,                       # OH, OW, stride
                       _f32p, _Strides,                        # gy, gy strides
                       ctypes.POINTER(ctypes.c_double),        # gw
                       _int, _int]                             # n_begin, n_end
        self._wgrad = fn
        self._lib = lib

    def conv(self, x: np.ndarray, syn_ptr: np.ndarray, off: np.ndarray, w: np.ndarray,
             out_hw: tuple[int, int], stride: int, bias: np.ndarray,
             bias_map: np.ndarray | None, pool: tuple[int, int] | None, relu: bool,
             out: np.ndarray, n_begin: int = 0, n_end: int | None = None,
             out_map: np.ndarray | None = None, pad: int = 0) -> None:
        """out[..., n_begin:n_end] = the sparse convolution of x (C, H, W, N).

        Synapses of output map o: ``syn_ptr[o] .. syn_ptr[o+1]-1`` with weight ``w[s]`` and
        input offset ``off[s] = (c*Hp + ky)*Wp + kx`` in x padded by ``pad`` zeros on every
        side (Hp = H + 2*pad). A linear layer is x (F, 1, 1, N) with off = the input feature.
        ``out`` is (O, PH, PW, N), where PH, PW are the pooled (or, without ``pool``, the
        convolution's) output size; with ``out_map`` (int32, (O,), distinct) map o goes to map
        ``out_map[o]`` of a larger ``out`` instead.

        ``x`` and ``out`` may have any strides: the views ``x_nchw.transpose(1, 2, 3, 0)`` of a
        batch-first array, or of minievo's channels-last activations, are read and written in
        place, without a transposing copy.

        Every other array must be C-contiguous with the exact dtype (float32, or int32 for
        ``syn_ptr`` / ``off``), and any array of another dtype is refused with TypeError, never
        reinterpreted; shape mismatches raise ValueError.
        """
        what = "native conv"
        x, xs = _readable(what, "x", x)
        c, h, wd, n = x.shape
        o = len(syn_ptr) - 1
        oh, ow = out_hw
        if pool is not None and not (1 <= pool[0] <= min(oh, ow) and pool[1] >= 1):
            raise ValueError(f"{what}: max pooling (size {pool[0]}, stride {pool[1]}) needs a "
                             f"size in 1..{min(oh, ow)} and a stride >= 1")
        ph, pw = (oh, ow) if pool is None else (conv_output_size(oh, pool[0], pool[1], 0),
                                                conv_output_size(ow, pool[0], pool[1], 0))
        n_end = _batch_range(n_begin, n_end, n)
        checks = [("x", x, np.float32, None), ("syn_ptr", syn_ptr, np.int32, (o + 1,)),
                  ("off", off, np.int32, None),
                  ("w", w, np.float32, off.shape), ("bias", bias, np.float32, (o,)),
                  ("out", out, np.float32, (o if out_map is None else
                                            getattr(out, "shape", (0,))[0], ph, pw, n))]
        if out_map is not None:
            checks.append(("out_map", out_map, np.int32, (o,)))
        if bias_map is not None:
            checks.append(("bias_map", bias_map, np.float32, (o, oh, ow)))
        _check(what, checks)
        _check_pointers(what, syn_ptr, off)
        os_ = element_strides(out)
        if os_ is None or not out.flags.writeable or any(
                st == 0 and size > 1 for st, size in zip(os_, out.shape)):
            raise ValueError(f"{what}: out must be a writeable array with no repeated "
                             "elements")
        if out_map is not None and out_map.size and (
                out_map.min() < 0 or out_map.max() >= out.shape[0]
                or len(np.unique(out_map)) != out_map.size):
            raise ValueError(f"{what}: out_map must hold distinct maps of out (0.."
                             f"{out.shape[0] - 1})")
        if pad < 0:
            raise ValueError(f"{what}: pad must be >= 0, got {pad}")
        _check_size(what, c, h + 2 * pad, wd + 2 * pad)
        pk, ps = pool if pool is not None else (0, 0)
        ptr = lambda a, t: a.ctypes.data_as(t)  # noqa: E731
        rc = self._conv(ptr(x, _f32p), c, h, wd, n, _Strides(*xs), pad, o, ptr(syn_ptr, _i32p),
                        ptr(off, _i32p), ptr(w, _f32p), oh, ow, stride, ptr(bias, _f32p),
                        None if bias_map is None else ptr(bias_map, _f32p), pk, ps, int(relu),
                        ph, pw, ptr(out, _f32p), None if out_map is None else ptr(out_map, _i32p),
                        _Strides(*os_), n_begin, n_end)
        _raise_for(what, rc)

    def wgrad(self, x: np.ndarray, syn_ptr: np.ndarray, off: np.ndarray, stride: int,
              gy: np.ndarray, gw: np.ndarray, n_begin: int = 0,
              n_end: int | None = None, pad: int = 0) -> None:
        """gw[s] += the weight gradient of live synapse s over images n_begin .. n_end - 1.

        ``x`` (C, H, W, N), ``pad`` and the synapse lists are those of :meth:`conv`; ``gy``
        (O, OH, OW, N) is the gradient of the convolution's output (before any pooling), with
        any strides; ``gw`` is float64 (nnz,) and is added to, not overwritten.
        """
        what = "native weight gradient"
        x, xs = _readable(what, "x", x)
        gy, gs = _readable(what, "gy", gy)
        c, h, wd, n = x.shape
        o = len(syn_ptr) - 1
        if gy.shape[0] != o or gy.shape[3] != n:
            raise ValueError(f"{what}: gy has shape {gy.shape}, expected ({o}, OH, OW, {n})")
        oh, ow = gy.shape[1:3]
        n_end = _batch_range(n_begin, n_end, n)
        _check(what, [("x", x, np.float32, None), ("gy", gy, np.float32, None),
                      ("syn_ptr", syn_ptr, np.int32, (o + 1,)),
                      ("off", off, np.int32, None),
                      ("gw", gw, np.float64, off.shape)])
        _check_pointers(what, syn_ptr, off)
        if not gw.flags.writeable:
            raise ValueError(f"{what}: gw must be writeable")
        if pad < 0:
            raise ValueError(f"{what}: pad must be >= 0, got {pad}")
        _check_size(what, c, h + 2 * pad, wd + 2 * pad)
        ptr = lambda a, t: a.ctypes.data_as(t)  # noqa: E731
        rc = self._wgrad(ptr(x, _f32p), c, h, wd, n, _Strides(*xs), pad, o,
                         ptr(syn_ptr, _i32p), ptr(off, _i32p), oh, ow, stride, ptr(gy, _f32p),
                         _Strides(*gs), gw.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                         n_begin, n_end)
        _raise_for(what, rc)


_lock = threading.Lock()
_loaded: NativeKernel | NativeUnavailable | None = None  # the outcome of the first attempt


def _load() -> NativeKernel:
    cc = compiler()
    if cc is None:
        want = f"$CC={os.environ['CC']!r} was not found" if os.environ.get("CC") else (
            "no C compiler (cc, gcc or clang) on PATH")
        raise NativeUnavailable(f"{want}; install one (e.g. apt install gcc) for the fast "
                                "compiled path")
    errors = []
    for flags in _flag_sets():
        try:
            path = library_path(cc, flags)
            if os.path.lexists(path) or os.path.lexists(_hash_path(path)):
                why = _trusted(path)
                if why is not None:
                    print(f"minievo: the cached native kernel {path} cannot be trusted ({why}); "
                          "rebuilding it", file=sys.stderr)
                    for stale in (path, _hash_path(path)):
                        if os.path.lexists(stale):
                            os.unlink(stale)
                    _build(cc, flags, path)
            else:
                _build(cc, flags, path)
            return NativeKernel(path)
        except _BuildTimeout as e:
            print(f"minievo: {e}; the compact layers use the NumPy paths", file=sys.stderr)
            raise NativeUnavailable(str(e)) from None
        except (NativeUnavailable, OSError, subprocess.SubprocessError) as e:
            errors.append(str(e))
    raise NativeUnavailable("could not build the native kernel:\n" + "\n".join(errors))


def load() -> NativeKernel:
    """The compiled kernel (built and cached on first use); raises :class:`NativeUnavailable`
    with the reason when it is switched off or cannot be built. A failure is remembered, so
    the compiler is tried once per process (see :func:`reset`).

    Raises:
        NativeUnavailable: switched off, no compiler, a failed or timed-out build.
        ValueError: ``$MINIEVO_NATIVE_BUILD_TIMEOUT`` is not a number of seconds
            (:func:`build_timeout`); not remembered, so fixing it is enough.
    """
    global _loaded
    if not enabled():
        raise NativeUnavailable("switched off by MINIEVO_NATIVE=0")
    build_timeout()  # a bad setting is an error, whether or not a build is needed
    with _lock:
        if _loaded is None:
            try:
                _loaded = _load()
            except NativeUnavailable as e:
                _loaded = e
        if isinstance(_loaded, NativeUnavailable):
            raise _loaded
        return _loaded


def available() -> bool:
    """True when :func:`load` works (ValueError, as there, for a bad
    ``$MINIEVO_NATIVE_BUILD_TIMEOUT``)."""
    try:
        load()
    except NativeUnavailable:
        return False
    return True


def status() -> str:
    """One line for ``minievo doctor``: where the library is, or why there is none."""
    try:
        k = load()
    except NativeUnavailable as e:
        return f"unavailable ({e}); the compact layers use scipy.sparse instead"
    except ValueError as e:
        return f"unusable: {e}"
    return f"{k.path} (tile of {k.tile} images)"


def reset() -> None:
    """Forget the outcome of :func:`load` (tests use it after changing $CC or
    $MINIEVO_NATIVE_CACHE)."""
    global _loaded
    with _lock:
        _loaded = None
