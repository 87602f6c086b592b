"""How sure a lineage's figures are: standard errors, paired bootstrap intervals, the two rules
that pick an operating point, and the parameter count that includes biases.

Accuracies are measured on a finite set of images, so each carries the binomial standard error

    SE(p) = sqrt(p (1 - p) / n)          (n images, accuracy p; n, not n - 1)

and a mean over k lineages measured on n_i images each has SE = sqrt(sum_i SE(p_i)^2) / k.

A *test loss* compares an offspring with its own ancestor on the same test images. Both
networks see every image, so the loss is a paired difference: per image

    d_i = correct_ancestor(i) - correct_offspring(i)  in {-1, 0, +1},   loss = 100 * mean(d)

and its interval comes from the paired bootstrap (images drawn with replacement, the same draw
for the ancestor and the offspring; the 2.5% and 97.5% quantiles of the 2,000 resampled losses).
Resampling the two networks' images independently would ignore that most images are right (or
wrong) for both, and would give far wider intervals.

Two rules pick an operating point from the validation accuracies of a lineage (generation 0 is
the reference; ``margin`` is a fraction of accuracy, 0.003 = 0.3 points):

* ``last_within``: the last generation within the margin of generation 0. A lineage that leaves
  the band and comes back by noise is credited with the later generation.
* ``first_outside_minus_one``: the generation before the first one outside the margin. The
  lineage stops being credited the first time it leaves the band (the conservative rule).

Parameters (with biases) = live synapses + the biases of the live units (filters and neurons
holding a live synapse) of the prunable layers. Batch-norm scales and shifts are not counted.

Per-image correctness on the test set is stored in each generation folder as
``test_correct.npy``: the bits of ``np.packbits`` (10,000 images in 1,250 bytes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BootstrapInterval", "RULES", "binomial_se", "correct_per_image", "derive_parameters",
           "find_test_correct", "first_outside_minus_one", "last_within", "load_test_correct",
           "mean_binomial_se", "paired_bootstrap", "paired_bootstrap_mean",
           "parameters_with_biases", "recompute_predictions", "save_test_correct",
           "bias_layout", "TEST_CORRECT"]

#: File name of the packed per-image correctness on the test set, in a generation folder.
TEST_CORRECT = "test_correct.npy"
RESAMPLES = 2000
#: The selection rules, in words (what the reports print).
RULES = {
    "last_within": "the last generation whose accuracy (on the split it is chosen on) is within "
                   "the budget of generation 0's (a lineage that leaves the band and comes back "
                   "is credited with the later generation)",
    "first_outside_minus_one": "the generation before the first one whose accuracy falls more "
                               "than the budget below generation 0's (conservative: the lineage "
                               "is credited only up to where it first leaves the band)",
}


# ----------------------------------------------------------------------------------------------
# standard errors
# ----------------------------------------------------------------------------------------------
def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{name} must be a whole number of images >= 1, got {n!r}")
    return int(n)


def _check_p(p, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, int | float | np.floating | np.integer) or \
            not 0 <= p <= 1:
        raise ValueError(f"{name} must be an accuracy in [0, 1], got {p!r}")
    return float(p)


def binomial_se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images.

    Args:
        p: the accuracy, a fraction in [0, 1].
        n: the number of images it was measured on (>= 1).

    Returns:
        ``sqrt(p (1 - p) / n)``, a fraction (multiply by 100 for points).

    Raises:
        ValueError: for p outside [0, 1] or n not a whole number >= 1.
    """
    p, n = _check_p(p), _check_n(n)
    return math.sqrt(p * (1 - p) / n)


def mean_binomial_se(ps, ns) -> float:
    """Standard error of the mean of independent accuracies ``ps`` on ``ns`` images each.

    Args:
        ps: k accuracies (fractions).
        ns: k image counts (or one count for all).

    Returns:
        ``sqrt(sum_i p_i (1 - p_i) / n_i) / k``.
    """
    ps = list(ps)
    if not ps:
        raise ValueError("ps must hold at least one accuracy")
    ns = [ns] * len(ps) if isinstance(ns, int | np.integer) else list(ns)
    if len(ns) != len(ps):
        raise ValueError(f"ns must hold one count per accuracy ({len(ps)}), got {len(ns)}")
    return math.sqrt(sum(binomial_se(p, n) ** 2 for p, n in zip(ps, ns))) / len(ps)


