"""Augmentation of decoded batches: images uint8 (B, H, W, C) before normalisation, and captions.

One affine warp per image does the random resized crop (scale 0.6–1), the rotation (±10°)
and the translation, bilinearly; then brightness/contrast jitter and Gaussian noise.
No flips or inversions: left/right and intensity carry meaning in medical images.
``strength`` in [0, 1] scales every range; 0 returns the batch unchanged.
The warp runs in Pillow on the host, one C call per image: a NumPy gather of the four
bilinear neighbours measured ~30x slower, and the decoded batch lives on the host anyway.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from ..text import Tokenizer


KINDS = ("crop", "rotation", "shift", "brightness", "contrast", "noise")


def augment_images(images: np.ndarray, rng: np.random.Generator, strength: float = 1.0, kinds=KINDS) -> np.ndarray:
    """Augmented copy of uint8 ``images`` (B, H, W, C), same shape and dtype, seeded by ``rng``.

    ``kinds``: which of ``KINDS`` to apply (the others keep their neutral value; the draws are the same).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augment_images: strength must be in [0, 1], got {strength}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"augment_images: unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    on = {kind: strength * (kind in kinds) for kind in KINDS}
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"augment_images: expected uint8 images (B, H, W, C), got {images.dtype} {images.shape}")
    if strength == 0.0:
        return images.copy()
    b, h, w, _ = images.shape
    zoom = np.sqrt(1.0 - rng.uniform(0.0, 0.4, b) * on["crop"])       # crop side = √area, area in [0.6, 1]
    angle = np.deg2rad(rng.uniform(-10.0, 10.0, b) * on["rotation"])
    shift = rng.uniform(-0.08, 0.08, (b, 2)) * on["shift"] * np.array([w, h]) / 2   # pixels
    brightness = rng.uniform(-0.1, 0.1, b) * on["brightness"] * 255
    contrast = 1.0 + rng.uniform(-0.2, 0.2, b) * on["contrast"]
    noise_std = rng.uniform(0.0, 0.03, b) * on["noise"] * 255

    out = np.empty(images.shape, np.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    for k in range(b):
        # Output pixel p reads source zoom · R(angle) (p − centre) + centre + shift (Pillow's inverse map).
        c, s = np.cos(angle[k]) * zoom[k], np.sin(angle[k]) * zoom[k]
        matrix = (c, -s, cx - c * cx + s * cy + shift[k, 0], s, c, cy - s * cx - c * cy + shift[k, 1])
        warped = Image.fromarray(images[k].squeeze(-1) if images.shape[-1] == 1 else images[k]).transform(
            (w, h), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
        out[k] = np.asarray(warped, np.float32).reshape(h, w, -1)
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    out = (out - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
    out += rng.standard_normal(out.shape, dtype=np.float32) * noise_std[:, None, None, None].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augment_caption(caption: str, rng: np.random.Generator, strength: float = 1.0, dropout: float = 0.1) -> str:
    """One random sentence of a multi-sentence ``caption``, then each word dropped with p = dropout · strength.

    Strength 0 returns the caption unchanged; at least one word the tokenizer reads always remains
    (a sentence or word of punctuation only, such as "–", is never all that is left).
    """
    if strength == 0.0:
        return caption
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", caption.strip()) if Tokenizer.tokenize(s)]
    words = (sentences[rng.integers(len(sentences))] if sentences else caption).split()
    kept = [word for word in words if rng.random() >= dropout * strength]
    if not any(Tokenizer.tokenize(word) for word in kept):
        kept = [word for word in words if Tokenizer.tokenize(word)][:1] or words[:1]
    return " ".join(kept)
