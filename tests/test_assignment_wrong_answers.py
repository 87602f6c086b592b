"""Plausible WRONG answers to every assignment task, each of which the visible tests must catch
with a hint (a :class:`~minievo.feedback.TaskFailure` naming the case and the chapter section).

Each wrong answer replaces the task's reference code for the duration of a test (the CUDA
ones are edited copies of the kernel source); the visible task tests then run in-process, every
parametrised case, and at least one must fail, every failure through the tests' own checks
(never a bare crash). The same runner must find no failure with the reference code. This file
stays with the instructor; it is not copied into student copies.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from minievo import autograd, optim
from minievo.evolution import encoding as enc_mod
from minievo.evolution import environment as env_mod
from minievo.evolution import synthesis as syn_mod
from minievo.feedback import TaskFailure
from minievo.functions import conv as conv_mod
from minievo.functions import math as math_mod
from minievo.functions import nn as nn_mod
from minievo.kernels import emulate
from minievo.sparse import reference as ref_mod

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "visible_assignment_tasks", REPO / "tests" / "assignments" / "test_assignment_tasks.py")
VISIBLE = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(VISIBLE)


def _cases(fn):
    """The keyword arguments of every parametrised case of a test function."""
    combos = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        new = []
        for values in mark.args[1]:
            values = getattr(values, "values", values)  # a pytest.param
            values = tuple(values) if len(names) > 1 else (values,)
            new += [{**c, **dict(zip(names, values))} for c in combos]
        combos = new
    return combos


def _failures(task_id: str) -> list[tuple[str, BaseException]]:
    """Run every visible test of the task, every case; the failures."""
    marker = "task_" + task_id.replace(".", "_")
    tests = [fn for name, fn in vars(VISIBLE).items() if name.startswith("test_")
             and any(m.name == marker for m in getattr(fn, "pytestmark", []))]
    assert tests, task_id
    found = []
    for fn in tests:
        for kwargs in _cases(fn):
            try:
                fn(**kwargs)
            except Exception as exc:  # noqa: BLE001 - recorded and judged below
                found.append((f"{fn.__name__}{kwargs}", exc))
    return found


def _patch(monkeypatch, module, name, value):
    """Replace ``module.name`` (and the visible tests' own import of it)."""
    original = getattr(module, name)
    monkeypatch.setattr(module, name, value)
    if getattr(VISIBLE, name, None) is original:
        monkeypatch.setattr(VISIBLE, name, value)


# ----- the wrong answers, task by task -----------------------------------------------------------
def _mul(ga, gb, respect_needs_grad=True):
    def backward(self, gy):
        a, b = ga(self, gy), gb(self, gy)
        if respect_needs_grad:
            a = a if self.needs_grad[0] else None
            b = b if self.needs_grad[1] else None
        return a, b
    return backward


def _matmul(ga, gb, respect_needs_grad=True):
    return _mul(ga, gb, respect_needs_grad)


def _sum_to_only_leading(g, shape):
    return g.sum(axis=tuple(range(g.ndim - len(shape))))


def _sum_to_axes(g, shape):
    lead = g.ndim - len(shape)
    return tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and g.shape[i + lead] != 1)


def _sum_to_keeps_leading(g, shape):
    return g.sum(axis=_sum_to_axes(g, shape), keepdims=True) if g.shape != tuple(shape) else g


def _sum_to_mean(g, shape):
    if g.shape == tuple(shape):
        return g
    return g.mean(axis=_sum_to_axes(g, shape), keepdims=True).reshape(shape)


def _ce(scale_by_n=True, use_gy=True, sign=1.0, one_hot=True):
    def backward(self, gy):
        n = self.p.shape[0]
        g = self.p.copy()
        if one_hot:
            g[np.arange(n), self.labels] -= 1
        g = sign * g
        if scale_by_n:
            g = g / n
        return (g * gy if use_gy else g), None
    return backward


def _sgd(variant):
    def update(self, p, g, state):
        m, wd = self.momentum, self.weight_decay
        if variant != "no weight decay" and variant != "decay after momentum":
            g = g + wd * p.data
        if m:
            v = state.get("velocity")
            if variant == "lr inside the velocity (Caffe)":
                v = state["velocity"] = self.lr * g if v is None else m * v + self.lr * g
                p.data -= v
                return
            if variant == "moving average velocity":
                v = state["velocity"] = (1 - m) * g if v is None else m * v + (1 - m) * g
            else:
                v = state["velocity"] = g.copy() if v is None else m * v + g
            step = g + m * v if self.nesterov and variant != "nesterov ignored" else v
        else:
            step = g
        if variant == "decay after momentum":
            step = step + wd * p.data
        p.data -= self.lr * step
    return update


