"""Zero-shot pneumonia: normal vs pneumonia chest X-rays from two text prompts, no labels used.

Each class is described by a prompt ("normal", "pneumonia" by default; several
per class are averaged OpenCLIP's way, see ``modality.class_vectors``), and an
image gets ``p = softmax(s · cos(image, class vector))``. Predicted class: the
more probable one; ``p(pneumonia)`` is the score for the ROC AUC.

Test images, the first that is given:

* ``chest_dir`` (``--chest-dir``): the Kermany et al. folder, its ``test/NORMAL``
  and ``test/PNEUMONIA`` images;
* ``pneumonia_npz`` (``--pneumonia-npz``): the PneumoniaMNIST test split, grey
  28 px upsampled to the model's image size;
* a run trained on synthetic data: 400 synthetic chest X-rays
  (``make_synthetic_chest_xray``, seed + 2000: the test set the few-shot task uses).

Metrics: accuracy, balanced accuracy (mean of the two recalls, which the class
imbalance of Kermany's test set, 390 vs 234, cannot flatter), ROC AUC by the rank
statistic, and the majority-class baseline.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.chest_xray import gray_to_rgb, load_kermany, load_pneumoniamnist
from ..data.images import default_cache_dir, load_images
from ..data.synthetic import make_synthetic_chest_xray
from ..io import read_json
from . import TaskSkipped, figures, softmax
from .common import option
from .metrics import accuracy, balanced_accuracy, per_class_scores, roc_auc, roc_points
from .modality import class_vectors, embed_prompts

CLASS_NAMES = ("normal", "pneumonia")
DEFAULT_PROMPTS = {"normal": ["normal"], "pneumonia": ["pneumonia"]}
SYNTHETIC_TEST = 400  # the synthetic test set of this task and of the few-shot task
SYNTHETIC_TRAIN_SEED, SYNTHETIC_TEST_SEED = 1000, 2000


# ---------------------------------------------------------------------------
# data and prompts
# ---------------------------------------------------------------------------

def _file_stamp(path) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def chest_xray_source(image_size: int, seed: int = 0, run_data: str = "synthetic", chest_dir=None,
                      pneumonia_npz=None, cache_dir=None, synthetic_n: int = 1000, splits=("train", "test")) -> dict:
    """Which chest X-rays the pneumonia and few-shot tasks use: ``{"name", "key", "load", "load_test"}``.

    The first that is given: ``chest_dir`` (Kermany), ``pneumonia_npz``, else, only for a
    model trained on synthetic data (``run_data``), ``synthetic_n`` synthetic training
    images and the synthetic test set; otherwise the task is skipped. ``key`` describes
    the data cheaply (paths, sizes, modification times; no decoding); ``load()`` returns
    ``(train_images, train_labels, test_images, test_labels)``, ``load_test()`` only the
    last two, images uint8 ``(N, S, S, 3)``. A Kermany folder is listed only for
    ``splits`` (the zero-shot task needs no ``train/``).
    """
    if chest_dir:
        root = Path(chest_dir)
        frames = {split: load_kermany(root, split) for split in splits}

        def load_split(split):
            frame = frames[split]
            images, ok = load_images(list(frame["image"]), image_size,
                                     cache_dir=cache_dir or default_cache_dir())
            if not ok.all():
                warnings.warn(f"skipped {int((~ok).sum())} undecodable {split} images in {root}")
            return np.asarray(images[ok]), frame["label"].to_numpy()[ok]

        lists = [list(frames[split]["image"]) for split in splits]
        key = ["kermany", str(root.resolve()), *lists, [os.stat(p).st_mtime_ns for p in sum(lists, [])], image_size]
        return {"name": "kermany", "key": key, "load": lambda: (*load_split("train"), *load_split("test")),
                "load_test": lambda: load_split("test")}
    if pneumonia_npz:
        path = pneumonia_npz

        def load_split(split):
            data = load_pneumoniamnist(path)
            return gray_to_rgb(data[f"{split}_images"], image_size), data[f"{split}_labels"]

        return {"name": "pneumoniamnist", "key": ["pneumoniamnist", _file_stamp(path), image_size],
                "load": lambda: (*load_split("train"), *load_split("test")), "load_test": lambda: load_split("test")}
    if run_data != "synthetic":
        raise TaskSkipped("no chest X-rays: give --chest-dir (Kermany folder) or --pneumonia-npz (PneumoniaMNIST); "
                          "synthetic ones are used only for runs trained on synthetic data")

    def load_test():
        return make_synthetic_chest_xray(SYNTHETIC_TEST, image_size, seed=seed + SYNTHETIC_TEST_SEED)

    def load():
        return (*make_synthetic_chest_xray(synthetic_n, image_size, seed=seed + SYNTHETIC_TRAIN_SEED), *load_test())

    return {"name": "synthetic", "key": ["synthetic", synthetic_n, SYNTHETIC_TEST, image_size, seed], "load": load,
            "load_test": load_test}


def load_test_images(image_size: int, run_data: str, seed: int = 0, chest_dir=None, pneumonia_npz=None,
                     cache_dir=None):
    """``(images uint8 (N, S, S, 3), labels int (N,), source name)``; see the module doc for the order."""
    source = chest_xray_source(image_size, seed, run_data, chest_dir, pneumonia_npz, cache_dir, splits=("test",))
    return (*source["load_test"](), source["name"])


def parse_prompts(value) -> dict:
    """``{"normal": [...], "pneumonia": [...]}`` from None (the defaults), a dict, a JSON file, or
    a string ``"normal prompt; pneumonia prompt"`` (``--pneumonia-prompts``)."""
    if value is None:
        return {k: list(v) for k, v in DEFAULT_PROMPTS.items()}
    if isinstance(value, (str, Path)) and str(value).endswith(".json"):
        value = read_json(value, "pneumonia prompt file")
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(";")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"pneumonia prompts: expected 'normal prompt; pneumonia prompt', got {value!r}")
        value = {"normal": [parts[0]], "pneumonia": [parts[1]]}
    if not isinstance(value, dict) or set(value) != set(CLASS_NAMES):
        raise ValueError(f"pneumonia prompts: expected the classes {list(CLASS_NAMES)}, got {value!r}")
    out = {}
    for c in CLASS_NAMES:
        prompts = [value[c]] if isinstance(value[c], str) else list(value[c])
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"pneumonia prompts: class {c!r} needs at least one non-empty prompt")
        out[c] = prompts
    return out


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

def zero_shot_probs(model, images: np.ndarray, prompts: dict, batch_size: int = 128) -> np.ndarray:
    """``(N, 2)`` probabilities of normal / pneumonia."""
    image_emb = model.embed_images(images, batch_size).astype(np.float64)
    vectors = class_vectors(embed_prompts(model, prompts))
    return softmax(model.temperature() * image_emb @ vectors.T, axis=1)


@dataclass(frozen=True)
class Options:
    """The zero-shot pneumonia task's options (``--pneumonia-prompts``); the chest X-rays are common flags."""

    pneumonia_prompts: dict | None = option(None, parse_prompts, "'normal prompt; pneumonia prompt' or a JSON "
                                            'file {"normal": [...], "pneumonia": [...]}', "TEXT",
                                            shown="'normal; pneumonia'")


