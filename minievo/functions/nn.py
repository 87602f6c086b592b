"""Neural-network ops: linear, dropout, log-softmax and the softmax cross-entropy loss."""

from __future__ import annotations

import numpy as np

from minievo.autograd import Function
from minievo.backend import get_array_module


class Linear(Function):
    """y = x W^T + b with x (N, in), W (out, in), b (out,)."""

    def forward(self, x, w, b=None):
        if x.ndim != 2:
            raise ValueError(f"linear expects input of shape (N, in_features), got {x.shape}")
        if x.shape[1] != w.shape[1]:
            raise ValueError(
                f"linear: input has {x.shape[1]} features but the weight expects {w.shape[1]} "
                f"(input {x.shape}, weight {w.shape})"
            )
        self.x, self.w, self.has_bias = x, w, b is not None
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        gx = gy @ self.w if self.needs_grad[0] else None
        gw = gy.T @ self.x if self.needs_grad[1] else None
        if not self.has_bias:
            return gx, gw
        gb = gy.sum(axis=0) if self.needs_grad[2] else None
        return gx, gw, gb


def uniform_like(x, rng=None):
    """Uniform [0, 1) float32 draws of x's shape, made where x lives by that backend's own
    generator (a CuPy array's mask is drawn on its device, never copied from the host).

    ``rng``: a generator of x's backend (``numpy.random.Generator`` or
    ``cupy.random.Generator``), or None for a fresh one (NumPy) or CuPy's global one. A NumPy
    generator given with a CuPy array seeds a device generator for this one call; keep a
    ``cupy.random.Generator`` to avoid that (the Dropout layer does).
    """
    xp = get_array_module(x)
    if xp is np:
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"a NumPy array needs a numpy.random.Generator, got {type(rng)}")
        rng = rng if rng is not None else np.random.default_rng()
        return rng.random(x.shape, dtype=np.float32)
    if rng is None:
        return xp.random.random(x.shape, dtype=np.float32)
    if isinstance(rng, np.random.Generator):
        rng = xp.random.default_rng(int(rng.integers(2**63)))
    return rng.random(x.shape, dtype=np.float32)


class Dropout(Function):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout)."""

    def forward(self, x, p=0.5, rng=None):
        u = uniform_like(x, rng)
        self.scale = ((u >= p) / (1.0 - p)).astype(x.dtype)
        return x * self.scale

    def backward(self, gy):
        return gy * self.scale


class LogSoftmax(Function):
    """log softmax along ``axis``: x - logsumexp(x), computed with the max subtracted."""

    def forward(self, x, axis=-1):
        xp = get_array_module(x)
        z = x - x.max(axis=axis, keepdims=True)
        self.y = z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
        self.axis = axis
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        # d/dx_i sum_j gy_j y_j = gy_i - softmax_i * sum_j gy_j
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


class SoftmaxCrossEntropy(Function):
    """Mean over the batch of -log softmax(logits)[label]. logits (N, K), labels (N,) ints.

    ``check_labels=False`` skips the range check of the labels (two host reads, a device sync
    per call on a GPU) for labels checked once already (:func:`minievo.training.fit` checks a
    DataLoader's labels once)."""

    def forward(self, logits, labels, check_labels=True):
        xp = get_array_module(logits)
        if logits.ndim != 2:
            raise ValueError(f"cross-entropy expects logits (N, K), got {logits.shape}")
        if labels.shape != (logits.shape[0],):
            raise ValueError(
                f"cross-entropy: labels shape {labels.shape} does not match batch "
                f"{logits.shape[0]}"
            )
        n, k = logits.shape
        labels = labels.astype(xp.int64, copy=False)
        if check_labels and n and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"cross-entropy: labels must lie in [0, {k}), got "
                             f"{int(labels.min())}..{int(labels.max())}")
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        self.p, self.labels = xp.exp(logp), labels
        return -logp[xp.arange(n), labels].mean()

    def backward(self, gy):
        # BEGIN SOLUTION task 3.1
        xp = get_array_module(gy)
        n = self.p.shape[0]
        g = self.p.copy()
        g[xp.arange(n), self.labels] -= 1
        return g * (gy / n), None
        # END SOLUTION


def linear(x, weight, bias=None):
    return Linear.apply(x, weight) if bias is None else Linear.apply(x, weight, bias)


def dropout(x, p: float = 0.5, training: bool = True, rng=None):
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
    if not training or p == 0:
        return x
    return Dropout.apply(x, p=p, rng=rng)


def log_softmax(x, axis: int = -1):
    return LogSoftmax.apply(x, axis=axis)


def softmax_cross_entropy(logits, labels, check_labels: bool = True):
    """Fused softmax + negative log-likelihood, averaged over the batch; ``check_labels=False``
    for labels known to lie in [0, K) (saves a device sync per call on a GPU)."""
    from minievo.autograd import Tensor

    lab = labels.data if isinstance(labels, Tensor) else labels
    return SoftmaxCrossEntropy.apply(logits, Tensor(lab), check_labels=check_labels)
