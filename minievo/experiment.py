"""Shared pieces of an experiment: data loaders, the optimiser recipe, run directories."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

from minievo.runlock import LOCK_NAME


class UsageError(Exception):
    """Bad input from the user (a flag, a directory): printed as one line, exit status 2."""


TRAIN_DEFAULTS = {
    # The Caffe LeNet-5 solver: SGD lr 0.01, momentum 0.9, weight decay 5e-4, "inv" policy,
    # batch 64.
    "model": "lenet5", "dataset": "mnist", "epochs": 10, "batch_size": 64, "lr": 0.01,
    "momentum": 0.9, "weight_decay": 5e-4, "lr_policy": "inv", "seed": 0,
}


def check_environment() -> None:
    """Refuse bad values of the environment variables that change how a run computes.

    ``$MINIEVO_SPARSE_THREADS`` (a whole number of threads) and
    ``$MINIEVO_NATIVE_BUILD_TIMEOUT`` (seconds, a finite number > 0) are otherwise read only
    deep inside the first compact forward or kernel build; the commands check them before a
    run folder is written to.

    Raises:
        UsageError: one line naming the variable, its value and what is allowed.
    """
    from minievo.kernels import native  # noqa: PLC0415
    from minievo.sparse import cpu  # noqa: PLC0415

    for check in (cpu.threads_from_environment, native.build_timeout):
        try:
            check()
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_machine_warning(load: float | None = None, cores: int | None = None,
                         blas_threads: int | None = None) -> str | None:
    """A warning for a run about to train in this process on a machine already busy.

    Threaded BLAS (OpenBLAS's default: a thread per core) beside other busy processes spins
    its threads waiting for each other: on 2 cores beside three busy sweep workers, a recovery
    epoch took over 300 CPU-seconds with 2 OpenBLAS threads and 23 s with 1. ``minievo
    sweep`` runs its workers on one thread each; the commands that train in their own process
    (train, evolve, recover) keep the library's default, because the threads change a run's
    summation order (``numerics`` in its config.json), and warn instead when the 1-minute load
    average already fills every core.

    Args:
        load: the 1-minute load average (default: :func:`os.getloadavg`; no warning where the
            OS has none).
        cores: the usable cores (default :func:`usable_cores`).
        blas_threads: the threads NumPy's BLAS runs (default: as threadpoolctl reports).

    Returns:
        str | None: one line, or None when BLAS runs one thread or the machine is not busy.
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows, or no load average
            return None
    cores = usable_cores() if cores is None else cores
    if blas_threads is None:
        found = blas_kernels()["blas_num_threads"]
        blas_threads = found if isinstance(found, int) else 1
    if blas_threads <= 1 or load < cores:
        return None
    return (f"the machine is busy (load {load:.1f} on {cores} cores) and BLAS runs "
            f"{blas_threads} threads: beside busy processes threaded BLAS can train many "
            f"times slower; OPENBLAS_NUM_THREADS=1 (MKL: MKL_NUM_THREADS=1) runs one thread "
            f"(a resume under other threads warns: the summation order changes)")


#: The largest validation split: beyond it the network would train on fewer images than it is
#: validated on.
MAX_VAL_FRACTION = 0.5


def make_loaders(dataset: str, batch_size: int, seed: int, data_dir=None, limit_train=None,
                 limit_test=None, val_fraction: float = 0.0, backend_name: str = "numpy",
                 augment: bool = False):
    """Train (and optional validation) and test loaders for a named dataset; ``augment``
    crops and flips the training batches only (data_loaders.Augment, seeded by ``seed``)."""
    import data_loaders as dl

    for flag, value in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise UsageError(f"{flag} {value!r}: allowed: an integer >= 1")
    if isinstance(val_fraction, bool) or not (isinstance(val_fraction, int | float)
                                              and 0 <= val_fraction <= MAX_VAL_FRACTION):
        raise UsageError(f"--val-fraction {val_fraction!r}: allowed: a number in "
                         f"[0, {MAX_VAL_FRACTION:g}] (the rest trains)")
    x_train, y_train = dl.load_dataset(dataset, "train", data_dir=data_dir, n=limit_train)
    x_test, y_test = dl.load_dataset(dataset, "test", data_dir=data_dir, n=limit_test)
    info = dl.DATASETS[dl.dataset_name(dataset)]
    norm = (info.mean, info.std)
    val = None
    if val_fraction:
        (x_train, y_train), (x_val, y_val) = dl.split_train_val(x_train, y_train, val_fraction,
                                                                seed=seed)
        classes = len(info.classes)
        if len(x_val) == 0 or len(x_train) < classes:
            raise UsageError(f"--val-fraction {val_fraction} of {len(x_train) + len(x_val)} "
                             f"training samples leaves {len(x_val)} for validation and "
                             f"{len(x_train)} for training; validation needs at least one and "
                             f"training at least {classes} (one per class)")
        val = dl.DataLoader(x_val, y_val, batch_size=1000, shuffle=False, normalize=norm,
                            backend=backend_name)
    train = dl.DataLoader(x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed,
                          normalize=norm, backend=backend_name,
                          augment=dl.Augment() if augment else None)
    test = dl.DataLoader(x_test, y_test, batch_size=1000, shuffle=False, normalize=norm,
                         backend=backend_name)
    return train, val, test


#: The learning-rate policies: Caffe's inv and step, a fixed rate, and a linear fall to zero
#: over the training run (which needs its length: ``total_iterations``).
LR_POLICIES = ("inv", "step", "fixed", "linear")


def make_optimizer(model, cfg: dict, total_iterations: int | None = None):
    """SGD with momentum and weight decay from ``cfg`` and the schedule of its ``lr_policy``.

    ``total_iterations``: the updates of the whole training run, needed by ``linear`` (the
    rate reaches zero at its last update)."""
    from minievo import optim

    opt = optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                    weight_decay=cfg["weight_decay"])
    policy = cfg.get("lr_policy", "inv")
    if policy == "inv":
        sched = optim.InvLR(opt)
    elif policy == "step":
        sched = optim.StepLR(opt, step_size=cfg.get("step_size", 5000), gamma=0.1)
    elif policy == "fixed":
        sched = None
    elif policy == "linear":
        if total_iterations is None or total_iterations < 1:
            raise UsageError("--lr-policy linear needs the length of the training run (the "
                             "rate falls to zero at its last update)")
        sched = optim.LinearDecayLR(opt, int(total_iterations))
    else:
        raise UsageError(f"unknown --lr-policy {policy!r}; choose {', '.join(LR_POLICIES)}")
    return opt, sched


