"""Batch normalisation over the channels of an (N, C, H, W) batch, and a plain reference.

Each channel c is normalised with statistics taken over the m = N*H*W values it holds:

    mu_c = mean of x[:, c]          var_c = mean of (x[:, c] - mu_c)^2     (biased)
    xhat = (x - mu_c) / sqrt(var_c + eps)
    y    = gamma_c * xhat + beta_c

In training mode mu and var are the statistics of the batch, and the running statistics used
at evaluation time move towards them:

    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)

The running variance takes the unbiased batch variance (as PyTorch does), while the batch is
normalised with the biased one. In evaluation mode mu and var are the running statistics, so
the op is a fixed per-channel affine map y = scale_c * x + shift_c.

:class:`BatchNorm2d` has a hand-written backward; :func:`batch_norm2d_reference` builds the
same computation from the autograd ops (mean, sub, mul, pow, ...), so the tests can compare
both values and gradients.
"""

from __future__ import annotations

from minievo.autograd import Function, Tensor
from minievo.backend import get_array_module

_AXES = (0, 2, 3)  # every axis but the channel axis


def _per_channel(v):
    """A (C,) array or Tensor reshaped to (1, C, 1, 1), to broadcast against (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


def check_batch_norm_args(x, gamma, beta, running_mean, running_var, training: bool,
                          momentum: float, eps: float) -> None:
    """Raise a ValueError (or TypeError) naming the argument when batch norm cannot run."""
    if x.ndim != 4:
        raise ValueError(f"batch_norm2d expects x of shape (N, C, H, W), got {x.shape}")
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        if tuple(v.shape) != (c,):
            raise ValueError(f"batch_norm2d: {name} must have shape ({c},) for the {c} "
                             f"channels of x {x.shape}, got {tuple(v.shape)}")
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        if isinstance(v, Tensor) or not hasattr(v, "shape"):
            raise TypeError(f"batch_norm2d: {name} must be a raw array of the backend (it is "
                            f"updated in place; pass tensor.data), got {type(v).__name__}")
        if v.shape != (c,):
            raise ValueError(f"batch_norm2d: {name} must have shape ({c},) for the {c} "
                             f"channels of x {x.shape}, got {v.shape}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm2d: momentum must lie in [0, 1], got {momentum}")
    if not eps > 0.0:
        raise ValueError(f"batch_norm2d: eps must be > 0, got {eps}")
    if training and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        raise ValueError(
            f"batch_norm2d in training mode needs more than one value per channel "
            f"(N*H*W > 1) to compute batch statistics, got x of shape {x.shape}"
        )


def update_running_stats(running_mean, running_var, mean, var, m: int,
                         momentum: float) -> None:
    """Move the running statistics towards the batch ones, in place (see the module doc).

    ``var`` is the biased batch variance over ``m`` values; the running variance receives the
    unbiased one, var * m / (m - 1).
    """
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += (momentum * m / (m - 1)) * var


class BatchNorm2d(Function):
    """Batch normalisation of (N, C, H, W) with per-channel scale gamma and shift beta.

    Backward, with g the output gradient and sums over the m = N*H*W values of a channel:

    * beta: sum(g);  gamma: sum(g * xhat);
    * x in evaluation mode (mu, var constants): g * gamma / sqrt(var + eps);
    * x in training mode, where mu and var depend on every x of the channel:

          dx = gamma / sqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat))

      The two mean terms are the gradient that flows through mu and through var.
    """

    def forward(self, x, gamma, beta, running_mean=None, running_var=None, training=True,
                momentum=0.1, eps=1e-5):
        check_batch_norm_args(x, gamma, beta, running_mean, running_var, training, momentum,
                              eps)
        xp = get_array_module(x, running_mean, running_var)
        if training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            mean = x.mean(axis=_AXES)
            xhat = x - _per_channel(mean)
            var = (xhat * xhat).mean(axis=_AXES)
            update_running_stats(running_mean, running_var, mean, var, m, momentum)
        else:
            # Cast the statistics to x's dtype: float32 input must not turn into float64.
            mean = running_mean.astype(x.dtype, copy=False)
            var = running_var.astype(x.dtype, copy=False)
            xhat = x - _per_channel(mean)
        inv_std = 1.0 / xp.sqrt(var + eps)  # (C,)
        xhat *= _per_channel(inv_std)  # xhat is a fresh array: normalise it in place
        self.xhat, self.inv_std, self.gamma, self.training = xhat, inv_std, gamma, training
        return xhat * _per_channel(gamma) + _per_channel(beta)

    def backward(self, gy):
        xhat = self.xhat
        gbeta = gy.sum(axis=_AXES)
        ggamma = (gy * xhat).sum(axis=_AXES)
        gx = None
        if self.needs_grad[0]:
            scale = _per_channel(self.gamma * self.inv_std)
            if self.training:
                m = gy.shape[0] * gy.shape[2] * gy.shape[3]
                gx = gy - _per_channel(gbeta / m) - xhat * _per_channel(ggamma / m)
                gx *= scale
            else:
                gx = gy * scale
        return (gx, ggamma if self.needs_grad[1] else None,
                gbeta if self.needs_grad[2] else None)


def batch_norm2d(x, gamma, beta, running_mean, running_var, training: bool,
                 momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation over the channels of an NCHW batch.

    Args:
        x: input of shape (N, C, H, W).
        gamma, beta: per-channel scale and shift, shape (C,) (usually Parameters).
        running_mean, running_var: raw arrays of shape (C,) on x's backend; in training mode
            they are updated in place (see the module docstring), in evaluation mode they
            are the statistics used.
        training: normalise with the batch statistics (True) or the running ones (False).
        momentum: weight of the new batch statistics in the running ones.
        eps: added to the variance before the square root.

    Returns:
        y of shape (N, C, H, W), the dtype of x.

    Raises:
        ValueError: x not 4-D, gamma/beta/running statistics not of shape (C,), momentum
            outside [0, 1], eps <= 0, or a training batch with N*H*W == 1.
        TypeError: running statistics given as Tensors instead of raw arrays.
    """
    return BatchNorm2d.apply(x, gamma, beta, running_mean=running_mean,
                             running_var=running_var, training=bool(training),
                             momentum=float(momentum), eps=float(eps))


def batch_norm2d_reference(x, gamma, beta, running_mean, running_var, training: bool,
                           momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """:func:`batch_norm2d` written with the autograd ops; the same arguments and results.

    No hand-written backward: autograd differentiates through the mean and the variance.
    """
    check_batch_norm_args(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    x = x if isinstance(x, Tensor) else Tensor(x)
    if training:
        mean = x.mean(axis=_AXES, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=_AXES, keepdims=True)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        update_running_stats(running_mean, running_var, mean.data.reshape(-1),
                             var.data.reshape(-1), m, momentum)
    else:
        # Constants (no gradient), in x's dtype.
        centred = x - Tensor(_per_channel(running_mean.astype(x.dtype, copy=False)))
        var = Tensor(_per_channel(running_var.astype(x.dtype, copy=False)))
    xhat = centred / (var + eps) ** 0.5
    gamma = gamma if isinstance(gamma, Tensor) else Tensor(gamma)
    beta = beta if isinstance(beta, Tensor) else Tensor(beta)
    return xhat * _per_channel(gamma) + _per_channel(beta)
