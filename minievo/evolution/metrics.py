"""What is recorded per generation (docs/method.md#recorded): synapses, clusters, efficiency, MACs.

Three sets of counts are kept for every prunable layer and for the whole model:

* ``dense``: the architecture with every synapse present.
* ``live``: the sampled genotype as it is: a synapse is live when its mask entry is 1; a kernel
  (o, i), a filter o (Conv2d) or a neuron o (Linear) is live when it holds a live synapse.
* ``effective``: after removing dead structure. A filter or neuron with no live incoming synapse
  produces a constant, so the synapses reading from it do nothing (their constant contribution
  could be folded into the next bias). The walk (:mod:`minievo.graph`) propagates this forward
  through the network, each layer by its own rule: pooling, ReLU and batch norm keep channels,
  flatten maps channel c to the block of H*W flattened inputs c*H*W ... (c+1)*H*W - 1, an
  addition keeps a channel live when it is live in either branch.

Cluster counts, per granularity (matching the synthesis' clusters):

    clusters at "kernel" granularity = live Conv2d kernels (o, i) + live Linear neurons
    clusters at "filter" granularity = live Conv2d filters o      + live Linear neurons

so the dense Caffe LeNet-5 has 20 + 1000 + 500 + 10 = 1530 and 20 + 50 + 500 + 10 = 580.

Efficiencies (generation g against a reference, normally generation 0):

    synaptic efficiency       = synapses(0) / synapses(g)
    cluster efficiency (gran) = clusters_gran(0) / clusters_gran(g)

Multiply-accumulates per image: a Conv2d synapse is used once per output position,
MACs = synapses * out_h * out_w; a Linear synapse once, MACs = synapses. Pooling, ReLU and the
bias additions are not counted.

The shapes and live units come from the one walk over the model (:func:`minievo.graph.walk`);
the counts from :mod:`minievo.structure`. The counting runs on NumPy copies of the masks (cheap
bookkeeping, identical on both backends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minievo.backend import to_numpy
from minievo.graph import walk
from minievo.layers import prunable_layers
from minievo.structure import StructureCounts, conv_counts, counts, linear_counts

__all__ = ["LayerMetrics", "ModelMetrics", "StructureCounts", "conv_counts", "linear_counts",
           "model_metrics"]


@dataclass
class LayerMetrics:
    """The counts of one prunable layer.

    Attributes:
        name: the layer's name in the model (as in ``prunable_layers``).
        layer_type: "Conv2d" or "Linear".
        weight_shape: (O, I, kh, kw) or (out, in).
        input_shape: shape of the layer's input for one image, (C, H, W) or (features,).
        output_shape: shape of its output, (O, out_h, out_w) or (out,).
        dense, live, effective: the three :class:`StructureCounts`.
    """

    name: str
    layer_type: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dense: StructureCounts
    live: StructureCounts
    effective: StructureCounts

    @property
    def density(self) -> float:
        """Fraction of the layer's synapses present: synapses / dense synapses."""
        return self.live.synapses / self.dense.synapses


def _ratio(reference: int, current: int) -> float:
    if current == 0:
        return float("inf") if reference > 0 else float("nan")
    return reference / current


