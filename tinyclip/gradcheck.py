"""Gradient checking: compare a backward pass with finite differences.

For a function ``f`` of tensors, reduce its output to a scalar with fixed random
weights ``w`` (``L = sum(w * f(x))``), then compare the analytic gradient ``dL/dx``
from ``backward`` with the central difference

    dL/dx_i  ≈  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

in float64. The full check costs two forward passes per input element; the fast
mode (``directions=k``) instead checks ``k`` random directions ``d``,
``dL/dx · d ≈ (L(x + eps d) - L(x - eps d)) / (2 eps)``, as Chainer's
``check_backward`` does: two forward passes per direction, whatever the size.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when backward and finite differences disagree; the message says where."""


def _weighted_sum(fn, tensors, weights):
    out = fn(*tensors)
    outs = out if isinstance(out, tuple) else (out,)
    total = 0.0
    for y, w in zip(outs, weights):
        if w is not None:
            total += float((y.data * w).sum())
    return total


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4,
              directions: int | None = None, seed: int = 0) -> bool:
    """Check ``fn(*inputs)``'s backward against central differences; raise ``GradcheckError`` if off.

    ``inputs``: arrays or Tensors. Float inputs are converted to float64 and checked
    (integer inputs such as token ids are passed through). ``directions=None`` checks
    every element; ``directions=k`` checks ``k`` random directions (fast mode).
    Returns True on success.
    """
    rng = np.random.default_rng(seed)
    tensors = []
    for x in inputs:
        data = x.data if isinstance(x, Tensor) else x
        xp = backend.get_array_module(data)
        data = xp.asarray(data)
        is_float = data.dtype.kind == "f"
        tensors.append(Tensor(data.astype(xp.float64) if is_float else data, requires_grad=is_float))

    with backend.default_dtype_as(np.float64):
        out = fn(*tensors)
        outs = out if isinstance(out, tuple) else (out,)
        weights = []
        for y in outs:
            if y.dtype.kind != "f" or not y.requires_grad:
                weights.append(None)
                continue
            xp = y.xp
            weights.append(xp.asarray(rng.standard_normal(y.shape)))
        if all(w is None for w in weights):
            raise GradcheckError("gradcheck: no float output of fn depends on a float input")
        loss = None
        for y, w in zip(outs, weights):
            if w is not None:
                term = (y * Tensor(w)).sum()
                loss = term if loss is None else loss + term
        loss.backward()
        analytic = [t.grad for t in tensors]

        for index, t in enumerate(tensors):
            if not t.requires_grad:
                continue
            grad = analytic[index]
            if grad is None:
                grad = t.xp.zeros_like(t.data)
            grad = backend.to_numpy(grad)
            x0 = t.data.copy()

            def loss_at(delta):
                t.data = x0 + delta
                return _weighted_sum(fn, tensors, weights)

            if directions is None:
                flat = np.zeros(x0.size)
                for i in range(x0.size):
                    flat[i] = eps
                    delta = t.xp.asarray(flat.reshape(x0.shape))
                    numeric = (loss_at(delta) - loss_at(-delta)) / (2 * eps)
                    flat[i] = 0.0
                    got = float(grad.reshape(-1)[i])
                    if not abs(got - numeric) <= atol + rtol * abs(numeric):
                        t.data = x0
                        where = tuple(int(j) for j in np.unravel_index(i, x0.shape))  # (1, 2), not np.int64s
                        raise GradcheckError(
                            f"gradcheck failed for input {index} (shape {x0.shape}) at element {where}: "
                            f"backward gives {got!r}, finite differences give {numeric!r}\n"
                            f"input {index} =\n{backend.to_numpy(x0)}")
            else:
                for k in range(directions):
                    d = rng.standard_normal(x0.shape)
                    delta = t.xp.asarray(d * eps)
                    numeric = (loss_at(delta) - loss_at(-delta)) / (2 * eps)
                    got = float((grad * d).sum())
                    if not abs(got - numeric) <= atol + rtol * abs(numeric):
                        t.data = x0
                        raise GradcheckError(
                            f"gradcheck failed for input {index} (shape {x0.shape}) along random direction {k}: "
                            f"backward gives {got!r}, finite differences give {numeric!r}\n"
                            f"direction =\n{d}\ninput {index} =\n{backend.to_numpy(x0)}")
            t.data = x0
    return True
