"""Reductions: sum, mean, max and variance over ``axis`` (None = all), with ``keepdims``.

Backward restores the reduced axes as size 1 and broadcasts the gradient over them.
"""

from __future__ import annotations

import math

from ..backend import get_array_module
from ..tensor import Function


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def _keepdims_shape(shape, axes):
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


class Sum(Function):
    """y = Σ x over axes;  dx = gy broadcast back"""

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axes = _normalize_axis(self.axis, x.ndim)
        self.x_shape = x.shape
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        gy = gy.reshape(_keepdims_shape(self.x_shape, self.axes))
        return xp.broadcast_to(gy, self.x_shape).copy()


class Mean(Sum):
    """y = mean of x over axes;  dx = gy / count, broadcast back"""

    def forward(self, x):
        y = super().forward(x)
        self.count = math.prod(x.shape[a] for a in self.axes)
        return y / self.count

    def backward(self, gy):
        return super().backward(gy / self.count)


class Max(Function):
    """y = max of x over axes;  dx = gy at the first position of the maximum (exactly one per output)"""

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        xp = get_array_module(x)
        self.axes = _normalize_axis(self.axis, x.ndim)
        self.x_shape = x.shape
        # Move the reduced axes to the end and flatten them, so one argmax finds the winner.
        kept = [i for i in range(x.ndim) if i not in self.axes]
        self.perm = kept + list(self.axes)
        flat = x.transpose(self.perm).reshape([x.shape[i] for i in kept] + [-1])
        self.arg = flat.argmax(axis=-1)
        y = xp.take_along_axis(flat, self.arg[..., None], axis=-1)[..., 0]
        return y.reshape(_keepdims_shape(x.shape, self.axes)) if self.keepdims else y

    def backward(self, gy):
        xp = get_array_module(gy)
        kept_shape = [self.x_shape[i] for i in self.perm[: len(self.perm) - len(self.axes)]]
        reduced = [self.x_shape[i] for i in self.axes]
        flat = xp.zeros(kept_shape + [math.prod(reduced)], dtype=gy.dtype)
        xp.put_along_axis(flat, self.arg[..., None], gy.reshape(kept_shape)[..., None], axis=-1)
        inverse = sorted(range(len(self.perm)), key=self.perm.__getitem__)
        return flat.reshape(kept_shape + reduced).transpose(inverse)


class Var(Function):
    """y = mean((x - mean x)²) over axes (population variance);  dx = gy · 2 (x - mean) / count"""

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axes = _normalize_axis(self.axis, x.ndim)
        self.x_shape = x.shape
        self.centered = x - x.mean(axis=self.axes, keepdims=True)
        self.count = math.prod(x.shape[a] for a in self.axes)
        return (self.centered ** 2).mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        gy = gy.reshape(_keepdims_shape(self.x_shape, self.axes))
        return gy * self.centered * (2 / self.count)


def sum(x, axis=None, keepdims=False):
    return Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False):
    return Mean(axis, keepdims)(x)


def max(x, axis=None, keepdims=False):
    return Max(axis, keepdims)(x)


def var(x, axis=None, keepdims=False):
    return Var(axis, keepdims)(x)
