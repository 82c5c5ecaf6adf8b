"""Image augmentation vectorised over a batch (B, C, H, W) on the batch's array module.

One affine warp per image does the random resized crop (scale 0.6–1), the rotation (±10°)
and the translation, sampled bilinearly; then brightness/contrast jitter and Gaussian noise.
No flips or inversions: left/right and intensity carry meaning in medical images.
``strength`` in [0, 1] scales every range; 0 returns the batch unchanged.
"""

from __future__ import annotations

import re

import numpy as np

from ..backend import get_array_module


def augment_images(images, rng: np.random.Generator, strength: float = 1.0):
    """Augmented copy of ``images`` (B, C, H, W), same dtype, values clipped to the batch's [min, max]."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augment_images: strength must be in [0, 1], got {strength}")
    xp = get_array_module(images)
    if strength == 0.0:
        return images.copy()
    b, _, h, w = images.shape
    zoom = np.sqrt(1.0 - rng.uniform(0.0, 0.4 * strength, b))          # crop side = √area, area in [0.6, 1]
    angle = np.deg2rad(rng.uniform(-10.0, 10.0, b) * strength)
    shift = rng.uniform(-0.08, 0.08, (b, 2)) * strength                 # fraction of the half-size
    brightness = rng.uniform(-0.1, 0.1, b) * strength
    contrast = 1.0 + rng.uniform(-0.2, 0.2, b) * strength
    noise_std = rng.uniform(0.0, 0.03, b) * strength

    # Output pixel (u, v) in [-1, 1]² reads source  zoom · R(angle) (u, v) + shift.
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    z = zoom[:, None, None]
    src_u = z * (cos * u - sin * v) + shift[:, 0, None, None]
    src_v = z * (sin * u + cos * v) + shift[:, 1, None, None]
    x = np.clip((src_u + 1) * (w - 1) / 2, 0, w - 1)
    y = np.clip((src_v + 1) * (h - 1) / 2, 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), w - 2), np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]                      # (B, 1, H, W) weights
    batch = np.arange(b)[:, None, None]
    x0, y0, fx, fy, batch = (xp.asarray(a) for a in (x0, y0, fx, fy, batch))

    def at(yy, xx):  # (B, C, H, W): images[b, :, yy[b], xx[b]]
        return images[batch, :, yy, xx].transpose(0, 3, 1, 2)

    out = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
           + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    spread = float(images.max() - images.min())
    out = (out - mean) * xp.asarray(contrast)[:, None, None, None] + mean
    out += xp.asarray(brightness * spread)[:, None, None, None]
    out += xp.asarray(rng.standard_normal(out.shape) * (noise_std * spread)[:, None, None, None])
    return xp.clip(out, images.min(), images.max()).astype(images.dtype)


def augment_caption(caption: str, rng: np.random.Generator, strength: float = 1.0, dropout: float = 0.1) -> str:
    """One random sentence of a multi-sentence ``caption``, then each word dropped with p = dropout · strength.

    Strength 0 returns the caption unchanged; at least one word always remains.
    """
    if strength == 0.0:
        return caption
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", caption.strip()) if s.strip()]
    words = (sentences[rng.integers(len(sentences))] if sentences else caption).split()
    kept = [word for word in words if rng.random() >= dropout * strength]
    return " ".join(kept or words[:1])
