"""Evolve your own network on your own data, from Python.

    import minievo
    from minievo import layers as L

    def my_net():                        # a fresh network each call, built from minievo layers
        return MyResNet()                # any forward: a + b residual additions included

    result = minievo.evolve(my_net, train=(x_train, y_train), val=(x_val, y_val),
                            test=(x_test, y_test), out="runs/mine",
                            preset="paper-mnist-paced", generations=10)
    result.rows[-1]["synaptic_efficiency"], result.paths

This runs the same lineage as ``minievo evolve`` (:class:`minievo.evolution.lineage.Lineage`):
presets, checkpoints, resume after an interruption, the validation pace, tables and plots.
Only the network and the data come from you:

* ``model``: a function returning a new, untrained network (called once for generation 0's
  initial weights, after seeding minievo's initialiser with the run's seed, and again to
  rebuild saved generations), or a network whose current weights become generation 0's.
* ``train``, ``val``, ``test``: each a :class:`data_loaders.DataLoader` or a pair of arrays
  ``(x, y)``: x float (N, C, H, W) or (N, F) (uint8 images are scaled to [0, 1]), y integer
  class labels. Every choice is made on ``val``; ``test`` only reports.

The run folder records a sha256 of the network's structure and of the data, so rerunning the
same call resumes, and a call with another network or other data on the same folder is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from minievo.experiment import UsageError
from minievo.layers import Module


@dataclass
class EvolutionResult:
    """What :func:`evolve` returns.

    Attributes:
        rows: one dict per generation (the table's columns: synapses, efficiencies, accuracies).
        out: the run folder.
        paths: the tables and plots written.
    """

    rows: list
    out: Path
    paths: list


def architecture_signature(model: Module) -> str:
    """A sha256 of a network's structure: every module's name, type and constructor settings,
    and every state array's name and shape (not its values)."""
    parts = []
    for name, module in model.named_modules():
        parts.append((name, type(module).__name__, sorted(module.layer_config().items())))
    parts += [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _check_output_layer_last(model: Module, input_shape: tuple) -> None:
    """The encoding protects the clusters of the last prunable layer in the model's attribute
    order, meant as the output layer (its neurons are the classes); a network that defines its
    classifier earlier would have another layer protected instead."""
    from minievo import graph  # noqa: PLC0415
    from minievo.layers import prunable_layers  # noqa: PLC0415

    try:
        structure = graph.walk(model, input_shape)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the network cannot be walked on inputs {tuple(input_shape)}: "
                         f"{exc}") from None
    layers = prunable_layers(model)
    if not layers:
        raise UsageError("the network has no prunable layer (Conv2d or Linear): there are no "
                         "synapses to evolve")
    walked = structure.prunable()
    if walked and walked[-1].layer is not layers[-1][1]:
        raise UsageError(
            f"the network's last prunable layer in forward order is {walked[-1].name}, but "
            f"{layers[-1][0]} is defined after it: define the output layer last in __init__ "
            "(its class neurons are protected from removal)")


def _loader(data, name: str, batch_size: int, shuffle: bool, seed: int, backend_name: str,
            augment: bool):
    import data_loaders as dl  # noqa: PLC0415

    if isinstance(data, dl.DataLoader):
        if augment and name == "train" and data.augment is None:
            raise UsageError("augment=True needs array data, or a train DataLoader made with "
                             "augment=data_loaders.Augment()")
        return data.to(backend_name)
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise UsageError(f"{name} must be a data_loaders.DataLoader or a pair (x, y) of "
                         f"arrays, got {type(data).__name__}")
    x, y = data
    try:
        return dl.DataLoader(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                             backend=backend_name,
                             augment=dl.Augment() if augment and name == "train" else None)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name}: {exc}") from None


