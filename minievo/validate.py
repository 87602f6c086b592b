"""Checks of every command-line value, as argparse ``type=`` functions and plain checks.

Each refusal names the flag (argparse adds ``argument --flag:``), the value and what is
allowed; :class:`Parser` prints it as one line, ``minievo: error: ...``, with exit status 2
(argparse's default would print the usage block first).
"""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``minievo: error: <message>``."""

    def error(self, message):
        self.exit(2, f"minievo: error: {message}\n")


def _number(text: str, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"got {text!r}, allowed: {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"got {text!r}, allowed: a finite number")
    return value


def int_range(lo: int, hi: int | None = None):
    """type= for an integer in [lo, hi] (hi None: no upper bound)."""
    def check(text: str) -> int:
        value = _number(text, int)
        if value < lo or (hi is not None and value > hi):
            allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"got {text}, allowed: {allowed}")
        return value
    check.__name__ = "integer"
    return check


def float_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """type= for a finite number in the interval from lo to hi (open where asked)."""
    def check(text: str) -> float:
        value = _number(text, float)
        bad = value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi)
        if bad:
            interval = (f"{'(' if lo_open else '['}{lo:g}, "
                        f"{'inf' if math.isinf(hi) else format(hi, 'g')}{')' if hi_open else ']'}")
            raise argparse.ArgumentTypeError(f"got {text}, allowed: a number in {interval}")
        return value
    check.__name__ = "number"
    return check


def one_of(names, what: str):
    """type= for a name from a fixed set."""
    names = tuple(names)

    def check(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}, allowed: "
                                             f"{', '.join(names)}")
        return text
    check.__name__ = what
    return check


def model_name(text: str) -> str:
    from minievo.models import MODELS  # noqa: PLC0415

    return one_of(MODELS, "model")(text)


def dataset_name(text: str) -> str:
    import data_loaders as dl  # noqa: PLC0415

    try:
        dl.dataset_name(text)
    except ValueError:
        one_of(dl.DATASETS, "dataset")(text)
    return text


SEED = int_range(0, 2**32 - 1)
POSITIVE_INT = int_range(1)
NONNEGATIVE_INT = int_range(0)
POSITIVE_FLOAT = float_range(0.0, math.inf, lo_open=True, hi_open=True)
NONNEGATIVE_FLOAT = float_range(0.0, math.inf, hi_open=True)
UNIT_OPEN_CLOSED = float_range(0.0, 1.0, lo_open=True)  # (0, 1]
FRACTION = float_range(0.0, 1.0, hi_open=True)  # [0, 1)

#: type= of the ``minievo train`` flags made from experiment.TRAIN_DEFAULTS
TRAIN_TYPES = {
    "model": model_name, "dataset": dataset_name, "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT, "lr": POSITIVE_FLOAT, "momentum": FRACTION,
    "weight_decay": NONNEGATIVE_FLOAT,
    "lr_policy": one_of(("inv", "step", "fixed", "linear"), "lr policy"),
    "seed": SEED,
}


def check_model_fits_dataset(model: str, dataset: str, flag: str = "--model") -> None:
    """UsageError when the model's input shape is not the data set's sample shape."""
    import data_loaders as dl  # noqa: PLC0415
    from minievo.experiment import UsageError  # noqa: PLC0415
    from minievo.models import ANY_INPUT, INPUT_SHAPES  # noqa: PLC0415

    if model in ANY_INPUT:
        return  # global pooling: any image size, input channels from the data
    want = INPUT_SHAPES.get(model)
    have = dl.DATASETS[dl.dataset_name(dataset)].shape
    if want is not None and tuple(want) != tuple(have):
        raise UsageError(f"{flag} {model} takes inputs of shape {tuple(want)}, but data set "
                         f"{dataset} has samples of shape {tuple(have)}")
