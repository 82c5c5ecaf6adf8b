"""Optimizers (SGD, Adam, AdamW), gradient clipping, learning-rate schedules and the weight average."""

from .average import WeightAverage
from .optimizers import SGD, Adam, AdamW, Optimizer, clip_grad_norm, weight_decay_groups
from .schedules import constant, warmup_cosine

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "weight_decay_groups", "constant", "warmup_cosine", "WeightAverage"]
