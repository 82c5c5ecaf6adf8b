"""Layer and batch normalisation and dropout, forward and backward side by side.

Layer norm standardises each feature vector (the last axis) to mean 0 and variance 1,
then scales and shifts it with learned ``weight`` and ``bias``. Batch norm does the same
per channel of an image batch, over the batch and both image axes, and keeps running
statistics for evaluation, when the batch may be one image. Dropout zeroes each
value with probability ``p`` during training and scales the survivors by 1/(1-p), so
the expected value is unchanged and evaluation needs no rescaling ("inverted" dropout).
"""

from __future__ import annotations

from ..backend import get_array_module, get_rng
from ..tensor import Function, Tensor, as_tensor


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
# batch norm (2-D)
# ---------------------------------------------------------------------------

class BatchNorm2d(Function):
    """y = x̂ w + b per channel, x̂ = (x - μ) / √(σ² + eps), with μ, σ² over (N, H, W).

    Training: μ, σ² are the batch's (biased variance); the running statistics, if given, move
    towards them by ``momentum`` (the running variance takes the unbiased σ²·M/(M-1), as PyTorch).
    Evaluation: μ, σ² are the running ones, so y is an affine map of x.
    Backward, with sums over the M = N·H·W positions of a channel:
    training  dx = (w/σ)(gy - Σgy/M - x̂ Σ(gy x̂)/M);  evaluation  dx = (w/σ) gy;
    both  dw = Σ gy x̂,  db = Σ gy.
    """

    def __init__(self, training: bool, running_mean, running_var, momentum: float, eps: float,
                 channels_last: bool):
        self.training, self.momentum, self.eps = training, momentum, eps
        self.running_mean, self.running_var = running_mean, running_var
        self.channels_last = channels_last

    def _per_channel(self, v):
        """A (C,) vector shaped to broadcast over the channel axis of x."""
        return v if self.channels_last else v.reshape(-1, 1, 1)

    def _channel_sum(self, xp, *arrays):
        """(C,): Σ over the N·H·W positions of each channel, of one array or of two multiplied (never materialised).

        Per image first, then over the batch: float32 rounding stays near 1e-6 at a million positions,
        where one running sum drifts to 1e-4. einsum is 2-3× faster than ``.sum(axis)`` at few channels.
        """
        n, c = arrays[0].shape[0], arrays[0].shape[-1 if self.channels_last else 1]
        shape, term = ((n, -1, c), "nmc") if self.channels_last else ((n, c, -1), "ncm")
        per_image = xp.einsum(",".join([term] * len(arrays)) + "->nc", *(a.reshape(shape) for a in arrays))
        return per_image.sum(axis=0)

    def forward(self, x, weight, bias):
        if x.ndim != 4:
            raise ValueError(f"batch_norm2d needs a 4-D input, got shape {x.shape}")
        C = x.shape[-1] if self.channels_last else x.shape[1]
        if weight.shape != (C,) or bias.shape != (C,):
            raise ValueError(f"batch_norm2d: x {x.shape} has {C} channels, needs weight and bias of shape "
                             f"({C},), got {weight.shape} and {bias.shape}")
        xp = get_array_module(x)
        self.count = x.size // C
        if self.training:
            if self.count < 2:
                raise ValueError(f"batch_norm2d in training mode needs more than one value per channel, "
                                 f"got input of shape {x.shape}")
            mean = self._channel_sum(xp, x) / self.count
            x_hat = x - self._per_channel(mean)
            var = self._channel_sum(xp, x_hat, x_hat) / self.count
            if self.running_mean is not None:
                m = self.momentum  # in place: the caller's arrays (a module's buffers) are updated
                self.running_mean *= 1.0 - m
                self.running_mean += m * mean
                self.running_var *= 1.0 - m
                self.running_var += (m * self.count / (self.count - 1)) * var
            self.inv_std = 1.0 / xp.sqrt(var + self.eps)
            x_hat *= self._per_channel(self.inv_std)
        else:
            if self.running_mean is None or self.running_var is None:
                raise ValueError("batch_norm2d in evaluation mode needs running_mean and running_var")
            self.inv_std = (1.0 / xp.sqrt(self.running_var + self.eps)).astype(x.dtype, copy=False)
            x_hat = x - self._per_channel(self.running_mean.astype(x.dtype, copy=False))
            x_hat *= self._per_channel(self.inv_std)
        self.x_hat, self.weight = x_hat, weight
        y = x_hat * self._per_channel(weight)
        y += self._per_channel(bias)
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        # Σgy and Σ(gy x̂) are db and dw, and training's dx needs both: computed whatever is asked.
        gb = self._channel_sum(xp, gy)
        gw = self._channel_sum(xp, gy, self.x_hat)
        gx = None
        if self.needs_input_grad[0]:
            if self.training:  # μ and σ depend on x: remove gy's components along 1 and x̂
                gx = gy - self._per_channel(gb / self.count)
                gx -= self.x_hat * self._per_channel(gw / self.count)
                gx *= self._per_channel(self.weight * self.inv_std)
            else:
                gx = gy * self._per_channel(self.weight * self.inv_std)
        return (gx,
                gw if self.needs_input_grad[1] else None,
                gb if self.needs_input_grad[2] else None)


def batch_norm2d(x, weight, bias, running_mean=None, running_var=None, training: bool = True,
                 momentum: float = 0.1, eps: float = 1e-5, channels_last: bool = False):
    """Batch normalisation of images, per channel: x (N, C, H, W), or (N, H, W, C) with
    ``channels_last=True``; weight, bias: (C,) → the shape of x.

    ``running_mean``, ``running_var``: (C,) arrays (or Tensors), updated in place in training
    and used instead of the batch statistics in evaluation (``training=False``).
    """
    arrays = [r.data if isinstance(r, Tensor) else r for r in (running_mean, running_var)]
    if (arrays[0] is None) != (arrays[1] is None):
        raise ValueError("batch_norm2d: give both running_mean and running_var, or neither")
    return BatchNorm2d(bool(training), *arrays, float(momentum), float(eps), bool(channels_last))(x, weight, bias)


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------

def check_dropout_p(p) -> float:
    """``p`` as a float, or a ValueError when it is outside [0, 1)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
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
