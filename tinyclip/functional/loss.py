"""Softmax, log-softmax and the classification losses, forward and backward side by side.

All of them subtract the row maximum before exponentiating: softmax(x) = softmax(x - c)
for any constant c, and with c = max(x) the largest exponent is e⁰ = 1, so nothing
overflows even at logits of ±1e4. The losses fuse log-softmax with the negative
log-likelihood in one op, whose gradient is simply (softmax - target).
"""

from __future__ import annotations

import math

from ..backend import device_of, get_array_module
from ..tensor import Function

_REDUCTIONS = ("mean", "sum", "none")


def _log_softmax(xp, x, axis):
    """log softmax(x) = (x - max) - log Σ exp(x - max), along ``axis``."""
    shifted = x - x.max(axis=axis, keepdims=True)
    shifted -= xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(loss, reduction):
    if reduction == "none":
        return loss
    total = loss.sum()
    return total / loss.size if reduction == "mean" else total


def _reduced_grad(xp, gy, shape, reduction):
    """The gradient of the reduction: d(loss_i) for each element, shaped ``shape``."""
    if reduction == "none":
        return gy
    g = gy / math.prod(shape) if reduction == "mean" else gy
    return xp.broadcast_to(g, shape)


# ---------------------------------------------------------------------------
# softmax and log-softmax
# ---------------------------------------------------------------------------

class Softmax(Function):
    """y = exp(x - max) / Σ exp(x - max) along ``axis``;  dx = y (gy - Σ gy y)"""

    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        y = x - x.max(axis=self.axis, keepdims=True)
        xp.exp(y, out=y)
        y /= y.sum(axis=self.axis, keepdims=True)
        self.y = y
        return y

    def backward(self, gy):
        y = self.y
        gx = gy * y
        gx -= y * gx.sum(axis=self.axis, keepdims=True)  # y·gy - y·Σ(gy·y) = y (gy - Σ gy·y)
        return gx


class LogSoftmax(Function):
    """y = x - max - log Σ exp(x - max) along ``axis``;  dx = gy - softmax(x) Σ gy"""

    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        self.y = _log_softmax(get_array_module(x), x, self.axis)
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


def softmax(x, axis: int = -1):
    """Probabilities along ``axis``: exp(x) / Σ exp(x), computed with the maximum subtracted."""
    return Softmax(axis)(x)


def log_softmax(x, axis: int = -1):
    """log softmax(x) along ``axis``, computed as x - max - log Σ exp(x - max)."""
    return LogSoftmax(axis)(x)


# ---------------------------------------------------------------------------
# cross-entropy (multi-class) and binary cross-entropy
# ---------------------------------------------------------------------------

class CrossEntropy(Function):
    """loss_i = -Σ_c q_ic log softmax(x_i)_c, q = (1 - ε) onehot(t_i) + ε / C.

    logits: (N, C), targets: integer (N,) → a scalar (mean or sum) or (N,) for "none".
    dlogits_i = (softmax(x_i) - q_i) · dloss_i  (dloss_i = gy / N for the mean).
    """

    def __init__(self, label_smoothing: float, reduction: str):
        self.smoothing, self.reduction = label_smoothing, reduction

    def forward(self, logits, targets):
        xp = get_array_module(logits)
        if logits.ndim != 2:
            raise ValueError(f"cross_entropy: logits must be (N, C), got shape {logits.shape}")
        n, c = logits.shape
        targets = xp.asarray(targets)
        if targets.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: targets must be integer class indices, got dtype {targets.dtype}")
        if targets.shape != (n,):
            raise ValueError(f"cross_entropy: targets must have shape ({n},), got {targets.shape}")
        # On CuPy, int(targets.min()) would wait for the GPU on every call; there a bad target wraps
        # round (CuPy's indexing) into a wrong loss instead of raising, so the CPU is where it is caught.
        if n and device_of(targets) == "cpu" and (int(targets.min()) < 0 or int(targets.max()) >= c):
            bad = int(targets.min()) if int(targets.min()) < 0 else int(targets.max())
            raise IndexError(f"cross_entropy: target {bad} is out of range for {c} classes")
        logp = _log_softmax(xp, logits, axis=1)
        self.logp, self.targets = logp, targets
        eps = self.smoothing
        loss = -xp.take_along_axis(logp, targets[:, None], axis=1)[:, 0]
        if eps:
            loss *= 1.0 - eps
            loss -= (eps / c) * logp.sum(axis=1)
        return _reduce(loss, self.reduction)

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c = self.logp.shape
        g = _reduced_grad(xp, gy, (n,), self.reduction)[:, None]
        grad = xp.exp(self.logp)  # softmax, from the saved log-softmax
        if self.smoothing:
            grad -= self.smoothing / c
        rows = xp.arange(n)
        grad[rows, self.targets] -= 1.0 - self.smoothing
        grad *= g
        return grad, None


