"""Cluster-sparse execution: compact models, a fast CPU path, CuPy RawKernels for the GPU.

Example::

    from minievo import models, sparse
    net = models.lenet5()              # ... masks set by evolution ...
    cm = sparse.compact(net)           # dead filters / neurons / input maps removed
    y = cm(x)                          # equals net(x) (masked dense) to float tolerance
    print(cm.summary())                # synapses, clusters, MACs per image
    cm.save("lenet5.compact.npz")      # atomic .npz
    cm2 = sparse.load("lenet5.compact.npz")
    net2 = sparse.expand(cm)           # the masked dense model again, exactly

Modules: :mod:`model` (compact / expand / CompactModel, chains and residual graphs),
:mod:`layers` (CompactConv2d, CompactLinear and the other steps), :mod:`cpu` (the CPU forward:
the compiled kernel of :mod:`minievo.kernels.native`, scipy.sparse or BLAS per layer),
:mod:`gpu` (RawKernel launches), :mod:`reference` (plain NumPy definitions), :mod:`summary`,
:mod:`storage`.
"""

from minievo.sparse.cpu import (
    CSR_MAX_DENSITY,
    get_num_threads,
    native_available,
    set_num_threads,
)
from minievo.sparse.layers import CompactConv2d, CompactLinear
from minievo.sparse.model import CompactModel, compact, expand
from minievo.sparse.storage import load_compact, save_compact
from minievo.sparse.summary import CompactSummary, LayerSummary, summarize

# The model module imports neither storage nor summary (they import it); the compact model's
# save / load / summary methods are theirs, bound here.
CompactModel.save = save_compact
CompactModel.load = staticmethod(load_compact)
CompactModel.summary = summarize
load = load_compact
save = save_compact

__all__ = [
    "CSR_MAX_DENSITY",
    "CompactConv2d",
    "CompactLinear",
    "CompactModel",
    "CompactSummary",
    "LayerSummary",
    "compact",
    "expand",
    "get_num_threads",
    "load",
    "native_available",
    "save",
    "set_num_threads",
    "summarize",
]