# ----------------------------------------------------------------------------------------------
# the paired bootstrap
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BootstrapInterval:
    """A test loss (ancestor accuracy minus offspring accuracy, in points) and its interval.

    Attributes:
        loss: the loss on the test set itself, in accuracy points.
        low, high: the bounds of the interval, in points.
        level: the interval's coverage (0.95).
        resamples: how many bootstrap resamples.
        images: the number of test images n.
    """

    loss: float
    low: float
    high: float
    level: float
    resamples: int
    images: int

    def as_dict(self) -> dict:
        return {"loss_points": self.loss, "low": self.low, "high": self.high,
                "level": self.level, "resamples": self.resamples, "images": self.images}


def _correct_vector(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-image correctness, "
                         f"got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 or booleans (one per test image)")
    return arr.astype(bool)


def _bootstrap_mean(values: np.ndarray, resamples: int, seed: int, level: float) -> np.ndarray:
    """Quantiles of the mean of ``values`` (n,) over ``resamples`` resamples of its entries."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a whole number >= 1, got {resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # index arrays of at most 2 M entries at a time
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start:start + k] = values[idx].mean(axis=1)
    tail = (1 - level) / 2
    return np.quantile(means, [tail, 1 - tail])


def paired_bootstrap(reference, candidate, resamples: int = RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> BootstrapInterval:
    """The test loss of ``candidate`` against ``reference`` with a paired bootstrap interval.

    Args:
        reference: (n,) bool, 1 where the ancestor (generation 0) classifies image i right.
        candidate: (n,) bool, the same for the offspring, on the same images in the same order.
        resamples: bootstrap resamples (2,000).
        seed: seed of the resampling (deterministic for a given seed).
        level: coverage of the percentile interval (0.95).

    Returns:
        A :class:`BootstrapInterval`: loss = 100 * (acc(reference) - acc(candidate)) and the
        quantiles of that loss over resamples of the n images, drawn once for both networks.

    Raises:
        ValueError: for arrays of different lengths, not 1-D, or not 0/1.
    """
    return paired_bootstrap_mean([(reference, candidate)], resamples, seed, level)


def paired_bootstrap_mean(pairs, resamples: int = RESAMPLES, seed: int = 0,
                          level: float = 0.95) -> BootstrapInterval:
    """The mean test loss of several lineages, each against its own ancestor, with an interval.

    The lineages are measured on the same test images (the same n images, in the same order), so
    one draw of image indices serves every lineage: the mean over lineages of each lineage's
    resampled loss is the resampled mean of the per-image mean difference.

    Args:
        pairs: a list of (reference (n,), candidate (n,)) per-image correctness pairs.
        resamples, seed, level: as :func:`paired_bootstrap`.

    Returns:
        A :class:`BootstrapInterval` of the mean loss over the pairs.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs must hold at least one (reference, candidate) pair")
    diffs = []
    for i, (ref, cand) in enumerate(pairs):
        a = _correct_vector(ref, f"reference of pair {i}")
        b = _correct_vector(cand, f"candidate of pair {i}")
        if a.shape != b.shape:
            raise ValueError(f"pair {i}: reference and candidate must cover the same images, "
                             f"got {a.shape[0]} and {b.shape[0]}")
        diffs.append(a.astype(np.int8) - b.astype(np.int8))
    if len({d.shape[0] for d in diffs}) != 1:
        raise ValueError("every pair must be measured on the same test images (same n)")
    per_image = np.mean(diffs, axis=0)  # (n,): mean over lineages of d_i
    low, high = _bootstrap_mean(per_image, resamples, seed, level)
    return BootstrapInterval(loss=float(100 * per_image.mean()), low=float(100 * low),
                             high=float(100 * high), level=float(level), resamples=resamples,
                             images=int(per_image.shape[0]))


