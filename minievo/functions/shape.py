"""Shape ops: reshape, transpose, flatten and indexing (getitem)."""

from __future__ import annotations

import numpy as np

from minievo.autograd import Function
from minievo.backend import get_array_module


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, gy):
        return gy.reshape(self.shape)


class Transpose(Function):
    def forward(self, a, axes=None):
        self.axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(axes)
        if sorted(ax % a.ndim for ax in self.axes) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of {a.ndim} axes")
        return a.transpose(self.axes)

    def backward(self, gy):
        # The inverse permutation puts every axis back where it came from.
        return gy.transpose(tuple(int(i) for i in np.argsort(self.axes)))


class GetItem(Function):
    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, gy):
        xp = get_array_module(gy)
        g = xp.zeros(self.shape, dtype=gy.dtype)
        # add.at accumulates repeated indices (fancy indexing like x[[0, 0]])
        if xp.__name__ == "cupy":
            import cupyx

            cupyx.scatter_add(g, self.index, gy)
        else:
            xp.add.at(g, self.index, gy)
        return g


def reshape(a, shape):
    return Reshape.apply(a, shape=tuple(shape))


def transpose(a, axes=None):
    return Transpose.apply(a, axes=axes)


def flatten(a, start_dim: int = 1):
    """Flatten every axis from ``start_dim`` on: (N, C, H, W) -> (N, C*H*W)."""
    shape = a.shape[:start_dim] + (-1,)
    return Reshape.apply(a, shape=shape)


def getitem(a, index):
    return GetItem.apply(a, index=index)
