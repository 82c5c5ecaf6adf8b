"""The tinyclip CLIP model rebuilt in PyTorch, layer for layer: the yardstick of the benchmarks.

Used by ``bench_train_step.py`` (the whole model) and ``bench_ops.py`` (single ops).
tinyclip itself never imports torch; only these benchmark scripts do.

The architecture is tinyclip's (``tinyclip/models``), written with PyTorch's own layers:

- image tower: ``len(conv_channels)`` blocks of conv 3×3 (padding 1) → ReLU → max-pool 2, in
  PyTorch's native NCHW layout; then flatten and a linear projection. tinyclip flattens
  channels-last (H, W, C), so the flatten here permutes to NHWC first (a 4×4×256 copy per
  image, nothing next to the convolutions) and the two projections hold the same weights.
- text tower: token + learned position embeddings; post-norm blocks
  ``x = LN(x + Drop(MHA(x)))``, ``x = LN(x + Drop(FFN(x)))`` with ``FFN = Linear → ReLU →
  Linear`` and dropout on the attention weights; masked mean pooling; a linear projection.
  (``torch.nn.TransformerEncoderLayer`` is not used: it adds a dropout inside the FFN.)
- CLIP: L2-normalised embeddings, ``logits = exp(logit_scale) · img @ txtᵀ``, symmetric
  cross-entropy, ``logit_scale`` starting at ln(1/0.07) and clamped to ln(100).

``tinyclip_to_torch_state`` maps a tinyclip state dict onto this model, so a check can
feed both the same weights and compare losses and gradients (``bench_train_step.py`` does,
once per run).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


class ImageEncoder(nn.Module):
    """(N, 3, S, S) → (N, embed_dim): conv blocks in NCHW, flatten over (H, W, C), linear."""

    def __init__(self, cfg):
        super().__init__()
        blocks, in_channels = [], 3
        for out_channels in cfg.conv_channels:
            blocks.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(),
                                        nn.MaxPool2d(2)))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        side = cfg.image_size // 2 ** len(cfg.conv_channels)
        self.proj = nn.Linear(side * side * in_channels, cfg.embed_dim)

    def forward(self, images):
        x = images
        for block in self.blocks:
            x = block(x)
        return self.proj(x.permute(0, 2, 3, 1).flatten(1))  # flatten (H, W, C), as tinyclip


class EncoderBlock(nn.Module):
    """One post-norm transformer block on (N, L, width), as ``tinyclip.models.EncoderBlock``."""

    def __init__(self, width, heads, ff_dim, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_dim), nn.ReLU(), nn.Linear(ff_dim, width))
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x, key_padding_mask):
        # need_weights=False: tinyclip does not compute the averaged weights either.
        attended, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        x = self.norm1(x + self.drop1(attended))
        return self.norm2(x + self.drop2(self.ff(x)))


class TextEncoder(nn.Module):
    """Token ids and padding mask (N, L), True at padding → (N, embed_dim)."""

    def __init__(self, cfg):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.width)
        self.blocks = nn.ModuleList(EncoderBlock(cfg.width, cfg.heads, cfg.ff_dim, cfg.dropout)
                                    for _ in range(cfg.text_layers))
        self.proj = nn.Linear(cfg.width, cfg.embed_dim)

    def forward(self, ids, padding_mask):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, padding_mask)
        keep = (~padding_mask).to(x.dtype).unsqueeze(-1)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.proj(pooled)


def clip_loss(image_emb, text_emb, logit_scale):
    """Symmetric cross-entropy of N matching pairs of unit embeddings (N, D)."""
    logits = logit_scale.exp() * image_emb @ text_emb.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) * 0.5


class CLIP(nn.Module):
    """Image tower + text tower + learnable temperature; ``forward`` returns the loss."""

    def __init__(self, cfg):
        super().__init__()
        self.image_encoder = ImageEncoder(cfg)
        self.text_encoder = TextEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor([INIT_LOGIT_SCALE]))

    def encode_image(self, images):
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, ids, padding_mask):
        return F.normalize(self.text_encoder(ids, padding_mask), dim=-1)

    def forward(self, images, ids, padding_mask):
        return clip_loss(self.encode_image(images), self.encode_text(ids, padding_mask), self.logit_scale)

    @torch.no_grad()
    def clamp_logit_scale(self):
        self.logit_scale.clamp_(max=MAX_LOGIT_SCALE)


# ---------------------------------------------------------------------------
# tinyclip weights → this model
# ---------------------------------------------------------------------------

def tinyclip_to_torch_state(named_arrays: dict) -> dict:
    """tinyclip's ``{name: array}`` (parameters, or their gradients) → this model's ``{name: array}``.

    The names already agree; two layouts differ:
    - Linear weights: tinyclip stores (in, out), PyTorch (out, in) → transpose every 2-D
      weight that is not an embedding table;
    - attention: tinyclip has ``attn.{q,k,v}_proj``, PyTorch one stacked ``attn.in_proj_weight``
      (3E, E) and ``attn.in_proj_bias`` (3E,).
    """
    out, stacked = {}, {}
    for name, array in named_arrays.items():
        array = np.asarray(array)
        for which in ("q", "k", "v"):
            marker = f".attn.{which}_proj."
            if marker in name:
                prefix, kind = name.split(marker)
                stacked.setdefault((prefix, kind), {})[which] = array.T if kind == "weight" else array
                break
        else:
            if array.ndim == 2 and "embedding" not in name:
                array = array.T
            out[name] = array
    for (prefix, kind), parts in stacked.items():
        out[f"{prefix}.attn.in_proj_{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]])
    return out


def load_tinyclip_weights(model: CLIP, named_arrays: dict) -> None:
    """Copy tinyclip's parameters (``{name: array}``) into ``model``; every parameter must be covered."""
    state = tinyclip_to_torch_state(named_arrays)
    own = dict(model.named_parameters())
    if set(state) != set(own):
        raise KeyError(f"names differ: only tinyclip {sorted(set(state) - set(own))}, "
                       f"only torch {sorted(set(own) - set(state))}")
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(torch.from_numpy(np.ascontiguousarray(state[name])))