#: The temporary files of minievo's atomic writes (checkpoint.atomic_write_bytes: mkstemp with
#: prefix ".<name>." and suffix ".tmp"); a kill can leave them behind.
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
#: What a run writes before it has produced anything: a folder holding only these is reusable.
START_FILES = ("config.json", "generation0_init.npz")


#: The BLAS kernels NumPy multiplies with: a resume under another library, version or kernel
#: architecture (OpenBLAS picks its kernels by CPU) warns like the other numerics settings.
KERNEL_KEYS = ("blas_library", "blas_version", "blas_architecture")
#: Compared like the kernels, when both records have them: NumPy's own SIMD targets.
SIMD_KEYS = ("numpy_simd",)
#: Recorded for the reader, never compared: the threads OpenBLAS actually runs (follows the
#: core count unless ``blas_threads`` sets it) and the CPU model (with the same kernels, another
#: CPU computes the same numbers).
RECORD_ONLY = ("blas_num_threads", "cpu")
UNKNOWN = "unknown"


def blas_kernels() -> dict:
    """The BLAS library NumPy multiplies with, as threadpoolctl reports it.

    Returns:
        dict: ``blas_library`` (threadpoolctl's internal_api, e.g. ``"openblas"``),
        ``blas_version``, ``blas_architecture`` (the kernels OpenBLAS chose for this CPU, e.g.
        ``"Haswell"``, ``"SkylakeX"``; ``$OPENBLAS_CORETYPE`` forces them) and
        ``blas_num_threads``; each ``"unknown"`` when threadpoolctl is missing, fails or finds
        no BLAS (MKL reports no architecture). Never raises.
    """
    info = dict.fromkeys((*KERNEL_KEYS, "blas_num_threads"), UNKNOWN)
    try:
        # threadpoolctl lists only the libraries already loaded: NumPy's first
        import numpy  # noqa: F401, PLC0415
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except Exception:  # a missing or broken threadpoolctl must not stop a run
        return info
    if not libs:
        return info
    # NumPy's own library first (SciPy may load a second one, in scipy.libs)
    lib = next((lib for lib in libs if "numpy" in str(lib.get("filepath", "")).lower()),
               libs[0])
    for key, name in (("blas_library", "internal_api"), ("blas_version", "version"),
                      ("blas_architecture", "architecture"), ("blas_num_threads", "num_threads")):
        if lib.get(name) not in (None, ""):
            info[key] = lib[name]
    return info


