"""The visible assignment task tests (see ``minievo assignments list``).

Each test carries the marker of its task (``@pytest.mark.task_2_1``) and exercises only that
task's solution block: in a student copy every other block raises NotImplementedError, so a
test must not go through another task's code (the grader reports that as "blocked"). The tests
check the definitions of the chapters on small cases (sampled entries, properties, formulas of
a step or two), never by a second implementation of the task; the instructor's hidden tests
add more cases. Every check goes through :class:`minievo.feedback.Check`, so a failure names
the case, shows expected and got, and says which chapter section to reread. NumPy only, small
float64 arrays, well under a second each (task 7.2 compiles the CUDA kernel with g++ once).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest

from minievo import backend
from minievo.autograd import Parameter, Tensor, sum_to
from minievo.evolution import encoding as encoding_mod
from minievo.evolution.encoding import GeneticEncoding, cluster_strength, synapse_probability
from minievo.evolution.environment import EnvironmentalFactor, expected_offspring_synapses
from minievo.evolution.synthesis import sample_layer_mask
from minievo.feedback import Check, numerical_grad
from minievo.functions.conv import col2im, conv2d, conv2d_reference, im2col
from minievo.functions.math import matmul, mul
from minievo.functions.nn import softmax_cross_entropy
from minievo.kernels import emulate, kernel_path
from minievo.optim import SGD
from minievo.sparse import gpu
from minievo.sparse.reference import csr_conv2d, kernel_csr, masked_conv2d


def _rng(seed=0):
    return np.random.default_rng(seed)


def _shape_words(*arrays) -> str:
    return ", ".join(f"{name} {tuple(a.shape)}" for name, a in arrays)


# ----- task 2.1: Mul.backward ------------------------------------------------------------------
@pytest.mark.task_2_1
def test_mul_backward_gives_each_input_the_other():
    a = Tensor(_rng(1).normal(size=(3, 4)), requires_grad=True)
    b = Tensor(_rng(2).normal(size=(3, 4)), requires_grad=True)
    gy = _rng(3).normal(size=(3, 4))
    chk = Check("2.1", "y = a * b, a and b of shape (3, 4), both need a gradient")
    ga, gb = chk.call(mul(a, b).creator.backward, gy)
    hint = "Each input's adjoint is gy times the OTHER input (y = a b: dy/da = b)."
    chk.close(ga, gy * b.data, "gradient of a", hint)
    chk.close(gb, gy * a.data, "gradient of b", hint)


@pytest.mark.task_2_1
def test_mul_backward_returns_none_for_inputs_that_need_no_gradient():
    a = Tensor(_rng(1).normal(size=(2, 5)), requires_grad=True)
    c = Tensor(_rng(2).normal(size=(2, 5)))  # a constant
    hint = "Return None for input i when self.needs_grad[i] is False; compute nothing for it."
    chk = Check("2.1", "y = a * c, c a constant (needs_grad = [True, False])")
    ga, gc = chk.call(mul(a, c).creator.backward, np.ones((2, 5)))
    chk.none(gc, "gradient of c", hint)
    chk.close(ga, c.data, "gradient of a", hint)
    chk = Check("2.1", "y = c * a, c a constant (needs_grad = [False, True])")
    gc, ga = chk.call(mul(c, a).creator.backward, np.ones((2, 5)))
    chk.none(gc, "gradient of c", hint)
    chk.close(ga, c.data, "gradient of a", hint)


@pytest.mark.task_2_1
def test_mul_backward_matches_central_differences():
    a0, b0 = _rng(5).normal(size=(2, 3)), _rng(6).normal(size=(2, 3))
    gy = _rng(7).normal(size=(2, 3))
    a, b = Tensor(a0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    chk = Check("2.1", "y = (a * b) * a (a used twice), a and b of shape (2, 3)")
    chk.call(mul(mul(a, b), a).backward, gy)
    num_a = numerical_grad(lambda v: float((gy * v * b0 * v).sum()), a0.copy())
    num_b = numerical_grad(lambda v: float((gy * a0 * v * a0).sum()), b0.copy())
    hint = "Compare with the central differences of chapter 2, section 2."
    chk.close(a.grad, num_a, "gradient of a", hint, rtol=1e-6, atol=1e-8)
    chk.close(b.grad, num_b, "gradient of b", hint, rtol=1e-6, atol=1e-8)


# ----- task 2.2: MatMul.backward ---------------------------------------------------------------
@pytest.mark.task_2_2
@pytest.mark.parametrize("m, n, p", [(3, 4, 5), (3, 3, 3)])
def test_matmul_backward_shapes_and_central_differences(m, n, p):
    a0, b0 = _rng(4).normal(size=(m, n)), _rng(5).normal(size=(n, p))
    gy = _rng(6).normal(size=(m, p))
    a, b = Tensor(a0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    chk = Check("2.2", f"Y = A @ B, A of shape ({m}, {n}), B of shape ({n}, {p})")
    ga, gb = chk.call(matmul(a, b).creator.backward, gy)
    hint = "Each adjoint has its input's shape: check the shapes of the product you return."
    chk.shape(ga, (m, n), "gradient of A", hint)
    chk.shape(gb, (n, p), "gradient of B", hint)
    num_a = numerical_grad(lambda v: float((gy * (v @ b0)).sum()), a0.copy())
    num_b = numerical_grad(lambda v: float((gy * (a0 @ v)).sum()), b0.copy())
    hint = "Write the adjoint entry by entry (a sum over k), then spot the matrix product."
    chk.close(ga, num_a, "gradient of A", hint, rtol=1e-6, atol=1e-8)
    chk.close(gb, num_b, "gradient of B", hint, rtol=1e-6, atol=1e-8)


@pytest.mark.task_2_2
def test_matmul_backward_only_where_needed():
    a = Tensor(_rng(1).normal(size=(3, 2)))
    b = Tensor(_rng(2).normal(size=(2, 2)), requires_grad=True)
    chk = Check("2.2", "Y = A @ B, A (3, 2) a constant, B (2, 2) needs a gradient")
    ga, gb = chk.call(matmul(a, b).creator.backward, np.ones((3, 2)))
    chk.none(ga, "gradient of A", "Return None where self.needs_grad[i] is False.")
    chk.shape(gb, (2, 2), "gradient of B")


# ----- task 2.3: sum_to --------------------------------------------------------------------------
@pytest.mark.task_2_3
@pytest.mark.parametrize("grad_shape, shape", [
    ((2, 3, 4), (3, 1)),
    ((2, 3), (3,)),
    ((2, 3), (1, 3)),
    ((4, 3), (4, 1)),
    ((2, 3), ()),
])
def test_sum_to_undoes_broadcasting(grad_shape, shape):
    g = _rng(1).normal(size=grad_shape)
    chk = Check("2.3", f"sum_to of a gradient of shape {grad_shape} to shape {shape}")
    out = chk.call(sum_to, g, shape)
    chk.shape(out, shape, "the result",
              "Sum the added leading axes away, and keep (length 1) the stretched ones.")
    # The defining property: <sum_to(g), v> = <g, broadcast(v)> for every v of the small shape.
    v = _rng(2).normal(size=shape)
    got = float((np.asarray(out) * v).sum())
    want = float((g * np.broadcast_to(v, grad_shape)).sum())
    chk.true(math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12),
             f"<sum_to(g), v> = <g, broadcast(v)> = {want:.6g}", f"{got:.6g}",
             "Every element used k times gets the SUM of its k adjoints (not the mean).")


@pytest.mark.task_2_3
def test_sum_to_same_shape_is_the_identity():
    g = _rng(3).normal(size=(3, 4))
    chk = Check("2.3", "sum_to of a gradient of shape (3, 4) to its own shape (3, 4)")
    chk.close(chk.call(sum_to, g, (3, 4)), g, "the result", "Nothing was broadcast.")


# ----- task 3.1: SoftmaxCrossEntropy.backward ----------------------------------------------------
def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.task_3_1
def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n():
    logits0 = _rng(1).normal(size=(5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    logits = Tensor(logits0.copy(), requires_grad=True)
    chk = Check("3.1", "5 samples, 4 classes, labels [0, 3, 1, 1, 2], backward from gy = 1")
    chk.call(softmax_cross_entropy(logits, labels).backward)
    expected = (_softmax(logits0) - np.eye(4)[labels]) / 5
    chk.close(logits.grad, expected, "gradient of the logits",
              "(softmax - one_hot) / N: the loss is the MEAN over the N samples.",
              rtol=1e-10, atol=1e-12)


@pytest.mark.task_3_1
def test_cross_entropy_gradient_scales_with_gy_and_matches_central_differences():
    logits0 = _rng(2).normal(size=(3, 6))
    labels = np.array([5, 0, 2])
    logits = Tensor(logits0.copy(), requires_grad=True)
    chk = Check("3.1", "3 samples, 6 classes, backward from gy = 2.5")
    chk.call(softmax_cross_entropy(logits, labels).backward, np.asarray(2.5))

    def loss(v):
        return -2.5 * float(np.log(_softmax(v)[np.arange(3), labels]).mean())

    chk.close(logits.grad, numerical_grad(loss, logits0.copy()), "gradient of the logits",
              "Multiply by the incoming gy (the loss may be scaled).", rtol=1e-6, atol=1e-8)


@pytest.mark.task_3_1
def test_cross_entropy_gradient_of_large_logits_is_finite():
    logits = Tensor(_rng(3).normal(size=(8, 10)) * 300, requires_grad=True)
    chk = Check("3.1", "8 samples, 10 classes, logits of size ~300 (exp overflows)")
    chk.call(softmax_cross_entropy(logits, _rng(4).integers(0, 10, size=8)).backward)
    g = chk.shape(logits.grad, (8, 10), "gradient of the logits")
    chk.true(np.all(np.isfinite(g)), "finite values", "inf or nan",
             "Use the probabilities the forward pass saved (self.p), computed stably.")
    chk.close(g.sum(axis=1), np.zeros(8), "row sums of the gradient",
              "Each row of softmax - one_hot sums to 0.", atol=1e-12)


# ----- task 3.2: SGD._update ---------------------------------------------------------------------
def _steps(momentum, weight_decay, nesterov, lrs):
    """Two SGD steps from w0 with gradients g0, g1 and learning rates lrs; (w0, g, result)."""
    w0 = _rng(1).normal(size=(4, 3))
    g = [_rng(10 + k).normal(size=(4, 3)) for k in range(2)]
    p = Parameter(w0.copy())
    opt = SGD([p], lr=lrs[0], momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ws = []
    for k in range(2):
        opt.lr = lrs[k]
        p.grad = g[k].copy()
        opt.step()
        ws.append(p.data.copy())
    return w0, g, ws


SGD_HINT = ("d = g + weight_decay * w; v = d on the first step, then v = momentum * v + d; "
            "w -= lr * v (Nesterov: w -= lr * (d + momentum * v)).")


@pytest.mark.task_3_2
@pytest.mark.parametrize("momentum, weight_decay, nesterov", [
    (0.0, 0.0, False), (0.0, 0.01, False), (0.9, 0.0, False), (0.9, 5e-4, False),
    (0.5, 0.01, True),
])
def test_sgd_first_two_steps(momentum, weight_decay, nesterov):
    lrs = (0.1, 0.05)  # a schedule changes lr between steps
    w0, g, (w1, w2) = _steps(momentum, weight_decay, nesterov, lrs)
    chk = Check("3.2", f"two steps, lr {lrs[0]} then {lrs[1]}, momentum {momentum}, "
                       f"weight decay {weight_decay}, nesterov {nesterov}")
    d0 = g[0] + weight_decay * w0
    step0 = d0 + momentum * d0 if nesterov else d0
    chk.close(w1, w0 - lrs[0] * step0, "w after step 1", SGD_HINT, rtol=1e-12, atol=1e-12)
    d1 = g[1] + weight_decay * w1
    v1 = momentum * d0 + d1
    step1 = (d1 + momentum * v1 if nesterov else v1) if momentum else d1
    chk.close(w2, w1 - lrs[1] * step1, "w after step 2", SGD_HINT + (
        " The velocity holds gradients, not lr-scaled steps." if momentum else ""),
        rtol=1e-12, atol=1e-12)


@pytest.mark.task_3_2
def test_sgd_keeps_masked_weights_at_zero():
    w0 = _rng(2).normal(size=(3, 3))
    mask = (_rng(3).random((3, 3)) < 0.5).astype(np.float64)
    p = Parameter(w0 * mask)
    p.mask = mask
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-3)
    chk = Check("3.2", "a masked 3x3 weight, momentum 0.9, weight decay 1e-3, 3 steps")
    for k in range(3):
        p.grad = _rng(20 + k).normal(size=(3, 3))
        chk.call(opt.step)
    chk.close(p.data[mask == 0], np.zeros(int((mask == 0).sum())), "the masked weights",
              "Update p.data in place; Optimizer.step re-applies the mask afterwards.")


# ----- task 4.1: im2col --------------------------------------------------------------------------
IM2COL_CASES = [  # (N, C, H, W, kh, kw, stride, padding)
    (2, 1, 7, 7, 3, 3, 1, 0),
    (2, 3, 6, 5, 3, 2, 1, 0),
    (1, 2, 7, 6, 3, 3, 2, 1),
    (1, 1, 9, 8, 5, 5, 1, 2),
]
IM2COL_HINT = ("Row (n, oh, ow) holds the patch under output pixel (oh, ow) of image n; column "
               "(c, i, j) is the padded input at [n, c, oh*stride + i, ow*stride + j].")


def _conv_words(case) -> str:
    n, c, h, w, kh, kw, stride, padding = case
    return (f"x of shape ({n}, {c}, {h}, {w}), a {kh}x{kw} kernel, stride {stride}, "
            f"padding {padding}")


def _out_hw(h, w, kh, kw, stride, padding):
    return (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1


def _sampled_positions(rng, case, count=40):
    """Random (n, oh, ow, c, i, j) positions of the patch matrix, and the matrix entry each
    names: row (n*OH + oh)*OW + ow, column (c*kh + i)*kw + j."""
    n, c, h, w, kh, kw, stride, padding = case
    oh, ow = _out_hw(h, w, kh, kw, stride, padding)
    dims = (n, oh, ow, c, kh, kw)
    pos = [tuple(int(rng.integers(0, d)) for d in dims) for _ in range(count)]
    return [(b, p, q, ch, i, j, (b * oh + p) * ow + q, (ch * kh + i) * kw + j)
            for b, p, q, ch, i, j in pos]


@pytest.mark.task_4_1
@pytest.mark.parametrize("case", IM2COL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_im2col_shape_and_sampled_entries(case):
    n, c, h, w, kh, kw, stride, padding = case
    x = _rng(1).normal(size=(n, c, h, w))
    chk = Check("4.1", _conv_words(case))
    cols, out_hw = chk.call(im2col, x, kh, kw, stride, padding)
    oh, ow = _out_hw(h, w, kh, kw, stride, padding)
    chk.equal(tuple(out_hw), (oh, ow), "(OH, OW)", "OH = (H + 2 padding - kh) // stride + 1.")
    cols = chk.shape(cols, (n * oh * ow, c * kh * kw), "cols",
                     "One row per output pixel of every image, one column per (c, i, j).")
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for b, p, q, ch, i, j, row, col in _sampled_positions(_rng(2), case):
        want = xpad[b, ch, p * stride + i, q * stride + j]
        chk.true(cols[row, col] == want,
                 f"cols[{row}, {col}] (image {b}, pixel ({p}, {q}), channel {ch}, tap ({i}, "
                 f"{j})) = x_padded[{b}, {ch}, {p * stride + i}, {q * stride + j}] = {want:.4g}",
                 f"{cols[row, col]:.4g}", IM2COL_HINT)


@pytest.mark.task_4_1
def test_conv2d_forward_and_weight_gradient_through_im2col():
    case = (2, 3, 7, 6, 3, 3, 2, 1)
    x = Tensor(_rng(2).normal(size=case[:4]))  # no input gradient: col2im is task 4.2
    w0, b0 = _rng(3).normal(size=(4, 3, 3, 3)), _rng(4).normal(size=(4,))
    gy = _rng(5).normal(size=(2, 4, 4, 3))
    w, b = Tensor(w0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    wr, br = Tensor(w0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    chk = Check("4.1", "conv2d of " + _conv_words(case) + ", 4 filters, against loops")
    y = chk.call(conv2d, x, w, b, stride=2, padding=1, hint=IM2COL_HINT)
    yr = conv2d_reference(x, wr, br, stride=2, padding=1)
    hint = "cols @ w.reshape(O, -1).T is the convolution only with columns ordered (c, i, j)."
    chk.close(y.data, yr.data, "conv2d output", hint, rtol=1e-10, atol=1e-10)
    chk.call(y.backward, gy)
    yr.backward(gy)
    chk.close(w.grad, wr.grad, "weight gradient", hint, rtol=1e-10, atol=1e-10)


# ----- task 4.2: col2im --------------------------------------------------------------------------
COL2IM_HINT = ("Every entry of dcols goes back to the input pixel its im2col entry was read "
               "from; a pixel read by several patches receives the SUM; pixels in the padding "
               "are dropped.")


@pytest.mark.task_4_2
@pytest.mark.parametrize("case", IM2COL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_col2im_shape_and_sampled_pixels(case):
    n, c, h, w, kh, kw, stride, padding = case
    oh, ow = _out_hw(h, w, kh, kw, stride, padding)
    dcols = _rng(2).normal(size=(n * oh * ow, c * kh * kw))
    chk = Check("4.2", _conv_words(case) + f", dcols of shape {dcols.shape}")
    dx = chk.shape(chk.call(col2im, dcols, (n, c, h, w), kh, kw, stride, padding),
                   (n, c, h, w), "dx", "dx has the input's shape: drop the padding.")
    d = dcols.reshape(n, oh, ow, c, kh, kw)
    rng = _rng(3)
    for _ in range(25):
        b, ch, y, x = (int(rng.integers(0, s)) for s in (n, c, h, w))
        # the patches that read input pixel (y, x): oh*stride + i - padding = y, likewise x
        want = sum(d[b, p, q, ch, i, j]
                   for p in range(oh) for i in range(kh) if p * stride + i - padding == y
                   for q in range(ow) for j in range(kw) if q * stride + j - padding == x)
        chk.true(math.isclose(dx[b, ch, y, x], want, rel_tol=1e-9, abs_tol=1e-12),
                 f"dx[{b}, {ch}, {y}, {x}] = the sum of the dcols entries that read it = "
                 f"{want:.6g}", f"{dx[b, ch, y, x]:.6g}", COL2IM_HINT)


@pytest.mark.task_4_2
def test_conv2d_input_gradient_through_col2im():
    case = (2, 3, 7, 6, 3, 3, 2, 1)
    x0 = _rng(2).normal(size=case[:4])
    x = Tensor(x0.copy(), requires_grad=True)
    w = Tensor(_rng(3).normal(size=(4, 3, 3, 3)))
    gy = _rng(5).normal(size=(2, 4, 4, 3))
    chk = Check("4.2", "the input gradient of conv2d of " + _conv_words(case) + ", 4 filters")
    # x.grad by the loop convolution (no im2col: that is task 4.1), then the same gradient
    # as Conv2d.backward forms it: the patch gradients G @ W_mat, added back by col2im.
    conv2d_reference(x, w, stride=2, padding=1).backward(gy)
    g = gy.transpose(0, 2, 3, 1).reshape(-1, 4)
    dcols = g @ w.data.reshape(4, -1)
    got = chk.call(col2im, dcols, x0.shape, 3, 3, 2, 1)
    chk.close(got, x.grad, "dx = col2im(G @ W_mat)", COL2IM_HINT, rtol=1e-10, atol=1e-10)


# ----- task 5.1: cluster_strength ----------------------------------------------------------------
STRENGTH_HINT = "A_c is the sum of |w| * m over the synapses of cluster c."


@pytest.mark.task_5_1
def test_cluster_strength_kernel_filter_and_neuron():
    w = _rng(1).normal(size=(4, 3, 2, 2))
    m = (_rng(2).random(w.shape) < 0.6).astype(np.float32)
    a = np.abs(w) * m
    chk = Check("5.1", "a conv weight (4, 3, 2, 2) with a mask, granularity kernel")
    chk.close(chk.call(cluster_strength, w, m, "kernel"), a.sum(axis=(2, 3)), "A",
              STRENGTH_HINT + " A kernel is one (output map, input map) pair: shape (O, I).")
    chk = Check("5.1", "a conv weight (4, 3, 2, 2) with a mask, granularity filter")
    chk.close(chk.call(cluster_strength, w, m, "filter"), a.sum(axis=(1, 2, 3)), "A",
              STRENGTH_HINT + " A filter is one output map: shape (O,).")
    lin = _rng(3).normal(size=(5, 7))
    lm = (_rng(4).random(lin.shape) < 0.5).astype(np.float32)
    chk = Check("5.1", "a linear weight (5, 7) (out, in) with a mask, granularity neuron")
    chk.close(chk.call(cluster_strength, lin, lm, "neuron"), (np.abs(lin) * lm).sum(1), "A",
              STRENGTH_HINT + " A neuron is one output unit, a row of the (out, in) weight.")


@pytest.mark.task_5_1
def test_cluster_strength_dtype_and_dense_default():
    w = _rng(5).normal(size=(6, 2, 3, 3)).astype(np.float32)
    chk = Check("5.1", "a float32 conv weight (6, 2, 3, 3), no mask (dense), granularity kernel")
    k = chk.call(cluster_strength, w, None, "kernel")
    chk.shape(k, (6, 2), "A")
    chk.equal(np.asarray(k).dtype, np.dtype(np.float64), "A.dtype",
              "Strengths are float64 whatever the weight's dtype.")
    chk.close(k, np.abs(w.astype(np.float64)).sum(axis=(2, 3)), "A", STRENGTH_HINT,
              rtol=1e-6)


# ----- task 5.2: _probability (via synapse_probability and encode_layer) ----------------------
PROB_HINT = "p = exp(s / Z) - 1 with Z = s_ref / ln 2, so the strongest gets exactly 1."


@pytest.mark.task_5_2
def test_synapse_probability_formula_and_ends():
    w = _rng(1).normal(size=(5, 6))
    m = (_rng(2).random(w.shape) < 0.7).astype(np.float32)
    chk = Check("5.2", "synapse probabilities of a masked (5, 6) weight")
    p = chk.call(synapse_probability, w, m)
    a = np.abs(w) * m
    chk.close(p, np.exp(a / (a.max() / math.log(2))) - 1, "p", PROB_HINT, rtol=1e-12,
              atol=1e-15)
    chk.equal(np.asarray(p).dtype, np.dtype(np.float64), "p.dtype")


# The cluster probabilities: _probability applied to cluster strengths A_c (given here, so
# that the test does not need task 5.1).
@pytest.mark.task_5_2
def test_cluster_probability_formula():
    big_a = np.abs(_rng(3).normal(size=(4, 3, 2, 2))).sum(axis=(2, 3))
    chk = Check("5.2", "_probability of the kernel strengths A (4, 3) of a dense conv weight")
    p = chk.call(encoding_mod._probability, big_a)
    chk.close(p, np.exp(big_a / (big_a.max() / math.log(2))) - 1, "P", PROB_HINT, rtol=1e-12)


@pytest.mark.task_5_2
def test_probability_of_an_all_dead_layer_is_zero_without_warnings():
    import warnings

    w = _rng(4).normal(size=(3, 3))
    chk = Check("5.2", "a (3, 3) layer whose mask is all zero (nothing alive)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning
        p = chk.call(synapse_probability, w, np.zeros_like(w),
                     hint="With s_ref = 0 there is nothing to divide by: return zeros.")
    chk.close(p, np.zeros((3, 3)), "p", "Return zeros when s_ref == 0 (no 0 / 0).")


@pytest.mark.task_5_2
def test_probability_with_a_quantile_reference_is_capped_at_one():
    big_a = np.abs(_rng(5).normal(size=(8, 10))).sum(axis=1)
    ref = float(np.quantile(big_a, 0.5))
    chk = Check("5.2", f"_probability of 8 neuron strengths with reference = their median "
                       f"({ref:.4g}), below the maximum")
    p = chk.call(encoding_mod._probability, big_a, ref)
    chk.close(p, np.minimum(np.exp(big_a / (ref / math.log(2))) - 1, 1), "P",
              "With a reference below the maximum, min(1, exp(s / Z) - 1): never above 1.",
              rtol=1e-12)


@pytest.mark.task_5_2
def test_probability_with_a_tiny_reference_does_not_overflow():
    import warnings

    big_a = np.concatenate([[0.0, 0.1, 0.25], np.abs(_rng(6).normal(size=7)) * 2000.0 + 600.0])
    ref = 0.5  # far below the strongest: s / s_ref reaches thousands
    chk = Check("5.2", f"_probability of 10 strengths up to {big_a.max():.0f} with reference "
                       f"{ref} (a quantile reference far below the maximum)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        p = chk.call(encoding_mod._probability, big_a, ref,
                     hint="Cap s / s_ref at 1 BEFORE exponentiating: exp(ln 2 * s / s_ref) "
                          "overflows once s > 1024 s_ref.")
    chk.close(p, np.minimum(np.exp2(np.minimum(big_a / ref, 1.0)) - 1, 1), "P",
              "min(1, exp(s / Z) - 1): 1 for every strength at or above the reference.",
              rtol=1e-12)


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


MASK_HINT = ("M' = M AND C (one draw per cluster, spread over its synapses) AND S (one draw "
             "per synapse); draw the clusters first, then the synapses, with the rng given.")


def _cluster_of_each_synapse(keep_c, weight_shape):
    """A cluster array (cluster shape) spread over the synapses (weight shape)."""
    extra = (1,) * (len(weight_shape) - keep_c.ndim)
    return np.broadcast_to(keep_c.reshape(keep_c.shape + extra), weight_shape)


@pytest.mark.task_6_1
@pytest.mark.parametrize("shape, granularity", [((6, 4, 3, 3), "kernel"), ((7, 9), "neuron")])
def test_sample_layer_mask_draws_the_clusters_first(shape, granularity):
    # Every synapse kept for sure (p = 1, F_s = 1) and every cluster a coin flip (P = 0.5,
    # F_c = 1): the mask shows the cluster draw alone, which must use the first uniforms.
    enc = _encoding(shape, granularity, seed=1)
    enc.synapse_probability[...] = 1.0
    enc.cluster_probability[...] = 0.5
    chk = Check("6.1", f"a {granularity} layer {shape}, every P_c = 0.5, every p_j = 1, "
                       "F_c = F_s = 1, seed 7")
    mask = chk.call(sample_layer_mask, enc, EnvironmentalFactor(1.0, 1.0),
                    np.random.default_rng(7))
    chk.shape(mask, shape, "the mask")
    chk.equal(np.asarray(mask).dtype, np.dtype(np.float32), "mask.dtype",
              "Without an ancestor mask the offspring mask is float32.")
    first = np.random.default_rng(7).random(enc.cluster_probability.shape) < 0.5
    chk.close(np.asarray(mask) != 0, _cluster_of_each_synapse(first, shape),
              "live synapses (= the kept clusters)", MASK_HINT)


@pytest.mark.task_6_1
def test_sample_layer_mask_keep_rates_and_consistency():
    enc = _encoding((8, 5, 2, 2), "kernel", seed=2)
    env = EnvironmentalFactor(0.8, 0.9)
    chk = Check("6.1", "a kernel layer (8, 5, 2, 2), F_c = 0.8, F_s = 0.9, 400 samples, "
                       "return_clusters=True")
    rng = np.random.default_rng(3)
    keep_c = np.minimum(1, 0.8 * enc.cluster_probability)
    rate = _cluster_of_each_synapse(keep_c, enc.weight_shape) * np.minimum(
        1, 0.9 * enc.synapse_probability)
    total = np.zeros(enc.weight_shape)
    for _ in range(400):
        mask, clusters = chk.call(sample_layer_mask, enc, env, rng, return_clusters=True)
        m = chk.shape(mask, enc.weight_shape, "the mask") != 0
        c = chk.shape(clusters, enc.cluster_probability.shape, "the cluster draw")
        chk.true(not np.any(m & ~_cluster_of_each_synapse(c, enc.weight_shape)),
                 "no live synapse in a dropped cluster", "live synapses in dropped clusters",
                 MASK_HINT)
        total += m
    # 400 Bernoulli samples: the frequency is within 5 standard deviations of the rate.
    bound = 5 * np.sqrt(rate * (1 - rate) / 400) + 1e-9
    worst = np.unravel_index(np.argmax(np.abs(total / 400 - rate) - bound), rate.shape)
    chk.true(np.all(np.abs(total / 400 - rate) <= bound),
             f"keep frequency min(1, F_c P_c) * min(1, F_s p_j) = {rate[worst]:.3f} "
             f"(+- {bound[worst]:.3f}) at {tuple(map(int, worst))}",
             f"{total[worst] / 400:.3f}", MASK_HINT)


@pytest.mark.task_6_1
def test_sample_layer_mask_respects_the_ancestor_mask_and_dtype():
    enc = _encoding((5, 3, 2, 2), "kernel", seed=2)
    enc.synapse_probability[...] = 1.0  # only the ancestor mask removes synapses
    enc.cluster_probability[...] = 1.0
    ancestor = (_rng(3).random((5, 3, 2, 2)) < 0.5).astype(np.float64)
    chk = Check("6.1", "a kernel layer (5, 3, 2, 2) with a float64 ancestor mask, every "
                       "P_c = p_j = 1, F_c = F_s = 1")
    mask = chk.call(sample_layer_mask, enc, EnvironmentalFactor(1.0, 1.0),
                    np.random.default_rng(4), ancestor_mask=ancestor)
    chk.equal(np.asarray(mask).dtype, np.dtype(np.float64), "mask.dtype",
              "The offspring mask takes the ancestor mask's dtype.")
    chk.close(np.asarray(mask) != 0, ancestor != 0, "live synapses",
              MASK_HINT + " A synapse the ancestor lacks never comes back.")


# ----- task 6.2: expected_offspring_synapses -----------------------------------------------------
EXPECT_HINT = "E = sum_c min(1, F_c P_c) * sum_{j in c} min(1, F_s p_j); protected clusters: 1."


@pytest.mark.task_6_2
@pytest.mark.parametrize("shape, granularity, protect, f_c, f_s", [
    ((6, 4, 3, 3), "kernel", False, 0.7, 1.0), ((7, 9), "neuron", False, 0.5, 0.9),
    ((7, 9), "neuron", True, 0.7, 1.0),
])
def test_expected_offspring_synapses_formula(shape, granularity, protect, f_c, f_s):
    enc = _encoding(shape, granularity, seed=3, protect=protect)
    env = EnvironmentalFactor(f_c, f_s)
    chk = Check("6.2", f"a {granularity} layer {shape}, F_c = {f_c}, F_s = {f_s}, "
                       f"{'protected' if protect else 'unprotected'} clusters")
    keep_c = (np.ones(enc.cluster_probability.shape) if protect
              else np.minimum(1, f_c * enc.cluster_probability))
    keep_s = np.minimum(1, f_s * enc.synapse_probability)
    extra = (1,) * (len(shape) - keep_c.ndim)
    expected = float((keep_c.reshape(keep_c.shape + extra) * keep_s).sum())
    got = chk.call(expected_offspring_synapses, enc, env)
    chk.true(isinstance(got, float), "a Python float", type(got).__name__)
    chk.true(math.isclose(got, expected, rel_tol=1e-12), f"E = {expected:.6g}", f"{got:.6g}",
             EXPECT_HINT)


# ----- task 7.1: kernel_csr ----------------------------------------------------------------------
CSR_HINT = ("indptr[o]..indptr[o+1] are the live kernels of output map o; a kernel is live when "
            "any of its kh*kw mask entries is nonzero; input maps increase within a row.")


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
    chk = Check("7.1", "a conv weight (5, 4, 3, 3) with dead taps, dead kernels and a dead "
                       "output map 2")
    indptr, indices, kernels = chk.call(kernel_csr, w, mask)
    chk.equal(np.asarray(indptr).dtype, np.dtype(np.int32), "indptr.dtype", "int32 for CUDA.")
    chk.equal(np.asarray(indices).dtype, np.dtype(np.int32), "indices.dtype", "int32 for CUDA.")
    chk.equal(np.asarray(kernels).dtype, np.dtype(np.float32), "kernels.dtype",
              "float32 for CUDA.")
    chk.shape(indptr, (6,), "indptr", "O + 1 row pointers, starting at 0.")
    chk.equal(int(indptr[0]), 0, "indptr[0]", CSR_HINT)
    for row in range(5):
        live = [i for i in range(4) if mask[row, i].any()]
        got = [int(v) for v in np.asarray(indices)[indptr[row] : indptr[row + 1]]]
        chk.equal(got, live, f"input maps of row {row}", CSR_HINT)
        for k, i in zip(range(indptr[row], indptr[row + 1]), live):
            chk.close(kernels[k], (w[row, i] * mask[row, i]).astype(np.float32),
                      f"kernels[{k}] (row {row}, input map {i})",
                      "A kernel holds weight * mask: the masked taps are 0.", rtol=1e-6)


@pytest.mark.task_7_1
@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1)])
def test_csr_convolution_of_kernel_csr_equals_the_masked_dense_one(stride, padding):
    w, mask = _masked_conv_weight(3)
    bias = _rng(4).normal(size=(5,))
    x = _rng(5).normal(size=(2, 4, 7, 7))
    chk = Check("7.1", f"conv of x (2, 4, 7, 7) with a masked weight (5, 4, 3, 3), stride "
                       f"{stride}, padding {padding}, through kernel_csr")
    indptr, indices, kernels = chk.call(kernel_csr, w, mask)
    got = chk.call(csr_conv2d, x, indptr, indices, kernels, bias, stride, padding,
                   hint=CSR_HINT)
    chk.close(got, masked_conv2d(x, w.astype(np.float32), bias, mask, stride, padding), "y",
              CSR_HINT, rtol=1e-5, atol=1e-5)


# ----- task 7.2: the CUDA kernel's tile loop -----------------------------------------------------
#: The kernel source graded: the copy's own (the wrong-answer tests point it elsewhere).
CONV_SOURCE = None
KERNEL_HINT = ("Loop over the live kernels indptr[o]..indptr[o+1] in tiles: all threads load "
               "a tile into w_tile/c_tile, __syncthreads(), each active thread adds "
               "w * x[c, oh*stride - pad + ky, ow*stride - pad + kx] for the taps inside the "
               "image, __syncthreads() again before the next tile.")


@functools.cache
def _emulated_conv(source):
    module = emulate.EmulatedModule(source, sanitize="address")
    if module.sanitizer != "address" and os.environ.get("MINIEVO_REQUIRE_SANITIZERS") == "1":
        raise RuntimeError("AddressSanitizer does not run here, and MINIEVO_REQUIRE_SANITIZERS=1 "
                           "requires it")
    return module.get_function(gpu.CONV_KERNEL)


def _csr_layer(rng, o, c, k, live_per_row):
    """A random cluster-sparse layer given by its CSR arrays (rows of sorted input maps), and
    the same layer as a dense weight and mask."""
    counts = [min(c, n) for n in live_per_row]
    indices = np.concatenate([np.sort(rng.choice(c, size=n, replace=False)) for n in counts])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    kernels = rng.standard_normal((len(indices), k, k)).astype(np.float32)
    weight = np.zeros((o, c, k, k), np.float32)
    for row in range(o):
        for s in range(indptr[row], indptr[row + 1]):
            weight[row, indices[s]] = kernels[s]
    return indptr, indices.astype(np.int32), kernels, weight, (weight != 0).astype(np.float32)


CUDA_CASES = [  # n, c, h, w, o, k, stride, padding, layout, threads, live kernels per row
    (2, 5, 8, 8, 4, 3, 1, 1, "CHWN", None, [3, 0, 5, 2]),
    (1, 3, 11, 7, 2, 5, 2, 2, "NCHW", 32, [2, 3]),
    (1, 120, 6, 6, 2, 5, 1, 0, "NCHW", 32, [100, 7]),  # 100 live 5x5 kernels: two tiles
]


@pytest.mark.task_7_2
@pytest.mark.parametrize("case", CUDA_CASES, ids=["pad1", "stride2", "two-tiles"])
def test_cuda_conv_kernel_matches_the_dense_convolution(case):
    n, c, h, w, o, k, stride, padding, layout, threads, per_row = case
    chk = Check("7.2", f"x ({n}, {c}, {h}, {w}) in layout {layout}, {o} output maps with "
                       f"{per_row} live {k}x{k} kernels, stride {stride}, padding {padding}, "
                       f"{threads or 'default'} threads per block")
    rng = _rng(sum(case[:8]))
    indptr, indices, kernels, weight, mask = _csr_layer(rng, o, c, k, per_row)
    bias = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    want = masked_conv2d(x, weight, bias, mask, stride, padding)
    if emulate.gpp_path() is None:
        chk.fail("g++ to compile the kernel with cuda_emu.h", "no g++ on PATH",
                 "Install g++ (apt-get install g++) or set $CXX.")
    source = CONV_SOURCE or kernel_path(gpu.CONV_FILE)
    kernel = chk.call(_emulated_conv, source, hint="The kernel must compile with g++ "
                      "-Wall -Wextra -Werror and cuda_emu.h; the message has the log.")
    asan = "on" if getattr(kernel.module, "sanitizer", None) == "address" else "off"
    runs = [(f"emulated on the CPU (AddressSanitizer {asan})", kernel, lambda a: a)]
    if backend.cupy_available():
        from minievo.kernels import get_kernel

        runs.append(("on the GPU through CuPy", get_kernel(gpu.CONV_FILE, gpu.CONV_KERNEL),
                     lambda a: backend.to_backend(a, "cupy")))
    xin = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(1, 2, 3, 0))
    for where, kern, dev in runs:
        y = chk.call(gpu.launch_conv2d, kern, dev(xin), dev(indptr), dev(indices), dev(kernels),
                     dev(bias), stride, padding, layout=layout, threads=threads,
                     hint=f"The run {where} failed: an out-of-bounds read (check the taps "
                          "against the image borders) or a divergent __syncthreads().")
        y = backend.to_numpy(y)
        y = y if layout == "NCHW" else y.transpose(3, 0, 1, 2)
        chk.close(y, want, f"y ({where})", KERNEL_HINT, rtol=1e-4, atol=1e-4)
