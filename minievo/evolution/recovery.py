"""Recovery training of a finished lineage's generations (issue 20, a lever on the curve).

Pruning pipelines retrain the network after their last cut. A lineage here trains each
offspring for ``offspring_epochs`` and moves on: its generations are reported as they leave
that short training. Recovery gives chosen generations ``epochs`` more epochs with their masks
fixed, on the lineage's own training split, with a learning rate that falls linearly from the
lineage's base rate to zero (the annealing a pipeline's final fine-tuning does), then
measures validation and test accuracy again. The synapses do not change.

Which generations: by default, at each loss budget, the operating point the conservative
rule picks on validation (:func:`minievo.evolution.stats.first_outside_minus_one`) and the
``beyond`` generations after it: the question is whether recovery moves the curve, that is,
whether a sparser generation comes back within the budget once recovered. The report then
chooses again, on the recovered validation accuracies, with the same rule: every choice on
validation, the test set only reports.

**The offspring the pace rejected.** A lineage under the validation pace ends at the first
generation none of whose offspring stays within the margin; its operating point is then its
last generation, with nothing after it to recover. Its rejected offspring are the sparser
networks it left on disk (``gen_N/try_a``, or ``gen_N/try_a/offspring_k`` with K offspring per
try, where N is the generation it could not make). They are recovered too (``rejected``),
and the pace judges them again on their recovered *validation* accuracy, as it would have
had it recovered each offspring before judging it (:func:`pace_choice`): the first try, in
the order the pace made them (largest cut first), that is now within its margin stands in
as generation N when the operating points are chosen again. If it is back within a budget,
recovery bought a step of compression; if none passes, the best of them on validation stands
in, and the point stays where it was.

Files, under ``<run>/recovery/`` (resumable: a finished generation is read back, an
interrupted one resumes from its training checkpoint):

* ``gen_GGG/model.npz``, ``gen_GGG/row.json``, ``gen_GGG/train.npz`` (while training);
* ``gen_NNN/try_a[/offspring_k]/...``: the same for each rejected offspring;
* ``recovery.json`` and ``recovery.md``: before and after, per generation and per budget.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

from minievo import checkpoint as ckpt
from minievo import training
from minievo.evolution import stats
from minievo.experiment import UsageError, make_loaders, make_optimizer
from minievo.optim import LinearDecayLR
from minievo.runlock import run_lock

#: Loss budgets (points of accuracy) at which the operating points are chosen.
BUDGETS = (0.3, 1.0)
#: A shuffling stream apart from the lineage's own (which is ``seed * 100_003 + g``).
SEED_OFFSET = 50_000


def _lineage(run: Path, backend: str, data_dir, log):
    from minievo.evolution.lineage import EvolutionConfig, Lineage  # noqa: PLC0415

    path = run / "lineage.json"
    if not path.is_file():
        raise UsageError(f"{run}: no lineage.json; recovery needs a finished minievo evolve "
                         "run folder")
    try:
        record = json.loads(path.read_text())
        config, rows = record["config"], record["rows"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ckpt.CheckpointError(f"{path}: not a readable lineage record ({exc!r})") from None
    if not isinstance(config, dict) or not isinstance(rows, list) or not rows:
        raise ckpt.CheckpointError(f"{path}: 'config' must be an object and 'rows' a "
                                   "non-empty list")
    if config.get("architecture") is not None:
        raise UsageError(f"{run}: a lineage of your own network (minievo.api) is recovered "
                         "from Python, where its model and data are; this command rebuilds "
                         "the named models and datasets only")
    known = {f.name for f in fields(EvolutionConfig)}
    cfg = EvolutionConfig(**{k: v for k, v in config.items() if k in known})
    if not 0 < cfg.val_fraction < 1:
        raise UsageError(f"{run}: the lineage has no validation split, so recovery could "
                         "choose its generations only on the test set; it is refused")
    lin = Lineage(cfg, out=run, backend=backend, data_dir=data_dir, progress=False, log=log)
    return lin, rows


def choose(rows: list[dict], budgets=BUDGETS, beyond: int = 2) -> list[int]:
    """The generations to recover: at each budget (points), the conservative rule's choice on
    validation and up to ``beyond`` generations after it (never generation 0)."""
    vals = [r["val_accuracy"] for r in rows]
    chosen = set()
    for b in budgets:
        g = stats.first_outside_minus_one(vals, b / 100) or 0
        chosen.update(range(max(g, 1), min(g + beyond, len(rows) - 1) + 1))
    return sorted(chosen)


def try_index(path: Path) -> int:
    """The number at the end of a ``try_a`` or ``offspring_k`` folder's name, for sorting
    them in the order they were made (try_10 after try_2); a name without one sorts last."""
    tail = path.name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else 1 << 30


def rejected_offspring(run, rows: list[dict]) -> list[dict]:
    """The offspring the validation pace rejected at generation N = len(rows), the generation
    the lineage could not make: one entry per finished offspring (``label`` such as "try_1" or
    "try_0/offspring_2", ``path`` of its folder, ``row`` as recorded), tries in order. Empty
    for a lineage that did not end by the pace."""
    from minievo.evolution.lineage import Lineage  # noqa: PLC0415

    gdir = Path(run) / f"gen_{len(rows):03d}"
    found = []
    if not gdir.is_dir():
        return found
    for tdir in sorted((d for d in gdir.glob("try_*") if d.is_dir()), key=try_index):
        if (tdir / "model.npz").is_file():
            folders = [tdir]
        else:
            folders = sorted((d for d in tdir.glob("offspring_*") if d.is_dir()),
                             key=try_index)
        for d in folders:
            if (d / "model.npz").is_file() and (d / "row.json").is_file():
                found.append({"label": d.relative_to(gdir).as_posix(), "path": d,
                              "row": Lineage._read_row(d / "row.json")})
    return found


def pace_choice(tried: list[dict], reference: float, margin: float) -> str:
    """The rejected offspring that stands in as the next generation after recovery: the pace's
    own decision on the recovered validation accuracies. Tries in the order made (``tried``
    in try order; with K offspring per try, each try's fittest on validation); the first whose
    drop below ``reference`` is at most ``margin``; if none, the best on validation (ties: the
    first). Returns its label."""
    by_try: dict[str, list[dict]] = {}
    for t in tried:
        by_try.setdefault(t["label"].split("/")[0], []).append(t)
    fittest = [max(ts, key=lambda t: t["val_accuracy"]) for ts in by_try.values()]
    for t in fittest:
        if reference - t["val_accuracy"] <= margin + 1e-12:
            return t["label"]
    return max(fittest, key=lambda t: t["val_accuracy"])["label"]  # ties: the first


def recover_generation(lin, g: int, epochs: int, folder: Path, log=print,
                       source: Path | None = None, label: str | None = None) -> dict:
    """Train generation g of a lineage ``epochs`` more epochs (masks fixed, linear decay to
    zero) and measure it again; resumable. Returns its row: generation, epochs, val and test
    accuracy, seconds. With ``source`` (a folder holding ``model.npz``), that network is
    recovered instead, in ``gen_GGG/<label>`` (a rejected offspring of generation g)."""
    cfg = lin.config
    gdir = folder / f"gen_{g:03d}"
    if label is not None:
        gdir = gdir / label
    if (gdir / "row.json").is_file():
        if not (gdir / stats.TEST_CORRECT).is_file() and (gdir / "model.npz").is_file():
            # recovered before the per-image predictions were kept: measure them once
            model = lin.load_model_file(gdir / "model.npz")
            stats.save_test_correct(gdir, stats.correct_per_image(model, lin.loaders[2]))
        return json.loads((gdir / "row.json").read_text())
    gdir.mkdir(parents=True, exist_ok=True)
    model = lin.load_generation(g) if source is None else lin.load_model_file(
        Path(source) / "model.npz")
    train, val, test = lin.loaders
    train.seed = cfg.seed * 100_003 + SEED_OFFSET + g
    opt, _ = make_optimizer(model, {"lr": cfg.lr, "momentum": cfg.momentum,
                                    "weight_decay": cfg.weight_decay, "lr_policy": "fixed"})
    sched = LinearDecayLR(opt, epochs * len(train))
    ck = gdir / "train.npz"
    state = None
    if ck.exists():
        state, _ = training.load_training_checkpoint(ck, model, opt)
        log(f"recovery of generation {g}: resuming at epoch {state.epoch + 1}")
    state = training.fit(model, train, opt, epochs, scheduler=sched, checkpoint_path=ck,
                         state=state, progress=False, log=log, label=f"recover {g} ")
    correct = stats.correct_per_image(model, test)
    stats.save_test_correct(gdir, correct)
    row = {"generation": g, "epochs": epochs,
           "val_accuracy": training.evaluate(model, val)["accuracy"],
           "test_accuracy": float(correct.mean()),
           "train_seconds": round(state.train_seconds, 2)}
    ckpt.save(gdir / "model.npz", model.state_dict(), {"model": cfg.model, "generation": g,
                                                       "recovery_epochs": epochs})
    ckpt.atomic_write_text(gdir / "row.json", json.dumps(row))
    ck.unlink(missing_ok=True)
    return row


def summarise(rows: list[dict], recovered: dict[int, dict], budgets=BUDGETS,
              rejected: list[dict] | None = None, correct: dict | None = None,
              stand_in: str | None = None) -> dict:
    """Before and after, at each budget: the generation the conservative rule picks on
    validation from the lineage as run, and from the lineage with every recovered generation
    in place of its original (the rest unchanged), with their synaptic efficiency and test
    loss against generation 0 (points).

    ``rejected``: the recovered rejected offspring of generation N = len(rows) (dicts with
    label, row, val_accuracy, test_accuracy); the one labelled ``stand_in`` (by default the
    best on recovered validation accuracy, ties: the first; :func:`recover` passes the pace's
    own choice, :func:`pace_choice`) is appended as generation N of the "after" lineage.

    ``correct``: per-image test correctness, {"gen0": (n,) bool, "before": {g: (n,)},
    "after": {g: (n,)}} (entries may be missing); where generation 0's and the chosen
    generation's are there, the point carries the 95% paired-bootstrap interval of its test
    loss (:func:`minievo.evolution.stats.paired_bootstrap`)."""
    correct = correct or {}

    def point(table, b, when):
        vals = [r["val_accuracy"] for r in table]
        g = stats.first_outside_minus_one(vals, b / 100) or 0
        r = table[g]
        out = {"generation": g, "synaptic_efficiency": r["synaptic_efficiency"],
               "val_loss": round(100 * (table[0]["val_accuracy"] - r["val_accuracy"]), 4),
               "test_loss": round(100 * (table[0]["test_accuracy"] - r["test_accuracy"]), 4),
               "recovered": g in recovered or g == len(rows), "interval": None}
        if g == len(rows):
            out["offspring"] = r["label"]
        ref, cand = correct.get("gen0"), correct.get(when, {}).get(g)
        if g > 0 and ref is not None and cand is not None:
            iv = stats.paired_bootstrap(ref, cand)
            out["interval"] = [round(iv.low, 4), round(iv.high, 4)]
        return out

    after = [dict(r, **{k: recovered[g][k] for k in ("val_accuracy", "test_accuracy")})
             if g in recovered else r for g, r in enumerate(rows)]
    out = {}
    if rejected:
        if stand_in is None:
            best = max(rejected, key=lambda t: t["val_accuracy"])  # ties: the first
        else:
            best = next(t for t in rejected if t["label"] == stand_in)
        after.append(dict(best["row"], val_accuracy=best["val_accuracy"],
                          test_accuracy=best["test_accuracy"], label=best["label"]))
        out["rejected"] = [{"label": t["label"], "synapses": t["row"]["synapses"],
                            "synaptic_efficiency": t["row"]["synaptic_efficiency"],
                            "val_before": t["row"]["val_accuracy"],
                            "val_after": t["val_accuracy"],
                            "test_before": t["row"]["test_accuracy"],
                            "test_after": t["test_accuracy"],
                            "seconds": t.get("train_seconds"),
                            "stands_in": t is best} for t in rejected]
        out["rejected_generation"] = len(rows)
    return {"budgets": {str(b): {"before": point(rows, b, "before"),
                                 "after": point(after, b, "after")}
                        for b in budgets}, **out,
            "generations": [{"generation": g, "synapses": rows[g]["synapses"],
                             "val_before": rows[g]["val_accuracy"],
                             "val_after": recovered[g]["val_accuracy"],
                             "test_before": rows[g]["test_accuracy"],
                             "test_after": recovered[g]["test_accuracy"],
                             "seconds": recovered[g]["train_seconds"]}
                            for g in sorted(recovered)]}


def markdown(summary: dict, epochs: int) -> str:
    lines = [f"# Recovery training: {epochs} epoch(s), linear decay to zero, masks fixed", "",
             "| generation | synapses | val before | val after | test before | test after |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in summary["generations"]:
        lines.append(f"| {r['generation']} | {r['synapses']:,} | {100 * r['val_before']:.2f}% "
                     f"| {100 * r['val_after']:.2f}% | {100 * r['test_before']:.2f}% | "
                     f"{100 * r['test_after']:.2f}% |")
    if summary.get("rejected"):
        n = summary["rejected_generation"]
        lines += ["", f"The offspring of generation {n} that the pace rejected (the lineage "
                  f"ended at generation {n - 1}); the one marked * stands in as generation {n} "
                  f"below (the first try the pace accepts on recovered validation accuracy, "
                  f"else the best on validation):", "",
                  "| offspring | synapses | synaptic eff. | val before | val after | "
                  "test before | test after |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in summary["rejected"]:
            lines.append(f"| {r['label']}{' *' if r['stands_in'] else ''} | "
                         f"{r['synapses']:,} | {r['synaptic_efficiency']:.1f}x | "
                         f"{100 * r['val_before']:.2f}% | {100 * r['val_after']:.2f}% | "
                         f"{100 * r['test_before']:.2f}% | {100 * r['test_after']:.2f}% |")
    lines += ["", "Operating points, chosen on validation by the conservative rule (the "
              "generation before the first one outside the budget); test loss against "
              "generation 0 (not recovered), reported only:", "",
              "| budget (points) | | generation | synaptic eff. | val loss | test loss | "
              "95% interval |", "|---:|---|---:|---:|---:|---:|---|"]
    for b, ba in summary["budgets"].items():
        for when in ("before", "after"):
            p = ba[when]
            iv = p.get("interval")
            shown = f"[{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "unavailable"
            gen = f"{p['generation']} ({p['offspring']})" if p.get("offspring") else \
                p["generation"]
            lines.append(f"| {b} | {when} | {gen} | "
                         f"{p['synaptic_efficiency']:.1f}x | {p['val_loss']:.2f} | "
                         f"{p['test_loss']:.2f} | {shown} |")
    return "\n".join(lines) + "\n"


def _correct(run: Path, rows, recovered, tried, folder: Path, stand_in) -> dict:
    """The per-image test correctness :func:`summarise` needs, where it was stored."""
    n = rows[0].get("test_images")
    if not n:
        return {}

    def read(path):
        return stats.load_test_correct(path, n) if path.is_file() else None

    out = {"gen0": stats.find_test_correct(run, rows[0], n), "before": {}, "after": {}}
    for g, row in enumerate(rows):
        out["before"][g] = out["after"][g] = stats.find_test_correct(run, row, n)
    for g in recovered:
        out["after"][g] = read(folder / f"gen_{g:03d}" / stats.TEST_CORRECT)
    if tried:
        out["after"][len(rows)] = read(folder / f"gen_{len(rows):03d}" / stand_in
                                       / stats.TEST_CORRECT)
    return out


def recover(run, generations=None, epochs: int = 3, beyond: int = 2, backend: str = "numpy",
            data_dir=None, log=print, rejected: bool = True) -> dict:
    """Recovery training of a finished lineage (module docstring); returns the summary.

    Args:
        run: the lineage's folder (``minievo evolve --out``).
        generations: the generations to recover (ints >= 1); None chooses them on
            validation (:func:`choose`).
        epochs: recovery epochs per generation, 1 to 50.
        beyond: with ``generations=None``, how many generations after each chosen point are
            recovered too.
        rejected: recover the offspring the validation pace rejected where the lineage ended
            (:func:`rejected_offspring`) and let the best of them on validation stand in as
            the next generation.
    """
    run = Path(run)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 50:
        raise UsageError(f"--epochs {epochs!r}: allowed: a whole number from 1 to 50")
    if isinstance(beyond, bool) or not isinstance(beyond, int) or not 0 <= beyond <= 10:
        raise UsageError(f"--beyond {beyond!r}: allowed: a whole number from 0 to 10")
    lin, rows = _lineage(run, backend, data_dir, log)
    if generations is None:
        generations = choose(rows, beyond=beyond)
    bad = [g for g in generations if isinstance(g, bool) or not isinstance(g, int)
           or not 1 <= g < len(rows)]
    if bad:
        raise UsageError(f"--generations {bad}: allowed: generations 1 to {len(rows) - 1} of "
                         f"{run}")
    folder = run / "recovery"
    folder.mkdir(exist_ok=True)
    with run_lock(folder, "recover"):
        cfg = lin.config
        lin.loaders = make_loaders(cfg.dataset, cfg.batch_size, cfg.seed, lin.data_dir,
                                   cfg.limit_train, cfg.limit_test, cfg.val_fraction,
                                   lin.backend, augment=cfg.augment)
        recovered = {}
        for g in sorted(set(generations)):
            t0 = time.perf_counter()
            recovered[g] = recover_generation(lin, g, epochs, folder, log)
            r = recovered[g]
            log(f"recovery of generation {g}: validation {100 * rows[g]['val_accuracy']:.2f}%"
                f" -> {100 * r['val_accuracy']:.2f}%, test {100 * rows[g]['test_accuracy']:.2f}%"
                f" -> {100 * r['test_accuracy']:.2f}% ({time.perf_counter() - t0:.0f} s)")
        tried = []
        for t in rejected_offspring(run, rows) if rejected else []:
            n = len(rows)
            t0 = time.perf_counter()
            r = recover_generation(lin, n, epochs, folder, log, source=t["path"],
                                   label=t["label"])
            tried.append(dict(t, **r))
            log(f"recovery of rejected offspring {n}/{t['label']}: validation "
                f"{100 * t['row']['val_accuracy']:.2f}% -> {100 * r['val_accuracy']:.2f}%, test "
                f"{100 * t['row']['test_accuracy']:.2f}% -> {100 * r['test_accuracy']:.2f}% "
                f"({time.perf_counter() - t0:.0f} s)")
        stand_in = None
        if tried:
            from minievo.evolution.pace import reference  # noqa: PLC0415

            margin = cfg.pace_margin if cfg.pace_margin is not None else min(BUDGETS) / 100
            ref = reference([r["val_accuracy"] for r in rows], cfg.pace_reference)
            stand_in = pace_choice(tried, ref, margin)
        summary = summarise(rows, recovered, rejected=tried, stand_in=stand_in,
                            correct=_correct(run, rows, recovered, tried, folder, stand_in))
        summary["epochs"] = epochs
        ckpt.atomic_write_text(folder / "recovery.json", json.dumps(summary, indent=1))
        ckpt.atomic_write_text(folder / "recovery.md", markdown(summary, epochs))
    return summary


__all__ = ["BUDGETS", "LinearDecayLR", "choose", "markdown", "pace_choice", "recover",
           "recover_generation", "rejected_offspring", "summarise"]
