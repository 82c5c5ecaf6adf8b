"""Image-caption pairs ready for training: decoded images, captions, and the run's split.

Both sources end up in the same shape: a DataFrame of the pairs (``id``, ``caption``,
``cuis``, ...) and a uint8 image array ``(N, S, S, 3)`` aligned with it. Pairs that
cannot be used (undecodable image, empty caption) are dropped here, once, and
counted in one warning, so training and evaluation see the same pairs.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..text import Tokenizer
from .images import default_cache_dir, load_images
from .roco import load_roco
from .split import split_indices
from .synthetic import make_synthetic

SOURCES = ("synthetic", "roco")


def load_pairs(source: str, data_dir=None, image_size: int = 128, num_samples: int = 2000, seed: int = 0,
               cache_dir=None, progress: bool = False):
    """``(frame, images)`` of usable pairs from ``synthetic`` (generated) or ``roco`` (``data_dir``)."""
    if source == "synthetic":
        frame, images = make_synthetic(num_samples=num_samples, image_size=image_size, seed=seed)
    elif source == "roco":
        if data_dir is None:
            raise ValueError("--data roco needs --data-dir pointing at a ROCO folder with captions.txt and images/")
        frame = load_roco(data_dir, images=True)
        images, ok = load_images(list(frame["image"]), image_size,
                                 cache_dir=cache_dir or default_cache_dir(), progress=progress)
        if not ok.all():
            warnings.warn(f"skipped {int((~ok).sum())} of {len(ok)} pairs in {data_dir}: image could not be decoded")
            frame, images = frame[ok].reset_index(drop=True), np.asarray(images[ok])
    else:
        raise ValueError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
    empty = np.array([Tokenizer.is_empty(c) for c in frame["caption"]], dtype=bool)
    if empty.any():
        warnings.warn(f"skipped {int(empty.sum())} pairs with empty captions")
        frame, images = frame[~empty].reset_index(drop=True), np.asarray(images[~empty])
    if len(frame) < 3:
        where = data_dir if source == "roco" else "the synthetic generator"
        raise ValueError(f"only {len(frame)} usable image-caption pairs in {where}: need at least 3 to split")
    return frame, images


def check_ids(frame, saved_ids, where: str, hint: str = "") -> None:
    """Fail unless the rebuilt pairs are exactly a run's pairs (``saved_ids``), in the same order."""
    ids = [str(i) for i in frame["id"]]
    saved = [str(i) for i in saved_ids]
    if ids == saved:
        return
    first = next((i for i, (a, b) in enumerate(zip(ids, saved)) if a != b), min(len(ids), len(saved)))
    detail = (f"{len(ids)} pairs now vs {len(saved)} in training" if len(ids) != len(saved)
              else f"first difference at pair {first}: {ids[first]!r} vs {saved[first]!r}")
    raise ValueError(f"the pairs rebuilt from {where} are not the ones the run was trained on ({detail})"
                     + (f"; {hint}" if hint else ""))


def run_split(n: int, seed: int, fractions=(0.64, 0.16, 0.20)) -> dict:
    """The train/val/test index arrays of a run, as in the report (64/16/20 after a seeded shuffle)."""
    train, val, test = split_indices(n, fractions, seed)
    return {"train": train, "val": val, "test": test}


def fold_split(n: int, seed: int, folds: int, fold: int) -> dict:
    """Fold ``fold`` of a ``folds``-fold cross-validation: validate on one fold, train on the others.

    The test part is exactly ``run_split(n, seed)``'s (never touched); its train and val pairs
    together are dealt, in their shuffled order, into ``folds`` disjoint folds.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"--fold must be in 0..{folds - 1} with --folds >= 2, got fold {fold} of {folds}")
    parts = run_split(n, seed)
    pool = np.concatenate([parts["train"], parts["val"]])
    if len(pool) < folds:
        raise ValueError(f"{len(pool)} pairs outside the test part are too few for {folds} folds")
    member = np.arange(len(pool)) % folds
    return {"train": pool[member != fold], "val": pool[member == fold], "test": parts["test"]}

