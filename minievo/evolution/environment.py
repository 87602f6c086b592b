"""The environmental factor: how hard the environment presses each generation to be smaller.

docs/method.md#environmental-factor: with cluster probability P_c and synapse probability p_j
from the genetic encoding, the offspring keeps

    synaptic cluster c            with probability  min(1, F_c * P_c)
    synapse j inside a kept c     with probability  min(1, F_s * p_j)

where the environmental factors F_c, F_s lie in (0, 1]. Two ways to choose them:

* :class:`EnvironmentalFactor` -- the paper's model: two constants for the whole run.
* :class:`TargetRetention` -- a convenience on top of it (decision, not in the papers): choose the
  factor of each generation so that the offspring is expected to keep a given fraction of the
  ancestor's live synapses. The factor it finds is still one :class:`EnvironmentalFactor` shared
  by every layer, exactly as in the paper; only its value is solved for.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from minievo.backend import get_array_module
from minievo.evolution.encoding import GeneticEncoding

#: The smallest ``target_retention`` a lineage accepts (``--target-retention``). Below it the
#: environment model cannot honour the target: the sampled offspring keeps a handful of
#: synapses or none (the draws are independent, so the count varies by about its square root),
#: and under the quantile control even the literal normalisation keeps far more (about 16% of
#: a trained LeNet-5; :class:`QuantileRetention` warns when a target lies below what it can
#: reach).
MIN_TARGET_RETENTION = 0.01


def _check_unit_interval(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < v <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} = {value!r} is outside the valid range (0, 1]")
    return v


@dataclass(frozen=True)
class EnvironmentalFactor:
    """The environmental factor (F_c, F_s), both constants in (0, 1].

    Attributes:
        f_c: F_c, scales the cluster probabilities: keep cluster c with min(1, F_c P_c).
        f_s: F_s, scales the synapse probabilities: keep synapse j with min(1, F_s p_j).

    Raises:
        ValueError: when either factor is outside (0, 1]; the message names the value and the
            range.
    """

    f_c: float
    f_s: float

    def __post_init__(self):
        object.__setattr__(self, "f_c", _check_unit_interval("F_c", self.f_c))
        object.__setattr__(self, "f_s", _check_unit_interval("F_s", self.f_s))

    def cluster_keep_probability(self, cluster_probability, protected: bool = False):
        """Probability that synaptic cluster c survives: min(1, F_c * P_c).

        Args:
            cluster_probability: P, float array of the cluster shape, either backend.
            protected: True for the output layer, whose neurons are never dropped as clusters
                (probability 1 for each of them).
        """
        xp = get_array_module(cluster_probability)
        if protected:
            return xp.ones(cluster_probability.shape, dtype=xp.float64)
        return xp.minimum(1.0, self.f_c * cluster_probability)

    def synapse_keep_probability(self, synapse_probability):
        """Probability that synapse j survives, given its cluster survived: min(1, F_s * p_j)."""
        xp = get_array_module(synapse_probability)
        return xp.minimum(1.0, self.f_s * synapse_probability)


def expected_offspring_synapses(encoding: GeneticEncoding, env: EnvironmentalFactor) -> float:
    """Expected number of synapses of one offspring layer.

    E[sum_j M'_j] = sum_c min(1, F_c P_c) * sum_{j in c} min(1, F_s p_j)

    (the cluster draw and the synapse draws are independent, and p_j = 0 for a synapse that no
    longer exists, so the ancestor's mask needs no separate term). A protected cluster (output
    layer) counts with probability 1.
    """
    # BEGIN SOLUTION task 6.2
    cluster_keep = env.cluster_keep_probability(
        encoding.cluster_probability, protected=encoding.protect_clusters
    )
    synapse_keep = env.synapse_keep_probability(encoding.synapse_probability)
    return float((encoding.to_synapses(cluster_keep) * synapse_keep).sum())
    # END SOLUTION


def _as_list(encodings) -> list[GeneticEncoding]:
    if isinstance(encodings, GeneticEncoding):
        return [encodings]
    if isinstance(encodings, Mapping):
        return list(encodings.values())
    return list(encodings)


def expected_retention(
    encodings: Mapping[str, GeneticEncoding] | Iterable[GeneticEncoding] | GeneticEncoding,
    env: EnvironmentalFactor,
) -> float:
    """Expected fraction of the ancestor's live synapses that the offspring keeps.

    E[retention] = sum_layers E[offspring synapses] / sum_layers (live ancestor synapses)

    Raises:
        ValueError: when the ancestor has no live synapse at all.
    """
    layers = _as_list(encodings)
    live = sum(e.live_synapses for e in layers)
    if live == 0:
        raise ValueError("the ancestor has no live synapse left; nothing can be inherited")
    return sum(expected_offspring_synapses(e, env) for e in layers) / live


@dataclass(frozen=True)
class RetentionSolution:
    """What :meth:`TargetRetention.solve` found.

    Attributes:
        env: the environmental factor to use for this generation.
        expected_fraction: the expected retention it achieves (see :func:`expected_retention`).
        target: the fraction asked for.
        reached: False when even F = 1 keeps less than the target in expectation (then ``env``
            has F = 1 and ``expected_fraction`` is the most the encoding allows).
    """

    env: EnvironmentalFactor
    expected_fraction: float
    target: float
    reached: bool


@dataclass(frozen=True)
class TargetRetention:
    """Choose the environmental factor so the offspring keeps ``fraction`` of the live synapses.

    Decision (the papers use fixed constants; this is an optional alternative):

    * Global: one factor for all layers, as in the paper, solved so that the *total* expected
      number of offspring synapses is ``fraction`` times the ancestor's total live synapses.
      Layers therefore still shrink at different rates, decided by their own P and p.
    * Which factor: by default both are tied, F_c = F_s = F, and F is solved for. When ``f_c``
      is given, F_c stays at that value and only F_s is solved for.
    * How: the expected retention
          R(F) = sum_c min(1, F_c P_c) sum_{j in c} min(1, F_s p_j) / (live synapses)
      is continuous and non-decreasing in F with R(0) = 0, so bisection on F in (0, 1] finds
      R(F) = fraction whenever R(1) >= fraction. If R(1) < fraction the target is out of reach
      of the paper's model; we return F = 1, report ``reached=False`` and warn.

    Attributes:
        fraction: target expected retention, in (0, 1].
        f_c: fixed F_c, or None to tie F_c = F_s.
        tol: stop when |R(F) - fraction| <= tol.
        max_iter: at most this many bisection steps.
    """

    fraction: float
    f_c: float | None = None
    tol: float = 1e-9
    max_iter: int = 100

    def __post_init__(self):
        object.__setattr__(self, "fraction", _check_unit_interval("fraction", self.fraction))
        if self.f_c is not None:
            object.__setattr__(self, "f_c", _check_unit_interval("F_c", self.f_c))

    def factor(self, f: float) -> EnvironmentalFactor:
        """The environmental factor for the scalar being solved for (F, or F_s when F_c fixed)."""
        return EnvironmentalFactor(f if self.f_c is None else self.f_c, f)

    def solve(self, encodings) -> RetentionSolution:
        """Bisect for the factor whose expected retention is ``fraction``.

        Args:
            encodings: the ancestor's encodings ({name: GeneticEncoding} from
                :func:`~minievo.evolution.encoding.encode`, or a list of them).

        Returns:
            A :class:`RetentionSolution`; its ``expected_fraction`` is >= ``fraction`` - tol.
        """
        layers = _as_list(encodings)
        at_one = expected_retention(layers, self.factor(1.0))
        if at_one <= self.fraction:
            reached = at_one >= self.fraction - self.tol
            if not reached:
                warnings.warn(
                    f"target retention {self.fraction} is out of reach: with F = 1 the "
                    f"offspring keeps {at_one:.6f} of the synapses in expectation",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return RetentionSolution(self.factor(1.0), at_one, self.fraction, reached)
        # Invariant: R(lo) < fraction < R(hi). F = 0 itself is not a valid factor, but R(0) = 0.
        lo, hi, r_hi = 0.0, 1.0, at_one
        for _ in range(self.max_iter):
            mid = 0.5 * (lo + hi)
            if mid <= lo or mid >= hi:  # interval down to one float
                break
            r_mid = expected_retention(layers, self.factor(mid))
            if r_mid >= self.fraction:
                hi, r_hi = mid, r_mid
            else:
                lo = mid
            if r_hi - self.fraction <= self.tol:
                break
        # Only a too small max_iter can leave R(F) further than tol above the target.
        reached = r_hi - self.fraction <= max(self.tol, 1e-12)
        return RetentionSolution(self.factor(hi), r_hi, self.fraction, reached)


@dataclass(frozen=True)
class QuantileRetention:
    """Keep ``fraction`` of the synapses in expectation by moving the normalisation, not F.

    A project extension (docs/results/paper-mnist.md): with the literal normalisation (the strongest
    synapse gets p = 1) a trained LeNet-5 keeps only about 16% of its synapses per generation
    even at F = 1, and a factor F < 1 drops strong synapses as readily as weak ones. Here the
    environmental factor stays as configured (default F = 1) and the reference strength that
    gets probability 1 becomes the q-quantile of the live synapse strengths:

        p_j = min(1, exp(a_j / Z_s) - 1),  Z_s = quantile_q(a) / ln 2,

    with q solved by bisection so that the expected retention R(q) equals ``fraction``. R is
    non-increasing in q, and q = 1 is the literal maximum. Synapses stronger than the reference
    are always inherited; weaker ones with probability 2^(a / ref) - 1.

    Attributes:
        fraction: target expected retention, in (0, 1].
        tol: stop when |R(q) - fraction| <= tol or the bracket on q is narrower than 1e-6.
    """

    fraction: float
    tol: float = 1e-4

    def __post_init__(self):
        object.__setattr__(self, "fraction", _check_unit_interval("fraction", self.fraction))

    def solve(self, layers, env: EnvironmentalFactor, encoder=None,
              **encode_options) -> tuple[float, float]:
        """Return ``(q, expected_retention)`` for the ancestor's prunable ``layers``.

        ``encode_options`` go to :func:`~minievo.evolution.encoding.encode` (granularity,
        protect_output, scope, cluster_quantile); ``synapse_quantile`` is what is solved.
        ``encoder``, when given, replaces that encoding: a function ``q -> encodings`` (the
        combined encoding of several parents, :func:`~minievo.evolution.mating.parent_encoder`).
        """
        from minievo.evolution.encoding import encode

        if encoder is None:
            def encoder(q: float):
                return encode(layers, synapse_quantile=q, **encode_options)

        def retention(q: float) -> float:
            return expected_retention(encoder(q), env)

        r_max = retention(1.0)
        if r_max >= self.fraction:  # even the literal normalisation keeps enough
            if r_max > self.fraction + max(self.tol, 0.01 * self.fraction):
                warnings.warn(
                    f"target retention {self.fraction} is out of reach of the quantile "
                    f"control: the literal normalisation (q = 1) already keeps {r_max:.4f} of "
                    "the synapses in expectation, and the offspring keeps that much; lower "
                    "F (--f-s / --f-c) or use --retention-control factor to cut harder",
                    RuntimeWarning, stacklevel=2)
            return 1.0, r_max
        lo, hi = 1e-6, 1.0  # R(lo) is the most any q can keep
        r_lo = retention(lo)
        if r_lo <= self.fraction:
            warnings.warn(
                f"target retention {self.fraction} is out of reach: the cluster draws alone "
                f"keep at most {r_lo:.4f} of the synapses", RuntimeWarning, stacklevel=2)
            return lo, r_lo
        r_mid = r_lo
        while hi - lo > 1e-6:
            mid = 0.5 * (lo + hi)
            r_mid = retention(mid)
            if abs(r_mid - self.fraction) <= self.tol:
                return mid, r_mid
            if r_mid > self.fraction:
                lo = mid
            else:
                hi = mid
        return mid, r_mid
