"""Layers and models: ``Module`` containers, the standard layers and their initialisers.

``module`` (Parameter, Module, ModuleList, Sequential) → ``init`` (initialisers) →
``layers`` (Linear, Conv2d, MaxPool2d, LayerNorm, Dropout, Embedding, activations)
→ ``attention`` (MultiHeadAttention).
"""

from . import init
from .attention import MultiHeadAttention
from .layers import GELU, Conv2d, Dropout, Embedding, Flatten, LayerNorm, Linear, MaxPool2d, ReLU
from .module import Module, ModuleList, Parameter, Sequential

__all__ = ["Parameter", "Module", "ModuleList", "Sequential", "Linear", "Conv2d", "MaxPool2d", "LayerNorm",
           "Dropout", "Embedding", "ReLU", "GELU", "Flatten", "MultiHeadAttention", "init"]
