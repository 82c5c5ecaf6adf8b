"""Element-wise arithmetic, activations and matrix products, each op's forward and backward together.

Binary ops broadcast like NumPy. Broadcasting copies an input along new or size-1
axes, so in backward the gradient is summed back over those axes (``sum_to``).
"""

from __future__ import annotations

import math

from ..backend import device_of, get_array_module, to_device
from ..tensor import Function, Tensor, as_tensor


def sum_to(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, giving ``shape``."""
    if grad.shape == tuple(shape):
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and grad.shape[i + lead] != 1)
    grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape) if lead else grad


def _operand_tensors(a, b):
    """Tensors of both operands; a Python number takes the other operand's dtype (float32 stays float32)."""
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b


# ---------------------------------------------------------------------------
# binary ops
# ---------------------------------------------------------------------------

class Add(Function):
    """y = a + b"""

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        return sum_to(gy, self.shapes[0]), sum_to(gy, self.shapes[1])


class Sub(Function):
    """y = a - b"""

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        return sum_to(gy, self.shapes[0]), sum_to(-gy, self.shapes[1])


class Mul(Function):
    """y = a * b;  da = gy * b,  db = gy * a"""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga = sum_to(gy * self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    """y = a / b;  da = gy / b,  db = -gy * a / b²"""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = sum_to(gy / self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(-gy * self.a / (self.b * self.b), self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    """y = x ** p for a constant exponent p;  dx = gy * p * x^(p-1)"""

    def __init__(self, exponent: float):
        self.p = exponent

    def forward(self, x):
        self.x = x
        return x ** self.p

    def backward(self, gy):
        if self.p == 0:  # y = 1 is constant; x^(p-1) would be inf at x = 0 and give nan
            return get_array_module(gy).zeros_like(gy)
        return gy * self.p * self.x ** (self.p - 1)


class MatMul(Function):
    """y = a @ b with NumPy's batch broadcasting;  da = gy @ bᵀ,  db = aᵀ @ gy"""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul needs operands of at least 2 dims, got {a.shape} and {b.shape}")
        self.a, self.b = a, b
        return _folded_matmul(a, b)

    def backward(self, gy):
        a, b = self.a, self.b
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to(_folded_matmul(gy, b.swapaxes(-1, -2)), a.shape)
        if self.needs_input_grad[1]:
            if b.ndim == 2 and a.ndim > 2:
                # Fold the batch axes into rows: one large (K, M·batch) @ (M·batch, N) product.
                gb = a.reshape(-1, a.shape[-1]).T @ gy.reshape(-1, gy.shape[-1])
            else:
                gb = sum_to(a.swapaxes(-1, -2) @ gy, b.shape)
        return ga, gb


def _folded_matmul(a, b):
    """a @ b; when a (..., M, K) meets a plain matrix b (K, N), as one (batch·M, K) @ (K, N) product.

    NumPy would otherwise run one small product per batch entry, much slower in OpenBLAS.
    """
    if a.ndim > 2 and b.ndim == 2:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    return a @ b


def add(a, b):
    return Add()(*_operand_tensors(a, b))


def sub(a, b):
    return Sub()(*_operand_tensors(a, b))


def mul(a, b):
    return Mul()(*_operand_tensors(a, b))


def div(a, b):
    return Div()(*_operand_tensors(a, b))


def pow(x, exponent: float):
    """x ** exponent (exponent a Python number)."""
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a Python number, not a Tensor")
    return Pow(exponent)(x)


def matmul(a, b):
    return MatMul()(*_operand_tensors(a, b))


class Linear(Function):
    """y = x @ W + b;  dx = gy @ Wᵀ,  dW = xᵀ @ gy,  db = Σ gy, the batch axes folded into rows

    x: (..., in), W: (in, out), b: (out,). The same as ``matmul`` then ``add``, in one op: the
    bias goes into the product's fresh output in place, a pass and an array fewer per layer.
    """

    def forward(self, x, weight, bias=None):
        if x.ndim < 2 or weight.ndim != 2:
            raise ValueError(f"linear needs x of at least 2 dims and a 2-D weight, got {x.shape} and {weight.shape}")
        self.x, self.weight = x, weight
        y = _folded_matmul(x, weight)
        if bias is None:
            return y
        if y.dtype == get_array_module(y).result_type(y, bias):
            y += bias
            return y
        return y + bias  # a wider bias widens y, as add would

    def backward(self, gy):
        rows = gy.reshape(-1, gy.shape[-1])
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            gx = _folded_matmul(gy, self.weight.T)
        if self.needs_input_grad[1]:
            gw = self.x.reshape(-1, self.x.shape[-1]).T @ rows
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = rows.sum(axis=0)
        return (gx, gw) if len(self.needs_input_grad) == 2 else (gx, gw, gb)


def linear(x, weight, bias=None):
    """y = x @ W + b;  x: (..., in), weight: (in, out), bias: (out,) → (..., out)"""
    return Linear()(x, weight) if bias is None else Linear()(x, weight, bias)


# ---------------------------------------------------------------------------
# unary ops
# ---------------------------------------------------------------------------

class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Exp(Function):
    """y = eˣ;  dx = gy * y"""

    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    """y = ln x;  dx = gy / x"""

    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class Sqrt(Function):
    """y = √x;  dx = gy / (2y)"""

    def forward(self, x):
        self.y = get_array_module(x).sqrt(x)
        return self.y

    def backward(self, gy):
        return gy / (2 * self.y)


class Tanh(Function):
    """y = tanh x;  dx = gy (1 - y²)"""

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class Sigmoid(Function):
    """y = 1 / (1 + e⁻ˣ), computed as (1 + tanh(x/2)) / 2 to avoid overflow;  dx = gy y (1 - y)"""

    def forward(self, x):
        xp = get_array_module(x)
        self.y = 0.5 + 0.5 * xp.tanh(0.5 * x)
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


class ReLU(Function):
    """y = max(x, 0);  dx = gy where x > 0"""

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, 0)
        self.mask = y > 0  # a bool mask is a quarter of the bytes of x
        return y

    def backward(self, gy):
        return gy * self.mask


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


class GELU(Function):
    """y = x Φ(x) with the tanh approximation: 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))"""

    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        self.t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
        return 0.5 * x * (1 + self.t)

    def backward(self, gy):
        x, t = self.x, self.t
        dinner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner)


class Cast(Function):
    """y = x as another dtype;  the gradient goes back in x's dtype"""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        self.x_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return gy.astype(self.x_dtype)


class ToDevice(Function):
    """y = x on another device (``cpu`` or ``cuda``);  the gradient moves back to x's device"""

    def __init__(self, device):
        self.device = device

    def forward(self, x):
        self.x_device = device_of(x)
        return to_device(x, self.device)

    def backward(self, gy):
        return to_device(gy, self.x_device)


def neg(x):
    return Neg()(x)


def exp(x):
    return Exp()(x)


def log(x):
    return Log()(x)


def sqrt(x):
    return Sqrt()(x)


def tanh(x):
    return Tanh()(x)


def sigmoid(x):
    return Sigmoid()(x)


def relu(x):
    return ReLU()(x)


def gelu(x):
    return GELU()(x)


def cast(x, dtype):
    return Cast(dtype)(x)


def move_to_device(x, device):
    return ToDevice(device)(x)
