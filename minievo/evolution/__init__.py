"""Evolutionary synthesis of sparse networks (Shafiee & Wong, arXiv:1609.01360).

The ancestor's synapses are encoded into probabilities (:mod:`.encoding`), scaled by the
environmental factor (:mod:`.environment`), and sampled into the offspring's masks
(:mod:`.synthesis`); :mod:`.metrics` counts what each generation keeps.
"""

from minievo.evolution.encoding import (
    CONV_GRANULARITIES,
    GRANULARITIES,
    GeneticEncoding,
    cluster_ids,
    cluster_probability,
    cluster_strength,
    encode,
    encode_layer,
    synapse_probability,
    synapse_strength,
)
from minievo.evolution.environment import (
    EnvironmentalFactor,
    QuantileRetention,
    RetentionSolution,
    TargetRetention,
    expected_offspring_synapses,
    expected_retention,
)
from minievo.evolution.metrics import LayerMetrics, ModelMetrics, StructureCounts, model_metrics
from minievo.evolution.synthesis import (
    OFFSPRING_INITS,
    OffspringStats,
    apply_offspring_init,
    sample_layer_mask,
    synthesize_offspring,
)

__all__ = [
    "CONV_GRANULARITIES",
    "GRANULARITIES",
    "OFFSPRING_INITS",
    "EnvironmentalFactor",
    "GeneticEncoding",
    "LayerMetrics",
    "ModelMetrics",
    "OffspringStats",
    "QuantileRetention",
    "RetentionSolution",
    "StructureCounts",
    "TargetRetention",
    "apply_offspring_init",
    "cluster_ids",
    "cluster_probability",
    "cluster_strength",
    "encode",
    "encode_layer",
    "expected_offspring_synapses",
    "expected_retention",
    "model_metrics",
    "sample_layer_mask",
    "synapse_probability",
    "synapse_strength",
    "synthesize_offspring",
]
