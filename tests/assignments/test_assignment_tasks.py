"""The assignment task tests (see ``minievo assignments list``).

Each test carries the marker of its task (``@pytest.mark.task_2_1``) and exercises only that
task's solution block: in a student copy every other block raises NotImplementedError, so a
test must not go through another task's code (the grader reports that as "blocked"). The tests
run in the normal suite against the reference solutions, and ``minievo assignments grade`` runs
them against a student copy. NumPy only, small float64 arrays, well under a second each.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from minievo.autograd import Parameter, Tensor, sum_to
from minievo.evolution.encoding import (
    GeneticEncoding,
    cluster_strength,
    encode_layer,
    synapse_probability,
)
from minievo.evolution.environment import EnvironmentalFactor, expected_offspring_synapses
from minievo.evolution.synthesis import sample_layer_mask
from minievo.functions.conv import col2im, conv2d, conv2d_reference, im2col
from minievo.functions.math import matmul, mul
from minievo.functions.nn import softmax_cross_entropy
from minievo.optim import SGD
from minievo.sparse.reference import csr_conv2d, kernel_csr, masked_conv2d


def _rng(seed=0):
    return np.random.default_rng(seed)


def _numerical_grad(f, x, eps=1e-6):
    """Central differences of the scalar function f at x (float64), one entry at a time."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = f(x)
        x[idx] = old - eps
        down = f(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


# ----- task 2.1: Mul.backward ------------------------------------------------------------------
@pytest.mark.task_2_1
def test_mul_backward_gives_each_input_the_other():
    a = Tensor(_rng(1).normal(size=(3, 4)), requires_grad=True)
    b = Tensor(_rng(2).normal(size=(3, 4)), requires_grad=True)
    gy = _rng(3).normal(size=(3, 4))
    mul(a, b).backward(gy)
    np.testing.assert_allclose(a.grad, gy * b.data)
    np.testing.assert_allclose(b.grad, gy * a.data)


@pytest.mark.task_2_1
def test_mul_backward_skips_inputs_that_need_no_gradient():
    a = Tensor(_rng(1).normal(size=(2, 5)), requires_grad=True)
    c = Tensor(_rng(2).normal(size=(2, 5)))  # a constant
    mul(a, c).backward(np.ones((2, 5)))
    np.testing.assert_allclose(a.grad, c.data)
    assert c.grad is None


@pytest.mark.task_2_1
def test_mul_backward_of_a_reused_input_is_the_sum_of_both_paths():
    # y = x * x: both inputs are x, so dy/dx = x + x = 2x.
    x = Tensor(_rng(4).normal(size=(6,)), requires_grad=True)
    mul(x, x).backward(np.ones(6))
    np.testing.assert_allclose(x.grad, 2 * x.data)


@pytest.mark.task_2_1
def test_mul_backward_matches_central_differences():
    a0 = _rng(5).normal(size=(2, 3))
    b0 = _rng(6).normal(size=(2, 3))
    gy = _rng(7).normal(size=(2, 3))
    a, b = Tensor(a0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    mul(mul(a, b), a).backward(gy)  # y = a^2 b
    num_a = _numerical_grad(lambda v: float((gy * v * b0 * v).sum()), a0.copy())
    num_b = _numerical_grad(lambda v: float((gy * a0 * v * a0).sum()), b0.copy())
    np.testing.assert_allclose(a.grad, num_a, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.grad, num_b, rtol=1e-6, atol=1e-8)


# ----- task 2.2: MatMul.backward ---------------------------------------------------------------
@pytest.mark.task_2_2
def test_matmul_backward_formulas():
    a = Tensor(_rng(1).normal(size=(3, 4)), requires_grad=True)
    b = Tensor(_rng(2).normal(size=(4, 5)), requires_grad=True)
    gy = _rng(3).normal(size=(3, 5))
    matmul(a, b).backward(gy)
    np.testing.assert_allclose(a.grad, gy @ b.data.T)
    np.testing.assert_allclose(b.grad, a.data.T @ gy)
    assert a.grad.shape == (3, 4) and b.grad.shape == (4, 5)


@pytest.mark.task_2_2
def test_matmul_backward_matches_central_differences():
    a0 = _rng(4).normal(size=(2, 3))
    b0 = _rng(5).normal(size=(3, 4))
    gy = _rng(6).normal(size=(2, 4))
    a, b = Tensor(a0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    matmul(a, b).backward(gy)
    num_a = _numerical_grad(lambda v: float((gy * (v @ b0)).sum()), a0.copy())
    num_b = _numerical_grad(lambda v: float((gy * (a0 @ v)).sum()), b0.copy())
    np.testing.assert_allclose(a.grad, num_a, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.grad, num_b, rtol=1e-6, atol=1e-8)


@pytest.mark.task_2_2
def test_matmul_backward_only_where_needed():
    a = Tensor(_rng(1).normal(size=(3, 2)))
    b = Tensor(_rng(2).normal(size=(2, 2)), requires_grad=True)
    matmul(a, b).backward(np.ones((3, 2)))
    np.testing.assert_allclose(b.grad, a.data.T @ np.ones((3, 2)))
    assert a.grad is None


# ----- task 2.3: sum_to --------------------------------------------------------------------------
@pytest.mark.task_2_3
@pytest.mark.parametrize("grad_shape, shape", [
    ((2, 3, 4), (3, 1)),
    ((2, 3), (3,)),
    ((2, 3), (1, 3)),
    ((5, 1, 4), (1, 1, 4)),
    ((2, 3), ()),
    ((4, 3), (4, 1)),
])
def test_sum_to_undoes_broadcasting(grad_shape, shape):
    g = _rng(1).normal(size=grad_shape)
    out = sum_to(g, shape)
    assert out.shape == tuple(shape)
    # The defining property: <sum_to(g), v> = <g, broadcast(v)> for every v of the small shape.
    v = _rng(2).normal(size=shape)
    np.testing.assert_allclose(float((out * v).sum()),
                               float((g * np.broadcast_to(v, grad_shape)).sum()))


@pytest.mark.task_2_3
def test_sum_to_same_shape_is_the_identity():
    g = _rng(3).normal(size=(3, 4))
    np.testing.assert_array_equal(sum_to(g, (3, 4)), g)


@pytest.mark.task_2_3
def test_broadcast_add_backward_uses_sum_to():
    x = Tensor(_rng(4).normal(size=(3, 1)), requires_grad=True)
    y = Tensor(_rng(5).normal(size=(2, 3, 4)), requires_grad=True)
    (x + y).backward(np.ones((2, 3, 4)))
    np.testing.assert_allclose(x.grad, np.full((3, 1), 8.0))
    np.testing.assert_allclose(y.grad, np.ones((2, 3, 4)))


# ----- task 3.1: SoftmaxCrossEntropy.backward ----------------------------------------------------
def _cross_entropy(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


@pytest.mark.task_3_1
def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n():
    logits0 = _rng(1).normal(size=(5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    logits = Tensor(logits0.copy(), requires_grad=True)
    softmax_cross_entropy(logits, labels).backward()
    p = np.exp(logits0 - logits0.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = (p - np.eye(4)[labels]) / 5
    np.testing.assert_allclose(logits.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.task_3_1
def test_cross_entropy_gradient_matches_central_differences_and_scales_with_gy():
    logits0 = _rng(2).normal(size=(3, 6))
    labels = np.array([5, 0, 2])
    logits = Tensor(logits0.copy(), requires_grad=True)
    loss = softmax_cross_entropy(logits, labels)
    loss.backward(np.asarray(2.5))
    num = _numerical_grad(lambda v: 2.5 * _cross_entropy(v, labels), logits0.copy())
    np.testing.assert_allclose(logits.grad, num, rtol=1e-6, atol=1e-8)


@pytest.mark.task_3_1
def test_cross_entropy_gradient_rows_sum_to_zero():
    logits = Tensor(_rng(3).normal(size=(8, 10)) * 10, requires_grad=True)
    softmax_cross_entropy(logits, _rng(4).integers(0, 10, size=8)).backward()
    np.testing.assert_allclose(logits.grad.sum(axis=1), 0, atol=1e-12)
    assert np.all(np.isfinite(logits.grad))


# ----- task 3.2: SGD._update ---------------------------------------------------------------------
def _sgd_by_hand(w, grads, lr, momentum, weight_decay, nesterov):
    v = None
    for g in grads:
        d = g + weight_decay * w
        if momentum:
            v = d.copy() if v is None else momentum * v + d
            d = d + momentum * v if nesterov else v
        w = w - lr * d
    return w


@pytest.mark.task_3_2
@pytest.mark.parametrize("momentum, weight_decay, nesterov", [
    (0.0, 0.0, False), (0.9, 0.0, False), (0.9, 5e-4, False), (0.5, 0.01, True),
])
def test_sgd_matches_the_update_rule(momentum, weight_decay, nesterov):
    w0 = _rng(1).normal(size=(4, 3))
    grads = [_rng(10 + k).normal(size=(4, 3)) for k in range(4)]
    p = Parameter(w0.copy())
    opt = SGD([p], lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for g in grads:
        p.grad = g.copy()
        opt.step()
    expected = _sgd_by_hand(w0, grads, 0.1, momentum, weight_decay, nesterov)
    np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.task_3_2
def test_sgd_keeps_masked_weights_at_zero():
    w0 = _rng(2).normal(size=(3, 3))
    mask = (_rng(3).random((3, 3)) < 0.5).astype(np.float64)
    p = Parameter(w0 * mask)
    p.mask = mask
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-3)
    for k in range(3):
        p.grad = _rng(20 + k).normal(size=(3, 3))
        opt.step()
    assert np.all(p.data[mask == 0] == 0)
    assert np.any(p.data[mask == 1] != (w0 * mask)[mask == 1])


# ----- task 4.1: im2col --------------------------------------------------------------------------
def _im2col_by_loops(x, kh, kw, stride, padding):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    rows = []
    for b, p, q in itertools.product(range(n), range(oh), range(ow)):
        patch = xp[b, :, p * stride : p * stride + kh, q * stride : q * stride + kw]
        rows.append(patch.reshape(-1))  # columns (c, i, j), row-major
    return np.array(rows), (oh, ow)


IM2COL_CASES = [  # (N, C, H, W, kh, kw, stride, padding)
    (2, 1, 7, 7, 3, 3, 1, 0),
    (2, 3, 6, 5, 3, 2, 1, 0),
    (1, 2, 7, 6, 3, 3, 2, 1),
    (3, 4, 5, 5, 1, 1, 1, 0),
    (1, 1, 9, 8, 5, 5, 1, 2),
]


@pytest.mark.task_4_1
@pytest.mark.parametrize("case", IM2COL_CASES)
def test_im2col_rows_are_the_patches(case):
    n, c, h, w, kh, kw, stride, padding = case
    x = _rng(1).normal(size=(n, c, h, w))
    cols, (oh, ow) = im2col(x, kh, kw, stride, padding)
    expected, out = _im2col_by_loops(x, kh, kw, stride, padding)
    assert (oh, ow) == out
    assert cols.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(cols), expected)


@pytest.mark.task_4_1
def test_conv2d_forward_and_weight_gradient_through_im2col():
    x = Tensor(_rng(2).normal(size=(2, 3, 7, 6)))  # no input gradient: col2im is task 4.2
    w0 = _rng(3).normal(size=(4, 3, 3, 3))
    b0 = _rng(4).normal(size=(4,))
    gy = _rng(5).normal(size=(2, 4, 4, 3))
    w, b = Tensor(w0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    wr, br = Tensor(w0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    y = conv2d(x, w, b, stride=2, padding=1)
    yr = conv2d_reference(x, wr, br, stride=2, padding=1)
    np.testing.assert_allclose(y.data, yr.data, rtol=1e-10, atol=1e-10)
    y.backward(gy)
    yr.backward(gy)
    np.testing.assert_allclose(w.grad, wr.grad, rtol=1e-10, atol=1e-10)


# ----- task 4.2: col2im --------------------------------------------------------------------------
def _col2im_by_loops(dcols, x_shape, kh, kw, stride, padding, oh, ow):
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    for b, p, q, i, j in itertools.product(range(n), range(oh), range(ow), range(kh), range(kw)):
        dx[b, :, p * stride + i, q * stride + j] += dcols[b, p, q, :, i, j]
    return dx[:, :, padding : padding + h, padding : padding + w]


@pytest.mark.task_4_2
@pytest.mark.parametrize("case", IM2COL_CASES)
def test_col2im_adds_every_patch_gradient_back(case):
    n, c, h, w, kh, kw, stride, padding = case
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    dcols = _rng(2).normal(size=(n * oh * ow, c * kh * kw))
    dx = col2im(dcols, (n, c, h, w), kh, kw, stride, padding)
    assert dx.shape == (n, c, h, w)
    expected = _col2im_by_loops(dcols.reshape(n, oh, ow, c, kh, kw), (n, c, h, w), kh, kw,
                                stride, padding, oh, ow)
    np.testing.assert_allclose(np.asarray(dx), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.task_4_2
def test_col2im_is_the_adjoint_of_im2col_by_loops():
    # <im2col(x), D> = <x, col2im(D)> for every x and D: what makes conv2d's backward right.
    n, c, h, w, kh, kw, stride, padding = 2, 2, 6, 6, 3, 3, 2, 1
    x = _rng(3).normal(size=(n, c, h, w))
    cols, (oh, ow) = _im2col_by_loops(x, kh, kw, stride, padding)
    d = _rng(4).normal(size=cols.shape)
    dx = col2im(d, x.shape, kh, kw, stride, padding)
    np.testing.assert_allclose(float((cols * d).sum()), float((x * np.asarray(dx)).sum()))


# ----- task 5.1: cluster_strength ----------------------------------------------------------------
@pytest.mark.task_5_1
def test_cluster_strength_kernel_filter_and_neuron():
    w = _rng(1).normal(size=(4, 3, 2, 2))
    m = (_rng(2).random(w.shape) < 0.6).astype(np.float32)
    a = np.abs(w) * m
    np.testing.assert_allclose(cluster_strength(w, m, "kernel"), a.sum(axis=(2, 3)))
    np.testing.assert_allclose(cluster_strength(w, m, "filter"), a.sum(axis=(1, 2, 3)))
    lin = _rng(3).normal(size=(5, 7))
    lm = (_rng(4).random(lin.shape) < 0.5).astype(np.float32)
    np.testing.assert_allclose(cluster_strength(lin, lm, "neuron"), (np.abs(lin) * lm).sum(1))


@pytest.mark.task_5_1
def test_cluster_strength_shapes_dtype_and_dense_default():
    w = _rng(5).normal(size=(6, 2, 3, 3)).astype(np.float32)
    k = cluster_strength(w, None, "kernel")
    f = cluster_strength(w, None, "filter")
    assert k.shape == (6, 2) and f.shape == (6,)
    assert k.dtype == np.float64 and f.dtype == np.float64
    np.testing.assert_allclose(f, k.sum(axis=1), rtol=1e-12)


@pytest.mark.task_5_1
def test_cluster_strength_of_a_dead_cluster_is_zero():
    w = _rng(6).normal(size=(3, 4))
    m = np.ones_like(w)
    m[1] = 0
    s = cluster_strength(w, m, "neuron")
    assert s[1] == 0 and np.all(s[[0, 2]] > 0)


# ----- task 5.2: _probability (via synapse_probability and encode_layer) ----------------------
@pytest.mark.task_5_2
def test_synapse_probability_formula_and_ends():
    w = _rng(1).normal(size=(5, 6))
    m = (_rng(2).random(w.shape) < 0.7).astype(np.float32)
    p = synapse_probability(w, m)
    a = np.abs(w) * m
    z_s = a.max() / math.log(2)
    np.testing.assert_allclose(p, np.exp(a / z_s) - 1, rtol=1e-12, atol=1e-15)
    assert p.dtype == np.float64
    assert np.all(p[m == 0] == 0)  # a synapse that no longer exists is never inherited
    assert abs(p.max() - 1) < 1e-12  # the strongest synapse of the layer: probability 1
    assert np.all((p >= 0) & (p <= 1))


@pytest.mark.task_5_2
def test_cluster_probability_formula_through_encode_layer():
    w = _rng(3).normal(size=(4, 3, 2, 2))
    enc = encode_layer(w, None, "kernel")
    big_a = np.abs(w).sum(axis=(2, 3))
    np.testing.assert_allclose(enc.cluster_probability,
                               np.exp(big_a / (big_a.max() / math.log(2))) - 1, rtol=1e-12)
    assert abs(enc.cluster_probability.max() - 1) < 1e-12


@pytest.mark.task_5_2
def test_probability_of_an_all_dead_layer_is_zero_without_warnings():
    import warnings

    w = _rng(4).normal(size=(3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning
        p = synapse_probability(w, np.zeros_like(w))
    assert p.shape == (3, 3) and np.all(p == 0)


@pytest.mark.task_5_2
def test_probability_with_a_quantile_reference_is_capped_at_one():
    w = _rng(5).normal(size=(8, 10))
    enc = encode_layer(w, None, "neuron", cluster_quantile=0.5)
    big_a = np.abs(w).sum(axis=1)
    ref = np.quantile(big_a, 0.5)
    np.testing.assert_allclose(enc.cluster_probability,
                               np.minimum(np.exp(big_a / (ref / math.log(2))) - 1, 1),
                               rtol=1e-12)
    assert enc.cluster_probability.max() == 1.0


# ----- task 6.1: sample_layer_mask ---------------------------------------------------------------
def _encoding(weight_shape, granularity, seed, protect=False):
    """A GeneticEncoding built by hand (no encoding code involved)."""
    rng = _rng(seed)
    p = rng.random(weight_shape)
    p[rng.random(weight_shape) < 0.2] = 0.0
    cluster_shape = {"kernel": weight_shape[:2], "filter": weight_shape[:1],
                     "neuron": weight_shape[:1]}[granularity]
    big_p = rng.random(cluster_shape)
    return GeneticEncoding(granularity, tuple(weight_shape), p, big_p, 1.0, 1.0, p, big_p,
                           protect_clusters=protect)


def _expected_mask(enc, env, seed, ancestor_mask=None):
    """The draw order of docs/method.md#sampling: one uniform per cluster, then one per synapse."""
    rng = _rng(seed)
    if enc.protect_clusters:
        keep_c_prob = np.ones(enc.cluster_probability.shape)
    else:
        keep_c_prob = np.minimum(1, env.f_c * enc.cluster_probability)
    keep_c = rng.random(enc.cluster_probability.shape) < keep_c_prob
    keep_s = rng.random(enc.weight_shape) < np.minimum(1, env.f_s * enc.synapse_probability)
    extra = (1,) * (len(enc.weight_shape) - keep_c.ndim)
    keep = keep_c.reshape(keep_c.shape + extra) & keep_s
    if ancestor_mask is not None:
        keep &= ancestor_mask != 0
    return keep


@pytest.mark.task_6_1
@pytest.mark.parametrize("shape, granularity", [
    ((6, 4, 3, 3), "kernel"), ((6, 4, 3, 3), "filter"), ((7, 9), "neuron"),
])
def test_sample_layer_mask_follows_the_seeded_draws(shape, granularity):
    enc = _encoding(shape, granularity, seed=1)
    env = EnvironmentalFactor(0.8, 0.9)
    mask = sample_layer_mask(enc, env, np.random.default_rng(7))
    assert mask.shape == shape and mask.dtype == np.float32
    np.testing.assert_array_equal(mask != 0, _expected_mask(enc, env, 7))


@pytest.mark.task_6_1
def test_sample_layer_mask_respects_the_ancestor_mask_and_dtype():
    enc = _encoding((5, 3, 2, 2), "kernel", seed=2)
    ancestor = (_rng(3).random((5, 3, 2, 2)) < 0.5).astype(np.float64)
    env = EnvironmentalFactor(1.0, 1.0)
    mask, clusters = sample_layer_mask(enc, env, np.random.default_rng(4),
                                       ancestor_mask=ancestor, return_clusters=True)
    assert mask.dtype == np.float64
    assert np.all(mask[ancestor == 0] == 0)
    np.testing.assert_array_equal(mask != 0, _expected_mask(enc, env, 4, ancestor))
    assert clusters.shape == (5, 3) and clusters.dtype == bool


@pytest.mark.task_6_1
def test_sample_layer_mask_never_drops_a_protected_cluster():
    enc = _encoding((10, 6), "neuron", seed=5, protect=True)
    enc.cluster_probability[:] = 0.0  # would drop every neuron if it were not protected
    enc.synapse_probability[:] = 1.0
    mask, clusters = sample_layer_mask(enc, EnvironmentalFactor(0.5, 1.0),
                                       np.random.default_rng(6), return_clusters=True)
    assert clusters.all() and np.all(mask == 1)


# ----- task 6.2: expected_offspring_synapses -----------------------------------------------------
@pytest.mark.task_6_2
@pytest.mark.parametrize("shape, granularity, protect", [
    ((6, 4, 3, 3), "kernel", False), ((6, 4, 3, 3), "filter", False),
    ((7, 9), "neuron", False), ((7, 9), "neuron", True),
])
def test_expected_offspring_synapses_formula(shape, granularity, protect):
    enc = _encoding(shape, granularity, seed=3, protect=protect)
    env = EnvironmentalFactor(0.7, 1.0)
    keep_c = (np.ones(enc.cluster_probability.shape) if protect
              else np.minimum(1, 0.7 * enc.cluster_probability))
    keep_s = np.minimum(1, 1.0 * enc.synapse_probability)
    extra = (1,) * (len(shape) - keep_c.ndim)
    expected = float((keep_c.reshape(keep_c.shape + extra) * keep_s).sum())
    got = expected_offspring_synapses(enc, env)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.task_6_2
def test_expected_offspring_synapses_agrees_with_sampling_rates():
    # The mean of many Bernoulli draws: a statistical check with a generous bound.
    enc = _encoding((8, 12), "neuron", seed=4)
    env = EnvironmentalFactor(0.9, 0.6)
    keep_c = np.minimum(1, 0.9 * enc.cluster_probability)[:, None]
    keep_s = np.minimum(1, 0.6 * enc.synapse_probability)
    got = expected_offspring_synapses(enc, env)
    rng = _rng(9)
    trials = 2000
    counts = np.array([((rng.random((8, 1)) < keep_c) & (rng.random((8, 12)) < keep_s)).sum()
                       for _ in range(trials)])
    assert abs(counts.mean() - got) < 6 * counts.std() / math.sqrt(trials) + 1e-9


@pytest.mark.task_6_2
def test_expected_offspring_synapses_of_a_dead_layer_is_zero():
    enc = _encoding((4, 5), "neuron", seed=5)
    enc.synapse_probability[:] = 0.0
    assert expected_offspring_synapses(enc, EnvironmentalFactor(1.0, 1.0)) == 0.0


# ----- task 7.1: kernel_csr ----------------------------------------------------------------------
def _masked_conv_weight(seed, shape=(5, 4, 3, 3), dead_kernels=0.5, dead_taps=0.3):
    rng = _rng(seed)
    w = rng.normal(size=shape)
    o, c = shape[:2]
    mask = (rng.random(shape) >= dead_taps).astype(np.float32)
    mask *= (rng.random((o, c)) >= dead_kernels)[:, :, None, None]
    return w, mask


@pytest.mark.task_7_1
def test_kernel_csr_lists_the_live_kernels_row_by_row():
    w, mask = _masked_conv_weight(1)
    mask[2] = 0  # a dead filter: an empty row
    indptr, indices, kernels = kernel_csr(w, mask)
    o, c = w.shape[:2]
    assert indptr.dtype == np.int32 and indices.dtype == np.int32
    assert kernels.dtype == np.float32
    assert indptr.shape == (o + 1,) and indptr[0] == 0
    assert indptr[-1] == len(indices) == len(kernels)
    for row in range(o):
        live = [i for i in range(c) if mask[row, i].any()]
        got = indices[indptr[row] : indptr[row + 1]]
        assert list(got) == live, f"row {row}: live input maps {live}, got {list(got)}"
        for k, i in zip(range(indptr[row], indptr[row + 1]), live):
            np.testing.assert_allclose(kernels[k], (w[row, i] * mask[row, i]).astype(np.float32))
    assert indptr[3] == indptr[2]


@pytest.mark.task_7_1
def test_kernel_csr_of_a_dense_and_of_an_empty_layer():
    w = _rng(2).normal(size=(3, 2, 2, 2))
    indptr, indices, kernels = kernel_csr(w, np.ones_like(w))
    assert list(indptr) == [0, 2, 4, 6] and list(indices) == [0, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(kernels, w.reshape(6, 2, 2).astype(np.float32))
    indptr, indices, kernels = kernel_csr(w, np.zeros_like(w))
    assert list(indptr) == [0, 0, 0, 0]
    assert indices.shape == (0,) and kernels.shape == (0, 2, 2)


@pytest.mark.task_7_1
@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1)])
def test_csr_convolution_of_kernel_csr_equals_the_masked_dense_one(stride, padding):
    w, mask = _masked_conv_weight(3)
    bias = _rng(4).normal(size=(5,))
    x = _rng(5).normal(size=(2, 4, 7, 7))
    indptr, indices, kernels = kernel_csr(w, mask)
    got = csr_conv2d(x, indptr, indices, kernels, bias, stride, padding)
    want = masked_conv2d(x, w.astype(np.float32), bias, mask, stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
