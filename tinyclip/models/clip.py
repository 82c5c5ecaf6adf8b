"""CLIP: two towers mapped into one space, trained so that matching pairs lie close.

For a batch of N pairs, the image and caption embeddings are L2-normalised and
compared by cosine similarity, scaled by a learned temperature ``exp(logit_scale)``.
Pair i should win row i (its caption among all captions) and column i (its image
among all images): the symmetric cross-entropy of OpenAI's CLIP. As in OpenCLIP, the
model only embeds; the objectives live in ``tinyclip.losses``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import manual_seed, to_numpy
from ..data.images import normalize
from ..losses import clip_loss
from ..optim import weight_decay_groups
from ..tensor import Tensor
from .config import CLIPConfig
from .image_encoder import ImageEncoder
from .text_encoder import TextEncoder

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """x / ‖x‖ along ``axis`` (eps keeps a zero vector finite)."""
    return x / F.sqrt((x * x).sum(axis=axis, keepdims=True) + eps)


class CLIP(nn.Module):
    """Image tower + text tower + a learnable temperature.

    ``tokenizer`` (optional) lets ``embed_texts`` take raw captions.
    """

    def __init__(self, config: CLIPConfig, tokenizer=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.logit_scale = nn.Parameter([INIT_LOGIT_SCALE])

    @classmethod
    def initial(cls, config: CLIPConfig, tokenizer=None, seed: int = 0) -> "CLIP":
        """The untrained model ``tinyclip.train`` starts from: a function of the configuration and seed alone."""
        manual_seed(seed)
        return cls(config, tokenizer)

    def encode_image(self, images):
        """``(N, 3, S, S)`` normalised images → ``(N, embed_dim)`` unit vectors."""
        return l2_normalize(self.image_encoder(images))

    def encode_text(self, ids, padding_mask):
        """Token ids and padding mask ``(N, L)`` → ``(N, embed_dim)`` unit vectors."""
        return l2_normalize(self.text_encoder(ids, padding_mask))

    def encode(self, images, ids, padding_mask):
        """Both towers at once: (image_emb (N, D), text_emb (N, D), logit_scale (1,)), ready for tinyclip.losses."""
        return self.encode_image(images), self.encode_text(ids, padding_mask), self.logit_scale

    def forward(self, images, ids, padding_mask):
        """``(image_emb, text_emb, logit_scale)``: feed them to a loss of ``tinyclip.losses``."""
        return self.encode(images, ids, padding_mask)

    def loss(self, images, ids, padding_mask):
        """The CLIP loss of a batch of matching pairs (``clip_loss`` of ``forward``)."""
        return clip_loss(*self.encode(images, ids, padding_mask))

    def parameter_groups(self, extra=(), logit_scale_lr_scale: float = 1.0) -> list[dict]:
        """Optimizer groups: weight decay only on matrices and conv kernels (``extra``: more modules' parameters).

        Biases, norm gains (1-D) and ``logit_scale`` are never decayed (as OpenCLIP); the logit
        scale gets its own learning-rate factor.
        """
        params = [p for p in self.parameters() if p is not self.logit_scale]
        params += [p for module in extra for p in module.parameters()]
        return weight_decay_groups(params) + [
            {"params": [self.logit_scale], "weight_decay": 0.0, "lr_scale": logit_scale_lr_scale}]

    def clamp_logit_scale(self) -> None:
        """Keep the temperature at most 100, as CLIP does after every optimizer step."""
        data = self.logit_scale.data
        data[...] = data.clip(None, MAX_LOGIT_SCALE)

    @classmethod
    def from_checkpoint(cls, run_dir, name: str = "best"):
        """``(model, state)`` from ``run_dir/name.npz`` as written by ``tinyclip.train``.

        ``state`` is the rest of the checkpoint: ``split`` (train/val/test indices),
        ``ids`` (the pair ids in order), ``args``, ``epoch``, ``history``, ...
        """
        from ..checkpoint import load_checkpoint, restoring
        from ..text import Tokenizer
        state = load_checkpoint(run_dir, name)
        with restoring(f"{run_dir}/{name}"):
            model = cls(CLIPConfig.from_dict(state["config"]), Tokenizer.from_dict(state["tokenizer"]))
            model.load_state_dict(state["model"])
        model.eval()
        return model, state

    # ----- inference helpers -------------------------------------------------
    def temperature(self) -> float:
        """The learned scale ``exp(logit_scale)`` that multiplies cosine similarities."""
        return float(np.exp(to_numpy(self.logit_scale.data).reshape(-1)[0]))

    def image_input(self, images):
        """Images as the image tower's input Tensor on the model's device: uint8 ``(N, S, S, 3)`` are normalised."""
        images = images.data if isinstance(images, Tensor) else images
        xp = self.logit_scale.xp
        if images.dtype == np.uint8:  # (N, S, S, 3) as decoded: normalise here
            return Tensor(normalize(images, dtype=self.logit_scale.dtype, xp=xp))
        return Tensor(xp.asarray(images, dtype=self.logit_scale.dtype))

    def text_input(self, captions):
        """``(ids, padding_mask)`` of captions (strings are tokenised; a tuple passes through)."""
        if isinstance(captions, tuple):
            return captions
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass (ids, padding_mask) instead of strings")
        return self.tokenizer.encode(list(captions), self.config.max_len)

    def embed_images(self, images, batch_size: int = 128) -> np.ndarray:
        """Unit image embeddings ``(N, D)`` as NumPy, in eval mode and batches.

        ``images``: uint8 ``(N, S, S, 3)`` as decoded, or normalised float ``(N, 3, S, S)``.
        """
        return nn.evaluate_in_batches(self, lambda s: self.encode_image(self.image_input(images[s])), len(images),
                                      batch_size, empty_shape=(0, self.config.embed_dim))

    def image_features(self, images, batch_size: int = 128) -> np.ndarray:
        """The image tower's features before the projection ``(N, F)`` (``ImageEncoder.features``), as NumPy."""
        return nn.evaluate_in_batches(self, lambda s: self.image_encoder.features(self.image_input(images[s])),
                                      len(images), batch_size, empty_shape=(0, self.image_encoder.proj.in_features))

    def embed_texts(self, captions, batch_size: int = 256) -> np.ndarray:
        """Unit caption embeddings ``(N, D)``; ``captions``: list of strings or ``(ids, padding_mask)``."""
        ids, mask = self.text_input(captions)
        xp = self.logit_scale.xp
        return nn.evaluate_in_batches(self, lambda s: self.encode_text(xp.asarray(ids[s]), xp.asarray(mask[s])),
                                      len(ids), batch_size, empty_shape=(0, self.config.embed_dim))
