"""Checkpoints: one file ``NAME.npz`` holding the arrays and the metadata, committed by one rename.

The ``.npz`` holds only plain arrays (loaded with ``allow_pickle=False``, so a
checkpoint cannot run code). The metadata (model config, tokenizer, data split,
counters, RNG state) is JSON stored in the same file as a ``uint8`` array, so the
whole checkpoint is written to a temporary file and renamed over the old one in
one atomic step: a crash at any instant leaves the old checkpoint or the new one,
and a reader never sees a half-written one. ``NAME.json`` beside it is a copy of
the metadata for people to read; it is written after the commit and never read back.

Checkpoints of tinyclip 0.1 (``NAME.npz`` + ``NAME.json`` tied by a random tag)
still load.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .io import atomic_write

ARRAY_MARK = "__array__"
META_KEY = "__meta__"


def _split_arrays(tree, prefix: str, arrays: dict):
    """Replace every array in a nested dict/list by a reference, collecting the arrays."""
    if isinstance(tree, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):
        return tree.item()
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):  # NumPy or CuPy array
        arrays[prefix] = to_numpy(tree)
        return {ARRAY_MARK: prefix}
    return tree


def _join_arrays(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {ARRAY_MARK}:
            return arrays[tree[ARRAY_MARK]]
        return {k: _join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(v, arrays) for v in tree]
    return tree


def save_checkpoint(directory, name: str, state: dict) -> Path:
    """Write ``state`` (nested dicts of JSON values and arrays) as ``directory/name.npz`` in one atomic step."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    meta = json.dumps({"format": 2, "state": _split_arrays(state, "", arrays)}, indent=1).encode()
    arrays[META_KEY] = np.frombuffer(meta, dtype=np.uint8)
    path = atomic_write(directory / f"{name}.npz", lambda f: np.savez(f, **arrays))
    atomic_write(directory / f"{name}.json", lambda f: f.write(meta))  # for people; never read back
    return path


def load_checkpoint(directory, name: str) -> dict:
    """Read back what ``save_checkpoint`` wrote; one clear ``ValueError`` for anything damaged."""
    directory = Path(directory)
    npz_path = directory / f"{name}.npz"
    if not npz_path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zip, pickle, EOF and header errors, or a .npy in its place (no context manager)
        raise ValueError(f"checkpoint {npz_path} is damaged or not a tinyclip checkpoint "
                         f"({type(e).__name__}: {e})") from None
    if META_KEY in arrays:
        meta_bytes = arrays.pop(META_KEY)
    else:  # tinyclip 0.1: the metadata in NAME.json, tied to the .npz by a tag
        meta_bytes = _old_format_meta(directory, name, arrays)
    try:
        meta = json.loads(bytes(meta_bytes.astype(np.uint8, copy=False)).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {npz_path}: its metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise ValueError(f"checkpoint {npz_path}: its metadata is not a tinyclip checkpoint's (no 'state' object)")
    try:
        return _join_arrays(meta["state"], arrays)
    except (KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {npz_path}: its metadata names an array it does not hold ({e})") from None


def _old_format_meta(directory: Path, name: str, arrays: dict) -> np.ndarray:
    json_path = directory / f"{name}.json"
    if "__tag__" not in arrays or not json_path.is_file():
        raise ValueError(f"checkpoint {directory / name}.npz holds no metadata and no tinyclip 0.1 "
                         f"{json_path.name} goes with it")
    tag = bytes(arrays.pop("__tag__")).decode(errors="replace")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {json_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or tag != meta.get("tag"):
        raise ValueError(f"checkpoint {directory / name}: {name}.npz and {json_path.name} do not belong together "
                         f"(a tinyclip 0.1 write that was interrupted)")
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


@contextlib.contextmanager
def restoring(where):
    """Turn the errors of rebuilding objects from a checkpoint's entries into one "damaged" ``ValueError``."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ValueError(f"checkpoint {where} is damaged: {type(e).__name__}: {e}") from None
