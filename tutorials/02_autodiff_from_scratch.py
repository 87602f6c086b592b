# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 2 — Automatic differentiation from scratch
#
# Training a network means following the gradient of a loss with respect to hundreds of
# thousands of weights. Nobody writes those derivatives by hand: the framework records the
# computation as a graph and runs the chain rule backwards through it. This chapter builds
# that idea twice: first a 30-line engine for scalars, then minievo's real engine for arrays
# (`minievo/autograd.py`, about 350 lines that you can read in one sitting).
#
# Assignment tasks of this chapter: **2.1** the backward pass of `Mul`, **2.2** the backward
# pass of `MatMul`, **2.3** `sum_to`, the reverse of broadcasting.

# %%
import math
import sys

import matplotlib

if "ipykernel" not in sys.modules:  # as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from minievo import tutorial

# Fast mode, the figures folder and save(fig, name): the set-up all chapters share.
FAST = tutorial.fast_mode()
FIGURES, RUNS = tutorial.folders(globals().get("__file__"))
save = tutorial.figure_saver(FIGURES)


# %% [markdown]
# ## 1. The chain rule on a graph
#
# Take $L = (x y + y)\,\tanh(x)$. Evaluating it is a sequence of elementary steps, each with a
# derivative we know:
#
# $$u = x y,\quad v = u + y,\quad w = \tanh(x),\quad L = v\,w .$$
#
# The chain rule says how a change of an input propagates to $L$. Going **backwards** from
# $L$, every node receives $\bar{n} = \partial L / \partial n$ (its *adjoint*) and hands each
# of its inputs $\bar{n}$ times the local derivative:
#
# $$\bar v = w,\quad \bar w = v,\quad \bar u = \bar v,\quad
#   \bar y = \bar v \cdot 1 + \bar u \cdot x,\quad
#   \bar x = \bar u \cdot y + \bar w\,(1 - \tanh^2 x).$$
#
# Note how $y$ and $x$ are used twice: their adjoints are **sums** over every path. One
# backward sweep gives the derivative of $L$ with respect to *every* input at about the cost
# of one forward pass. That is reverse-mode automatic differentiation (backpropagation), and
# it is why training a network with a million weights costs a few forward passes, not a
# million.
#
# The only subtle point is the order: a node may pass its adjoint on only once it has received
# the contributions of *all* its users. A reverse topological order of the graph guarantees
# that.

# %%
class Scalar:
    """A number that remembers how it was computed (a minimal reverse-mode engine)."""

    def __init__(self, value, parents=(), local_grads=(), op=""):
        self.value = float(value)
        self.grad = 0.0
        self.parents = parents  # the Scalars it was computed from
        self.local_grads = local_grads  # d(self)/d(parent) for each parent
        self.op = op

    def __add__(self, other):
        other = other if isinstance(other, Scalar) else Scalar(other)
        return Scalar(self.value + other.value, (self, other), (1.0, 1.0), "+")

    def __mul__(self, other):
        other = other if isinstance(other, Scalar) else Scalar(other)
        return Scalar(self.value * other.value, (self, other), (other.value, self.value), "*")

    def tanh(self):
        t = math.tanh(self.value)
        return Scalar(t, (self,), (1.0 - t * t,), "tanh")

    def backward(self):
        order, seen = [], set()

        def visit(node):  # depth-first: a node is appended after everything it depends on
            if id(node) not in seen:
                seen.add(id(node))
                for p in node.parents:
                    visit(p)
                order.append(node)

        visit(self)
        self.grad = 1.0
        for node in reversed(order):  # every user of a node comes before the node itself
            for parent, local in zip(node.parents, node.local_grads):
                parent.grad += local * node.grad


x, y = Scalar(0.5), Scalar(-1.5)
L = (x * y + y) * x.tanh()
L.backward()
print(f"L = {L.value:.6f}, dL/dx = {x.grad:.6f}, dL/dy = {y.grad:.6f}")


def f(x, y):
    return (x * y + y) * math.tanh(x)