def _im2col(col_order="cij", row_order="nhw", use_stride=True, use_padding=True, plus_one=True):
    def im2col(x, kh, kw, stride=1, padding=0):
        pad = padding if use_padding else 0
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        n, c, h, w = xp.shape
        oh = (h - kh) // stride + (1 if plus_one else 0)
        ow = (w - kw) // stride + (1 if plus_one else 0)
        s = stride if use_stride else 1
        rows = []
        order = itertools.product(range(n), range(oh), range(ow)) if row_order == "nhw" else \
            ((b, p, q) for p, q, b in itertools.product(range(oh), range(ow), range(n)))
        for b, p, q in order:
            patch = xp[b, :, p * s : p * s + kh, q * s : q * s + kw]
            rows.append((patch if col_order == "cij" else patch.transpose(1, 2, 0)).reshape(-1))
        return np.array(rows).reshape(n * oh * ow, -1), (oh, ow)
    return im2col


def _col2im(add=True, crop=True, use_stride=True, col_order="cij"):
    def col2im(dcols, x_shape, kh, kw, stride=1, padding=0):
        n, c, h, w = x_shape
        oh = (h + 2 * padding - kh) // stride + 1
        ow = (w + 2 * padding - kw) // stride + 1
        d = (dcols.reshape(n, oh, ow, c, kh, kw) if col_order == "cij"
             else dcols.reshape(n, oh, ow, kh, kw, c).transpose(0, 1, 2, 5, 3, 4))
        dx = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
        s = stride if use_stride else 1
        for b, p, q, i, j in itertools.product(range(n), range(oh), range(ow), range(kh),
                                               range(kw)):
            if add:
                dx[b, :, p * s + i, q * s + j] += d[b, p, q, :, i, j]
            else:
                dx[b, :, p * s + i, q * s + j] = d[b, p, q, :, i, j]
        return dx[:, :, padding : padding + h, padding : padding + w] if crop else dx
    return col2im


_AXES = {"kernel": (2, 3), "filter": (1, 2, 3), "neuron": (1,)}


def _strength(use_mask=True, use_abs=True, axes=None, keep_dtype=False):
    def cluster_strength(weight, mask=None, granularity="kernel"):
        w = np.asarray(weight)
        s = np.abs(w) if use_abs else w
        if mask is not None and use_mask:
            s = s * mask
        s = s.sum(axis=(axes or _AXES)[granularity])
        return s if keep_dtype else s.astype(np.float64)
    return cluster_strength


def _probability(minus_one=True, ln2=True, cap=True, guard=True):
    def probability(strength, reference=None):
        s_ref = float(strength.max()) if reference is None else reference
        if guard and s_ref == 0:
            return np.zeros(strength.shape)
        z = s_ref / np.log(2) if ln2 else s_ref
        p = np.exp(strength / z) - (1 if minus_one else 0)
        return np.minimum(p, 1) if cap and reference is not None else p
    return probability


def _sample(order="clusters first", clusters=True, ancestor=True, keep_dtype=True):
    def sample_layer_mask(encoding, env, rng, ancestor_mask=None, dtype=None,
                          return_clusters=False):
        if order == "clusters first":
            kept_c = syn_mod.draw_clusters(encoding, env, rng)
            kept_s = syn_mod.draw_synapses(encoding, env, rng)
        else:
            kept_s = syn_mod.draw_synapses(encoding, env, rng)
            kept_c = syn_mod.draw_clusters(encoding, env, rng)
        keep = (encoding.to_synapses(kept_c) & kept_s) if clusters else kept_s
        if ancestor and ancestor_mask is not None:
            keep = keep & (ancestor_mask != 0)
        if dtype is None:
            dtype = ancestor_mask.dtype if ancestor_mask is not None and keep_dtype \
                else np.float32
        mask = keep.astype(dtype)
        return (mask, kept_c) if return_clusters else mask
    return sample_layer_mask


def _expected(variant):
    def expected_offspring_synapses(encoding, env):
        protected = encoding.protect_clusters and variant != "protection ignored"
        if variant == "F_s for the clusters":
            env = env_mod.EnvironmentalFactor(env.f_s, env.f_s)
        c = env.cluster_keep_probability(encoding.cluster_probability, protected=protected)
        s = env.synapse_keep_probability(encoding.synapse_probability)
        if variant == "clusters ignored":
            return float(s.sum())
        if variant == "average cluster":
            return float(c.mean() * s.sum())
        return float((encoding.to_synapses(c) * s).sum())
    return expected_offspring_synapses


