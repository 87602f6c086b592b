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

**K offspring per try** (``offspring_per_generation`` K > 1, issue 20). Each try synthesises
K offspring at the same cut, each from its own random stream ``[seed, g, a K + k, 1]`` (try a,
offspring k; K = 1 is the stream of try a above, and try 0 of K offspring is exactly the fixed
pace's K offspring), trains them and keeps the fittest on validation; the rule above then
judges that one offspring. A rejection discards all K and the next try draws K afresh at the
smaller cut.

**A cut per layer** (``pace_per_layer``, issue 20). With one network-wide target the
normalisation decides which layer gives up the synapses, and on ``paper-mnist`` the strong
classifier (5,000 weights) keeps about a third of what is left by generation 13 while the
convolutions are cut first. Here every prunable layer l has its own cut c_l, all starting at
c_1, and a try keeps 1 - c_l of layer l's live synapses in expectation (:func:`layer_encodings`
solves the retention control layer by layer). The decisions, with ``drop`` as above:

    accepted, drop <= margin / 2:  c_l <- min(c_1, 1.5 c_l)        for every layer
    rejected:  s_l = lost_l / c_l for every layer whose cut can still be halved, where
               lost_l is the fraction of layer l's ancestor strength sum |w| M that the
               offspring's mask dropped; halve c_l of the layer(s) with the largest s_l
               (the lineage ends when no cut can be halved)

``s_l`` is the share of its strength a layer gives up per unit of cut: near 0 when the cut
only takes weights near zero (a large, weak layer with synapses to spare), 1 when every
synapse is as strong as the rest (every synapse cut is a real loss). The layer whose cut bit
hardest into its strength is the one spared first: one rejection halves one layer's cut, so
the other layers keep their pace. With K offspring the fittest one's ``lost_l`` decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from minievo.evolution.environment import EnvironmentalFactor
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

    def layer_cuts_after_acceptance(self, cuts: dict[str, float],
                                    drop: float) -> dict[str, float]:
        """Every layer's cut of the next generation (``pace_per_layer``): each grows as
        :meth:`after_acceptance` grows the one cut.

        Args:
            cuts: {layer name: c_l} of the accepted offspring.
            drop: its validation drop below the reference (a fraction).

        Returns:
            {layer name: next c_l}, in the order of ``cuts``.
        """
        return {name: self.after_acceptance(c, drop) for name, c in cuts.items()}

    def layer_cuts_after_rejection(self, cuts: dict[str, float],
                                   lost: dict[str, float]) -> dict[str, float] | None:
        """The per-layer cuts of the next try after a rejection (``pace_per_layer``).

        Among the layers whose cut can still be halved (:meth:`after_rejection` is not None),
        the cut of the layer with the largest ``lost_l / c_l`` is halved (of every layer tied
        with it, to 1e-12); the other cuts stay.

        Args:
            cuts: {layer name: c_l} of the rejected offspring, each in (0, 1).
            lost: {layer name: fraction of the layer's ancestor strength, sum |w| M, that the
                rejected offspring's mask dropped}, each in [0, 1].

        Returns:
            {layer name: c_l of the next try}, in the order of ``cuts``; None when no cut can
            be halved (the lineage ends).

        Raises:
            ValueError: when ``lost`` misses a layer of ``cuts``.
        """
        missing = [name for name in cuts if name not in lost]
        if missing:
            raise ValueError(f"layer_cuts_after_rejection: no strength lost given for "
                             f"layer(s) {missing}")
        halvable = [name for name, c in cuts.items() if self.after_rejection(c) is not None]
        if not halvable:
            return None
        share = {name: lost[name] / cuts[name] for name in halvable}
        worst = max(share.values())
        return {name: (self.after_rejection(c) if name in share and share[name] >= worst - 1e-12
                       else c) for name, c in cuts.items()}


