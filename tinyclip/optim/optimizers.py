"""Optimizers: SGD (with momentum), Adam and AdamW, and global gradient-norm clipping.

Every update works in place on ``param.data``, in the parameter's own dtype
(Python-float coefficients keep float32 arrays float32), through ufuncs with
``out=`` into a scratch buffer that is reused from step to step, so a step
allocates nothing after the first.

Per-parameter state (momentum, Adam's moments) is kept by the parameter's index in
the list given to the optimizer, never by ``id()``, so ``state_dict`` /
``load_state_dict`` can save it and a run resumes exactly.

Parameter groups, as PyTorch's: ``params`` may be a list of dicts
``{"params": [...], "weight_decay": 0.0, "lr_scale": 0.1}``; a group's ``weight_decay``
replaces the optimizer's, and its ``lr_scale`` multiplies the (scheduled) ``lr``.
"""

from __future__ import annotations

import math

from .. import backend
from ..tensor import Tensor


class Optimizer:
    """Base class: holds the parameters, the learning rate ``lr`` and per-parameter state.

    Subclasses list their hyper-parameters in ``hyper_names`` and implement
    ``_init_state(data)`` (a dict of arrays) and ``_update(data, grad, state, lr, weight_decay)``
    (lr and weight decay already resolved for the parameter's group).
    ``lr`` is a plain attribute: a schedule sets it before each ``step()``.
    """

    hyper_names = ("lr",)
    weight_decay = 0.0
    GROUP_KEYS = ("params", "weight_decay", "lr_scale")

    def __init__(self, params, lr: float):
        self.params, self.group_options = self._flatten_groups(list(params))
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty list of parameters")
        seen = set()
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(f"{type(self).__name__}: parameter {i} is not a Tensor that requires grad")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: parameter {i} appears twice in the list")
            seen.add(id(p))
        self.lr = float(lr)
        self.step_count = 0
        self.state = [{} for _ in self.params]
        self._scratch = {}

    def _flatten_groups(self, params):
        """(flat parameter list, per-parameter group options) from Tensors or group dicts."""
        if not params or not isinstance(params[0], dict):
            return params, [{} for _ in params]
        flat, options = [], []
        for group in params:
            unknown = set(group) - set(self.GROUP_KEYS)
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown parameter-group keys {sorted(unknown)}; "
                                 f"known: {', '.join(self.GROUP_KEYS)}")
            extra = {k: float(v) for k, v in group.items() if k != "params"}
            for p in group["params"]:
                flat.append(p)
                options.append(extra)
        return flat, options

    # ----- the update loop ----------------------------------------------------
    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient (those with ``grad is None`` are skipped)."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            data = p.data
            if grad.dtype != data.dtype:
                grad = grad.astype(data.dtype)
            options = self.group_options[i]
            lr = self.lr * options.get("lr_scale", 1.0)
            self._update(data, grad, self._state_of(i, data), lr, options.get("weight_decay", self.weight_decay))

    def _state_of(self, index: int, data) -> dict:
        state = self.state[index]
        if not state:
            state.update(self._init_state(data))
        else:  # the model may have moved device since the state was made (Module.to)
            for key, value in state.items():
                if hasattr(value, "shape") and backend.get_array_module(value) is not backend.get_array_module(data):
                    state[key] = backend.to_device(value, backend.device_of(data))
        return state

    def _buffer(self, data, slot: int = 0):
        """A scratch array shaped like ``data`` (same device and dtype), reused across parameters and steps."""
        xp = backend.get_array_module(data)
        key = (xp.__name__, data.dtype.str, slot)
        flat = self._scratch.get(key)
        if flat is None or flat.size < data.size:
            flat = xp.empty(data.size, dtype=data.dtype)
            self._scratch[key] = flat
        return flat[:data.size].reshape(data.shape)

    def _init_state(self, data) -> dict:
        return {}

    def _update(self, data, grad, state, lr: float, weight_decay: float) -> None:
        raise NotImplementedError(f"{type(self).__name__}._update")

    # ----- saving and resuming ------------------------------------------------
    def state_dict(self) -> dict:
        """Hyper-parameters, step count, parameter shapes and per-parameter state (NumPy copies by index).

        Everything but the arrays is plain Python (lists, numbers, strings).
        """
        state = {}
        for i, entries in enumerate(self.state):
            if not entries:
                continue
            state[i] = {}
            for key, value in entries.items():
                if hasattr(value, "shape"):
                    array = backend.to_numpy(value)
                    value = array.copy() if array is value else array
                state[i][key] = value
        hyper = {name: _plain(getattr(self, name)) for name in self.hyper_names}
        return {"optimizer": type(self).__name__, "hyper": hyper, "step_count": self.step_count,
                "param_shapes": [list(p.shape) for p in self.params], "state": state}

    def load_state_dict(self, saved: dict) -> None:
        """Restore what ``state_dict`` saved; the parameters must be the same number and shapes, in order."""
        name = type(self).__name__
        if saved.get("optimizer") != name:
            raise ValueError(f"load_state_dict: state of a {saved.get('optimizer')} optimizer given to {name}")
        shapes = [tuple(s) for s in saved["param_shapes"]]
        if len(shapes) != len(self.params):
            raise ValueError(f"load_state_dict: saved state has {len(shapes)} parameters, this {name} has "
                             f"{len(self.params)}")
        bad = [f"{i}: saved {s} vs {p.shape}" for i, (s, p) in enumerate(zip(shapes, self.params)) if s != p.shape]
        if bad:
            raise ValueError("load_state_dict: parameter shapes differ:\n  " + "\n  ".join(bad))
        for key, value in saved["hyper"].items():
            setattr(self, key, tuple(value) if isinstance(value, list) else value)
        self.step_count = int(saved["step_count"])
        self.state = [{} for _ in self.params]
        for index, entries in saved["state"].items():
            p = self.params[int(index)]  # JSON turns int keys into strings
            for key, value in entries.items():
                if hasattr(value, "shape"):
                    # A copy on the parameter's device and dtype: later steps must not write into `saved`.
                    value = backend.to_device(value, p.device).astype(p.dtype, copy=True)
                self.state[int(index)][key] = value


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------
# SGD
# ---------------------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent, as PyTorch's (no dampening, no Nesterov):

        g ← g + wd·p            (weight decay as an L2 term)
        b ← momentum·b + g,  g ← b      (when momentum > 0; b starts at 0)
        p ← p - lr·g
    """

    hyper_names = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    def _init_state(self, data) -> dict:
        if self.momentum:
            return {"momentum_buffer": backend.get_array_module(data).zeros_like(data)}
        return {}

    def _update(self, data, grad, state, lr: float, weight_decay: float) -> None:
        xp = backend.get_array_module(data)
        if weight_decay:
            grad = _add_l2(xp, data, grad, weight_decay, self._buffer(data, 1))
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += grad
            grad = buf
        step = xp.multiply(grad, lr, out=self._buffer(data, 0))
        data -= step


def _add_l2(xp, data, grad, weight_decay, out):
    """out = grad + wd·data (never in place on grad: the same array may be another parameter's grad)."""
    xp.multiply(data, weight_decay, out=out)
    out += grad
    return out


# ---------------------------------------------------------------------------
# Adam and AdamW
# ---------------------------------------------------------------------------

class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as PyTorch's; per parameter, at its step t:

        g ← g + wd·p                     (weight decay as an L2 term, as torch.optim.Adam)
        m ← β₁ m + (1 - β₁) g            v ← β₂ v + (1 - β₂) g²
        p ← p - lr/(1 - β₁ᵗ) · m / (√v / √(1 - β₂ᵗ) + eps)
    """

    hyper_names = ("lr", "betas", "eps", "weight_decay")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def _init_state(self, data) -> dict:
        xp = backend.get_array_module(data)
        return {"step": 0, "exp_avg": xp.zeros_like(data), "exp_avg_sq": xp.zeros_like(data)}

    def _update(self, data, grad, state, lr: float, weight_decay: float) -> None:
        xp = backend.get_array_module(data)
        beta1, beta2 = self.betas
        wd = weight_decay
        state["step"] += 1
        t = state["step"]
        if wd and self.decoupled:
            data *= 1.0 - lr * wd  # AdamW: shrink the weights directly, outside the moments
        elif wd:
            grad = _add_l2(xp, data, grad, wd, self._buffer(data, 1))
        m, v, tmp = state["exp_avg"], state["exp_avg_sq"], self._buffer(data, 0)
        m *= beta1
        m += xp.multiply(grad, 1.0 - beta1, out=tmp)
        v *= beta2
        xp.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - beta2
        v += tmp
        denom = xp.sqrt(v, out=tmp)
        denom *= 1.0 / math.sqrt(1.0 - beta2 ** t)
        denom += self.eps
        update = xp.divide(m, denom, out=tmp)
        update *= lr / (1.0 - beta1 ** t)
        data -= update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW:

        p ← p (1 - lr·wd), then the Adam step without any L2 term in g.
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def weight_decay_groups(params) -> list[dict]:
    """Two groups: matrices and kernels (decayed), and 1-D parameters, i.e. biases and norm gains (never decayed)."""
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1]},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------

def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; return the norm before.

    norm = √(Σ over parameters of Σ g²). When norm > max_norm every grad is multiplied,
    in place, by max_norm / (norm + 1e-6) (as torch.nn.utils.clip_grad_norm_).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # One dot product per gradient (BLAS), summed in float64. A float32 sum of squares can
    # overflow on huge gradients: only then redo that one scaled by its largest entry.
    total_sq = 0.0
    for g in grads:
        xp = backend.get_array_module(g)
        square = float(xp.vdot(g.ravel(), g.ravel()))
        if math.isinf(square):
            peak = float(xp.abs(g).max())
            scaled = g.ravel() / peak if math.isfinite(peak) else g.ravel()
            square = float(xp.vdot(scaled, scaled)) * peak * peak
        total_sq += square
    total = math.sqrt(total_sq)
    if not math.isfinite(total):
        return total  # a NaN/inf gradient: leave it for the caller to see, do not zero everything
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        done = set()
        for g in grads:
            if id(g) not in done:  # one array may be the grad of two parameters: scale it once
                done.add(id(g))
                g *= coef
    return total
