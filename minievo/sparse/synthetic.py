"""Random masks for tests and benchmarks of the compact models."""

from __future__ import annotations

import numpy as np

from minievo.backend import get_array_module
from minievo.layers import prunable_layers


def random_mask(rng: np.random.Generator, shape: tuple, density: float,
                kernel_level: bool = True) -> np.ndarray:
    """A 0/1 float32 mask with about ``density`` of its entries live.

    For a conv weight (O, I, kh, kw) with ``kernel_level`` the draw is per kernel (o, i): a
    kernel is all live or all dead, the cluster sparsity evolution produces.
    """
    if len(shape) == 4 and kernel_level:
        live = rng.random(shape[:2]) < density
        return np.broadcast_to(live[:, :, None, None], shape).astype(np.float32)
    return (rng.random(shape) < density).astype(np.float32)


def set_random_masks(model, rng: np.random.Generator, density: float, kernel_level: bool = True,
                     bias_scale: float = 0.3, weight_scale: float = 0.3):
    """Give every Conv2d / Linear of ``model`` random weights, biases and a random mask.

    Arrays are created on the backend the layers live on. Returns the model (in eval mode).
    """
    for _, layer in prunable_layers(model):
        xp = get_array_module(layer.weight.data)
        shape = layer.weight.shape
        layer.weight.data = xp.asarray(
            rng.standard_normal(shape).astype(np.float32) * weight_scale)
        if layer.bias is not None:
            layer.bias.data = xp.asarray(
                rng.standard_normal(layer.bias.shape).astype(np.float32) * bias_scale)
        layer.set_mask(xp.asarray(random_mask(rng, shape, density, kernel_level)))
    model.eval()
    return model
