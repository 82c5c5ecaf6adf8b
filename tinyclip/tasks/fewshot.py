"""Few-shot pneumonia detection: how many labelled chest X-rays does the frozen image tower need?

The image tower of the trained CLIP is frozen and turns every chest X-ray into a
feature vector (by default the tower's layer before the projection into the shared space,
or with ``features=clip`` its unit image embedding), computed once and cached. On top, the
report's classifier is trained with only n labelled training images:

    features (D) → Linear(D, 128) → ReLU → Linear(128, 64) → ReLU → Linear(64, 1) → sigmoid

with binary cross-entropy and Adam, for n in {10, 20, 50, 100, 200, 500, 1000, all}.
A plain logistic-regression probe (``Linear(D, 1)`` + sigmoid) on the same features
is the baseline that tells whether the hidden layers help.

The protocol is built to rank towers, not only to draw a curve:

* A fixed validation part (``val_n`` images, default 200, half of each class) is held
  out of the *training* folder once; the test folder is only ever scored. Every head
  stops early on the validation loss, and its decision threshold is the cut of its
  validation logits with the best balanced accuracy (``metrics.balanced_threshold``).
* Draws: n images of the rest of the training folder (the pool), balanced over the
  classes (``sample_shots``), 20 draws (``seeds``) for n ≤ 200 and 5 (``seeds_large``)
  above: large draws overlap so much that their spread is small, and each head costs
  more. Draw ``s`` at n depends only on the seed, n and the labels, never on the tower,
  so two towers see the very same images and head initialisations (paired draws).
* Per n: accuracy, balanced accuracy (mean recall of the two classes; Kermany's test
  set is 62.5% pneumonia) and ROC AUC, each mean ± sample std over the draws.
* ``compare_init=1``: the same draws also on the untrained model of the run's
  configuration and seed (what ``tinyclip.train`` starts from), and per n the mean
  difference trained − untrained of AUC, accuracy and balanced accuracy with the
  two-sided Wilcoxon signed-rank p-value over the draws (with 5 draws no p-value can
  be below 0.0625: claims need the 20 draws of small n).

Data, the first that is given: ``ctx.chest_dir`` (the Kermany folder, train/ and
test/), ``ctx.pneumonia_npz`` (PneumoniaMNIST: its train and test splits, grey → RGB
at the model's image size), else, for a model trained on synthetic pairs, synthetic
chest X-rays (``synthetic_n`` train, default 1000, and the 400 test images of the
pneumonia zero-shot task); for a real run without chest X-rays the task is skipped.
In the loss, rows are weighted so that both classes count equally (this matters
only for "all", whose classes are unbalanced). Features are standardised with the
mean and std of the whole unlabelled training folder.

Options: ``Options`` below (the number of labelled images, draws, validation part,
features, heads), given on the command line as ``--shots``, ``--head-steps``, ...
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import manual_seed
from ..cli import at_least_two, choice, int_list, positive_float, positive_int, positive_int_list, switch
from . import TaskSkipped
from .common import EvalContext, option
from .heads import cached_arrays, cache_key, fit, linear_head, mlp_head, model_fingerprint, predict, standardize
from .metrics import accuracy, balanced_accuracy, balanced_threshold, roc_auc
from .pneumonia import chest_xray_source  # the chest X-rays of both pneumonia tasks

DEFAULT_SHOTS = (10, 20, 50, 100, 200, 500, 1000, "all")
DEFAULT_SEEDS = 20        # draws at n <= SMALL_N, where draws differ most
DEFAULT_SEEDS_LARGE = 5   # draws above, the first of the same seeds
SMALL_N = 200
DEFAULT_VAL_N = 200       # the fixed validation part of the training folder (at most a fifth of it)
VALIDATION_SEED = 10_000  # its sample's seed offset: apart from every draw's seed
DEFAULT_HIDDEN = (128, 64)
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

def parse_shots(text: str) -> tuple:
    """``--shots``: comma-separated counts (at least 2: one image per class) and/or ``all`` → a tuple."""
    shots = []
    for v in (v for v in text.replace(" ", "").split(",") if v):
        if v.lower() == "all":
            shots.append("all")
        elif not v.isdigit():
            raise ValueError(f"expected comma-separated integers or 'all', got {v!r}")
        elif int(v) < 2:
            raise ValueError(f"n must be at least 2 (one image per class), got {v}")
        else:
            shots.append(int(v))
    if not shots:
        raise ValueError("expected comma-separated integers or 'all', got nothing")
    return tuple(shots)


def parse_seeds(text: str) -> int | tuple:
    """``--seeds``: a count of draws (``"20"``, an int) or the seeds themselves (``"0,1,2"``, a tuple)."""
    try:
        return int_list(text, low=0) if "," in text else int_list(text)[0]
    except ValueError:
        raise ValueError(f"expected a count >= 1 or comma-separated seeds >= 0, got {text!r}") from None


def draw_seeds(seeds: int | tuple, base: int = 0) -> list:
    """The seeds of the draws: a count K → ``base, ..., base + K - 1``; a tuple of seeds as given."""
    return [base + i for i in range(seeds)] if isinstance(seeds, int) else list(seeds)


# what the heads see (see extract_features) → how metrics.json describes it
FEATURES = {"clip": "frozen CLIP image embedding ({}-d, unit norm, standardised)",
            "tower": "frozen image tower before its projection ({}-d, standardised)",
            "pixels": "raw pixels ({}-d, standardised)"}


@dataclass(frozen=True)
class Options:
    """The few-shot task's options (``python -m tinyclip.evaluate --task fewshot --shots ...``)."""

    shots: tuple = option(DEFAULT_SHOTS, parse_shots, "labelled images per run, comma-separated counts or all",
                          "LIST")
    seeds: int | tuple = option(DEFAULT_SEEDS, parse_seeds, f"draws per n up to {SMALL_N}: a count or the seeds "
                                "(e.g. 0,1,2); larger n use the first --seeds-large of them", "K|LIST")
    seeds_large: int = option(DEFAULT_SEEDS_LARGE, positive_int, f"draws per n above {SMALL_N} and for all", "K")
    val_n: int | None = option(None, at_least_two, "images of the fixed validation part of the training folder", "N",
                               shown=f"{DEFAULT_VAL_N} or a fifth of the folder if fewer")
    # tower is the default: it ranked towers better than the 128-d embedding on every run measured (README)
    features: str = option("tower", choice(*FEATURES), "what the heads see: the image tower's features before "
                           "its projection (tower: the layer CLIP's linear probes read), the frozen CLIP image "
                           "embedding, or downsampled raw pixels (a baseline that needs no model)",
                           "|".join(FEATURES))
    compare_init: bool = option(False, switch, "the same draws also on the untrained model of the run's "
                                "configuration and seed, with paired differences and Wilcoxon p-values")
    head_hidden: tuple = option(DEFAULT_HIDDEN, positive_int_list, "hidden layer widths of the MLP head", "LIST")
    head_steps: int = option(MLP_SETTINGS["steps"], positive_int, "most Adam steps of each head (early stopping "
                             "on the validation loss)", "N")
    head_lr: float | None = option(None, positive_float, "Adam learning rate of the heads", "LR",
                                   shown=f"{MLP_SETTINGS['lr']:g} for the MLP, {PROBE_SETTINGS['lr']:g} for the probe")
    synthetic_n: int = option(1000, at_least_two, "synthetic chest X-rays of the training folder (for a run on "
                              "synthetic data without --chest-dir or --pneumonia-npz)", "N")