def evolve(model, train, test, val=None, *, out, preset: str = "paper-mnist",
           backend: str = "numpy", progress: bool = True, augment: bool = False,
           name: str = "custom", dataset: str = "custom", log=print,
           **settings) -> EvolutionResult:
    """Run (or resume) a lineage of ``model`` on the given data.

    Args:
        model: a function returning a new network (a minievo Module), or a network.
        train, test: the training and test data (DataLoader or (x, y)).
        val: validation data, needed by the validation pace and every other choice made
            during the run (``val_fraction`` is not used here: pass your own split).
        out: the run folder (created; an interrupted run resumes there).
        preset: the starting configuration, a key of ``minievo.evolution.lineage.PRESETS``;
            its model, data set and data limits are replaced by yours.
        backend: 'numpy' or 'cupy'.
        progress: show progress bars.
        augment: random crop (4-pixel padding) and horizontal flip of the training batches
            given as arrays, seeded by the run's seed.
        name, dataset: labels written to the tables.
        log: where progress lines go.
        **settings: any field of :class:`~minievo.evolution.lineage.EvolutionConfig`
            (generations, seed, offspring_epochs, pace_margin, lr, ...), overriding the preset.

    Returns:
        An :class:`EvolutionResult`.

    Raises:
        minievo.experiment.UsageError: for a bad setting, bad data, or a run folder holding
            another run.
    """
    from minievo import backend as B  # noqa: PLC0415
    from minievo import init  # noqa: PLC0415
    from minievo.evolution.lineage import PRESETS, EvolutionConfig, Lineage  # noqa: PLC0415

    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    known = {f.name for f in fields(EvolutionConfig)}
    reserved = {"model", "dataset", "architecture", "data_signature", "limit_train",
                "limit_test", "val_fraction", "ancestor_path", "augment"}
    for key in settings:
        if key not in known or key in reserved:
            allowed = sorted(known - reserved)
            raise UsageError(f"unknown setting {key!r}; the settings are: {', '.join(allowed)}"
                             if key not in known else
                             f"setting {key!r} is not for minievo.evolve: pass your own "
                             "network and data (and val= for a validation split)")
    backend_name = B.check_name(backend)
    if isinstance(model, Module):
        template = copy.deepcopy(model)

        def model_fn():
            return copy.deepcopy(template)
    elif callable(model):
        model_fn = model
    else:
        raise UsageError(f"model must be a minievo Module or a function returning one, got "
                         f"{type(model).__name__}")
    values = {k: v for k, v in PRESETS[preset].items() if k not in reserved}
    values.update(settings)
    seed = values.get("seed", 0)
    batch = values.get("batch_size", EvolutionConfig.batch_size)
    loaders = (
        _loader(train, "train", batch, True, seed, backend_name, augment),
        None if val is None else _loader(val, "val", 1000, False, seed, backend_name, False),
        _loader(test, "test", 1000, False, seed, backend_name, False),
    )
    init.manual_seed(seed)  # the same probe network each call (only its structure is used)
    probe = model_fn()
    if not isinstance(probe, Module):
        raise UsageError(f"the model function returned {type(probe).__name__}, not a minievo "
                         "Module")
    _check_output_layer_last(probe, loaders[0].sample_shape)
    signature = hashlib.sha256(json.dumps(
        [ld.fingerprint() if ld is not None else None for ld in loaders]).encode()).hexdigest()
    # The share of the images given for training and validation that validation holds: what
    # val_fraction means for the CLI's own split (the pace and K offspring need it above 0).
    n_val = 0 if loaders[1] is None else loaders[1].num_samples
    val_fraction = n_val / (n_val + loaders[0].num_samples)
    cfg = EvolutionConfig(**values, model=name, dataset=dataset,
                          architecture=architecture_signature(probe), data_signature=signature,
                          val_fraction=val_fraction)
    lineage = Lineage(cfg, Path(out), backend=backend_name, progress=progress, log=log,
                      model_fn=model_fn, loaders=loaders)
    rows = lineage.run()
    return EvolutionResult(rows=rows, out=Path(out), paths=list(lineage.paths))