def _csr(keep_dead=False, index_dtype=np.int32, masked=True, leading_zero=True,
         kernel_dtype=np.float32):
    def kernel_csr(weight, mask):
        w = np.asarray(weight, dtype=np.float64)
        live = (np.asarray(mask) != 0)
        o, c = w.shape[:2]
        pairs = np.ones((o, c), bool) if keep_dead else live.reshape(o, c, -1).any(axis=2)
        rows, cols = np.nonzero(pairs)
        counts = np.cumsum(np.bincount(rows, minlength=o))
        indptr = np.concatenate([[0], counts]) if leading_zero else counts
        kernels = (w * live if masked else w)[rows, cols]
        return (indptr.astype(np.int32), cols.astype(index_dtype),
                np.ascontiguousarray(kernels, dtype=kernel_dtype))
    return kernel_csr


WRONG = {
    "2.1": {
        "ignores needs_grad": (math_mod.Mul, "backward",
                               _mul(lambda s, gy: gy * s.b, lambda s, gy: gy * s.a, False)),
        "swaps the inputs": (math_mod.Mul, "backward",
                             _mul(lambda s, gy: gy * s.a, lambda s, gy: gy * s.b)),
        "forgets gy": (math_mod.Mul, "backward", _mul(lambda s, gy: s.b, lambda s, gy: s.a)),
        "passes gy through": (math_mod.Mul, "backward", _mul(lambda s, gy: gy, lambda s, gy: gy)),
    },
    "2.2": {
        "ignores needs_grad": (math_mod.MatMul, "backward", _matmul(
            lambda s, gy: gy @ s.b.T, lambda s, gy: s.a.T @ gy, False)),
        "no transposes": (math_mod.MatMul, "backward", _matmul(
            lambda s, gy: gy @ s.b, lambda s, gy: s.a @ gy)),
        "gradient of B transposed": (math_mod.MatMul, "backward", _matmul(
            lambda s, gy: gy @ s.b.T, lambda s, gy: gy.T @ s.a)),
        "products in the wrong order": (math_mod.MatMul, "backward", _matmul(
            lambda s, gy: s.b.T @ gy if s.b.shape[1] == gy.shape[0] else gy @ s.b,
            lambda s, gy: gy @ s.a.T if gy.shape[1] == s.a.shape[1] else s.a @ gy)),
    },
    "2.3": {
        "sums only the added leading axes": (autograd, "sum_to", _sum_to_only_leading),
        "keeps the added leading axes": (autograd, "sum_to", _sum_to_keeps_leading),
        "mean instead of sum": (autograd, "sum_to", _sum_to_mean),
        "reshape instead of sum": (autograd, "sum_to", lambda g, shape: g.reshape(shape)),
    },
    "3.1": {
        "forgets 1/N": (nn_mod.SoftmaxCrossEntropy, "backward", _ce(scale_by_n=False)),
        "ignores gy": (nn_mod.SoftmaxCrossEntropy, "backward", _ce(use_gy=False)),
        "sign flipped": (nn_mod.SoftmaxCrossEntropy, "backward", _ce(sign=-1.0)),
        "forgets the one-hot": (nn_mod.SoftmaxCrossEntropy, "backward", _ce(one_hot=False)),
    },
    "3.2": {name: (optim.SGD, "_update", _sgd(name)) for name in (
        "no weight decay", "nesterov ignored", "lr inside the velocity (Caffe)",
        "decay after momentum", "moving average velocity")},
    "4.1": {
        "columns ordered (i, j, c)": (conv_mod, "im2col", _im2col(col_order="ijc")),
        "rows ordered (oh, ow, n)": (conv_mod, "im2col", _im2col(row_order="hwn")),
        "stride ignored in the patch position": (conv_mod, "im2col", _im2col(use_stride=False)),
        "no padding": (conv_mod, "im2col", _im2col(use_padding=False)),
        "output size without the +1": (conv_mod, "im2col", _im2col(plus_one=False)),
    },
    "4.2": {
        "assigns instead of adding": (conv_mod, "col2im", _col2im(add=False)),
        "keeps the padding": (conv_mod, "col2im", _col2im(crop=False)),
        "stride ignored": (conv_mod, "col2im", _col2im(use_stride=False)),
        "columns read as (i, j, c)": (conv_mod, "col2im", _col2im(col_order="ijc")),
    },
    "5.1": {
        "forgets the mask": (enc_mod, "cluster_strength", _strength(use_mask=False)),
        "forgets the absolute value": (enc_mod, "cluster_strength", _strength(use_abs=False)),
        "filter summed over the taps only": (enc_mod, "cluster_strength", _strength(
            axes={**_AXES, "filter": (2, 3)})),
        "neuron summed over the outputs": (enc_mod, "cluster_strength", _strength(
            axes={**_AXES, "neuron": (0,)})),
        "keeps the weight's dtype": (enc_mod, "cluster_strength", _strength(keep_dtype=True)),
    },
    "5.2": {
        "forgets the -1": (enc_mod, "_probability", _probability(minus_one=False)),
        "Z without ln 2": (enc_mod, "_probability", _probability(ln2=False)),
        "no cap at 1": (enc_mod, "_probability", _probability(cap=False)),
        "0 / 0 for a dead layer": (enc_mod, "_probability", _probability(guard=False)),
    },
    "6.1": {
        "synapses drawn before clusters": (syn_mod, "sample_layer_mask",
                                           _sample(order="synapses first")),
        "no cluster draw": (syn_mod, "sample_layer_mask", _sample(clusters=False)),
        "ancestor mask ignored": (syn_mod, "sample_layer_mask", _sample(ancestor=False)),
        "always float32": (syn_mod, "sample_layer_mask", _sample(keep_dtype=False)),
    },
    "6.2": {name: (env_mod, "expected_offspring_synapses", _expected(name)) for name in (
        "clusters ignored", "protection ignored", "average cluster", "F_s for the clusters")},
    "7.1": {
        "keeps dead kernels": (ref_mod, "kernel_csr", _csr(keep_dead=True)),
        "int64 indices": (ref_mod, "kernel_csr", _csr(index_dtype=np.int64)),
        "kernels not masked": (ref_mod, "kernel_csr", _csr(masked=False)),
        "indptr without the leading 0": (ref_mod, "kernel_csr", _csr(leading_zero=False)),
        "float64 kernels": (ref_mod, "kernel_csr", _csr(kernel_dtype=np.float64)),
    },
}

