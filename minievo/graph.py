"""A model's structure, traced from one forward pass, and the one walk over it.

Everything in minievo that needs to know how a model is wired (the per-generation metrics, the
compact model, its storage, the report) reads :func:`walk`. It runs the model's own ``forward``
once on one zero image, with :func:`minievo.layers.trace_calls` recording every leaf layer's
call, and then follows the autograd graph back from the output:

* a tensor made by a leaf layer (a layer without child modules) becomes a node for that layer,
  whose inputs are the tensors the layer was called with;
* a tensor made by an operation written in the forward itself becomes a node too: ``a + b``
  of two traced tensors is an :class:`~minievo.layers.Add`, ``F.relu(x)`` a
  :class:`~minievo.layers.ReLU`, ``x.reshape(n, -1)`` a :class:`~minievo.layers.Flatten`;
  any other operation outside a layer is refused with a message saying to wrap it in one.

So a user's network written as ordinary Python, residual additions included, is seen as a
graph of layers without declaring its structure anywhere. The walk then computes, in forward
order and from the layers' own answers to the layer protocol (:mod:`minievo.layers`):

* the per-sample shape of every node's output;
* which output units (channels of a (C, H, W) activation, features of an (F,) one) depend on
  the input: ``live``. A unit that does not is a constant (docs/method.md#dead-structure).

This is the only place where a model is walked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minievo import backend
from minievo import layers as L
from minievo.autograd import Tensor, enable_grad

#: Operations that may appear in a forward between layers, by autograd Function name: what the
#: walk treats them as.
_FUNCTION_LAYERS = {"Add": L.Add, "ReLU": L.ReLU, "Reshape": L.Flatten}


class StructureError(TypeError):
    """The model's forward does something the walk cannot follow."""


@dataclass
class Node:
    """One layer of the traced graph.

    Attributes:
        index: position in forward (topological) order; node 0 is the input.
        name: the layer's dotted name in the model (``layer1.0.conv1``), or ``add3`` for an
            operation written in a forward; ``input`` for node 0.
        layer: the layer (None for the input).
        inputs: indices of the nodes it reads, in call order.
        in_shapes: their per-sample shapes.
        out_shape: per-sample output shape.
        live: (units,) bool, the output units that depend on the input.
        consumers: indices of the nodes reading this one.
    """

    index: int
    name: str
    layer: L.Module | None
    inputs: list[int]
    in_shapes: list[tuple] = field(default_factory=list)
    out_shape: tuple = ()
    live: np.ndarray | None = None
    consumers: list[int] = field(default_factory=list)
    traced_shape: tuple = ()  # the per-sample shape the traced forward produced

    @property
    def in_shape(self) -> tuple:
        """The per-sample input shape of a one-input node."""
        return self.in_shapes[0]

    @property
    def live_in(self) -> np.ndarray:
        """Which input units are live (one-input nodes); set by :func:`walk`."""
        return self._live_in

    def __repr__(self):
        return f"Node({self.index}, {self.name!r}, {self.layer!r}, inputs={self.inputs})"


@dataclass
class Structure:
    """The walked graph: nodes in forward order (node 0 the input, the last the output)."""

    input_shape: tuple
    nodes: list[Node]

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def layers(self) -> list[Node]:
        """The layer nodes (not the input), in forward order."""
        return self.nodes[1:]

    def prunable(self) -> list[Node]:
        """The nodes of prunable layers, in forward order."""
        return [n for n in self.nodes[1:] if n.layer.prunable]

    def is_chain(self) -> bool:
        """Whether every node reads the one before it (a Sequential-like stack)."""
        return all(n.inputs == [n.index - 1] for n in self.nodes[1:])

    def node_of(self, layer) -> Node:
        for n in self.nodes:
            if n.layer is layer:
                return n
        raise KeyError(f"{layer!r} is not in this model's graph")


def _model_backend(model) -> str:
    for p in model.parameters():
        return backend.backend_of(p.data)
    return backend.get_backend()


def trace(model, input_shape: tuple) -> Structure:
    """The graph of ``model`` for per-sample inputs of ``input_shape`` (shapes not yet set).

    The forward runs once in evaluation mode (batch norm uses its running statistics, dropout
    is off) on one zero image; the training flags are restored afterwards and no parameter or
    statistic changes.
    """
    if not isinstance(model, L.Module):
        raise TypeError(f"expected a minievo Module, got {type(model).__name__}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be positive sizes, got {input_shape}")
    names = {id(m): name for name, m in model.named_modules()}
    modes = [(m, m.training) for m in model.modules()]
    xp = backend.xp_for(_model_backend(model))
    x = Tensor(xp.zeros((1, *input_shape), dtype=np.float32), requires_grad=True)
    model.eval()
    try:
        with enable_grad(), L.trace_calls() as calls:
            out = model(x)
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(out, Tensor):
        raise StructureError(f"the model's forward returned {type(out).__name__}, not a Tensor")

    made_by: dict[int, tuple] = {}
    for layer, args, result in calls:
        # A layer that hands its input back unchanged (dropout at inference) is no node.
        if isinstance(result, Tensor) and not any(result is a for a in args):
            if any(entry[0] is layer for entry in made_by.values()):
                raise StructureError(
                    f"layer {names.get(id(layer), repr(layer))} is called twice in one forward "
                    "pass; the walk needs one call per layer (give each use its own layer)")
            made_by[id(result)] = (layer, [a for a in args if isinstance(a, Tensor)])

    nodes = [Node(0, "input", None, [])]
    index_of: dict[int, int] = {id(x): 0}
    producers: dict[int, tuple] = {}

    def visit(t: Tensor) -> int:
        # Post-order over the graph, with an explicit stack (deep networks, no recursion limit).
        stack = [(t, False)]
        while stack:
            tensor, expanded = stack.pop()
            if id(tensor) in index_of:
                continue
            if id(tensor) not in producers:
                producers[id(tensor)] = _producer(tensor, made_by, names)
            layer, inputs, name = producers[id(tensor)]
            if not expanded:
                stack.append((tensor, True))
                stack.extend((i, False) for i in reversed(inputs) if id(i) not in index_of)
                continue
            node = Node(len(nodes), name, layer, [index_of[id(i)] for i in inputs],
                        traced_shape=tuple(tensor.shape[1:]))
            nodes.append(node)
            index_of[id(tensor)] = node.index
        return index_of[id(t)]

    visit(out)
    counters: dict[str, int] = {}
    for node in nodes[1:]:  # operations written in a forward: add0, add1, relu0, ... in order
        if node.name is None:
            kind = type(node.layer).__name__.lower()
            node.name = f"{kind}{counters.get(kind, 0)}"
            counters[kind] = counters.get(kind, 0) + 1
    if len(nodes) == 1:
        raise StructureError("the model's forward returns its input: there is no layer")
    for node in nodes[1:]:
        for i in node.inputs:
            nodes[i].consumers.append(node.index)
    return Structure(input_shape, nodes)


