"""The genetic encoding (docs/method.md#encoding): strengths, normalisation, probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minievo.backend import to_numpy
from minievo.evolution.encoding import (
    cluster_ids,
    cluster_probability,
    cluster_shape,
    cluster_strength,
    encode_layer,
    layer_granularity,
    synapse_probability,
    synapse_strength,
    to_synapses,
)


def _np(x):
    return to_numpy(x)


def test_linear_hand_computed(xp):
    # a = |W| * M; the strongest synapse (4) gets p = 1, a zero weight gets p = 0.
    w = xp.asarray([[1.0, -2.0], [0.0, 4.0]], dtype=xp.float32)
    a = synapse_strength(w)
    np.testing.assert_array_equal(_np(a), [[1, 2], [0, 4]])
    # p = exp(a / Z_s) - 1 with Z_s = 4 / ln 2, i.e. 2 ** (a / 4) - 1
    p = synapse_probability(w)
    expected_p = [[2**0.25 - 1, 2**0.5 - 1], [0.0, 1.0]]
    np.testing.assert_allclose(_np(p), expected_p, rtol=1e-15, atol=0)
    # Neuron clusters: A = [3, 4], Z_c = 4 / ln 2, P = [2 ** 0.75 - 1, 1]
    np.testing.assert_array_equal(_np(cluster_strength(w, None, "neuron")), [3, 4])
    np.testing.assert_allclose(
        _np(cluster_probability(w, None, "neuron")), [2**0.75 - 1, 1.0], rtol=1e-15
    )


def test_mask_removes_strength(xp):
    w = xp.asarray([[1.0, -2.0], [0.0, 4.0]], dtype=xp.float32)
    m = xp.asarray([[1, 1], [1, 0]], dtype=xp.float32)
    # the masked synapse (4) no longer exists: a = [[1, 2], [0, 0]], the max is now 2
    np.testing.assert_array_equal(_np(synapse_strength(w, m)), [[1, 2], [0, 0]])
    np.testing.assert_allclose(_np(synapse_probability(w, m)), [[2**0.5 - 1, 1], [0, 0]])
    # A = [3, 0]: the first neuron is now the strongest cluster, the second has P = 0
    np.testing.assert_allclose(_np(cluster_probability(w, m, "neuron")), [1.0, 0.0])


def test_conv_kernel_and_filter_clusters(xp):
    # W (O=2, I=2, 1, 2): kernel clusters (o, i), filter clusters o
    w = xp.asarray(
        [[[[1.0, 1.0]], [[0.0, 2.0]]], [[[-3.0, 0.0]], [[0.5, 0.5]]]], dtype=xp.float64
    )
    kernel = cluster_strength(w, None, "kernel")
    np.testing.assert_array_equal(_np(kernel), [[2, 2], [3, 1]])
    filt = cluster_strength(w, None, "filter")
    np.testing.assert_array_equal(_np(filt), [4, 4])
    # Z_c = 3 / ln 2 at kernel granularity: P = 2 ** (A / 3) - 1
    np.testing.assert_allclose(
        _np(cluster_probability(w, None, "kernel")),
        [[2 ** (2 / 3) - 1, 2 ** (2 / 3) - 1], [1.0, 2 ** (1 / 3) - 1]],
        rtol=1e-15,
    )
    # two equally strong filters: both probability 1
    np.testing.assert_array_equal(_np(cluster_probability(w, None, "filter")), [1.0, 1.0])
    assert cluster_shape(w.shape, "kernel") == (2, 2)
    assert cluster_shape(w.shape, "filter") == (2,)


def test_probability_is_the_papers_exponential(xp):
    """p = exp(a / Z_s) - 1 with Z_s = max a / ln 2, and the same for clusters."""
    gen = np.random.default_rng(3)
    w_np = gen.normal(size=(6, 4, 3, 3)).astype(np.float32)
    m_np = (gen.random(w_np.shape) < 0.6).astype(np.float32)
    w, m = xp.asarray(w_np), xp.asarray(m_np)
    a = np.abs(w_np).astype(np.float64) * m_np
    z_s = a.max() / math.log(2)
    np.testing.assert_allclose(_np(synapse_probability(w, m)), np.exp(a / z_s) - 1, rtol=1e-12)
    for granularity, axes in (("kernel", (2, 3)), ("filter", (1, 2, 3))):
        big_a = a.sum(axis=axes)
        z_c = big_a.max() / math.log(2)
        np.testing.assert_allclose(
            _np(cluster_probability(w, m, granularity)), np.exp(big_a / z_c) - 1, rtol=1e-12
        )
    enc = encode_layer(w, m, "kernel")
    assert enc.z_s == pytest.approx(z_s, rel=1e-12)
    assert enc.live_synapses == int((a > 0).sum())


def test_probabilities_in_unit_interval_with_exact_ends(xp):
    gen = np.random.default_rng(4)
    for _ in range(20):
        scale = 10.0 ** gen.uniform(-4, 2)
        w_np = (gen.normal(size=(7, 9)) * scale).astype(np.float32)
        enc = encode_layer(xp.asarray(w_np), None, "neuron")
        p, big_p = _np(enc.synapse_probability), _np(enc.cluster_probability)
        assert p.min() >= 0.0 and p.max() == 1.0
        assert big_p.min() >= 0.0 and big_p.max() == 1.0
        assert p.flat[np.argmax(np.abs(w_np))] == 1.0


def test_zero_strength_layer_gives_zero_probabilities(xp):
    w = xp.zeros((3, 2, 5, 5), dtype=xp.float32)
    enc = encode_layer(w, None, "kernel")
    assert not np.isnan(_np(enc.synapse_probability)).any()
    assert _np(enc.synapse_probability).max() == 0.0
    assert _np(enc.cluster_probability).max() == 0.0
    assert enc.z_s == 0.0 and enc.z_c == 0.0
    # the same when weights exist but the mask removed every synapse
    w2 = xp.ones((3, 4), dtype=xp.float32)
    enc2 = encode_layer(w2, xp.zeros((3, 4), dtype=xp.float32), "neuron")
    assert _np(enc2.synapse_probability).max() == 0.0
    assert _np(enc2.cluster_probability).max() == 0.0


def test_probabilities_are_float64_on_the_weights_backend(xp, backend_name):
    w = xp.ones((2, 3), dtype=xp.float32)
    enc = encode_layer(w, None, "neuron")
    assert enc.synapse_probability.dtype == np.float64
    assert type(enc.synapse_probability) is type(w)
    assert type(enc.cluster_probability) is type(w)


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
def test_cluster_ids_and_to_synapses(xp, granularity):
    gen = np.random.default_rng(5)
    w = xp.asarray(gen.normal(size=(3, 4, 2, 2)))
    big_a = cluster_strength(w, None, granularity)
    ids = cluster_ids(w.shape, granularity, xp=xp)
    a = synapse_strength(w)
    # summing the synapse strengths by cluster id gives A_c again
    by_id = np.bincount(_np(ids).ravel(), weights=_np(a).ravel())
    np.testing.assert_allclose(by_id, _np(big_a).ravel())
    np.testing.assert_array_equal(
        _np(to_synapses(big_a, w.shape, granularity)), _np(big_a).ravel()[_np(ids)]
    )


def test_unknown_granularity_lists_the_valid_ones(xp):
    w = xp.ones((2, 2, 3, 3), dtype=xp.float32)
    with pytest.raises(ValueError, match="kernel, filter, neuron"):
        cluster_strength(w, None, "channel")
    with pytest.raises(ValueError, match="unknown granularity 'synapse'"):
        encode_layer(w, None, "synapse")
    with pytest.raises(ValueError, match="kernel, filter"):
        layer_granularity(4, "neuron")


def test_granularity_must_fit_the_weight(xp):
    with pytest.raises(ValueError, match="Linear"):
        cluster_strength(xp.ones((2, 3)), None, "kernel")
    with pytest.raises(ValueError, match="Conv2d"):
        cluster_strength(xp.ones((2, 3, 1, 1)), None, "neuron")
    with pytest.raises(ValueError, match="3-D"):
        cluster_strength(xp.ones((2, 3, 4)), None, "kernel")
    assert layer_granularity(4, "filter") == "filter"
    assert layer_granularity(2, "kernel") == "neuron"


def test_bad_inputs(xp):
    w = xp.ones((2, 3), dtype=xp.float32)
    with pytest.raises(ValueError, match="mask has shape"):
        synapse_strength(w, xp.ones((3, 2)))
    w_nan = xp.asarray([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="NaN"):
        encode_layer(w_nan, None, "neuron")
