"""Differentiable operations. Each op is a Function subclass plus a lowercase helper."""

from minievo.functions._malloc import tune_glibc_malloc
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
from minievo.functions.pool import max_pool2d, max_pool2d_reference
from minievo.functions.reductions import max, mean, sum
from minievo.functions.shape import flatten, getitem, reshape, transpose

# Large per-step temporaries: keep glibc from returning them to the OS each step (see _malloc).
tune_glibc_malloc()

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "exp", "log", "relu", "sigmoid",
    "tanh", "sum", "mean", "max", "reshape", "transpose", "flatten", "getitem", "linear",
    "conv2d", "conv2d_reference", "im2col", "col2im", "max_pool2d", "max_pool2d_reference",
    "dropout", "log_softmax", "softmax_cross_entropy",
]
