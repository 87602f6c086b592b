"""Evolutionary synthesis: sample the offspring of an ancestor (docs/method.md#sampling).

One generation's synthesis, per prunable layer (Conv2d, Linear), with the genetic encoding
(P_c, p_j) of the ancestor and the environmental factor (F_c, F_s):

    cluster draw     C_c ~ Bernoulli(min(1, F_c P_c))       one per synaptic cluster c
    synapse draw     S_j ~ Bernoulli(min(1, F_s p_j))       one per synapse j
    offspring mask   M'_j = M_j AND C_{c(j)} AND S_j

All draws are independent, so the probability of an offspring H_g given its ancestor H_{g-1} is

    P(H_g | H_{g-1}) = prod_c [ F_c P_c  prod_{j in c} F_s p_j ]

(with each factor read as a keep or drop probability as drawn). The output layer's neurons, the
classes, are never dropped as clusters (C_c = 1); their synapses can be.

Reproducibility: every uniform number is drawn from an explicit NumPy ``np.random.Generator`` in
a fixed order (layer by layer in forward order; in each layer first one uniform per cluster, then
one per synapse, all of them whatever their probabilities) and only then moved to the weight's
backend. So a CPU lineage and a GPU lineage started from the same seed draw the same numbers and
get the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minievo import init
from minievo.backend import backend_of, get_array_module, to_backend, using_backend
from minievo.evolution.encoding import (
    GeneticEncoding,
    encode,
    layer_arrays,
    named_prunable_layers,
)
from minievo.evolution.environment import (
    EnvironmentalFactor,
    TargetRetention,
    expected_offspring_synapses,
)

OFFSPRING_INITS = ("inherit", "reinit", "rewind")


def _check_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(
        "rng must be a seeded numpy.random.Generator (e.g. np.random.default_rng(0)) or an int "
        f"seed, got {type(rng).__name__}; synthesis never draws from an implicit global state"
    )


def _uniform(rng: np.random.Generator, shape, like):
    """Uniform numbers in [0, 1) drawn on the CPU with ``rng``, moved to the backend of ``like``."""
    u = rng.random(shape)  # float64, NumPy
    return to_backend(u, backend_of(like))


def draw_clusters(encoding: GeneticEncoding, env: EnvironmentalFactor, rng) -> object:
    """Cluster draw C_c ~ Bernoulli(min(1, F_c P_c)) for every synaptic cluster of one layer.

    A cluster of a protected layer (the output layer) is always kept.

    Args:
        encoding: the layer's genetic encoding.
        env: the environmental factor.
        rng: a seeded ``np.random.Generator``; draws ``prod(cluster_shape)`` uniforms.

    Returns:
        Boolean array of the cluster shape on the encoding's backend; True = cluster kept.
    """
    rng = _check_rng(rng)
    keep_probability = env.cluster_keep_probability(
        encoding.cluster_probability, protected=encoding.protect_clusters
    )
    u = _uniform(rng, encoding.cluster_shape, keep_probability)
    return u < keep_probability  # u in [0, 1): probability 1 always keeps, 0 never does


def draw_synapses(encoding: GeneticEncoding, env: EnvironmentalFactor, rng) -> object:
    """Synapse draw S_j ~ Bernoulli(min(1, F_s p_j)) for every synapse of one layer.

    Args:
        encoding: the layer's genetic encoding.
        env: the environmental factor.
        rng: a seeded ``np.random.Generator``; draws ``prod(weight_shape)`` uniforms.

    Returns:
        Boolean array of the weight's shape on the encoding's backend; True = synapse kept
        (provided its cluster is kept).
    """
    rng = _check_rng(rng)
    keep_probability = env.synapse_keep_probability(encoding.synapse_probability)
    u = _uniform(rng, encoding.weight_shape, keep_probability)
    return u < keep_probability


def sample_layer_mask(
    encoding: GeneticEncoding,
    env: EnvironmentalFactor,
    rng,
    ancestor_mask=None,
    dtype=None,
    return_clusters: bool = False,
):
    """Sample one offspring layer's mask: M' = M AND cluster-draw AND synapse-draw.

    M'_j = M_j * C_{c(j)} * S_j,
    C_c ~ Bernoulli(min(1, F_c P_c)),   S_j ~ Bernoulli(min(1, F_s p_j))

    Draw order: the cluster uniforms, then the synapse uniforms (see :func:`draw_clusters`,
    :func:`draw_synapses`).

    Args:
        encoding: the layer's genetic encoding (from the ancestor's weights and mask).
        env: the environmental factor.
        rng: a seeded ``np.random.Generator``.
        ancestor_mask: the ancestor's mask M, or None for a dense ancestor. (p_j = 0 wherever
            M_j = 0, so the AND with M changes nothing; it is written out to match the paper.)
        dtype: dtype of the returned mask; the ancestor mask's dtype, else float32.
        return_clusters: also return the cluster draw C.

    Returns:
        The offspring mask (0/1, ``weight_shape``, encoding's backend), and with
        ``return_clusters`` the boolean cluster draw as well.
    """
    # BEGIN SOLUTION task 6.1
    kept_clusters = draw_clusters(encoding, env, rng)
    kept_synapses = draw_synapses(encoding, env, rng)
    xp = get_array_module(kept_synapses)
    keep = encoding.to_synapses(kept_clusters) & kept_synapses
    if ancestor_mask is not None:
        keep = keep & (ancestor_mask != 0)
    if dtype is None:
        dtype = ancestor_mask.dtype if ancestor_mask is not None else xp.float32
    mask = keep.astype(dtype)
    if return_clusters:
        return mask, kept_clusters
    return mask
    # END SOLUTION


@dataclass
class LayerOffspringStats:
    """What one layer's synthesis did.

    Attributes:
        name: layer name.
        granularity: its cluster type.
        synapses_before: live synapses of the ancestor (nonzero strength).
        synapses_after: synapses of the offspring.
        expected_synapses: E[synapses_after] under the model.
        clusters_before: ancestor clusters with nonzero strength.
        clusters_after: offspring clusters with at least one synapse.
        clusters_kept: the cluster draw C (boolean, cluster shape, layer's backend).
    """

    name: str
    granularity: str
    synapses_before: int
    synapses_after: int
    expected_synapses: float
    clusters_before: int
    clusters_after: int
    clusters_kept: object = field(repr=False)


@dataclass
class OffspringStats:
    """What :func:`synthesize_offspring` did: the factor used and one entry per layer."""

    env: EnvironmentalFactor
    expected_fraction: float
    layers: list[LayerOffspringStats]

    @property
    def synapses_before(self) -> int:
        return sum(s.synapses_before for s in self.layers)

    @property
    def synapses_after(self) -> int:
        return sum(s.synapses_after for s in self.layers)

    @property
    def fraction(self) -> float:
        """Sampled retention: offspring synapses / ancestor live synapses."""
        before = self.synapses_before
        return self.synapses_after / before if before else 0.0


def synthesize_offspring(
    model_or_layers,
    env: EnvironmentalFactor | TargetRetention,
    rng,
    granularity: str = "kernel",
    protect_output: bool = True,
    return_stats: bool = False,
    encodings: dict | None = None,
    **encoding_options,
):
    """Sample the masks of one offspring of the ancestor (one generation's synthesis).

    For every prunable layer in forward order: encode (a = |W| M, A_c = sum_c a, p, P), then
    M' = M AND Bernoulli(min(1, F_c P_c)) AND Bernoulli(min(1, F_s p_j)).

    Args:
        model_or_layers: the ancestor (a model), or a list of its prunable layers or of
            (name, layer) pairs in forward order. Not modified.
        env: an :class:`EnvironmentalFactor`, or a :class:`TargetRetention` whose factor is
            solved on this ancestor's encoding first.
        rng: a seeded ``np.random.Generator`` (or an int seed).
        granularity: conv cluster type, "kernel" (default) or "filter"; Linear layers always
            use "neuron".
        protect_output: never drop the last prunable layer's neurons (the classes) as clusters.
        return_stats: also return an :class:`OffspringStats`.
        encodings: the encodings to sample from, when they are not the ancestor's own (the
            combined encoding of several parents, :mod:`.mating`); ``model_or_layers`` then
            gives the genotype (masks) and dtypes, and ``encoding_options`` are unused.
        **encoding_options: normalisation options of :func:`minievo.evolution.encoding.encode`
            (synapse_quantile, cluster_quantile, scope); the defaults are the literal model's.

    Returns:
        The list of offspring masks, one per prunable layer in forward order (0/1 arrays with
        each weight's shape, dtype and backend); with ``return_stats``, ``(masks, stats)``.
    """
    rng = _check_rng(rng)
    layers = named_prunable_layers(model_or_layers)
    if encodings is None:
        encodings = encode(layers, granularity=granularity, protect_output=protect_output,
                           **encoding_options)
    if isinstance(env, TargetRetention):
        solution = env.solve(encodings)
        env, expected_fraction = solution.env, solution.expected_fraction
    elif isinstance(env, EnvironmentalFactor):
        expected_fraction = None
    else:
        raise TypeError(
            f"env must be an EnvironmentalFactor or a TargetRetention, got {type(env).__name__}"
        )

    masks, layer_stats = [], []
    for name, layer in layers:
        weight, mask = layer_arrays(layer)
        encoding = encodings[name]
        new_mask, kept_clusters = sample_layer_mask(
            encoding, env, rng, ancestor_mask=mask, dtype=weight.dtype, return_clusters=True
        )
        masks.append(new_mask)
        if return_stats:
            axes = tuple(range(len(encoding.cluster_shape), weight.ndim))
            layer_stats.append(
                LayerOffspringStats(
                    name=name,
                    granularity=encoding.granularity,
                    synapses_before=encoding.live_synapses,
                    synapses_after=int((new_mask != 0).sum()),
                    expected_synapses=expected_offspring_synapses(encoding, env),
                    clusters_before=int((encoding.cluster_strength > 0).sum()),
                    clusters_after=int((new_mask != 0).any(axis=axes).sum()),
                    clusters_kept=kept_clusters,
                )
            )
    if not return_stats:
        return masks
    if expected_fraction is None:
        live = sum(s.synapses_before for s in layer_stats)
        expected = sum(s.expected_synapses for s in layer_stats)
        expected_fraction = expected / live if live else 0.0
    return masks, OffspringStats(env, expected_fraction, layer_stats)


def _reinit_weight(layer, rng: np.random.Generator):
    """A fresh weight for ``layer`` from its default initialiser, on the weight's backend.

    The layers' constructors use Caffe's "xavier" filler, U(-a, a) with a = sqrt(3 / fan_in) and
    fan_in = prod(weight.shape[1:]) (in_features, or in_channels * kh * kw); biases start at 0.
    """
    weight = layer.weight.data
    fan_in = int(np.prod(weight.shape[1:]))
    with using_backend(backend_of(weight)):
        fresh = init.xavier_uniform(tuple(weight.shape), fan_in, rng)
    return fresh.astype(weight.dtype, copy=False)


def apply_offspring_init(
    model,
    masks,
    mode: str = "inherit",
    ancestor_state: dict | None = None,
    generation0_state: dict | None = None,
    rng=None,
):
    """Give the offspring its starting weights and install its masks.

    See docs/method.md#offspring-init.

    ``offspring_init`` modes (decision; option of the run):

    * ``"inherit"`` (default): surviving synapses start from the ancestor's trained values,
      w'_j = w_j M'_j. The ancestor's values come from ``ancestor_state`` (a ``state_dict()``),
      or, when it is None, from the weights ``model`` already holds.
    * ``"reinit"``: fresh random values from the layers' default initialiser drawn with ``rng``
      (layer by layer in forward order), w'_j = w~_j M'_j, biases reset to 0 -- "trained like
      a newborn". Non-prunable parameters are left as they are.
    * ``"rewind"``: the values the ancestor line had at generation 0 before training,
      w'_j = w(0)_j M'_j, from ``generation0_state`` (a ``state_dict()`` taken before the
      first training). Biases are rewound too.

    Masked weights are exactly zero afterwards (``layer.set_mask`` multiplies by M').

    Args:
        model: the offspring's model (same architecture as the ancestor); modified in place.
        masks: the offspring masks, a list in forward order of the prunable layers (as returned
            by :func:`synthesize_offspring`) or a dict {layer name: mask}.
        mode: "inherit", "reinit" or "rewind".
        ancestor_state: the ancestor's ``state_dict()`` (mode "inherit", optional).
        generation0_state: generation 0's ``state_dict()`` before training (mode "rewind").
        rng: a seeded ``np.random.Generator`` or int seed (mode "reinit").

    Returns:
        ``model``.

    Raises:
        ValueError: for an unknown mode (the message lists the valid ones), a missing state for
            the mode, or a wrong number of masks.
    """
    if mode not in OFFSPRING_INITS:
        raise ValueError(
            f"unknown offspring_init {mode!r}; valid modes are: {', '.join(OFFSPRING_INITS)}"
        )
    layers = named_prunable_layers(model)
    if isinstance(masks, dict):
        missing = [name for name, _ in layers if name not in masks]
        if missing:
            raise ValueError(f"no offspring mask for prunable layer(s) {missing}")
        masks = [masks[name] for name, _ in layers]
    if len(masks) != len(layers):
        raise ValueError(
            f"got {len(masks)} offspring masks for {len(layers)} prunable layers"
        )

    if mode == "inherit":
        if ancestor_state is not None:
            model.load_state_dict(ancestor_state)
    elif mode == "rewind":
        if generation0_state is None:
            raise ValueError("offspring_init 'rewind' needs generation0_state (a state_dict)")
        model.load_state_dict(generation0_state)
    else:  # reinit
        if rng is None:
            raise ValueError("offspring_init 'reinit' needs a seeded rng")
        rng = _check_rng(rng)
        for _, layer in layers:
            layer.weight.data = _reinit_weight(layer, rng)
            if getattr(layer, "bias", None) is not None:
                xp = get_array_module(layer.bias.data)
                layer.bias.data = xp.zeros_like(layer.bias.data)

    for (_, layer), mask in zip(layers, masks):
        layer.set_mask(mask)  # stores M' and sets w'_j = w_j * M'_j
    return model
