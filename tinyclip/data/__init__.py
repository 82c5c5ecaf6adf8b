"""Datasets and preprocessing: image decoding, ROCO, pneumonia chest X-rays, the synthetic set, splits."""

from .chest_xray import CLASS_NAMES, gray_to_rgb, load_kermany, load_pneumoniamnist
from .images import MEAN, STD, ImageDecodeError, default_cache_dir, load_image, load_images, normalize
from .roco import load_roco
from .split import iterate_batches, split, split_indices
from .synthetic import MODALITIES, make_synthetic, make_synthetic_chest_xray

__all__ = [
    "CLASS_NAMES",
    "MEAN",
    "MODALITIES",
    "STD",
    "ImageDecodeError",
    "default_cache_dir",
    "gray_to_rgb",
    "iterate_batches",
    "load_image",
    "load_images",
    "load_kermany",
    "load_pneumoniamnist",
    "load_roco",
    "make_synthetic",
    "make_synthetic_chest_xray",
    "normalize",
    "split",
    "split_indices",
]
