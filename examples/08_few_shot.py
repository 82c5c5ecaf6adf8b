"""Few-shot pneumonia detection: a small classifier on frozen CLIP image features.

What you will learn
-------------------
1. Frozen features: the trained image tower becomes a fixed feature extractor. Every
   chest X-ray is embedded once; the vectors are cached (as an .npz next to the results),
   so training many small classifiers on them costs seconds, not hours.
2. The report's few-shot classifier: two dense ReLU layers and a sigmoid output,
   trained with Adam on binary cross-entropy, next to a plain logistic-regression
   probe on the same features. Both are trained by one shared loop
   (``tinyclip.tasks.heads.fit``) with early stopping on a held-out part.
3. Why sampling and seeds matter: with n = 10 labelled images a random draw can miss
   a class, so samples are balanced (n/2 per class); and the accuracy of tiny n
   varies a lot from draw to draw, hence several seeds and error bars.
4. How to read the accuracy-vs-n curve: against the majority-class baseline, and
   against the same heads on raw pixels (what the image tower adds).

Run it:  python examples/08_few_shot.py                  (about a minute on a laptop CPU:
                                                          trains a small model on synthetic data first)
         python examples/08_few_shot.py --run RUN_DIR    (use a run of tinyclip.train instead)
         python examples/08_few_shot.py --out DIR        (train into DIR and keep the run and the figure)
         python examples/08_few_shot.py --run RUN_DIR --chest-dir ../shared/data/chest_xray
                                                         (the real Kermany chest X-rays: minutes, most of
                                                          it embedding 5,840 images once)
         TINYCLIP_EXAMPLE_QUICK=1 shrinks everything to a few seconds (for the test suite).

It prints the training epochs, the feature matrix and the cache, one head trained in
detail, the accuracy per n for both heads (and for raw pixels), where the figure
went, and finally one line ``RESULT: ...``.
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tinyclip import manual_seed
from tinyclip.tasks import fewshot, heads, metrics
from tinyclip.tasks.common import EvalContext

from _small_run import QUICK, section, trained_run  # the small demo model that examples 06-08 share

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", help="a run directory of tinyclip.train (default: train a small model here)")
parser.add_argument("--out", help="where to train and keep the run (default: a temporary folder, removed at the end)")
parser.add_argument("--chest-dir", help="Kermany chest_xray folder (train/, test/); default: synthetic chest X-rays")
args = parser.parse_args()
t_start = time.perf_counter()

# ---------------------------------------------------------------------------
# 0. a trained model
# ---------------------------------------------------------------------------
# the run given with --run, or else a small CLIP trained here on synthetic pairs (see _small_run.py)
model, state, run_dir = trained_run(args.run, args.out, prefix="tinyclip-example08")
out = Path(run_dir) / "eval"
print(f"model from {run_dir} (epoch {state['epoch']}); image size {model.config.image_size}, "
      f"embedding {model.config.embed_dim}-d")

# ---------------------------------------------------------------------------
# 1. frozen features, computed once
# ---------------------------------------------------------------------------
section("1. the image tower as a frozen feature extractor")
run_data = state["args"]["data"]
if run_data != "synthetic" and not args.chest_dir:
    raise SystemExit(f"this run was trained on {run_data} data: give --chest-dir (the Kermany chest_xray folder); "
                     "synthetic chest X-rays are meant for runs trained on synthetic pairs")
synthetic_n = 100 if QUICK else 1000
source = fewshot.chest_xray_source(model.config.image_size, seed=0, run_data=run_data, chest_dir=args.chest_dir,
                                   synthetic_n=synthetic_n)
t0 = time.perf_counter()
arrays, cached = fewshot.extract_features(model, source, out, "clip", log=lambda s: print("  " + s))
print(f"{source['name']} chest X-rays: train {arrays['train_x'].shape}, test {arrays['test_x'].shape} "
      f"in {time.perf_counter() - t0:.1f}s (from cache: {cached})")
print(f"pneumonia share: train {arrays['train_y'].mean():.2f}, test {arrays['test_y'].mean():.2f}; "
      f"embeddings have unit length: {np.allclose(np.linalg.norm(arrays['train_x'], axis=1), 1, atol=1e-3)}")
t0 = time.perf_counter()
_, cached = fewshot.extract_features(model, source, out, "clip")
print(f"asking again: {time.perf_counter() - t0:.3f}s (from cache: {cached}); on disk: "
      f"{', '.join(p.name for p in out.glob('fewshot-features-*.npz'))}")
# Standardise with the statistics of the whole (unlabelled) training pool: entries of a unit
# 64-d vector are about 1/8, and Adam's first steps are better matched to unit-scale inputs.
train_x, test_x = heads.standardize(arrays["train_x"], arrays["train_x"], arrays["test_x"])
train_y, test_y = arrays["train_y"], arrays["test_y"]

# ---------------------------------------------------------------------------
# 2. one head, step by step
# ---------------------------------------------------------------------------
section("2. the few-shot classifier with n = 20 labelled images")
index = fewshot.sample_shots(train_y, 20, np.random.default_rng(0))
print(f"balanced sample: {np.bincount(train_y[index]).tolist()} (normal, pneumonia) of a pool of {len(train_y)}")
manual_seed(0)
head = heads.mlp_head(train_x.shape[1], 1)
print(head)
summary = heads.fit(head, train_x[index], train_y[index].astype(np.float32), "binary", steps=100 if QUICK else 300,
                    weight_decay=1e-4)
print(f"{summary['steps']} Adam steps in {summary['seconds']:.2f}s; held out: {summary['n_val']} images "
      f"(too few to hold any out, so weight decay alone limits memorising)")
logits = heads.predict(head, test_x)[:, 0]
print(f"test accuracy {metrics.accuracy(test_y, (logits > 0).astype(test_y.dtype)):.3f}, "
      f"ROC AUC {metrics.roc_auc(test_y, logits):.3f} on {len(test_y)} test images")

# ---------------------------------------------------------------------------
# 3. the whole curve, as `python -m tinyclip.evaluate --task fewshot` runs it
# ---------------------------------------------------------------------------
section("3. accuracy vs number of labelled images, several seeds each")
# the typed options of the task: what --shots, --seeds, --head-steps, ... of tinyclip.evaluate set
options = fewshot.Options(shots=(10, 50, "all") if QUICK else (10, 20, 50, 100, 200, 500, "all"),
                          seeds=2 if QUICK else 3, synthetic_n=synthetic_n)
if QUICK:
    options = replace(options, head_steps=40)
ctx = EvalContext(model, state, None, None, None, None, out, seed=0, chest_dir=args.chest_dir)
metrics = fewshot.run(ctx, options, log=lambda s: print("  " + s))
print(f"majority-class baseline: {metrics['majority_baseline']:.3f}")
print(f"{'n':>6}  {'MLP head':>15}  {'logistic probe':>15}")
for label in metrics["shots"]:
    mlp, probe = metrics["mlp"][label], metrics["probe"][label]
    print(f"{mlp['n']:>6}  {mlp['accuracy_mean']:.3f} ± {mlp['accuracy_std']:.3f}  "
          f"{probe['accuracy_mean']:.3f} ± {probe['accuracy_std']:.3f}")
print(f"figure: {out / metrics['figure']}")

section("4. the same heads on raw pixels (16 × 16 grey), without the image tower")
pixels = fewshot.run(ctx, replace(options, features="pixels", shots=("all",)), log=lambda s: print("  " + s))

keep_hint = "; --out DIR keeps the run and the figure" if args.run is None and args.out is None else ""
print(f"\n({time.perf_counter() - t_start:.0f}s in all{keep_hint})")
best = metrics["mlp"]["all"]
print(f"RESULT: few-shot pneumonia accuracy on frozen CLIP features: MLP n={metrics['mlp'][metrics['shots'][0]]['n']} "
      f"{metrics['mlp'][metrics['shots'][0]]['accuracy_mean']:.3f}, n={best['n']} {best['accuracy_mean']:.3f}; "
      f"probe n={best['n']} {metrics['probe']['all']['accuracy_mean']:.3f}; raw-pixel probe "
      f"{pixels['probe']['all']['accuracy_mean']:.3f}; majority baseline {metrics['majority_baseline']:.3f}")
