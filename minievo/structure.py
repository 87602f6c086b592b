"""The low-level pieces of sparse structure, shared by ``evolution/``, ``sparse/`` and ``accel/``.

One implementation of each idea, below all three packages (nothing here imports them):

* :func:`live_kernels`: which kernels (o, i) of a conv mask hold a synapse (the live-kernel
  test), and :func:`live_units`: which filters or neurons do;
* :class:`StructureCounts` and :func:`counts`: synapses, clusters and multiply-accumulates of a
  mask (docs/method.md#recorded).

The layer types say which cluster granularities their weight has (``granularities`` in
:mod:`minievo.layers`); the counts read them, so a new prunable layer is counted without an
edit here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Which field of :class:`StructureCounts` counts the clusters of each granularity.
_FIELD = {"kernel": "kernels", "filter": "filters", "neuron": "neurons"}


def live_kernels(mask) -> np.ndarray:
    """(O, I) bool: kernel (o, i) of an (O, I, ...) mask holds a synapse."""
    m = np.asarray(mask) != 0
    return m.reshape(m.shape[0], m.shape[1], -1).any(axis=2)


def live_units(mask) -> np.ndarray:
    """(O,) bool: filter or neuron o of an (O, ...) mask holds a synapse."""
    m = np.asarray(mask) != 0
    return m.reshape(m.shape[0], -1).any(axis=1)


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


def counts(mask, positions: int, granularities: tuple[str, ...]) -> StructureCounts:
    """Counts of one prunable weight's mask, used at ``positions`` places per image.

    Args:
        mask: the 0/1 (or bool) mask, (O, I, kh, kw) for a convolution, (out, in) for a linear
            layer; any (O, ...) for another prunable layer.
        positions: how often each synapse is used per image (output pixels; 1 for Linear).
        granularities: the layer's cluster granularities ("kernel", "filter", "neuron").

    Returns:
        synapses = live entries, macs = synapses * positions, and per granularity the live
        clusters: kernels (o, i), filters o or neurons o holding a synapse.
    """
    m = np.asarray(mask) != 0
    synapses = int(m.sum())
    out = StructureCounts(synapses=synapses, macs=synapses * int(positions))
    for g in granularities:
        if g not in _FIELD:
            raise ValueError(f"unknown granularity {g!r}; valid: {', '.join(_FIELD)}")
        live = live_kernels(m) if g == "kernel" else live_units(m)
        setattr(out, _FIELD[g], int(live.sum()))
    return out


def conv_counts(mask, positions: int) -> StructureCounts:
    """Counts of a Conv2d mask (O, I, kh, kw) used at ``positions`` = out_h * out_w places."""
    return counts(mask, positions, ("kernel", "filter"))


def linear_counts(mask) -> StructureCounts:
    """Counts of a Linear mask (out, in) (see :func:`conv_counts`)."""
    return counts(mask, 1, ("neuron",))
