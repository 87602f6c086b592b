"""The synaptic cluster-driven genetic encoding (docs/method.md#encoding).

The trained ancestor is the "DNA" of its offspring. For one layer with ancestor weights ``W`` and
mask ``M`` (the genotype: 1 = the synapse exists) the encoding is, in the paper's words:

    synapse strength       a_j = |w_j| * M_j
    cluster strength       A_c = sum_{j in c} a_j
    normalisation          Z_s = max_j a_j / ln 2          Z_c = max_c A_c / ln 2
    synapse probability    p_j = exp(a_j / Z_s) - 1         in [0, 1]
    cluster probability    P_c = exp(A_c / Z_c) - 1         in [0, 1]

so the strongest synapse and the strongest synaptic cluster of every layer get probability
exactly 1, and a synapse that no longer exists (w = 0 or M = 0) gets probability exactly 0.

Synaptic clusters (the ``granularity``):

    "kernel"  Conv2d weight (O, I, kh, kw): cluster (o, i) = the kh*kw synapses joining input map
              i to output map o.  Cluster array shape (O, I).
    "filter"  Conv2d weight (O, I, kh, kw): cluster o = the I*kh*kw synapses of output map o.
              Cluster array shape (O,).
    "neuron"  Linear weight (out, in): cluster o = the ``in`` incoming synapses of neuron o.
              Cluster array shape (out,).

At the model level (:func:`encode`) a Conv2d layer uses the chosen conv granularity ("kernel", the
default, or "filter") and a Linear layer always uses "neuron".

All functions take arrays of either backend (NumPy or CuPy) and return arrays of the same backend.
Strengths and probabilities are computed in float64 whatever the weight's dtype, so that the
comparison with the float64 uniform draws of :mod:`minievo.evolution.synthesis` loses nothing to
float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minievo.backend import get_array_module

GRANULARITIES = ("kernel", "filter", "neuron")
CONV_GRANULARITIES = ("kernel", "filter")

# The axes summed over to go from synapses to clusters, for each granularity.
_CLUSTER_AXES = {
    "kernel": (2, 3),  # (O, I, kh, kw) -> (O, I)
    "filter": (1, 2, 3),  # (O, I, kh, kw) -> (O,)
    "neuron": (1,),  # (out, in) -> (out,)
}


def check_granularity(granularity: str, ndim: int) -> str:
    """Check that ``granularity`` names a cluster type that fits a weight of ``ndim`` dimensions.

    Args:
        granularity: "kernel" or "filter" for a Conv2d weight (4-D), "neuron" for a Linear
            weight (2-D).
        ndim: number of dimensions of the weight.

    Returns:
        The granularity, unchanged.

    Raises:
        ValueError: for an unknown granularity (the message lists the valid ones), a weight that
            is neither 2-D nor 4-D, or a granularity that does not fit the weight.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"unknown granularity {granularity!r}; valid granularities are: "
            f"{', '.join(GRANULARITIES)}"
        )
    if ndim == 4:
        if granularity not in CONV_GRANULARITIES:
            raise ValueError(
                f"granularity {granularity!r} does not fit a Conv2d weight (O, I, kh, kw); "
                f"use one of: {', '.join(CONV_GRANULARITIES)}"
            )
    elif ndim == 2:
        if granularity != "neuron":
            raise ValueError(
                f"granularity {granularity!r} does not fit a Linear weight (out, in); "
                "a Linear layer's clusters are its neurons: use 'neuron'"
            )
    else:
        raise ValueError(
            f"expected a Conv2d weight (O, I, kh, kw) or a Linear weight (out, in), "
            f"got a {ndim}-D weight"
        )
    return granularity


