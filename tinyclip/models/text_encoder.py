"""The text tower: token + position embeddings, post-norm transformer blocks, masked mean pooling."""

from __future__ import annotations

from .. import nn
from ..tensor import Tensor
from .config import CLIPConfig


class EncoderBlock(nn.Module):
    """One post-norm transformer block on ``(N, L, width)``.

    ``x = LN(x + Drop(MHA(x)))`` then ``x = LN(x + Drop(FFN(x)))`` with
    ``FFN = Linear(width, ff_dim) → ReLU → Linear(ff_dim, width)``.
    """

    def __init__(self, width: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiHeadAttention(width, heads, dropout=dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_dim), nn.ReLU(), nn.Linear(ff_dim, width))
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x, key_padding_mask=None):
        x = self.norm1(x + self.drop1(self.attn(x, key_padding_mask=key_padding_mask)))
        return self.norm2(x + self.drop2(self.ff(x)))


class TextEncoder(nn.Module):
    """Token ids ``(N, L)`` and padding mask ``(N, L)`` (True at padding) → ``(N, embed_dim)``.

    Padding is excluded twice: attention never looks at padded keys, and the global
    average pooling averages over the real tokens only.
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.max_len = config.max_len
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_len, config.width)
        self.blocks = nn.ModuleList(
            EncoderBlock(config.width, config.heads, config.ff_dim, config.dropout)
            for _ in range(config.text_layers))
        self.proj = nn.Linear(config.width, config.embed_dim)

    def forward(self, ids, padding_mask):
        ids = ids.data if isinstance(ids, Tensor) else ids
        mask = padding_mask.data if isinstance(padding_mask, Tensor) else padding_mask
        if ids.ndim != 2 or ids.shape[1] > self.max_len or mask.shape != ids.shape:
            raise ValueError(f"TextEncoder expects ids and padding_mask of shape (N, L<= {self.max_len}), "
                             f"got {tuple(ids.shape)} and {tuple(mask.shape)}")
        xp = self.token_embedding.weight.xp
        ids, mask = xp.asarray(ids), xp.asarray(mask)  # NumPy input (the tokenizer's) on a GPU model
        positions = xp.arange(ids.shape[1])
        x = self.token_embedding(ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)
        keep = (~mask).astype(x.dtype)[:, :, None]
        count = xp.maximum(keep.sum(axis=1), 1.0)  # an all-padding row pools to zero, not NaN
        pooled = (x * Tensor(keep)).sum(axis=1) / Tensor(count)
        return self.proj(pooled)