# ----------------------------------------------------------------------------------------------
# the two selection rules
# ----------------------------------------------------------------------------------------------
def _accuracies(accuracies, margin) -> list[float]:
    accs = [_check_p(a, "accuracy") for a in accuracies]
    if not accs:
        raise ValueError("accuracies must start with generation 0's")
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
        raise ValueError(f"margin must be a fraction of accuracy in [0, 1), got {margin!r}")
    return accs


def last_within(accuracies, margin: float) -> int | None:
    """The last generation g >= 1 with ``accuracies[g] >= accuracies[0] - margin``.

    Args:
        accuracies: validation accuracies (fractions) of generations 0, 1, 2, ... in order.
        margin: the budget, a fraction of accuracy (0.001 = 0.1 points).

    Returns:
        That generation's index, or None when no generation after 0 is within the margin.
    """
    accs = _accuracies(accuracies, margin)
    inside = [g for g in range(1, len(accs)) if accs[g] >= accs[0] - margin - 1e-12]
    return inside[-1] if inside else None


def first_outside_minus_one(accuracies, margin: float) -> int | None:
    """The generation before the first g >= 1 with ``accuracies[g] < accuracies[0] - margin``.

    Args:
        accuracies: validation accuracies (fractions) of generations 0, 1, 2, ... in order.
        margin: the budget, a fraction of accuracy.

    Returns:
        That generation's index (the last generation when none falls outside), or None when
        generation 1 is already outside (no offspring qualifies: generation 0 itself).
    """
    accs = _accuracies(accuracies, margin)
    for g in range(1, len(accs)):
        if accs[g] < accs[0] - margin - 1e-12:
            return g - 1 if g > 1 else None
    return len(accs) - 1 if len(accs) > 1 else None


# ----------------------------------------------------------------------------------------------
# parameters (with biases)
# ----------------------------------------------------------------------------------------------
def _host(a) -> np.ndarray:
    from minievo.backend import to_numpy

    return to_numpy(a)


def parameters_with_biases(state: dict) -> int:
    """Live synapses plus the biases of live units, from a state dict or a saved model.npz.

    A prunable layer is a prefix ``P`` with ``P.mask`` (O, ...); its live synapses are the
    mask's non-zero entries, its live units the o holding one; ``P.bias`` (O,), when present,
    adds one parameter per live unit. Other arrays (batch norm) are not counted.

    Args:
        state: name -> array (NumPy or CuPy), as ``model.state_dict()`` or ``checkpoint.load``.

    Returns:
        The count of parameters (with biases).
    """
    from minievo.structure import live_units

    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of arrays, got {type(state).__name__}")
    total, layers = 0, 0
    for key, mask in state.items():
        if not key.endswith(".mask"):
            continue
        layers += 1
        m = _host(mask) != 0
        total += int(m.sum())
        bias = state.get(key[: -len("mask")] + "bias")
        if bias is not None:
            if _host(bias).shape != (m.shape[0],):
                raise ValueError(f"{key[:-5]}.bias has shape {_host(bias).shape}, expected "
                                 f"({m.shape[0]},) for its {m.shape[0]} units")
            total += int(live_units(m).sum())
    if layers == 0:
        raise ValueError("state holds no prunable layer (no '<layer>.mask' entry)")
    return total