def numpy_simd() -> str:
    """The SIMD targets NumPy's own loops run with on this CPU (its dispatched features that
    are on, e.g. ``"X86_V3"`` on an AVX2 CPU, ``"X86_V3 X86_V4 AVX512_ICL"`` with AVX-512):
    a wider vector sums in another order, so a run's numbers depend on it as on the BLAS
    kernels (``NPY_DISABLE_CPU_FEATURES`` turns targets off). ``"unknown"`` when NumPy does
    not say. Never raises."""
    try:
        import numpy  # noqa: PLC0415

        umath = getattr(numpy, "_core", None) or numpy.core
        features = umath._multiarray_umath.__cpu_features__
        dispatch = umath._multiarray_umath.__cpu_dispatch__
        return " ".join(f for f in dispatch if features.get(f)) or "baseline"
    except Exception:  # another NumPy: the record says so
        return UNKNOWN


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's first ``model name`` where there is one (Linux on
    x86), else :func:`platform.processor`, else the machine type, else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    import platform  # noqa: PLC0415

    return platform.processor() or platform.machine() or UNKNOWN


def numerics_settings() -> dict:
    """The settings that change a run's numbers without being part of its configuration:
    whether the accelerator runs (minievo.accel.enabled(); read here from the layers' op
    table, so that recording it imports nothing), its sparse training mode, whether the native
    kernel is usable (switched on and built: False when the NumPy paths stand in for it), the
    BLAS threads (a different summation order), and the BLAS kernels
    (:func:`blas_kernels`: library, version, architecture). Recorded in the run's config.json
    with, for the reader only, the BLAS threads running and the CPU model (:data:`RECORD_ONLY`);
    a resume under other settings warns (``--strict-numerics`` /
    ``MINIEVO_STRICT_NUMERICS=1``: refuses). Cheap (a few milliseconds) and never raises."""
    from minievo import layers  # noqa: PLC0415
    from minievo.kernels import native  # noqa: PLC0415

    accel = layers.ops.name == "accel"
    mode = "off"  # the reference path never trains through the kernel
    if accel:
        from minievo.accel import sparse_train  # noqa: PLC0415

        mode = sparse_train.get_mode()
    blas = next((os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                         "MKL_NUM_THREADS") if os.environ.get(k)), "default")
    try:
        usable = native.enabled() and native.available()
    except ValueError:  # a bad $MINIEVO_NATIVE_BUILD_TIMEOUT (check_environment refuses it)
        usable = False
    return {"accel": accel, "sparse_training": mode, "native": usable,
            "blas_threads": blas, **blas_kernels(), "numpy_simd": numpy_simd(),
            "cpu": cpu_model()}


