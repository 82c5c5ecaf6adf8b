"""Layers: Modules that own their parameters and call one kernel from ``tinyclip.functional``.

Initialisation follows PyTorch's defaults, so models behave like their PyTorch
twins: Linear and Conv2d weights and biases are U(-1/√fan_in, 1/√fan_in),
Embedding is N(0, 1), LayerNorm and BatchNorm2d start as the identity (weight 1,
bias 0; running mean 0 and variance 1).

Linear's weight is stored ``(in_features, out_features)`` so that ``y = x @ W + b``
needs no transpose (PyTorch stores the transpose, ``(out, in)``).
"""

from __future__ import annotations

from ..functional.arithmetic import gelu, linear, relu
from ..functional.conv import conv2d, max_pool2d, pair
from ..functional.embedding import embedding
from ..functional.norm import batch_norm2d, check_dropout_p, dropout, layer_norm
from . import init
from .module import Buffer, Module


class Linear(Module):
    """y = x @ W + b;  x: (..., in_features) → (..., out_features);  W: (in_features, out_features)"""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = init.kaiming_uniform_(init.empty(in_features, out_features), fan_in=in_features)
        self.bias = None
        if bias:
            bound = 1.0 / in_features ** 0.5
            self.bias = init.uniform_(init.empty(out_features), -bound, bound)

    def forward(self, x):
        if x.ndim == 1:  # a single vector: matmul wants a matrix
            return linear(x.reshape(1, -1), self.weight, self.bias).reshape(-1)
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution (cross-correlation, as in every framework); weight (O, C, kh, kw), bias (O,).

    x: (N, C, H, W), or (N, H, W, C) with ``channels_last=True`` (faster on the CPU)
    → (N, O, H', W') / (N, H', W', O), H' = (H + 2·padding - kh) // stride + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, channels_last: bool = False):
        super().__init__()
        kh, kw = pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.channels_last = channels_last
        fan_in = in_channels * kh * kw
        self.weight = init.kaiming_uniform_(init.empty(out_channels, in_channels, kh, kw), fan_in=fan_in)
        self.bias = None
        if bias:
            bound = 1.0 / fan_in ** 0.5
            self.bias = init.uniform_(init.empty(out_channels), -bound, bound)

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                      channels_last=self.channels_last)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, channels_last={self.channels_last}")


class MaxPool2d(Module):
    """Max over kernel_size × kernel_size windows (stride defaults to kernel_size); no parameters."""

    def __init__(self, kernel_size=2, stride=None, channels_last: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.channels_last = kernel_size, stride, channels_last

    def forward(self, x):
        return max_pool2d(x, self.kernel_size, self.stride, channels_last=self.channels_last)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, channels_last={self.channels_last}"


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale and shift: (x - μ) / √(σ² + eps) · w + b."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = init.ones_(init.empty(dim))
        self.bias = init.zeros_(init.empty(dim))

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class BatchNorm2d(Module):
    """Per-channel batch norm of images: (x - μ) / √(σ² + eps) · w + b, μ and σ² over (N, H, W).

    Training mode uses the batch's statistics and moves the running ones (buffers, saved in the
    ``state_dict``) towards them by ``momentum``; ``eval()`` uses the running ones.
    x: (N, C, H, W), or (N, H, W, C) with ``channels_last=True``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, channels_last: bool = False):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.channels_last = channels_last
        self.weight = init.ones_(init.empty(num_features))
        self.bias = init.zeros_(init.empty(num_features))
        self.running_mean = Buffer(init.zeros_(init.empty(num_features)))
        self.running_var = Buffer(init.ones_(init.empty(num_features)))

    def forward(self, x):
        return batch_norm2d(x, self.weight, self.bias, self.running_mean, self.running_var, training=self.training,
                            momentum=self.momentum, eps=self.eps, channels_last=self.channels_last)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"channels_last={self.channels_last}")


class Dropout(Module):
    """In training, zero each element with probability p and scale the rest by 1/(1-p); identity in eval."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_dropout_p(p)  # at construction, not at the first training step

    def forward(self, x):
        return dropout(x, self.p, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Embedding(Module):
    """A lookup table: integer ids (...) → rows of weight (num_embeddings, dim), giving (..., dim)."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.weight = init.normal_(init.empty(num_embeddings, dim))

    def forward(self, ids):
        return embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"


class ReLU(Module):
    def forward(self, x):
        return relu(x)


class GELU(Module):
    """GELU with the tanh approximation (see ``functional.gelu``)."""

    def forward(self, x):
        return gelu(x)


class Flatten(Module):
    """(N, ...) → (N, product of the rest)."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1)