def bias_layout(model: str, dataset: str) -> dict | None:
    """Which counts of a record hold biases: ``{"filters": bool, "neurons": bool}``.

    Built from the named architecture: filters count when every prunable layer with filter
    clusters has a bias (none: they do not count), neurons the same for neuron clusters. None
    when a kind is mixed (some layers with a bias, some without) or the model is unknown: the
    record's totals cannot then say how many biases are live.
    """
    import data_loaders as dl
    from minievo import models
    from minievo.layers import prunable_layers

    try:
        shape = models.input_shape_for(model, dl.DATASETS[dl.dataset_name(dataset)].shape)
        net = models.build(model, shape)
    except (KeyError, ValueError, TypeError):
        return None
    kinds: dict[str, set] = {"filters": set(), "neurons": set()}
    for _, layer in prunable_layers(net):
        grans = getattr(layer, "granularities", ())
        kind = "filters" if "filter" in grans else "neurons" if "neuron" in grans else None
        if kind is None:
            return None
        kinds[kind].add(getattr(layer, "bias", None) is not None)
    if any(len(v) > 1 for v in kinds.values()):
        return None
    return {k: bool(v) and v == {True} for k, v in kinds.items()}


def derive_parameters(row: dict, layout: dict | None) -> int | None:
    """Parameters (with biases) from a record's counts: synapses + live filters and/or neurons.

    Args:
        row: a generation's record (``synapses``, ``filters``, ``neurons``).
        layout: :func:`bias_layout` of its architecture.

    Returns:
        The count, or None when the layout is unknown or the record lacks a count.
    """
    if layout is None or "synapses" not in row:
        return None
    total = int(row["synapses"])
    for kind in ("filters", "neurons"):
        if layout[kind]:
            if kind not in row:
                return None
            total += int(row[kind])
    return total


# ----------------------------------------------------------------------------------------------
# per-image correctness on the test set
# ----------------------------------------------------------------------------------------------
def correct_per_image(model, loader) -> np.ndarray:
    """Whether ``model`` classifies each image of ``loader`` right (eval mode, no graph).

    Args:
        model: a minievo Module returning (N, classes) logits.
        loader: yields (x, y) batches in a fixed order (a test loader: no shuffling).

    Returns:
        (n,) bool, in the loader's order: argmax of the logits == label.
    """
    from minievo import training

    return training.evaluate(model, loader, per_image=True)["correct"]


def save_test_correct(folder, correct) -> Path:
    """Write ``folder/test_correct.npy``: the packed bits of ``correct`` (n,) bool."""
    from minievo.checkpoint import atomic_write_bytes

    arr = _correct_vector(correct, "correct")
    import io

    buf = io.BytesIO()
    np.save(buf, np.packbits(arr), allow_pickle=False)
    path = Path(folder) / TEST_CORRECT
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_test_correct(path, n: int) -> np.ndarray:
    """Read a ``test_correct.npy`` holding ``n`` images; (n,) bool.

    Raises:
        ValueError: when the file does not hold exactly n images' bits.
    """
    n = _check_n(n)
    packed = np.load(Path(path), allow_pickle=False)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.shape[0] != (n + 7) // 8:
        raise ValueError(f"{path}: expected {(n + 7) // 8} packed bytes for {n} images, got "
                         f"{packed.dtype} {packed.shape}")
    return np.unpackbits(packed, count=n).astype(bool)


def _chosen_folder(lineage_dir: Path, row: dict) -> Path:
    """Where generation ``row`` was trained: gen_XXX, or the try / offspring that was kept."""
    gdir = Path(lineage_dir) / f"gen_{row['generation']:03d}"
    if row.get("pace_tries"):  # K offspring per try: try_a/offspring_k
        folder = gdir / f"try_{row['pace_tries'] - 1}"
        return folder / f"offspring_{row['offspring']}" if "offspring" in row else folder
    if "offspring" in row:
        return gdir / f"offspring_{row['offspring']}"
    return gdir


def find_test_correct(lineage_dir, row: dict, n: int | None = None) -> np.ndarray | None:
    """The stored per-image correctness of a generation, or None when it was not stored.

    Looked for in ``gen_XXX/`` (written there by a recomputation, or by the lineage), then in
    the folder of the try or offspring that became the generation.
    """
    n = n if n is not None else row.get("test_images")
    if n is None:
        return None
    gdir = Path(lineage_dir) / f"gen_{row['generation']:03d}"
    for folder in (gdir, _chosen_folder(lineage_dir, row)):
        if (folder / TEST_CORRECT).is_file():
            return load_test_correct(folder / TEST_CORRECT, n)
    return None


