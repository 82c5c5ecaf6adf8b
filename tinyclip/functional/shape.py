"""Ops that move values around without changing them: reshape, transpose, indexing, concatenate, stack, split.

Their backward moves the gradient back the same way: reshape it back, transpose
with the inverse permutation, scatter it into the indexed places, or cut it into
the concatenated pieces.
"""

from __future__ import annotations

from ..backend import get_array_module, scatter_add
from ..tensor import Function, Tensor


class Reshape(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.x_shape)


class Transpose(Function):
    """Permute axes; backward applies the inverse permutation."""

    def __init__(self, axes=None):
        self.axes = None if axes is None else tuple(axes)

    def forward(self, x):
        if self.axes is None:
            axes = tuple(reversed(range(x.ndim)))
        else:  # negative axes count from the end; the inverse below needs them non-negative
            axes = tuple(a % x.ndim for a in self.axes)
        self.inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))
        return x.transpose(axes)

    def backward(self, gy):
        return gy.transpose(self.inverse)


def _is_advanced(index) -> bool:
    """True unless every part is an int, slice, None or Ellipsis (basic indexing picks each element once)."""
    parts = index if isinstance(index, tuple) else (index,)
    return not all(p is None or p is Ellipsis or isinstance(p, slice)
                   or (isinstance(p, int) and not isinstance(p, bool)) for p in parts)


class GetItem(Function):
    """y = x[index]; backward scatters gy into zeros shaped like x (repeated indices add up)."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.x_shape, self.x_dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        if _is_advanced(self.index):
            scatter_add(gx, self.index, gy)
        else:  # basic slicing selects each element at most once
            gx[self.index] = gy
        return gx


class Concatenate(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, *xs):
        xp = get_array_module(xs[0])
        self.bounds = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        xp = get_array_module(gy)
        cuts = list(_cumsum(self.bounds[:-1]))
        return tuple(xp.split(gy, cuts, axis=self.axis))


class Split(Function):
    """Cut x along ``axis`` into pieces (an int count or a list of cut points, as ``numpy.split``)."""

    def __init__(self, sections, axis: int):
        self.sections, self.axis = sections, axis

    def forward(self, x):
        xp = get_array_module(x)
        return tuple(xp.split(x, self.sections, axis=self.axis))

    def backward(self, *gys):
        xp = get_array_module(gys[0])
        return xp.concatenate(gys, axis=self.axis)


def _cumsum(values):
    total = 0
    for v in values:
        total += v
        yield total


def reshape(x, shape):
    return Reshape(shape)(x)


def transpose(x, axes=None):
    return Transpose(axes)(x)


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem(index)(x)


def concatenate(xs, axis: int = 0):
    return Concatenate(axis)(*xs)


def stack(xs, axis: int = 0):
    """Stack same-shaped tensors along a new axis (as concatenating them with a new size-1 axis)."""
    expanded = []
    for x in xs:
        shape = list(x.shape)
        ax = axis if axis >= 0 else len(shape) + 1 + axis
        shape.insert(ax, 1)
        expanded.append(reshape(x, shape))
    return concatenate(expanded, axis=axis)


def split(x, sections, axis: int = 0):
    """Tuple of pieces of ``x``; ``sections``: number of equal parts or list of cut indices."""
    out = Split(sections, axis)(x)
    return out if isinstance(out, tuple) else (out,)
