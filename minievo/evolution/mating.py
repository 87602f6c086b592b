"""Multi-parent synthesis: an offspring whose genetic encoding combines m >= 2 parents.

After Chung, Shafiee, Fieguth and Wong, "The Mating Rituals of Deep Neural Networks"
(arXiv:1709.02043; two parents), and Chung, Shafiee and Wong, "Polyploidism in Deep Neural
Networks" (J. Computational Vision and Imaging Systems, 2017; 1, 2, 3 or 5 parents). The
papers describe the idea (the offspring depends on several parents of the previous generation
rather than one); the exact combination below is this project's reading of it, written out so
that it can be checked and changed:

Parents. Generation g - 1 synthesises a population of K offspring (``offspring_per_generation``);
the m fittest on the *validation* split are the parents of every offspring of generation g,
in order of fitness, i = 1 (fittest) .. m, with mixing weights alpha_i (default equal, 1/m).

Combined encoding, per layer, from each parent's own encoding (a^(i), A^(i), p^(i), P^(i), as
in :mod:`.encoding`, each with its own normalisation):

    synapse probability   p_j = sum_i alpha_i p_j^(i)
    cluster probability   P_c = sum_i alpha_i P_c^(i)
    (strengths, for the statistics: a_j = sum_i alpha_i a_j^(i), A_c = sum_i alpha_i A_c^(i))

so a synapse or cluster that all parents keep strong is inherited as readily as from one
parent, one that only some parents have is inherited less readily, and one that no parent has
is never inherited (p_j = 0). Since every p^(i), P^(i) lies in [0, 1] and the alphas sum to 1,
so do p and P. With m = 1 this is exactly single-parent synthesis.

Combined genotype and starting weights:

    M_j = OR_i M_j^(i)                      (a synapse can only be kept if some parent has it)
    w_j = w_j^(i*)  with i* = the fittest parent with M_j^(i) = 1   (0 where no parent has it)

and every other parameter (biases) comes from the fittest parent. The offspring's mask is then
drawn from the combined encoding exactly as in single-parent synthesis
(:func:`~minievo.evolution.synthesis.sample_layer_mask`), so it stays inside M.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

from minievo.backend import get_array_module
from minievo.evolution.encoding import GeneticEncoding, encode


def mixing_weights(m: int, alphas: Sequence[float] | None = None) -> list[float]:
    """The alphas: equal (1/m) by default; given ones must be positive and are normalised."""
    if m < 1:
        raise ValueError(f"need at least one parent, got {m}")
    if alphas is None:
        return [1.0 / m] * m
    if len(alphas) != m or any(not a > 0 for a in alphas):
        raise ValueError(f"need {m} positive mixing weights, got {list(alphas)!r}")
    total = float(sum(alphas))
    return [float(a) / total for a in alphas]


def combine_encodings(per_parent: Sequence[dict[str, GeneticEncoding]],
                      alphas: Sequence[float] | None = None) -> dict[str, GeneticEncoding]:
    """Combine the parents' encodings layer by layer (equations in the module docstring).

    Args:
        per_parent: one ``{layer name: GeneticEncoding}`` per parent, fittest first, all of
            the same architecture.
        alphas: mixing weights (default equal).

    Raises:
        ValueError: when the parents' layers or shapes differ.
    """
    w = mixing_weights(len(per_parent), alphas)
    names = list(per_parent[0])
    for enc in per_parent[1:]:
        if list(enc) != names:
            raise ValueError("the parents have different layers; they cannot be combined")
    combined = {}
    for name in names:
        layers = [enc[name] for enc in per_parent]
        first = layers[0]
        if any(e.weight_shape != first.weight_shape or e.granularity != first.granularity
               for e in layers):
            raise ValueError(f"layer {name!r}: the parents' shapes or cluster types differ")

        def mix(attr: str, layers=layers):
            total = w[0] * getattr(layers[0], attr)
            for alpha, e in zip(w[1:], layers[1:]):
                total = total + alpha * getattr(e, attr)
            return total

        combined[name] = GeneticEncoding(
            granularity=first.granularity,
            weight_shape=first.weight_shape,
            synapse_strength=mix("synapse_strength"),
            cluster_strength=mix("cluster_strength"),
            z_s=float(sum(a * e.z_s for a, e in zip(w, layers))),
            z_c=float(sum(a * e.z_c for a, e in zip(w, layers))),
            synapse_probability=mix("synapse_probability"),
            cluster_probability=mix("cluster_probability"),
            protect_clusters=first.protect_clusters,
            name=name,
        )
    return combined


def combined_state(parent_states: Sequence[dict]) -> dict:
    """The combined genotype and starting weights of the parents' state dicts (fittest first).

    For each prunable layer (a ``<name>.mask`` entry): M = OR of the parents' masks, and each
    weight from the fittest parent that has the synapse. Everything else from the fittest.
    """
    first = parent_states[0]
    out = {k: v.copy() for k, v in first.items()}
    for key in first:
        if not key.endswith(".mask"):
            continue
        name = key[: -len(".mask")]
        xp = get_array_module(first[key])
        mask = first[key] != 0
        weight = first[name + ".weight"].copy()
        for state in parent_states[1:]:
            theirs = (state[key] != 0) & ~mask  # alive there, not yet taken from a fitter one
            weight = xp.where(theirs, state[name + ".weight"], weight)
            mask = mask | theirs
        out[key] = mask.astype(first[key].dtype)
        out[name + ".weight"] = (weight * out[key]).astype(first[name + ".weight"].dtype)
    return out


def parent_encoder(parents, alphas=None, **encode_options):
    """A function ``q -> combined encodings`` of the parent models (for the retention solver
    and the synthesis): each parent encoded with synapse quantile q, then combined."""
    w = mixing_weights(len(parents), alphas)

    def encoder(synapse_quantile: float = 1.0) -> dict[str, GeneticEncoding]:
        return combine_encodings([encode(p, synapse_quantile=synapse_quantile, **encode_options)
                                  for p in parents], w)

    return encoder


def agreement(parent_states: Sequence[dict]) -> float:
    """Fraction of the combined genotype's synapses that every parent has (a diagnostic)."""
    union = inter = 0
    for key in parent_states[0]:
        if key.endswith(".mask"):
            masks = [s[key] != 0 for s in parent_states]
            union += int(functools.reduce(operator.or_, masks).sum())
            inter += int(functools.reduce(operator.and_, masks).sum())
    return inter / union if union else 1.0
