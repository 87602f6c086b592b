"""Element-wise arithmetic, matmul and the classic activations.

Binary ops broadcast like NumPy; the engine sums their gradients back to each input's shape
(:func:`minievo.autograd.sum_to`), so the backward methods below can ignore broadcasting.
"""

from __future__ import annotations

from minievo.autograd import Function
from minievo.backend import get_array_module


class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        return gy, gy


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        return gy, -gy


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        # BEGIN SOLUTION task 2.1
        # d(ab)/da = b, d(ab)/db = a
        ga = gy * self.b if self.needs_grad[0] else None
        gb = gy * self.a if self.needs_grad[1] else None
        return ga, gb
        # END SOLUTION


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        ga = gy / self.b if self.needs_grad[0] else None
        gb = -gy * self.a / (self.b * self.b) if self.needs_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, gy):
        return -gy


class Pow(Function):
    """x ** c for a constant exponent c."""

    def forward(self, a, exponent):
        self.a, self.c = a, exponent
        return a**exponent

    def backward(self, gy):
        return gy * self.c * self.a ** (self.c - 1)


class MatMul(Function):
    """a @ b for 2-D operands (the case every layer here needs)."""

    def forward(self, a, b):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"matmul expects 2-D operands, got shapes {a.shape} and {b.shape}")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape}")
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        # BEGIN SOLUTION task 2.2
        # y = a b  =>  dL/da = gy b^T,  dL/db = a^T gy
        ga = gy @ self.b.T if self.needs_grad[0] else None
        gb = self.a.T @ gy if self.needs_grad[1] else None
        return ga, gb
        # END SOLUTION


class Exp(Function):
    def forward(self, a):
        self.y = get_array_module(a).exp(a)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, a):
        self.a = a
        return get_array_module(a).log(a)

    def backward(self, gy):
        return gy / self.a


class ReLU(Function):
    def forward(self, a):
        xp = get_array_module(a)
        self.positive = a > 0
        return xp.maximum(a, 0)

    def backward(self, gy):
        return gy * self.positive


class Sigmoid(Function):
    def forward(self, a):
        xp = get_array_module(a)
        # tanh form: stable for large |a| and exact at 0
        self.y = 0.5 * (xp.tanh(0.5 * a) + 1)
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


class Tanh(Function):
    def forward(self, a):
        self.y = get_array_module(a).tanh(a)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


def add(a, b):
    return Add.apply(a, b)


def sub(a, b):
    return Sub.apply(a, b)


def mul(a, b):
    return Mul.apply(a, b)


def div(a, b):
    return Div.apply(a, b)


def neg(a):
    return Neg.apply(a)


def pow(a, exponent):  # noqa: A001 - the op's natural name
    if not isinstance(exponent, (int, float)):
        raise TypeError("pow supports a constant (int or float) exponent")
    return Pow.apply(a, exponent=exponent)


def matmul(a, b):
    return MatMul.apply(a, b)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def relu(a):
    return ReLU.apply(a)


def sigmoid(a):
    return Sigmoid.apply(a)


def tanh(a):
    return Tanh.apply(a)
