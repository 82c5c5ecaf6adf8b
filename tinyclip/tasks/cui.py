"""Concept (UMLS CUI) classifiers: what do the towers know about the concepts a caption names?

ROCO lists, for every caption, the UMLS concepts (CUIs) it mentions, in caption
order. Three classifiers are trained on the run's training part (``ctx.train_frame``)
and scored on the evaluation part (``ctx.frame``):

1. caption → first CUI: a transformer text classifier, the text tower's
   architecture (``TextEncoder``) with a softmax layer on top, fine-tuned end to end.
   It starts from the CLIP text tower (``cui_init="clip"``, default) or from random
   weights (``"scratch"``), so the two settings show what contrastive pre-training
   is worth.
2. image → first CUI: the frozen CLIP image embedding with a small MLP softmax head
   (the CNN tower itself is not fine-tuned).
3. both → all CUIs (multi-label): the frozen image and caption embeddings
   concatenated, a sigmoid per CUI, predicted where the probability is at least 0.5;
   micro- and macro-F1 (report section 4.1).

Classes: the K most frequent first CUIs of the training part; every other first
CUI becomes the class "other" (so there are K + 1 classes). The multi-label task
uses the K most frequent CUIs anywhere in the training captions. Rows without any
CUI are left out of tasks 1 and 2 (and counted); in task 3 they stay, with no
label set.

Options: ``Options`` below (K, the caption classifier's start and training, class
weighting, the frozen-feature heads), given on the command line as ``--top-k``,
``--cui-init``, ...
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import nn
from ..backend import manual_seed
from ..cli import choice, positive_float, positive_int, switch
from ..models.text_encoder import TextEncoder
from . import TaskSkipped
from .common import EvalContext, option
from .heads import cache_key, cached_arrays, fit, mlp_head, model_fingerprint, predict, standardize
from .metrics import accuracy, confusion_matrix, macro_f1, multilabel_f1, per_class_scores

OTHER = "other"
DEFAULT_TOP_K = 10
HEAD_SETTINGS = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "steps": 600, "patience": 10}
TEXT_SETTINGS = {"lr": 2e-4, "weight_decay": 0.0, "batch_size": 32, "epochs": 4, "patience": 2,
                 "val_fraction": 0.1}
FIGURE = "cui_confusion.png"


@dataclass(frozen=True)
class Options:
    """The concept task's options (``python -m tinyclip.evaluate --task cui --top-k ...``)."""

    top_k: int = option(DEFAULT_TOP_K, positive_int, "concept classes: the K most frequent first CUIs (+ other)",
                        "K")
    cui_init: str = option("clip", choice("clip", "scratch"), "the caption classifier starts from the CLIP text "
                           "tower or from random weights", "clip|scratch")
    cui_epochs: int = option(TEXT_SETTINGS["epochs"], positive_int, "most epochs of the caption classifier", "N")
    cui_lr: float = option(TEXT_SETTINGS["lr"], positive_float, "Adam learning rate of the caption classifier", "LR")
    cui_balance: bool = option(False, switch, "weight the first-CUI classes equally in the loss (trades accuracy "
                               "for macro-F1: other is the majority)")
    head_steps: int = option(HEAD_SETTINGS["steps"], positive_int, "most Adam steps of each frozen-feature head", "N")
    head_lr: float = option(HEAD_SETTINGS["lr"], positive_float, "Adam learning rate of the frozen-feature heads",
                            "LR")


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------

def first_cuis(frame) -> list:
    """The first CUI of every row (None where the row lists none)."""
    if "cuis" not in frame.columns:
        raise TaskSkipped("the evaluation pairs have no 'cuis' column (ROCO or synthetic data have one)")
    return [list(c)[0] if c is not None and len(c) else None for c in frame["cuis"]]


def top_concepts(lists, k: int) -> list:
    """The ``k`` most frequent items of ``lists`` (each list counts an item once), ties by name."""
    counts = Counter(item for items in lists for item in set(items))
    return sorted(counts, key=lambda c: (-counts[c], c))[:k]


def class_indices(values, classes) -> np.ndarray:
    """Index of each value in ``classes``; values outside it get ``len(classes)`` (the "other" class)."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(v, len(classes)) for v in values], dtype=np.int64)


def multi_hot(lists, classes) -> np.ndarray:
    """``(N, K)`` float32: 1 where row n lists ``classes[k]``."""
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(lists), len(classes)), dtype=np.float32)
    for row, items in enumerate(lists):
        for item in items:
            if item in lookup:
                out[row, lookup[item]] = 1.0
    return out


# ---------------------------------------------------------------------------
# caption classifier
# ---------------------------------------------------------------------------

class TextClassifier(nn.Module):
    """The text tower's architecture with a softmax layer: ids, mask ``(N, L)`` → logits ``(N, C)``."""

    def __init__(self, config, num_classes: int):
        super().__init__()
        self.encoder = TextEncoder(config)
        self.head = nn.Linear(config.embed_dim, num_classes)

    def forward(self, ids, padding_mask):
        return self.head(self.encoder(ids, padding_mask))