h = 1e-6
print(f"central differences: dL/dx = {(f(0.5 + h, -1.5) - f(0.5 - h, -1.5)) / (2 * h):.6f}, "
      f"dL/dy = {(f(0.5, -1.5 + h) - f(0.5, -1.5 - h)) / (2 * h):.6f}")

# %% [markdown]
# ## 2. From scalars to arrays: `Tensor` and `Function`
#
# A real network works on arrays, and a graph with one node per number would be hopelessly
# slow. minievo's engine has one node per *array operation*:
#
# * `Tensor` holds `data` (a NumPy or CuPy array), `grad` (after a backward pass), and
#   `creator`, the `Function` that produced it.
# * `Function.forward(*arrays)` computes the output from raw arrays and saves what the
#   backward pass needs; `Function.backward(gy)` receives the output's adjoint `gy` (an array
#   of the output's shape) and returns one adjoint per input (`None` where an input needs no
#   gradient: `self.needs_grad[i]` says which do).
# * `SomeFunction.apply(a, b, **params)` runs forward and links the result into the graph.
# * `Tensor.backward()` orders the graph topologically (an iterative depth-first search, so
#   deep graphs do not hit Python's recursion limit) and calls every `backward` once, summing
#   the adjoints of tensors used more than once.
#
# Writing a new differentiable op is therefore two small methods. Here is softplus,
# $\mathrm{softplus}(x) = \log(1 + e^x)$, whose derivative is the logistic sigmoid
# $\sigma(x) = 1 / (1 + e^{-x})$:

# %%
from minievo import functions as F
from minievo.autograd import Function, Tensor, no_grad
from minievo.backend import get_array_module
from minievo.testing import gradient_check


class Softplus(Function):
    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        # log(1 + e^x) computed without overflow: max(x, 0) + log1p(e^-|x|)
        return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy * 0.5 * (xp.tanh(0.5 * self.x) + 1)  # gy * sigmoid(x)


def softplus(x):
    return Softplus.apply(x)


x = Tensor(np.array([-30.0, -1.0, 0.0, 2.0, 30.0]), requires_grad=True)
y = softplus(x)
y.backward(np.ones(5))
print("softplus:", y.data)
print("gradient:", x.grad)
print(gradient_check(softplus, [Tensor(np.linspace(-3, 3, 7), requires_grad=True)]))

# %% [markdown]
# `gradient_check` (in `minievo/testing.py`) is the test every op of minievo passes. It weights
# the output with a fixed random array $R$, $\;L(x) = \sum_k f(x)_k R_k$, so that two swapped
# output elements cannot hide, and compares the backward pass started with `grad=R` against
# central differences
#
# $$\frac{\partial L}{\partial x_i} \approx \frac{L(x + \epsilon e_i) - L(x - \epsilon e_i)}
#   {2\epsilon}.$$
#
# Why in float64? The central difference has a *truncation* error of order $\epsilon^2$
# and a *rounding* error of order $u / \epsilon$, with $u$ the unit roundoff of the dtype
# ($6\cdot 10^{-8}$ in float32, $1.1\cdot 10^{-16}$ in float64). The best $\epsilon$ balances
# them; in float32 the best achievable error is about $10^{-5}$ relative, too coarse to catch
# subtle bugs. The figure measures it.

# %%
def f_np(v):
    return v * np.tanh(v)


def df_exact(v):
    return np.tanh(v) + v * (1 - np.tanh(v) ** 2)


steps = np.logspace(-12, -1, 23)
x0 = 0.7
errors = {}
for dtype in (np.float32, np.float64):
    xv = dtype(x0)
    errors[dtype] = [abs(float((f_np(xv + dtype(h)) - f_np(xv - dtype(h))) / dtype(2 * h))
                         - df_exact(x0)) + 1e-18 for h in steps]

grid = np.linspace(-3, 3, 61 if FAST else 241)
xt = Tensor(grid.copy(), requires_grad=True)
yt = F.mul(xt, F.tanh(xt))  # elementwise x * tanh(x), through the engine
yt.backward(np.ones_like(grid))
numeric = (f_np(grid + 1e-6) - f_np(grid - 1e-6)) / 2e-6

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(grid, yt.data, label="f(x) = x tanh(x)")
axes[0].plot(grid, xt.grad, label="f'(x) by backward()")
axes[0].plot(grid[::6], numeric[::6], "k.", label="f'(x) by central differences")
axes[0].set_xlabel("x")
axes[0].legend()
axes[0].set_title("The engine's derivative against finite differences")
for dtype, style in ((np.float32, "o-"), (np.float64, "s-")):
    axes[1].loglog(steps, errors[dtype], style, label=np.dtype(dtype).name)
