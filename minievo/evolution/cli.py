"""``minievo evolve`` and ``minievo report``: the command-line face of the lineage."""

from __future__ import annotations

from dataclasses import fields

from minievo.evolution.lineage import PRESETS, EvolutionConfig, Lineage


def add_commands(sub, add_common) -> None:
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
                        "kept in expectation")
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
    p.add_argument("--val-fraction", type=float,
                   help="validation split carved from the training set")
    p.add_argument("--stop-margin", type=float,
                   help="stop when validation accuracy falls this much below generation 0")
    p.add_argument("--ancestor-path",
                   help="start from this trained ancestor (a `minievo train` checkpoint.npz)")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser("report", help="render a run's tables and plots again")
    p.add_argument("run_dir")
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
          f"{100 * first['test_accuracy']:.2f}%)")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_report(args) -> int:
    from minievo.evolution import report

    paths = report.render(args.run_dir)
    print((paths[2]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


__all__ = ["add_commands", "config_from_args"]
