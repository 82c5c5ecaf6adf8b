"""Multi-head self-attention (Vaswani et al. 2017), as a Module.

    q, k, v = x Wq + bq,  x Wk + bk,  x Wv + bv             (N, L, E) each
    split E into h heads of d = E / h:                       (N, h, L, d)
    head_i = softmax(q_i k_iᵀ / √d + mask) v_i               (N, h, L, d)
    out = concat(head_1 .. head_h) Wo + bo                   (N, L, E)

The attention itself (scaling, masking, softmax, dropout) is the kernel
``functional.attention.scaled_dot_product_attention``; this module owns the four
projections and the reshapes between "E features" and "h heads of d".
"""

from __future__ import annotations

from ..functional.arithmetic import linear
from ..functional.attention import scaled_dot_product_attention
from ..functional.shape import concatenate, split
from . import init
from .layers import Linear
from .module import Module


class MultiHeadAttention(Module):
    """Self-attention over x: (N, L, E) with ``num_heads`` heads; parameters q_proj, k_proj, v_proj, out_proj.

    ``forward(x, key_padding_mask=None, need_weights=False)``: ``key_padding_mask``
    (N, L), True where a position is padding (no query attends to it). Returns
    (N, L, E), or ``(out, weights)`` with weights (N, h, L, L) when ``need_weights``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"MultiHeadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout = float(dropout)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)
        # As torch.nn.MultiheadAttention: Glorot-uniform over the stacked (3E, E) input
        # projection, zero biases; out_proj keeps Linear's weight init with a zero bias.
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            init.xavier_uniform_(proj.weight, fan_in=embed_dim, fan_out=3 * embed_dim)
            init.zeros_(proj.bias)
        init.zeros_(self.out_proj.bias)

    def forward(self, x, key_padding_mask=None, need_weights: bool = False):
        n, length, e = x.shape
        if e != self.embed_dim:
            raise ValueError(f"MultiHeadAttention: expected embed_dim {self.embed_dim}, got input {x.shape}")
        h, d = self.num_heads, self.head_dim

        def split_heads(t):  # (N, L, E) → (N, h, L, d)
            return t.reshape(n, length, h, d).transpose(0, 2, 1, 3)

        # q, k and v as one (E → 3E) product: a wider product runs faster, and its backward adds the
        # three gradients of x inside one product (the weights stay three Linears: the state dict).
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = concatenate([p.weight for p in projections], axis=1)
        bias = concatenate([p.bias for p in projections], axis=0)
        q, k, v = (split_heads(t) for t in split(linear(x, weight, bias), 3, axis=-1))
        result = scaled_dot_product_attention(q, k, v, key_padding_mask=key_padding_mask, dropout_p=self.dropout,
                                              training=self.training, return_weights=need_weights)
        out, weights = result if need_weights else (result, None)
        out = self.out_proj(out.transpose(0, 2, 1, 3).reshape(n, length, e))  # heads back into E
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"

