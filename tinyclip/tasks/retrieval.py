"""Cross-modal retrieval: find a pair's caption from its image, and its image from its caption.

With unit embeddings ``I`` (images) and ``T`` (captions) of N pairs, the cosine
similarity matrix is ``S = I Tᵀ`` ``(N, N)``: row i scores every caption against
image i, column j every image against caption j.

* **rank** of a query: 1 + the number of wrong items that score at least as high
  as the best correct one. A tie counts *against* the correct item, so a model
  that gives every item the same score gets rank N, not rank 1: ties cannot
  flatter a collapsed model, and the result does not depend on sort order.
* **correct items**: by default only the pair's own partner (the diagonal). When
  several pairs share exactly the same caption text, their captions have the
  same embedding and no model could tell them apart, so ``run`` counts every
  caption with identical text as correct (and, the other way, every image of
  such a caption). With all captions distinct this is the plain diagonal.
* **R@K** (recall at K): the share of queries with rank ≤ K; **median/mean rank**
  of the ranks. ``i2t`` = image→text (rows of S), ``t2i`` = text→image (columns).

Figures (written to ``ctx.out``): the softmax probabilities of the first 16
pairs as a heatmap; the top 5 images for a few captions; the top 5 captions for
a few images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import figures, softmax

KS = (1, 5, 10)


# ---------------------------------------------------------------------------
# pure metrics
# ---------------------------------------------------------------------------

def ranks(sim: np.ndarray, positives: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of the correct item for each row (query) of ``sim`` ``(Q, M)``.

    ``positives``: bool ``(Q, M)``, which items are correct for each query
    (default: the diagonal, ``Q == M``). rank = 1 + #{wrong j : sim[q, j] ≥ best
    correct score of q}; ties count against the correct item.
    """
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"expected a 2-D similarity matrix, got shape {sim.shape}")
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"a non-square similarity matrix {sim.shape} needs explicit positives")
        positives = np.eye(sim.shape[0], dtype=bool)
    positives = np.asarray(positives, dtype=bool)
    if positives.shape != sim.shape:
        raise ValueError(f"positives {positives.shape} and similarities {sim.shape} differ in shape")
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one correct item")
    if not np.isfinite(sim).all():
        raise ValueError("the similarity matrix has NaN or infinite entries (a diverged model?)")
    best = np.where(positives, sim, -np.inf).max(axis=1, keepdims=True)
    return 1 + ((sim >= best) & ~positives).sum(axis=1)


def recall_at_k(rank: np.ndarray, k: int) -> float:
    """Share of queries whose correct item is within the top ``k`` (rank ≤ k)."""
    rank = np.asarray(rank)
    return float((rank <= k).mean()) if rank.size else float("nan")


def retrieval_metrics(sim: np.ndarray, positives: np.ndarray | None = None, ks=KS) -> dict:
    """R@K, median and mean rank both ways; ``sim[i, j]`` = image i vs caption j."""
    sim = np.asarray(sim)
    positives = np.eye(len(sim), dtype=bool) if positives is None else np.asarray(positives, dtype=bool)
    out = {"n": int(sim.shape[0])}
    for name, s, p in (("i2t", sim, positives), ("t2i", sim.T, positives.T)):
        r = ranks(s, p)
        for k in ks:
            out[f"{name}_R@{k}"] = recall_at_k(r, k)
        out[f"{name}_median_rank"] = float(np.median(r))
        out[f"{name}_mean_rank"] = float(np.mean(r))
    return out


def same_caption(captions) -> np.ndarray:
    """Bool ``(N, N)``: True where two pairs have identical caption text (so the diagonal too)."""
    codes = np.unique(np.asarray([" ".join(str(c).split()) for c in captions], dtype=object),
                      return_inverse=True)[1].reshape(-1)
    return codes[:, None] == codes[None, :]


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

def embed_pairs(model, images, captions, batch_size: int = 128):
    """Unit image and caption embeddings ``(N, D)`` each, as NumPy."""
    return model.embed_images(images, batch_size), model.embed_texts(list(captions), batch_size)


@dataclass(frozen=True)
class Options:
    """Retrieval has no options of its own."""


def run(ctx, options: Options = Options()) -> dict:
    """Retrieval metrics of ``ctx``'s pairs plus the three figures."""
    captions = [str(c) for c in ctx.frame["caption"]]
    n = len(captions)
    if n < 2:
        from . import TaskSkipped
        raise TaskSkipped(f"retrieval needs at least 2 pairs, got {n}")
    image_emb, text_emb = ctx.image_embeddings(), ctx.text_embeddings()
    sim = image_emb.astype(np.float64) @ text_emb.astype(np.float64).T
    positives = same_caption(captions)
    metrics = retrieval_metrics(sim, positives)
    metrics["n_unique_captions"] = int(len(set(" ".join(c.split()) for c in captions)))

    scale = ctx.model.temperature()
    metrics["figures"] = _figures(ctx, sim * scale, positives, captions)
    return metrics


def _figures(ctx, logits, positives, captions, n_heatmap: int = 16, n_queries: int = 4, k: int = 5) -> list:
    out = ctx.out
    n = len(captions)
    m = min(n_heatmap, n)
    k = min(k, n)
    q = min(n_queries, n)
    names = []
    # Fig. 1: each of the first m images against the first m captions.
    heat = softmax(logits[:m, :m], axis=1)
    figures.similarity_heatmap(out / "retrieval_heatmap.png", heat, ctx.images[:m], captions[:m],
                               title=f"first {m} pairs: softmax over the {m} captions for each image")
    names.append("retrieval_heatmap.png")
    # Fig. 2/3: for the first q captions, the k most probable images among all n.
    probs_t2i = softmax(logits[:, :q].T, axis=1)  # (q, n): caption j over all images
    top = np.argsort(-probs_t2i, axis=1, kind="stable")[:, :k]
    figures.ranked_images(out / "retrieval_text_to_image.png", captions[:q], ctx.images, top,
                          np.take_along_axis(probs_t2i, top, 1), positives[:q][np.arange(q)[:, None], top],
                          title=f"text → image: top {k} of {n} images (green: correct)")
    names.append("retrieval_text_to_image.png")
    # Fig. 4: for the first q images, the k most probable captions among all n.
    probs_i2t = softmax(logits[:q], axis=1)  # (q, n)
    top = np.argsort(-probs_i2t, axis=1, kind="stable")[:, :k]
    figures.ranked_captions(out / "retrieval_image_to_text.png", ctx.images[:q], captions, top,
                            np.take_along_axis(probs_i2t, top, 1), positives[:q][np.arange(q)[:, None], top],
                            title=f"image → text: top {k} of {n} captions (green: correct)")
    names.append("retrieval_image_to_text.png")
    return names