axes[1].set_xlabel("step epsilon")
axes[1].set_ylabel("|central difference - exact derivative|")
axes[1].set_title("Truncation (right) against rounding (left)")
axes[1].grid(True, which="both", alpha=0.3)
axes[1].legend()
save(fig, "02_gradient_check.png")
print("max |backward - numeric| over the grid:", np.abs(xt.grad - numeric).max())

# %% [markdown]
# ## 3. The backward passes you will write
#
# **Task 2.1 — `Mul`.** For an element-wise product $y = a \odot b$ each output element depends
# on one element of each input, $\partial y_k / \partial a_k = b_k$, so
#
# $$\bar a = \bar y \odot b, \qquad \bar b = \bar y \odot a .$$
#
# `Mul.forward` saves `a` and `b` for this. Return `None` for an input with
# `self.needs_grad[i] == False` to skip work nobody needs.
#
# **Task 2.2 — `MatMul`.** For $Y = A B$ with $A$ of shape (m, n) and $B$ of shape (n, p),
# $Y_{ik} = \sum_j A_{ij} B_{jk}$. The adjoint of $A_{ij}$ collects $\bar Y_{ik} B_{jk}$ over
# all $k$:
#
# $$\bar A_{ij} = \sum_k \bar Y_{ik} B_{jk} = (\bar Y B^\top)_{ij}, \qquad
#   \bar B_{jk} = \sum_i A_{ij} \bar Y_{ik} = (A^\top \bar Y)_{jk}.$$
#
# A quick sanity check for such formulas: the shapes must work out. $\bar Y$ is (m, p),
# $B^\top$ is (p, n), so $\bar Y B^\top$ is (m, n), the shape of $A$. Every linear layer of
# every network in this course runs through this backward pass.
#
# **Task 2.3 — `sum_to`.** Binary ops broadcast (chapter 1). If `x` of shape (3, 1) is added to
# `y` of shape (2, 3, 4), the output and its adjoint have shape (2, 3, 4); each element of `x`
# was *used* 2 * 4 = 8 times, so its adjoint is the sum of those 8 adjoints. In general:
# sum over the leading axes that broadcasting added, and (keeping the axis) over every axis
# where `x` had length 1 and the output did not. The engine calls
# `sum_to(gx, x.shape)` whenever an op returns a gradient of the wrong shape, so the backward
# methods of the binary ops never think about broadcasting.
#
# The graph below is `L = sum(tanh(x @ w + b) * tanh(x @ w + b))` with `b` broadcast over the
# batch: all three tasks are in it. Its gradients are checked against finite differences.

# %%
rng = np.random.default_rng(0)
xs = Tensor(rng.normal(size=(4, 3)), name="x")
w = Tensor(rng.normal(size=(3, 2)), requires_grad=True, name="w")
b = Tensor(rng.normal(size=(2,)), requires_grad=True, name="b")


def net(w, b):
    h = F.tanh(F.matmul(xs, w) + b)  # MatMul, Add with broadcasting (b: (2,) -> (4, 2))
    return F.sum(F.mul(h, h))  # Mul with the same tensor twice


loss = net(w, b)
loss.backward()
print("dL/dw =\n", w.grad, "\ndL/db =", b.grad)
print(gradient_check(net, [Tensor(w.data.copy(), requires_grad=True),
                           Tensor(b.data.copy(), requires_grad=True)]))


