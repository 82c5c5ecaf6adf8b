"""The kernels: every differentiable op, forward and backward side by side.

Modules, in reading order: ``arithmetic`` (element-wise ops, activations, matmul,
linear), ``shape`` (reshape, transpose, indexing, concatenate, split), ``reduce``
(sum, mean, max, var), ``conv`` (conv2d, max_pool2d), ``norm`` (layer_norm, batch_norm2d,
dropout), ``embedding``, ``loss`` (softmax, cross-entropy) and ``attention``.
"""

from .arithmetic import (add, cast, div, exp, gelu, linear, log, matmul, move_to_device, mul, neg,
                         pow, relu, sigmoid, sqrt, sub, sum_to, tanh)
from .reduce import max, mean, sum, var
from .shape import concatenate, getitem, reshape, split, stack, transpose
from .conv import conv2d, max_pool2d
from .norm import batch_norm2d, dropout, layer_norm
from .embedding import embedding
from .loss import binary_cross_entropy_with_logits, cross_entropy, log_softmax, softmax
from .attention import scaled_dot_product_attention
from .distributed import all_gather
