"""``minievo sweep``: many lineages (seeds x settings) on ``dask.distributed``, and their report.

A sweep is a grid: a preset, options shared by every lineage (``base``), a list of settings
(each a dict of :class:`~minievo.evolution.lineage.EvolutionConfig` options), and a list of
seeds. Every (setting, seed) pair is one lineage, run by :class:`~minievo.evolution.lineage.
Lineage` in its own folder ``OUT/setting_<i>/seed_<s>/`` exactly as ``minievo evolve`` runs it,
so it checkpoints after every generation (and inside training) and resumes when rerun.

On disk:

    OUT/sweep.json                  the grid and the lineages (a different sweep is refused)
    OUT/setting_<i>/seed_<s>/       one lineage folder each; done.json once it has finished
    OUT/aggregate.csv/.json/.md     per setting and generation: mean and std over seeds
    OUT/equal_loss.csv/.json        per lineage: efficiency reached within 0.1/0.3/1.0 points
    OUT/error_vs_synapses.png       test error against synapses, every seed and the mean

Scheduling: one Dask task per lineage. By default a ``LocalCluster`` of worker processes with
one thread and one BLAS thread each; ``scheduler="tcp://HOST:8786"`` uses an existing cluster
(whose workers must see ``OUT`` at the same path: a shared filesystem). A worker that dies
takes down only the lineage it was running; Dask resubmits that task to another worker and the
lineage resumes from its last checkpoint, so at most the generation in flight is recomputed.
A rerun of the sweep skips finished lineages (``done.json``) and resumes the others.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

from minievo.checkpoint import atomic_write_bytes, atomic_write_text
from minievo.evolution import records
from minievo.evolution.lineage import PRESETS, EvolutionConfig
from minievo.experiment import UsageError

INSTALL_HINT = "pip install 'minievo[sweep]'  (or: pip install 'dask[distributed]')"
EQUAL_LOSS_POINTS = (0.1, 0.3, 1.0)
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Options of a lineage that a grid may set (the seed comes from the seed list).
GRID_OPTIONS = {f.name: f.type for f in fields(EvolutionConfig) if f.name != "seed"}
# Bounds on what a grid may ask for, checked before anything is built: each refusal is one
# line (a seed range "0-99999999" or a 10**6-setting grid would otherwise fill memory).
MAX_SEEDS = 1000
MAX_SETTINGS = 1000
MAX_LINEAGES = 10_000
MAX_SEED = 2**32 - 1  # EvolutionConfig's seed range
#: Most worker processes of a LocalCluster: each takes file descriptors, memory and a core.
MAX_WORKERS = min(64, 4 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else (os.cpu_count() or 1)))
MAX_STRING = 4096  # longest string option value (a path, a name)
GRID_KEYS = ("preset", "seeds", "base", "settings", "grid")
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
_SEED_TEXT = re.compile(r"[0-9]{1,12}")


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------
def _convert(key, value, where: str = "grid option"):
    """A grid value as the option's type (strings from the command line are parsed).

    Refuses, in one line naming the option, a value of the wrong kind: a boolean or a
    fraction for an integer, a non-finite number, a list or an object for anything, a
    non-string for a name or a path.
    """
    if not isinstance(key, str) or key not in GRID_OPTIONS:
        raise UsageError(f"unknown {where} {_show(key)}; choose from: "
                         f"{', '.join(sorted(GRID_OPTIONS))}")
    kind = str(GRID_OPTIONS[key])
    base = kind.split("|")[0].strip()

    def bad(allowed=None):
        raise UsageError(f"{where} {key!r}: {_show(value)} is not a valid "
                         f"{allowed or kind}")

    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        if "None" not in kind:
            raise UsageError(f"{where} {key!r} cannot be none")
        return None
    if isinstance(value, dict | list | tuple | set):
        bad()
    if base == "int":
        if isinstance(value, bool):
            bad()
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                bad()
            value = int(value)
        elif isinstance(value, str):
            text = value.strip()
            if not _INT_TEXT.fullmatch(text):
                bad()
            value = int(text)
        elif not isinstance(value, int):
            bad()
        if abs(value) >= 2**63:
            bad("int (out of range)")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            bad()
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):
            bad()
        if not math.isfinite(number):
            bad("finite float")
        return number
    if base == "bool":
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        bad("bool (true or false)")
    # a name or a path
    if not isinstance(value, str) or len(value) > MAX_STRING or "\0" in value:
        bad(f"{kind} (a string of at most {MAX_STRING} characters)")
    return value


def _show(value) -> str:
    """A value as a message shows it: repr, cut short (a JSON null as null)."""
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seed(value, what: str = "seeds") -> int:
    """One seed: an integer in [0, 2**32 - 1] (a JSON 3.0 is 3; a boolean is refused)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _SEED_TEXT.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise UsageError(f"{what}: {_show(value)} is not a seed; allowed: integers in "
                         f"[0, {MAX_SEED}]")
    return value


def parse_seeds(text: str, what: str = "--seeds") -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` -> [0, 1, 2].

    At most :data:`MAX_SEEDS` seeds, each once, each in [0, 2**32 - 1]; a range ``a-b`` needs
    a <= b (a reversed range is refused, not dropped). The count is bounded before any range
    is built, so ``"0-99999999"`` is a one-line error.
    """
    if not isinstance(text, str):
        raise UsageError(f"{what}: {_show(text)}; give integers like 0,1,2 or 0-2")
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        a, b = a.strip(), b.strip()
        if not _SEED_TEXT.fullmatch(a) or (sep and not _SEED_TEXT.fullmatch(b)):
            raise UsageError(f"{what} {_show(text)}: {part!r} is not a seed or a range; give "
                             "integers >= 0 like 0,1,2 or 0-2")
        lo = int(a)
        hi = int(b) if sep else lo
        if hi < lo:
            raise UsageError(f"{what} {_show(text)}: the range {part!r} is reversed; write "
                             f"{hi}-{lo}")
        if hi > MAX_SEED:
            raise UsageError(f"{what} {_show(text)}: seed {hi} is out of range; allowed: "
                             f"integers in [0, {MAX_SEED}]")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise UsageError(f"{what} {_show(text)}: more than {MAX_SEEDS} seeds; a sweep "
                             f"takes at most {MAX_SEEDS}")
        seeds += range(lo, hi + 1)
    if not seeds:
        raise UsageError(f"{what} {_show(text)}: give at least one seed")
    if len(set(seeds)) != len(seeds):
        twice = next(s for i, s in enumerate(seeds) if s in seeds[:i])
        raise UsageError(f"{what} {_show(text)}: seed {twice} is given twice; give each once")
    return seeds


def seed_list(seeds, what: str = "seeds") -> list[int]:
    """Seeds given as a string (:func:`parse_seeds`) or a list of integers, checked."""
    if isinstance(seeds, str):
        return parse_seeds(seeds, what)
    if not isinstance(seeds, list | tuple | range):
        raise UsageError(f"{what}: {_show(seeds)}; allowed: a list of integers or a string "
                         "like \"0-2\"")
    if len(seeds) > MAX_SEEDS:
        raise UsageError(f"{what}: {len(seeds):,} seeds, more than the limit of {MAX_SEEDS}")
    out = [_seed(s, what) for s in seeds]
    if not out:
        raise UsageError(f"{what}: give at least one seed")
    if len(set(out)) != len(out):
        twice = next(s for i, s in enumerate(out) if s in out[:i])
        raise UsageError(f"{what}: seed {twice} is given twice; give each once")
    return out


def load_grid_file(path) -> dict:
    """Read a grid from JSON or TOML: keys preset, seeds, base, settings and/or grid.

    The file must be a regular file of at most :data:`records.MAX_GRID_BYTES`, UTF-8, nested
    at most :data:`records.MAX_DEPTH` deep, and each key of the right kind (preset a string,
    seeds a list or a string, base and grid objects, settings a list of objects); anything
    else is a one-line :class:`UsageError` naming the file and the key.
    """
    path = Path(path)
    what = "grid file"
    toml = path.suffix.lower() == ".toml"
    try:
        data = records.parse_text(records.read_bounded(path, records.MAX_GRID_BYTES, what),
                                  path, what, toml=toml, max_containers=100_000)
    except records.RecordError as exc:
        raise UsageError(f"cannot read grid file {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"grid file {path} must hold a table/object at the top level")
    unknown = set(data) - set(GRID_KEYS)
    if unknown:
        raise UsageError(f"grid file {path}: unknown key(s) "
                         f"{', '.join(sorted(map(str, unknown)))}; use {', '.join(GRID_KEYS)}")
    shapes = {"preset": (str, "a preset name"),
              "seeds": (list | str, "a list of integers or a string like \"0-2\""),
              "base": (dict, "a table/object of options"),
              "settings": (list, "a list of tables/objects of options"),
              "grid": (dict, "a table/object mapping options to lists of values")}
    for key, (kind, allowed) in shapes.items():
        if key in data and not isinstance(data[key], kind):
            raise UsageError(f"grid file {path}: {key!r} is {_show(data[key])}; allowed: "
                             f"{allowed}")
    return data


def make_spec(preset: str = "paper-mnist", seeds=(0,), base: dict | None = None,
              settings: list | None = None, grid: dict | None = None,
              check_files: bool = True) -> dict:
    """The sweep's full, validated description.

    ``settings`` is a list of option dicts; ``grid`` maps options to lists of values whose
    Cartesian product is appended to the settings. With neither, there is one setting: the
    preset (plus ``base``) as it is. Refused, each in one line: an empty grid axis or an
    empty settings list (that would run the preset as is), two settings that give the same
    lineages, more than :data:`MAX_SETTINGS` settings (counted before the product is built),
    more than :data:`MAX_SEEDS` seeds or :data:`MAX_LINEAGES` lineages, and (with
    ``check_files``) an ``ancestor_path`` that is not a regular file.
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UsageError(f"unknown preset {_show(preset)}; choose one of: {', '.join(PRESETS)}")
    seeds = seed_list(seeds)
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise UsageError(f"base: {_show(base)}; allowed: a table/object of options")
    base = {k: _convert(k, v, "base option") for k, v in base.items()}
    if settings is not None and not isinstance(settings, list | tuple):
        raise UsageError(f"settings: {_show(settings)}; allowed: a list of tables/objects of "
                         "options")
    if settings is not None and not settings:
        raise UsageError("settings is an empty list; leave it out to run the preset as is")
    if grid is not None and not isinstance(grid, dict):
        raise UsageError(f"grid: {_show(grid)}; allowed: a table/object mapping options to "
                         "lists of values")
    axes = {}
    for k, v in (grid or {}).items():
        v = list(v) if isinstance(v, list | tuple) else [v]
        if not v:
            raise UsageError(f"grid option {_show(k)} has no values; give at least one (an "
                             "empty axis would run no setting of it)")
        if len(v) > MAX_SETTINGS:
            raise UsageError(f"grid option {_show(k)} has {len(v):,} values, more than the "
                             f"limit of {MAX_SETTINGS} settings")
        axes[k] = v
    n_settings = len(settings or []) + (math.prod(len(v) for v in axes.values()) if axes else 0)
    if n_settings > MAX_SETTINGS:
        raise UsageError(f"the grid makes {n_settings:,} settings, more than the limit of "
                         f"{MAX_SETTINGS}; split it into several sweeps")
    if max(n_settings, 1) * len(seeds) > MAX_LINEAGES:
        raise UsageError(f"{max(n_settings, 1):,} setting(s) x {len(seeds)} seeds = "
                         f"{max(n_settings, 1) * len(seeds):,} lineages, more than the limit "
                         f"of {MAX_LINEAGES:,}")
    out_settings = []
    for i, s in enumerate(settings or []):
        if not isinstance(s, dict):
            raise UsageError(f"setting {i}: {_show(s)}; a setting must be a table/object of "
                             "options")
        out_settings.append({k: _convert(k, v) for k, v in s.items()})
    if axes:
        keys = list(axes)
        values = [[_convert(k, x) for x in axes[k]] for k in keys]
        out_settings += [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if not out_settings:
        out_settings = [{}]
    spec = {"preset": preset, "seeds": seeds, "base": base, "settings": out_settings}
    first: dict[str, int] = {}
    for i, _ in enumerate(out_settings):
        config = asdict(config_of(spec, i, seeds[0]))  # every config must validate now
        config.pop("seed")
        same = first.setdefault(json.dumps(config, sort_keys=True), i)
        if same != i:
            raise UsageError(f"settings {same} and {i} give the same lineages "
                             f"({_label(out_settings[i])}); give each setting once")
        if not check_files:
            continue
        for seed in seeds:
            path = config_of(spec, i, seed).ancestor_path
            if path is not None and not Path(path).is_file():
                raise UsageError(f"setting {i}, seed {seed}: ancestor_path {path} is not a "
                                 "file")
    return spec


def config_of(spec: dict, setting: int, seed: int) -> EvolutionConfig:
    values = dict(PRESETS[spec["preset"]])
    values.update(spec["base"])
    values.update(spec["settings"][setting])
    values["seed"] = seed
    if isinstance(values.get("ancestor_path"), str):
        # one trained ancestor per seed, e.g. generation 0 of another sweep's lineages:
        # ancestor_path=OTHER/setting_0/seed_{seed}/gen_000/model.npz (a lever measured from
        # the same ancestors)
        values["ancestor_path"] = values["ancestor_path"].replace("{seed}", str(seed))
    try:
        return EvolutionConfig(**values)
    except UsageError as exc:
        raise UsageError(f"setting {setting} ({_label(spec['settings'][setting])}): {exc}") \
            from None


def _label(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "preset as is"


def lineages(spec: dict) -> list[dict]:
    """One entry per (setting, seed): name, folder (relative to OUT) and config."""
    out = []
    for i, _ in enumerate(spec["settings"]):
        for seed in spec["seeds"]:
            name = f"setting_{i}/seed_{seed}"
            out.append({"name": name, "setting": i, "seed": seed, "dir": name,
                        "config": asdict(config_of(spec, i, seed))})
    return out


def prepare_folder(out: Path, spec: dict) -> bool:
    """Write ``sweep.json``, or check it holds this sweep. True when resuming."""
    path = out / "sweep.json"
    record = {"kind": "sweep", "spec": spec}
    if path.exists():
        try:  # bounded, a regular file: a FIFO or /dev/zero here is refused, not read
            old = records.load_json(path, records.MAX_SWEEP_BYTES, "sweep record",
                                    max_containers=100_000)
        except records.RecordError as exc:
            raise UsageError(f"{exc}; not a minievo sweep record? use another --out") \
                from None
        if old != json.loads(json.dumps(record)):
            raise UsageError(f"sweep folder {out} holds a different sweep; use another --out "
                             "(its finished lineages are left as they are)")
        return True
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"sweep folder {out} is not empty and holds no minievo sweep; "
                         "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))
    return False


# ----------------------------------------------------------------------------------------------
# one lineage (runs on a Dask worker)
# ----------------------------------------------------------------------------------------------
def run_lineage(config: dict, out: str, data_dir=None, backend: str = "numpy",
                accel: bool = False, sparse_training: str = "auto") -> dict:
    """Run (or resume) one lineage in ``out``; writes ``done.json`` when it has finished.

    ``accel``: run with :mod:`minievo.accel` (and its ``sparse_training`` mode), as the
    ``minievo`` command does by default; a worker is a process of its own, so the choice made
    where the sweep was started has to be passed on, not inherited.
    """
    for k, v in BLAS_ENV.items():  # for subprocesses (the sparse kernel's threads)
        os.environ.setdefault(k, v)
    from minievo import layers
    from minievo.evolution.lineage import Lineage

    if accel:
        import minievo.accel

        minievo.accel.enable()
        minievo.accel.sparse_train.set_mode(sparse_training)
    else:
        layers.use_ops(layers.REFERENCE_OPS)

    lineage = Lineage(EvolutionConfig(**config), out, backend=backend, data_dir=data_dir,
                      progress=False, log=lambda line: None)
    rows = lineage.run()
    info = {"generations": len(rows) - 1, "pid": os.getpid()}
    atomic_write_text(Path(out) / "done.json", json.dumps(info))
    return info


def read_rows(folder: Path) -> list[dict]:
    """The checked rows of ``folder/lineage.json``; [] when the lineage has none yet.

    Raises:
        records.RecordError: when the record is not a regular file, too large, or a row
            lacks a field or holds a value out of its range (one line naming the file and
            the field; see :func:`minievo.evolution.records.read_lineage`).
    """
    path = Path(folder) / "lineage.json"
    if not os.path.lexists(path):
        return []
    return records.read_lineage(path)


def _progress_line(name: str, rows: list[dict], generations: int, t0: float) -> str:
    last = rows[-1]
    return (f"[{time.time() - t0:6.0f}s] {name}: generation {last['generation']}/{generations}"
            f"  {last['synaptic_efficiency']:.1f}x  test error "
            f"{100 * (1 - last['test_accuracy']):.2f}%")


# ----------------------------------------------------------------------------------------------
# the sweep (client side)
# ----------------------------------------------------------------------------------------------
def import_distributed():
    try:
        import distributed
    except ImportError:
        raise UsageError(f"minievo sweep needs dask.distributed; install it with: "
                         f"{INSTALL_HINT}") from None
    return distributed


def check_workers(workers) -> int:
    """``workers`` as the number of LocalCluster processes: an integer in [1, MAX_WORKERS]."""
    if not isinstance(workers, int) or isinstance(workers, bool) or \
            not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers {_show(workers)}: allowed: an integer in [1, "
                         f"{MAX_WORKERS}] (4 per core, at most 64)")
    return workers


def check_timeout(timeout) -> float:
    """``timeout`` in seconds for reaching a scheduler: a number in (0, 3600]."""
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or \
            not 0 < timeout <= 3600:
        raise UsageError(f"--scheduler-timeout {_show(timeout)}: allowed: a number of seconds "
                         "in (0, 3600]")
    return float(timeout)


def _connect(distributed, scheduler: str, timeout: float):
    """``distributed.Client(scheduler)`` with a deadline that holds whatever the peer does.

    The Client's own ``timeout`` covers a peer that refuses the connection, not one that
    accepts it and never answers (the handshake then waits for ever) or one that answers
    something other than the Dask protocol (HTTP is read as a frame length of exabytes). The
    Client is made in a daemon thread; after ``timeout`` plus a grace of 5 s the sweep is
    refused in one line and the thread, if it ever connects, closes its client.
    """
    lock, box, done = threading.Lock(), {}, threading.Event()

    def connect():
        try:
            client = distributed.Client(scheduler, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 -- reported in one line by the caller
            client, box["error"] = None, exc
        with lock:
            if box.get("abandoned") and client is not None:
                client.close()
            elif client is not None:
                box["client"] = client
            done.set()

    threading.Thread(target=connect, name="minievo-sweep-connect", daemon=True).start()
    done.wait(timeout + 5)
    with lock:
        if not done.is_set():
            box["abandoned"] = True
            raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: no answer "
                             f"within {timeout:g} s (is a Dask scheduler listening there?)")
    if "client" in box:
        return box["client"]
    exc = box["error"]
    msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if not isinstance(exc, OSError | TimeoutError | ValueError):  # a peer that is not Dask
        msg = f"its answer is not the Dask protocol ({type(exc).__name__}: {msg})"
    raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {msg}")


def start_client(workers: int = 2, scheduler: str | None = None, timeout: float = 10.0):
    """A Dask client: on an existing scheduler, or on a new LocalCluster of processes.

    Args:
        workers: LocalCluster worker processes, in [1, :data:`MAX_WORKERS`] (ignored with
            ``scheduler``).
        scheduler: address of a running scheduler (``tcp://HOST:8786``), or None.
        timeout: seconds to reach ``scheduler``, in (0, 3600]; a peer that accepts and
            never answers is refused after this plus 5 s.

    Raises:
        UsageError: one line, for a bad ``workers``/``timeout`` or a scheduler that cannot
            be reached or is not a Dask scheduler.
    """
    distributed = import_distributed()
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise UsageError(f"--scheduler {_show(scheduler)}: give an address like "
                             "tcp://HOST:8786")
        return _connect(distributed, scheduler.strip(), check_timeout(timeout))
    check_workers(workers)
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", env=dict(BLAS_ENV))
    return distributed.Client(cluster)


def check_ancestors(entries: list[dict]) -> None:
    """Load every distinct ``ancestor_path`` of these lineages as their lineage will.

    Run before any lineage is submitted, so that a missing, truncated or foreign ancestor
    (a FIFO or ``/dev/zero`` included) is one line naming the lineage and the file, not a
    failure on every worker with Dask's traceback.

    Args:
        entries: lineages as :func:`lineages` gives them.

    Raises:
        UsageError: naming the first lineage whose ancestor cannot be used.
    """
    from minievo.checkpoint import MAX_BYTES, CheckpointError
    from minievo.evolution.lineage import Lineage

    seen = set()
    for entry in entries:
        config = entry["config"]
        path = config.get("ancestor_path")
        key = (path, config["model"], config["dataset"])
        if path is None or key in seen:
            continue
        seen.add(key)
        try:
            records.check_regular_file(path, MAX_BYTES + (1 << 20), "ancestor checkpoint")
            lineage = Lineage(EvolutionConfig(**config), Path(path).parent, progress=False,
                              log=lambda line: None)
            lineage._load_ancestor(Path(path))  # reads only; the lineage folder is not made
        except (CheckpointError, UsageError) as exc:
            raise UsageError(f"{entry['name']}: ancestor_path: "
                             f"{str(exc).splitlines()[0]}") from None


def run_sweep(spec: dict, out, client=None, workers: int = 2, scheduler: str | None = None,
              data_dir=None, backend: str = "numpy", log=print, poll: float = 2.0,
              plots: bool = True, accel: bool | None = None,
              sparse_training: str | None = None, scheduler_timeout: float = 10.0) -> dict:
    """Run every unfinished lineage of ``spec`` in ``out``; returns the aggregate report.

    ``accel`` / ``sparse_training``: how the workers run each lineage (see
    :func:`run_lineage`); None takes this process's current setting. ``scheduler_timeout``:
    seconds to reach ``scheduler`` (see :func:`start_client`).

    Before anything is written or submitted, the spec is checked again (:func:`make_spec`),
    ``workers``, ``poll`` and ``scheduler_timeout`` are checked, every lineage record already
    in ``out`` is read and checked, and every ``ancestor_path`` a lineage still has to start
    from is loaded as its lineage will load it (:func:`check_ancestors`): each problem is a
    one-line :class:`UsageError` here, not a traceback on a worker.
    """
    from minievo import layers

    if accel is None:
        accel = layers.ops.name == "accel"
    if sparse_training is None:
        sparse_training = "auto"
        if accel:
            from minievo.accel import sparse_train

            sparse_training = sparse_train.get_mode()
    distributed = import_distributed()
    if not isinstance(spec, dict) or any(k not in spec for k in ("preset", "seeds", "base",
                                                                   "settings")):
        raise UsageError("spec: give the dict that make_spec returns (preset, seeds, base, "
                         "settings)")
    spec = make_spec(spec["preset"], spec["seeds"], spec["base"], spec["settings"])
    if not isinstance(poll, int | float) or isinstance(poll, bool) or not 0 < poll <= 3600:
        raise UsageError(f"poll {_show(poll)}: allowed: a number of seconds in (0, 3600]")
    if client is None and scheduler is None:
        check_workers(workers)
    elif client is None:
        check_timeout(scheduler_timeout)
    out = Path(out)
    plan = lineages(spec)
    state = {}  # lineage -> None (finished) or its rows so far
    for entry in plan:
        folder = out / entry["dir"]
        state[entry["name"]] = None if (folder / "done.json").exists() else read_rows(folder)
    check_ancestors([e for e in plan if state[e["name"]] == []])
    resume = prepare_folder(out, spec)
    todo, t0 = [], time.time()
    for entry in plan:
        rows = state[entry["name"]]
        if rows is None:
            log(f"{entry['name']}: finished, skipped")
        else:
            if rows:
                log(f"{entry['name']}: resuming after generation {rows[-1]['generation']}")
            todo.append(entry)
    if resume and not todo:
        log("every lineage of this sweep has finished")
    failures = []
    if todo:
        own = client is None
        if own:
            client = start_client(workers, scheduler, scheduler_timeout)
        try:
            futures = {}
            for entry in todo:
                fut = client.submit(run_lineage, entry["config"], str(out / entry["dir"]),
                                    data_dir, backend, accel, sparse_training, pure=False,
                                    key=f"minievo-lineage-{entry['name']}-{time.time_ns()}")
                futures[fut] = entry
            seen = {e["name"]: len(read_rows(out / e["dir"])) for e in todo}
            pending = set(futures)
            while pending:
                try:
                    done, pending = distributed.wait(pending, timeout=poll,
                                                     return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within ``poll``: report progress
                    done = set()
                for entry in todo:  # progress per lineage, read from its own table
                    rows = read_rows(out / entry["dir"])
                    if len(rows) > seen[entry["name"]]:
                        seen[entry["name"]] = len(rows)
                        log(_progress_line(entry["name"], rows,
                                           entry["config"]["generations"], t0))
                for fut in done:
                    entry = futures[fut]
                    try:
                        fut.result()
                        log(f"[{time.time() - t0:6.0f}s] {entry['name']}: finished")
                    except Exception as exc:  # noqa: BLE001 -- one lineage's failure
                        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                        failures.append(f"{entry['name']}: {msg}")
                        log(f"[{time.time() - t0:6.0f}s] {entry['name']}: FAILED: {msg}")
        finally:
            if own:
                cluster = getattr(client, "cluster", None)
                client.close()
                if cluster is not None:
                    cluster.close()
    report = write_report(out, spec, plots=plots)
    if failures:
        raise UsageError(f"{len(failures)} lineage(s) failed (the others are kept; rerun to "
                         f"resume): " + "; ".join(failures))
    return report


# ----------------------------------------------------------------------------------------------
# the aggregate report
# ----------------------------------------------------------------------------------------------
AGG_KEYS = ("synapses", "parameters", "effective_synapses", "synaptic_efficiency",
            "cluster_efficiency_kernel", "cluster_efficiency_filter", "test_error",
            "val_error")
# The operating points of equal_loss: (key prefix, chosen on, rule of evolution.stats).
CHOICES = (("within", "test", "sparsest"),
           ("val_chosen", "validation", "last_within"),
           ("val_first_out", "validation", "first_outside_minus_one"),
           ("test_chosen", "test", "last_within"),
           ("test_first_out", "test", "first_outside_minus_one"))
RULE_NAMES = {"sparsest": "sparsest within (reported only)",
              "last_within": "last within",
              "first_outside_minus_one": "first outside − 1"}


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _errors(row: dict) -> dict:
    out = {"test_error": 100 * (1 - row["test_accuracy"])}
    if "val_accuracy" in row:
        out["val_error"] = 100 * (1 - row["val_accuracy"])
    return out


def equal_loss(rows: list[dict], points=EQUAL_LOSS_POINTS, predictions: dict | None = None
               ) -> dict:
    """Per loss budget: the operating points of one lineage, each against its generation 0.

    For budget d (accuracy points):

    * ``within_<d>``: the sparsest generation g >= 1 with ``test_accuracy[g] >=
      test_accuracy[0] - d / 100``. This reports; it chooses nothing.
    * ``val_chosen_<d>`` (when the lineage recorded validation accuracy): the *last*
      generation whose validation accuracy is within d of generation 0's
      (:func:`minievo.evolution.stats.last_within`); ``val_first_out_<d>``: the generation
      before the first one outside (:func:`~minievo.evolution.stats.first_outside_minus_one`,
      the conservative rule). Their test error is only reported.
    * Without validation, ``test_chosen_<d>`` and ``test_first_out_<d>``: the same two rules
      on the test accuracy (reported only: no choice can be made on the test set).

    None where no generation qualifies. ``predictions`` (generation -> (n,) bool per-image
    correctness on the test set) adds to each operating point its paired bootstrap interval.
    """
    from minievo.evolution import stats

    res = {}
    acc0 = rows[0]["test_accuracy"]
    cache: dict = {}
    on = "val" if "val_accuracy" in rows[0] else "test"
    accs = [r.get(f"{on}_accuracy", -1.0) for r in rows]
    for d in points:
        ok = [r for r in rows[1:] if r["test_accuracy"] >= acc0 - d / 100 - 1e-12]
        best = max(ok, key=lambda r: r["synaptic_efficiency"]) if ok else None
        res[f"within_{d}"] = None if best is None else _operating_point(
            best, rows[0], predictions, cache)
        if min(accs) < 0:  # a row without the accuracy the rules read
            continue
        for key, rule in ((f"{on}_chosen_{d}", stats.last_within),
                          (f"{on}_first_out_{d}", stats.first_outside_minus_one)):
            g = rule(accs, d / 100)
            res[key] = None if g is None else _operating_point(rows[g], rows[0], predictions,
                                                               cache)
    return res


def _operating_point(row: dict, ref: dict, predictions: dict | None = None,
                     cache: dict | None = None) -> dict:
    """What the equal-loss tables report of a chosen generation (test figures only reported):
    its binomial SE, its parameters (with biases) and the paired bootstrap interval of its test
    loss against ``ref`` (generation 0) when both networks' per-image predictions are given."""
    from minievo.evolution import stats

    acc0 = ref["test_accuracy"]
    out = {"generation": row["generation"],
           "synaptic_efficiency": row["synaptic_efficiency"],
           "cluster_efficiency_kernel": row["cluster_efficiency_kernel"],
           "test_error": 100 * (1 - row["test_accuracy"]),
           "loss_points": 100 * (acc0 - row["test_accuracy"])}
    if row.get("test_images"):
        out["test_error_se"] = 100 * stats.binomial_se(row["test_accuracy"], row["test_images"])
    if row.get("parameters") and ref.get("parameters"):
        out["parameters"] = row["parameters"]
        out["parameter_efficiency"] = ref["parameters"] / row["parameters"]
    g = row["generation"]
    out["interval"] = None
    if predictions and predictions.get(0) is not None and predictions.get(g) is not None:
        cache = {} if cache is None else cache
        if g not in cache:
            found = stats.paired_bootstrap(predictions[0], predictions[g]).as_dict()
            # predictions recomputed on other BLAS kernels may differ from the record
            found["matches_record"] = abs(found["loss_points"] - out["loss_points"]) < 1e-9
            cache[g] = found
        out["interval"] = cache[g]
    return out


def _lineage_summary(seed: int, rows: list[dict], configured: int, finished: bool,
                     eq: dict, folder: Path) -> dict:
    """One lineage in a line: how far it went, how it ended, and (under the validation
    pace) how many offspring were tried and rejected, counted from the tries' folders so that
    the tries of a generation that ended the lineage count too."""
    from minievo.evolution import stats

    last = rows[-1]
    out = {"seed": seed, "generations": last["generation"], "finished": finished,
           "last_synaptic_efficiency": last["synaptic_efficiency"],
           "last_test_error": 100 * (1 - last["test_accuracy"])}
    if last.get("test_images"):
        out["last_test_error_se"] = 100 * stats.binomial_se(last["test_accuracy"],
                                                            last["test_images"])
    if finished and last["generation"] < configured:
        out["ended"] = "early (validation pace or stopping rule)"
    elif finished:
        out["ended"] = "all generations"
    else:
        out["ended"] = "not yet"
    if any("pace_tries" in r for r in rows):
        out["tries"] = len(list(folder.glob("gen_*/try_*/row.json")))
        out["rejected"] = out["tries"] - sum(1 for r in rows[1:] if "pace_tries" in r)
    for key in ("val_chosen_0.3", "val_first_out_0.3"):
        if eq.get(key):
            out[key] = eq[key]
    return out


def _predictions(folder: Path, rows: list[dict]) -> dict:
    """generation -> (n,) bool per-image correctness on the test set, where it was stored."""
    from minievo.evolution import stats

    found = {}
    for r in rows:
        try:
            arr = stats.find_test_correct(folder, r)
        except (OSError, ValueError):
            arr = None
        if arr is not None:
            found[r["generation"]] = arr
    return found


def _summary(eq: dict, key: str, predictions: dict) -> dict:
    """Mean and std over lineages of one kind of operating point, with the SE of the mean test
    error and the paired bootstrap interval of the mean test loss (over the lineages that
    reached it, when every one of them has its per-image predictions)."""
    from minievo.evolution import stats

    hits = {seed: v[key] for seed, v in eq.items() if v.get(key)}
    s = {"lineages": len(eq), "reached": len(hits)}
    for m in ("synaptic_efficiency", "parameter_efficiency", "cluster_efficiency_kernel",
              "test_error", "loss_points"):
        # a lineage that never qualified counts as efficiency 1 (generation 0 itself)
        vals = [h[m] for h in hits.values() if m in h]
        if m == "parameter_efficiency" and len(vals) < len(hits):
            continue
        if m.endswith("efficiency"):
            vals += [1.0] * (len(eq) - len(hits))
        s[m + "_mean"], s[m + "_std"] = _mean_std(vals)
    if hits and all("test_error_se" in h for h in hits.values()):
        s["test_error_se"] = math.sqrt(sum(h["test_error_se"] ** 2 for h in hits.values())) \
            / len(hits)
    s["interval"] = None
    pairs = [(predictions[seed].get(0), predictions[seed].get(h["generation"]))
             for seed, h in hits.items()]
    if pairs and all(a is not None and b is not None for a, b in pairs) and \
            len({a.shape[0] for a, _ in pairs}) == 1:
        s["interval"] = stats.paired_bootstrap_mean(pairs).as_dict()
        s["interval"]["matches_record"] = all(h["interval"] and h["interval"]["matches_record"]
                                              for h in hits.values())
    return s


def aggregate(out, spec: dict) -> dict:
    """Everything the report shows, from the lineage folders alone.

    Rows of older records are completed for the report only (:func:`minievo.evolution.report.
    complete_rows`: the parameters with biases and the test set size); the lineage records are
    never changed.
    """
    from minievo.evolution import report as lineage_report
    from minievo.evolution import stats

    out = Path(out)
    settings = []
    for i, setting in enumerate(spec["settings"]):
        per_seed, notes, preds = {}, {}, {}
        for seed in spec["seeds"]:
            folder = out / f"setting_{i}" / f"seed_{seed}"
            rows = read_rows(folder)
            if rows:
                shown, note = lineage_report.complete_rows(
                    folder, rows, asdict(config_of(spec, i, seed)))
                per_seed[seed] = shown
                for k, v in note.items():
                    notes.setdefault(k, set()).add(v)
                preds[seed] = _predictions(folder, shown)
        gens = sorted({r["generation"] for rows in per_seed.values() for r in rows})
        table = []
        for g in gens:
            at_g = [dict(r, **_errors(r)) for rows in per_seed.values() for r in rows
                    if r["generation"] == g]
            row = {"generation": g, "seeds": len(at_g)}
            for k in AGG_KEYS:
                vals = [r[k] for r in at_g if k in r]
                if vals and (k != "parameters" or len(vals) == len(at_g)):
                    row[k + "_mean"], row[k + "_std"] = _mean_std(vals)
            for split in ("test", "val"):
                if all(r.get(f"{split}_images") and f"{split}_accuracy" in r for r in at_g):
                    row[f"{split}_error_se"] = 100 * stats.mean_binomial_se(
                        [r[f"{split}_accuracy"] for r in at_g],
                        [r[f"{split}_images"] for r in at_g])
            table.append(row)
        eq_all = {seed: equal_loss(rows, predictions=preds[seed])
                  for seed, rows in per_seed.items()}
        finished = sorted(s for s in spec["seeds"]
                          if (out / f"setting_{i}" / f"seed_{s}" / "done.json").exists())
        # the summary covers finished lineages only (an unfinished one has not had its chance
        # at the later generations yet), unless none has finished
        eq = {s: v for s, v in eq_all.items() if s in finished} or eq_all
        present = {k for v in eq.values() for k in v}
        keys = [f"{kind}_{d}" for kind, _, _ in CHOICES for d in EQUAL_LOSS_POINTS
                if f"{kind}_{d}" in present]
        eq_summary = {key: _summary(eq, key, preds) for key in keys}
        first = next(iter(per_seed.values()), [{}])[0]
        configured = config_of(spec, i, spec["seeds"][0]).generations
        per_lineage = [_lineage_summary(seed, rows, configured, seed in finished,
                                        eq_all[seed], out / f"setting_{i}" / f"seed_{seed}")
                       for seed, rows in per_seed.items()]
        settings.append({"setting": i, "label": _label(setting), "options": setting,
                         "lineages": per_lineage,
                         "seeds_with_rows": sorted(per_seed),
                         "finished": finished,
                         "test_images": first.get("test_images"),
                         "val_images": first.get("val_images"),
                         "notes": {k: sorted(v) for k, v in notes.items()},
                         "lineages_with_predictions": sorted(
                             s for s, p in preds.items() if 0 in p),
                         "per_generation": table, "equal_loss": eq_summary,
                         "equal_loss_per_seed": {str(k): v for k, v in eq_all.items()}})
    return {"preset": spec["preset"], "seeds": spec["seeds"], "base": spec["base"],
            "settings": settings}


def _pm(row: dict, key: str, fmt: str) -> str:
    m, s = row.get(key + "_mean"), row.get(key + "_std")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{m:{fmt}} ± {s:{fmt}}"


def _se(row: dict, key: str) -> str:
    v = row.get(key)
    return "-" if v is None else f"{v:.2f}"


def _interval(found: dict | None) -> str:
    """A bootstrap interval as a table cell."""
    if not found:
        return "unavailable"
    cell = f"[{found['low']:.2f}, {found['high']:.2f}]"
    return cell if found.get("matches_record", True) else cell + " (recomputed predictions " \
        "differ from the record)"


def _pick(p: dict | None) -> str:
    if not p:
        return "-"
    return f"{p['generation']}, {p['synaptic_efficiency']:.1f}x, {p['loss_points']:.2f}"


def markdown(report: dict) -> str:
    from minievo.evolution.stats import RESAMPLES, RULES

    lines = [f"# Sweep: preset {report['preset']}, seeds "
             f"{', '.join(map(str, report['seeds']))}", ""]
    if report["base"]:
        lines += [f"Shared options: {_label(report['base'])}.", ""]
    lines += ["How to read the figures:", "",
              "- Accuracies and errors: mean ± standard deviation over seeds; `SE` is the "
              "binomial standard error of that mean, sqrt(Σ p(1 − p)/n) / k over the k "
              "seeds' accuracies p on n images each (the part of the spread that the finite "
              "test or validation set alone explains).",
              "- Parameters (with biases): synapses plus the biases of live filters and "
              "neurons (units holding a live synapse); batch-norm scales and shifts are not "
              "counted. Parameter eff. = parameters of generation 0 / parameters.",
              f"- Test loss intervals: 95% paired bootstrap over the test images "
              f"({RESAMPLES:,} resamples, seed 0). Each resample draws the n image indices "
              "with replacement once and applies them to generation 0 and to the chosen "
              "generation alike (and, for a mean over lineages, to every lineage: they share "
              "the test set). `unavailable`: the per-image predictions of these generations "
              "were not stored (`test_correct.npy`); `minievo report DIR "
              "--recompute-predictions` writes them from each generation's model.npz where "
              "it was kept.",
              "- Operating points chosen on validation, two rules: `last within` = "
              f"{RULES['last_within']}; `first outside − 1` = "
              f"{RULES['first_outside_minus_one']}. The conservative rule is the one to "
              "quote.", ""]
    for s in report["settings"]:
        n_test = s.get("test_images")
        notes = s.get("notes", {})
        lines += [f"## Setting {s['setting']}: {s['label']}", "",
                  f"Lineages finished: {len(s['finished'])} of {len(report['seeds'])}; test "
                  f"set: {n_test if n_test is not None else 'unknown'} images"
                  + (f" ({'; '.join(notes['test_images'])})"
                     if set(notes.get("test_images", ["recorded"])) != {"recorded"} else "")
                  + (f"; validation split: {s['val_images']} images carved from the "
                     "training set" if s.get("val_images") else "; no validation split")
                  + ". Mean ± standard deviation over seeds."
                  + (f" Parameters: {'; '.join(notes['parameters'])}." if notes.get(
                      "parameters") else ""), "",
                  "| gen | seeds | synapses | parameters (with biases) | synaptic eff. | "
                  "cluster eff. (kernel) | cluster eff. (filter) | test error | test SE | "
                  "val error | val SE |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["per_generation"]:
            lines.append(
                f"| {r['generation']} | {r['seeds']} | {_pm(r, 'synapses', ',.0f')} | "
                f"{_pm(r, 'parameters', ',.0f')} | "
                f"{_pm(r, 'synaptic_efficiency', '.1f')}x | "
                f"{_pm(r, 'cluster_efficiency_kernel', '.2f')}x | "
                f"{_pm(r, 'cluster_efficiency_filter', '.2f')}x | "
                f"{_pm(r, 'test_error', '.2f')}% | {_se(r, 'test_error_se')} | "
                f"{_pm(r, 'val_error', '.2f')}% | {_se(r, 'val_error_se')} |")
        over = (f"{len(s['finished'])} finished lineage(s)" if s["finished"] else
                f"the {len(s['seeds_with_rows'])} lineage(s) so far, none finished")
        with_preds = s.get("lineages_with_predictions", [])
        lines += ["", f"At equal accuracy loss, over {over} (each lineage against its own "
                  "generation 0; `test` = on the test set, reported only; `validation` = "
                  "chosen without the test set; lineages that never qualify count as "
                  "efficiency 1). Per-image predictions stored for "
                  f"{len(with_preds)} of {len(s['seeds_with_rows'])} lineage(s).", "",
                  "| loss budget | chosen on | rule | lineages reached | synaptic eff. | "
                  "parameter eff. | cluster eff. (kernel) | test error | test SE | "
                  "test loss (points) | 95% interval of the mean test loss |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        rule_of = {kind: (on, RULE_NAMES[rule]) for kind, on, rule in CHOICES}
        for key, e in s["equal_loss"].items():
            kind, d = key.rsplit("_", 1)
            on, rule = rule_of[kind]
            lines.append(f"| {d} points | {on} | {rule} | {e['reached']}/{e['lineages']} | "
                         f"{_pm(e, 'synaptic_efficiency', '.1f')}x | "
                         f"{_pm(e, 'parameter_efficiency', '.1f')}x | "
                         f"{_pm(e, 'cluster_efficiency_kernel', '.2f')}x | "
                         f"{_pm(e, 'test_error', '.2f')}% | {_se(e, 'test_error_se')} | "
                         f"{_pm(e, 'loss_points', '.2f')} | "
                         f"{_interval(e.get('interval')) if e['reached'] else '-'} |")
        if s.get("lineages"):
            paced = any("tries" in r for r in s["lineages"])
            lines += ["", "Per lineage (`0.3 val` = the operating point chosen on validation "
                      "within 0.3 points by each rule: generation, synaptic efficiency, test "
                      "loss in points, which is only reported; the last column gives the 95% "
                      "intervals of those two test losses):", "",
                      "| seed | generations | ended | last synaptic eff. | last test error | "
                      "0.3 val, last within |" + (" tries | rejected |" if paced else "")
                      + " 0.3 val, first outside − 1 | 95% intervals (last within; first "
                      "outside − 1) |",
                      "|---:|---:|---|---:|---:|---|" + ("---:|---:|" if paced else "")
                      + "---|---|"]
            for r in s["lineages"]:
                p, q = r.get("val_chosen_0.3"), r.get("val_first_out_0.3")
                err = f"{r['last_test_error']:.2f}"
                if "last_test_error_se" in r:
                    err += f" ± {r['last_test_error_se']:.2f}"
                cis = "; ".join(_interval(x.get("interval")) if x else "-" for x in (p, q))
                lines.append(f"| {r['seed']} | {r['generations']} | {r['ended']} | "
                             f"{r['last_synaptic_efficiency']:.1f}x | {err}% | {_pick(p)} |"
                             + (f" {r.get('tries', '-')} | {r.get('rejected', '-')} |"
                                if paced else "")
                             + f" {_pick(q)} | {cis} |")
        lines.append("")
    return "\n".join(lines)


def _csv(report: dict) -> str:
    from minievo.evolution.report import csv_text

    return csv_text([dict(setting=s["setting"], label=s["label"], **r)
                     for s in report["settings"] for r in s["per_generation"]])


# Published operating points of other methods on LeNet-5-Caffe / MNIST (test error after, in
# %, and the factor of fewer weights), as stated in docs/method.md#comparisons; not re-run
# here. The two-parent synthesis result (~3% at 258x) is left out: its architecture is not
# checked there.
PUBLISHED = (("iterative magnitude pruning, arXiv:1506.02626", 0.77, 12),
             ("dynamic network surgery, arXiv:1608.04493", 0.91, 108),
             ("SNIP, arXiv:1810.02340", 1.1, 100),
             ("soft weight sharing, arXiv:1702.04008", 0.97, 200),
             ("sparse variational dropout, arXiv:1701.05369", 0.75, 280))
PUBLISHED_SOURCE = "docs/method.md#comparisons"
LENET5_SYNAPSES = 430_500


def error_figure(out, report: dict):
    """The figure of error_vs_synapses.png (a matplotlib Figure, no pyplot): every seed (thin)
    and the mean over seeds (thick), per setting, with generation 0's mean test error +- its SE
    as a band; for LeNet-5 on MNIST, the other methods' published operating points (placed at
    430,500 / their reduction factor, from :data:`PUBLISHED`)."""
    from matplotlib.figure import Figure

    from minievo.evolution.report import set_count_axis

    out = Path(out)
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    xs: list[float] = []
    for s in report["settings"]:
        colour = f"C{s['setting'] % 10}"
        for seed in s["seeds_with_rows"]:
            rows = read_rows(out / f"setting_{s['setting']}" / f"seed_{seed}")
            xs += [r["synapses"] for r in rows]
            ax.plot([r["synapses"] for r in rows],
                    [100 * (1 - r["test_accuracy"]) for r in rows], "-", color=colour,
                    alpha=0.35, linewidth=1)
        pg = [r for r in s["per_generation"] if r["seeds"] == len(s["seeds_with_rows"])]
        ax.plot([r["synapses_mean"] for r in pg], [r["test_error_mean"] for r in pg], "o-",
                color=colour, linewidth=2.2, label=f"setting {s['setting']} ({s['label']}): "
                f"mean of {len(s['seeds_with_rows'])} seeds")
        g0 = pg[0] if pg and pg[0]["generation"] == 0 else None
        if g0 is not None and g0.get("test_error_se") is not None:
            m, se = g0["test_error_mean"], g0["test_error_se"]
            ax.axhspan(m - se, m + se, color=colour, alpha=0.12, linewidth=0,
                       label=f"setting {s['setting']}: generation 0 mean test error ± SE")
    configs = [config_of({"preset": report["preset"], "base": report["base"],
                          "settings": [s["options"]]}, 0, report["seeds"][0])
               for s in report["settings"]]
    if all(c.model == "lenet5" and c.dataset == "mnist" and c.architecture is None
           for c in configs):
        for k, (name, error, factor) in enumerate(PUBLISHED):
            x = LENET5_SYNAPSES / factor
            xs.append(x)
            ax.plot([x], [error], linestyle="none", marker="DPv^s"[k % 5], markersize=7,
                    color="0.25", markerfacecolor="none",
                    label=f"{name}: {error}%, {factor}x fewer weights")
        ax.plot([], [], linestyle="none", label=f"(published, from {PUBLISHED_SOURCE}; "
                f"not re-run)")
    ax.set_xscale("log")
    set_count_axis(ax.xaxis, xs)
    ax.invert_xaxis()
    ax.set_xlabel("synapses (log scale; generations left to right)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Test error against synapses: every seed (thin) and the mean (thick)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot(out, report: dict) -> Path:
    """Write error_vs_synapses.png (:func:`error_figure`); returns its path."""
    import io

    path = Path(out) / "error_vs_synapses.png"
    buf = io.BytesIO()
    error_figure(out, report).savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report(out, spec: dict, plots: bool = True) -> dict:
    out = Path(out)
    report = aggregate(out, spec)
    atomic_write_text(out / "aggregate.json", json.dumps(report, indent=1))
    atomic_write_text(out / "aggregate.csv", _csv(report))
    atomic_write_text(out / "aggregate.md", markdown(report))
    if plots and any(s["seeds_with_rows"] for s in report["settings"]):
        plot(out, report)
    return report


def load_spec(out) -> dict:
    path = Path(out) / "sweep.json"
    if not path.exists():
        raise UsageError(f"{out}: no sweep.json here; is this a minievo sweep folder?")
    spec = records.read_sweep(path)  # bounded, a regular file, the right shape
    try:  # every option checked as the command line checks it
        return make_spec(spec["preset"], spec["seeds"], spec["base"], spec["settings"],
                         check_files=False)
    except UsageError as exc:
        raise records.RecordError(f"{path}: {exc}") from None