def _lineage_config(lineage_dir: Path) -> dict:
    record = json.loads((lineage_dir / "lineage.json").read_text())
    config = record.get("config") or {}
    if not config and (lineage_dir / "config.json").is_file():
        config = json.loads((lineage_dir / "config.json").read_text()).get("config", {})
    return config


def recompute_predictions(lineage_dir, data_dir=None, log=print) -> dict:
    """Evaluate each saved generation (``gen_XXX/model.npz``) on the test set and store its
    per-image correctness where it is missing (``gen_XXX/test_correct.npy``).

    Needs the data set (read through the lineage's own configuration) and the saved networks;
    generations whose model.npz is absent are skipped. A recomputed accuracy that differs from
    the recorded one is reported in the returned ``mismatch`` list (other BLAS kernels can flip
    a tie); the record itself is never changed.

    Args:
        lineage_dir: a lineage folder (``lineage.json``, ``gen_XXX/``).
        data_dir: where the data set is (None: the default cache).
        log: called with one line per finding.

    Returns:
        ``{"written": [g...], "present": [g...], "no_model": [g...], "mismatch": [(g, recorded,
        recomputed)...]}``.
    """
    from dataclasses import fields

    from minievo.evolution.lineage import EvolutionConfig, Lineage
    from minievo.evolution.report import configured_test_images
    from minievo.experiment import UsageError, make_loaders

    lineage_dir = Path(lineage_dir)
    rows = json.loads((lineage_dir / "lineage.json").read_text())["rows"]
    recorded = _lineage_config(lineage_dir)
    implied = configured_test_images(recorded)  # for records that predate test_images
    result = {"written": [], "present": [], "no_model": [], "mismatch": []}
    todo = []
    for row in rows:
        gdir = lineage_dir / f"gen_{row['generation']:03d}"
        if find_test_correct(lineage_dir, row, row.get("test_images", implied)) is not None:
            result["present"].append(row["generation"])
        elif (gdir / "model.npz").is_file():
            todo.append(row)
        else:
            result["no_model"].append(row["generation"])
    if result["no_model"]:
        log(f"{lineage_dir}: no model.npz for generation(s) "
            f"{', '.join(map(str, result['no_model']))}; their intervals stay unavailable")
    if not todo:
        return result
    names = {f.name for f in fields(EvolutionConfig)}
    config = {k: v for k, v in recorded.items() if k in names}
    if config.get("architecture") is not None:
        log(f"{lineage_dir}: a network given through the Python API cannot be rebuilt here")
        result["no_model"] += [r["generation"] for r in todo]
        return result
    cfg = EvolutionConfig(**config)
    lineage = Lineage(cfg, lineage_dir, progress=False, log=log)
    test = make_loaders(cfg.dataset, cfg.batch_size, cfg.seed, data_dir, cfg.limit_train,
                        cfg.limit_test, cfg.val_fraction)[2]
    for row in todo:
        g = row["generation"]
        gdir = lineage_dir / f"gen_{g:03d}"
        correct = correct_per_image(lineage._load_model(gdir / "model.npz"), test)
        n = row.get("test_images", implied)
        if n is not None and correct.shape[0] != n:
            raise UsageError(f"{gdir}: the test set has {correct.shape[0]} images, the record "
                             f"{n}; is --data-dir the data set this lineage ran on?")
        save_test_correct(gdir, correct)
        result["written"].append(g)
        recomputed = float(correct.mean())
        if abs(recomputed - row["test_accuracy"]) > 0.5 / correct.shape[0]:
            result["mismatch"].append((g, row["test_accuracy"], recomputed))
            log(f"{gdir}: recomputed test accuracy {100 * recomputed:.2f}% differs from the "
                f"recorded {100 * row['test_accuracy']:.2f}%")
    log(f"{lineage_dir}: per-image test predictions written for generation(s) "
        f"{', '.join(map(str, result['written']))}")
    return result