# ---------------------------------------------------------------------------
# data and features
# ---------------------------------------------------------------------------

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

    ``kind`` "clip": the model's unit image embeddings (frozen); "tower": the frozen
    image tower's flattened last conv block, before the projection (``CLIP.image_features``);
    "pixels": see ``pixel_features``. Cached in ``out_dir`` under a key made of the
    checkpoint's fingerprint, the kind and the data description, so reruns skip the encoder.
    """
    if kind not in FEATURES:
        raise ValueError(f"option features: expected one of {', '.join(FEATURES)}, got {kind!r}")
    model_key = "pixels" if kind == "pixels" else model_fingerprint(model)
    # "tower" adds itself to the key; "clip" keeps the key it had before there was a choice, so old caches stay valid
    key = cache_key("fewshot-features", 1, model_key, source["key"], *([kind] if kind == "tower" else []))

    def compute():
        t0 = time.perf_counter()
        train_images, train_y, test_images, test_y = source["load"]()
        log(f"fewshot: {source['name']} chest X-rays loaded: {len(train_y)} train / {len(test_y)} test "
            f"({time.perf_counter() - t0:.1f}s); computing {kind} features ...")
        t0 = time.perf_counter()
        embed = {"clip": lambda images: model.embed_images(images, batch_size=batch_size),
                 "tower": lambda images: model.image_features(images, batch_size=batch_size),
                 "pixels": pixel_features}[kind]
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


def validation_part(labels: np.ndarray, size: int | None = None, seed: int = 0):
    """``(val_idx, pool_idx)``: a fixed, class-balanced validation sample of the training folder and the rest.

    ``size`` default: ``min(DEFAULT_VAL_N, N // 5)``. The sample depends only on the
    labels, ``size`` and ``seed`` (offset by ``VALIDATION_SEED``), so it is the same
    for every tower and disjoint from every draw (draws come from the pool).
    """
    labels = np.asarray(labels)
    size = min(DEFAULT_VAL_N, len(labels) // 5) if size is None else int(size)
    if not 2 <= size <= len(labels) - 2:
        raise ValueError(f"option val_n: need 2 to {len(labels) - 2} validation images of the {len(labels)} "
                         f"training images, got {size}")
    val = sample_shots(labels, size, np.random.default_rng(seed + VALIDATION_SEED))
    if len(np.unique(labels[val])) < 2:
        raise ValueError("fewshot: the validation part needs both classes")
    return val, np.setdiff1d(np.arange(len(labels)), val)


def draw_plan(pool_labels: np.ndarray, shots=DEFAULT_SHOTS, seeds=tuple(range(DEFAULT_SEEDS)),
              seeds_large: int = DEFAULT_SEEDS_LARGE, log=print) -> list:
    """The draws of the protocol: ``[{"label", "n", "draws": [(seed, pool indices), ...]}, ...]``.

    ``label`` is ``str(n)`` or ``"all"``; n ≤ ``SMALL_N`` gets every seed, larger n
    and "all" the first ``seeds_large``. The indices come from ``sample_shots`` with
    ``default_rng(seed)``: a function of the labels, n and the seed alone. n larger
    than the pool is skipped.
    """
    pool = len(pool_labels)
    plan = []
    for n in shots:
        if n == "all":
            n_real, label = pool, "all"
        elif n > pool:
            log(f"fewshot: skipping n={n}: only {pool} training images outside the validation part")
            continue
        else:
            n_real, label = int(n), str(n)
        use = list(seeds) if n != "all" and n_real <= SMALL_N else list(seeds)[:max(1, seeds_large)]
        plan.append({"label": label, "n": n_real,
                     "draws": [(s, sample_shots(pool_labels, n_real, np.random.default_rng(s))) for s in use]})
    if not plan:
        raise ValueError(f"option shots: every n of {list(shots)} is larger than the {pool} training images "
                         f"outside the validation part; give smaller values or 'all'")
    return plan


def _summary(values) -> dict:
    """Mean and sample standard deviation (0 for a single value), NaNs ignored."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.nanmean(values)),
            "std": float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0}


