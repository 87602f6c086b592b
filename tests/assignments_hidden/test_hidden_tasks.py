"""The hidden assignment task tests: the instructor's, never copied into a student copy.

``minievo assignments grade DIR --hidden`` runs them next to the visible ones. They compare
each task with an independent implementation (loops, the update rule written out) on more
and odder cases than the visible tests, so that code tuned to the visible cases does not pass.
Same rules as the visible tests: one task per test, checks through ``Check``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from minievo.autograd import Parameter, Tensor, sum_to
from minievo.evolution.encoding import GeneticEncoding, cluster_strength, synapse_probability
from minievo.evolution.environment import EnvironmentalFactor, expected_offspring_synapses
from minievo.evolution.synthesis import sample_layer_mask
from minievo.feedback import Check, numerical_grad
from minievo.functions.conv import col2im, im2col
from minievo.functions.math import matmul, mul
from minievo.functions.nn import softmax_cross_entropy
from minievo.optim import SGD
from minievo.sparse.reference import kernel_csr


def _rng(seed):
    return np.random.default_rng(seed)


@pytest.mark.task_2_1
def test_hidden_mul_reused_three_times():
    x = Tensor(_rng(1).normal(size=(4, 3)), requires_grad=True)
    y = Tensor(_rng(2).normal(size=(4, 3)), requires_grad=True)
    gy = _rng(3).normal(size=(4, 3))
    chk = Check("2.1", "x * y * x * x, x and y of shape (4, 3): x used three times")
    chk.call(mul(mul(mul(x, y), x), x).backward, gy)
    chk.close(x.grad, 3 * gy * x.data ** 2 * y.data, "gradient of x", rtol=1e-10)
    chk.close(y.grad, gy * x.data ** 3, "gradient of y", rtol=1e-10)


@pytest.mark.task_2_2
def test_hidden_matmul_chain_and_vector_shapes():
    a0, b0, c0 = (_rng(k).normal(size=s) for k, s in ((1, (1, 5)), (2, (5, 2)), (3, (2, 4))))
    tensors = [Tensor(v.copy(), requires_grad=True) for v in (a0, b0, c0)]
    chk = Check("2.2", "A (1, 5) @ B (5, 2) @ C (2, 4)")
    gy = _rng(4).normal(size=(1, 4))
    chk.call(matmul(matmul(tensors[0], tensors[1]), tensors[2]).backward, gy)
    num = numerical_grad(lambda v: float((gy * (a0 @ v @ c0)).sum()), b0.copy())
    chk.close(tensors[1].grad, num, "gradient of B", rtol=1e-6, atol=1e-8)


@pytest.mark.task_2_3
@pytest.mark.parametrize("grad_shape, shape", [((3, 1, 5, 2), (1, 5, 1)), ((1, 4), (1, 1)),
                                               ((2, 1, 3), (2, 1, 3)), ((6,), (1,))])
def test_hidden_sum_to_more_shapes(grad_shape, shape):
    g = _rng(5).normal(size=grad_shape)
    chk = Check("2.3", f"sum_to {grad_shape} -> {shape}")
    lead = len(grad_shape) - len(shape)
    want = g.sum(axis=tuple(range(lead))) if lead else g
    want = want.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True)
    chk.close(chk.call(sum_to, g, shape), want.reshape(shape), "the result", rtol=1e-12)


@pytest.mark.task_3_1
def test_hidden_cross_entropy_one_sample_many_classes():
    logits0 = _rng(6).normal(size=(1, 50)) * 20
    logits = Tensor(logits0.copy(), requires_grad=True)
    chk = Check("3.1", "1 sample, 50 classes, logits of size ~20")
    chk.call(softmax_cross_entropy(logits, np.array([17])).backward)
    p = np.exp(logits0 - logits0.max())
    p /= p.sum()
    p[0, 17] -= 1
    chk.close(logits.grad, p, "gradient of the logits", rtol=1e-9, atol=1e-12)


def _sgd_by_hand(w, grads, lrs, momentum, weight_decay, nesterov):
    v = None
    for g, lr in zip(grads, lrs):
        d = g + weight_decay * w
        if momentum:
            v = d.copy() if v is None else momentum * v + d
            d = d + momentum * v if nesterov else v
        w = w - lr * d
    return w


@pytest.mark.task_3_2
@pytest.mark.parametrize("momentum, weight_decay, nesterov",
                         [(0.9, 5e-4, False), (0.99, 0.0, True), (0.3, 0.1, True)])
def test_hidden_sgd_ten_steps_with_a_schedule(momentum, weight_decay, nesterov):
    w0 = _rng(7).normal(size=(5,))
    grads = [_rng(20 + k).normal(size=(5,)) for k in range(10)]
    lrs = [0.1 / (1 + 0.3 * k) for k in range(10)]
    p = Parameter(w0.copy())
    opt = SGD([p], lr=lrs[0], momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    chk = Check("3.2", f"ten steps, decaying lr, momentum {momentum}, weight decay "
                       f"{weight_decay}, nesterov {nesterov}")
    for g, lr in zip(grads, lrs):
        opt.lr = lr
        p.grad = g.copy()
        chk.call(opt.step)
    want = _sgd_by_hand(w0, grads, lrs, momentum, weight_decay, nesterov)
    chk.close(p.data, want, "w after ten steps", rtol=1e-12, atol=1e-12)


def _im2col_by_loops(x, kh, kw, stride, padding):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    rows = [xp[b, :, p * stride : p * stride + kh, q * stride : q * stride + kw].reshape(-1)
            for b, p, q in itertools.product(range(n), range(oh), range(ow))]
    return np.array(rows), (oh, ow)


def _col2im_by_loops(dcols, x_shape, kh, kw, stride, padding):
    n, c, h, w = x_shape
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    d = dcols.reshape(n, oh, ow, c, kh, kw)
    dx = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    for b, p, q, i, j in itertools.product(range(n), range(oh), range(ow), range(kh), range(kw)):
        dx[b, :, p * stride + i, q * stride + j] += d[b, p, q, :, i, j]
    return dx[:, :, padding : padding + h, padding : padding + w]


HIDDEN_CONV_CASES = [(3, 4, 5, 5, 1, 1, 1, 0), (1, 2, 8, 9, 2, 4, 3, 1), (2, 1, 4, 4, 4, 4, 1, 0),
                     (1, 3, 5, 6, 3, 3, 2, 2)]


@pytest.mark.task_4_1
@pytest.mark.parametrize("case", HIDDEN_CONV_CASES)
def test_hidden_im2col_against_loops(case):
    n, c, h, w, kh, kw, stride, padding = case
    x = _rng(8).normal(size=(n, c, h, w))
    chk = Check("4.1", f"x {x.shape}, {kh}x{kw}, stride {stride}, padding {padding}")
    cols, out = chk.call(im2col, x, kh, kw, stride, padding)
    want, want_out = _im2col_by_loops(x, kh, kw, stride, padding)
    chk.equal(tuple(out), want_out, "(OH, OW)")
    chk.close(cols, want, "cols", rtol=0, atol=0)


@pytest.mark.task_4_2
@pytest.mark.parametrize("case", HIDDEN_CONV_CASES)
def test_hidden_col2im_against_loops_and_adjoint(case):
    n, c, h, w, kh, kw, stride, padding = case
    cols, (oh, ow) = _im2col_by_loops(_rng(9).normal(size=(n, c, h, w)), kh, kw, stride,
                                      padding)
    d = _rng(10).normal(size=cols.shape)
    chk = Check("4.2", f"x ({n}, {c}, {h}, {w}), {kh}x{kw}, stride {stride}, padding {padding}")
    dx = chk.call(col2im, d, (n, c, h, w), kh, kw, stride, padding)
    chk.close(dx, _col2im_by_loops(d, (n, c, h, w), kh, kw, stride, padding), "dx",
              rtol=1e-12, atol=1e-12)


@pytest.mark.task_5_1
def test_hidden_cluster_strength_of_a_dead_cluster_and_a_1x1_conv():
    w = _rng(11).normal(size=(3, 4, 1, 1))
    m = np.ones_like(w)
    m[1] = 0
    chk = Check("5.1", "a 1x1 conv weight (3, 4, 1, 1) whose filter 1 is dead, granularity filter")
    s = chk.call(cluster_strength, w, m, "filter")
    chk.close(s, (np.abs(w) * m).sum(axis=(1, 2, 3)), "A")


@pytest.mark.task_5_2
def test_hidden_synapse_probability_of_a_single_live_synapse():
    w = _rng(12).normal(size=(4, 4))
    m = np.zeros_like(w)
    m[2, 3] = 1
    chk = Check("5.2", "a (4, 4) layer with one live synapse")
    p = chk.call(synapse_probability, w, m)
    want = np.zeros((4, 4))
    want[2, 3] = 1
    chk.close(p, want, "p", atol=1e-12)


def _encoding(shape, granularity, seed, protect):
    rng = _rng(seed)
    p = rng.random(shape)
    big_p = rng.random(shape[:2] if granularity == "kernel" else shape[:1])
    return GeneticEncoding(granularity, tuple(shape), p, big_p, 1.0, 1.0, p, big_p,
                           protect_clusters=protect)


@pytest.mark.task_6_1
def test_hidden_sample_layer_mask_filter_granularity_and_protection():
    enc = _encoding((6, 4, 3, 3), "filter", 13, protect=True)
    env = EnvironmentalFactor(0.3, 0.7)
    chk = Check("6.1", "a filter layer (6, 4, 3, 3) with protected clusters, F_c 0.3, F_s 0.7")
    mask, clusters = chk.call(sample_layer_mask, enc, env, np.random.default_rng(3),
                              return_clusters=True)
    rng = np.random.default_rng(3)
    rng.random(6)  # the cluster draw still consumes its uniforms
    keep = rng.random((6, 4, 3, 3)) < np.minimum(1, 0.7 * enc.synapse_probability)
    chk.close(np.asarray(mask) != 0, keep, "live synapses")
    chk.close(np.asarray(clusters), np.ones(6, bool), "the cluster draw")


def _expected_mask(enc, env, seed, ancestor_mask=None):
    """The draws of the method, written out: one uniform per cluster, then one per synapse."""
    rng = _rng(seed)
    keep_c = rng.random(enc.cluster_probability.shape) < np.minimum(
        1, env.f_c * enc.cluster_probability)
    keep_s = rng.random(enc.weight_shape) < np.minimum(1, env.f_s * enc.synapse_probability)
    extra = (1,) * (len(enc.weight_shape) - keep_c.ndim)
    keep = keep_c.reshape(keep_c.shape + extra) & keep_s
    if ancestor_mask is not None:
        keep &= ancestor_mask != 0
    return keep


@pytest.mark.task_6_1
@pytest.mark.parametrize("shape, granularity", [((6, 4, 3, 3), "kernel"), ((7, 9), "neuron"),
                                                ((5, 3, 2, 2), "filter")])
def test_hidden_sample_layer_mask_reproduces_the_seeded_draws(shape, granularity):
    enc = _encoding(shape, granularity, 18, protect=False)
    env = EnvironmentalFactor(0.8, 0.9)
    ancestor = (_rng(19).random(shape) < 0.7).astype(np.float32)
    chk = Check("6.1", f"a {granularity} layer {shape}, F_c 0.8, F_s 0.9, seed 7, an ancestor "
                       "mask")
    mask = chk.call(sample_layer_mask, enc, env, np.random.default_rng(7),
                    ancestor_mask=ancestor)
    chk.close(np.asarray(mask) != 0, _expected_mask(enc, env, 7, ancestor), "live synapses")


@pytest.mark.task_6_2
def test_hidden_expected_offspring_synapses_against_the_mean_of_many_draws():
    enc = _encoding((8, 12), "neuron", 14, protect=False)
    env = EnvironmentalFactor(0.9, 0.6)
    chk = Check("6.2", "a neuron layer (8, 12), F_c 0.9, F_s 0.6: the mean of 2000 samples")
    got = chk.call(expected_offspring_synapses, enc, env)
    keep_c = np.minimum(1, 0.9 * enc.cluster_probability)[:, None]
    keep_s = np.minimum(1, 0.6 * enc.synapse_probability)
    rng = _rng(15)
    counts = np.array([((rng.random((8, 1)) < keep_c) & (rng.random((8, 12)) < keep_s)).sum()
                       for _ in range(2000)])
    bound = 6 * counts.std() / np.sqrt(2000) + 1e-9
    chk.true(abs(counts.mean() - got) < bound, f"about {counts.mean():.3f} (+- {bound:.3f})",
             f"{got:.3f}")


@pytest.mark.task_7_1
def test_hidden_kernel_csr_of_empty_and_dense_layers():
    w = _rng(16).normal(size=(3, 2, 2, 2))
    chk = Check("7.1", "a dense (3, 2, 2, 2) layer, then the same layer all masked")
    indptr, indices, kernels = chk.call(kernel_csr, w, np.ones_like(w))
    chk.equal(list(indptr), [0, 2, 4, 6], "indptr")
    chk.equal(list(indices), [0, 1, 0, 1, 0, 1], "indices")
    chk.close(kernels, w.reshape(6, 2, 2).astype(np.float32), "kernels", rtol=1e-6)
    indptr, indices, kernels = chk.call(kernel_csr, w, np.zeros_like(w))
    chk.equal(list(indptr), [0, 0, 0, 0], "indptr")
    chk.equal(tuple(np.shape(kernels)), (0, 2, 2), "kernels.shape")


@pytest.mark.task_7_2
@pytest.mark.parametrize("n, c, h, w, k, stride, padding, threads, per_row", [
    (3, 4, 5, 5, 1, 1, 0, 33, [4, 1, 0]),        # 1x1 kernels, a block that is no warp multiple
    (2, 6, 9, 9, 7, 3, 3, 64, [6, 2]),           # 7x7, stride 3, padding 3
    (1, 90, 6, 6, 5, 1, 2, 32, [90, 90, 0, 1]),  # two full tiles per map, a dead map
])
def test_hidden_cuda_conv_kernel_odd_shapes(n, c, h, w, k, stride, padding, threads, per_row):
    import os

    from minievo.kernels import emulate, kernel_path
    from minievo.sparse import gpu
    from minievo.sparse.reference import masked_conv2d

    o = len(per_row)
    chk = Check("7.2", f"x ({n}, {c}, {h}, {w}) NCHW, {o} maps with {per_row} live {k}x{k} "
                       f"kernels, stride {stride}, padding {padding}, {threads} threads")
    rng = _rng(17 + k)
    indices = np.concatenate([np.sort(rng.choice(c, size=m, replace=False)) for m in per_row])
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    kernels = rng.standard_normal((len(indices), k, k)).astype(np.float32)
    weight = np.zeros((o, c, k, k), np.float32)
    for row in range(o):
        weight[row, indices[indptr[row] : indptr[row + 1]]] = kernels[indptr[row] : indptr[row + 1]]
    bias = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    module = chk.call(emulate.EmulatedModule, kernel_path(gpu.CONV_FILE), sanitize="address")
    if module.sanitizer != "address" and os.environ.get("MINIEVO_REQUIRE_SANITIZERS") == "1":
        chk.fail("AddressSanitizer", "no AddressSanitizer on this machine")
    y = chk.call(gpu.launch_conv2d, module.get_function(gpu.CONV_KERNEL), x, indptr,
                 indices.astype(np.int32), kernels, bias, stride, padding, threads=threads)
    chk.close(y, masked_conv2d(x, weight, bias, (weight != 0).astype(np.float32), stride,
                               padding), "y", rtol=1e-4, atol=1e-4)
