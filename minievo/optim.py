"""Optimisers and learning-rate schedules.

Every optimiser is mask aware: a parameter with a ``mask`` (set by a prunable layer) has its
gradient, its update and its optimiser state multiplied by the mask, so a pruned synapse stays
exactly 0 through training, whatever momentum or weight decay would otherwise do. This is the
one place the mask is applied: the layers' forward uses the weight as it is (its masked entries
are 0), so their gradients there may be non-zero until :meth:`Optimizer.step` masks them.
"""

from __future__ import annotations

import math

from minievo.autograd import Parameter
from minievo.backend import get_array_module


class Optimizer:
    def __init__(self, params, lr: float):
        self.params: list[Parameter] = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self.state: list[dict] = [{} for _ in self.params]
        self.iterations = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad
            if p.mask is not None:
                g = g * p.mask
            self._update(p, g, state)
            if p.mask is not None:
                p.data *= p.mask
                for v in state.values():
                    if hasattr(v, "shape") and v.shape == p.shape:
                        v *= p.mask
        self.iterations += 1

    def _update(self, p, g, state) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Optimiser state as NumPy arrays (for checkpoints)."""
        from minievo.backend import to_numpy

        out = {"lr": self.lr, "iterations": self.iterations}
        for i, state in enumerate(self.state):
            for k, v in state.items():
                out[f"{i}.{k}"] = to_numpy(v) if hasattr(v, "shape") else v
        return out

    def load_state_dict(self, state: dict) -> None:
        self.lr = float(state["lr"])
        self.iterations = int(state["iterations"])
        for i, p in enumerate(self.params):
            xp = get_array_module(p.data)
            self.state[i] = {
                k.split(".", 1)[1]: xp.asarray(v, dtype=p.dtype) if hasattr(v, "shape") else v
                for k, v in state.items() if k.startswith(f"{i}.")
            }


class SGD(Optimizer):
    """SGD with momentum, weight decay and optional Nesterov momentum.

    v <- momentum * v + (g + weight_decay * w);  w <- w - lr * v
    (Nesterov: w <- w - lr * (g + weight_decay * w + momentum * v)).
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def _update(self, p, g, state) -> None:
        # BEGIN SOLUTION task 3.2
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            v = state.get("velocity")
            if v is None:
                v = state["velocity"] = g.copy()
            else:
                v *= self.momentum
                v += g
            if self.nesterov:
                g = g + self.momentum * v
            else:
                g = v
        p.data -= self.lr * g
        # END SOLUTION


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and L2 weight decay added to the gradient."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def _update(self, p, g, state) -> None:
        xp = get_array_module(p.data)
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        m = state.setdefault("m", xp.zeros_like(p.data))
        v = state.setdefault("v", xp.zeros_like(p.data))
        t = state["t"] = state.get("t", 0) + 1
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        step = self.lr * math.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        p.data -= step * m / (xp.sqrt(v) + self.eps)


class StepLR:
    """lr = base_lr * gamma ** (iteration // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.opt, self.base, self.step_size, self.gamma = optimizer, optimizer.lr, step_size, gamma

    def lr_at(self, iteration: int) -> float:
        return self.base * self.gamma ** (iteration // self.step_size)

    def step(self) -> None:
        self.opt.lr = self.lr_at(self.opt.iterations)


class LinearDecayLR:
    """lr = base_lr * (1 - iteration / total), falling to zero at ``total`` iterations (the
    annealing a pruning pipeline's final fine-tuning does; policy ``linear``).

    Args:
        optimizer: its ``lr`` is the base rate; ``iterations`` counts its updates.
        total: the number of updates over which the rate reaches zero (>= 1).
    """

    def __init__(self, optimizer: Optimizer, total: int):
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be a whole number of iterations >= 1, got {total!r}")
        self.opt, self.base, self.total = optimizer, optimizer.lr, total

    def lr_at(self, iteration: int) -> float:
        return self.base * max(0.0, 1.0 - iteration / self.total)

    def step(self) -> None:
        self.opt.lr = self.lr_at(self.opt.iterations)


class InvLR:
    """Caffe's "inv" policy: lr = base_lr * (1 + gamma * iteration) ** (-power)."""

    def __init__(self, optimizer: Optimizer, gamma: float = 1e-4, power: float = 0.75):
        self.opt, self.base, self.gamma, self.power = optimizer, optimizer.lr, gamma, power

    def lr_at(self, iteration: int) -> float:
        return self.base * (1 + self.gamma * iteration) ** (-self.power)

    def step(self) -> None:
        self.opt.lr = self.lr_at(self.opt.iterations)