def run_record(kind: str, config: dict) -> dict:
    """The content of a run's config.json."""
    return {"kind": kind, "config": config, "numerics": numerics_settings()}


def _numerics_differences(recorded: dict, now: dict) -> list[str]:
    """``"key old -> new"`` for each compared setting that differs. A kernel key that the
    record lacks (a run started before the kernels were recorded) or that is ``"unknown"`` on
    either side cannot be compared and is passed over silently, as a record without any
    settings is; the :data:`RECORD_ONLY` keys are never compared."""
    diff = []
    for key, value in now.items():
        if key in RECORD_ONLY:
            continue
        old = recorded.get(key)
        if key in (*KERNEL_KEYS, *SIMD_KEYS) and (key not in recorded or
                                                  UNKNOWN in (old, value)):
            continue
        if old != value:
            diff.append(f"{key} {old!r} -> {value!r}")
    return diff


def _check_numerics(cfg_path: Path, recorded) -> None:
    if not isinstance(recorded, dict):
        return  # a run started before the settings were recorded
    now = numerics_settings()
    diff = _numerics_differences(recorded, now)
    if not diff:
        return
    if recorded.get("cpu", now["cpu"]) != now["cpu"]:
        diff.append(f"on CPU {recorded['cpu']!r} -> {now['cpu']!r}")
    what = (f"{cfg_path.parent} was started with other numerics settings ({', '.join(diff)}); "
            "the resumed run will not repeat an uninterrupted one exactly")
    if os.environ.get("MINIEVO_STRICT_NUMERICS", "0") not in ("", "0"):
        raise UsageError(what + " (refused: --strict-numerics)")
    print(f"minievo: warning: {what}", file=sys.stderr)


def remove_stale_tmp(folder: Path) -> int:
    """Delete the leftovers of interrupted atomic writes under ``folder``; returns how many."""
    removed = 0
    for p in folder.rglob(".*.tmp"):
        if _TMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def check_run_dir(out: Path, config: dict, kind: str) -> bool:
    """True when ``out`` holds this same run (resume); error when it holds a different one.

    A folder holding only the leftovers of a killed first write, or only the start files of a
    run that produced nothing (a start that failed), is reused; stale temporary files of a
    run are removed."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        if out.exists():
            entries = [p for p in out.iterdir() if p.name != LOCK_NAME]
            if entries and all(_TMP_NAME.match(p.name) and p.is_file() for p in entries):
                remove_stale_tmp(out)  # a kill during the first write of config.json
                entries = []
            if entries:
                raise UsageError(f"output directory {out} is not empty and holds no minievo "
                                 f"{kind} run; choose another --out")
        return False
    try:
        info = cfg_path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
            raise ValueError("not a regular file of at most 1 MiB")  # a FIFO, /dev/zero, ...
        old = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"{cfg_path}: not a readable run configuration ({exc}); use another "
                         "--out or delete it") from None
    if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
        raise UsageError(f"{cfg_path}: not a minievo run configuration (no 'config' object); "
                         "use another --out or delete it")
    remove_stale_tmp(out)
    if old.get("kind") != kind or old.get("config") != config:
        rest = [p.name for p in out.iterdir() if p.name not in (*START_FILES, LOCK_NAME)]
        if not rest and old.get("kind") == kind:
            # the start of a run that never produced anything: reuse the folder
            for name in START_FILES:  # (the run lock stays: this process holds it)
                (out / name).unlink(missing_ok=True)
            print(f"minievo: {out} held only the start of a {kind} run that produced nothing; "
                  "starting it over with these settings", file=sys.stderr)
            return False
        diff = sorted(k for k in set(old["config"]) | set(config)
                      if old["config"].get(k) != config.get(k))
        raise UsageError(
            f"output directory {out} holds a different {old.get('kind', 'unknown')} run "
            f"(differs in: {', '.join(diff) or 'kind'}); use another --out or delete it"
        )
    _check_numerics(cfg_path, old.get("numerics"))
    return True