def trim_padding(ids: np.ndarray, mask: np.ndarray):
    """Cut the columns that are padding in every row of the batch: attention costs O(L²)."""
    length = max(int((~mask).sum(axis=1).max()), 1) if len(mask) else 1
    return ids[:, :length], mask[:, :length]


def caption_classifier(ctx: EvalContext, train_ids, train_mask, train_y, num_classes: int, init: str,
                       settings: dict, log=print):
    """Fine-tune a ``TextClassifier`` (from the CLIP text tower or from scratch); returns (model, fit summary)."""
    if init not in ("clip", "scratch"):
        raise ValueError(f"option cui_init: expected 'clip' or 'scratch', got {init!r}")
    manual_seed(ctx.seed)
    model = TextClassifier(ctx.model.config, num_classes)
    if init == "clip":
        model.encoder.load_state_dict(ctx.model.text_encoder.state_dict())
    device = ctx.model.logit_scale.device
    model.to(device)
    summary = fit(model, (train_ids, train_mask), train_y, "multiclass", seed=ctx.seed, prepare=trim_padding,
                  log=log, **settings)
    return model, summary


# ---------------------------------------------------------------------------
# frozen features
# ---------------------------------------------------------------------------

def _row_ids(frame) -> list:
    return list(frame["id"]) if "id" in frame.columns else list(frame["caption"])


def embeddings(ctx: EvalContext, batch_size: int = 128, log=print):
    """``(arrays, from_cache)``: unit image and caption embeddings of the train and evaluation parts."""
    key = cache_key("cui-features", 1, model_fingerprint(ctx.model), _row_ids(ctx.train_frame), _row_ids(ctx.frame))

    def compute():
        t0 = time.perf_counter()
        model = ctx.model
        arrays = {"train_image": model.embed_images(ctx.train_images, batch_size=batch_size),
                  "eval_image": ctx.image_embeddings(),
                  "train_text": model.embed_texts(list(ctx.train_frame["caption"]), batch_size=batch_size),
                  "eval_text": ctx.text_embeddings()}
        log(f"cui: embedded {len(ctx.train_frame)} + {len(ctx.frame)} pairs in {time.perf_counter() - t0:.1f}s")
        return arrays

    return cached_arrays(ctx.out, "cui-features", key, compute)


def _scores(y_true, y_pred, names) -> dict:
    present = np.union1d(y_true, y_pred)
    per_class = per_class_scores(y_true, y_pred, range(len(names)))
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, present),
            "per_class_f1": {names[c]: v["f1"] for c, v in per_class.items()},
            "confusion": confusion_matrix(y_true, y_pred, len(names)).tolist()}


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

