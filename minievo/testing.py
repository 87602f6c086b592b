"""Test helpers: numerical gradient checks and array comparison across backends.

:func:`gradient_check` is the test every differentiable op must pass. It turns the op into a
scalar by weighting its output with a fixed random array R,

    L(x) = sum(fn(x) * R),

so that every output element takes part with its own weight (a plain ``sum`` would hide
mistakes that cancel, e.g. two swapped output elements). The analytic gradient comes from one
backward pass started with ``grad=R``; the numerical one from central differences,

    dL/dx_k ~ (L(x + eps e_k) - L(x - eps e_k)) / (2 eps),

one element at a time, everything in float64 (in float32 the difference quotient would be
swamped by rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from minievo import backend
from minievo.autograd import Tensor, no_grad


@dataclass
class InputReport:
    """How one input fared: the largest absolute and relative error over its elements."""

    index: int
    shape: tuple
    max_abs_err: float
    max_rel_err: float


@dataclass
class GradCheckReport:
    """Returned by :func:`gradient_check` when every gradient matched."""

    inputs: list[InputReport] = field(default_factory=list)
    n_elements: int = 0  # number of (input, element) pairs checked

    @property
    def max_abs_err(self) -> float:
        return max((r.max_abs_err for r in self.inputs), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((r.max_rel_err for r in self.inputs), default=0.0)

    def __str__(self) -> str:
        return (f"gradient check passed: {len(self.inputs)} input(s), {self.n_elements} "
                f"elements, max abs err {self.max_abs_err:.3g}, max rel err "
                f"{self.max_rel_err:.3g}")


def _to_float64_tensors(inputs) -> list:
    """Copy every float input to float64 on its own backend; leave the rest alone.

    Tensors keep their ``requires_grad``; raw float arrays become tensors that require grad;
    integer arrays (labels, indices) and Python values pass through as constants.
    """
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            data = x.data
            if data.dtype.kind == "f":
                # A fresh C-contiguous copy: perturbed in place below through a flat view.
                data = data.astype(np.float64, order="C", copy=True)
            out.append(Tensor(data, requires_grad=x.requires_grad))
        elif hasattr(x, "dtype") and hasattr(x, "shape") and x.dtype.kind == "f":
            out.append(Tensor(x.astype(np.float64, order="C", copy=True), requires_grad=True))
        else:
            out.append(x)
    return out


def _scalar(y: Tensor, r) -> float:
    xp = backend.get_array_module(y.data)
    return float(xp.sum(y.data * r))


def gradient_check(
    fn: Callable[..., Tensor],
    inputs: Sequence,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    seed: int = 0,
) -> GradCheckReport:
    """Compare the analytic gradients of ``fn`` with central differences, in float64.

    Args:
        fn: called as ``fn(*inputs)``; returns a Tensor. Must be deterministic (e.g. dropout
            with a generator re-seeded inside ``fn``) and smooth within ``eps`` of the inputs
            (keep inputs away from kinks such as relu at 0 or ties in a max).
        inputs: Tensors and/or arrays of either backend. Float data is copied to float64.
            Every Tensor with ``requires_grad=True`` and every raw float array is checked;
            other Tensors, integer arrays and Python values are passed through as constants.
        eps: step of the central difference.
        atol, rtol: an element passes when ``|analytic - numeric| <= atol + rtol * |numeric|``.
        seed: seed of the random output weights R.

    Returns:
        A :class:`GradCheckReport` with the largest errors per input.

    Raises:
        AssertionError: naming the worst element (input index, element index, analytic and
            numeric value, absolute and relative error), or an input that got no gradient.
    """
    args = _to_float64_tensors(inputs)
    checked = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradient_check: no input requires grad, nothing to check")

    # Analytic: one backward pass seeded with R.
    y = fn(*args)
    if not isinstance(y, Tensor):
        raise TypeError(f"gradient_check: fn must return a Tensor, got {type(y).__name__}")
    xp = backend.get_array_module(y.data)
    rng = np.random.default_rng(seed)
    r = xp.asarray(rng.standard_normal(y.shape))
    if not y.requires_grad:
        raise AssertionError("gradient_check: the output does not require grad (no graph)")
    y.backward(r)

    report = GradCheckReport()
    worst = None  # (badness, message)
    for i in checked:
        t = args[i]
        if t.grad is None:
            raise AssertionError(f"gradient_check: input {i} (shape {t.shape}) got no gradient")
        if tuple(t.grad.shape) != tuple(t.shape):
            raise AssertionError(
                f"gradient_check: input {i} has shape {t.shape} but its gradient has shape "
                f"{tuple(t.grad.shape)}"
            )
        analytic = backend.to_numpy(t.grad).astype(np.float64)
        numeric = np.empty(t.shape, dtype=np.float64)
        data = t.data
        flat = data.reshape(-1)  # a view (the copy is C-contiguous): perturbing it perturbs t
        with no_grad():
            for k in range(data.size):
                old = float(flat[k])
                flat[k] = old + eps
                f_plus = _scalar(fn(*args), r)
                flat[k] = old - eps
                f_minus = _scalar(fn(*args), r)
                flat[k] = old
                numeric.reshape(-1)[k] = (f_plus - f_minus) / (2 * eps)

        abs_err = np.abs(analytic - numeric)
        rel_err = abs_err / np.maximum(np.abs(numeric), 1e-300)
        badness = abs_err / (atol + rtol * np.abs(numeric))
        n = int(data.size)
        report.n_elements += n
        report.inputs.append(InputReport(
            index=i, shape=tuple(t.shape),
            max_abs_err=float(abs_err.max()) if n else 0.0,
            max_rel_err=float(np.where(abs_err > 0, rel_err, 0).max()) if n else 0.0,
        ))
        if n and (badness.max() > 1 or not np.all(np.isfinite(analytic))):
            bad = np.where(np.isfinite(analytic), badness, np.inf)
            k = np.unravel_index(int(np.argmax(bad)), t.shape)
            n_bad = int(np.count_nonzero(bad > 1))
            msg = (
                f"gradient check failed for input {i} (shape {tuple(t.shape)}): "
                f"{n_bad} of {n} elements outside atol={atol:g}, rtol={rtol:g}; worst at "
                f"element {tuple(int(v) for v in k)}: analytic {analytic[k]:.10g}, numeric "
                f"{numeric[k]:.10g}, abs err {abs_err[k]:.3g}, rel err {rel_err[k]:.3g}"
            )
            if worst is None or bad[k] > worst[0]:
                worst = (bad[k], msg)
    if worst is not None:
        raise AssertionError(worst[1])
    return report


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.data
    return backend.to_numpy(a) if hasattr(a, "shape") else np.asarray(a)


def allclose(a, b, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """``numpy.allclose`` for arrays (or Tensors) of either backend, compared on the CPU."""
    a, b = _as_numpy(a), _as_numpy(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def assert_allclose_backends(actual, desired, rtol: float = 1e-5, atol: float = 1e-6,
                             err_msg: str = "") -> None:
    """``numpy.testing.assert_allclose`` for arrays or Tensors of either backend.

    Both sides are moved to NumPy first, so a CuPy result can be checked against a NumPy
    reference (or a Tensor against a plain array). Shapes must match exactly.
    """
    a, d = _as_numpy(actual), _as_numpy(desired)
    if a.shape != d.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {d.shape}. {err_msg}".strip())
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=err_msg)


assert_allclose = assert_allclose_backends
