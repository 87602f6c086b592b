"""``minievo evolve`` and ``minievo report``: the command-line face of the lineage."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from minievo.evolution.lineage import PRESETS, EvolutionConfig, Lineage


def add_commands(sub, add_common) -> None:
    from minievo import validate
    from minievo.evolution import sweep

    p = sub.add_parser(
        "evolve", help="run (or resume) an evolutionary synthesis lineage",
        description="Train an ancestor, then synthesise and train offspring generation by "
                    "generation. Rerunning the same command resumes an interrupted run.")
    add_common(p)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper-mnist",
                   help="starting configuration; flags below override it")
    p.add_argument("--quick", action="store_true",
                   help="the 'quick' preset: a few minutes on a slice of MNIST")
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    p.add_argument("--generations", type=int)
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--seed", type=int)
    p.add_argument("--ancestor-epochs", type=int)
    p.add_argument("--offspring-epochs", type=int)
    p.add_argument("--f-c", type=float, help="environmental factor for clusters, in (0, 1]")
    p.add_argument("--f-s", type=float, help="environmental factor for synapses, in (0, 1]")
    p.add_argument("--target-retention", type=float,
                   help="choose F each generation so that this fraction of synapses is "
                        "kept in expectation, in [0.01, 1] (a smaller target is refused: the "
                        "environment model cannot honour it); under --retention-control "
                        "quantile a target below what the literal normalisation keeps cannot "
                        "be reached either, and a warning says what is kept instead")
    p.add_argument("--retention-control",
                   help="how --target-retention is met: factor (solve F_s) or quantile "
                        "(keep F, solve the normalisation quantile)")
    p.add_argument("--granularity", help="conv cluster granularity: kernel or filter")
    p.add_argument("--offspring-init", help="inherit, reinit or rewind")
    p.add_argument("--normalisation-scope",
                   help="layer (the literal model, docs/method.md#normalisation) or "
                        "network: where Z_s is taken")
    p.add_argument("--synapse-quantile", type=float,
                   help="quantile of live synapse strengths given p = 1 (1 = max, literal)")
    p.add_argument("--cluster-quantile", type=float,
                   help="quantile of live cluster strengths given P = 1 (1 = max)")
    p.add_argument("--offspring-per-generation", type=int,
                   help="K offspring per generation, the fittest on validation kept")
    p.add_argument("--parents", type=int,
                   help="multi-parent synthesis: from generation 2 on, each offspring's "
                        "encoding combines the m fittest of the K offspring before it "
                        "(needs --offspring-per-generation >= m and --val-fraction)")
    p.add_argument("--val-fraction", type=float,
                   help="validation split carved from the training set, in [0, 0.5]; at "
                        "least one image per class must be left to train on")
    p.add_argument("--augment", action="store_const", const=True, default=None,
                   help="random crop (4-pixel padding) and horizontal flip of the training "
                        "batches, seeded (for CIFAR-style networks)")
    p.add_argument("--stop-margin", type=float,
                   help="stop when validation accuracy falls this much below generation 0")
    p.add_argument("--pace-margin", type=float,
                   help="validation pace (docs/method.md#pace): each generation's cut halves "
                        "after an offspring falls more than this below generation 0 on "
                        "validation (a fraction: 0.002 = 0.2 points) and grows back while it "
                        "holds; needs --val-fraction and --target-retention")
    p.add_argument("--pace-reference", type=int,
                   help="the validation pace's reference: the mean validation accuracy of "
                        "the first N generations (default 1: generation 0 alone)")
    p.add_argument("--pace-per-layer", action="store_const", const=True, default=None,
                   help="the validation pace with a cut per prunable layer: a rejection "
                        "halves the cut of the layer that lost the most strength per unit of "
                        "cut (docs/method.md#pace)")
    p.add_argument("--ancestor-path",
                   help="start from this trained ancestor (a `minievo train` checkpoint.npz)")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser(
        "sweep", help="run many lineages (seeds x settings) on dask.distributed",
        description="Run a grid of lineages, every setting with every seed, on a Dask "
                    "cluster (by default a LocalCluster of worker processes on this machine, "
                    "one BLAS thread each), then write the aggregate report: per generation "
                    "mean and std over seeds, the efficiency at equal accuracy loss, and a "
                    "plot. Rerunning the same command skips finished lineages and resumes the "
                    "others. Needs the extra: pip install 'minievo[sweep]'.")
    add_common(p)
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="every lineage's starting configuration (default paper-mnist, or the "
                        "grid file's)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0,1,2 or 0-2 (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=V1[,V2...]",
                   help="an evolve option (underscores or dashes) and its values; one value "
                        "applies to every lineage, several make a grid axis (repeatable)")
    p.add_argument("--grid", default=None,
                   help="a JSON or TOML file with keys preset, seeds, base (options for all), "
                        "settings (a list of option tables) and grid (option -> values)")
    p.add_argument("--workers", type=validate.int_range(1, sweep.MAX_WORKERS), default=2,
                   help=f"worker processes of the LocalCluster (default 2, at most "
                        f"{sweep.MAX_WORKERS} here: 4 per core, at most 64)")
    p.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler, e.g. tcp://HOST:8786 (its "
                        "workers must see --out at the same path)")
    p.add_argument("--scheduler-timeout", type=validate.float_range(0, 3600, lo_open=True),
                   default=10.0,
                   help="seconds to reach --scheduler (default 10); a peer that accepts the "
                        "connection and never answers is refused 5 s after this")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "recover", help="recovery training of a finished lineage's chosen generations",
        description="Train a finished lineage's generations a few more epochs (masks fixed, "
                    "learning rate falling linearly to zero) and measure them again: by "
                    "default the operating points chosen on validation at 0.3 and 1.0 points "
                    "(conservative rule) and the generations after them, and, where the "
                    "validation pace ended the lineage, the offspring it rejected. Writes "
                    "RUN/recovery/ (resumable).")
    p.add_argument("run_dir")
    p.add_argument("--epochs", type=int, default=3, help="recovery epochs per generation")
    p.add_argument("--generations", default=None,
                   help="comma list of generations (default: chosen on validation)")
    p.add_argument("--beyond", type=int, default=2,
                   help="generations after each chosen point also recovered (default 2)")
    p.add_argument("--no-rejected", action="store_true",
                   help="do not recover the offspring the validation pace rejected at the "
                        "generation where it ended the lineage")
    add_common(p)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("report", help="render a run's tables and plots again")
    p.add_argument("run_dir")
    p.add_argument("--recompute-predictions", action="store_true",
                   help="evaluate each generation's saved model.npz on the test set and store "
                        "its per-image correctness (test_correct.npy) where it is missing, for "
                        "the bootstrap intervals of the test losses (needs the data set)")
    p.add_argument("--data-dir", default=None,
                   help="where the data set is, for --recompute-predictions")
    p.set_defaults(func=cmd_report)


def config_from_args(args) -> EvolutionConfig:
    preset = "quick" if args.quick else args.preset
    values = dict(PRESETS[preset])
    for f in fields(EvolutionConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    cfg = EvolutionConfig(**values)
    cfg.validate()
    return cfg


def cmd_evolve(args) -> int:
    cfg = config_from_args(args)
    out = args.out or f"runs/{'quick' if args.quick else args.preset}"
    print(f"minievo evolve: {cfg.model} on {cfg.dataset}, {cfg.generations} generations, "
          f"backend {args.backend}, run folder {out}")
    lineage = Lineage(cfg, out, backend=args.backend, data_dir=args.data_dir,
                      progress=not args.no_progress)
    rows = lineage.run()
    paths = lineage.paths
    first, last = rows[0], rows[-1]
    print(f"\ngeneration {last['generation']}: {last['synaptic_efficiency']:.1f}x fewer "
          f"synapses than generation 0, cluster efficiency "
          f"{last['cluster_efficiency_kernel']:.1f}x (kernel) / "
          f"{last['cluster_efficiency_filter']:.1f}x (filter), test accuracy "
          f"{100 * last['test_accuracy']:.2f}% (generation 0: "
          f"{100 * first['test_accuracy']:.2f}%), on {last.get('test_images', '?')} test "
          f"images" + (f"; validation {100 * last['val_accuracy']:.2f}% on "
                       f"{last['val_images']} images" if "val_accuracy" in last else ""))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def spec_from_args(args) -> dict:
    from minievo.evolution import sweep
    from minievo.experiment import UsageError

    data = sweep.load_grid_file(args.grid) if args.grid else {}
    base = dict(data.get("base", {}))
    grid = dict(data.get("grid", {}))
    for item in args.set:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values:
            raise UsageError(f"--set {item!r}: write OPTION=VALUE or OPTION=V1,V2")
        parts = [v.strip() for v in values.split(",")]
        if len(parts) == 1:
            base[key] = parts[0]
        else:
            grid[key] = parts
    if args.seeds is not None:
        seeds = sweep.seed_list(args.seeds, "--seeds")
    else:
        seeds = sweep.seed_list(data.get("seeds", [0]), f"grid file {args.grid}: seeds"
                                if "seeds" in data else "seeds")
    return sweep.make_spec(args.preset or data.get("preset", "paper-mnist"), seeds, base,
                           data.get("settings"), grid)


def cmd_sweep(args) -> int:
    from minievo.evolution import sweep

    sweep.import_distributed()  # one-line error naming the install command, before any work
    spec = spec_from_args(args)
    n = len(spec["settings"]) * len(spec["seeds"])
    where = args.scheduler or f"a LocalCluster of {args.workers} worker processes"
    print(f"minievo sweep: {len(spec['settings'])} setting(s) x {len(spec['seeds'])} seed(s) "
          f"= {n} lineages of preset {spec['preset']} on {where}; folder {args.out}",
          flush=True)
    sweep.run_sweep(spec, args.out, workers=args.workers, scheduler=args.scheduler,
                    data_dir=args.data_dir, backend=args.backend,
                    log=lambda line: print(line, flush=True),
                    scheduler_timeout=args.scheduler_timeout)
    print((Path(args.out) / "aggregate.md").read_text())
    print(f"wrote {args.out}/aggregate.csv, aggregate.json, aggregate.md, error_vs_synapses.png")
    return 0


def cmd_report(args) -> int:
    from minievo.runlock import run_lock

    # A reader's lock: never render a folder that a run is writing to.
    with run_lock(Path(args.run_dir), "report", shared=True):
        return _report(args)


def _report(args) -> int:
    from minievo.evolution import report

    if getattr(args, "recompute_predictions", False):
        from minievo.evolution import stats

        root = Path(args.run_dir)
        for folder in sorted(p.parent for p in root.glob("**/lineage.json")):
            stats.recompute_predictions(folder, data_dir=args.data_dir)
    if (Path(args.run_dir) / "sweep.json").exists():
        from minievo.evolution import sweep

        sweep.write_report(args.run_dir, sweep.load_spec(args.run_dir))
        print((Path(args.run_dir) / "aggregate.md").read_text())
        return 0

    paths = report.render(args.run_dir)
    print((paths[2]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_recover(args) -> int:
    from minievo.evolution import recovery
    from minievo.experiment import UsageError

    gens = None
    if args.generations is not None:
        try:
            gens = [int(t) for t in args.generations.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--generations {args.generations!r}: allowed: a comma list of "
                             "whole numbers") from None
    recovery.recover(args.run_dir, gens, epochs=args.epochs, beyond=args.beyond,
                     backend=args.backend, data_dir=args.data_dir,
                     rejected=not args.no_rejected)
    print((Path(args.run_dir) / "recovery" / "recovery.md").read_text())
    return 0


__all__ = ["add_commands", "config_from_args"]
