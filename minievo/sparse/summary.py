"""Counts of a compact model: synapses, clusters, multiply-accumulates per image.

Two sets of counts, as docs/method.md#recorded asks:

* *sampled*: what the masks hold (every synapse with mask 1, every cluster with one such
  synapse);
* *effective*: what the compact model executes after removing dead structure (synapses that
  read a constant unit or feed an unused one are not executed; their effect, if any, is folded
  into a bias).

Clusters: Conv2d at kernel granularity (pair (o, i)) and filter granularity (output map o);
Linear at neuron granularity (output neuron o). Multiply-accumulates per image: a conv synapse
costs one MAC per output pixel, a linear synapse one MAC.

The sampled counts are made by the same functions as the lineage's records
(:func:`minievo.structure.conv_counts`, :func:`minievo.structure.linear_counts`).
The effective counts here are what the compact model *executes*: besides the synapses that read
a constant (which :func:`~minievo.evolution.metrics.model_metrics` drops as well), the compact
model also skips synapses whose output no later layer reads, so its effective counts can be
lower than the lineage's, never higher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from minievo.sparse.model import CompactModel, dense_mask
from minievo.structure import conv_counts, linear_counts


@dataclass
class LayerSummary:
    name: str
    kind: str  # 'conv' or 'linear'
    shape: tuple
    method: str  # CPU path of the compact layer ('native', 'csr', 'dense'; '-': not run)
    dense_synapses: int
    synapses: int
    effective_synapses: int
    kernels: int  # conv: live kernels; linear: same as neurons
    effective_kernels: int
    clusters: int  # filters (conv) or neurons (linear) with a live synapse
    effective_clusters: int
    macs_dense: int
    macs: int
    macs_effective: int


@dataclass
class CompactSummary:
    layers: list[LayerSummary]

    def _total(self, key: str) -> int:
        return int(sum(getattr(r, key) for r in self.layers))

    @property
    def dense_synapses(self) -> int:
        return self._total("dense_synapses")

    @property
    def synapses(self) -> int:
        return self._total("synapses")

    @property
    def effective_synapses(self) -> int:
        return self._total("effective_synapses")

    @property
    def macs_dense(self) -> int:
        return self._total("macs_dense")

    @property
    def macs(self) -> int:
        return self._total("macs")

    @property
    def macs_effective(self) -> int:
        return self._total("macs_effective")

    @property
    def synaptic_efficiency(self) -> float:
        """Dense synapses / live synapses (inf when none is live)."""
        return self.dense_synapses / self.synapses if self.synapses else float("inf")

    @property
    def mac_ratio(self) -> float:
        """Dense MACs / effective MACs per image (the ideal speed-up)."""
        return self.macs_dense / self.macs_effective if self.macs_effective else float("inf")

    def as_dict(self) -> dict:
        return {
            "layers": [asdict(r) for r in self.layers],
            "dense_synapses": self.dense_synapses, "synapses": self.synapses,
            "effective_synapses": self.effective_synapses, "macs_dense": self.macs_dense,
            "macs": self.macs, "macs_effective": self.macs_effective,
            "synaptic_efficiency": self.synaptic_efficiency, "mac_ratio": self.mac_ratio,
        }

    def __str__(self) -> str:
        w = max([22] + [len(r.name) + 2 for r in self.layers])
        head = (f"{'layer':<{w}}{'method':>7}{'synapses':>11}{'effective':>11}{'kernels':>9}"
                f"{'eff.':>6}{'filters':>9}{'eff.':>6}{'MACs/img':>12}{'dense MACs':>12}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(
                f"{r.name:<{w}}{r.method:>7}{r.synapses:>11,}{r.effective_synapses:>11,}"
                f"{r.kernels:>9,}{r.effective_kernels:>6,}{r.clusters:>9,}"
                f"{r.effective_clusters:>6,}{r.macs_effective:>12,}{r.macs_dense:>12,}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<{w}}{'':>7}{self.synapses:>11,}{self.effective_synapses:>11,}"
            f"{'':>9}{'':>6}{'':>9}{'':>6}{self.macs_effective:>12,}{self.macs_dense:>12,}"
        )
        lines.append(f"synaptic efficiency {self.synaptic_efficiency:.1f}x "
                     f"({self.dense_synapses:,} dense synapses), MAC ratio dense/effective "
                     f"{self.mac_ratio:.1f}x")
        return "\n".join(lines)


def summarize(cm: CompactModel) -> CompactSummary:
    """The :class:`CompactSummary` of a :class:`~minievo.sparse.model.CompactModel` (chain or
    graph): one row per prunable layer of the original model."""
    rows = []
    chain_names = [n for n, s in zip(cm.leaf_names, cm.leaf_specs)
                   if s["op"] in ("conv", "linear")]
    for j, src in enumerate(cm.sources):
        live = dense_mask(cm, j) != 0
        positions = int(np.prod(src.out_hw))
        if src.kind == "conv":
            sampled = conv_counts(live, positions)
            kernels, clusters = sampled.kernels, sampled.filters
        else:
            sampled = linear_counts(live)
            kernels = clusters = sampled.neurons
        step = cm.steps[src.step] if src.step >= 0 else None
        eff_syn = step.synapses if step is not None else 0
        if step is None:
            eff_kernels = eff_clusters = 0
        else:
            eff_kernels = step.nnz if src.kind == "conv" else int(
                np.count_nonzero(np.diff(step.indptr)))
            eff_clusters = int(np.count_nonzero(np.diff(step.indptr)))
        label = "Conv2d" if src.kind == "conv" else "Linear"
        shape_txt = "x".join(map(str, src.shape))
        rows.append(LayerSummary(
            name=f"{src.name or chain_names[j]}: {label} {shape_txt}", kind=src.kind,
            shape=tuple(src.shape), method=step.method if step is not None else "-",
            dense_synapses=int(live.size), synapses=sampled.synapses,
            effective_synapses=eff_syn, kernels=kernels, effective_kernels=eff_kernels,
            clusters=clusters, effective_clusters=eff_clusters,
            macs_dense=int(live.size) * positions, macs=sampled.macs,
            macs_effective=eff_syn * positions,
        ))
    return CompactSummary(rows)