def layer_granularity(ndim: int, conv_granularity: str = "kernel") -> str:
    """The granularity a layer uses at the model level: the conv one for Conv2d, else "neuron".

    Args:
        ndim: number of dimensions of the layer's weight (4 for Conv2d, 2 for Linear).
        conv_granularity: "kernel" or "filter".

    Raises:
        ValueError: when ``conv_granularity`` is not "kernel" or "filter".
    """
    if conv_granularity not in CONV_GRANULARITIES:
        raise ValueError(
            f"unknown conv granularity {conv_granularity!r}; valid granularities are: "
            f"{', '.join(CONV_GRANULARITIES)} (Linear layers always use 'neuron')"
        )
    granularity = conv_granularity if ndim == 4 else "neuron"
    return check_granularity(granularity, ndim)


def cluster_shape(weight_shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """Shape of the cluster array: (O, I) for "kernel", (O,) for "filter" and "neuron"."""
    check_granularity(granularity, len(weight_shape))
    n_cluster_dims = len(weight_shape) - len(_CLUSTER_AXES[granularity])
    return tuple(weight_shape[:n_cluster_dims])


def to_synapses(cluster_values, weight_shape: tuple[int, ...], granularity: str):
    """Give every synapse the value of its synaptic cluster.

    Args:
        cluster_values: array of shape ``cluster_shape(weight_shape, granularity)``.
        weight_shape: the layer's weight shape.
        granularity: cluster type.

    Returns:
        Array of shape ``weight_shape`` with ``out[j] = cluster_values[c(j)]``.
    """
    xp = get_array_module(cluster_values)
    shape = cluster_shape(weight_shape, granularity)
    if tuple(cluster_values.shape) != shape:
        raise ValueError(
            f"cluster values have shape {tuple(cluster_values.shape)}, expected {shape} for a "
            f"weight {tuple(weight_shape)} at {granularity!r} granularity"
        )
    # Append one length-1 axis per summed axis, then broadcast: (O, I) -> (O, I, 1, 1) -> W.shape
    n_synapse_axes = len(weight_shape) - len(shape)
    expanded = cluster_values.reshape(shape + (1,) * n_synapse_axes)
    return xp.broadcast_to(expanded, tuple(weight_shape))


def cluster_ids(weight_shape: tuple[int, ...], granularity: str, xp=None):
    """The flat index of each synapse's cluster, as an integer array of ``weight_shape``.

    For "kernel" on (O, I, kh, kw) synapse (o, i, y, x) belongs to cluster ``o * I + i``; for
    "filter" and "neuron" synapse (o, ...) belongs to cluster ``o``. Handy for reading and for
    tests: ``cluster_strength(...).ravel()[cluster_ids(...)]`` gives each synapse its A_c.

    Args:
        weight_shape: the layer's weight shape.
        granularity: cluster type.
        xp: array module (numpy or cupy) to build the array with; NumPy by default.
    """
    xp = np if xp is None else xp
    shape = cluster_shape(weight_shape, granularity)
    n_clusters = 1
    for n in shape:
        n_clusters *= n
    ids = xp.arange(n_clusters, dtype=xp.int64).reshape(shape)
    return xp.ascontiguousarray(to_synapses(ids, weight_shape, granularity))


def _mask_or_ones(weight, mask):
    xp = get_array_module(weight, mask)
    if mask is None:
        return xp.ones(weight.shape, dtype=bool)
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the weight has shape {tuple(weight.shape)}"
        )
    return mask != 0


def synapse_strength(weight, mask=None):
    """Synapse strength a_j = |w_j| * M_j.

    Args:
        weight: ancestor weights W, shape (O, I, kh, kw) or (out, in), either backend.
        mask: genotype M of the same shape (0/1, any dtype), or None for a dense layer.

    Returns:
        float64 array a of the weight's shape; 0 where the synapse no longer exists.

    Raises:
        ValueError: when the mask's shape differs from the weight's, or the weights are not
            finite (a NaN strength would make every probability NaN).
    """
    xp = get_array_module(weight, mask)
    live = _mask_or_ones(weight, mask)
    a = xp.abs(weight).astype(xp.float64) * live
    if not bool(xp.isfinite(a).all()):
        raise ValueError("the ancestor's weights contain NaN or inf; cannot encode them")
    return a


