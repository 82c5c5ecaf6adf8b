"""Seeded train/validation/test splits and mini-batch index iteration."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd


def split_indices(
    n: int, fractions: Sequence[float] = (0.64, 0.16, 0.20), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into train, val, test int64 index arrays.

    Every index lands in exactly one part; part sizes are ``fractions`` of
    ``n``, rounded.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    cut_train, cut_val = np.rint(np.cumsum(fractions[:2]) * n).astype(int)
    return order[:cut_train], order[cut_train:cut_val], order[cut_val:]


def split(
    frame: pd.DataFrame, fractions: Sequence[float] = (0.64, 0.16, 0.20), seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split the rows of ``frame`` into train, val, test frames (see ``split_indices``).

    The parts keep ``frame``'s index, so with the default RangeIndex
    ``images[train.index]`` picks the matching rows of a parallel image array.
    """
    return tuple(frame.iloc[idx] for idx in split_indices(len(frame), fractions, seed))


def iterate_batches(
    n: int,
    batch_size: int,
    rng: np.random.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[np.ndarray]:
    """Yield int64 index arrays of length ``batch_size`` that together cover ``range(n)`` once.

    With ``shuffle``, each call draws a new order from ``rng`` (a fresh,
    unseeded generator when None), so calling it once per epoch reshuffles.
    The last, shorter batch is yielded unless ``drop_last``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shuffle:
        order = (rng if rng is not None else np.random.default_rng()).permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
