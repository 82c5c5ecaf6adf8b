"""What every downstream task receives: the trained model and the pairs to evaluate on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..models import CLIP


@dataclass
class EvalContext:
    """Inputs of a task's ``run(ctx) -> dict``.

    ``frame``/``images``: the evaluation pairs (``--split test``: the test part of the
    run's own split; ``--split all``: every pair of the given folder), images uint8
    ``(N, S, S, 3)`` aligned with the rows. ``train_frame``/``train_images``: the
    run's training part, for tasks that fit a head (CUI classifiers). ``out``: where
    figures go. ``options``: task options from the command line (prompt file, seeds,
    chest X-ray folder, ...), a dict.
    """

    model: CLIP
    state: dict
    frame: pd.DataFrame
    images: np.ndarray
    train_frame: pd.DataFrame
    train_images: np.ndarray
    out: Path
    options: dict = field(default_factory=dict)
    seed: int = 0
    _embeddings: dict = field(default_factory=dict, repr=False)

    def image_embeddings(self) -> np.ndarray:
        """Unit embeddings ``(N, D)`` of ``images``: computed once, shared by every task of the run."""
        if "images" not in self._embeddings:
            self._embeddings["images"] = self.model.embed_images(self.images, self.batch_size)
        return self._embeddings["images"]

    def text_embeddings(self) -> np.ndarray:
        """Unit embeddings ``(N, D)`` of ``frame``'s captions, computed once like the images'."""
        if "texts" not in self._embeddings:
            captions = [str(c) for c in self.frame["caption"]]
            self._embeddings["texts"] = self.model.embed_texts(captions, self.batch_size)
        return self._embeddings["texts"]

    @property
    def batch_size(self) -> int:
        return int(self.options.get("batch_size", 128))