def layer_encodings(layers, targets: dict[str, float], control: str,
                    env: EnvironmentalFactor, *, granularity: str = "kernel",
                    scope: str = "layer", synapse_quantile: float = 1.0,
                    cluster_quantile: float = 1.0):
    """Encodings under which each layer keeps its own target fraction in expectation.

    The lineage's ``retention_control`` meets one network-wide target; with a cut per layer
    it is solved once per layer instead, each layer alone, and the draws of
    :func:`~minievo.evolution.synthesis.synthesize_offspring` are unchanged:

    * ``"factor"``: the configured encoding (``scope``, ``synapse_quantile``) as it is; for
      each layer the F_s whose expected retention of that layer is its target
      (:class:`~minievo.evolution.environment.TargetRetention` on its encoding alone, F_c
      fixed at ``env.f_c``). That F_s,l is folded into the layer's synapse probabilities,
      p'_j = F_s,l p_j (equal to min(1, F_s,l p_j), as both are at most 1), and the returned
      factor has F_s = 1, so one factor still serves every layer.
    * ``"quantile"``: each layer's synapse reference is the q_l-quantile of its own live
      strengths, q_l solved by :class:`~minievo.evolution.environment.QuantileRetention`
      for that layer alone under ``env``. The normalisation scope then no longer matters
      for synapses (each layer's reference is solved, not shared); clusters keep their
      per-layer Z_c at ``cluster_quantile`` as in :func:`~minievo.evolution.encoding.encode`.

    A layer with no live synapse keeps its (all-zero) encoding.

    Args:
        layers: the ancestor's prunable layers as (name, layer) pairs in forward order (the
            last is the output layer, whose clusters are protected).
        targets: {layer name: target expected retention in (0, 1]} for every layer.
        control: ``"factor"`` or ``"quantile"``.
        env: the configured environmental factor (F_c, F_s).
        granularity: the conv cluster granularity.
        scope: the configured normalisation scope (``"factor"`` only).
        synapse_quantile: the configured synapse quantile (``"factor"`` only).
        cluster_quantile: the configured cluster quantile.

    Returns:
        ``(encodings, env, solved)``: {name: GeneticEncoding} in forward order, the factor
        to sample with, and {name: F_s,l or q_l}.

    Raises:
        ValueError: for an unknown control or a layer without a target.
    """
    import dataclasses  # noqa: PLC0415

    from minievo.evolution.encoding import encode  # noqa: PLC0415
    from minievo.evolution.environment import (  # noqa: PLC0415
        QuantileRetention,
        TargetRetention,
    )

    layers = list(layers)
    if control not in ("factor", "quantile"):
        raise ValueError(f"unknown retention control {control!r}; choose factor or quantile")
    missing = [name for name, _ in layers if name not in targets]
    if missing:
        raise ValueError(f"layer_encodings: no target retention for layer(s) {missing}")
    encodings, solved = {}, {}
    if control == "factor":
        whole = encode(layers, granularity=granularity, scope=scope,
                       synapse_quantile=synapse_quantile, cluster_quantile=cluster_quantile)
        for name, _ in layers:
            enc = whole[name]
            f = 1.0
            if enc.live_synapses:
                f = TargetRetention(targets[name], f_c=env.f_c).solve([enc]).env.f_s
            encodings[name] = dataclasses.replace(
                enc, synapse_probability=enc.synapse_probability * f)
            solved[name] = float(f)
        return encodings, EnvironmentalFactor(env.f_c, 1.0), solved
    for i, (name, layer) in enumerate(layers):
        one = [(name, layer)]
        options = dict(granularity=granularity, protect_output=i == len(layers) - 1,
                       scope="layer", cluster_quantile=cluster_quantile)
        q = 1.0
        if encode(one, **options)[name].live_synapses:
            q, _ = QuantileRetention(targets[name]).solve(one, env, **options)
        encodings[name] = encode(one, synapse_quantile=q, **options)[name]
        solved[name] = float(q)
    return encodings, env, solved


__all__ = ["ValidationPace", "layer_encodings", "reference"]
