"""A seeded generator of radiology-like images with ROCO-style captions: the built-in dataset.

Nothing is downloaded: ``make_synthetic`` draws, for every sample, a modality,
a body region and a finding, writes a caption about them
(``synthetic_captions``) and renders a matching grey image
(``synthetic_render``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .synthetic_captions import MODALITIES, MODALITY_PHRASES, describe
from .synthetic_render import render

__all__ = ["MODALITIES", "MODALITY_PHRASES", "make_synthetic", "make_synthetic_chest_xray"]


def make_synthetic(num_samples: int = 2000, image_size: int = 128, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Generate ``num_samples`` image-caption pairs, the same ones for the same seed.

    Returns ``frame`` with columns id ("SYN_00000", ...), caption, cuis,
    modality, region, finding and label (chest X-rays: 0 normal, 1
    pneumonia-like; other images -1), and ``images`` uint8 (num_samples,
    image_size, image_size, 3). Modalities are balanced: each appears
    num_samples // 6 or one more times.
    """
    rng = np.random.default_rng(seed)
    modalities = rng.permutation(np.arange(num_samples) % len(MODALITIES))
    records = [describe(rng, MODALITIES[m]) for m in modalities]
    frame = pd.DataFrame(records, columns=["caption", "cuis", "modality", "region", "finding", "side", "label"])
    frame.insert(0, "id", [f"SYN_{i:05d}" for i in range(num_samples)])
    images = render(rng, frame, image_size)
    return frame.drop(columns="side"), images


def make_synthetic_chest_xray(num_samples: int, image_size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced normal (0) and pneumonia-like (1) chest X-rays: ``images`` uint8 (N, S, S, 3), ``labels`` int64 (N,)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_samples) % 2).astype(np.int64)
    frame = pd.DataFrame({
        "modality": "xray",
        "region": "chest",
        "finding": np.where(labels == 1, "consolidation", "normal"),
        "side": rng.choice(("right", "left"), num_samples),
    })
    return render(rng, frame, image_size), labels
