"""Cross-modal retrieval: find a caption's image and an image's caption, and measure how well.

What you will learn
-------------------
1. Retrieval is one matrix product: with unit embeddings, ``S = images @ captionsᵀ``
   holds every cosine similarity; row i ranks the captions for image i, column j
   the images for caption j. Matching pairs sit on the diagonal.
2. What a rank is (1 + how many wrong items score at least as high as the right
   one: ties count against the model) and how recall@K and median/mean rank
   summarise the ranks, both ways (image→text and text→image).
3. What chance looks like: with N candidates, R@K ≈ K/N and the median rank ≈ N/2,
   the numbers to beat.
4. The similarity heatmap (report Fig. 1): softmax probabilities of a few pairs,
   which should light up along the diagonal.

Run it:  python examples/07_retrieval.py                 (about a minute on a laptop CPU:
                                                          trains a small model on synthetic data first)
         python examples/07_retrieval.py --run RUN_DIR   (use a run of tinyclip.train instead)
         TINYCLIP_EXAMPLE_QUICK=1 shrinks everything to a few seconds (for the test suite).

It prints the training epochs, the similarity matrix's shape and diagonal, the
ranked captions of a few images, the metrics next to chance, the path of the
heatmap PNG (--out, default: a folder in the temporary directory), and finally
one line ``RESULT: ...``.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tinyclip.evaluate import load_run_pairs
from tinyclip.tasks import figures, softmax
from tinyclip.tasks.retrieval import ranks, recall_at_k, retrieval_metrics, same_caption

from _small_run import QUICK, section, trained_run  # the small demo model that examples 06-08 share

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", help="a run directory of tinyclip.train (default: train a small model here)")
parser.add_argument("--out", help="where the heatmap goes (default: tinyclip-example07 in the temporary directory)")
args = parser.parse_args()
out = Path(args.out or Path(tempfile.gettempdir()) / "tinyclip-example07")
t_start = time.perf_counter()

# ---------------------------------------------------------------------------
# 0. a trained model
# ---------------------------------------------------------------------------
# the run given with --run, or else a small CLIP trained here on synthetic pairs (see _small_run.py)
model, state, _ = trained_run(args.run, prefix="tinyclip-example07-run")  # --out is for the heatmap
print(f"model of epoch {state['epoch']}, temperature exp(logit_scale) = {model.temperature():.1f}")

# ---------------------------------------------------------------------------
# 1. the similarity matrix
# ---------------------------------------------------------------------------
section("1. one matrix product scores every image against every caption")
frame, images = load_run_pairs(state)
test = np.asarray(state["split"]["test"])
captions, images = list(frame["caption"].iloc[test]), images[test]
image_emb = model.embed_images(images).astype(np.float64)  # (N, D), unit rows
text_emb = model.embed_texts(captions).astype(np.float64)  # (N, D), unit rows
sim = image_emb @ text_emb.T                                # (N, N) cosine similarities
n = len(sim)
off_diagonal = sim[~np.eye(n, dtype=bool)]
print(f"{n} test pairs; S = images @ captionsᵀ has shape {sim.shape}")
print(f"mean cosine of matching pairs (diagonal) {np.diag(sim).mean():+.3f}  vs  other pairs "
      f"{off_diagonal.mean():+.3f}")

# ---------------------------------------------------------------------------
# 2. ranks, by hand for a few images
# ---------------------------------------------------------------------------
section("2. ranks: where does the right caption land?")
# Synthetic captions repeat now and then; identical captions embed identically, so any of them counts as correct.
positives = same_caption(captions)  # (N, N) bool, the diagonal and identical captions
print(f"{len(set(captions))} distinct captions among {n}")
i2t = ranks(sim, positives)  # one rank per image (row); ties count against the correct caption
probs = softmax(model.temperature() * sim, axis=1)  # each image's distribution over all N captions
for i in range(3):
    order = np.argsort(-sim[i], kind="stable")[:3]
    print(f"image {i} — its caption: {captions[i]!r}, rank {i2t[i]}")
    for j in order:
        print(f"    p {probs[i, j]:.3f}  cos {sim[i, j]:+.3f}  {'✔' if positives[i, j] else ' '} {captions[j]}")
for k in (1, 5, 10):
    print(f"recall@{k:<2} = share of images with rank ≤ {k:<2} = {recall_at_k(i2t, k):.3f}")

# ---------------------------------------------------------------------------
# 3. all metrics, both ways, against chance
# ---------------------------------------------------------------------------
section("3. retrieval metrics both ways, next to chance")
metrics = retrieval_metrics(sim, positives)
print(f"{'':<18}{'image→text':>12}{'text→image':>12}{'chance':>10}")
for k in (1, 5, 10):
    print(f"{f'R@{k}':<18}{metrics[f'i2t_R@{k}']:>12.3f}{metrics[f't2i_R@{k}']:>12.3f}{min(k / n, 1):>10.3f}")
for stat in ("median", "mean"):
    print(f"{stat + ' rank':<18}{metrics[f'i2t_{stat}_rank']:>12.1f}{metrics[f't2i_{stat}_rank']:>12.1f}"
          f"{(n + 1) / 2:>10.1f}")

# ---------------------------------------------------------------------------
# 4. the heatmap
# ---------------------------------------------------------------------------
section("4. similarity heatmap of the first pairs")
m = min(8 if QUICK else 12, n)
path = figures.similarity_heatmap(out / "retrieval_heatmap.png", softmax(model.temperature() * sim[:m, :m], axis=1),
                                  images[:m], captions[:m], title=f"softmax over {m} captions for each image")
print(f"wrote {path}: row i = image i, its probabilities over the {m} captions; the diagonal is outlined")

print(f"\n({time.perf_counter() - t_start:.0f}s in all; python -m tinyclip.evaluate --run RUN_DIR --task retrieval "
      f"writes these metrics and three figures)")
print(f"RESULT: retrieval on {n} test pairs: image→text R@1 {metrics['i2t_R@1']:.3f} R@5 {metrics['i2t_R@5']:.3f}, "
      f"text→image R@1 {metrics['t2i_R@1']:.3f} R@5 {metrics['t2i_R@5']:.3f} (chance R@1 {1 / n:.3f})")
