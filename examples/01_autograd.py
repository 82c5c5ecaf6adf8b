"""Autograd from scalars to a tiny neural network.

What you will learn
-------------------
1. A Tensor remembers the op that made it; ``backward()`` applies the chain rule and
   leaves d(output)/d(input) in ``.grad`` (checked here against derivatives by hand).
2. How backward walks the graph: each result's ``.creator`` is a Function whose
   ``.inputs`` are the Tensors it consumed. We print that graph, in the order
   backward visits it (deepest op first).
3. Tensors behave the same: broadcasting in the forward pass becomes a sum in the
   backward pass, and a tensor used twice gets both gradients added.
4. Those pieces are enough to train: a two-layer MLP written as ``tanh(x @ W1 + b1) @ W2 + b2``
   with raw Tensors, fitted to y = sin(x) by gradient descent.

Run it:  python examples/01_autograd.py      (about 2 seconds on a laptop CPU;
         TINYCLIP_EXAMPLE_QUICK=1 trains for fewer steps, well under a second)

It prints the values and gradients of each step, the graph of a small expression,
the training loss every few hundred steps, and finally one line ``RESULT: final loss ...``.
"""

import math
import os
import time

import numpy as np

import tinyclip
from tinyclip import Tensor

QUICK = os.environ.get("TINYCLIP_EXAMPLE_QUICK") == "1"


def section(title):
    print(f"\n=== {title} ===")


# ---------------------------------------------------------------------------
# 1. scalars
# ---------------------------------------------------------------------------

def scalars():
    section("1. a scalar expression and its gradients")
    x = Tensor(2.0, requires_grad=True)
    y = Tensor(3.0, requires_grad=True)
    z = x * y + x ** 2 / y  # z = xy + x²/y
    z.backward()
    print(f"x = {x.item()}, y = {y.item()}, z = x*y + x**2/y = {z.item():.4f}")
    print(f"dz/dx = {x.grad.item():.4f}   by hand: y + 2x/y    = {3 + 2 * 2 / 3:.4f}")
    print(f"dz/dy = {y.grad.item():.4f}   by hand: x - x**2/y**2 = {2 - 4 / 9:.4f}")


# ---------------------------------------------------------------------------
# 2. the graph that backward walks
# ---------------------------------------------------------------------------

def backward_order(root):
    """The Functions behind ``root`` in the order backward runs them, each with its output tensor.

    Backward processes functions from the highest *generation* (distance from the
    leaves) down, so a function runs only once every use of its output has sent
    its gradient back.
    """
    made_by = {root.creator: root}
    stack, found = [root.creator], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in found:
            continue
        found.append(fn)
        for t in fn.inputs:
            if t.creator is not None:
                made_by.setdefault(t.creator, t)
                stack.append(t.creator)
    found.sort(key=lambda fn: -fn.generation)
    return [(fn, made_by[fn]) for fn in found]


def graph_walk():
    section("2. how backward walks the graph")
    a = Tensor(1.5, requires_grad=True)
    b = Tensor(-0.5, requires_grad=True)
    a.name, b.name = "a", "b"
    h = a * b
    h.name = "h"
    e = h.exp()
    e.name = "e"
    out = e + a  # a is used twice: directly and through h
    out.name = "out"
    print("out = exp(a * b) + a.  Backward visits, from the output back to the leaves:")
    for fn, result in backward_order(out):
        args = ", ".join(t.name or "?" for t in fn.inputs)
        call = f"{type(fn).__name__}({args})"
        print(f"  generation {fn.generation}: {call:<10} -> {result.name}")
    out.backward()  # walks exactly that list, then frees it
    print(f"d out/da = {a.grad.item():.4f}   by hand: b*exp(ab) + 1 = {-0.5 * math.exp(-0.75) + 1:.4f}")
    print(f"d out/db = {b.grad.item():.4f}   by hand: a*exp(ab)     = {1.5 * math.exp(-0.75):.4f}")
    print(f"after backward the Exp node keeps nothing: {type(e.creator).__name__}.__dict__ = {e.creator.__dict__}")


# ---------------------------------------------------------------------------
# 3. tensors and broadcasting
# ---------------------------------------------------------------------------

def tensors():
    section("3. tensors: broadcasting in forward is a sum in backward")
    x = Tensor(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32), requires_grad=True)
    b = Tensor(np.array([10.0, 20.0, 30.0], np.float32), requires_grad=True)
    y = ((x + b) * x).sum()  # b is added to both rows
    y.backward()
    print(f"x.shape {x.shape}, b.shape {b.shape}, y = sum((x + b) * x) = {y.item():.1f}")
    print("dy/dx = 2x + b =\n", x.grad)
    print("dy/db = column sums of x =", b.grad, "(one gradient per use of b, added up)")


# ---------------------------------------------------------------------------
# 4. a tiny MLP, from raw tensors
# ---------------------------------------------------------------------------

def mlp():
    section("4. fitting y = sin(x) with a two-layer MLP")
    tinyclip.manual_seed(0)
    rng = np.random.default_rng(0)
    hidden = 32
    x = np.linspace(-math.pi, math.pi, 64, dtype=np.float32).reshape(-1, 1)
    target = Tensor(np.sin(x))
    x = Tensor(x)

    def param(*shape, scale):
        return Tensor((rng.standard_normal(shape) * scale).astype(np.float32), requires_grad=True)

    W1, b1 = param(1, hidden, scale=1.0), param(hidden, scale=0.1)
    W2, b2 = param(hidden, 1, scale=1 / math.sqrt(hidden)), param(1, scale=0.1)
    params = [W1, b1, W2, b2]
    velocity = [np.zeros_like(p.data) for p in params]

    steps, lr, momentum = (300 if QUICK else 2000), 0.05, 0.9
    start = time.perf_counter()
    for step in range(steps + 1):
        pred = (x @ W1 + b1).tanh() @ W2 + b2
        loss = ((pred - target) ** 2).mean()
        for p in params:
            p.zero_grad()
        loss.backward()
        # SGD with momentum, on the raw arrays: the update itself is not part of any graph.
        for p, v in zip(params, velocity):
            v *= momentum
            v -= lr * p.grad
            p.data += v
        if step % (steps // 5) == 0:
            print(f"  step {step:5d}   mean squared error {loss.item():.5f}")
    print(f"{steps} steps in {time.perf_counter() - start:.2f} s")
    with tinyclip.no_grad():  # evaluation: no graph is recorded
        pred = (x @ W1 + b1).tanh() @ W2 + b2
        final = ((pred - target) ** 2).mean().item()
    for i in (0, 16, 32, 48):
        print(f"  sin({x.data[i, 0]:+.2f}) = {target.data[i, 0]:+.3f}   MLP: {pred.data[i, 0]:+.3f}")
    return final


if __name__ == "__main__":
    scalars()
    graph_walk()
    tensors()
    final = mlp()
    print(f"RESULT: final loss {final:.5f}")