def few_shot_curve(pool_x, pool_y, val_x, val_y, test_x, test_y, plan, hidden=DEFAULT_HIDDEN, mlp_settings=None,
                   probe_settings=None, log=print, tower: str = "") -> dict:
    """Both heads on every draw of ``plan`` (``draw_plan`` of ``pool_y``), scored on the test set.

    Each head is trained on the draw's pool rows with early stopping on ``(val_x,
    val_y)``; test predictions are ``logit > t``, ``t`` the validation cut with the
    best balanced accuracy. Returns ``{"mlp": {label: stats}, "probe": {...},
    "shots": [labels]}``; ``stats``: ``n``, ``seeds``, ``draws`` (a digest of the
    drawn indices: equal for paired towers), and for each of ``accuracy``,
    ``balanced_accuracy``, ``auc``: ``{metric}_mean``, ``{metric}_std`` and the
    per-draw list (``accuracies``, ``balanced_accuracies``, ``aucs``); ``thresholds``, ``seconds``.
    """
    mlp_settings = {**MLP_SETTINGS, **(mlp_settings or {})}
    probe_settings = {**PROBE_SETTINGS, **(probe_settings or {})}
    heads = {
        "mlp": (lambda d: mlp_head(d, 1, hidden), mlp_settings),
        "probe": (lambda d: linear_head(d, 1), probe_settings),
    }
    val = (val_x, np.asarray(val_y).astype(np.float32))
    results = {name: {} for name in heads}
    for entry in plan:
        label = entry["label"]
        for name, (build, settings) in heads.items():
            t0 = time.perf_counter()
            scores = {"accuracies": [], "balanced_accuracies": [], "aucs": [], "thresholds": []}
            for seed, index in entry["draws"]:
                manual_seed(seed)  # the same initialisation for every tower: paired draws
                head = build(pool_x.shape[1])
                fit(head, pool_x[index], pool_y[index].astype(np.float32), "binary", seed=seed, val=val, **settings)
                cut = balanced_threshold(val_y, predict(head, val_x)[:, 0])
                logits = predict(head, test_x)[:, 0]
                predicted = (logits > cut).astype(test_y.dtype)
                scores["accuracies"].append(accuracy(test_y, predicted))
                scores["balanced_accuracies"].append(balanced_accuracy(test_y, predicted))
                scores["aucs"].append(roc_auc(test_y, logits))
                scores["thresholds"].append(cut)
            stats = {"n": entry["n"], "seeds": [s for s, _ in entry["draws"]],
                     "draws": cache_key([i.tolist() for _, i in entry["draws"]])}
            for metric, values in (("accuracy", "accuracies"), ("balanced_accuracy", "balanced_accuracies"),
                                   ("auc", "aucs")):
                summary = _summary(scores[values])
                stats.update({f"{metric}_mean": summary["mean"], f"{metric}_std": summary["std"]})
            stats.update(scores, seconds=round(time.perf_counter() - t0, 2))
            results[name][label] = stats
            log(f"fewshot: {tower}n={label:>5} {name:5}: accuracy {stats['accuracy_mean']:.3f} ± "
                f"{stats['accuracy_std']:.3f}  balanced {stats['balanced_accuracy_mean']:.3f}  AUC "
                f"{stats['auc_mean']:.3f} ± {stats['auc_std']:.3f}  ({len(entry['draws'])} draws, "
                f"{stats['seconds']:.1f}s)")
    return {**results, "shots": [entry["label"] for entry in plan]}


