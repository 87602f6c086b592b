"""Reductions: sum, mean and max over an axis (or all axes)."""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module


def _normalise_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def _expand(gy, in_shape, axes, keepdims):
    """Re-insert the reduced axes (size 1) so gy broadcasts against the input."""
    if keepdims:
        return gy
    shape = [1 if i in axes else n for i, n in enumerate(in_shape)]
    return gy.reshape(shape)


class Sum(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = _normalise_axis(axis, a.ndim)
        self.keepdims = keepdims
        return a.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        g = _expand(gy, self.shape, self.axes, self.keepdims)
        return xp.broadcast_to(g, self.shape)


class Mean(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = _normalise_axis(axis, a.ndim)
        self.keepdims = keepdims
        self.count = 1
        for ax in self.axes:
            self.count *= a.shape[ax]
        return a.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        g = _expand(gy, self.shape, self.axes, self.keepdims) / self.count
        return xp.broadcast_to(g, self.shape).astype(gy.dtype, copy=False)


class Max(Function):
    """Max over axes; the gradient goes to the maxima, split evenly between ties."""

    def forward(self, a, axis=None, keepdims=False):
        self.a = a
        self.axes = _normalise_axis(axis, a.ndim)
        self.keepdims = keepdims
        self.y = a.max(axis=self.axes, keepdims=True)
        return self.y if keepdims else self.y.reshape(
            [n for i, n in enumerate(a.shape) if i not in self.axes])

    def backward(self, gy):
        g = _expand(gy, self.a.shape, self.axes, self.keepdims)
        hit = self.a == self.y
        count = hit.sum(axis=self.axes, keepdims=True)
        return hit * (g / count)


def sum(a, axis=None, keepdims=False):  # noqa: A001
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a, axis=None, keepdims=False):  # noqa: A001
    return Max.apply(a, axis=axis, keepdims=keepdims)