@dataclass
class ModelMetrics:
    """The counts of a whole model, with its layers.

    Attributes:
        input_shape: (C, H, W) of one image.
        layers: one :class:`LayerMetrics` per prunable layer, in forward order.
        dense, live, effective: totals over the layers.
    """

    input_shape: tuple[int, ...]
    layers: list[LayerMetrics]
    dense: StructureCounts = field(default_factory=StructureCounts)
    live: StructureCounts = field(default_factory=StructureCounts)
    effective: StructureCounts = field(default_factory=StructureCounts)

    def synaptic_efficiency(self, reference: ModelMetrics | None = None,
                            effective: bool = False) -> float:
        """synapses(0) / synapses(g).

        Args:
            reference: generation 0's metrics; None compares with the dense architecture.
            effective: use the effective counts of this model (after removing dead structure).
        """
        ref = self.dense if reference is None else reference.live
        cur = self.effective if effective else self.live
        return _ratio(ref.synapses, cur.synapses)

    def cluster_efficiency(self, granularity: str, reference: ModelMetrics | None = None,
                           effective: bool = False) -> float:
        """clusters(0) / clusters(g) at "kernel" or "filter" granularity."""
        ref = self.dense if reference is None else reference.live
        cur = self.effective if effective else self.live
        return _ratio(ref.clusters(granularity), cur.clusters(granularity))

    def as_row(self, reference: ModelMetrics | None = None) -> dict[str, float]:
        """The generation table's structural columns, as a flat dict."""
        row = {
            "synapses": self.live.synapses,
            "effective_synapses": self.effective.synapses,
            "kernels": self.live.kernels,
            "filters": self.live.filters,
            "neurons": self.live.neurons,
            "clusters_kernel": self.live.clusters("kernel"),
            "clusters_filter": self.live.clusters("filter"),
            "effective_clusters_kernel": self.effective.clusters("kernel"),
            "effective_clusters_filter": self.effective.clusters("filter"),
            "synaptic_efficiency": self.synaptic_efficiency(reference),
            "effective_synaptic_efficiency": self.synaptic_efficiency(reference, True),
            "cluster_efficiency_kernel": self.cluster_efficiency("kernel", reference),
            "cluster_efficiency_filter": self.cluster_efficiency("filter", reference),
            "macs_dense": self.dense.macs,
            "macs": self.live.macs,
            "macs_effective": self.effective.macs,
        }
        for layer in self.layers:
            row[f"density_{layer.name}"] = layer.density
        return row


def _mask(layer) -> np.ndarray:
    """The layer's mask as a NumPy boolean array (all True when it has none)."""
    if getattr(layer, "mask", None) is None:
        return np.ones(layer.weight.shape, dtype=bool)
    return to_numpy(layer.mask) != 0


def model_metrics(model, input_shape: tuple[int, ...] = (1, 28, 28)) -> ModelMetrics:
    """Count synapses, clusters and MACs of ``model``: dense, live and effective.

    The model is read through the one walk of :mod:`minievo.graph` (shapes and live units
    computed once from the layers' own protocol answers), so any network the walk follows is
    counted: stacks, residual blocks, layer types defined outside minievo.

    Args:
        model: a minievo Module (its forward is traced once on one zero image).
        input_shape: one image's shape (C, H, W) (or (features,) for a model starting with a
            Linear).

    Returns:
        A :class:`ModelMetrics` with one :class:`LayerMetrics` per prunable layer, in the order
        of ``prunable_layers(model)`` (forward order for a stack).

    Raises:
        TypeError: for a forward the walk cannot follow (:class:`minievo.graph.StructureError`).
        ValueError: when the shapes do not fit together.
    """
    structure = walk(model, input_shape)
    by_layer = {}
    for node in structure.prunable():
        layer = node.layer
        mask = _mask(layer)
        # Synapses reading a constant input unit do nothing: the effective mask drops them.
        effective_mask = layer.effective_mask(node.live_in)
        positions = layer.positions(node.in_shape)
        dense, live, effective = (counts(m, positions, layer.granularities)
                                  for m in (np.ones_like(mask), mask, effective_mask))
        by_layer[id(layer)] = LayerMetrics(
            name=node.name, layer_type=type(layer).__name__,
            weight_shape=tuple(layer.weight.shape), input_shape=node.in_shape,
            output_shape=node.out_shape, dense=dense, live=live, effective=effective)
    layers = [by_layer[id(layer)] for _, layer in prunable_layers(model) if id(layer) in by_layer]
    result = ModelMetrics(input_shape=tuple(input_shape), layers=layers)
    for layer_metrics in layers:
        result.dense = result.dense + layer_metrics.dense
        result.live = result.live + layer_metrics.live
        result.effective = result.effective + layer_metrics.effective
    return result
