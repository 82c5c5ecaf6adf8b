"""Initialisers: fill a parameter in place with random or constant values.

Random draws come from the seeded generator of the parameter's device
(``backend.get_rng``), so ``tinyclip.manual_seed(s)`` makes a model repeat exactly,
and are drawn directly in the parameter's dtype (float32 draws are half the bytes,
and scaling by Python floats keeps them float32: a NumPy scalar such as
``np.sqrt(2.0)`` would silently promote them to float64).
"""

from __future__ import annotations

import math

from .. import backend
from .module import Parameter


def empty(*shape) -> Parameter:
    """An uninitialised Parameter of ``shape`` on the default device, in the default dtype."""
    xp = backend.default_xp()
    return Parameter(xp.empty(shape, dtype=backend.default_dtype()))


def _fill(param, values):
    param.data[...] = values
    return param


def uniform_(param, low: float = 0.0, high: float = 1.0):
    """U(low, high)."""
    data = param.data
    u = backend.get_rng(param.xp).random(data.shape, dtype=data.dtype)
    u *= float(high) - float(low)
    u += float(low)
    return _fill(param, u)


def normal_(param, mean: float = 0.0, std: float = 1.0):
    """N(mean, std²)."""
    data = param.data
    z = backend.get_rng(param.xp).standard_normal(data.shape, dtype=data.dtype)
    z *= float(std)
    z += float(mean)
    return _fill(param, z)


def zeros_(param):
    return _fill(param, 0)


def ones_(param):
    return _fill(param, 1)


def kaiming_uniform_(param, fan_in: int, a: float = math.sqrt(5)):
    """U(-b, b) with b = gain·√(3 / fan_in), gain = √(2 / (1 + a²)) (He et al., leaky-ReLU slope ``a``).

    The default a = √5 is PyTorch's choice for Linear and Conv2d weights; it gives
    exactly b = 1/√fan_in, the same bound PyTorch uses for their biases.
    """
    gain = math.sqrt(2.0 / (1.0 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in)
    return uniform_(param, -bound, bound)


def xavier_uniform_(param, fan_in: int, fan_out: int, gain: float = 1.0):
    """U(-b, b) with b = gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio)."""
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -bound, bound)