def run(ctx: EvalContext, options: Options = Options(), log=print) -> dict:
    """Train and score the three concept classifiers; see the module doc."""
    t0 = time.perf_counter()
    out = Path(ctx.out)
    out.mkdir(parents=True, exist_ok=True)
    k, init, balance = options.top_k, options.cui_init, options.cui_balance
    text_settings = dict(TEXT_SETTINGS, epochs=options.cui_epochs, lr=options.cui_lr, balance=balance)
    head_settings = dict(HEAD_SETTINGS, steps=options.head_steps, lr=options.head_lr, balance=balance)

    # ----- labels: first CUI, top K + "other"
    train_first, eval_first = first_cuis(ctx.train_frame), first_cuis(ctx.frame)
    train_has = np.array([c is not None for c in train_first])
    eval_has = np.array([c is not None for c in eval_first])
    if train_has.sum() < 2 or eval_has.sum() == 0:
        raise TaskSkipped(f"too few pairs with CUIs: {int(train_has.sum())} in the training part, "
                          f"{int(eval_has.sum())} in the evaluation part")
    classes = top_concepts([[c] for c in train_first if c is not None], k)
    names = classes + [OTHER]
    train_y = class_indices([c for c in train_first if c is not None], classes)
    eval_y = class_indices([c for c in eval_first if c is not None], classes)
    train_rows, eval_rows = np.flatnonzero(train_has), np.flatnonzero(eval_has)
    majority = int(np.bincount(train_y, minlength=len(names)).argmax())
    log(f"cui: {len(classes)} first-CUI classes + other; {len(train_rows)} train / {len(eval_rows)} eval pairs "
        f"with CUIs ({int((~train_has).sum())} / {int((~eval_has).sum())} without)")

    # ----- 1. caption → first CUI: the text tower architecture, fine-tuned
    tokenizer = ctx.model.tokenizer
    max_len = ctx.model.config.max_len
    train_ids, train_mask = tokenizer.encode(list(ctx.train_frame["caption"].iloc[train_rows]), max_len)
    eval_ids, eval_mask = tokenizer.encode(list(ctx.frame["caption"].iloc[eval_rows]), max_len)
    t1 = time.perf_counter()
    text_model, text_fit = caption_classifier(ctx, train_ids, train_mask, train_y, len(names), init,
                                              text_settings, log=log)
    text_pred = predict(text_model, (eval_ids, eval_mask), batch_size=128, prepare=trim_padding).argmax(axis=1)
    caption = {"model": f"text tower architecture + softmax layer, fine-tuned end to end, init from {init}",
               "init": init, **_scores(eval_y, text_pred, names), "steps": text_fit["steps"],
               "stopped_early": text_fit["stopped_early"], "seconds": round(time.perf_counter() - t1, 2)}
    log(f"cui: caption → first CUI ({init}): accuracy {caption['accuracy']:.3f}  macro-F1 {caption['macro_f1']:.3f}"
        f"  ({caption['seconds']:.0f}s)")

    # ----- frozen embeddings for 2. and 3.
    arrays, from_cache = embeddings(ctx, ctx.batch_size, log=log)
    train_img, eval_img = standardize(arrays["train_image"], arrays["train_image"], arrays["eval_image"])
    train_txt, eval_txt = standardize(arrays["train_text"], arrays["train_text"], arrays["eval_text"])

    # ----- 2. image → first CUI: frozen image embedding + MLP softmax head
    t1 = time.perf_counter()
    manual_seed(ctx.seed)
    head = mlp_head(train_img.shape[1], len(names))
    fit(head, train_img[train_rows], train_y, "multiclass", seed=ctx.seed, **head_settings)
    image_pred = predict(head, eval_img[eval_rows]).argmax(axis=1)
    image = {"model": "frozen CLIP image embedding + MLP head (128, 64) with softmax",
             **_scores(eval_y, image_pred, names), "seconds": round(time.perf_counter() - t1, 2)}
    log(f"cui: image → first CUI: accuracy {image['accuracy']:.3f}  macro-F1 {image['macro_f1']:.3f}")

    # ----- 3. image + caption → all top-K CUIs (multi-label)
    t1 = time.perf_counter()
    labels = top_concepts(list(ctx.train_frame["cuis"]), k)
    train_t, eval_t = multi_hot(list(ctx.train_frame["cuis"]), labels), multi_hot(list(ctx.frame["cuis"]), labels)
    train_both = np.concatenate([train_img, train_txt], axis=1)
    eval_both = np.concatenate([eval_img, eval_txt], axis=1)
    manual_seed(ctx.seed)
    head = mlp_head(train_both.shape[1], len(labels))
    fit(head, train_both, train_t, "multilabel", seed=ctx.seed, **{**head_settings, "balance": False})
    predicted = predict(head, eval_both) > 0.0  # σ(logit) ≥ 0.5 ⇔ logit ≥ 0
    f1 = multilabel_f1(eval_t, predicted)
    multilabel = {"model": "frozen CLIP image + caption embeddings concatenated, MLP head (128, 64), sigmoid per CUI",
                  "threshold": 0.5, "labels": labels, "micro_f1": f1["micro_f1"], "macro_f1": f1["macro_f1"],
                  "per_label_f1": dict(zip(labels, f1["per_label_f1"])),
                  "label_frequency_eval": dict(zip(labels, eval_t.mean(axis=0).tolist())),
                  "seconds": round(time.perf_counter() - t1, 2)}
    log(f"cui: image + caption → CUIs (multi-label, top {len(labels)}): micro-F1 {f1['micro_f1']:.3f}  "
        f"macro-F1 {f1['macro_f1']:.3f}")

    figure = _plot(out / FIGURE, {"caption → CUI": caption["confusion"], "image → CUI": image["confusion"]}, names)
    return {
        "task": "cui",
        "top_k": k,
        "classes": names,
        "n_train": int(len(train_rows)),
        "n_eval": int(len(eval_rows)),
        "train_without_cui": int((~train_has).sum()),
        "eval_without_cui": int((~eval_has).sum()),
        "other_share_eval": float((eval_y == len(classes)).mean()),
        "majority_class": names[majority],
        "majority_accuracy": accuracy(eval_y, np.full_like(eval_y, majority)),
        "class_weighting": "balanced" if balance else "none",
        # flat copies of the headline numbers, for the evaluation summary table
        "caption_accuracy": caption["accuracy"], "caption_macro_f1": caption["macro_f1"],
        "image_accuracy": image["accuracy"], "image_macro_f1": image["macro_f1"],
        "multilabel_micro_f1": multilabel["micro_f1"], "multilabel_macro_f1": multilabel["macro_f1"],
        "caption_to_cui": caption,
        "image_to_cui": image,
        "multilabel": multilabel,
        "features_from_cache": bool(from_cache),
        "figure": figure.name,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _plot(path, matrices: dict, names) -> Path:
    from .figures import confusion_matrices
    short = [n if len(n) <= 10 else n[:9] + "…" for n in names]
    return confusion_matrices(path, matrices, short, title="first CUI: confusion on the evaluation pairs")
