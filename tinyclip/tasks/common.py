"""What every downstream task receives: the trained model, the pairs to evaluate on, and how tasks declare options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..models import CLIP


@dataclass
class EvalContext:
    """Inputs of a task's ``run(ctx, options) -> dict`` that every task shares.

    ``frame``/``images``: the evaluation pairs (``--split test``: the test part of the
    run's own split; ``--split all``: every pair of the given folder), images uint8
    ``(N, S, S, 3)`` aligned with the rows. ``train_frame``/``train_images``: the
    run's training part, for tasks that fit a head (CUI classifiers). ``out``: where
    figures go. The rest are the command line's common flags: the seed of the tasks'
    own randomness, images embedded at once, the decoded-image cache, and the chest
    X-rays of the pneumonia tasks (a Kermany folder or a PneumoniaMNIST .npz).
    """

    model: CLIP
    state: dict
    frame: pd.DataFrame
    images: np.ndarray
    train_frame: pd.DataFrame
    train_images: np.ndarray
    out: Path
    seed: int = 0
    batch_size: int = 128
    cache_dir: Path | None = None
    chest_dir: Path | None = None
    pneumonia_npz: Path | None = None
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


def option(default, parse, help: str, metavar: str | None = None, shown: str | None = None):
    """A field of a task's ``Options`` dataclass that ``python -m tinyclip.evaluate`` turns into a flag.

    ``parse(text) -> value`` reads the flag's text (raising ``argparse.ArgumentTypeError``
    or ``ValueError`` with what it expects); ``help`` is its one-line --help text, which
    shows ``shown`` as the default (else ``default`` as the flag writes it). A ``bool``
    option becomes an on/off switch.
    """
    return field(default=default, metadata={"parse": parse, "help": help, "metavar": metavar, "shown": shown})
