"""Few-shot pneumonia detection: how many labelled chest X-rays does the frozen image tower need?

The image tower of the trained CLIP is frozen and turns every chest X-ray into a
feature vector (its unit image embedding), computed once and cached. On top, the
report's classifier is trained with only n labelled training images:

    features (D) → Linear(D, 128) → ReLU → Linear(128, 64) → ReLU → Linear(64, 1) → sigmoid

with binary cross-entropy and Adam, for n in {10, 20, 50, 100, 200, 500, 1000, all},
each n over several seeds (a new sample of n images and a new initialisation per
seed), always scored on the whole test set. A plain logistic-regression probe
(``Linear(D, 1)`` + sigmoid) on the same features is the baseline that tells whether
the hidden layers help. Result: mean ± std accuracy (and ROC AUC) per n, and the
accuracy-vs-n curve (report Fig. 5).

Data, first that is given in ``ctx.options``: ``chest_dir`` (the Kermany folder,
train/ and test/), ``pneumonia_npz`` (PneumoniaMNIST: its train and test splits,
grey → RGB at the model's image size), else, for a model trained on synthetic
pairs, synthetic chest X-rays (1000 train, and the 400 test images of the
pneumonia zero-shot task); for a real run without chest X-rays the task is skipped.

Samples are balanced: n/2 normal and n/2 pneumonia images (the rest from the other
class when one runs out), so even n = 10 sees both classes; in the loss, rows are
weighted so that both classes count equally (this matters only for "all", whose
classes are unbalanced). Features are standardised with the mean and std of the
whole unlabelled training pool.

Options read: ``chest_dir``, ``pneumonia_npz``, ``shots`` (list or "10,20,all"),
``seeds`` (how many, default 5), ``features`` ("clip" or "pixels": downsampled
raw pixels, a baseline that needs no model), ``head_hidden`` ("128,64"),
``head_lr``, ``head_steps``, ``synthetic_n`` (synthetic train pool, default 1000),
``cache_dir`` (decoded Kermany images), ``batch_size`` (images embedded at once).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from ..backend import manual_seed
from ..data.chest_xray import gray_to_rgb, load_kermany, load_pneumoniamnist
from ..data.images import default_cache_dir, load_images
from ..data.synthetic import make_synthetic_chest_xray
from . import TaskSkipped
from .common import EvalContext
from .heads import (accuracy, cached_arrays, cache_key, fit, linear_head, mlp_head, model_fingerprint, predict,
                    roc_auc, standardize)

DEFAULT_SHOTS = (10, 20, 50, 100, 200, 500, 1000, "all")
DEFAULT_SEEDS = 5
DEFAULT_HIDDEN = (128, 64)
SYNTHETIC_TEST = 400  # the test set of the pneumonia zero-shot task too (same size, same seed offset)
SYNTHETIC_TRAIN_SEED, SYNTHETIC_TEST_SEED = 1000, 2000
FIGURE = "fewshot_accuracy.png"

# The heads' training settings: a few hundred Adam steps take a second or two each.
# Rows are weighted so that both classes count equally: the balanced samples of small n are
# unaffected, and "all" (74% pneumonia in Kermany's train split, 62.5% in its test split) is
# not pulled towards the majority class.
MLP_SETTINGS = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "steps": 300, "patience": 10, "balance": True}
PROBE_SETTINGS = {"lr": 1e-2, "weight_decay": 1e-3, "batch_size": 64, "steps": 300, "patience": 10, "balance": True}


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------

def _int_list(value, name: str) -> tuple:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name}: expected comma-separated integers, got {value!r}") from None


def parse_shots(value) -> tuple:
    """``shots`` as a tuple of positive ints and/or ``"all"`` (default ``DEFAULT_SHOTS``)."""
    if value is None:
        return DEFAULT_SHOTS
    if isinstance(value, (int, np.integer)):
        value = [value]
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    shots = []
    for v in value:
        if str(v).lower() == "all":
            shots.append("all")
        else:
            try:
                n = int(v)
            except ValueError:
                raise ValueError(f"option shots: expected integers or 'all', got {v!r}") from None
            if n < 2:
                raise ValueError(f"option shots: n must be at least 2 (one image per class), got {n}")
            shots.append(n)
    if not shots:
        raise ValueError("option shots is empty")
    return tuple(shots)


def parse_seeds(value, base: int = 0) -> list:
    """``seeds``: a count (default 5 → ``base, base+1, ...``) or an explicit list of seeds."""
    if value is None:
        value = DEFAULT_SEEDS
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and "," not in value):
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"option seeds: expected a count or comma-separated integers, got {value!r}") from None
        if count < 1:
            raise ValueError(f"option seeds: need at least one seed, got {count}")
        return [base + i for i in range(count)]
    return list(_int_list(value, "seeds"))


# ---------------------------------------------------------------------------
# data and features
# ---------------------------------------------------------------------------

def _file_stamp(path) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def chest_xray_source(options: dict, image_size: int, seed: int = 0, run_data: str = "synthetic") -> dict:
    """Which chest X-rays to use: ``{"name", "key", "load"}``.

    ``key`` describes the data cheaply (paths, sizes, modification times; no
    decoding); ``load()`` returns ``(train_images, train_labels, test_images,
    test_labels)`` with images uint8 ``(N, S, S, 3)``. Synthetic chest X-rays are
    used only for a model trained on synthetic data (``run_data``); otherwise,
    without ``chest_dir`` or ``pneumonia_npz``, the task is skipped.
    """
    if options.get("chest_dir"):
        root = Path(options["chest_dir"])
        train, test = load_kermany(root, "train"), load_kermany(root, "test")

        def load():
            parts = []
            for frame, split in ((train, "train"), (test, "test")):
                images, ok = load_images(list(frame["image"]), image_size,
                                         cache_dir=options.get("cache_dir") or default_cache_dir())
                if not ok.all():
                    warnings.warn(f"skipped {int((~ok).sum())} undecodable {split} images in {root}")
                parts += [np.asarray(images[ok]), frame["label"].to_numpy()[ok]]
            return tuple(parts)

        stamps = [os.stat(p).st_mtime_ns for p in list(train["image"]) + list(test["image"])]
        key = ["kermany", str(root.resolve()), list(train["image"]), list(test["image"]), stamps, image_size]
        return {"name": "kermany", "key": key, "load": load}
    if options.get("pneumonia_npz"):
        path = options["pneumonia_npz"]

        def load():
            data = load_pneumoniamnist(path)
            return (gray_to_rgb(data["train_images"], image_size), data["train_labels"],
                    gray_to_rgb(data["test_images"], image_size), data["test_labels"])

        return {"name": "pneumoniamnist", "key": ["pneumoniamnist", _file_stamp(path), image_size], "load": load}
    if run_data != "synthetic":
        raise TaskSkipped("no chest X-rays: give --chest-dir (Kermany folder) or --pneumonia-npz (PneumoniaMNIST); "
                          "synthetic ones are used only for runs trained on synthetic data")
    n_train = int(options.get("synthetic_n", 1000))

    def load():
        train = make_synthetic_chest_xray(n_train, image_size, seed=seed + SYNTHETIC_TRAIN_SEED)
        test = make_synthetic_chest_xray(SYNTHETIC_TEST, image_size, seed=seed + SYNTHETIC_TEST_SEED)
        return (*train, *test)

    return {"name": "synthetic", "key": ["synthetic", n_train, SYNTHETIC_TEST, image_size, seed], "load": load}


def pixel_features(images: np.ndarray, side: int = 16) -> np.ndarray:
    """A model-free baseline: grey images averaged down to ``side × side`` blocks, flattened, in [0, 1].

    ``side`` becomes the largest divisor of the image size that is at most ``side``.
    """
    images = np.asarray(images)
    n, s = images.shape[0], images.shape[1]
    side = max(d for d in range(1, min(side, s) + 1) if s % d == 0)
    grey = images.mean(axis=-1, dtype=np.float32) / 255.0
    return grey.reshape(n, side, s // side, side, s // side).mean(axis=(2, 4)).reshape(n, side * side)


def extract_features(model, source: dict, out_dir, kind: str = "clip", batch_size: int = 128, log=print):
    """``(arrays, from_cache)``: ``train_x, train_y, test_x, test_y`` for ``source``.

    ``kind`` "clip": the model's unit image embeddings (frozen); "pixels": see
    ``pixel_features``. Cached in memory and in ``out_dir`` under a key made of the
    checkpoint's fingerprint and the data description, so reruns skip the encoder.
    """
    if kind not in ("clip", "pixels"):
        raise ValueError(f"option features: expected 'clip' or 'pixels', got {kind!r}")
    model_key = model_fingerprint(model) if kind == "clip" else "pixels"
    key = cache_key("fewshot-features", 1, model_key, source["key"])

    def compute():
        t0 = time.perf_counter()
        train_images, train_y, test_images, test_y = source["load"]()
        log(f"fewshot: {source['name']} chest X-rays loaded: {len(train_y)} train / {len(test_y)} test "
            f"({time.perf_counter() - t0:.1f}s); computing {kind} features ...")
        t0 = time.perf_counter()
        embed = (lambda images: model.embed_images(images, batch_size=batch_size)) if kind == "clip" else pixel_features
        arrays = {"train_x": embed(train_images), "train_y": train_y, "test_x": embed(test_images), "test_y": test_y}
        log(f"fewshot: features {arrays['train_x'].shape[1]}-d in {time.perf_counter() - t0:.1f}s")
        return arrays

    return cached_arrays(out_dir, "fewshot-features", key, compute)


# ---------------------------------------------------------------------------
# the curve
# ---------------------------------------------------------------------------

def sample_shots(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` training rows, as balanced over the classes as the pool allows.

    Each class gets ``n // C`` (the remainder goes to randomly chosen classes); when a
    class has fewer rows than its share, all of them are taken and the others make up
    the difference. Sorted, without repetition.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    want = np.full(len(classes), n // len(classes))
    want[rng.permutation(len(classes))[: n % len(classes)]] += 1
    take = np.minimum(want, [len(p) for p in pools])
    short = n - take.sum()
    while short > 0:  # hand the missing rows to classes that still have some
        for i in rng.permutation(len(classes)):
            if short > 0 and take[i] < len(pools[i]):
                take[i] += 1
                short -= 1
    return np.sort(np.concatenate([p[:k] for p, k in zip(pools, take)]))


def _summary(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)) if len(values) > 1 else 0.0}


def few_shot_curve(train_x, train_y, test_x, test_y, shots=DEFAULT_SHOTS, seeds=(0, 1, 2, 3, 4),
                   hidden=DEFAULT_HIDDEN, mlp_settings=None, probe_settings=None, log=print) -> dict:
    """Train both heads for every n in ``shots`` and seed in ``seeds``; score each on the test set.

    Returns ``{"mlp": {label: stats}, "probe": {label: stats}, "shots": [...]}`` where
    ``label`` is ``str(n)`` or ``"all"`` and ``stats`` holds ``n``, ``accuracy_mean``,
    ``accuracy_std``, ``accuracies`` (one per seed), ``auc_mean``, ``auc_std``, ``seconds``.
    n larger than the training pool is skipped.
    """
    mlp_settings = {**MLP_SETTINGS, **(mlp_settings or {})}
    probe_settings = {**PROBE_SETTINGS, **(probe_settings or {})}
    pool = len(train_y)
    heads = {
        "mlp": (lambda d: mlp_head(d, 1, hidden), mlp_settings),
        "probe": (lambda d: linear_head(d, 1), probe_settings),
    }
    results = {name: {} for name in heads}
    used = []
    for n in shots:
        if n == "all":
            n_real, label = pool, "all"
        elif n > pool:
            log(f"fewshot: skipping n={n}: only {pool} training images")
            continue
        else:
            n_real, label = int(n), str(n)
        used.append(label)
        for name, (build, settings) in heads.items():
            t0 = time.perf_counter()
            accs, aucs = [], []
            for seed in seeds:
                index = sample_shots(train_y, n_real, np.random.default_rng(seed))
                manual_seed(seed)
                head = build(train_x.shape[1])
                fit(head, train_x[index], train_y[index].astype(np.float32), "binary", seed=seed, **settings)
                logits = predict(head, test_x)[:, 0]
                accs.append(accuracy(test_y, (logits > 0).astype(test_y.dtype)))
                aucs.append(roc_auc(test_y, logits))
            acc, auc = _summary(accs), _summary(aucs)
            results[name][label] = {"n": n_real, "accuracy_mean": acc["mean"], "accuracy_std": acc["std"],
                                    "accuracies": accs, "auc_mean": auc["mean"], "auc_std": auc["std"],
                                    "seconds": round(time.perf_counter() - t0, 2)}
            log(f"fewshot: n={label:>5} {name:5}: accuracy {acc['mean']:.3f} ± {acc['std']:.3f}  "
                f"AUC {auc['mean']:.3f}  ({len(seeds)} seeds, {time.perf_counter() - t0:.1f}s)")
    if not used:
        raise ValueError(f"option shots: every n of {list(shots)} is larger than the {pool} training images; "
                         f"give smaller values or 'all'")
    return {**results, "shots": used}


# ---------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------

def plot_curve(path, results: dict, baseline: float | None = None, title: str = "") -> Path:
    """Accuracy vs number of labelled images (log x axis), mean ± std over seeds, both heads."""
    from .figures import new_figure, save
    fig = new_figure(5.2, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, style, label in (("mlp", "o-", "MLP head (2 hidden layers)"), ("probe", "s--", "logistic probe")):
        rows = [results[name][k] for k in results["shots"]]
        ax.errorbar([r["n"] for r in rows], [r["accuracy_mean"] for r in rows],
                    yerr=[r["accuracy_std"] for r in rows], fmt=style, capsize=3, label=label)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", label=f"majority class ({baseline:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images n")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "few-shot pneumonia detection on frozen CLIP image features", fontsize=9)
    return save(fig, path)


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

def run(ctx: EvalContext, log=print) -> dict:
    """Few-shot curve on chest X-rays for the frozen image tower of ``ctx.model``; see the module doc."""
    t0 = time.perf_counter()
    options = ctx.options or {}
    out = Path(ctx.out)
    out.mkdir(parents=True, exist_ok=True)
    shots = parse_shots(options.get("shots"))
    seeds = parse_seeds(options.get("seeds"), ctx.seed)
    hidden = _int_list(options["head_hidden"], "head_hidden") if options.get("head_hidden") else DEFAULT_HIDDEN
    overrides = {k: cast(options[o]) for k, o, cast in (("lr", "head_lr", float), ("steps", "head_steps", int))
                 if options.get(o) is not None}
    kind = options.get("features", "clip")

    run_data = (ctx.state or {}).get("args", {}).get("data", "synthetic")
    source = chest_xray_source(options, ctx.model.config.image_size, ctx.seed, run_data)
    arrays, from_cache = extract_features(ctx.model, source, out, kind, int(options.get("batch_size") or 128), log=log)
    if from_cache:
        log("fewshot: features loaded from the cache")
    train_y, test_y = arrays["train_y"].astype(np.int64), arrays["test_y"].astype(np.int64)
    if len(np.unique(train_y)) < 2 or len(test_y) == 0:
        raise ValueError("fewshot: the training images need both classes and the test set must not be empty")
    train_x, test_x = standardize(arrays["train_x"], arrays["train_x"], arrays["test_x"])

    curve = few_shot_curve(train_x, train_y, test_x, test_y, shots, seeds, hidden,
                           mlp_settings=overrides, probe_settings=overrides, log=log)
    majority = float(max(test_y.mean(), 1 - test_y.mean()))
    figure = plot_curve(out / FIGURE, curve, baseline=majority,
                        title=f"few-shot pneumonia ({source['name']}, {len(seeds)} seeds)")
    metrics = {
        "task": "fewshot",
        "data": source["name"],
        "features": (f"frozen CLIP image embedding ({train_x.shape[1]}-d, unit norm, standardised)"
                     if kind == "clip" else f"raw pixels ({train_x.shape[1]}-d, standardised)"),
        "feature_dim": int(train_x.shape[1]),
        "features_from_cache": bool(from_cache),
        "n_train_pool": int(len(train_y)),
        "n_test": int(len(test_y)),
        "test_pneumonia_fraction": float(test_y.mean()),
        "majority_baseline": majority,
        "seeds": list(seeds),
        "shots": curve["shots"],
        "mlp_hidden": list(hidden),
        "class_weighting": "balanced",
        # flat copies of the headline numbers, for the evaluation summary table
        **{f"accuracy_{name}_{label}": curve[name][label]["accuracy_mean"]
           for name in ("mlp", "probe") for label in curve["shots"]},
        "mlp": curve["mlp"],
        "probe": curve["probe"],
        "figure": str(figure.name),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return metrics
