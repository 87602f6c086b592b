"""The generation loop (docs/method.md#generation): a lineage of ever sparser networks.

Generation 0 is the ancestor: a dense network trained from scratch. Each later generation

1. encodes its ancestor (synapse and cluster probabilities, :mod:`.encoding`);
2. synthesises an offspring (masks sampled under the environmental factor, :mod:`.synthesis`);
3. initialises the offspring's weights (``offspring_init``: inherit, reinit or rewind);
4. trains it with the masks enforced;
5. evaluates it, records the generation's row, checkpoints; the offspring becomes the ancestor.

Everything random is seeded from ``(seed, generation, offspring)``, never from a running state,
so a lineage interrupted at any point and resumed produces exactly the table an uninterrupted
run would. On disk (``out/``):

    config.json            the run's configuration (a different run refuses this folder)
    generation0_init.npz   the ancestor's weights before training (for ``rewind``)
    gen_000/train.npz      training checkpoint of the generation under way (resumable)
    gen_000/model.npz      the finished generation's network, masks included
    gen_000/test_correct.npy  which test images it classifies right (np.packbits; for the
                           report's paired bootstrap, evolution.stats)
    lineage.json           one row per finished generation (written atomically)
    table.csv/.json/.md    the per-generation table; plots in *.png (see :mod:`.report`)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from minievo import checkpoint as ckpt
from minievo import init, models, training
from minievo.evolution import stats
from minievo.evolution.environment import (
    EnvironmentalFactor,
    QuantileRetention,
    TargetRetention,
)
from minievo.evolution.metrics import model_metrics
from minievo.evolution.synthesis import OFFSPRING_INITS, apply_offspring_init, synthesize_offspring
from minievo.experiment import (
    UsageError,
    check_run_dir,
    make_loaders,
    make_optimizer,
    run_record,
)
from minievo.layers import Module, prunable_layers
from minievo.runlock import run_lock


@dataclass
class EvolutionConfig:
    """Everything that defines a lineage; two runs with equal configs give equal tables."""

    model: str = "lenet5"
    dataset: str = "mnist"
    generations: int = 12
    seed: int = 0
    # training recipe (Caffe LeNet-5 solver)
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_policy: str = "inv"
    ancestor_epochs: int = 10
    offspring_epochs: int = 2
    # the method
    f_c: float = 1.0
    f_s: float = 1.0
    target_retention: float | None = None
    granularity: str = "kernel"
    offspring_init: str = "inherit"
    # normalisation of the encoding (docs/method.md#normalisation: per layer, at the maximum)
    normalisation_scope: str = "layer"
    synapse_quantile: float = 1.0
    cluster_quantile: float = 1.0
    # how target_retention is met: "factor" solves F_s (F_c fixed), "quantile" keeps F and
    # solves the synapse quantile of the normalisation (see environment.QuantileRetention)
    retention_control: str = "factor"
    # options beyond the paper (off by default)
    offspring_per_generation: int = 1
    # multi-parent synthesis (evolution.mating): from generation 2 on, every offspring's
    # encoding combines the `parents` fittest (on validation) offspring of the generation before
    parents: int = 1
    val_fraction: float = 0.0
    stop_margin: float | None = None
    # a pace that answers to validation (evolution.pace): None keeps target_retention every
    # generation; a number is the largest drop in validation accuracy (a fraction) that an
    # accepted offspring may show, and each generation's cut follows ValidationPace
    pace_margin: float | None = None
    # the pace's reference: the mean validation accuracy of the first `pace_reference`
    # generations (0, 1, ...) instead of generation 0's alone (evolution.pace.reference)
    pace_reference: int = 1
    # a cut per prunable layer instead of one for the network (evolution.pace, issue 20)
    pace_per_layer: bool = False
    # a trained ancestor to start from (a `minievo train` checkpoint or a lineage model.npz)
    ancestor_path: str | None = None
    # data size (quick runs)
    limit_train: int | None = None
    limit_test: int | None = None
    # random crop (4-pixel padding) and horizontal flip of the training batches, seeded
    augment: bool = False
    # a network and data given through the Python API (minievo.api.evolve): the model and
    # dataset names are then labels, and these sha256 signatures identify what was given, so
    # that a resume with another network or other data is refused
    architecture: str | None = None
    data_signature: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        from minievo.evolution.encoding import CONV_GRANULARITIES

        if self.architecture is None and self.model not in models.MODELS:
            raise UsageError(f"unknown model {self.model!r}; choose one of: "
                             f"{', '.join(models.MODELS)}")
        for name in ("f_c", "f_s"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise UsageError(f"environmental factor {name} = {v} is outside (0, 1]")
        if self.target_retention is not None and not 0 < self.target_retention <= 1:
            raise UsageError(f"target retention {self.target_retention} is outside (0, 1]")
        from minievo.evolution.environment import MIN_TARGET_RETENTION  # noqa: PLC0415

        if self.target_retention is not None and self.target_retention < MIN_TARGET_RETENTION:
            raise UsageError(f"--target-retention {self.target_retention!r}: allowed: a number "
                             f"in [{MIN_TARGET_RETENTION:g}, 1] (the environment model cannot "
                             f"honour a generation that keeps less than {MIN_TARGET_RETENTION:.0%}"
                             " of the synapses in expectation)")
        if self.granularity not in CONV_GRANULARITIES:
            raise UsageError(f"unknown granularity {self.granularity!r}; choose one of: "
                             f"{', '.join(CONV_GRANULARITIES)}")
        if self.offspring_init not in OFFSPRING_INITS:
            raise UsageError(f"unknown offspring_init {self.offspring_init!r}; choose one of: "
                             f"{', '.join(OFFSPRING_INITS)}")
        from minievo.evolution.encoding import NORMALISATION_SCOPES

        if self.normalisation_scope not in NORMALISATION_SCOPES:
            raise UsageError(f"unknown normalisation scope {self.normalisation_scope!r}; "
                             f"choose one of: {', '.join(NORMALISATION_SCOPES)}")
        for name in ("synapse_quantile", "cluster_quantile"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise UsageError(f"{name} = {v} is outside (0, 1]")
        if self.retention_control not in ("factor", "quantile"):
            raise UsageError(f"unknown retention_control {self.retention_control!r}; "
                             "choose factor or quantile")
        if self.generations < 0:
            raise UsageError(f"generations must be >= 0, got {self.generations}")
        if self.offspring_per_generation < 1:
            raise UsageError("offspring_per_generation must be >= 1")
        if self.stop_margin is not None and not 0 <= self.stop_margin < 1:
            raise UsageError(f"stop_margin = {self.stop_margin} is outside [0, 1): it is the "
                             "drop in validation accuracy (a fraction, 0.01 = 1 point) that "
                             "stops the lineage")
        if not isinstance(self.parents, int) or self.parents < 1:
            raise UsageError(f"parents must be a whole number >= 1, got {self.parents!r}")
        if self.parents > self.offspring_per_generation:
            raise UsageError(f"parents = {self.parents} needs at least as many offspring per "
                             f"generation (offspring_per_generation = "
                             f"{self.offspring_per_generation}) to choose them from")
        if self.pace_margin is not None:
            self._validate_pace()
        self._validate_pace_reference()
        if not isinstance(self.pace_per_layer, bool):
            raise UsageError(f"--pace-per-layer {self.pace_per_layer!r}: allowed: true or false")
        if self.pace_per_layer and self.pace_margin is None:
            raise UsageError("--pace-per-layer gives each layer its own cut under the "
                             "validation pace: it needs --pace-margin")
        if (self.offspring_per_generation > 1 or self.stop_margin is not None) and not (
                0 < self.val_fraction < 1):
            raise UsageError("choosing the fittest offspring or a stopping rule needs a "
                             "validation split: set val_fraction in (0, 1) (never the test set)")
        self._validate_numbers()

    def _validate_pace(self) -> None:
        from minievo.evolution.pace import ValidationPace  # noqa: PLC0415

        if isinstance(self.pace_margin, bool) or not isinstance(self.pace_margin, int | float):
            raise UsageError(f"--pace-margin {self.pace_margin!r}: allowed: a number in (0, 1)")
        if not 0 < self.val_fraction < 1:
            raise UsageError("a validation pace (--pace-margin) needs a validation split: set "
                             "val_fraction in (0, 1) (never the test set)")
        if self.target_retention is None or self.target_retention >= 1:
            raise UsageError("a validation pace (--pace-margin) starts from a cut of "
                             "1 - target_retention: set --target-retention below 1")
        if self.parents != 1:
            raise UsageError("a validation pace (--pace-margin) cannot be combined with "
                             "--parents above 1 (it may try several offspring per try: "
                             "--offspring-per-generation)")
        ValidationPace(1 - self.target_retention, self.pace_margin)  # checks the margin

    def _validate_pace_reference(self) -> None:
        r = self.pace_reference
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 10:
            raise UsageError(f"--pace-reference {r!r}: allowed: a whole number of leading "
                             "generations from 1 (generation 0 alone) to 10")
        if r != 1 and self.pace_margin is None:
            raise UsageError("--pace-reference sets the validation pace's reference: it needs "
                             "--pace-margin")

    def _validate_numbers(self) -> None:
        """The training recipe and data sizes: each refusal names the flag, the value and the
        allowed range."""
        import math  # noqa: PLC0415

        from minievo import validate  # noqa: PLC0415

        def bad(name, allowed):
            raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: allowed: "
                             f"{allowed}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        if not (is_num(self.lr) and self.lr > 0):
            bad("lr", "a number > 0")
        if not (is_num(self.momentum) and 0 <= self.momentum < 1):
            bad("momentum", "a number in [0, 1)")
        if not (is_num(self.weight_decay) and self.weight_decay >= 0):
            bad("weight_decay", "a number >= 0")
        from minievo.experiment import LR_POLICIES  # noqa: PLC0415

        if self.lr_policy not in LR_POLICIES:
            bad("lr_policy", ", ".join(LR_POLICIES))
        if not (is_int(self.batch_size) and self.batch_size >= 1):
            bad("batch_size", "an integer >= 1")
        if not (is_int(self.seed) and 0 <= self.seed < 2**32):
            bad("seed", "an integer in [0, 4294967295]")
        if not (is_int(self.ancestor_epochs) and self.ancestor_epochs >= (
                0 if self.ancestor_path else 1)):
            bad("ancestor_epochs", "an integer >= 1 (>= 0 with --ancestor-path)")
        if not (is_int(self.offspring_epochs) and self.offspring_epochs >= 0):
            bad("offspring_epochs", "an integer >= 0")
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and not (is_int(v) and v >= 1):
                bad(name, "an integer >= 1")
        from minievo.experiment import MAX_VAL_FRACTION  # noqa: PLC0415

        if not (is_num(self.val_fraction) and 0 <= self.val_fraction <= MAX_VAL_FRACTION):
            bad("val_fraction", f"a number in [0, {MAX_VAL_FRACTION:g}] (the rest trains)")
        if self.dataset is None or not isinstance(self.dataset, str):
            bad("dataset", "a data set name")
        if not isinstance(self.augment, bool):
            bad("augment", "true or false")
        if self.architecture is not None:
            return  # the Python API's own network and data: names are labels
        try:
            validate.dataset_name(self.dataset)
        except Exception as exc:  # argparse.ArgumentTypeError
            raise UsageError(f"--dataset: {exc}") from None
        validate.check_model_fits_dataset(self.model, self.dataset)

    def environment(self, target: float | None = None):
        """The environment of a generation; ``target`` overrides ``target_retention``
        (the validation pace sets one per generation)."""
        target = self.target_retention if target is None else target
        if target is not None and self.retention_control == "factor":
            # F_c stays as configured (default 1: clusters are dropped only by their own
            # probability); F_s is solved so the expected retention hits the target.
            return TargetRetention(target, f_c=self.f_c)
        return EnvironmentalFactor(self.f_c, self.f_s)


PRESETS: dict[str, dict] = {
    # The paper-scale run: Caffe LeNet-5 on full MNIST. F calibrated on this machine so that
    # about a dozen generations pass 125x synaptic efficiency (docs/results/paper-mnist.md).
    "paper-mnist": dict(model="lenet5", dataset="mnist", generations=13, ancestor_epochs=8,
                        offspring_epochs=2, f_c=1.0, f_s=1.0, normalisation_scope="network",
                        cluster_quantile=0.5, target_retention=0.66,
                        retention_control="quantile"),
    # The literal model of docs/method.md: per-layer Z = max / ln 2 (layer scope, quantiles 1),
    # constant F_c = F_s = 1, no retention control. It collapses within a few generations
    # (about 16% of a trained LeNet-5's synapses survive each one):
    # docs/results/literal-mnist.md.
    "literal": dict(model="lenet5", dataset="mnist", generations=4, ancestor_epochs=8,
                    offspring_epochs=2, f_c=1.0, f_s=1.0, normalisation_scope="layer",
                    synapse_quantile=1.0, cluster_quantile=1.0, target_retention=None,
                    retention_control="factor"),
    # paper-mnist with the validation pace (evolution.pace): 6,000 training images held out
    # for validation, each generation's cut halved while an offspring falls more than 0.3
    # points below generation 0 there; up to 30 generations (docs/results/sweep-paper-pace.md).
    "paper-mnist-paced": dict(model="lenet5", dataset="mnist", generations=30, ancestor_epochs=8,
                              offspring_epochs=2, f_c=1.0, f_s=1.0, normalisation_scope="network",
                              cluster_quantile=0.5, target_retention=0.66,
                              retention_control="quantile", val_fraction=0.1,
                              pace_margin=0.003),
    # A few-minute run of the same pipeline on a slice of MNIST.
    "quick": dict(model="lenet5", dataset="mnist", generations=5, ancestor_epochs=2,
                  offspring_epochs=1, f_c=1.0, f_s=1.0, normalisation_scope="network",
                  cluster_quantile=0.5, target_retention=0.5, retention_control="quantile",
                  limit_train=12000, limit_test=2000),
}


@dataclass
class Lineage:
    """A lineage being run in folder ``out``."""

    config: EvolutionConfig
    out: Path
    backend: str = "numpy"
    data_dir: str | None = None
    progress: bool = True
    log: object = print
    rows: list = field(default_factory=list)
    #: The Python API's network and data (minievo.api.evolve): a function returning a fresh
    #: model, and the (train, validation or None, test) loaders. None: the config's names.
    model_fn: object = None
    loaders: tuple | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        self.config.validate()
        if (self.model_fn is None) != (self.config.architecture is None) or \
                (self.model_fn is None) != (self.loaders is None):
            raise UsageError("a lineage of your own network needs model_fn, loaders and "
                             "config.architecture together (use minievo.api.evolve)")
        if self.loaders is not None:
            self.input_shape = tuple(self.loaders[0].sample_shape)
        else:
            import data_loaders as dl  # noqa: PLC0415

            data_shape = dl.DATASETS[dl.dataset_name(self.config.dataset)].shape
            self.input_shape = models.input_shape_for(self.config.model, data_shape)

    # ----- files -----------------------------------------------------------------------------
    def _gen_dir(self, g: int, k: int | None = None) -> Path:
        d = self.out / f"gen_{g:03d}"
        return d / f"offspring_{k}" if k is not None else d

    def _save_rows(self) -> None:
        ckpt.atomic_write_text(self.out / "lineage.json", json.dumps(
            {"config": asdict(self.config), "rows": self.rows}, indent=1))

    def _load_rows(self) -> list:
        from minievo.evolution import records  # noqa: PLC0415

        p = self.out / "lineage.json"
        if not p.exists() and not p.is_symlink():
            return []
        # bounded, regular file only, every field in range (evolution.records)
        rows = records.read_lineage(p)
        if rows and not (self._gen_dir(len(rows) - 1) / "model.npz").exists():
            raise ckpt.CheckpointError(f"{p}: records generation {len(rows) - 1}, but "
                                       f"{self._gen_dir(len(rows) - 1) / 'model.npz'} is missing")
        return rows

    def _new_model(self):
        if self.model_fn is not None:
            model = self.model_fn()
            if not isinstance(model, Module):
                raise UsageError(f"the model function returned {type(model).__name__}, not a "
                                 "minievo Module")
            return model.to(self.backend)
        return models.build(self.config.model, self.input_shape).to(self.backend)

    def _load_model(self, path: Path):
        model = self._new_model()
        expected = {k: v.shape for k, v in model.state_dict().items()}
        arrays, meta = ckpt.load(path, expected=expected)
        if meta.get("model") != self.config.model:
            raise ckpt.CheckpointError(
                f"{path}: checkpoint is of model {meta.get('model')!r}, this run uses "
                f"{self.config.model!r}")
        try:
            model.load_state_dict(arrays)
        except (KeyError, ValueError) as exc:
            raise ckpt.CheckpointError(f"{path}: {exc}") from None
        _check_live(path, model)
        return model

    def load_generation(self, g: int):
        """Generation g of this run folder, as saved (``gen_GGG/model.npz``), checked."""
        return self._load_model(self._gen_dir(g) / "model.npz")

    def load_model_file(self, path: Path):
        """A network of this lineage's model saved at ``path`` (an offspring's model.npz),
        with a checkpoint's checks."""
        return self._load_model(Path(path))

    def _load_ancestor(self, path: Path):
        """A trained generation 0 from a `minievo train` checkpoint or a lineage model.npz."""
        arrays, meta = ckpt.load(path)
        if any(k.startswith("model/") for k in arrays):
            arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
        model = self._new_model()
        try:
            model.load_state_dict(arrays)
        except (KeyError, ValueError) as exc:
            raise ckpt.CheckpointError(
                f"{path}: this checkpoint does not fit model {self.config.model!r}: {exc}"
            ) from exc
        ckpt.check_live_path(path, model, self.input_shape)
        return model

    def _save_model(self, model, path: Path, generation: int) -> None:
        ckpt.save(path, model.state_dict(), {"model": self.config.model,
                                             "generation": generation})

    # ----- the loop --------------------------------------------------------------------------
    def run(self) -> list:
        """Run (or resume) the lineage; returns the per-generation rows. The run folder is
        locked for the whole run (:mod:`minievo.runlock`): a second process is refused."""
        with run_lock(self.out, "evolve"):
            return self._run()

    def _run(self) -> list:
        cfg = self.config
        recorded = self._recorded_config()
        resume = check_run_dir(self.out, recorded, "evolve")
        # the data (and its checks) before the run folder is written to
        if self.model_fn is None:
            self.loaders = make_loaders(cfg.dataset, cfg.batch_size, cfg.seed, self.data_dir,
                                        cfg.limit_train, cfg.limit_test, cfg.val_fraction,
                                        self.backend, augment=cfg.augment)
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume:
            ckpt.atomic_write_text(self.out / "config.json", json.dumps(
                run_record("evolve", recorded), indent=2))
        self.rows = self._load_rows()
        if self.rows:
            self.log(f"resuming {self.out}: generations 0..{self.rows[-1]['generation']} "
                     "already finished")
        init_path = self.out / "generation0_init.npz"
        if not init_path.exists():
            init.manual_seed(cfg.seed)
            self._save_model(self._new_model(), init_path, -1)
        self._load_model(init_path)  # a checkpoint's checks: model, names, shapes, finite
        self.gen0_state = ckpt.load(init_path)[0]

        if not self.rows:
            if cfg.ancestor_path:
                ancestor = self._load_ancestor(Path(cfg.ancestor_path))
                self._train_and_record(ancestor, 0, 0, self._gen_dir(0), {})
            else:
                ancestor = self._load_model(init_path)
                self._train_and_record(ancestor, 0, cfg.ancestor_epochs, self._gen_dir(0), {})
        ancestor = self._load_model(self._gen_dir(len(self.rows) - 1) / "model.npz")
        while len(self.rows) <= cfg.generations:
            g = len(self.rows)
            if self._should_stop():
                break
            if cfg.pace_margin is not None:
                ancestor = self._paced_generation(ancestor, g)
                if ancestor is None:
                    break
            else:
                ancestor = self._generation(ancestor, g, self._parents(g))
        from minievo.evolution import report

        self.paths = report.render(self.out)  # tables and plots of the finished run
        return self.rows

    def _recorded_config(self) -> dict:
        """The config as written to config.json: single-parent runs leave ``parents`` out, so
        that run folders written before the option existed still resume."""
        values = asdict(self.config)
        if values["parents"] == 1:
            del values["parents"]
        if values["pace_margin"] is None:
            del values["pace_margin"]
        if values["pace_reference"] == 1:
            del values["pace_reference"]
        if not values["pace_per_layer"]:
            del values["pace_per_layer"]
        for key in ("architecture", "data_signature"):  # the CLI's runs name their network
            if values[key] is None:
                del values[key]
        if not values["augment"]:
            del values["augment"]
        return values

    def _parents(self, g: int):
        """The parents of generation g's offspring: None (single parent: the ancestor), or the
        ``parents`` fittest offspring of generation g - 1 on validation, fittest first."""
        cfg = self.config
        if cfg.parents == 1 or g < 2:
            return None
        scored = []
        for k in range(cfg.offspring_per_generation):
            row = self._read_row(self._gen_dir(g - 1, k) / "row.json")
            scored.append((-row["val_accuracy"], k))
        return [self._load_model(self._gen_dir(g - 1, k) / "model.npz")
                for _, k in sorted(scored)[: cfg.parents]]

    def _should_stop(self) -> bool:
        cfg = self.config
        if cfg.stop_margin is None or len(self.rows) < 2:
            return False
        first, last = self.rows[0]["val_accuracy"], self.rows[-1]["val_accuracy"]
        if last < first - cfg.stop_margin:
            self.log(f"stopping rule: validation accuracy {100 * last:.2f}% fell more than "
                     f"{100 * cfg.stop_margin:.2f} points below generation 0's "
                     f"{100 * first:.2f}%")
            return True
        return False

    def _generation(self, ancestor, g: int, parents=None):
        cfg = self.config
        encoder = None
        if parents is not None:
            from minievo.evolution import mating

            ancestor = self._new_model()
            ancestor.load_state_dict(mating.combined_state([p.state_dict() for p in parents]))
            encoder = mating.parent_encoder(parents, granularity=cfg.granularity,
                                            scope=cfg.normalisation_scope,
                                            cluster_quantile=cfg.cluster_quantile)
            agree = mating.agreement([p.state_dict() for p in parents])
        ancestor_state = ancestor.state_dict()
        best = None
        for k in range(cfg.offspring_per_generation):
            kdir = self._gen_dir(g, k if cfg.offspring_per_generation > 1 else None)
            if (kdir / "model.npz").exists() and (kdir / "row.json").exists():
                child = self._load_model(kdir / "model.npz")
                row = self._read_row(kdir / "row.json")
            else:
                child, info = self._synthesise(ancestor, ancestor_state, g, k, encoder)
                if parents is not None:
                    info["parent_agreement"] = agree
                row = self._train_and_record(child, g, cfg.offspring_epochs, kdir, info,
                                             record=False)
            if cfg.offspring_per_generation > 1:
                row["offspring"] = k
                ckpt.atomic_write_text(kdir / "row.json", json.dumps(row))
            fitness = row.get("val_accuracy", row["test_accuracy"])
            if best is None or fitness > best[0]:
                best = (fitness, child, row, kdir)
        _, child, row, kdir = best
        if cfg.offspring_per_generation > 1:
            self._save_model(child, self._gen_dir(g) / "model.npz", g)
        self._record(row)
        return child

    def _paced_generation(self, ancestor, g: int):
        """Generation g under the validation pace (evolution.pace): offspring are tried in
        ``gen_g/try_a`` (K > 1: ``gen_g/try_a/offspring_k``, the fittest on validation judged)
        with a smaller cut after each rejection until one stays within the margin on
        validation. Returns it, or None when the pace ends the lineage. Finished offspring
        are read back, so a resumed run takes the same decisions."""
        from minievo.evolution.pace import ValidationPace, reference

        cfg = self.config
        pace = ValidationPace(1 - cfg.target_retention, cfg.pace_margin)
        last = self.rows[-1]
        if cfg.pace_per_layer:  # {layer: c_l}
            cut = {name: last.get(f"pace_next_cut_{name}", pace.first_cut)
                   for name, _ in prunable_layers(ancestor)}
        else:
            cut = last.get("pace_next_cut", pace.first_cut)
        val0 = reference([r["val_accuracy"] for r in self.rows], cfg.pace_reference)
        state = ancestor.state_dict()
        for attempt in range(64):  # the cut halves each time: min_cut ends it long before
            child, row = self._paced_try(ancestor, state, g, attempt, cut)
            drop = val0 - row["val_accuracy"]
            if pace.accept(drop):
                row["pace_tries"] = attempt + 1
                if cfg.pace_per_layer:
                    row.update({f"pace_next_cut_{name}": c for name, c in
                                pace.layer_cuts_after_acceptance(cut, drop).items()})
                else:
                    row["pace_next_cut"] = pace.after_acceptance(cut, drop)
                self._save_model(child, self._gen_dir(g) / "model.npz", g)
                self._record(row)
                return child
            if cfg.pace_per_layer:
                nxt = pace.layer_cuts_after_rejection(
                    cut, {name: row[f"pace_lost_{name}"] for name in cut})
            else:
                nxt = pace.after_rejection(cut)
            which = "offspring" if cfg.offspring_per_generation == 1 else \
                f"the fittest of {cfg.offspring_per_generation} offspring"
            self.log(f"generation {g}, try {attempt}: validation accuracy "
                     f"{100 * row['val_accuracy']:.2f}% is {100 * drop:.2f} points below "
                     f"the reference {100 * val0:.2f}% (margin {100 * cfg.pace_margin:.2f}); "
                     f"{which} rejected")
            if nxt is None:
                self.log(f"validation pace: no offspring of generation {g} stayed within "
                         f"the margin down to a cut of {100 * row['pace_cut']:.1f}%; the "
                         f"lineage ends at generation {g - 1}")
                return None
            cut = nxt
        raise AssertionError("unreachable: the cut falls below min_cut within 64 halvings")

    def _paced_try(self, ancestor, state, g: int, attempt: int, cut):
        """Try ``attempt`` of generation g at ``cut`` (a float, or {layer: c_l} with
        ``pace_per_layer``): K offspring, each from stream ``attempt * K + k``, trained (or
        read back when finished); returns the fittest on validation and its row (ties: the
        first). K > 1 writes the fittest's row to ``try_a/row.json`` too (one per try)."""
        cfg = self.config
        n = cfg.offspring_per_generation
        tdir = self._gen_dir(g) / f"try_{attempt}"
        best = None
        for k in range(n):
            kdir = tdir if n == 1 else tdir / f"offspring_{k}"
            if (kdir / "model.npz").exists() and (kdir / "row.json").exists():
                child = self._load_model(kdir / "model.npz")
                row = self._read_row(kdir / "row.json")
            else:
                if cfg.pace_per_layer:
                    child, info = self._synthesise(ancestor, state, g, attempt * n + k,
                                                   layer_cuts=cut)
                else:
                    child, info = self._synthesise(ancestor, state, g, attempt * n + k,
                                                   target=1 - cut)
                    info["pace_cut"] = cut
                row = self._train_and_record(child, g, cfg.offspring_epochs, kdir, info,
                                             record=False)
                if n > 1:
                    row["offspring"] = k
                ckpt.atomic_write_text(kdir / "row.json", json.dumps(row))
            if best is None or row["val_accuracy"] > best[1]["val_accuracy"]:
                best = (child, row)
        if n > 1:
            ckpt.atomic_write_text(tdir / "row.json", json.dumps(best[1]))
        return best

    @staticmethod
    def _read_row(path: Path) -> dict:
        from minievo.evolution import records  # noqa: PLC0415

        row = records.load_json(path, 1 << 20, "result row")
        if not isinstance(row, dict) or not isinstance(row.get("test_accuracy"), int | float):
            raise ckpt.CheckpointError(f"{path}: not a readable result row (an object with a "
                                       "test_accuracy)")
        records.validate_rows([{**row, "generation": 0}], path)
        return row

    def _synthesise(self, ancestor, ancestor_state, g: int, k: int, encoder=None,
                    target: float | None = None, layer_cuts: dict | None = None):
        """Sample offspring k of generation g and give it its starting weights.

        ``encoder`` (q -> encodings) replaces the ancestor's own encoding when the offspring
        has several parents; ``ancestor`` is then their combined genotype (see .mating).
        ``target`` overrides the configured target retention (the validation pace);
        ``layer_cuts`` ({layer: c_l}, the per-layer pace) gives each layer its own target
        1 - c_l instead (evolution.pace.layer_encodings)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, g, k, 1])
        q = cfg.synapse_quantile
        target = cfg.target_retention if target is None else target
        options = dict(granularity=cfg.granularity, scope=cfg.normalisation_scope,
                       cluster_quantile=cfg.cluster_quantile)
        if layer_cuts is not None:
            return self._synthesise_per_layer(ancestor, ancestor_state, g, k, rng, layer_cuts)
        if target is not None and cfg.retention_control == "quantile":
            q, _ = QuantileRetention(target).solve(
                prunable_layers(ancestor), cfg.environment(target), encoder=encoder, **options)
        masks, stats = synthesize_offspring(
            ancestor, cfg.environment(target), rng, return_stats=True, synapse_quantile=q,
            encodings=None if encoder is None else encoder(q), **options)
        child = self._offspring(ancestor_state, masks, stats, g, k)
        env = stats.env
        info = {"f_c": float(env.f_c), "f_s": float(env.f_s), "synapse_quantile": float(q),
                "expected_retention": float(stats.expected_fraction),
                "sampled_retention": float(stats.fraction)}
        return child, info

    def _offspring(self, ancestor_state, masks, stats, g: int, k: int):
        """A fresh model with the ancestor's state, the offspring's ``masks`` and its starting
        weights (``offspring_init``); refused when no synapse survived."""
        cfg = self.config

        # load_state_dict keeps the arrays it is given (no copy), and training updates them in
        # place: each offspring gets its own copies, or it would alter the ancestor's state
        # (the next offspring's start) and generation 0's (what 'rewind' goes back to).
        def own(state):
            return {name: a.copy() for name, a in state.items()}

        child = self._new_model()
        child.load_state_dict(own(ancestor_state))
        apply_offspring_init(child, masks, cfg.offspring_init, ancestor_state=own(ancestor_state),
                             generation0_state=own(self.gen0_state),
                             rng=np.random.default_rng([cfg.seed, g, k, 2]))
        if not any(bool((layer.mask != 0).any()) for _, layer in prunable_layers(child)):
            raise UsageError(f"generation {g}: the offspring kept no synapse at all (F_c="
                             f"{stats.env.f_c:g}, F_s={stats.env.f_s:g}); the environment is too "
                             "harsh: raise --f-s / --f-c or --target-retention")
        return child

    def _synthesise_per_layer(self, ancestor, ancestor_state, g: int, k: int, rng,
                              cuts: dict):
        """:meth:`_synthesise` with a target retention per layer, 1 - ``cuts[layer]``.

        The row's ``pace_cut`` is the cut these amount to over the ancestor's live synapses,
        ``pace_cut_<layer>`` each layer's, ``pace_lost_<layer>`` the fraction of the layer's
        ancestor strength (sum |w| M) the offspring's mask dropped (what the per-layer pace's
        rejection rule reads), and ``f_s_<layer>`` or ``synapse_quantile_<layer>`` what the
        retention control solved for the layer."""
        from minievo.backend import to_numpy
        from minievo.evolution.pace import layer_encodings

        cfg = self.config
        layers = list(prunable_layers(ancestor))
        encodings, env, solved = layer_encodings(
            layers, {name: 1 - cuts[name] for name, _ in layers}, cfg.retention_control,
            EnvironmentalFactor(cfg.f_c, cfg.f_s), granularity=cfg.granularity,
            scope=cfg.normalisation_scope, synapse_quantile=cfg.synapse_quantile,
            cluster_quantile=cfg.cluster_quantile)
        masks, stats = synthesize_offspring(ancestor, env, rng, return_stats=True,
                                            encodings=encodings)
        child = self._offspring(ancestor_state, masks, stats, g, k)
        live = {name: encodings[name].live_synapses for name, _ in layers}
        lost = {}
        for (name, _), mask in zip(layers, masks):
            a = to_numpy(encodings[name].synapse_strength)
            total = float(a.sum())
            kept = float((a * (to_numpy(mask) != 0)).sum())
            lost[name] = min(1.0, max(0.0, 1 - kept / total)) if total > 0 else 0.0
        solved_key = "f_s" if cfg.retention_control == "factor" else "synapse_quantile"
        info = {"f_c": float(env.f_c), "f_s": float(env.f_s),
                **{f"{solved_key}_{name}": v for name, v in solved.items()},
                "expected_retention": float(stats.expected_fraction),
                "sampled_retention": float(stats.fraction),
                "pace_cut": sum(cuts[n] * live[n] for n in live) / max(1, sum(live.values())),
                **{f"pace_cut_{name}": float(cuts[name]) for name, _ in layers},
                **{f"pace_lost_{name}": lost[name] for name, _ in layers}}
        return child, info

    def _train_and_record(self, model, g: int, epochs: int, gdir: Path, info: dict,
                          record: bool = True) -> dict:
        cfg = self.config
        train, val, test = self.loaders
        gdir.mkdir(parents=True, exist_ok=True)
        # A fresh optimiser and schedule per generation; shuffling seeded by (seed, g).
        opt, sched = make_optimizer(model, asdict(cfg), total_iterations=max(1, epochs)
                                    * len(train))
        if hasattr(train, "seed"):
            train.seed = cfg.seed * 100_003 + g
        ck = gdir / "train.npz"
        state = None
        if ck.exists():
            alive = ckpt.has_live_path(model, self.input_shape)
            state, _ = training.load_training_checkpoint(ck, model, opt)
            if alive:  # training never changes a mask: a cut path means a damaged file
                ckpt.check_live_path(ck, model, self.input_shape)
            self.log(f"generation {g}: resuming training at epoch {state.epoch + 1}, "
                     f"batch {state.step_in_epoch}")
        if epochs > 0:
            state = training.fit(model, train, opt, epochs, scheduler=sched, val_loader=val,
                                 checkpoint_path=ck, state=state, progress=self.progress,
                                 log=self.log, label=f"gen {g} ")
        seconds = state.train_seconds if state else 0.0
        t0 = time.perf_counter()
        test_r = training.evaluate(model, test, per_image=True)
        row = {"generation": g}
        metrics = model_metrics(model, self.input_shape)
        # Generation 0 is its own reference (efficiency 1, also for a pruned ancestor_path).
        row.update(metrics.as_row(metrics if g == 0 else self._reference()))
        row["parameters"] = stats.parameters_with_biases(model.state_dict())
        row["test_accuracy"] = test_r["accuracy"]
        row["test_images"] = int(test.num_samples)
        if val is not None:
            row["val_accuracy"] = training.evaluate(model, val)["accuracy"]
            row["val_images"] = int(val.num_samples)
        row["train_seconds"] = round(seconds, 2)
        row["eval_seconds"] = round(time.perf_counter() - t0, 2)
        # per-image correctness on the test set, for the paired bootstrap of the report
        stats.save_test_correct(gdir, test_r["correct"])
        row.update(info)
        self._save_model(model, gdir / "model.npz", g)
        if record:
            self._record(row)
        return row

    def _reference(self):
        """Generation 0's metrics (efficiencies are relative to the ancestor)."""
        if not hasattr(self, "_ref") or self._ref is None:
            if (self._gen_dir(0) / "model.npz").exists():
                self._ref = model_metrics(self._load_model(self._gen_dir(0) / "model.npz"),
                                          self.input_shape)
            else:
                return None
        return self._ref

    def _record(self, row: dict) -> None:
        self.rows.append(row)
        self._save_rows()
        from minievo.evolution import report

        report.write_tables(self.out, self.rows)
        self.log(report.format_row(row))


def _check_live(path: Path, model) -> None:
    """A loaded generation must still have a synapse (evolution never records one without)."""
    if not any(bool((layer.mask != 0).any()) for _, layer in prunable_layers(model)):
        raise ckpt.CheckpointError(f"{path}: every mask is all zero (no live synapse left)")


def synapse_fractions(model) -> dict[str, float]:
    """Per-layer density (live / all synapses) of a model."""
    return {name: float((layer.mask != 0).sum()) / layer.mask.size
            for name, layer in prunable_layers(model)}