def run(ctx, options: Options = Options()) -> dict:
    prompts = options.pneumonia_prompts or parse_prompts(None)
    run_data = (ctx.state.get("args") or {}).get("data", "")
    images, labels, source = load_test_images(ctx.model.config.image_size, run_data, ctx.seed, ctx.chest_dir,
                                              ctx.pneumonia_npz, ctx.cache_dir)
    if len(labels) == 0:
        raise TaskSkipped(f"no chest X-rays in the {source} test set")
    probs = zero_shot_probs(ctx.model, images, prompts, ctx.batch_size)
    predictions = probs.argmax(axis=1)
    n_pos = int((labels == 1).sum())
    per_class = per_class_scores(labels, predictions, (0, 1))
    result = {"source": source, "n": int(len(labels)), "n_normal": int(len(labels) - n_pos), "n_pneumonia": n_pos,
              "accuracy": accuracy(labels, predictions), "balanced_accuracy": balanced_accuracy(labels, predictions),
              "sensitivity": per_class[1]["recall"], "specificity": per_class[0]["recall"],
              "roc_auc": roc_auc(labels, probs[:, 1]),
              "majority_baseline": float(max(n_pos, len(labels) - n_pos) / len(labels)),
              "predicted_pneumonia_share": float(predictions.mean()), "prompts": prompts}
    fpr, tpr = roc_points(labels, probs[:, 1])
    figures.roc_curve(ctx.out / "pneumonia_roc.png", fpr, tpr, result["roc_auc"],
                      title=f"zero-shot pneumonia ({source}, n={len(labels)})")
    show = np.concatenate([np.flatnonzero(labels == c)[:4] for c in (0, 1)])
    figures.image_grid(ctx.out / "pneumonia_examples.png", images[show], labels[show], probs[show], CLASS_NAMES,
                       title=f"zero-shot pneumonia: prompts {prompts['normal']} vs {prompts['pneumonia']}")
    result["figures"] = ["pneumonia_roc.png", "pneumonia_examples.png"]
    return result
