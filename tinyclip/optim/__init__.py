"""Optimizers (SGD, Adam, AdamW), gradient clipping and learning-rate schedules."""

from .optimizers import SGD, Adam, AdamW, Optimizer, clip_grad_norm, weight_decay_groups
from .schedules import constant, warmup_cosine

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "weight_decay_groups", "constant", "warmup_cosine"]