# %%
def draw_graph(output, ax):
    """Draw the graph that produced ``output``: tensors as ellipses, functions as boxes."""
    nodes, edges, depth = {}, [], {}

    def visit(t):
        key = ("t", id(t))
        if key in nodes:
            return depth[key]
        label = t.name or ("output" if t is output else "")
        nodes[key] = f"{label}\n{tuple(t.shape)}".strip()
        if t.creator is None:
            depth[key] = 0
            return 0
        fn = t.creator
        fkey = ("f", id(fn))
        if fkey not in nodes:
            nodes[fkey] = type(fn).__name__
            depth[fkey] = 1 + max(visit(i) for i in fn.inputs)
            for i in fn.inputs:
                edges.append((("t", id(i)), fkey))
        edges.append((fkey, key))
        depth[key] = depth[fkey] + 1
        return depth[key]

    visit(output)
    columns = {}
    for key, d in sorted(depth.items(), key=lambda kv: kv[1]):
        columns.setdefault(d, []).append(key)
    pos = {}
    for d, keys in columns.items():
        for k, key in enumerate(keys):
            pos[key] = (d, (len(keys) - 1) / 2 - k)
    for a, b_ in set(edges):
        ax.annotate("", xy=pos[b_], xytext=pos[a],
                    arrowprops=dict(arrowstyle="->", color="gray", shrinkA=18, shrinkB=18))
        if edges.count((a, b_)) > 1:  # one tensor used as several inputs of one function
            mid = ((pos[a][0] + pos[b_][0]) / 2, (pos[a][1] + pos[b_][1]) / 2 + 0.15)
            ax.text(*mid, f"x{edges.count((a, b_))}", ha="center", fontsize=8, color="red")
    for key, (px, py) in pos.items():
        style = ("round,pad=0.4", "#cde") if key[0] == "f" else ("circle,pad=0.3", "#fed")
        ax.text(px, py, nodes[key], ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle=style[0], fc=style[1], ec="k"))
    ax.set_xlim(-0.6, max(columns) + 0.6)
    ax.set_ylim(-2, 2)
    ax.axis("off")


fig, ax = plt.subplots(figsize=(12, 3.5))
draw_graph(loss, ax)
ax.set_title("The graph of sum(tanh(x @ w + b) * same): backward() visits it right to left")
save(fig, "02_graph.png")

# %% [markdown]
# ## 4. Reused nodes, `no_grad`, and accumulation
#
# A tensor used twice receives the sum of both adjoints. With $y = x \cdot x + x$ the engine
# must give $2x + 1$, and it does because `x`'s contributions from `Mul` (twice) and `Add`
# are summed before anything flows further.
#
# Two more rules of the engine:
#
# * **Accumulation.** Gradients of leaf tensors are *added* into `.grad`. A second
#   `backward()` doubles them, which is why every training step starts with
#   `optimizer.zero_grad()`.
# * **`no_grad()`.** Inside `with no_grad():` no graph is recorded: evaluation and optimiser
#   updates use it so they cost no memory for saved arrays.

# %%
x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
y = F.mul(x, x) + x
y.backward(np.ones(3))
print("d(x*x + x)/dx =", x.grad, " expected 2x + 1 =", 2 * x.data + 1)
y.backward(np.ones(3))
print("after a second backward():", x.grad, "(accumulated)")
with no_grad():
    z = F.mul(x, x)
print("under no_grad: requires_grad =", z.requires_grad, ", creator =", z.creator)

# %% [markdown]
# ## Exercises
#
# 1. **Task 2.1** (`minievo/functions/math.py`, `Mul.backward`) and **task 2.2**
#    (`MatMul.backward`). Write the two methods in your student copy (the folder your
#    instructor handed out; `minievo assignments new` makes one, but only in the reference
#    checkout, never inside a copy) and check them from inside it with
#    `minievo assignments grade --task 2.1 --task 2.2`.
# 2. **Task 2.3** (`minievo/autograd.py`, `sum_to`): sum a broadcast gradient back to a
#    shape. Test idea: $\langle \mathrm{sum\_to}(g), v\rangle = \langle g,
#    \mathrm{broadcast}(v)\rangle$ for every $v$ of the small shape.
# 3. Write `Sin` as a `Function` and check it with `gradient_check`. Then break its backward
#    on purpose (drop the cosine) and read the report.
# 4. The `Scalar` engine recurses in `visit`: build a chain of 5,000 additions and watch it
#    fail. How does `Tensor.backward` avoid that?
