"""Image preprocessing: any image file -> a square uint8 RGB array -> a normalized float batch.

Choices a reader should know about:

* Aspect ratio is kept: the longer side is resized to ``size`` and the shorter
  side is padded with black, centred. Stretching would distort anatomy (a round
  cyst would turn oval), and black is what the border of most radiology images
  already is.
* Every mode becomes RGB. Transparent pixels (RGBA, LA, palette images with a
  transparent colour) are composited onto black, the padding colour, rather
  than showing whatever colour happens to hide under alpha 0.
* 16-bit and 32-bit images (modes I;16, I, F) are stretched linearly from their
  own minimum..maximum to 0..255. Medical exports often use only 12 of the 16
  bits, so a fixed ``value / 257`` would leave them nearly black.
* Resampling is Pillow's antialiased bilinear filter; JPEGs are first decoded
  at a reduced scale (``Image.draft``), which is much faster and loses nothing
  at the small sizes used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..io import atomic_write

# Per-channel pixel statistics (on the 0..1 scale) of the 3,645 ROCO radiology
# test images after the preprocessing above, at 128 px with the black padding.
# Radiology images are almost grey, so the three channels nearly agree.
MEAN = (0.283, 0.289, 0.291)
STD = (0.293, 0.297, 0.298)

# Part of the cache key: bump it whenever load_image's output changes, so that
# old caches are not reused.
_CACHE_VERSION = 1
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageDecodeError(ValueError):
    """An image file exists but cannot be decoded."""


def default_cache_dir() -> Path:
    """``$TINYCLIP_CACHE`` if set, else ``~/.cache/tinyclip``."""
    return Path(os.environ.get("TINYCLIP_CACHE") or Path.home() / ".cache" / "tinyclip")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _HIGH_BIT_DEPTH_MODES:
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.rint(a).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im).convert("RGB")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image file into uint8 (size, size, 3), aspect kept, padded with black.

    Raises FileNotFoundError when the file is missing and ImageDecodeError when
    it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im.draft(None, (size, size))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that is enough
            rgb = _to_rgb(im)
    except FileNotFoundError:
        raise
    except Exception as e:  # Pillow's plugins raise many types for damaged files: OSError, SyntaxError, EOFError, ...
        raise ImageDecodeError(f"cannot decode image {path}: {e}") from e
    w, h = rgb.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = np.asarray(rgb)
    return out


def _cache_key(paths: Sequence[str], size: int) -> str:
    """Hash of what the decoded array depends on: the files (path, size, mtime) and ``size``."""
    files = []
    for p in paths:
        try:
            st = os.stat(p)
            files.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((os.path.abspath(p), None, None))
    blob = json.dumps([_CACHE_VERSION, size, files]).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def load_images(
    paths: Sequence[str | os.PathLike],
    size: int,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode many images: ``images`` uint8 (N, size, size, 3) and ``ok`` bool (N,).

    A file that is missing or cannot be decoded does not stop the others: its
    row of ``images`` is all zeros and its ``ok`` entry is False.

    With ``cache_dir``, the result is saved there as .npy files keyed by the
    paths, the files' sizes and modification times, and ``size``; a later call
    with the same inputs returns a read-only memory map of the cached array
    instead of decoding again.
    """
    paths = [os.fspath(p) for p in paths]
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        stem = f"images-{size}px-{len(paths)}-{_cache_key(paths, size)}"
        images_file, ok_file = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.ok.npy"
        if images_file.is_file() and ok_file.is_file():
            try:
                cached, cached_ok = np.load(images_file, mmap_mode="r"), np.load(ok_file)
                if cached.shape == (len(paths), size, size, 3) and cached.dtype == np.uint8 \
                        and cached_ok.shape == (len(paths),) and cached_ok.dtype == bool:
                    return cached, cached_ok
            except (OSError, ValueError, EOFError):
                pass  # damaged cache (zero bytes, truncated, wrong shape): decode again and overwrite it

    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)

    def decode(i: int) -> None:
        try:
            images[i] = load_image(paths[i], size)
            ok[i] = True
        except (OSError, ImageDecodeError):  # missing, unreadable or damaged: leave the row black
            pass

    # Pillow releases the GIL while decoding and resizing, so threads use all cores.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for _ in tqdm(pool.map(decode, range(len(paths))), total=len(paths), disable=not progress, desc="images"):
            pass

    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            # The mask goes first: a cache entry counts only once the images file exists too.
            atomic_write(ok_file, lambda f: np.save(f, ok))
            atomic_write(images_file, lambda f: np.save(f, images))
        except OSError as e:  # disk full, read-only, a file where the folder should be: the cache is optional
            warnings.warn(f"image cache {cache_dir} not written ({e.strerror or e}); going on without it")
    return images, ok


def normalize(batch: np.ndarray, dtype=np.float32, xp=None):
    """uint8 images (N, H, W, 3) -> ``(x / 255 - MEAN) / STD`` as (N, 3, H, W) in ``dtype``.

    ``xp`` is the array module to compute with (default NumPy); pass CuPy to
    move the uint8 batch to the GPU first, which copies 4x fewer bytes than
    moving floats.
    """
    xp = np if xp is None else xp
    x = xp.asarray(batch)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {x.dtype} {x.shape}")
    # Per-channel constants built in the target dtype so float32 stays float32.
    scale = xp.asarray([1.0 / (255.0 * s) for s in STD], dtype=dtype).reshape(3, 1, 1)
    shift = xp.asarray([m / s for m, s in zip(MEAN, STD)], dtype=dtype).reshape(3, 1, 1)
    out = x.transpose(0, 3, 1, 2).astype(dtype, order="C")
    out *= scale
    out -= shift
    return out
