"""Checkpoints: weights and optimizer state as ``NAME.npz``, everything else as ``NAME.json``.

The ``.npz`` holds only plain arrays (loaded with ``allow_pickle=False``, so a
checkpoint cannot run code); the JSON holds the model config, the tokenizer, the
data split, counters and RNG state. Both are written to a temporary file first and
then renamed over the old one, so an interrupt never leaves a broken checkpoint.
The JSON is renamed last and names the ``.npz`` it belongs to by a random tag, so a
crash between the two renames is detected instead of mixing two checkpoints.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .io import atomic_write

ARRAY_MARK = "__array__"


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
    """Write ``state`` (nested dicts of JSON values and arrays) as ``directory/name.{npz,json}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    meta = _split_arrays(state, "", arrays)
    tag = secrets.token_hex(8)
    arrays["__tag__"] = np.frombuffer(tag.encode(), dtype=np.uint8)
    atomic_write(directory / f"{name}.npz", lambda f: np.savez(f, **arrays))
    payload = json.dumps({"tag": tag, "state": meta}, indent=1).encode()
    atomic_write(directory / f"{name}.json", lambda f: f.write(payload))
    return directory / f"{name}.json"


def load_checkpoint(directory, name: str) -> dict:
    """Read back what ``save_checkpoint`` wrote; a clear error when missing or inconsistent."""
    directory = Path(directory)
    json_path, npz_path = directory / f"{name}.json", directory / f"{name}.npz"
    for path in (json_path, npz_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot read checkpoint {directory / name}: {e}") from None
    tag = bytes(arrays.pop("__tag__", np.zeros(0, np.uint8))).decode()
    if tag != meta.get("tag"):
        raise ValueError(f"checkpoint {directory / name}: {npz_path.name} and {json_path.name} do not belong "
                         f"together (interrupted write?)")
    return _join_arrays(meta["state"], arrays)
