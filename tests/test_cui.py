"""Concept (CUI) classifiers: the metric helpers against hand-computed cases, labels, and the task end to end."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from tinyclip.data.pairs import load_pairs
from tinyclip.models import CLIP
from tinyclip.tasks import TaskSkipped, cui, heads
from tinyclip.tasks.common import EvalContext

TINY = ["--epochs", "1", "--num-samples", "48", "--image-size", "32", "--conv-channels", "8,16", "--text-layers", "1",
        "--width", "32", "--ff-dim", "64", "--embed-dim", "32", "--max-len", "24", "--batch-size", "16",
        "--no-progress"]


# ---------------------------------------------------------------------------
# metrics, by hand
# ---------------------------------------------------------------------------

def test_accuracy():
    assert heads.accuracy([0, 1, 2, 2], [0, 2, 2, 2]) == 0.75
    with pytest.raises(ValueError):
        heads.accuracy([0, 1], [0])


def test_single_label_f1_by_hand():
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: TP 1, FP 1, FN 1 → 2/4;  class 1: TP 2, FP 1, FN 0 → 4/5;  class 2: TP 0, FN 1 → 0
    per_class = heads.per_class_f1(y_true, y_pred, [0, 1, 2])
    assert [per_class[c]["f1"] for c in (0, 1, 2)] == pytest.approx([0.5, 0.8, 0.0])
    assert per_class[1]["precision"] == pytest.approx(2 / 3) and per_class[1]["recall"] == 1.0
    assert [per_class[c]["support"] for c in (0, 1, 2)] == [2, 2, 1]
    assert heads.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a label that occurs nowhere is left out by default, counted as 0 when listed explicitly
    assert heads.macro_f1([0, 1], [0, 1]) == 1.0
    assert heads.macro_f1([0, 1], [0, 1], labels=[0, 1, 2]) == pytest.approx(2 / 3)


def test_multilabel_f1_by_hand():
    y_true = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    y_pred = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]])
    # label 0: TP 1, FN 1 → 2/3; label 1: TP 2 → 1; label 2: FP 1, FN 1 → 0; label 3: never → 0
    # micro: TP 3, FP 1, FN 2 → 6/9
    f1 = heads.multilabel_f1(y_true, y_pred)
    assert f1["per_label_f1"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert f1["macro_f1"] == pytest.approx((2 / 3 + 1) / 4)
    assert f1["micro_f1"] == pytest.approx(2 / 3)


def test_macro_f1_matches_a_naive_definition():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    scores = []
    for c in range(4):
        precision = np.mean(y_true[y_pred == c] == c)
        recall = np.mean(y_pred[y_true == c] == c)
        scores.append(2 * precision * recall / (precision + recall))
    assert heads.macro_f1(y_true, y_pred) == pytest.approx(np.mean(scores))


def test_roc_auc_by_hand_and_by_pairs():
    assert heads.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert heads.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(heads.roc_auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 40), rng.integers(0, 5, 40).astype(float)  # many ties
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(s[y == 1], s[y == 0])]
    assert heads.roc_auc(y, s) == pytest.approx(np.mean(pairs))


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------

def test_first_cui_top_k_and_other_grouping():
    frame = pd.DataFrame({"cuis": [["C1", "C2"], [], ["C2"], ["C3", "C1"], ["C2", "C9"], ["C1"]]})
    first = cui.first_cuis(frame)
    assert first == ["C1", None, "C2", "C3", "C2", "C1"]
    classes = cui.top_concepts([[c] for c in first if c], 2)
    assert classes == ["C1", "C2"]  # C1 and C2 twice each (tie by name), C3 once
    assert cui.class_indices(["C2", "C3", "C1", "C7"], classes).tolist() == [1, 2, 0, 2]  # 2 = "other"
    # anywhere in the list, each row counting a concept once
    assert cui.top_concepts(frame["cuis"], 2) == ["C1", "C2"]
    np.testing.assert_array_equal(cui.multi_hot([["C2", "C9"], [], ["C1", "C2"]], ["C1", "C2"]),
                                  [[0, 1], [0, 0], [1, 1]])
    with pytest.raises(TaskSkipped):
        cui.first_cuis(pd.DataFrame({"caption": ["a"]}))


def test_trim_padding_and_confusion():
    ids = np.array([[5, 6, 0, 0], [7, 0, 0, 0]])
    trimmed, mask = cui.trim_padding(ids, ids == 0)
    assert trimmed.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[False, False], [False, True]]
    assert cui.confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist() == [[1, 0], [1, 1]]


# ---------------------------------------------------------------------------
# the task end to end
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_ctx(tmp_path_factory):
    """A tiny checkpoint and its synthetic pairs split as the run split them; two captions lose their CUIs."""
    from tinyclip.train import main
    run_dir = tmp_path_factory.mktemp("cui_run")
    assert main([*TINY, "--out", str(run_dir)]) == 0
    model, state = CLIP.from_checkpoint(run_dir, "best")
    frame, images = load_pairs("synthetic", image_size=32, num_samples=48, seed=0)
    split = {k: np.asarray(v) for k, v in state["split"].items()}
    train, test = frame.iloc[split["train"]].reset_index(drop=True), frame.iloc[split["test"]].reset_index(drop=True)
    train.at[0, "cuis"], test.at[0, "cuis"] = [], []
    return model, state, train, images[split["train"]], test, images[split["test"]], tmp_path_factory.mktemp("cui")


@pytest.mark.parametrize("init", ["clip", "scratch"])
def test_run_end_to_end(synthetic_ctx, init):
    model, state, train, train_images, test, test_images, out = synthetic_ctx
    options = {"top_k": "3", "cui_init": init, "cui_epochs": "1", "head_steps": "20",
               "cui_balance": "1" if init == "scratch" else "0"}
    ctx = EvalContext(model, state, test, test_images, train, train_images, out / init, options, seed=0)
    metrics = cui.run(ctx, log=lambda s: None)
    json.dumps(metrics)
    assert metrics["top_k"] == 3 and len(metrics["classes"]) == 4 and metrics["classes"][-1] == "other"
    assert metrics["train_without_cui"] == 1 and metrics["eval_without_cui"] == 1
    assert metrics["n_train"] == len(train) - 1 and metrics["n_eval"] == len(test) - 1
    for task in ("caption_to_cui", "image_to_cui"):
        scores = metrics[task]
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_f1"] <= 1
        assert set(scores["per_class_f1"]) == set(metrics["classes"])
        assert np.sum(scores["confusion"]) == metrics["n_eval"]
    assert metrics["caption_to_cui"]["init"] == init
    assert metrics["class_weighting"] == ("balanced" if init == "scratch" else "none")
    multilabel = metrics["multilabel"]
    assert len(multilabel["labels"]) == 3 and multilabel["threshold"] == 0.5
    assert 0 <= multilabel["micro_f1"] <= 1 and 0 <= multilabel["macro_f1"] <= 1
    assert (ctx.out / metrics["figure"]).stat().st_size > 1000


def test_run_skips_without_cuis(synthetic_ctx):
    model, state, train, train_images, test, test_images, out = synthetic_ctx
    no_cuis = test.assign(cuis=[[] for _ in range(len(test))])
    ctx = EvalContext(model, state, no_cuis, test_images, train, train_images, out / "none", {}, seed=0)
    with pytest.raises(TaskSkipped):
        cui.run(ctx, log=lambda s: None)


def test_run_rejects_unknown_init(synthetic_ctx):
    model, state, train, train_images, test, test_images, out = synthetic_ctx
    ctx = EvalContext(model, state, test, test_images, train, train_images, out / "bad", {"cui_init": "bert"}, seed=0)
    with pytest.raises(ValueError, match="cui_init"):
        cui.run(ctx, log=lambda s: None)
