"""Contrastive losses as functions of embeddings: CLIP's, its concept-aware soft version, and SimCLR's.

All three share one kernel: a (soft-target) cross-entropy over a similarity matrix.
``clip_loss`` targets the diagonal; ``soft_clip_loss`` targets a row-normalised matrix
that also credits other pairs sharing concepts (``concept_targets``); ``simclr_loss``
(NT-Xent) targets each view's partner among the 2N views, itself excluded.
"""

from __future__ import annotations

import numpy as np

from . import functional as F
from .functional.loss import cross_entropy, soft_cross_entropy
from .tensor import Tensor, no_grad


def _logits(image_emb, text_emb, logit_scale):
    """exp(logit_scale) · image_emb @ text_embᵀ, (N, N)."""
    return F.exp(logit_scale) * (image_emb @ text_emb.T)


def clip_loss(image_emb, text_emb, logit_scale):
    """Symmetric contrastive loss of N matching pairs; embeddings ``(N, D)``, L2-normalised.

    ``logits = exp(logit_scale) · image_emb @ text_embᵀ``;
    ``loss = (CE(logits, arange N) + CE(logitsᵀ, arange N)) / 2``. Any N ≥ 1 works.
    """
    logits = _logits(image_emb, text_emb, logit_scale)
    targets = logits.xp.arange(logits.shape[0])
    return (cross_entropy(logits, targets) + cross_entropy(logits.T, targets)) * 0.5


def concept_sets(frame, with_modality: bool = True) -> list[list[str]]:
    """Each pair's concepts: its ``cuis`` plus ``"modality:<name>"`` parsed from its caption (if one is named).

    ``frame``: a pairs DataFrame from ``tinyclip.data.pairs.load_pairs`` (synthetic or ROCO; both have ``cuis``).
    """
    from .tasks.modality import modality_from_caption  # tasks import models; imported late to avoid a cycle

    sets = []
    for cuis, caption in zip(frame["cuis"], frame["caption"]):
        concepts = list(cuis)
        modality = modality_from_caption(caption) if with_modality else None
        if modality is not None:
            concepts.append(f"modality:{modality}")
        sets.append(concepts)
    return sets


def concept_targets(concepts, alpha: float, similarity: str = "jaccard", xp=None, dtype=None):
    """Row-normalised targets T = rownorm(α·I + (1 − α)·S) from N concept sets; returns (N, N).

    ``S_ij`` is the Jaccard |A∩B| / |A∪B| or cosine |A∩B| / √(|A||B|) of the sets; a pair
    without concepts has S_ij = 0 for every j, so its row falls back to its own pair.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"concept_targets: alpha must be in [0, 1], got {alpha}")
    if similarity not in ("jaccard", "cosine"):
        raise ValueError(f"concept_targets: similarity must be 'jaccard' or 'cosine', got {similarity!r}")
    sets = [set(c) for c in concepts]
    vocab = {c: k for k, c in enumerate(sorted(set().union(*sets)))} if sets else {}
    onehot = np.zeros((len(sets), max(len(vocab), 1)))
    for i, s in enumerate(sets):
        onehot[i, [vocab[c] for c in s]] = 1.0
    inter = onehot @ onehot.T
    sizes = onehot.sum(axis=1)
    if similarity == "jaccard":
        union = sizes[:, None] + sizes[None, :] - inter
    else:
        union = np.sqrt(sizes[:, None] * sizes[None, :])
    sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    empty = sizes == 0
    sim[empty, :] = 0.0
    sim[:, empty] = 0.0
    np.fill_diagonal(sim, np.where(empty, 1.0, sim.diagonal()))
    targets = alpha * np.eye(len(sets)) + (1.0 - alpha) * sim
    targets /= targets.sum(axis=1, keepdims=True)
    if xp is None:
        return targets if dtype is None else targets.astype(dtype)
    return xp.asarray(targets, dtype=dtype)


def soft_clip_loss(image_emb, text_emb, logit_scale, targets):
    """Soft-target CLIP loss: (SCE(logits, T) + SCE(logitsᵀ, Tᵀ)) / 2, T from ``concept_targets``.

    With T = I it equals ``clip_loss`` in value and gradients. For a symmetric S the
    column direction uses the row-normalised Tᵀ again.
    """
    logits = _logits(image_emb, text_emb, logit_scale)
    xp = logits.xp
    t = xp.asarray(targets, dtype=logits.dtype)
    t_cols = t.T / t.T.sum(axis=1, keepdims=True)
    return (soft_cross_entropy(logits, t) + soft_cross_entropy(logits.T, t_cols)) * 0.5


def simclr_loss(z1, z2, temperature: float):
    """NT-Xent of two views (N, D) each, L2-normalised: 2N-way CE of each view against its partner.

    ``logits = [z1; z2] @ [z1; z2]ᵀ / τ`` with the diagonal removed (−1e9 added).
    """
    z = F.concatenate([z1, z2], axis=0)
    xp = z.xp
    n = z1.shape[0]
    logits = (z @ z.T) * (1.0 / temperature) + xp.eye(2 * n, dtype=z.dtype) * -1e9
    partner = xp.concatenate([xp.arange(n, 2 * n), xp.arange(n)])
    return cross_entropy(logits, partner)


def accumulated_clip_step(model, micro_batches, loss_fn=clip_loss) -> float:
    """Backpropagate ``loss_fn`` over the union of ``micro_batches`` as if it were one batch; return its value.

    ``micro_batches``: [(images, ids, padding_mask), ...]; ``loss_fn(image_emb, text_emb, logit_scale)``.
    Two passes (OpenCLIP's exact accumulation): embed every micro-batch without a graph, then
    re-embed each with its graph among the cached others and backpropagate; Σ_k dL/de_k · de_k/dθ
    is the full-batch gradient. logit_scale is live only in the first re-pass so it is counted once.
    Needs a deterministic forward (no dropout), or the two passes disagree.
    """
    with no_grad():
        cached = [model.encode(*batch)[:2] for batch in micro_batches]
    loss_value = 0.0
    for k, batch in enumerate(micro_batches):
        image_k, text_k, scale = model.encode(*batch)
        images = [image_k if j == k else Tensor(c[0].data) for j, c in enumerate(cached)]
        texts = [text_k if j == k else Tensor(c[1].data) for j, c in enumerate(cached)]
        loss = loss_fn(F.concatenate(images), F.concatenate(texts), scale if k == 0 else Tensor(scale.data))
        loss.backward()
        loss_value = loss.item()
    return loss_value
