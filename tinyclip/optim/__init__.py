"""Optimizers (SGD, Adam, AdamW), gradient clipping and learning-rate schedules."""

from .optimizers import SGD, Adam, AdamW, Optimizer, clip_grad_norm
from .schedules import constant, get_schedule, warmup_cosine

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "constant", "warmup_cosine", "get_schedule"]
