"""The autograd engine: graph traversal, accumulation, broadcasting, no_grad, errors."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import minievo.functions as F
from minievo.autograd import Function, Parameter, Tensor, no_grad
from minievo.testing import assert_allclose_backends


def _t(xp, values, grad=True):
    return Tensor(xp.asarray(values, dtype=xp.float64), requires_grad=grad)


def test_reused_node(xp):
    # y = x*x + x uses x three times: dy/dx = 2x + 1
    x = _t(xp, [1.0, -2.0, 3.0])
    (x * x + x).sum().backward()
    assert_allclose_backends(x.grad, [3.0, -3.0, 7.0])


def test_diamond(xp):
    # a -> b = 2a, c = a^2 -> d = b * c = 2a^3: dd/da = 6a^2, counted once per path
    a = _t(xp, [1.0, 2.0])
    b = a * 2
    c = a * a
    (b * c).sum().backward()
    assert_allclose_backends(a.grad, [6.0, 24.0])


def test_intermediate_used_twice(xp):
    # h = exp(x) feeds two branches; its gradient must be summed before flowing to x
    x = _t(xp, [0.0, 1.0])
    h = F.exp(x)
    (h * 3 + h * h).sum().backward()
    ex = np.exp([0.0, 1.0])
    assert_allclose_backends(x.grad, 3 * ex + 2 * ex * ex)


def test_deep_chain_has_no_recursion_limit(xp):
    x = _t(xp, [1.0])
    y = x
    for _ in range(3000):
        y = y + 0.0
    y.sum().backward()
    assert_allclose_backends(x.grad, [1.0])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_broadcasting_in_binary_ops(op, xp):
    rng = np.random.default_rng(0)
    a_np = rng.uniform(1, 2, (2, 3, 4))
    b_np = rng.uniform(1, 2, (3, 1))
    a, b = _t(xp, a_np), _t(xp, b_np)
    getattr(F, op)(a, b).sum().backward()
    assert a.grad.shape == a_np.shape and b.grad.shape == b_np.shape
    ones = np.ones((2, 3, 4))
    want_a = {"add": ones, "sub": ones, "mul": ones * b_np, "div": ones / b_np}[op]
    want_b = {"add": ones, "sub": -ones, "mul": ones * a_np,
              "div": -a_np / b_np**2}[op].sum(axis=(0, 2))[:, None]
    assert_allclose_backends(a.grad, want_a, rtol=1e-12)
    assert_allclose_backends(b.grad, want_b, rtol=1e-12)


def test_broadcasting_with_scalar_and_rank0(xp):
    x = _t(xp, [[1.0, 2.0], [3.0, 4.0]])
    s = _t(xp, 2.0)
    (x * s + 1).sum().backward()
    assert s.grad.shape == ()
    assert float(s.grad) == 10.0
    assert_allclose_backends(x.grad, np.full((2, 2), 2.0))


def test_backward_twice_accumulates(xp):
    x = _t(xp, [1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    y.backward()
    assert_allclose_backends(x.grad, [4.0, 8.0])


def test_backward_twice_does_not_leak_between_leaves(xp):
    # Regression: Add hands the same gradient array to both inputs; if two leaves shared it,
    # accumulating into one would change the other.
    a, b = _t(xp, [1.0]), _t(xp, [2.0])
    y = a + b
    y.backward(xp.ones(1))
    assert a.grad is not b.grad
    y.backward(xp.ones(1))
    assert_allclose_backends(a.grad, [2.0])
    assert_allclose_backends(b.grad, [2.0])


def test_leaf_grad_never_aliases_a_pending_gradient(xp):
    # y = (x + u) + x * u with u = 2x, so dy/dx = 3 + 4x. Add hands x the same array it leaves
    # pending for u; the mul then adds into x's gradient before u's creator has run. Writing
    # in place into x.grad once corrupted u's pending gradient (this gave 11 instead of 7).
    x = _t(xp, [1.0])
    u = x * 2.0
    y = (x + u) + x * u
    y.backward(xp.ones(1))
    assert_allclose_backends(x.grad, [7.0])


def test_caller_grad_is_not_modified(xp):
    x = _t(xp, [1.0, 2.0])
    g = xp.asarray([1.0, 1.0])
    y = x + 0.0
    y.backward(g)
    y.backward(g)
    assert_allclose_backends(g, [1.0, 1.0])
    assert_allclose_backends(x.grad, [2.0, 2.0])


def test_backward_on_leaf(xp):
    x = _t(xp, [1.0, 2.0])
    x.backward()
    assert_allclose_backends(x.grad, [1.0, 1.0])


def test_backward_grad_shape_checked(xp):
    y = _t(xp, [1.0, 2.0]) * 2
    with pytest.raises(ValueError, match="grad has shape"):
        y.backward(xp.ones(3))


def test_no_grad_builds_no_graph(xp):
    x = _t(xp, [1.0, 2.0])
    with no_grad():
        y = x * 2 + 1
    assert not y.requires_grad and y.creator is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    # and the switch is restored afterwards
    z = x * 2
    assert z.requires_grad and z.creator is not None


def test_backward_on_tensor_without_grad_raises(xp):
    x = Tensor(xp.ones(2))
    with pytest.raises(RuntimeError, match="does not require grad"):
        (x * 2).sum().backward()


def test_gradient_only_for_inputs_that_need_it(xp):
    x, c = _t(xp, [1.0, 2.0]), _t(xp, [3.0, 4.0], grad=False)
    (x * c).sum().backward()
    assert c.grad is None
    assert_allclose_backends(x.grad, [3.0, 4.0])


def test_parameter_requires_grad_and_has_no_mask(xp):
    p = Parameter(xp.zeros(3))
    assert p.requires_grad and p.mask is None


def test_detach_cuts_the_graph(xp):
    x = _t(xp, [2.0])
    y = (x * x).detach() * x
    y.sum().backward()
    assert_allclose_backends(x.grad, [4.0])  # d(c * x)/dx with c = x^2 treated as constant


def test_finished_graph_is_freed_without_the_cycle_collector(xp):
    # Regression: output <-> creator references formed a cycle, so every step's graph (and the
    # im2col buffers it holds) waited for Python's cycle collector.
    gc.disable()
    try:
        x = _t(xp, np.ones((1, 1, 4, 4)))
        w = _t(xp, np.ones((1, 1, 3, 3)))
        y = F.conv2d(x, w)
        fn = weakref.ref(y.creator)
        y.sum().backward()
        del y
        assert fn() is None
    finally:
        gc.enable()


def test_custom_function(xp):
    class Cube(Function):
        def forward(self, a):
            self.a = a
            return a**3

        def backward(self, gy):
            return 3 * self.a**2 * gy

    x = _t(xp, [1.0, 2.0])
    Cube.apply(x).sum().backward()
    assert_allclose_backends(x.grad, [3.0, 12.0])


def test_tensor_basics(xp):
    t = Tensor(xp.zeros((2, 3), dtype=xp.float32))
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.dtype == np.float32
    assert isinstance(t.numpy(), np.ndarray)
    assert "Tensor(" in repr(t)
    assert Tensor([1.0, 2.0]).dtype == np.float32  # Python floats default to float32
    assert Tensor(np.float64(1.5)).dtype == np.float64  # NumPy scalars keep their dtype