class SoftCrossEntropy(Function):
    """loss_i = -Σ_c q_ic log softmax(x_i)_c for a target distribution q (rows sum to 1).

    logits and targets: (N, C) → the mean over N.  dlogits = (softmax(x) - q) · gy / N.
    """

    def forward(self, logits, targets):
        xp = get_array_module(logits)
        if logits.ndim != 2 or targets.shape != logits.shape:
            raise ValueError(f"soft_cross_entropy: logits {logits.shape} and targets {targets.shape} "
                             "must both be (N, C)")
        self.logp, self.targets = _log_softmax(xp, logits, axis=1), targets.astype(logits.dtype)
        return -(self.targets * self.logp).sum() / logits.shape[0]

    def backward(self, gy):
        xp = get_array_module(gy)
        grad = xp.exp(self.logp) - self.targets
        grad *= gy / self.logp.shape[0]
        return grad, None


class BinaryCrossEntropyWithLogits(Function):
    """loss = -[t log σ(x) + (1 - t) log(1 - σ(x))] = max(x, 0) - x t + log(1 + e^(-|x|)).

    logits and targets: the same shape → a scalar (mean or sum) or that shape for "none".
    dx = (σ(x) - t) · dloss;  dt = -x · dloss.
    """

    def __init__(self, reduction: str):
        self.reduction = reduction

    def forward(self, x, t):
        if x.shape != t.shape:
            raise ValueError(f"binary_cross_entropy_with_logits: logits {x.shape} and targets {t.shape} "
                             "must have the same shape")
        if t.dtype != x.dtype:  # float64 targets must not turn a float32 loss into float64
            t = t.astype(x.dtype)
        xp = get_array_module(x)
        self.x, self.t = x, t
        # The stable form: e^(-|x|) ≤ 1 never overflows, and log1p keeps precision when it is tiny.
        loss = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
        return _reduce(loss, self.reduction)

    def backward(self, gy):
        xp = get_array_module(gy)
        x = self.x
        g = _reduced_grad(xp, gy, x.shape, self.reduction)
        gx = gt = None
        if self.needs_input_grad[0]:
            sigmoid = 0.5 + 0.5 * xp.tanh(0.5 * x)  # σ(x) without overflow in e^(-x)
            gx = (sigmoid - self.t) * g
        if self.needs_input_grad[1]:
            gt = -x * g
        return gx, gt


def cross_entropy(logits, targets, label_smoothing: float = 0.0, reduction: str = "mean"):
    """Softmax cross-entropy of ``logits`` (N, C) against integer class ``targets`` (N,).

    ``label_smoothing`` ε spreads ε of the target's probability evenly over all C classes.
    ``reduction``: "mean" (over N), "sum" or "none" (a loss per row, shape (N,)).
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return CrossEntropy(float(label_smoothing), _check_reduction(reduction))(logits, targets)


def binary_cross_entropy_with_logits(logits, targets, reduction: str = "mean"):
    """Binary cross-entropy of sigmoid(``logits``) against float ``targets`` in [0, 1], same shape.

    ``reduction``: "mean" (over all elements), "sum" or "none".
    """
    return BinaryCrossEntropyWithLogits(_check_reduction(reduction))(logits, targets)


def soft_cross_entropy(logits, targets):
    """Mean cross-entropy of ``logits`` (N, C) against target distributions ``targets`` (N, C), an array."""
    return SoftCrossEntropy()(logits, targets)