def _producer(t: Tensor, made_by: dict, names: dict):
    """(layer, input tensors, name) of the node that made tensor ``t`` (name None for an
    operation written in a forward: named in forward order afterwards)."""
    if id(t) in made_by:
        layer, inputs = made_by[id(t)]
        return layer, inputs, names.get(id(layer), type(layer).__name__)
    fn = t.creator
    if fn is None:
        raise StructureError(
            "a tensor in the forward pass comes neither from the input nor from a layer (a "
            "constant, or a parameter used outside a layer); wrap that computation in a layer")
    kind = type(fn).__name__
    cls = _FUNCTION_LAYERS.get(kind)
    inputs = [i for i in fn.inputs if isinstance(i, Tensor)]
    if cls is L.Add and (len(inputs) != 2 or inputs[0].shape != inputs[1].shape):
        cls = None  # a broadcasting addition (a constant, a bias) is not a residual merge
    if cls is L.Flatten and not (t.ndim == 2 and inputs[0].ndim >= 2
                                 and t.shape[0] == inputs[0].shape[0]):
        cls = None
    if cls is None:
        raise StructureError(
            f"the forward applies {kind} outside a layer; the walk follows layers and, between "
            "them, a + b of one shape, relu and flatten: wrap that operation in a layer (see "
            "docs/extending.md)")
    return cls(), inputs, None


def walk(model, input_shape: tuple) -> Structure:
    """Trace ``model`` and compute every node's per-sample shape and live output units.

    Args:
        model: any minievo Module whose forward the trace can follow (see the module doc).
        input_shape: one sample's shape, e.g. (1, 28, 28).

    Returns:
        The :class:`Structure`; ``node.live`` marks the output units that depend on the input.

    Raises:
        StructureError: for a forward the walk cannot follow.
        ValueError: when the shapes do not fit together (naming the layer).
    """
    structure = trace(model, input_shape)
    nodes = structure.nodes
    nodes[0].out_shape = structure.input_shape
    nodes[0].live = np.ones(structure.input_shape[0], dtype=bool)
    for node in nodes[1:]:
        node.in_shapes = [nodes[i].out_shape for i in node.inputs]
        lives = [nodes[i].live for i in node.inputs]
        layer = node.layer
        multi = getattr(layer, "arity", 1) > 1
        try:
            if multi:
                node.out_shape = tuple(layer.output_shape(*node.in_shapes))
                node.live = np.asarray(layer.live_outputs(lives, node.in_shapes), dtype=bool)
            else:
                if len(node.inputs) != 1:
                    raise ValueError(f"is called with {len(node.inputs)} inputs; a layer of "
                                     "several inputs declares arity")
                node.out_shape = tuple(layer.output_shape(node.in_shapes[0]))
                node._live_in = lives[0]
                node.live = np.asarray(layer.live_outputs(lives[0], node.in_shapes[0]),
                                       dtype=bool)
        except ValueError as e:
            raise ValueError(f"layer {node.name} ({layer!r}): {e}") from None
        if node.out_shape != node.traced_shape:
            raise ValueError(
                f"layer {node.name} ({type(layer).__name__}) declares the output shape "
                f"{node.out_shape} but its forward gave {node.traced_shape}: its output_shape() "
                "must say what its forward does (docs/extending.md)")
        if node.live.shape != (node.out_shape[0],):
            raise ValueError(f"layer {node.name} ({layer!r}) reports liveness of shape "
                             f"{node.live.shape} for output {node.out_shape}")
    return structure


def needed(structure: Structure) -> list[np.ndarray]:
    """The backward sweep: per node, the output units that something downstream reads.

    The model's outputs are all needed; a layer needs the input units that its needed *live*
    outputs read (:meth:`~minievo.layers.Module.needed_inputs`). A node read by several
    layers (the input of a residual block) needs what any of them needs.
    """
    nodes = structure.nodes
    need = [np.zeros(n.out_shape[0], dtype=bool) for n in nodes]
    need[-1][:] = True
    for node in reversed(nodes[1:]):
        kept = need[node.index] & node.live
        layer = node.layer
        if getattr(layer, "arity", 1) > 1:
            for i, n_in in zip(node.inputs, layer.needed_inputs(kept, node.in_shapes),
                               strict=True):
                need[i] |= n_in & nodes[i].live
        else:
            i = node.inputs[0]
            need[i] |= layer.needed_inputs(kept, node.in_shapes[0]) & nodes[i].live
    return need
