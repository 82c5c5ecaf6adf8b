"""Reader for one split folder of ROCO (Radiology Objects in COntext, Pelka et al. 2018).

The folder layout, as the dataset's download script leaves it::

    captions.txt    ROCO_id<TAB>caption            (captions start with a space: stripped)
    cuis.txt        ROCO_id<TAB><TAB>CUI<TAB>CUI…  (zero or more UMLS concepts)
    keywords.txt    ROCO_id<TAB><TAB>word<TAB>word… (optional)
    images/ROCO_id.jpg                            (not needed for text-only use)
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image

_ID = re.compile(r"[\w.-]+")  # usable as a file name: no spaces, no slashes


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from e


def _check_id(roco_id: str, path: Path, lineno: int) -> None:
    if not _ID.fullmatch(roco_id):
        raise ValueError(f"{path}, line {lineno}: bad id {roco_id!r} (expected something like 'ROCO_00001')")


def _read_captions(path: Path) -> dict[str, str]:
    captions = {}
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        roco_id, tab, caption = line.partition("\t")
        if not tab:
            raise ValueError(f"{path}, line {lineno}: expected 'id<TAB>caption', got {line[:80]!r}")
        _check_id(roco_id, path, lineno)
        if roco_id in captions:
            raise ValueError(f"{path}, line {lineno}: duplicate id {roco_id!r}")
        captions[roco_id] = caption.strip()
    return captions


def _read_lists(path: Path) -> dict[str, list[str]]:
    """Read an ``id<TAB><TAB>item<TAB>item…`` file such as cuis.txt into {id: [items]}."""
    lists = {}
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        roco_id, *items = line.split("\t")
        _check_id(roco_id, path, lineno)
        lists[roco_id] = [item.strip() for item in items if item.strip()]
    return lists


def _is_readable_image(path: Path) -> bool:
    """Cheap check that Pillow recognises the file, without decoding pixels; load_images catches the rest."""
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # Pillow raises many exception types for broken files
        return False


def load_roco(folder: str | os.PathLike, images: bool = True) -> pd.DataFrame:
    """Read a ROCO split folder into a DataFrame, one row per usable image-caption pair.

    Columns: ``id`` (str), ``caption`` (str), ``cuis`` (list of str, possibly
    empty), ``image`` (path str, or None when ``images=False``) and, when
    keywords.txt exists, ``keywords`` (list of str).

    Rows with an empty caption are dropped; with ``images=True`` so are rows
    whose image file is missing or unreadable. The drops are reported in one
    warning. ``images=False`` reads the text only, for folders without images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ROCO folder not found: {folder}")
    for name in ("captions.txt", "cuis.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"ROCO folder {folder} has no {name}")
    image_dir = folder / "images"
    if images and not image_dir.is_dir():
        raise FileNotFoundError(f"ROCO folder {folder} has no images/ folder (use images=False for text only)")

    captions = _read_captions(folder / "captions.txt")
    cuis = _read_lists(folder / "cuis.txt")
    keywords = _read_lists(folder / "keywords.txt") if (folder / "keywords.txt").is_file() else None
    # One directory listing instead of one stat call per image.
    present = set(os.listdir(image_dir)) if images else set()

    rows = []
    skipped = {"with an empty caption": 0, "with a missing image": 0, "with an unreadable image": 0}
    for roco_id, caption in captions.items():
        if not caption:
            skipped["with an empty caption"] += 1
            continue
        image = None
        if images:
            path = image_dir / f"{roco_id}.jpg"
            if path.name not in present:
                skipped["with a missing image"] += 1
                continue
            if not _is_readable_image(path):
                skipped["with an unreadable image"] += 1
                continue
            image = str(path)
        row = {"id": roco_id, "caption": caption, "cuis": cuis.get(roco_id, []), "image": image}
        if keywords is not None:
            row["keywords"] = keywords.get(roco_id, [])
        rows.append(row)

    if sum(skipped.values()):
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n)
        warnings.warn(
            f"load_roco({folder}): skipped {sum(skipped.values())} of {len(captions)} pairs: {reasons}", stacklevel=2
        )
    columns = ["id", "caption", "cuis", "image"] + (["keywords"] if keywords is not None else [])
    return pd.DataFrame(rows, columns=columns)