# ---------------------------------------------------------------------------
# the paired comparison with the untrained tower
# ---------------------------------------------------------------------------

COMPARED = (("auc", "aucs"), ("accuracy", "accuracies"), ("balanced_accuracy", "balanced_accuracies"))


def wilcoxon_p(differences) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences`` (zeros dropped).

    1.0 when every difference is zero (no evidence either way); None for fewer than
    two draws.
    """
    from scipy.stats import wilcoxon
    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 2:
        return None
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():  # scipy warns about small samples and ties; the p-value stands
        warnings.simplefilter("ignore")
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_comparison(curve: dict, reference: dict) -> dict:
    """Per head and n: ``curve`` − ``reference`` draw by draw (the draws must be the same).

    ``{head: {label: {"draws", "{metric}_reference", "{metric}_gain_mean", "{metric}_gain_std",
    "{metric}_gain_p"}}}`` for the metrics AUC, accuracy and balanced accuracy; the
    p-value is ``wilcoxon_p`` of the per-draw differences.
    """
    out = {}
    for name in ("mlp", "probe"):
        out[name] = {}
        for label in curve["shots"]:
            a, b = curve[name][label], reference[name][label]
            if a["draws"] != b["draws"] or a["seeds"] != b["seeds"]:
                raise ValueError(f"fewshot: the towers were not evaluated on the same draws at n={label}")
            row = {"n": a["n"], "draws": len(a["seeds"])}
            for metric, values in COMPARED:
                d = np.asarray(a[values]) - np.asarray(b[values])
                summary = _summary(d)
                row.update({f"{metric}_reference": b[f"{metric}_mean"], f"{metric}_gain_mean": summary["mean"],
                            f"{metric}_gain_std": summary["std"], f"{metric}_gain_p": wilcoxon_p(d)})
            out[name][label] = row
    return out


def format_curve(curve: dict, comparison: dict | None = None) -> str:
    """The printed table: one row per head and n, mean ± std over the draws (and the gains over the untrained tower)."""
    head = f"{'head':5}  {'n':>5}  {'draws':>5}  {'accuracy':>13}  {'balanced acc.':>13}  {'ROC AUC':>13}"
    if comparison:
        head += f"  {'AUC untrained':>13}  {'ΔAUC':>7}  {'p':>6}  {'Δacc.':>7}  {'p':>6}"
    lines = [head]
    for name in ("mlp", "probe"):
        for label in curve["shots"]:
            s = curve[name][label]
            line = (f"{name:5}  {label:>5}  {len(s['seeds']):>5}  "
                    + "  ".join(f"{s[m + '_mean']:.3f} ± {s[m + '_std']:.3f}"
                                for m in ("accuracy", "balanced_accuracy", "auc")))
            if comparison:
                c = comparison[name][label]
                p = [("  n/a" if c[k] is None else f"{c[k]:.4f}") for k in ("auc_gain_p", "accuracy_gain_p")]
                line += (f"  {c['auc_reference']:>13.3f}  {c['auc_gain_mean']:>+7.3f}  {p[0]:>6}  "
                         f"{c['accuracy_gain_mean']:>+7.3f}  {p[1]:>6}")
            lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------

def plot_curve(path, curve: dict, baseline: float | None = None, title: str = "", reference: dict | None = None
               ) -> Path:
    """Test accuracy and ROC AUC vs labelled images n (log x), mean ± std over the draws, both heads;
    ``reference`` (the untrained tower's curve) in grey."""
    from .figures import new_figure, save
    fig = new_figure(9.6, 3.6)
    axes = fig.subplots(1, 2, gridspec_kw={"wspace": 0.3})
    # the untrained tower's points a little to the right, so that equal values stay visible
    towers = [(curve, "", None, 1.0)] + ([(reference, " (untrained tower)", "grey", 1.08)] if reference else [])
    for ax, metric, ylabel in zip(axes, ("accuracy", "auc"), ("test accuracy", "test ROC AUC")):
        for data, suffix, color, shift in towers:
            for name, style, label in (("mlp", "o-", "MLP head"), ("probe", "s--", "logistic probe")):
                rows = [data[name][k] for k in data["shots"]]
                ax.errorbar([r["n"] * shift for r in rows], [r[f"{metric}_mean"] for r in rows],
                            yerr=[r[f"{metric}_std"] for r in rows], fmt=style, capsize=3, color=color,
                            alpha=0.6 if color else 1.0, label=label + suffix)
        chance = baseline if metric == "accuracy" else 0.5
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":",
                       label=f"majority class ({chance:.3f})" if metric == "accuracy" else "chance (0.5)")
        ax.set_xscale("log")
        ax.set_xlabel("labelled training images n")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "few-shot pneumonia detection on frozen CLIP image features", fontsize=9)
    return save(fig, path)


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