#: Wrong tile loops for task 7.2: edits of the reference kernel's source.
WRONG_CUDA = {
    "no check against the image borders (reads the padding from memory)": [
        ("if (ih < 0 || ih >= H) continue;", ""), ("if (iw < 0 || iw >= W) continue;", "")],
    "only the first tile": [("first < end; first += per_tile",
                             "first < end && first == begin; first += per_tile")],
    "input map s instead of c_tile[s]": [("const int c = c_tile[s];", "const int c = s;")],
    "stride ignored": [("const int ih = ih0 + ky;", "const int ih = ih0 / stride + ky;"),
                       ("const int iw = iw0 + kx;", "const int iw = iw0 / stride + kx;")],
    "bias added again per tile": [("__syncthreads();\n        if (active) {",
                                   "__syncthreads();\n        acc += bias[o];\n"
                                   "        if (active) {")],
}

CASES = [(task, name) for task, answers in WRONG.items() for name in answers]


def _assert_caught(task_id: str, failures) -> None:
    assert failures, f"task {task_id}: the wrong answer passes every visible test"
    for where, exc in failures:
        assert isinstance(exc, TaskFailure), f"{where}: not a task check: {exc!r}"
        assert exc.case and exc.expected and exc.got, where
        assert f"Reread chapter {task_id.split('.')[0]}, section" in exc.hint, where


def test_the_reference_passes_every_visible_case():
    for task_id in {*WRONG, "7.2"}:
        assert _failures(task_id) == [], task_id


@pytest.mark.parametrize("task_id, name", CASES, ids=[f"{t}-{n}" for t, n in CASES])
def test_a_wrong_answer_is_caught_with_a_hint(task_id, name, monkeypatch):
    owner, attr, wrong = WRONG[task_id][name]
    if isinstance(owner, type):
        monkeypatch.setattr(owner, attr, wrong)
    else:
        _patch(monkeypatch, owner, attr, wrong)
    _assert_caught(task_id, _failures(task_id))


@pytest.mark.skipif(emulate.gpp_path() is None, reason="g++ is not installed (CI has it)")
@pytest.mark.parametrize("name", list(WRONG_CUDA))
def test_a_wrong_cuda_tile_loop_is_caught_with_a_hint(name, monkeypatch, tmp_path):
    source = (REPO / "minievo" / "kernels" / "sparse_conv2d.cu").read_text()
    for old, new in WRONG_CUDA[name]:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    path = tmp_path / "sparse_conv2d.cu"
    path.write_text(source)
    monkeypatch.setattr(VISIBLE, "CONV_SOURCE", path)
    _assert_caught("7.2", _failures("7.2"))


def test_every_task_has_wrong_answers():
    from minievo.assignments import TASKS

    assert {t.id for t in TASKS} == {*WRONG, "7.2"}
    assert all(len(answers) >= 4 for answers in WRONG.values())
    assert len(WRONG_CUDA) >= 4
