"""The searchable collection: the pairs a run is shown on, and their embeddings, computed once and cached.

A collection is the run's own data by default (rebuilt exactly as training built it and checked against
the pair ids saved in the checkpoint, as ``tinyclip.evaluate`` does), or every pair of another folder
(``--data roco --data-dir DIR``) or synthetic set (``--num-samples N``). When its pairs are the run's,
each row knows its part of the run's split (train/val/test), so the page can say whether a result was
seen in training; ``--split test`` keeps only the test part.

Both towers' unit embeddings ``(N, D)`` are computed at start in batches (with a progress bar) and saved
in ``RUN_DIR/serve/`` under a key that hashes the checkpoint file (size, modification time), the
decoded pixels and the captions, so a restart on the same inputs reads them back instead.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.pairs import load_pairs
from ..evaluate import load_run_pairs
from ..io import atomic_write

PARTS = ("train", "val", "test")


@dataclass
class Collection:
    """Pairs to search. ``images`` uint8 ``(N, S, S, 3)`` as decoded (for ROCO the image cache's memory
    map), aligned with the rows of ``frame`` (``id``, ``caption``, ...); ``parts[i]`` is the run-split part
    of row i, or None when the pairs are not the run's; ``image_emb``/``text_emb`` unit ``(N, D)``."""

    frame: pd.DataFrame
    images: np.ndarray
    parts: list
    description: str
    image_emb: np.ndarray | None = None
    text_emb: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def captions(self) -> list:
        return [str(c) for c in self.frame["caption"]]


def load_collection(state, data=None, data_dir=None, num_samples=None, split="all", cache_dir=None,
                    progress=False) -> Collection:
    """The pairs to serve for a run's checkpoint ``state`` (see the module docstring)."""
    run_args = state.get("args") or {}
    run_source = run_args.get("data", "synthetic")
    source = data or run_source
    if source == run_source and data_dir is None and num_samples is None:
        frame, images = load_run_pairs(state, cache_dir=cache_dir, progress=progress)
        description = (f"the run's ROCO folder {run_args.get('data_dir')}" if source == "roco"
                       else f"the run's synthetic data (seed {run_args.get('seed', 0)})")
    else:
        if source == "roco":
            data_dir = data_dir or (run_args.get("data_dir") if run_source == "roco" else None)
            if not data_dir:
                raise ValueError("--data roco needs --data-dir (a ROCO folder with captions.txt and images/)")
            if not Path(data_dir).is_dir():
                raise FileNotFoundError(f"--data-dir: folder not found: {data_dir}")
        num_samples = num_samples or run_args.get("num_samples", 2000)
        frame, images = load_pairs(source, data_dir, image_size=int(state["config"]["image_size"]),
                                   num_samples=num_samples, seed=run_args.get("seed", 0), cache_dir=cache_dir,
                                   progress=progress)
        description = (f"ROCO folder {data_dir}" if source == "roco"
                       else f"synthetic data ({num_samples} pairs, seed {run_args.get('seed', 0)})")
    parts = _run_parts(frame, state)
    if split == "test":
        if parts is None:
            raise ValueError("--split test needs the run's own data (these pairs are not the ones it was "
                             "trained on); leave out --split or --data/--data-dir")
        keep = np.flatnonzero(np.asarray(parts) == "test")
        frame, images, parts = frame.iloc[keep].reset_index(drop=True), np.asarray(images[keep]), ["test"] * len(keep)
        description += ", test part of the run's split"
    return Collection(frame=frame.reset_index(drop=True), images=images, parts=parts, description=description)


def _run_parts(frame, state):
    """Each row's part of the run's split, when ``frame`` holds exactly the run's pairs; else None."""
    split = state.get("split") or {}
    if [str(i) for i in frame["id"]] != [str(i) for i in state.get("ids", [])] or not split:
        return None
    parts = [None] * len(frame)
    for name in PARTS:
        for i in split.get(name, []):
            parts[int(i)] = name
    return parts


# ---------------------------------------------------------------------------
# embeddings, cached next to the run
# ---------------------------------------------------------------------------

def cache_key(checkpoint_file: Path, collection: Collection) -> str:
    """Hash of what the embeddings depend on: the checkpoint file (size, mtime), the pixels, the captions."""
    h = hashlib.sha256()
    st = os.stat(checkpoint_file)
    h.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
    h.update(np.ascontiguousarray(collection.images).data)
    h.update("\n".join(collection.captions).encode())
    return h.hexdigest()[:20]


def embed_collection(model, collection: Collection, cache_file: Path | None, batch_size: int = 128,
                     progress: bool = False, log=print) -> None:
    """Fill ``collection.image_emb`` and ``text_emb``: read from ``cache_file`` when it holds them, else
    computed (one batch at a time, with a progress bar) and written there."""
    n = len(collection)
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                image_emb, text_emb = z["image_emb"], z["text_emb"]
            if image_emb.shape == text_emb.shape == (n, model.config.embed_dim) \
                    and np.isfinite(image_emb).all() and np.isfinite(text_emb).all():
                collection.image_emb, collection.text_emb = image_emb, text_emb
                log(f"embeddings of {n} pairs read from {cache_file}")
                return
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache file: compute again and replace it
    captions = collection.captions
    bar = tqdm(total=2 * n, desc="embedding the collection", unit="item", disable=not progress)
    parts = {"images": [], "texts": []}
    for start in range(0, n, batch_size):
        parts["images"].append(model.embed_images(collection.images[start:start + batch_size], batch_size))
        bar.update(len(parts["images"][-1]))
    for start in range(0, n, batch_size):
        parts["texts"].append(model.embed_texts(captions[start:start + batch_size], batch_size))
        bar.update(len(parts["texts"][-1]))
    bar.close()
    collection.image_emb = np.concatenate(parts["images"]).astype(np.float32)
    collection.text_emb = np.concatenate(parts["texts"]).astype(np.float32)
    if cache_file is not None:
        try:
            atomic_write(cache_file, lambda f: np.savez(f, image_emb=collection.image_emb,
                                                       text_emb=collection.text_emb))
        except OSError as e:  # a read-only run directory: the cache is optional
            warnings.warn(f"embedding cache {cache_file} not written ({e.strerror or e}); going on without it")
