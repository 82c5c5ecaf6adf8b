"""Layers and models: ``Module`` containers, the standard layers and their initialisers.

``module`` (Parameter, Buffer, Module, ModuleList, Sequential; ``evaluate_in_batches``, the
inference loop) → ``init`` (initialisers) → ``layers`` (Linear, Conv2d, MaxPool2d, LayerNorm,
BatchNorm2d, Dropout, Embedding, activations) → ``attention`` (MultiHeadAttention).
"""

from . import init
from .attention import MultiHeadAttention
from .layers import GELU, BatchNorm2d, Conv2d, Dropout, Embedding, Flatten, LayerNorm, Linear, MaxPool2d, ReLU
from .module import Buffer, Module, ModuleList, Parameter, Sequential, evaluate_in_batches

__all__ = ["Parameter", "Buffer", "Module", "ModuleList", "Sequential", "evaluate_in_batches", "Linear", "Conv2d",
           "MaxPool2d", "LayerNorm", "BatchNorm2d", "Dropout", "Embedding", "ReLU", "GELU", "Flatten",
           "MultiHeadAttention", "init"]
