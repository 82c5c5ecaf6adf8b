"""Layer normalisation and dropout, forward and backward side by side.

Layer norm standardises each feature vector (the last axis) to mean 0 and variance 1,
then scales and shifts it with learned ``weight`` and ``bias``. Dropout zeroes each
value with probability ``p`` during training and scales the survivors by 1/(1-p), so
the expected value is unchanged and evaluation needs no rescaling ("inverted" dropout).
"""

from __future__ import annotations

from ..backend import get_array_module, get_rng
from ..tensor import Function, as_tensor


# ---------------------------------------------------------------------------
# layer norm
# ---------------------------------------------------------------------------

def _standardize(xp, x, eps):
    """x̂ = (x - μ) / σ over the last axis, and 1/σ (kept as a (..., 1) column) with σ = √(var + eps)."""
    x_hat = x - x.mean(axis=-1, keepdims=True)
    # einsum squares and sums in one pass, without the temporary array of (x - μ)².
    var = xp.einsum("...i,...i->...", x_hat, x_hat)[..., None] / x.shape[-1]
    inv_std = 1.0 / xp.sqrt(var + eps)
    x_hat *= inv_std  # in place: fresh arrays cost page faults, in-place passes are ≈5× cheaper
    return x_hat, inv_std


class LayerNorm(Function):
    """y = x̂ w + b with x̂ = (x - mean(x)) / √(var(x) + eps) over the last axis.

    x: (..., D), weight and bias: (D,). Backward, with g = gy·w and means over the last axis:
    dx = (g - mean(g) - x̂ mean(g x̂)) / σ;  dw = Σ gy x̂;  db = Σ gy (sums over all but the last axis).
    """

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, x, weight, bias):
        d = x.shape[-1]
        if weight.shape != (d,) or bias.shape != (d,):
            raise ValueError(f"layer_norm: x {x.shape} needs weight and bias of shape ({d},), "
                             f"got {weight.shape} and {bias.shape}")
        xp = get_array_module(x)
        self.x_hat, self.inv_std = _standardize(xp, x, self.eps)
        self.weight = weight
        y = self.x_hat * weight
        y += bias
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        x_hat, inv_std = self.x_hat, self.inv_std
        d = x_hat.shape[-1]
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            g = gy * self.weight
            mean_g = g.mean(axis=-1, keepdims=True)
            mean_gx = xp.einsum("...i,...i->...", g, x_hat)[..., None] / d
            g -= mean_g
            g -= x_hat * mean_gx
            g *= inv_std
            gx = g
        if self.needs_input_grad[1]:
            gw = xp.einsum("mi,mi->i", gy.reshape(-1, d), x_hat.reshape(-1, d))  # no (gy·x̂) temporary
        if self.needs_input_grad[2]:
            gb = gy.reshape(-1, d).sum(axis=0)
        return gx, gw, gb


def layer_norm(x, weight, bias, eps: float = 1e-5):
    """Normalise over the last axis, then scale by ``weight`` and shift by ``bias``.

    x: (..., D); weight, bias: (D,) → (..., D).
    """
    return LayerNorm(float(eps))(x, weight, bias)


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------

def check_dropout_p(p) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return p


def keep_mask(xp, shape, p: float):
    """A bool array, True with probability 1 - p, drawn from the seeded generator of ``xp``."""
    # Drawing float32 uniforms moves half the bytes of float64 ones; the draw dominates dropout's cost.
    return get_rng(xp).random(shape, dtype=xp.float32) >= p


class Dropout(Function):
    """y = x · m / (1 - p) with m ~ Bernoulli(1 - p) per element;  dx = gy · m / (1 - p)"""

    def __init__(self, p: float):
        self.p = p

    def forward(self, x):
        xp = get_array_module(x)
        self.scale = 1.0 / (1.0 - self.p)  # a Python float, so float32 stays float32
        self.mask = keep_mask(xp, x.shape, self.p)  # bool: a quarter of the bytes of a float mask
        y = x * self.mask
        y *= self.scale
        return y

    def backward(self, gy):
        gx = gy * self.mask
        gx *= self.scale
        return gx


def dropout(x, p: float, training: bool = True):
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    Returns ``x`` itself (no op recorded) when not training or p == 0. The mask comes
    from ``backend.get_rng``, so ``tinyclip.manual_seed`` makes it reproducible.
    """
    p = check_dropout_p(p)
    if not training or p == 0.0:
        return as_tensor(x)
    return Dropout(p)(x)