def run(ctx: EvalContext, options: Options = Options(), log=print) -> dict:
    """Few-shot curve on chest X-rays for the frozen image tower of ``ctx.model``; see the module doc."""
    t0 = time.perf_counter()
    out = Path(ctx.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = draw_seeds(options.seeds, ctx.seed)
    overrides = {"steps": options.head_steps, **({"lr": options.head_lr} if options.head_lr is not None else {})}
    kind, compare = options.features, options.compare_init
    untrained = None
    if compare:
        if kind == "pixels":
            raise ValueError("option compare_init compares image towers: it needs features=clip or tower")
        from ..evaluate import initial_model
        untrained = initial_model(ctx.state)
        if model_fingerprint(untrained) == model_fingerprint(ctx.model):
            raise ValueError("option compare_init: the evaluated model is the untrained one (--checkpoint init)")

    run_data = (ctx.state or {}).get("args", {}).get("data", "synthetic")
    source = chest_xray_source(ctx.model.config.image_size, ctx.seed, run_data, chest_dir=ctx.chest_dir,
                               pneumonia_npz=ctx.pneumonia_npz, cache_dir=ctx.cache_dir,
                               synthetic_n=options.synthetic_n)
    arrays, from_cache = extract_features(ctx.model, source, out, kind, ctx.batch_size, log=log)
    if from_cache:
        log("fewshot: features loaded from the cache")
    train_y, test_y = arrays["train_y"].astype(np.int64), arrays["test_y"].astype(np.int64)
    if len(np.unique(train_y)) < 2 or len(test_y) == 0:
        raise ValueError("fewshot: the training images need both classes and the test set must not be empty")
    val_idx, pool_idx = validation_part(train_y, options.val_n, ctx.seed)
    plan = draw_plan(train_y[pool_idx], options.shots, seeds, options.seeds_large, log)

    def curve_of(features, tower=""):
        train_x, test_x = standardize(features["train_x"], features["train_x"], features["test_x"])
        return few_shot_curve(train_x[pool_idx], train_y[pool_idx], train_x[val_idx], train_y[val_idx], test_x,
                              test_y, plan, options.head_hidden, mlp_settings=overrides, probe_settings=overrides,
                              log=log, tower=tower)

    curve = curve_of(arrays)
    reference = comparison = None
    if compare:
        init_arrays, _ = extract_features(untrained, source, out, kind, ctx.batch_size, log=log)
        reference = curve_of(init_arrays, tower="untrained ")
        comparison = paired_comparison(curve, reference)
    log("fewshot: mean ± std over the draws" + ("; Δ = this tower − the untrained one, p: Wilcoxon signed-rank"
                                                 if compare else "") + "\n" + format_curve(curve, comparison))

    majority = float(max(test_y.mean(), 1 - test_y.mean()))
    figure = plot_curve(out / FIGURE, curve, baseline=majority, reference=reference,
                        title=f"few-shot pneumonia ({source['name']}, {len(seeds)} draws at n ≤ {SMALL_N})")
    metrics = {
        "task": "fewshot",
        "data": source["name"],
        "features": FEATURES[kind].format(arrays["train_x"].shape[1]),
        "feature_dim": int(arrays["train_x"].shape[1]),
        "features_from_cache": bool(from_cache),
        "n_train_pool": int(len(pool_idx)),
        "n_validation": int(len(val_idx)),
        "validation_pneumonia": int(train_y[val_idx].sum()),
        "n_test": int(len(test_y)),
        "test_pneumonia_fraction": float(test_y.mean()),
        "majority_baseline": majority,
        "protocol": (f"{len(seeds)} paired draws at n <= {SMALL_N}, {min(len(seeds), options.seeds_large)} above; "
                     f"early stopping and the balanced-accuracy threshold from a fixed validation part of "
                     f"{len(val_idx)} training images"),
        "seeds": list(seeds),
        "shots": curve["shots"],
        "mlp_hidden": list(options.head_hidden),
        "class_weighting": "balanced",
        # flat copies of the headline numbers, for the evaluation summary table
        **{f"{metric}_{name}_{label}": curve[name][label][f"{metric}_mean"]
           for name in ("mlp", "probe") for metric in ("accuracy", "balanced_accuracy", "auc")
           for label in curve["shots"]},
        "mlp": curve["mlp"],
        "probe": curve["probe"],
        "figure": str(figure.name),
    }
    if compare:
        metrics.update({f"{metric}_gain{p}_mlp_{label}": comparison["mlp"][label][f"{metric}_gain{q}"]
                        for label in curve["shots"] for metric in ("auc", "accuracy")
                        for p, q in (("", "_mean"), ("_p", "_p"))})
        metrics["compare_init"] = {"seed": int((ctx.state.get("args") or {}).get("seed", 0)),
                                   "untrained": {"mlp": reference["mlp"], "probe": reference["probe"]},
                                   **comparison}
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics
