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
import time
from dataclasses import asdict, fields
from pathlib import Path

from minievo.checkpoint import atomic_write_bytes, atomic_write_text
from minievo.evolution.lineage import PRESETS, EvolutionConfig
from minievo.experiment import UsageError

INSTALL_HINT = "pip install 'minievo[sweep]'  (or: pip install 'dask[distributed]')"
EQUAL_LOSS_POINTS = (0.1, 0.3, 1.0)
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Options of a lineage that a grid may set (the seed comes from the seed list).
GRID_OPTIONS = {f.name: f.type for f in fields(EvolutionConfig) if f.name != "seed"}


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------
def _convert(key: str, value):
    """A grid value as the option's type (strings from the command line are parsed)."""
    if key not in GRID_OPTIONS:
        raise UsageError(f"unknown grid option {key!r}; choose from: "
                         f"{', '.join(sorted(GRID_OPTIONS))}")
    kind = str(GRID_OPTIONS[key])
    if isinstance(value, str) and value.strip().lower() == "none":
        if "None" not in kind:
            raise UsageError(f"grid option {key!r} cannot be none")
        return None
    if value is None:
        if "None" not in kind:
            raise UsageError(f"grid option {key!r} cannot be none")
        return None
    try:
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"grid option {key!r}: {value!r} is not a valid {kind}") from None
    return str(value)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` -> [0, 1, 2]."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                seeds += list(range(int(a), int(b) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give integers like 0,1,2 or 0-2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def load_grid_file(path) -> dict:
    """Read a grid from JSON or TOML: keys preset, seeds, base, settings and/or grid."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"grid file {path} is not valid {path.suffix[1:] or 'JSON'}: "
                         f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"grid file {path} must hold a table/object at the top level")
    unknown = set(data) - {"preset", "seeds", "base", "settings", "grid"}
    if unknown:
        raise UsageError(f"grid file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         "use preset, seeds, base, settings, grid")
    return data


def make_spec(preset: str = "paper-mnist", seeds=(0,), base: dict | None = None,
              settings: list | None = None, grid: dict | None = None) -> dict:
    """The sweep's full, validated description.

    ``settings`` is a list of option dicts; ``grid`` maps options to lists of values whose
    Cartesian product is appended to the settings. With neither, there is one setting: the
    preset (plus ``base``) as it is.
    """
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    seeds = [int(_convert("generations", s)) for s in seeds]  # integers
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError("give at least one seed, each once")
    base = {k: _convert(k, v) for k, v in (base or {}).items()}
    out_settings = []
    for s in settings or []:
        if not isinstance(s, dict):
            raise UsageError(f"a setting must be a table/object of options, got {s!r}")
        out_settings.append({k: _convert(k, v) for k, v in s.items()})
    if grid:
        keys = list(grid)
        values = []
        for k in keys:
            v = grid[k] if isinstance(grid[k], list) else [grid[k]]
            values.append([_convert(k, x) for x in v])
        out_settings += [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if not out_settings:
        out_settings = [{}]
    spec = {"preset": preset, "seeds": seeds, "base": base, "settings": out_settings}
    for i, _ in enumerate(out_settings):
        config_of(spec, i, seeds[0])  # every lineage's config must validate now, not later
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
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise UsageError(f"{path} is not a minievo sweep record; use another --out") \
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
    path = Path(folder) / "lineage.json"
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["rows"]
    except (ValueError, KeyError):
        return []


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


def start_client(workers: int = 2, scheduler: str | None = None, timeout: float = 10.0):
    """A Dask client: on an existing scheduler, or on a new LocalCluster of processes."""
    distributed = import_distributed()
    if scheduler:
        try:
            return distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {msg}") \
                from None
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", env=dict(BLAS_ENV))
    return distributed.Client(cluster)


def run_sweep(spec: dict, out, client=None, workers: int = 2, scheduler: str | None = None,
              data_dir=None, backend: str = "numpy", log=print, poll: float = 2.0,
              plots: bool = True, accel: bool | None = None,
              sparse_training: str | None = None) -> dict:
    """Run every unfinished lineage of ``spec`` in ``out``; returns the aggregate report.

    ``accel`` / ``sparse_training``: how the workers run each lineage (see
    :func:`run_lineage`); None takes this process's current setting.
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
    out = Path(out)
    resume = prepare_folder(out, spec)
    todo, t0 = [], time.time()
    plan = lineages(spec)
    for entry in plan:
        folder = out / entry["dir"]
        if (folder / "done.json").exists():
            log(f"{entry['name']}: finished, skipped")
        else:
            rows = read_rows(folder)
            if rows:
                log(f"{entry['name']}: resuming after generation {rows[-1]['generation']}")
            todo.append(entry)
    if resume and not todo:
        log("every lineage of this sweep has finished")
    failures = []
    if todo:
        own = client is None
        if own:
            client = start_client(workers, scheduler)
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
AGG_KEYS = ("synapses", "effective_synapses", "synaptic_efficiency",
            "cluster_efficiency_kernel", "cluster_efficiency_filter", "test_error",
            "val_error")


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


def equal_loss(rows: list[dict], points=EQUAL_LOSS_POINTS) -> dict:
    """Per loss budget: the sparsest generation whose test accuracy is within the budget.

    For budget d (accuracy points), the generations g >= 1 with
    ``test_accuracy[g] >= test_accuracy[0] - d / 100`` qualify, and the one with the highest
    synaptic efficiency is reported (None when none qualifies). This reports; it chooses
    nothing. When the lineage recorded validation accuracy, ``val_chosen_<d>`` is the
    operating point chosen on validation alone (the last generation whose validation accuracy
    is within d of generation 0's), with its test error as the honest figure.
    """
    res = {}
    acc0 = rows[0]["test_accuracy"]
    for d in points:
        ok = [r for r in rows[1:] if r["test_accuracy"] >= acc0 - d / 100 - 1e-12]
        best = max(ok, key=lambda r: r["synaptic_efficiency"]) if ok else None
        res[f"within_{d}"] = None if best is None else _operating_point(best, acc0)
        if "val_accuracy" in rows[0]:
            v0 = rows[0]["val_accuracy"]
            okv = [r for r in rows[1:] if r.get("val_accuracy", -1) >= v0 - d / 100 - 1e-12]
            pick = max(okv, key=lambda r: r["generation"]) if okv else None
            res[f"val_chosen_{d}"] = None if pick is None else _operating_point(pick, acc0)
    return res


def _operating_point(row: dict, acc0: float) -> dict:
    """What the equal-loss tables report of a chosen generation (test figures only reported)."""
    return {"generation": row["generation"],
            "synaptic_efficiency": row["synaptic_efficiency"],
            "cluster_efficiency_kernel": row["cluster_efficiency_kernel"],
            "test_error": 100 * (1 - row["test_accuracy"]),
            "loss_points": 100 * (acc0 - row["test_accuracy"])}


def _lineage_summary(seed: int, rows: list[dict], configured: int, finished: bool,
                     eq: dict, folder: Path) -> dict:
    """One lineage in a line: how far it went, how it ended, and (under the validation
    pace) how many offspring were tried and rejected, counted from the tries' folders so that
    the tries of a generation that ended the lineage count too."""
    last = rows[-1]
    out = {"seed": seed, "generations": last["generation"], "finished": finished,
           "last_synaptic_efficiency": last["synaptic_efficiency"],
           "last_test_error": 100 * (1 - last["test_accuracy"])}
    if finished and last["generation"] < configured:
        out["ended"] = "early (validation pace or stopping rule)"
    elif finished:
        out["ended"] = "all generations"
    else:
        out["ended"] = "not yet"
    if any("pace_tries" in r for r in rows):
        out["tries"] = len(list(folder.glob("gen_*/try_*/row.json")))
        out["rejected"] = out["tries"] - sum(1 for r in rows[1:] if "pace_tries" in r)
    pick = eq.get("val_chosen_0.3")
    if pick:
        out["val_chosen_0.3"] = pick
    return out


def aggregate(out, spec: dict) -> dict:
    """Everything the report shows, from the lineage folders alone."""
    out = Path(out)
    settings = []
    for i, setting in enumerate(spec["settings"]):
        per_seed = {}
        for seed in spec["seeds"]:
            rows = read_rows(out / f"setting_{i}" / f"seed_{seed}")
            if rows:
                per_seed[seed] = rows
        gens = sorted({r["generation"] for rows in per_seed.values() for r in rows})
        table = []
        for g in gens:
            at_g = [dict(r, **_errors(r)) for rows in per_seed.values() for r in rows
                    if r["generation"] == g]
            row = {"generation": g, "seeds": len(at_g)}
            for k in AGG_KEYS:
                vals = [r[k] for r in at_g if k in r]
                if vals:
                    row[k + "_mean"], row[k + "_std"] = _mean_std(vals)
            table.append(row)
        eq_all = {seed: equal_loss(rows) for seed, rows in per_seed.items()}
        finished = sorted(s for s in spec["seeds"]
                          if (out / f"setting_{i}" / f"seed_{s}" / "done.json").exists())
        # the summary covers finished lineages only (an unfinished one has not had its chance
        # at the later generations yet), unless none has finished
        eq = {s: v for s, v in eq_all.items() if s in finished} or eq_all
        eq_summary = {}
        present = {k for v in eq.values() for k in v}
        keys = [f"{kind}_{d}" for kind in ("within", "val_chosen") for d in EQUAL_LOSS_POINTS
                if f"{kind}_{d}" in present]
        for key in keys:
            hits = [v[key] for v in eq.values() if v.get(key)]
            s = {"lineages": len(eq), "reached": len(hits)}
            for m in ("synaptic_efficiency", "cluster_efficiency_kernel", "test_error",
                      "loss_points"):
                # a lineage that never qualified counts as efficiency 1 (generation 0 itself)
                vals = [h[m] for h in hits]
                if m.endswith("efficiency"):
                    vals += [1.0] * (len(eq) - len(hits))
                s[m + "_mean"], s[m + "_std"] = _mean_std(vals)
            eq_summary[key] = s
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
                         "per_generation": table, "equal_loss": eq_summary,
                         "equal_loss_per_seed": {str(k): v for k, v in eq_all.items()}})
    return {"preset": spec["preset"], "seeds": spec["seeds"], "base": spec["base"],
            "settings": settings}


def _pm(row: dict, key: str, fmt: str) -> str:
    m, s = row.get(key + "_mean"), row.get(key + "_std")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{m:{fmt}} ± {s:{fmt}}"


def markdown(report: dict) -> str:
    lines = [f"# Sweep: preset {report['preset']}, seeds "
             f"{', '.join(map(str, report['seeds']))}", ""]
    if report["base"]:
        lines += [f"Shared options: {_label(report['base'])}.", ""]
    for s in report["settings"]:
        n_test = s.get("test_images")
        lines += [f"## Setting {s['setting']}: {s['label']}", "",
                  f"Lineages finished: {len(s['finished'])} of {len(report['seeds'])}; test "
                  f"set: {n_test if n_test is not None else 'unknown'} images"
                  + (f"; validation split: {s['val_images']} images carved from the "
                     "training set" if s.get("val_images") else "; no validation split")
                  + ". Mean ± standard deviation over seeds.", "",
                  "| gen | seeds | synapses | synaptic eff. | cluster eff. (kernel) | "
                  "cluster eff. (filter) | test error | val error |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["per_generation"]:
            lines.append(
                f"| {r['generation']} | {r['seeds']} | {_pm(r, 'synapses', ',.0f')} | "
                f"{_pm(r, 'synaptic_efficiency', '.1f')}x | "
                f"{_pm(r, 'cluster_efficiency_kernel', '.2f')}x | "
                f"{_pm(r, 'cluster_efficiency_filter', '.2f')}x | "
                f"{_pm(r, 'test_error', '.2f')}% | {_pm(r, 'val_error', '.2f')}% |")
        over = (f"{len(s['finished'])} finished lineage(s)" if s["finished"] else
                f"the {len(s['seeds_with_rows'])} lineage(s) so far, none finished")
        lines += ["", f"At equal accuracy loss, over {over} (each lineage against its own "
                  "generation 0; "
                  "`test` = the sparsest generation within the loss on the test set, reported "
                  "only; `validation` = the last generation within the loss on validation, "
                  "chosen without the test set):", "",
                  "| loss budget | chosen on | lineages reached | synaptic eff. | "
                  "cluster eff. (kernel) | test error | test loss (points) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for key, e in s["equal_loss"].items():
            on, d = ("validation", key[len("val_chosen_"):]) if key.startswith("val") else (
                "test", key[len("within_"):])
            lines.append(f"| {d} points | {on} | {e['reached']}/{e['lineages']} | "
                         f"{_pm(e, 'synaptic_efficiency', '.1f')}x | "
                         f"{_pm(e, 'cluster_efficiency_kernel', '.2f')}x | "
                         f"{_pm(e, 'test_error', '.2f')}% | {_pm(e, 'loss_points', '.2f')} |")
        if s.get("lineages"):
            paced = any("tries" in r for r in s["lineages"])
            lines += ["", "Per lineage (`0.3 val` = the operating point chosen on validation "
                      "within 0.3 points; its test loss is only reported):", "",
                      "| seed | generations | ended | last synaptic eff. | last test error | "
                      "0.3 val: gen, eff., test loss |" + (" tries | rejected |" if paced
                                                          else ""),
                      "|---:|---:|---|---:|---:|---|" + ("---:|---:|" if paced else "")]
            for r in s["lineages"]:
                p = r.get("val_chosen_0.3")
                chosen = (f"{p['generation']}, {p['synaptic_efficiency']:.1f}x, "
                          f"{p['loss_points']:.2f}" if p else "-")
                lines.append(f"| {r['seed']} | {r['generations']} | {r['ended']} | "
                             f"{r['last_synaptic_efficiency']:.1f}x | "
                             f"{r['last_test_error']:.2f}% | {chosen} |"
                             + (f" {r.get('tries', '-')} | {r.get('rejected', '-')} |"
                                if paced else ""))
        lines.append("")
    return "\n".join(lines)


def _csv(report: dict) -> str:
    from minievo.evolution.report import csv_text

    return csv_text([dict(setting=s["setting"], label=s["label"], **r)
                     for s in report["settings"] for r in s["per_generation"]])


def plot(out, report: dict) -> Path:
    """error_vs_synapses.png: every seed (thin) and the mean over seeds (thick), per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    out = Path(out)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in report["settings"]:
        colour = f"C{s['setting'] % 10}"
        for seed in s["seeds_with_rows"]:
            rows = read_rows(out / f"setting_{s['setting']}" / f"seed_{seed}")
            ax.plot([r["synapses"] for r in rows],
                    [100 * (1 - r["test_accuracy"]) for r in rows], "-", color=colour,
                    alpha=0.35, linewidth=1)
        pg = [r for r in s["per_generation"] if r["seeds"] == len(s["seeds_with_rows"])]
        ax.plot([r["synapses_mean"] for r in pg], [r["test_error_mean"] for r in pg], "o-",
                color=colour, linewidth=2.2, label=f"setting {s['setting']} ({s['label']}): "
                f"mean of {len(s['seeds_with_rows'])} seeds")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("synapses (log scale; generations left to right)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Test error against synapses: every seed (thin) and the mean (thick)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "error_vs_synapses.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
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
    return json.loads(path.read_text())["spec"]
