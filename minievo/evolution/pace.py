"""A pace of synthesis that answers to validation accuracy (a project extension).

The paper's environment is fixed before the run, and so is the ``paper-mnist`` preset's:
every generation keeps two thirds of its ancestor's synapses in expectation, whatever the
offspring's accuracy does. That pace was tuned on MNIST; on data it was not tuned on, it can
leave the accuracy band many generations before it stops cutting. Here each generation's cut
(the fraction of the ancestor's synapses removed in expectation, ``c = 1 - retention``) is
set by what the validation split says (docs/method.md#pace):

    c <- c_1 = 1 - target_retention                      (generation 1)
    each generation g:
        synthesise an offspring that keeps 1 - c in expectation; train it
        drop = val_accuracy(generation 0) - val_accuracy(offspring)
        if drop > margin:    reject it; c <- c / 2; try again from the same ancestor
                             (the lineage ends when c would fall below ``min_cut``)
        else:                accept it as generation g;
                             if drop <= margin / 2:  c <- min(c_1, 1.5 c)

So the lineage keeps more when validation falls and takes more again while it holds, and
every generation it records is within ``margin`` of generation 0 on validation. The test set
plays no part. The pace only sets the *target* retention of a generation; how the target is
met (the environmental factor or the normalisation quantile) is the lineage's
``retention_control``, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from minievo.experiment import UsageError


def reference(val_accuracies: list[float], generations: int = 1) -> float:
    """The validation accuracy the pace measures each offspring's drop against.

    ``generations = 1`` is generation 0's own validation accuracy, one noisy number: on
    6,000 images its standard error is about 0.13 points, and a generation 0 that was unlucky
    on the validation split makes every later drop look smaller than it is (issue 20: the
    drift from validation to test). ``generations = R`` re-estimates the reference as the
    lineage goes: the mean over the first R accepted generations (0, ..., R - 1), or over
    those that exist so far. The early generations of every committed MNIST sweep sit within
    the noise of generation 0 on the test set (1.5x and 2.3x fewer synapses), so they act as
    further draws of the ancestor's level on the same validation images, and the part of the
    noise that is generation 0's own is averaged over R networks.

    Args:
        val_accuracies: the validation accuracy of generations 0, 1, ... accepted so far
            (at least generation 0), as fractions.
        generations: R, at least 1.

    Returns:
        The mean of the first ``min(R, len(val_accuracies))`` values.
    """
    if generations < 1 or not val_accuracies:
        raise ValueError(f"reference needs generation 0 and R >= 1, got {len(val_accuracies)} "
                         f"generations and R = {generations}")
    first = val_accuracies[:generations]
    return sum(first) / len(first)


@dataclass(frozen=True)
class ValidationPace:
    """The rule above, as three small functions of (cut, drop).

    Attributes:
        first_cut: c_1, the cut of generation 1 and the largest cut ever used, in (0, 1).
        margin: the largest drop in validation accuracy (a fraction: 0.002 = 0.2 points)
            below generation 0 that an accepted offspring may show.
        min_cut: the lineage ends instead of trying a cut below this.
        shrink: c is multiplied by this after a rejection (keep more).
        grow: c is multiplied by this (up to first_cut) after an offspring that lost at
            most half the margin (take more).
    """

    first_cut: float
    margin: float
    min_cut: float = 0.05
    shrink: float = 0.5
    grow: float = 1.5

    def __post_init__(self):
        if not 0 < self.first_cut < 1:
            raise UsageError(f"the first cut (1 - target retention) = {self.first_cut} is "
                             "outside (0, 1): a validation pace needs a target retention "
                             "below 1")
        if not 0 < self.margin < 1:
            raise UsageError(f"pace margin = {self.margin} is outside (0, 1): it is the "
                             "largest drop in validation accuracy (a fraction, 0.002 = 0.2 "
                             "points) an accepted offspring may show")
        if not 0 < self.min_cut <= self.first_cut:
            raise UsageError(f"min_cut = {self.min_cut} must be in (0, first cut]")
        if not 0 < self.shrink < 1 or self.grow < 1:
            raise UsageError("shrink must be in (0, 1) and grow >= 1")

    def accept(self, drop: float) -> bool:
        """Is an offspring whose validation accuracy is ``drop`` below generation 0's kept?"""
        return drop <= self.margin + 1e-12

    def after_rejection(self, cut: float) -> float | None:
        """The cut of the next try from the same ancestor; None ends the lineage."""
        smaller = cut * self.shrink
        return smaller if smaller >= self.min_cut - 1e-12 else None

    def after_acceptance(self, cut: float, drop: float) -> float:
        """The cut of the next generation."""
        if drop <= self.margin / 2:
            return min(self.first_cut, cut * self.grow)
        return cut


__all__ = ["ValidationPace", "reference"]
