"""Differentiable operations. Each op is a Function subclass plus a lowercase helper."""

from minievo.functions.conv import col2im, conv2d, conv2d_reference, im2col
from minievo.functions.math import (
    add,
    div,
    exp,
    log,
    matmul,
    mul,
    neg,
    pow,
    relu,
    sigmoid,
    sub,
    tanh,
)
from minievo.functions.nn import dropout, linear, log_softmax, softmax_cross_entropy
from minievo.functions.norm import batch_norm2d, batch_norm2d_reference
from minievo.functions.pool import avg_pool2d, global_avg_pool2d, max_pool2d
from minievo.functions.reductions import max, mean, sum
from minievo.functions.shape import flatten, getitem, reshape, transpose

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "exp", "log", "relu", "sigmoid",
    "tanh", "sum", "mean", "max", "reshape", "transpose", "flatten", "getitem", "linear",
    "conv2d", "conv2d_reference", "im2col", "col2im", "max_pool2d", "avg_pool2d",
    "global_avg_pool2d", "batch_norm2d", "batch_norm2d_reference",
    "dropout", "log_softmax", "softmax_cross_entropy",
]
