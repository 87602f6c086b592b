"""A minimal reverse-mode automatic differentiation engine.

Read this file top to bottom in one sitting:

* :class:`Tensor` wraps an array of the current backend (``.data``) and, after a backward
  pass, its gradient (``.grad``, a plain array of the same shape).
* :class:`Function` is one differentiable operation. ``forward`` computes raw arrays from raw
  arrays; ``backward`` turns the gradient of the output into gradients of the inputs.
  ``SomeFunction.apply(a, b, **params)`` runs it and links the result into the graph.
* :meth:`Tensor.backward` walks the graph once in reverse topological order, so a tensor used
  several times (a reused node, a diamond) has all its gradient contributions summed before
  they flow further back.
* :func:`no_grad` switches graph building off (evaluation, optimiser updates).
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

from minievo import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside this block, operations record no graph and results need no gradient."""
    global _grad_enabled
    old = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = old


@contextlib.contextmanager
def enable_grad():
    """Inside this block, operations record the graph again (even within no_grad)."""
    global _grad_enabled
    old = _grad_enabled
    _grad_enabled = True
    try:
        yield
    finally:
        _grad_enabled = old


def is_grad_enabled() -> bool:
    return _grad_enabled


def sum_to(grad, shape):
    """Sum a broadcast gradient back down to ``shape`` (the reverse of broadcasting).

    Example: x of shape (3, 1) added to y of shape (2, 3, 4) gives (2, 3, 4); the gradient for x
    is summed over axis 0 (added leading axis) and axis 2 (stretched from 1), keeping (3, 1).
    """
    # BEGIN SOLUTION task 2.3
    if grad.shape == tuple(shape):
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and grad.shape[i + lead] != 1
    )
    out = grad.sum(axis=axes, keepdims=True)
    if lead:
        out = out.reshape(out.shape[lead:])
    return out.reshape(shape)
    # END SOLUTION


class Tensor:
    """An array with an optional gradient and a link to the Function that created it.

    Args:
        data: an array of either backend, or anything ``numpy.asarray`` accepts (created on
            the default backend; Python floats become float32).
        requires_grad: whether backward should compute ``.grad`` for this tensor.
    """

    # Make ndarray (op) Tensor defer to Tensor's reflected operators.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, np.generic):
            # A NumPy scalar (e.g. the result of a full reduction) keeps its dtype: a float64
            # sum must not turn into float32.
            data = backend.array(data, dtype=data.dtype)
        elif not (hasattr(data, "shape") and hasattr(data, "dtype")):
            data = backend.array(data)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator: Function | None = None
        self.name = name

    # ----- array-like properties -------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self.requires_grad else ""
        where = backend.backend_of(self.data)
        return f"Tensor({self.data!r}{extra}, backend={where})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when needed)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return float(self.data.reshape(-1)[0]) if self.data.size == 1 else float(self.data)

    def detach(self) -> Tensor:
        """A tensor sharing the data but cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # ----- backward ----------------------------------------------------------------------
    def backward(self, grad=None) -> None:
        """Back-propagate from this tensor; leaf tensors accumulate into ``.grad``.

        Args:
            grad: gradient of the final objective with respect to this tensor; defaults to
                ones (so ``loss.backward()`` works for a scalar loss).

        The graph is kept, so calling backward twice adds the gradients twice (as in most
        frameworks that retain the graph); zero them between steps with the optimiser.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: none of its inputs has "
                "requires_grad=True (or it was computed under no_grad())"
            )
        xp = backend.get_array_module(self.data)
        if grad is None:
            grad = xp.ones_like(self.data)
        elif isinstance(grad, Tensor):
            grad = grad.data
        if grad.shape != self.shape:
            raise ValueError(f"backward: grad has shape {grad.shape}, tensor has {self.shape}")

        # 1. Topological order of the functions reachable from self (iterative DFS).
        order: list[Function] = []
        seen: set[int] = set()
        if self.creator is not None:
            stack = [(self.creator, False)]
            while stack:
                fn, done = stack.pop()
                if done:
                    order.append(fn)
                    continue
                if id(fn) in seen:
                    continue
                seen.add(id(fn))
                stack.append((fn, True))
                for t in fn.inputs:
                    if t.creator is not None and id(t.creator) not in seen:
                        stack.append((t.creator, False))

        # 2. Gradients of intermediate tensors live here until their creator has used them.
        grads: dict[int, object] = {id(self): grad}
        # Arrays already stored as some leaf's .grad in this pass (and the caller's own grad):
        # a leaf must own its .grad, not share it (Add hands the same gy to both inputs).
        handed: set[int] = {id(grad)}
        if self.creator is None:  # backward on a leaf
            self._accumulate(grad, handed)
            return
        for fn in reversed(order):
            gy = grads.pop(id(fn.output), None)
            if gy is None:  # output not on a path to self
                continue
            gxs = fn.backward(gy)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for t, gx, need in zip(fn.inputs, gxs, fn.needs_grad):
                if not need or gx is None:
                    continue
                if gx.shape != t.shape:
                    gx = sum_to(gx, t.shape)
                if t.creator is None:
                    t._accumulate(gx, handed)
                else:
                    key = id(t)
                    grads[key] = gx if key not in grads else grads[key] + gx

    def _accumulate(self, g, handed: set[int]) -> None:
        """Add ``g`` into ``self.grad`` without ever writing into an array someone else holds.

        The first gradient is stored as is when it is a fresh array (the common case: no copy).
        It is copied when it is a view or read-only (``broadcast_to`` in Sum's backward) or was
        already handed out. Later contributions make a new sum instead of ``+=``, since the
        stored array may still be the pending gradient of an intermediate tensor.
        """
        if self.grad is None:
            shared = (g.base is not None or not getattr(g.flags, "writeable", True)
                      or id(g) in handed)
            self.grad = g.copy() if shared else g
            handed.add(id(self.grad))
        else:
            self.grad = self.grad + g

    # ----- operators (defined in minievo.functions, attached below) -----------------------
    def __add__(self, other):
        return _fns().add(self, other)

    def __radd__(self, other):
        return _fns().add(other, self)

    def __sub__(self, other):
        return _fns().sub(self, other)

    def __rsub__(self, other):
        return _fns().sub(other, self)

    def __mul__(self, other):
        return _fns().mul(self, other)

    def __rmul__(self, other):
        return _fns().mul(other, self)

    def __truediv__(self, other):
        return _fns().div(self, other)

    def __rtruediv__(self, other):
        return _fns().div(other, self)

    def __neg__(self):
        return _fns().neg(self)

    def __pow__(self, exponent):
        return _fns().pow(self, exponent)

    def __matmul__(self, other):
        return _fns().matmul(self, other)

    def __rmatmul__(self, other):
        return _fns().matmul(other, self)

    def __getitem__(self, index):
        return _fns().getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        return _fns().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _fns().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _fns().max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _fns().reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _fns().transpose(self, axes or None)

    @property
    def T(self):
        return _fns().transpose(self, None)

    def exp(self):
        return _fns().exp(self)

    def log(self):
        return _fns().log(self)

    def relu(self):
        return _fns().relu(self)


