"""Zero-shot classification: name the imaging modality of an image from text prompts alone.

What you will learn
-------------------
1. Where zero-shot labels come from: the model never saw a modality label, but the
   captions name modalities ("Axial CT ...", "T2-weighted MRI ..."), so a parser
   (``modality_from_caption``) turns captions into ground truth for evaluation.
2. The zero-shot classifier: embed one prompt per class ("ct scan", "mri", ...),
   compare every image embedding with them by cosine similarity, scaled by the
   learned temperature, and take the softmax over classes.
3. Why prompts matter: a prompt word the tokenizer never saw in training becomes
   <unk> and carries no meaning ("xray" when captions say "X-ray").
4. Two ways to ensemble several prompts per class, and that both beat single
   prompts: average the *probabilities* (the report's way) or average the
   normalised *embeddings* into one class vector (OpenCLIP's way).

Run it:  python examples/06_zero_shot.py                 (about a minute on a laptop CPU:
                                                          trains a small model on synthetic data first)
         python examples/06_zero_shot.py --run RUN_DIR   (use a run of tinyclip.train instead)
         python examples/06_zero_shot.py --out DIR       (train into DIR and keep the run)
         TINYCLIP_EXAMPLE_QUICK=1 shrinks everything to a few seconds (for the test suite).

It prints the training epochs, a few captions with their parsed modality, the
prompts and their unknown words, one image's class probabilities, the accuracy of
each prompt set next to the majority-class baseline, the per-class recall, and
finally one line ``RESULT: ...``.
"""

import argparse
import time

import numpy as np

from tinyclip.evaluate import load_run_pairs
from tinyclip.tasks import softmax
from tinyclip.tasks.metrics import confusion_matrix
from tinyclip.tasks.modality import (embed_prompts, label_captions, load_prompts, modality_from_caption,
                                     probs_mean_embedding, probs_mean_probability)

from _small_run import section, trained_run  # the small demo model that examples 06-08 share

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", help="a run directory of tinyclip.train (default: train a small model here)")
parser.add_argument("--out", help="where to train and keep the run (default: a temporary folder, removed at the end)")
args = parser.parse_args()
t_start = time.perf_counter()

# ---------------------------------------------------------------------------
# 0. a trained model
# ---------------------------------------------------------------------------
# the run given with --run, or else a small CLIP trained here on synthetic pairs (see _small_run.py)
model, state, run_dir = trained_run(args.run, args.out, prefix="tinyclip-example06")
print(f"model from {run_dir} (epoch {state['epoch']}), temperature exp(logit_scale) = {model.temperature():.1f}")

# ---------------------------------------------------------------------------
# 1. ground truth from the captions
# ---------------------------------------------------------------------------
section("1. modality labels parsed from the test captions")
frame, images = load_run_pairs(state)
test = np.asarray(state["split"]["test"])
captions = list(frame["caption"].iloc[test])
for caption in captions[:5] + ["Fused PET/CT image of the chest.", "Postoperative view of the wound."]:
    print(f"  {str(modality_from_caption(caption)):<12} ← {caption}")
labels, counts = label_captions(captions)
print(f"{counts['kept']} of {len(captions)} captions name exactly one modality "
      f"({counts['none']} none, {counts['several']} several); only those are scored")

prompt_sets = load_prompts()  # tinyclip/prompts/modality.json
classes = list(prompt_sets["single"])
keep = [i for i, label in enumerate(labels) if label in classes]
y = np.array([classes.index(labels[i]) for i in keep])
image_emb = model.embed_images(images[test[keep]]).astype(np.float64)
print(f"{len(keep)} images embedded: {image_emb.shape}, unit length: "
      f"{np.allclose(np.linalg.norm(image_emb, axis=1), 1, atol=1e-4)}")

# ---------------------------------------------------------------------------
# 2. one prompt per class
# ---------------------------------------------------------------------------
section("2. single prompts")
vocab = set(model.tokenizer.vocab)
for name, prompts in prompt_sets.items():
    unknown = sorted({w for ps in prompts.values() for p in ps for w in model.tokenizer.tokenize(p)} - vocab)
    print(f"prompt set {name!r}: {sum(map(len, prompts.values()))} prompts; words the model never saw "
          f"(→ <unk>): {unknown or 'none'}")
single = embed_prompts(model, prompt_sets["single"])       # per class: (1, D)
prompt_matrix = np.concatenate(single)                      # (C, D)
logits = model.temperature() * image_emb @ prompt_matrix.T  # (N, C): scaled cosine similarities
probs_single = softmax(logits, axis=1)
print(f"image 0 (true: {classes[y[0]]}):")
for c, name in enumerate(classes):
    print(f"  {prompt_sets['single'][name][0]!r:<16} cos {image_emb[0] @ prompt_matrix[c]:+.3f}  "
          f"p {probs_single[0, c]:.3f}{'  ← predicted' if c == probs_single[0].argmax() else ''}")

# ---------------------------------------------------------------------------
# 3. prompt ensembles
# ---------------------------------------------------------------------------
section("3. prompt ensembles, two ways")
ensemble = embed_prompts(model, prompt_sets["ensemble"])   # per class: (P_c, D)
scale = model.temperature()
results = {
    "single prompt": probs_single,
    "ensemble, mean of probabilities": probs_mean_probability(image_emb, ensemble, scale),
    "ensemble, mean of embeddings": probs_mean_embedding(image_emb, ensemble, scale),
}
majority = np.bincount(y, minlength=len(classes)).max() / len(y)
print(f"{'majority-class baseline':<34} accuracy {majority:.3f}")
accuracy = {}
for name, probs in results.items():
    accuracy[name] = float((probs.argmax(axis=1) == y).mean())
    print(f"{name:<34} accuracy {accuracy[name]:.3f}")

best = max(accuracy, key=accuracy.get)
matrix = confusion_matrix(y, results[best].argmax(axis=1), len(classes))
print(f"\nper-class recall of '{best}' (rows of the confusion matrix):")
for c, name in enumerate(classes):
    total = matrix[c].sum()
    print(f"  {name:<12} {matrix[c, c]:>3}/{total:<3} " + (f"{matrix[c, c] / total:.2f}" if total else "-"))

keep_hint = "; --out DIR keeps the run trained here" if args.run is None and args.out is None else ""
print(f"\n(python -m tinyclip.evaluate --run RUN_DIR --task modality writes these numbers and a confusion-matrix "
      f"figure{keep_hint}; {time.perf_counter() - t_start:.0f}s in all)")
print("RESULT: zero-shot modality accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
      + f" (majority baseline {majority:.3f}, n={len(y)})")
