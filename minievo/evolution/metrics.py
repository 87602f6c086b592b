"""What is recorded per generation (docs/method.md#recorded): synapses, clusters, efficiency, MACs.

Three sets of counts are kept for every prunable layer and for the whole model:

* ``dense``: the architecture with every synapse present.
* ``live``: the sampled genotype as it is: a synapse is live when its mask entry is 1; a kernel
  (o, i), a filter o (Conv2d) or a neuron o (Linear) is live when it holds a live synapse.
* ``effective``: after removing dead structure. A filter or neuron with no live incoming synapse
  produces a constant, so the synapses reading from it do nothing (their constant contribution
  could be folded into the next bias). We propagate this forward through the network:
  conv -> pool -> conv keeps channels, conv -> flatten -> linear maps channel c to the block of
  H*W flattened inputs c*H*W ... (c+1)*H*W - 1, linear -> linear maps neuron to input.

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

The network is walked layer by layer (Sequential, possibly nested, of Conv2d, MaxPool2d, ReLU,
Flatten, Linear, Dropout) from ``input_shape`` = (C, H, W) of one image; shapes are computed here.
The counting runs on NumPy copies of the masks (cheap bookkeeping, identical on both backends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minievo.backend import to_numpy
from minievo.functions.conv import conv_output_size
from minievo.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential

SUPPORTED_LAYERS = (Conv2d, MaxPool2d, ReLU, Flatten, Linear, Dropout)


@dataclass
class StructureCounts:
    """Counts of one layer or of a whole model.

    Attributes:
        synapses: synapses (weights) present.
        kernels: Conv2d kernels (o, i) holding a synapse.
        filters: Conv2d filters (output maps) o holding a synapse.
        neurons: Linear neurons o holding an incoming synapse.
        macs: multiply-accumulates per image.
    """

    synapses: int = 0
    kernels: int = 0
    filters: int = 0
    neurons: int = 0
    macs: int = 0

    def clusters(self, granularity: str) -> int:
        """Clusters at "kernel" (kernels + neurons) or "filter" (filters + neurons) granularity."""
        if granularity == "kernel":
            return self.kernels + self.neurons
        if granularity == "filter":
            return self.filters + self.neurons
        raise ValueError(
            f"unknown granularity {granularity!r}; valid granularities are: kernel, filter"
        )

    def __add__(self, other: StructureCounts) -> StructureCounts:
        return StructureCounts(
            self.synapses + other.synapses,
            self.kernels + other.kernels,
            self.filters + other.filters,
            self.neurons + other.neurons,
            self.macs + other.macs,
        )


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


def _leaf_layers(model) -> list[tuple[str, object]]:
    """The model's layers in forward order, nested Sequentials opened, with dotted names."""
    if not isinstance(model, Sequential):
        raise TypeError(
            f"metrics walk a Sequential model, got {type(model).__name__}"
        )
    out = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Sequential):
            out.extend((f"{i}.{name}", sub) for name, sub in _leaf_layers(layer))
        elif isinstance(layer, SUPPORTED_LAYERS):
            out.append((str(i), layer))
        else:
            names = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
            raise TypeError(
                f"layer {i} is a {type(layer).__name__}; metrics know only: {names}, Sequential"
            )
    return out


def _mask(layer) -> np.ndarray:
    """The layer's mask as a NumPy boolean array (all True when it has none)."""
    if getattr(layer, "mask", None) is None:
        return np.ones(layer.weight.shape, dtype=bool)
    return to_numpy(layer.mask) != 0


def conv_counts(mask: np.ndarray, positions: int) -> StructureCounts:
    """Counts of a Conv2d mask (O, I, kh, kw) used at ``positions`` = out_h * out_w places.

    The one place synapses, kernels, filters and MACs are counted from a conv mask; the
    compact model's summary (:mod:`minievo.sparse.summary`) counts with it too."""
    synapses = int(mask.sum())
    return StructureCounts(
        synapses=synapses,
        kernels=int(mask.any(axis=(2, 3)).sum()),
        filters=int(mask.any(axis=(1, 2, 3)).sum()),
        macs=synapses * positions,
    )


