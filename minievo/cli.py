"""The ``minievo`` command.

    minievo train    --model lenet5 --dataset mnist --epochs 10 --out runs/lenet5
    minievo evolve   --dataset mnist --generations 12 --out runs/evo [--quick]
    minievo report   runs/evo
    minievo data fetch mnist
    minievo doctor
    minievo assignments new DIR | grade [DIR]

Every command takes ``--backend numpy|cupy``. Errors that come from bad input are printed as
one line (``minievo: error: ...``) with exit status 2, not as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from minievo import backend, validate
from minievo.experiment import (
    TRAIN_DEFAULTS,
    UsageError,
    check_run_dir,
    make_loaders,
    make_optimizer,
    run_record,
)
from minievo.runlock import FolderInUse, run_lock


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from minievo import init, models, training
    from minievo.checkpoint import CheckpointError, atomic_write_text

    cfg = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    cfg["limit_train"] = args.limit_train
    validate.check_model_fits_dataset(cfg["model"], cfg["dataset"])
    out = Path(args.out)
    with run_lock(out, "train"):  # one run per folder (minievo.runlock)
        resume = check_run_dir(out, cfg, "train")
        # Everything that can fail on bad input happens before the run folder is written to.
        init.manual_seed(cfg["seed"])
        import data_loaders as dl  # noqa: PLC0415

        data_shape = dl.DATASETS[dl.dataset_name(cfg["dataset"])].shape
        model = models.build(cfg["model"], models.input_shape_for(cfg["model"], data_shape))
        model = model.to(args.backend)
        train, _, test = make_loaders(cfg["dataset"], cfg["batch_size"], cfg["seed"],
                                      data_dir=args.data_dir, limit_train=args.limit_train,
                                      backend_name=args.backend)
        opt, sched = make_optimizer(model, cfg, total_iterations=cfg["epochs"] * len(train))
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(out / "config.json", json.dumps(run_record("train", cfg), indent=2))
        ck = out / "checkpoint.npz"
        state = None
        if resume and ck.exists():
            state, _ = training.load_training_checkpoint(ck, model, opt)
            from minievo.checkpoint import check_live_path  # noqa: PLC0415

            check_live_path(ck, model, models.input_shape_for(cfg["model"], data_shape))
            if not (0 <= state.epoch <= cfg["epochs"] and 0 <= state.step_in_epoch < len(train)):
                raise CheckpointError(
                    f"{ck}: fit_state epoch {state.epoch}, batch {state.step_in_epoch} lies "
                    f"outside this run ({cfg['epochs']} epochs of {len(train)} batches)")
            print(f"resuming {out} at epoch {state.epoch + 1}, batch {state.step_in_epoch}")
        state = training.fit(model, train, opt, cfg["epochs"], scheduler=sched, test_loader=test,
                             checkpoint_path=ck, checkpoint_seconds=args.checkpoint_seconds,
                             state=state, progress=not args.no_progress)
        final = state.history[-1] if state.history else {}
        metrics = {"config": cfg, "history": state.history,
                   "test_accuracy": final.get("test_accuracy"),
                   "train_seconds": state.train_seconds, "backend": args.backend}
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        print(f"test accuracy {100 * final.get('test_accuracy', 0):.2f}% after {state.epoch} "
              f"epochs, {state.train_seconds:.0f}s training; wrote {ck} and "
              f"{out / 'metrics.json'}")
        return 0


# ----------------------------------------------------------------------------------------------
# data, doctor
# ----------------------------------------------------------------------------------------------
def cmd_data(args) -> int:
    import data_loaders as dl

    path = dl.fetch_dataset(args.name, data_dir=args.data_dir)
    print(f"{args.name}: ready in {path}")
    return 0


def cmd_doctor(args) -> int:
    import numpy as np

    print(f"minievo      {_version()}")
    print(f"python       {platform.python_version()} ({platform.machine()}, "
          f"{os.cpu_count()} cpus)")
    print(f"numpy        {np.__version__}")
    try:
        import scipy

        print(f"scipy        {scipy.__version__}")
    except ImportError:
        print("scipy        not installed")
    print(f"BLAS         {_blas_info()}")
    try:
        default_backend = backend.get_backend()
    except backend.BackendError as exc:
        default_backend = f"unusable: {exc}"
    print(f"backend      default {default_backend} "
          f"(MINIEVO_BACKEND={os.environ.get('MINIEVO_BACKEND', 'unset')})")
    try:
        import cupy

        print(f"cupy         {cupy.__version__}")
    except Exception as exc:
        print(f"cupy         not usable: {type(exc).__name__}: {exc}")
        cupy = None
    if cupy is not None:
        try:
            rt = cupy.cuda.runtime.runtimeGetVersion()
            drv = cupy.cuda.runtime.driverGetVersion()
            print(f"CUDA         runtime {rt // 1000}.{rt % 1000 // 10}, "
                  f"driver {drv // 1000}.{drv % 1000 // 10}")
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(f"device       {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
        except Exception as exc:
            print(f"CUDA         no usable device: {type(exc).__name__}: {exc}")
    print(f"RawKernel    {_kernel_check()}")
    from minievo.kernels import native  # noqa: PLC0415

    print(f"CPU kernel   {native.status()}")
    return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("minievo")
    except Exception:
        return "unknown (not installed)"


def _blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        libs = [f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads"
                + (f", {i['architecture']} kernels" if i.get("architecture") else "") + ")"
                for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            return "; ".join(libs)
    except ImportError:
        pass
    import numpy as np

    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def _kernel_check() -> str:
    """Compile every shipped .cu: for the GPU when one answers, else to PTX (no GPU needed)."""
    try:
        from minievo import kernels as K
    except Exception as exc:
        return f"kernel module unavailable: {exc}"
    results = []
    for path in K.kernel_files():
        try:
            if backend.cupy_available():
                for name in K.entry_points(path.read_text()):
                    K.get_kernel(path.name, name).compile()
                results.append(f"{path.name} compiled for the GPU")
            else:
                ptx = K.compile_to_ptx(path)
                results.append(f"{path.name} -> PTX ({len(ptx):,} chars, no GPU needed)")
        except Exception as exc:
            results.append(f"{path.name} FAILED: {type(exc).__name__}: {exc}")
    return "; ".join(results) if results else "no kernel sources found"


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def _add_common(p):
    p.add_argument("--backend", default=os.environ.get("MINIEVO_BACKEND", "numpy"),
                   help="numpy (CPU) or cupy (GPU)")
    p.add_argument("--data-dir", default=None,
                   help="a folder that already holds the dataset files (checked first)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-accel", action="store_true",
                   help="run the plain reference ops the chapters teach, without the "
                        "accelerator (minievo.accel: channels-last conv, two-pass pool, "
                        "compiled sparse training); slower, same results to float tolerance")
    p.add_argument("--strict-numerics", action="store_true",
                   help="refuse to resume a run started under other numerics settings "
                        "(sparse training, native kernel, BLAS threads and kernels) instead of "
                        "warning")
    p.add_argument("--sparse-training", choices=("auto", "on", "off"),
                   default=os.environ.get("MINIEVO_SPARSE_TRAINING", "auto"),
                   help="with the accelerator: train sparse masked layers through the compiled "
                        "CPU kernel: auto (when its cost model says it is faster; default), "
                        "on, off")


def build_parser() -> argparse.ArgumentParser:
    parser = validate.Parser(prog="minievo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (checkpoints and resumes)")
    _add_common(p)
    for key, default in TRAIN_DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        p.add_argument(flag, type=validate.TRAIN_TYPES.get(key, type(default)), default=default)
    p.add_argument("--limit-train", type=validate.POSITIVE_INT, default=None,
                   help="use only the first N training images")
    p.add_argument("--out", default="runs/train")
    # Not part of the run's configuration: a run may be resumed with another interval.
    p.add_argument("--checkpoint-seconds", type=validate.NONNEGATIVE_FLOAT, default=120.0,
                   help="also checkpoint inside an epoch every this many seconds "
                        "(default 120; 0: after every batch)")
    p.set_defaults(func=cmd_train)

    try:
        from minievo.evolution import cli as evo_cli
    except ImportError:
        evo_cli = None
    if evo_cli is not None:
        evo_cli.add_commands(sub, _add_common)

    p = sub.add_parser("data", help="fetch datasets ahead of time")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("name", type=validate.dataset_name, help="mnist, fashion-mnist or cifar10")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("doctor", help="versions, BLAS, CUDA, and a kernel compile check")
    p.add_argument("--backend", default=None)
    p.set_defaults(func=cmd_doctor)

    try:
        from minievo import assignments
    except ImportError:
        assignments = None
    if assignments is not None:
        assignments.add_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad flag (one line printed by validate.Parser), or --help
        return exc.code if isinstance(exc.code, int) else 2
    from minievo.checkpoint import CheckpointError
    from minievo.training import TrainingDiverged

    try:
        import data_loaders

        data_error = data_loaders.DataError
    except Exception:
        data_error = ValueError
    try:
        if getattr(args, "strict_numerics", False):
            os.environ["MINIEVO_STRICT_NUMERICS"] = "1"
        if getattr(args, "backend", None):
            backend.set_backend(args.backend)
        if hasattr(args, "no_accel"):  # the commands that train: their environment variables
            from minievo.experiment import check_environment  # noqa: PLC0415

            check_environment()
            if args.command != "sweep":  # a sweep's workers run one BLAS thread each
                from minievo.experiment import busy_machine_warning  # noqa: PLC0415

                busy = busy_machine_warning()
                if busy:
                    print(f"minievo: warning: {busy}", file=sys.stderr)
        if getattr(args, "no_accel", True) is False:  # commands that train: on by default
            import minievo.accel  # noqa: PLC0415

            minievo.accel.enable()
            try:
                minievo.accel.sparse_train.set_mode(args.sparse_training)
            except ValueError:
                raise UsageError(f"--sparse-training (or MINIEVO_SPARSE_TRAINING) is "
                                 f"{args.sparse_training!r}, allowed: auto, on, off") from None
        return args.func(args)
    except (UsageError, backend.BackendError, CheckpointError, TrainingDiverged,
            FolderInUse, data_error) as exc:
        print(f"minievo: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk, a file where a folder goes
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"minievo: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nminievo: interrupted; the last checkpoint is kept, rerun the same command "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
