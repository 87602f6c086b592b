"""Optimisers (update rules, masks) and learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minievo.functions as F
from minievo import layers as L
from minievo.autograd import Parameter, Tensor
from minievo.backend import to_numpy
from minievo.optim import SGD, Adam, InvLR, StepLR

OPTIMISERS = {
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "sgd_momentum_wd": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    "adam": lambda ps: Adam(ps, lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_masked_weights_and_state_stay_exactly_zero(name, xp):
    rng = np.random.default_rng(0)
    net = L.Sequential(L.Conv2d(1, 3, 3), L.ReLU(), L.Flatten(), L.Linear(3 * 4 * 4, 4))
    masks = {}
    for key, layer in L.prunable_layers(net):
        m = (rng.random(layer.weight.shape) > 0.5).astype(np.float32)
        layer.set_mask(xp.asarray(m))
        masks[key] = m
    opt = OPTIMISERS[name](net.parameters())
    x = Tensor(xp.asarray(rng.standard_normal((8, 1, 6, 6)), dtype=xp.float32))
    y = xp.asarray(rng.integers(0, 4, size=8))
    w0 = {k: to_numpy(layer.weight.data).copy() for k, layer in L.prunable_layers(net)}
    for _ in range(25):
        opt.zero_grad()
        F.softmax_cross_entropy(net(x), y).backward()
        opt.step()
    for key, layer in L.prunable_layers(net):
        w = to_numpy(layer.weight.data)
        dead = masks[key] == 0
        assert np.all(w[dead] == 0), f"{name}: masked weights of layer {key} moved"
        assert not np.allclose(w[~dead], w0[key][~dead]), "live weights should train"
        state = opt.state[opt.params.index(layer.weight)]
        arrays = [v for v in state.values() if hasattr(v, "shape")]
        assert arrays or name == "sgd", "the optimiser keeps state for the weight"
        for v in arrays:
            assert np.all(to_numpy(v)[dead] == 0), f"{name}: state of masked entries non-zero"


def _param(xp, values):
    return Parameter(xp.asarray(values, dtype=xp.float64))


def test_sgd_momentum_weight_decay_update_rule(xp):
    p = _param(xp, [1.0, -2.0])
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    w, v = np.array([1.0, -2.0]), np.zeros(2)
    for g in ([1.0, 1.0], [0.5, -1.0], [0.0, 2.0]):
        p.grad = xp.asarray(g)
        opt.step()
        d = np.array(g) + 0.5 * w
        v = 0.9 * v + d if v.any() else d
        w = w - 0.1 * v
        np.testing.assert_allclose(to_numpy(p.data), w, rtol=1e-12)


def test_sgd_nesterov_update_rule(xp):
    p = _param(xp, [1.0])
    opt = SGD([p], lr=0.1, momentum=0.5, nesterov=True)
    w, v = 1.0, None
    for g in (1.0, 2.0, -1.0):
        p.grad = xp.asarray([g])
        opt.step()
        v = g if v is None else 0.5 * v + g
        w -= 0.1 * (g + 0.5 * v)
        assert math.isclose(float(p.data[0]), w, rel_tol=1e-12)


def test_adam_update_rule(xp):
    p = _param(xp, [1.0, -1.0])
    opt = Adam([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    w, m, v = np.array([1.0, -1.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(([0.1, -3.0], [0.2, 1.0], [-0.5, 0.0]), start=1):
        p.grad = xp.asarray(g)
        opt.step()
        g = np.array(g)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        mhat, vhat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        # minievo (like Caffe and PyTorch) adds eps to sqrt(v), before bias correction
        w = w - 0.01 * mhat / (np.sqrt(vhat) + 1e-8 / math.sqrt(1 - 0.999**t))
        np.testing.assert_allclose(to_numpy(p.data), w, rtol=1e-6)
    # the first step of Adam moves every weight by about lr, whatever the gradient's scale
    q = _param(xp, [0.0, 0.0])
    q.grad = xp.asarray([0.1, 1e3])
    Adam([q], lr=0.01).step()
    np.testing.assert_allclose(to_numpy(q.data), [-0.01, -0.01], rtol=1e-4)


def test_parameters_without_grad_are_skipped(xp):
    p, q = _param(xp, [1.0]), _param(xp, [2.0])
    p.grad = xp.asarray([1.0])
    opt = SGD([p, q], lr=0.5)
    opt.step()
    assert float(p.data[0]) == 0.5 and float(q.data[0]) == 2.0
    opt.zero_grad()
    assert p.grad is None


def test_optimiser_argument_errors(xp):
    p = _param(xp, [1.0])
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        SGD([p], lr=0)
    with pytest.raises(ValueError, match="momentum"):
        SGD([p], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="weight_decay"):
        SGD([p], lr=0.1, weight_decay=-1)


def test_optimiser_state_dict_round_trip(xp):
    p = _param(xp, [1.0, 2.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = xp.asarray([1.0, 1.0])
    opt.step()
    state = opt.state_dict()
    q = _param(xp, [1.0, 2.0])
    opt2 = SGD([q], lr=0.5, momentum=0.9)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.1 and opt2.iterations == 1
    np.testing.assert_array_equal(to_numpy(opt2.state[0]["velocity"]), [1.0, 1.0])


def test_step_lr_values(xp):
    opt = SGD([_param(xp, [0.0])], lr=0.1)
    sched = StepLR(opt, step_size=3, gamma=0.5)
    want = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
    assert [sched.lr_at(i) for i in range(8)] == pytest.approx(want, rel=1e-12)
    for it in range(8):  # step() reads the optimiser's iteration counter
        opt.iterations = it
        sched.step()
        assert opt.lr == pytest.approx(want[it], rel=1e-12)


def test_inv_lr_values(xp):
    # Caffe's LeNet solver: base_lr 0.01, gamma 1e-4, power 0.75
    opt = SGD([_param(xp, [0.0])], lr=0.01)
    sched = InvLR(opt, gamma=1e-4, power=0.75)
    assert sched.lr_at(0) == pytest.approx(0.01, rel=1e-12)
    assert sched.lr_at(10000) == pytest.approx(0.01 * 2 ** -0.75, rel=1e-12)
    assert sched.lr_at(5000) == pytest.approx(0.01 * 1.5 ** -0.75, rel=1e-12)
    opt.iterations = 10000
    sched.step()
    assert opt.lr == pytest.approx(0.0059460355750136, rel=1e-10)
