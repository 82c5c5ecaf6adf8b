"""A word-level tokenizer for radiology captions.

Tokenization rule (``Tokenizer.tokenize``): lowercase the text, then keep every
maximal run of Unicode letters and digits; everything else (spaces,
punctuation, hyphens, slashes, underscores) only separates words and is
dropped. So ``"T2-weighted MRI (arrow)."`` becomes
``["t2", "weighted", "mri", "arrow"]``. Splitting on hyphens keeps the
vocabulary small: "t2-weighted", "t1-weighted" and "contrast-enhanced" share
the words "t2", "weighted" and "enhanced" instead of each needing its own id.
A caption that yields no words at all (empty, whitespace or punctuation only)
cannot be encoded: ``encode`` raises, and ``find_empty`` lists such captions so
a caller can drop them first.

Id 0 is padding and id 1 stands for any word outside the vocabulary; the other
ids are the training words, most frequent first.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .io import atomic_write

# [^\W_] is "a word character that is not an underscore": Unicode letters and digits.
_WORD = re.compile(r"[^\W_]+")
_FORMAT = "tinyclip-tokenizer"


class Tokenizer:
    """Maps captions to fixed-length int64 id arrays and back.

    ``vocab[i]`` is the word with id ``i``; ``vocab[0]`` is ``"<pad>"`` and
    ``vocab[1]`` is ``"<unk>"``.
    """

    PAD = 0
    UNK = 1
    SPECIALS = ("<pad>", "<unk>")

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[:2]) != self.SPECIALS:
            raise ValueError(f"vocab must start with {list(self.SPECIALS)}, got {vocab[:2]}")
        if len(set(vocab)) != len(vocab):
            duplicates = sorted(w for w, c in Counter(vocab).items() if c > 1)
            raise ValueError(f"vocab has duplicate words: {duplicates[:10]}")
        self.vocab = vocab
        self._ids = {word: i for i, word in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Lowercased runs of letters/digits in ``text`` (see the module docstring)."""
        return _WORD.findall(text.lower())

    @staticmethod
    def is_empty(text: str) -> bool:
        """True when ``text`` has no words, so it cannot be encoded."""
        return _WORD.search(text) is None

    @staticmethod
    def find_empty(captions: Iterable[str]) -> list[int]:
        """Indices of the captions that have no words."""
        return [i for i, text in enumerate(captions) if Tokenizer.is_empty(text)]

    @classmethod
    def fit(cls, captions: Iterable[str], max_vocab: int = 5000, min_freq: int = 1) -> Tokenizer:
        """Build the vocabulary from training captions.

        Keeps the words seen at least ``min_freq`` times, most frequent first
        (ties in alphabetical order, so the result does not depend on caption
        order), up to ``max_vocab`` ids in total including pad and unk.
        """
        if max_vocab < len(cls.SPECIALS):
            raise ValueError(f"max_vocab must be at least {len(cls.SPECIALS)}, got {max_vocab}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1, got {min_freq}")
        counts = Counter(word for text in captions for word in cls.tokenize(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([*cls.SPECIALS, *ranked[: max_vocab - len(cls.SPECIALS)]])

    def encode(self, captions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode N captions into ``ids`` int64 (N, max_len) and ``padding_mask`` bool (N, max_len).

        Longer captions are truncated to their first ``max_len`` words; shorter
        ones are padded with id 0, and ``padding_mask`` is True exactly there.
        Raises ValueError for a caption without words, naming its index.
        """
        if isinstance(captions, str):
            raise TypeError("encode takes a sequence of captions; use encode_one for a single string")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        ids = np.full((len(captions), max_len), self.PAD, dtype=np.int64)
        for row, text in enumerate(captions):
            words = self.tokenize(text)[:max_len]
            if not words:
                raise ValueError(
                    f"caption {row} has no words and cannot be encoded: {text!r} "
                    "(drop such captions first, see Tokenizer.find_empty)"
                )
            ids[row, : len(words)] = [self._ids.get(w, self.UNK) for w in words]
        # No word maps to PAD, so the padding is exactly where the id is 0.
        return ids, ids == self.PAD

    def encode_one(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode one caption: ``ids`` int64 (max_len,) and ``padding_mask`` bool (max_len,)."""
        ids, mask = self.encode([text], max_len)
        return ids[0], mask[0]

    def decode(self, ids: Iterable[int]) -> str:
        """The words of a 1-D id sequence joined by spaces, padding dropped."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode takes one 1-D id sequence, got shape {ids.shape}")
        words = []
        for i in ids.tolist():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary (size {self.vocab_size})")
            if i != self.PAD:
                words.append(self.vocab[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": 1, "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        if not isinstance(d, dict) or d.get("format") != _FORMAT or not isinstance(d.get("vocab"), list):
            raise ValueError(f"not a tokenizer dict (expected format {_FORMAT!r} and a 'vocab' list)")
        if d.get("version") != 1:
            raise ValueError(f"unsupported tokenizer version {d.get('version')!r}")
        return cls(d["vocab"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON; atomic, so a crash never leaves half a file."""
        atomic_write(path, lambda f: json.dump(self.to_dict(), f, ensure_ascii=False), mode="w")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as e:  # also covers JSONDecodeError and UnicodeDecodeError
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
