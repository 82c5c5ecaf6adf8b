"""Scaled dot-product attention as one op, with a hand-written fused backward.

For each query, attention is a weighted average of the values, weighted by how well
the query matches each key:

    S = Q Kᵀ / √d        (N, heads, L, S) scores
    P = softmax(S)        each query's weights over the keys (padded keys get weight 0)
    O = P V               (N, heads, L, d_v)

Writing the backward by hand (rather than chaining matmul, softmax, ... ops) keeps only
Q, K, V and P alive between the passes and runs the gradient in four batched matmuls.
"""

from __future__ import annotations

import math

from ..backend import get_array_module
from ..tensor import Function, Tensor
from .norm import check_dropout_p, keep_mask


class ScaledDotProductAttention(Function):
    """O = dropout(softmax(Q Kᵀ / √d + mask)) V over the last two axes, batched over (N, heads).

    q: (N, h, L, d), k: (N, h, S, d), v: (N, h, S, d_v) → (N, h, L, d_v), and with
    ``return_weights`` also P: (N, h, L, S). With P̃ = P after dropout, backward is
    dV = P̃ᵀ dO;  dP = (dO Vᵀ) ⊙ dropmask (+ dWeights);  dS = P ⊙ (dP - rowsum(dP ⊙ P));
    dQ = dS K / √d;  dK = dSᵀ Q / √d.
    """

    def __init__(self, key_padding_mask, dropout_p: float, return_weights: bool):
        self.pad, self.p, self.return_weights = key_padding_mask, dropout_p, return_weights

    def forward(self, q, k, v):
        xp = get_array_module(q)
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise ValueError(f"attention: q, k, v must be (N, heads, length, dim), "
                             f"got {q.shape}, {k.shape}, {v.shape}")
        n, h, _, d = q.shape
        if k.shape[:2] != (n, h) or k.shape[3] != d or v.shape[:3] != k.shape[:3]:
            raise ValueError(f"attention: shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape} "
                             "(k must be (N, h, S, d) and v (N, h, S, d_v))")
        scale = 1.0 / math.sqrt(d)
        # Scale Q (L·d numbers) rather than the scores (L·S); the scaled Q also serves dK in backward.
        q_scaled = q * scale
        scores = q_scaled @ k.swapaxes(-1, -2)  # (N, h, L, S)

        dead = None  # batch items whose every key is padding
        if self.pad is not None:
            pad = xp.asarray(self.pad)
            if pad.shape != (n, k.shape[2]):
                raise ValueError(f"attention: key_padding_mask must be (N, S) = {(n, k.shape[2])}, got {pad.shape}")
            if pad.dtype != bool:
                raise TypeError(f"attention: key_padding_mask must be bool (True = padding), got {pad.dtype}; "
                                "from a 1-means-keep attention mask pass `mask == 0`")
            # Adding -inf (rather than a large negative number) makes exp give exactly 0 for padding.
            scores += xp.where(pad, -xp.inf, 0.0).astype(scores.dtype)[:, None, None, :]
            dead = pad.all(axis=1)
            if not dead.any():
                dead = None

        # Softmax in place over the keys. A fully padded row has max = -inf: use 0 instead,
        # so its exponentials are all e^-inf = 0, and divide by 1 so it stays 0 (no NaN).
        row_max = scores.max(axis=-1, keepdims=True)
        if dead is not None:
            row_max[dead] = 0.0
        scores -= row_max
        probs = xp.exp(scores, out=scores)
        total = probs.sum(axis=-1, keepdims=True)
        if dead is not None:
            total[dead] = 1.0
        probs *= 1.0 / total

        dropped, keep = probs, None
        if self.p > 0.0:
            keep = keep_mask(xp, probs.shape, self.p)
            dropped = probs * keep
            dropped *= 1.0 / (1.0 - self.p)
        out = dropped @ v

        self.q_scaled, self.k, self.v, self.scale = q_scaled, k, v, scale
        self.probs, self.dropped, self.keep = probs, dropped, keep
        return (out, probs) if self.return_weights else out

    def backward(self, g_out, g_weights=None):
        xp = get_array_module(g_out)
        probs, dropped = self.probs, self.dropped
        gq = gk = gv = None
        if self.needs_input_grad[2]:
            gv = dropped.swapaxes(-1, -2) @ g_out
        if self.needs_input_grad[0] or self.needs_input_grad[1]:
            g_probs = g_out @ self.v.swapaxes(-1, -2)  # (N, h, L, S): gradient w.r.t. P̃
            if self.keep is not None:  # back through dropout: only the kept weights, scaled
                g_probs *= self.keep
                g_probs *= 1.0 / (1.0 - self.p)
            if g_weights is not None:  # the returned weights P were used too
                g_probs += g_weights
            # Softmax backward in place: dS = P ⊙ (dP - Σ_keys dP ⊙ P). Padded keys and fully
            # padded rows have P = 0, so their scores get no gradient.
            row = xp.einsum("...i,...i->...", g_probs, probs)[..., None]  # no (dP ⊙ P) temporary
            g_probs -= row
            g_probs *= probs
            g_scores = g_probs
            if self.needs_input_grad[0]:
                gq = g_scores @ self.k
                gq *= self.scale
            if self.needs_input_grad[1]:
                gk = g_scores.swapaxes(-1, -2) @ self.q_scaled
        return gq, gk, gv


def scaled_dot_product_attention(q, k, v, key_padding_mask=None, dropout_p: float = 0.0,
                                 training: bool = True, return_weights: bool = False):
    """softmax(q kᵀ / √d) v, batched over (N, heads).

    q: (N, h, L, d); k: (N, h, S, d); v: (N, h, S, d_v) → (N, h, L, d_v).
    ``key_padding_mask``: bool (N, S), True where the key is padding (it gets no weight); a
    query whose keys are all padding gets output 0. ``dropout_p``: dropout on the attention
    weights while ``training``. With ``return_weights=True`` returns ``(out, weights)``, where
    ``weights`` is a Tensor (N, h, L, S) of the softmax probabilities before dropout; it is a
    differentiable output of the op like ``out``.
    """
    p = check_dropout_p(dropout_p)
    if not training:
        p = 0.0
    if isinstance(key_padding_mask, Tensor):
        key_padding_mask = key_padding_mask.data
    return ScaledDotProductAttention(key_padding_mask, p, bool(return_weights))(q, k, v)
