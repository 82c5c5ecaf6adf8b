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

from .. import threads
from ..backend import get_array_module
from ..tensor import Function, Tensor
from .norm import check_dropout_p, keep_mask


class ScaledDotProductAttention(Function):
    """O = dropout(softmax(Q Kᵀ / √d + mask)) V over the last two axes, batched over (N, heads).

    q: (N, h, L, d), k: (N, h, S, d), v: (N, h, S, d_v) → (N, h, L, d_v), and with
    ``return_weights`` also P: (N, h, L, S). With P̃ = P after dropout, backward is
    dV = P̃ᵀ dO;  dP = (dO Vᵀ) ⊙ dropmask (+ dWeights);  dS = P ⊙ (dP - rowsum(dP ⊙ P));
    dQ = dS K / √d;  dK = dSᵀ Q / √d.
    Each batch item is independent, so both passes run over slices of the batch on the CPU threads.
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
        pad = None
        if self.pad is not None:
            pad = xp.asarray(self.pad)
            if pad.shape != (n, k.shape[2]):
                raise ValueError(f"attention: key_padding_mask must be (N, S) = {(n, k.shape[2])}, got {pad.shape}")
            if pad.dtype != bool:
                raise TypeError(f"attention: key_padding_mask must be bool (True = padding), got {pad.dtype}; "
                                "from a 1-means-keep attention mask pass `mask == 0`")
        # Drawn whole, before the batch is shared out: the same random stream on any thread count.
        self.keep = keep_mask(xp, (n, h, q.shape[2], k.shape[2]), self.p) if self.p > 0.0 else None
        self.q_scaled, self.k, self.v, self.scale = xp.empty_like(q), k, v, scale
        self.probs = xp.empty((n, h, q.shape[2], k.shape[2]), dtype=xp.result_type(q, k))
        self.dropped = self.probs if self.keep is None else xp.empty_like(self.probs)
        out = xp.empty(q.shape[:3] + v.shape[3:], dtype=xp.result_type(q, v))

        def share(chunks):  # slices of the batch, on the CPU threads (tinyclip.threads)
            for part in chunks:
                out[part] = self._forward(xp, q[part], k[part], v[part], None if pad is None else pad[part], part)

        threads.over_batch(xp, share, n, self.probs[:1].nbytes)
        return (out, self.probs) if self.return_weights else out

    def _forward(self, xp, q, k, v, pad, part):
        """O for a slice of the batch; fills that slice of q_scaled, probs and dropped."""
        # Scale Q (L·d numbers) rather than the scores (L·S); the scaled Q also serves dK in backward.
        q_scaled = xp.multiply(q, self.scale, out=self.q_scaled[part])
        scores = xp.matmul(q_scaled, k.swapaxes(-1, -2), out=self.probs[part])  # (n, h, L, S)

        dead = None  # batch items whose every key is padding
        if pad is not None:
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

        dropped = probs
        if self.keep is not None:
            dropped = xp.multiply(probs, self.keep[part], out=self.dropped[part])
            dropped *= 1.0 / (1.0 - self.p)
        return dropped @ v

    def backward(self, g_out, g_weights=None):
        xp = get_array_module(g_out)
        need_q, need_k, need_v = self.needs_input_grad
        gq = xp.empty_like(self.q_scaled) if need_q else None
        gk = xp.empty_like(self.k) if need_k else None
        gv = xp.empty_like(self.v) if need_v else None

        def share(chunks):
            for part in chunks:
                g = None if g_weights is None else g_weights[part]
                self._backward(xp, part, g_out[part], g, gq, gk, gv)

        threads.over_batch(xp, share, len(self.probs), self.probs[:1].nbytes)
        return gq, gk, gv

    def _backward(self, xp, part, g_out, g_weights, gq, gk, gv):
        """Writes the slice ``part`` of gq, gk, gv (those that are not None)."""
        probs, dropped = self.probs[part], self.dropped[part]
        if gv is not None:
            gv[part] = dropped.swapaxes(-1, -2) @ g_out
        if gq is None and gk is None:
            return
        g_probs = g_out @ self.v[part].swapaxes(-1, -2)  # (n, h, L, S): gradient w.r.t. P̃
        if self.keep is not None:  # back through dropout: only the kept weights, scaled
            g_probs *= self.keep[part]
            g_probs *= 1.0 / (1.0 - self.p)
        if g_weights is not None:  # the returned weights P were used too
            g_probs += g_weights
        # Softmax backward in place: dS = P ⊙ (dP - Σ_keys dP ⊙ P). Padded keys and fully
        # padded rows have P = 0, so their scores get no gradient.
        row = xp.einsum("...i,...i->...", g_probs, probs)[..., None]  # no (dP ⊙ P) temporary
        g_probs -= row
        g_probs *= probs
        g_scores = g_probs
        if gq is not None:
            xp.matmul(g_scores, self.k[part], out=gq[part])
            gq[part] *= self.scale
        if gk is not None:
            xp.matmul(g_scores.swapaxes(-1, -2), self.q_scaled[part], out=gk[part])


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