def linear_counts(mask: np.ndarray) -> StructureCounts:
    """Counts of a Linear mask (out, in) (see :func:`conv_counts`)."""
    synapses = int(mask.sum())
    return StructureCounts(synapses=synapses, neurons=int(mask.any(axis=1).sum()), macs=synapses)


def model_metrics(model, input_shape: tuple[int, ...] = (1, 28, 28)) -> ModelMetrics:
    """Count synapses, clusters and MACs of ``model``: dense, live and effective.

    Args:
        model: a Sequential of Conv2d, MaxPool2d, ReLU, Flatten, Linear, Dropout (nested
            Sequentials allowed).
        input_shape: one image's shape (C, H, W) (or (features,) for a model starting with a
            Linear).

    Returns:
        A :class:`ModelMetrics` with one :class:`LayerMetrics` per prunable layer.

    Raises:
        TypeError: for a layer type the walk does not know.
        ValueError: when the shapes do not fit together.
    """
    shape = tuple(int(n) for n in input_shape)
    # alive[c]: channel c (or feature c) of the current activation is not a constant.
    alive = np.ones(shape[0], dtype=bool)
    layers = []
    for name, layer in _leaf_layers(model):
        if isinstance(layer, Conv2d):
            if len(shape) != 3 or shape[0] != layer.weight.shape[1]:
                raise ValueError(
                    f"layer {name} {layer!r} expects ({layer.weight.shape[1]}, H, W) input, "
                    f"gets {shape}"
                )
            o, _, kh, kw = layer.weight.shape
            out_h = conv_output_size(shape[1], kh, layer.stride, layer.padding)
            out_w = conv_output_size(shape[2], kw, layer.stride, layer.padding)
            mask = _mask(layer)
            # Synapses reading a dead input channel do nothing: drop them.
            effective_mask = mask & alive[None, :, None, None]
            counts = (
                conv_counts(np.ones_like(mask), out_h * out_w),
                conv_counts(mask, out_h * out_w),
                conv_counts(effective_mask, out_h * out_w),
            )
            out_shape = (o, out_h, out_w)
            # A filter with no effective incoming synapse outputs a constant map.
            alive = effective_mask.any(axis=(1, 2, 3))
        elif isinstance(layer, Linear):
            n_out, n_in = layer.weight.shape
            if len(shape) != 1 or shape[0] != n_in:
                raise ValueError(
                    f"layer {name} {layer!r} expects ({n_in},) input, gets {shape}"
                    + (" (missing Flatten?)" if len(shape) == 3 else "")
                )
            mask = _mask(layer)
            effective_mask = mask & alive[None, :]
            counts = (
                linear_counts(np.ones_like(mask)),
                linear_counts(mask),
                linear_counts(effective_mask),
            )
            out_shape = (n_out,)
            alive = effective_mask.any(axis=1)
        elif isinstance(layer, MaxPool2d):
            if len(shape) != 3:
                raise ValueError(f"layer {name} MaxPool2d expects (C, H, W) input, gets {shape}")
            k = layer.kernel_size
            s = k if layer.stride is None else int(layer.stride)
            shape = (
                shape[0],
                conv_output_size(shape[1], k, s, 0),
                conv_output_size(shape[2], k, s, 0),
            )
            continue  # channels map one to one: a constant map pools to a constant map
        elif isinstance(layer, Flatten):
            if len(shape) == 3:
                c, h, w = shape
                # channel c becomes the flattened inputs c*h*w ... (c+1)*h*w - 1
                alive = np.repeat(alive, h * w)
                shape = (c * h * w,)
            continue
        else:  # ReLU, Dropout: elementwise, a constant stays a constant
            continue
        layers.append(
            LayerMetrics(
                name=name,
                layer_type=type(layer).__name__,
                weight_shape=tuple(layer.weight.shape),
                input_shape=shape,
                output_shape=out_shape,
                dense=counts[0],
                live=counts[1],
                effective=counts[2],
            )
        )
        shape = out_shape
    result = ModelMetrics(input_shape=tuple(input_shape), layers=layers)
    for layer_metrics in layers:
        result.dense = result.dense + layer_metrics.dense
        result.live = result.live + layer_metrics.live
        result.effective = result.effective + layer_metrics.effective
    return result
