"""The page's questions as functions: text → images, image → captions, an uploaded image → modality.

Every answer is a plain JSON-ready dict; bad input raises ``ApiError`` (an HTTP status and one line).
With unit embeddings ``I`` (images, ``(N, D)``) and ``T`` (captions) of the collection and the learned
scale ``s``, a query is one matrix product:

* text → images: ``p = softmax(s · I q)`` over the N images, for the query's embedding ``q``;
* image → captions: ``p = softmax(s · T i)`` over the N captions, for image ``i``; the image's own
  caption (and any caption with the same text, which no model can tell apart) is the true one;
* modality: the report's prompt ensemble (``tasks.modality``: softmax over every prompt, mean per
  class), with the prompt set of ``tinyclip/prompts/modality.json`` that has the most prompts.
"""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
from PIL import Image

from ..data.images import ImageDecodeError, load_image
from ..tasks import softmax
from ..tasks.modality import classify, embed_prompts, load_prompts, modality_from_caption
from ..tasks.retrieval import ranks
from ..text import Tokenizer

MAX_QUERY_CHARS = 1000
MAX_UPLOAD_PIXELS = 50_000_000  # checked from the header before decoding: a small file can hold a huge image


class ApiError(Exception):
    """Bad input: ``status`` (an HTTP code) and a one-line ``message``; ``extra`` goes into the JSON too."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra

    def to_json(self) -> dict:
        return {"error": self.message, "status": self.status, **self.extra}


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 ``(S, S, 3)`` → a PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


class SearchEngine:
    """Answers queries over an embedded ``Collection`` with ``model`` (a ``CLIP`` with its tokenizer)."""

    def __init__(self, model, collection, facts: dict, prompts_file=None, max_upload_bytes: int = 10 << 20):
        self.model, self.collection, self.facts = model, collection, facts
        self.max_upload_bytes = int(max_upload_bytes)
        self.scale = model.temperature()
        self.ids = [str(i) for i in collection.frame["id"]]
        self.row = {pair_id: i for i, pair_id in enumerate(self.ids)}
        self.captions = collection.captions
        self.vocabulary = set(model.tokenizer.vocab[len(Tokenizer.SPECIALS):])
        frame = collection.frame
        self.modalities = (list(frame["modality"]) if "modality" in frame
                           else [modality_from_caption(c) for c in self.captions])
        sets = load_prompts(prompts_file)
        self.prompt_set = max(sets, key=lambda name: sum(map(len, sets[name].values())))
        self.classes = list(sets[self.prompt_set])
        ensemble = any(len(p) > 1 for p in sets[self.prompt_set].values())
        self.method = "mean_prob" if ensemble else "mean_emb"
        self.class_prompts = embed_prompts(model, sets[self.prompt_set])
        # The autograd engine's no-grad switch is a global: one question at a time touches the model.
        self.lock = threading.Lock()
        self._thumbnails: dict = {}

    # ----- what the page shows -----------------------------------------------
    def info(self) -> dict:
        return {**self.facts, "n": len(self.ids), "k_max": len(self.ids), "classes": self.classes,
                "prompt_set": self.prompt_set, "max_upload_bytes": self.max_upload_bytes,
                "temperature": round(self.scale, 3), "vocabulary_size": len(self.vocabulary)}

    def parse_k(self, text, default: int = 10) -> int:
        n = len(self.ids)
        if text is None or text == "":
            return min(default, n)
        try:
            k = int(text)
        except ValueError:
            raise ApiError(400, f"k must be a whole number from 1 to {n}, got {text!r}") from None
        if not 1 <= k <= n:
            raise ApiError(400, f"k must be from 1 to {n} (the collection's size), got {k}")
        return k

    def search(self, query, k) -> dict:
        """The top ``k`` images for a text ``query``, and which of its words the vocabulary knows."""
        query = (query or "").strip()
        if not query:
            raise ApiError(400, "empty query: type a few words, e.g. 'ct scan of the chest'")
        if len(query) > MAX_QUERY_CHARS:
            raise ApiError(400, f"query too long: {len(query)} characters (at most {MAX_QUERY_CHARS})")
        k = self.parse_k(k)
        words = Tokenizer.tokenize(query)
        tokens = [{"word": w, "known": w in self.vocabulary} for w in words]
        unknown = [w for w in words if w not in self.vocabulary]
        max_len = self.model.config.max_len
        if not words:
            raise ApiError(400, "the query has no words (only punctuation or symbols)", tokens=[])
        if len(unknown) == len(words):
            raise ApiError(400, f"no word of the query is in the model's vocabulary: {', '.join(unknown)}",
                           tokens=tokens, unknown=unknown)
        with self.lock:
            q = self.model.embed_texts([query])[0]
            p = softmax(self.scale * (self.collection.image_emb @ q))
        top = np.argsort(-p, kind="stable")[:k]
        return {"query": query, "tokens": tokens, "unknown": unknown, "truncated": len(words) > max_len,
                "max_len": max_len, "k": k, "n": len(self.ids),
                "results": [self._pair(int(i), rank, p[i]) for rank, i in enumerate(top, start=1)]}

    def image(self, pair_id: str, k) -> dict:
        """A collection image's top ``k`` captions (the true one marked) and its zero-shot modality probabilities."""
        if pair_id not in self.row:
            raise ApiError(404, f"unknown image id {pair_id!r}")
        k, i = self.parse_k(k, default=5), self.row[pair_id]
        with self.lock:
            p = softmax(self.scale * (self.collection.text_emb @ self.collection.image_emb[i]))
            modality = self._modality(self.collection.image_emb[i])
        true = np.array([c == self.captions[i] for c in self.captions])
        order = np.argsort(-p, kind="stable")
        true_rank = int(ranks(p[None], true[None])[0])  # as the retrieval task ranks: ties count against it
        captions = [{**self._pair(int(j), rank, p[j]), "true": bool(true[j])}
                    for rank, j in enumerate(order[:k], start=1)]
        return {**self._pair(i), "captions": captions, "true_rank": true_rank, "zero_shot": modality, "k": k}

    def classify_upload(self, data: bytes, k) -> dict:
        """An uploaded image file: its modality probabilities and nearest ``k`` captions, and the
        ``(S, S)`` picture the model saw (decoded by the training pipeline: any mode, aspect kept)."""
        k = self.parse_k(k, default=5)
        if not data:
            raise ApiError(400, "the upload is empty: send the bytes of a JPEG or PNG file")
        if len(data) > self.max_upload_bytes:
            raise ApiError(413, f"the upload is {len(data):,} bytes; at most {self.max_upload_bytes:,}")
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height, kind = im.width, im.height, im.format
        except Exception:  # Pillow raises many types for what is not an image
            raise ApiError(415, "the upload is not an image Pillow can read (send a JPEG or PNG)") from None
        if width * height > MAX_UPLOAD_PIXELS:
            raise ApiError(413, f"the image is {width} x {height} pixels; at most {MAX_UPLOAD_PIXELS:,} pixels")
        try:
            picture = load_image(io.BytesIO(data), int(self.model.config.image_size))
        except ImageDecodeError as e:
            raise ApiError(415, f"the upload could not be decoded as an image: {e.__cause__ or e}") from None
        with self.lock:
            emb = self.model.embed_images(picture[None])[0]
            modality = self._modality(emb)
            p = softmax(self.scale * (self.collection.text_emb @ emb))
        order = np.argsort(-p, kind="stable")[:k]
        preview = "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode()
        return {"format": kind, "width": width, "height": height, "preview": preview, "zero_shot": modality,
                "captions": [self._pair(int(j), rank, p[j]) for rank, j in enumerate(order, start=1)], "k": k}

    def random_id(self, rng: np.random.Generator) -> dict:
        with self.lock:  # a Generator is not safe to share between threads
            return {"id": self.ids[int(rng.integers(len(self.ids)))]}

    def thumbnail(self, pair_id: str) -> bytes:
        """The PNG of a collection image, encoded from the decoded array once and kept."""
        if pair_id not in self.row:
            raise ApiError(404, f"unknown image id {pair_id!r}")
        if pair_id not in self._thumbnails:
            self._thumbnails[pair_id] = png_bytes(self.collection.images[self.row[pair_id]])
        return self._thumbnails[pair_id]

    # ----- helpers -----------------------------------------------------------
    def _pair(self, i: int, rank=None, prob=None) -> dict:
        out = {"id": self.ids[i], "caption": self.captions[i], "modality": self.modalities[i],
               "part": self.collection.parts[i] if self.collection.parts else None,
               "thumb": f"/api/thumb/{self.ids[i]}"}
        if rank is not None:
            out.update(rank=rank, prob=float(prob))
        return out

    def _modality(self, emb: np.ndarray) -> list:
        probs = classify(emb[None].astype(np.float64), self.class_prompts, self.scale, self.method)[0]
        return [{"class": c, "prob": float(v)} for c, v in zip(self.classes, probs)]