def cluster_strength(weight, mask=None, granularity: str = "kernel"):
    """Cluster strength A_c = sum_{j in c} a_j (the plain sum of synapse strengths).

    Args:
        weight: ancestor weights W, shape (O, I, kh, kw) or (out, in).
        mask: genotype M of the same shape, or None for a dense layer.
        granularity: "kernel" or "filter" for a Conv2d weight, "neuron" for a Linear weight.

    Returns:
        float64 array A of shape (O, I) for "kernel", (O,) for "filter" and "neuron".
    """
    # BEGIN SOLUTION task 5.1
    check_granularity(granularity, weight.ndim)
    a = synapse_strength(weight, mask)
    return a.sum(axis=_CLUSTER_AXES[granularity])
    # END SOLUTION


def reference_strength(strength, quantile: float = 1.0) -> float:
    """The strength that gets probability exactly 1: the max, or a quantile of live strengths.

    The literal model (docs/method.md#normalisation) fixes the reference at the maximum
    (``quantile=1``). A quantile below 1 is this project's documented extension (see
    docs/method.md#presets): strengths above it get p = min(1, ...) = 1, which raises
    the retention of a generation above what the maximum allows (docs/results/paper-mnist.md).
    Returns 0.0 when nothing is alive.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"normalisation quantile must lie in (0, 1], got {quantile}")
    if strength.size == 0:
        return 0.0
    if quantile == 1:
        return float(strength.max())
    xp = get_array_module(strength)
    live = strength[strength > 0]
    return float(xp.quantile(live, quantile)) if live.size else 0.0


def normalisation(strength, quantile: float = 1.0) -> float:
    """Normalisation constant Z = max strength / ln 2 (Z_s for synapses, Z_c for clusters).

    With ``quantile`` < 1 the maximum is replaced by that quantile of the live strengths.
    Returns 0.0 for a layer whose strengths are all zero (no synapse left).
    """
    return reference_strength(strength, quantile) / math.log(2.0)


def _probability(strength, reference: float | None = None):
    """exp(s / Z) - 1 with Z = s_ref / ln 2, which equals 2 ** (s / s_ref) - 1, capped at 1.

    ``reference`` defaults to max s (docs/method.md#normalisation), where the cap never bites.
    """
    # BEGIN SOLUTION task 5.2
    xp = get_array_module(strength)
    s_ref = float(strength.max()) if strength.size else 0.0
    if reference is not None:
        s_ref = reference
    if s_ref == 0.0:
        # Nothing alive in this layer: every probability is 0 (no 0 / 0).
        return xp.zeros(strength.shape, dtype=xp.float64)
    # exp(s / Z) with Z = s_ref / ln 2 is exp(ln 2 * s / s_ref) = 2 ** (s / s_ref). We evaluate
    # the power of two because it is exact at both ends: s = s_max gives 2 ** 1 - 1 = 1 and s = 0
    # gives 2 ** 0 - 1 = 0, where exp(s / Z) misses 1 by a rounding error of ln 2 in ~3% of layers.
    if reference is None:
        return xp.exp2(strength / s_ref) - 1.0
    # min(1, 2^x - 1) = 2^min(x, 1) - 1, without overflowing exp2 for a tiny reference.
    return xp.exp2(xp.minimum(strength / s_ref, 1.0)) - 1.0
    # END SOLUTION


def synapse_probability(weight, mask=None):
    """Synapse probability p_j = exp(a_j / Z_s) - 1 with Z_s = max_j a_j / ln 2.

    Args:
        weight: ancestor weights W, any shape, either backend.
        mask: genotype M of the same shape, or None for a dense layer.

    Returns:
        float64 array p of the weight's shape, in [0, 1]: exactly 1 for the strongest synapse
        of the layer and exactly 0 where w = 0 or M = 0. All zeros when the whole layer has zero
        strength.
    """
    return _probability(synapse_strength(weight, mask))


def cluster_probability(weight, mask=None, granularity: str = "kernel"):
    """Cluster probability P_c = exp(A_c / Z_c) - 1 with Z_c = max_c A_c / ln 2.

    Args:
        weight: ancestor weights W, shape (O, I, kh, kw) or (out, in).
        mask: genotype M of the same shape, or None.
        granularity: "kernel" or "filter" for a Conv2d weight, "neuron" for a Linear weight.

    Returns:
        float64 array P of the cluster shape, in [0, 1]: exactly 1 for the strongest synaptic
        cluster and exactly 0 for a cluster with no live synapse. All zeros when the whole layer
        has zero strength.
    """
    return _probability(cluster_strength(weight, mask, granularity))


@dataclass
class GeneticEncoding:
    """The genetic encoding of one layer: what its offspring inherit with which probability.

    Attributes:
        granularity: the cluster type ("kernel", "filter" or "neuron").
        weight_shape: shape of the layer's weight.
        synapse_strength: a_j = |w_j| * M_j, float64, ``weight_shape``.
        cluster_strength: A_c = sum_{j in c} a_j, float64, cluster shape.
        z_s: Z_s = max_j a_j / ln 2 (0.0 for a layer with no strength).
        z_c: Z_c = max_c A_c / ln 2.
        synapse_probability: p_j = exp(a_j / Z_s) - 1, float64, ``weight_shape``.
        cluster_probability: P_c = exp(A_c / Z_c) - 1, float64, cluster shape.
        protect_clusters: True for the output layer, whose neurons (the classes) are never
            dropped as clusters (their synapses can be).
        name: the layer's name in the model ("" for a bare array).
    """

    granularity: str
    weight_shape: tuple[int, ...]
    synapse_strength: object
    cluster_strength: object
    z_s: float
    z_c: float
    synapse_probability: object
    cluster_probability: object
    protect_clusters: bool = False
    name: str = ""

    @property
    def cluster_shape(self) -> tuple[int, ...]:
        return tuple(self.cluster_probability.shape)

    def to_synapses(self, cluster_values):
        """Broadcast a per-cluster array to the weight's shape (see :func:`to_synapses`)."""
        return to_synapses(cluster_values, self.weight_shape, self.granularity)

    @property
    def live_synapses(self) -> int:
        """Number of synapses with nonzero strength (the only ones that can be inherited)."""
        return int((self.synapse_strength > 0).sum())


def encode_layer(
    weight, mask=None, granularity: str = "kernel", *, protect_clusters: bool = False,
    name: str = "", synapse_reference: float | None = None, cluster_quantile: float = 1.0,
) -> GeneticEncoding:
    """Encode one layer: synapse and cluster strengths, normalisations and probabilities.

    a_j = |w_j| M_j,  A_c = sum_{j in c} a_j,  Z_s = max a / ln 2,  Z_c = max A / ln 2,
    p_j = exp(a_j / Z_s) - 1,  P_c = exp(A_c / Z_c) - 1.

    Args:
        weight: ancestor weights W, (O, I, kh, kw) or (out, in), either backend.
        mask: genotype M of the same shape, or None for a dense layer.
        granularity: "kernel" or "filter" for a Conv2d weight, "neuron" for a Linear weight.
        protect_clusters: mark the layer's clusters as never dropped (the output layer).
        name: a label for messages and statistics.
        synapse_reference: the strength given p = 1 (default: this layer's max, the literal model);
            see :func:`encode` for the network-wide and quantile options.
        cluster_quantile: quantile of the live cluster strengths given P = 1 (1 = the max).

    Returns:
        A :class:`GeneticEncoding` whose arrays live on the weight's backend.
    """
    check_granularity(granularity, weight.ndim)
    a = synapse_strength(weight, mask)
    big_a = cluster_strength(weight, mask, granularity)  # task 5.1, the function students write
    s_ref = reference_strength(a) if synapse_reference is None else synapse_reference
    c_ref = reference_strength(big_a, cluster_quantile)
    return GeneticEncoding(
        granularity=granularity,
        weight_shape=tuple(weight.shape),
        synapse_strength=a,
        cluster_strength=big_a,
        z_s=s_ref / math.log(2.0),
        z_c=c_ref / math.log(2.0),
        synapse_probability=_probability(a, None if synapse_reference is None else s_ref),
        cluster_probability=_probability(big_a, None if cluster_quantile == 1 else c_ref),
        protect_clusters=protect_clusters,
        name=name,
    )


def _raw(x):
    """The backend array inside a Tensor/Parameter (its ``.data``), or ``x`` if it is an array."""
    if hasattr(x, "__array_interface__") or hasattr(x, "__cuda_array_interface__"):
        return x  # a NumPy or CuPy array (whose own .data is a raw buffer, not what we want)
    return x.data


def layer_arrays(layer):
    """The (weight, mask) arrays of a prunable layer; mask None when the layer has none."""
    weight = _raw(layer.weight)
    mask = getattr(layer, "mask", None)
    return weight, (None if mask is None else _raw(mask))


def named_prunable_layers(model_or_layers) -> list[tuple[str, object]]:
    """Normalise a model, a list of layers or a list of (name, layer) to [(name, layer), ...].

    A model is anything :func:`minievo.layers.prunable_layers` accepts; its prunable layers
    (Conv2d, Linear) come in forward order.
    """
    if isinstance(model_or_layers, (list, tuple)):
        out = []
        for k, item in enumerate(model_or_layers):
            if isinstance(item, tuple) and len(item) == 2:
                out.append((str(item[0]), item[1]))
            else:
                out.append((str(k), item))
        return out
    from minievo.layers import prunable_layers  # noqa: PLC0415

    return list(prunable_layers(model_or_layers))


NORMALISATION_SCOPES = ("layer", "network")


def encode(
    model_or_layers, granularity: str = "kernel", protect_output: bool = True, *,
    synapse_quantile: float = 1.0, cluster_quantile: float = 1.0, scope: str = "layer",
) -> dict[str, GeneticEncoding]:
    """Encode every prunable layer of the ancestor (docs/method.md#encoding).

    Conv2d layers use ``granularity`` ("kernel" or "filter"); Linear layers always use "neuron".

    Args:
        model_or_layers: the ancestor (a model), or a list of layers / (name, layer) pairs.
        granularity: the conv granularity, "kernel" (default) or "filter".
        protect_output: mark the last prunable layer (the output layer, whose neurons are the
            classes) so that its clusters are never dropped.
        synapse_quantile, cluster_quantile: the reference strength that gets probability 1 is
            this quantile of the live strengths; 1 (default) is the literal maximum.
        scope: "layer" (default, literal): Z_s per layer; "network": one Z_s for all layers,
            so synapses compete by strength across the whole network (clusters, whose sizes
            differ between layers, keep a per-layer Z_c).

    Returns:
        {layer name: GeneticEncoding}, in forward order.
    """
    if scope not in NORMALISATION_SCOPES:
        raise ValueError(f"unknown normalisation scope {scope!r}; valid scopes are: "
                         f"{', '.join(NORMALISATION_SCOPES)}")
    layers = named_prunable_layers(model_or_layers)
    if not layers:
        raise ValueError(
            "the model has no prunable layer (Conv2d or Linear): there are no synapses to "
            "encode or synthesise"
        )
    arrays = [layer_arrays(layer) for _, layer in layers]
    refs: list[float | None] = [None] * len(layers)
    if scope == "network":
        xp = get_array_module(arrays[0][0]) if arrays else None
        every = xp.concatenate([synapse_strength(w, m).ravel() for w, m in arrays]) if arrays \
            else None
        refs = [reference_strength(every, synapse_quantile)] * len(layers)
    elif synapse_quantile != 1:
        refs = [reference_strength(synapse_strength(w, m), synapse_quantile) for w, m in arrays]
    encodings = {}
    for k, ((name, _), (weight, mask)) in enumerate(zip(layers, arrays)):
        encodings[name] = encode_layer(
            weight,
            mask,
            layer_granularity(weight.ndim, granularity),
            protect_clusters=protect_output and k == len(layers) - 1,
            name=name,
            synapse_reference=refs[k],
            cluster_quantile=cluster_quantile,
        )
    return encodings
