"""Concept (CUI) classifiers: labels, padding, and the task end to end (their metrics: test_metrics.py)."""

import json

import numpy as np
import pandas as pd
import pytest

from tinyclip.data.pairs import load_pairs
from tinyclip.models import CLIP
from tinyclip.tasks import TaskSkipped, cui
from tinyclip.tasks.common import EvalContext

TINY = ["--epochs", "1", "--num-samples", "48", "--image-size", "32", "--conv-channels", "8,16", "--text-layers", "1",
        "--width", "32", "--ff-dim", "64", "--embed-dim", "32", "--max-len", "24", "--batch-size", "16",
        "--no-progress"]


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


def test_trim_padding():
    ids = np.array([[5, 6, 0, 0], [7, 0, 0, 0]])
    trimmed, mask = cui.trim_padding(ids, ids == 0)
    assert trimmed.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[False, False], [False, True]]


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
    options = cui.Options(top_k=3, cui_init=init, cui_epochs=1, head_steps=20, cui_balance=init == "scratch")
    ctx = EvalContext(model, state, test, test_images, train, train_images, out / init, seed=0)
    metrics = cui.run(ctx, options, log=lambda s: None)
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
    ctx = EvalContext(model, state, no_cuis, test_images, train, train_images, out / "none", seed=0)
    with pytest.raises(TaskSkipped):
        cui.run(ctx, log=lambda s: None)


def test_run_rejects_unknown_init(synthetic_ctx):
    model, state, train, train_images, test, test_images, out = synthetic_ctx
    ctx = EvalContext(model, state, test, test_images, train, train_images, out / "bad", seed=0)
    with pytest.raises(ValueError, match="cui_init"):
        cui.run(ctx, cui.Options(cui_init="bert"), log=lambda s: None)
