"""Pediatric pneumonia chest X-rays: the Kermany et al. (2018) folders and PneumoniaMNIST.

Both use label 0 for a normal chest and 1 for pneumonia.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CLASS_NAMES = ("normal", "pneumonia")
KERMANY_FOLDERS = ("NORMAL", "PNEUMONIA")  # index = label
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def load_kermany(root: str | os.PathLike, split: str = "test") -> pd.DataFrame:
    """List ``root/{split}/{NORMAL,PNEUMONIA}/*.jpeg`` (or .jpg/.png) as columns ``image`` (path) and ``label``.

    Rows are sorted by label, then file name, so the order never depends on
    the file system.
    """
    split_dir = Path(root) / split
    rows = []
    for label, name in enumerate(KERMANY_FOLDERS):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise FileNotFoundError(f"expected the Kermany layout ROOT/{split}/{name}/, but {class_dir} is missing")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {class_dir}")
        rows += [(str(p), label) for p in files]
    return pd.DataFrame(rows, columns=["image", "label"]).astype({"label": np.int64})


def load_pneumoniamnist(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the MedMNIST PneumoniaMNIST .npz file.

    Returns ``{split}_images`` uint8 (N, H, W) and ``{split}_labels`` int64 (N,)
    for split in train, val, test (H = W = 28 for the standard file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PneumoniaMNIST file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as e:  # TypeError: a .npy, not an archive
        raise ValueError(f"cannot read {path} as an .npz file: {type(e).__name__}: {e}") from None

    out = {}
    for split in ("train", "val", "test"):
        image_key, label_key = f"{split}_images", f"{split}_labels"
        for key in (image_key, label_key):
            if key not in arrays:
                raise ValueError(f"{path} has no array {key!r} (it has {sorted(arrays)})")
        images, labels = arrays[image_key], arrays[label_key]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"{path}: {image_key!r} should be uint8 (N, H, H), got {images.dtype} {images.shape}")
        # MedMNIST stores labels as (N, 1).
        if labels.shape not in ((len(images),), (len(images), 1)):
            raise ValueError(f"{path}: {label_key!r} should have shape ({len(images)}, 1), got {labels.shape}")
        labels = labels.reshape(-1).astype(np.int64)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{path}: {label_key!r} should hold only 0 and 1, got {np.unique(labels)}")
        out[image_key], out[label_key] = images, labels
    return out


def gray_to_rgb(images: np.ndarray, size: int) -> np.ndarray:
    """Grey uint8 images (N, H, W) -> uint8 (N, size, size, 3), resized bilinearly, for the image tower."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    resized = np.empty((len(images), size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        resized[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return np.repeat(resized[..., None], 3, axis=-1)
