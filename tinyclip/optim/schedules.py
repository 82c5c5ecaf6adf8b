"""Learning-rate schedules: pure functions of the step number.

A schedule remembers nothing, so a resumed run gets exactly the learning rates of
an uninterrupted one. The training loop sets ``optimizer.lr = schedule(step)``
before each ``optimizer.step()``; ``step`` counts from 0.
"""

from __future__ import annotations

import math


def constant(step: int, lr: float) -> float:
    """lr at every step."""
    return float(lr)


def warmup_cosine(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then a half cosine from ``lr`` down to ``min_lr``.

        step < W:       lr · step / W                              (0 at step 0)
        W ≤ step ≤ T:   min_lr + (lr - min_lr) · (1 + cos(π (step - W) / (T - W))) / 2
        step > T:       min_lr

    so the peak ``lr`` is at step W, the midpoint (lr + min_lr)/2 at (W + T)/2, and min_lr at T.
    """
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ValueError(f"warmup_cosine: need 0 <= warmup_steps <= total_steps, got {warmup_steps}, {total_steps}")
    if step < warmup_steps:
        return lr * step / warmup_steps
    if step >= total_steps:
        return float(min_lr) if total_steps > warmup_steps else float(lr)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
