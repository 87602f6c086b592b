"""The accelerator: faster implementations of the reference ops, switched on explicitly.

The reference path (:mod:`minievo.functions`, :mod:`minievo.layers`) is what the chapters
teach: plain NCHW arrays, nothing compiled, no process-wide settings. This package holds the
fast path, and importing minievo never loads it. ``enable()`` installs its op table in the one
place the layers look their ops up (:data:`minievo.layers.ops`, the way MiniTorch picks a
TensorBackend)::

    import minievo.accel
    minievo.accel.enable()                 # from now on, in the whole process
    with minievo.accel.accelerated(False):  # or for a block only (here: off)
        ...

What the table swaps in, each tested equal to its reference (values and gradients):

* :mod:`minievo.accel.conv`: im2col convolution with channels-last activations;
* :mod:`minievo.accel.pool`: max pooling in two separable passes, and a global average pool
  whose gradient stays channels-last;
* :mod:`minievo.accel.norm`: batch normalisation on the channels-last (N*H*W, C) matrix;
* :mod:`minievo.accel.sparse_train`: masked layers sparse enough train over their live synapses
  through the compiled kernel of :mod:`minievo.kernels.native` (built on first use; cost models
  in :mod:`minievo.sparse.cpu`), otherwise the channels-last convolution above (linear
  layers: the reference product).

``enable()`` also raises glibc's allocator thresholds once (:mod:`minievo.accel.malloc`), a
process-wide setting that ``disable()`` does not undo. The ``minievo`` command enables the
accelerator unless given ``--no-accel``; library code never enables it by itself.
"""

from __future__ import annotations

from contextlib import contextmanager

from minievo import layers
from minievo.accel import malloc, norm, pool, sparse_train

#: The accelerator's op table (see :class:`minievo.layers.Ops`).
OPS = layers.Ops("accel", conv2d=sparse_train.conv2d, linear=sparse_train.linear,
                 max_pool2d=pool.max_pool2d, batch_norm2d=norm.batch_norm2d,
                 global_avg_pool2d=pool.global_avg_pool2d)


def enable() -> None:
    """Make every layer use the accelerated ops (and tune glibc's allocator, once)."""
    malloc.tune_glibc_malloc()
    layers.use_ops(OPS)


def disable() -> None:
    """Back to the reference ops (the allocator setting, if made, stays)."""
    layers.use_ops(layers.REFERENCE_OPS)


def enabled() -> bool:
    """True when the layers use the accelerated ops (the public query, e.g. for run configs).

    Library code that must not import this package (see tests/test_import_side_effects.py) can
    read the same fact as ``minievo.layers.ops.name`` ("reference" or "accel").
    """
    return layers.ops is OPS


@contextmanager
def accelerated(on: bool = True):
    """Turn the accelerator on (or, with ``on=False``, off) inside a ``with`` block only."""
    was_on = enabled()
    if on:
        enable()
    else:
        disable()
    try:
        yield
    finally:
        if was_on:
            enable()
        else:
            disable()


__all__ = ["OPS", "accelerated", "disable", "enable", "enabled"]