class Parameter(Tensor):
    """A trainable tensor. ``mask`` (optional 0/1 array) marks entries that must stay zero."""

    def __init__(self, data, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)
        self.mask = None


def as_tensor(x, like=None) -> Tensor:
    """Wrap ``x`` as a Tensor; Python scalars take the dtype and backend of ``like``."""
    if isinstance(x, Tensor):
        return x
    if like is not None and not hasattr(x, "shape"):
        xp = backend.get_array_module(like.data)
        return Tensor(xp.asarray(x, dtype=like.dtype))
    return Tensor(x)


class Function:
    """One differentiable operation; subclass it and write ``forward`` and ``backward``.

    ``forward(*arrays, **params)`` gets the raw arrays of the inputs and returns one raw array.
    Anything backward needs is saved on ``self``. ``backward(gy)`` returns one gradient per
    input (a tuple, or a single array for one input); ``None`` for an input needing none.
    ``self.needs_grad[i]`` tells whether input i wants a gradient, so costly ones can be
    skipped.
    """

    inputs: tuple[Tensor, ...]
    needs_grad: tuple[bool, ...]
    # The output links back to its creator (``out.creator = fn``); the function refers to its
    # output only weakly, so no reference cycle keeps a finished graph (and every array it
    # saved) alive until Python's cycle collector happens to run.
    _output: weakref.ref

    @property
    def output(self) -> Tensor | None:
        return self._output()

    def forward(self, *xs, **params):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params) -> Tensor:
        like = next((t for t in inputs if isinstance(t, Tensor)), None)
        tensors = tuple(as_tensor(t, like) for t in inputs)
        arrays = [t.data for t in tensors]
        backend.get_array_module(*arrays)  # a clear error when numpy and cupy meet here
        fn = cls()
        fn.needs_grad = tuple(t.requires_grad for t in tensors)
        y = fn.forward(*arrays, **params)
        if isinstance(y, np.generic):  # NumPy reductions return scalars; keep them on NumPy
            y = np.asarray(y)
        out = Tensor(y)
        if _grad_enabled and any(fn.needs_grad):
            out.requires_grad = True
            out.creator = fn
            fn.inputs = tensors
            fn._output = weakref.ref(out)
        return out


def _fns():
    # Imported lazily: minievo.functions builds on this module.
    from minievo import functions

    return functions
