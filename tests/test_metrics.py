"""The tasks' metrics (tinyclip.tasks.metrics) against by-definition references: hand-made cases,
hypothesis-drawn labels and scores, and the edge cases (a class never predicted, a single class)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyclip.tasks.metrics import (accuracy, average_ranks, balanced_accuracy, balanced_threshold, confusion_matrix,
                                    macro_f1, multilabel_f1, per_class_scores, roc_auc, roc_points)

# (true, predicted) pairs of up to four classes
LABEL_PAIRS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40)


def reference_scores(pairs, c):
    """Precision, recall (None where undefined) and F1 = 2PR / (P + R) (0 where undefined) of class ``c``."""
    predicted = [t for t, p in pairs if p == c]
    actual = [p for t, p in pairs if t == c]
    precision = predicted.count(c) / len(predicted) if predicted else None
    recall = actual.count(c) / len(actual) if actual else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return precision, recall, f1


def brute_force_auc(labels, scores):
    """The share of (positive, negative) pairs where the positive scores higher, ties counting ½."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# ---------------------------------------------------------------------------
# counts
# ---------------------------------------------------------------------------

def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 2, 2, 2]) == 0.75
    assert np.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])


def test_confusion_matrix_by_hand():
    assert confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist() == [[1, 0], [1, 1]]
    assert confusion_matrix([2, 2], [2, 2], 3).tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 2]]  # one class only


@settings(max_examples=50, deadline=None)
@given(LABEL_PAIRS)
def test_confusion_matrix_and_per_class_scores(pairs):
    labels, predictions = (np.array(v) for v in zip(*pairs))
    m = confusion_matrix(labels, predictions, 4)
    for i in range(4):
        for j in range(4):
            assert m[i, j] == sum(1 for t, p in pairs if t == i and p == j)
    scores = per_class_scores(labels, predictions, range(4))
    for c in range(4):
        precision, recall, f1 = reference_scores(pairs, c)
        assert scores[c]["precision"] == (pytest.approx(precision) if precision is not None else None)
        assert scores[c]["recall"] == (pytest.approx(recall) if recall is not None else None)
        assert scores[c]["f1"] == pytest.approx(f1)
        assert scores[c]["support"] == m[c].sum()


# ---------------------------------------------------------------------------
# per class: precision, recall, F1, balanced accuracy
# ---------------------------------------------------------------------------

def test_single_label_f1_by_hand():
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: TP 1, FP 1, FN 1 → 2/4;  class 1: TP 2, FP 1, FN 0 → 4/5;  class 2: TP 0, FN 1 → 0
    per_class = per_class_scores(y_true, y_pred, [0, 1, 2])
    assert [per_class[c]["f1"] for c in (0, 1, 2)] == pytest.approx([0.5, 0.8, 0.0])
    assert per_class[1]["precision"] == pytest.approx(2 / 3) and per_class[1]["recall"] == 1.0
    assert [per_class[c]["support"] for c in (0, 1, 2)] == [2, 2, 1]
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a label that occurs nowhere is left out by default, counted as 0 when listed explicitly
    assert macro_f1([0, 1], [0, 1]) == 1.0
    assert macro_f1([0, 1], [0, 1], labels=[0, 1, 2]) == pytest.approx(2 / 3)
    assert np.isnan(macro_f1([], []))


def test_a_class_never_predicted_and_a_class_never_true():
    # class 2 has examples but is never predicted; class 3 is predicted but never true
    per_class = per_class_scores([0, 1, 2, 2], [0, 1, 3, 3], [0, 1, 2, 3, 5])
    assert per_class[2] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2}
    assert per_class[3] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}
    assert per_class[5] == {"precision": None, "recall": None, "f1": 0.0, "support": 0}  # a label of neither
    assert balanced_accuracy([0, 1, 2, 2], [0, 1, 3, 3]) == pytest.approx((1 + 1 + 0) / 3)  # class 3: no recall


def test_a_single_class_present():
    assert balanced_accuracy([1, 1, 1, 1], [1, 0, 1, 1]) == 0.75  # the one recall
    assert per_class_scores([1, 1], [1, 1], [0, 1]) == {0: {"precision": None, "recall": None, "f1": 0.0,
                                                            "support": 0},
                                                        1: {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                                            "support": 2}}
    assert macro_f1([1, 1], [1, 1]) == 1.0
    assert np.isnan(balanced_accuracy([], []))


@settings(max_examples=50, deadline=None)
@given(LABEL_PAIRS)
def test_balanced_accuracy_is_the_mean_recall(pairs):
    labels, predictions = (np.array(v) for v in zip(*pairs))
    recalls = [reference_scores(pairs, c)[1] for c in sorted(set(labels.tolist()))]
    assert balanced_accuracy(labels, predictions) == pytest.approx(np.mean(recalls))
    if len(set(labels.tolist())) == 1:  # one class: balanced accuracy is that class's recall = accuracy
        assert balanced_accuracy(labels, predictions) == pytest.approx(accuracy(labels, predictions))


@settings(max_examples=50, deadline=None)
@given(LABEL_PAIRS)
def test_macro_f1_is_the_mean_of_2pr_over_p_plus_r(pairs):
    labels, predictions = (np.array(v) for v in zip(*pairs))
    present = sorted(set(labels.tolist()) | set(predictions.tolist()))
    assert macro_f1(labels, predictions) == pytest.approx(np.mean([reference_scores(pairs, c)[2] for c in present]))


def test_macro_f1_matches_a_naive_definition():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    scores = []
    for c in range(4):
        precision = np.mean(y_true[y_pred == c] == c)
        recall = np.mean(y_pred[y_true == c] == c)
        scores.append(2 * precision * recall / (precision + recall))
    assert macro_f1(y_true, y_pred) == pytest.approx(np.mean(scores))


def test_multilabel_f1_by_hand():
    y_true = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    y_pred = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]])
    # label 0: TP 1, FN 1 → 2/3; label 1: TP 2 → 1; label 2: FP 1, FN 1 → 0; label 3: never → 0
    # micro: TP 3, FP 1, FN 2 → 6/9
    f1 = multilabel_f1(y_true, y_pred)
    assert f1["per_label_f1"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert f1["macro_f1"] == pytest.approx((2 / 3 + 1) / 4)
    assert f1["micro_f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        multilabel_f1(y_true, y_pred[:, :2])


# ---------------------------------------------------------------------------
# ranking: ROC AUC, the ROC curve, the balanced-accuracy threshold
# ---------------------------------------------------------------------------

def test_average_ranks():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4, 1, 4, 2, 4])


def test_roc_auc_by_hand_and_by_pairs():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 1], [0.2, 0.1]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))  # a single class: undefined
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 40), rng.integers(0, 5, 40).astype(float)  # many ties
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(s[y == 1], s[y == 0])]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40))
def test_roc_auc_matches_pairwise_count(pairs):
    labels, scores = (np.array(v) for v in zip(*pairs))
    if labels.all() or not labels.any():
        assert np.isnan(roc_auc(labels, scores))
        return
    auc = roc_auc(labels, scores.astype(float) / 5)
    assert auc == pytest.approx(brute_force_auc(labels, scores))
    fpr, tpr = roc_points(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auc)  # trapezoids = AUC


def test_balanced_threshold_against_every_cut():
    rng = np.random.default_rng(0)
    for trial in range(20):
        y = rng.permutation(np.r_[np.zeros(7 + trial, int), np.ones(12, int)])
        scores = np.round(rng.standard_normal(len(y)) + y, 1)  # rounded: ties
        cut = balanced_threshold(y, scores)

        def balanced(t):
            predicted = scores > t
            return (predicted[y == 1].mean() + (~predicted[y == 0]).mean()) / 2
        assert balanced(cut) == pytest.approx(max(balanced(t) for t in np.r_[scores, scores.min() - 1]))
        assert balanced(cut) == pytest.approx(balanced_accuracy(y, (scores > cut).astype(int)))
    with pytest.raises(ValueError):
        balanced_threshold([1, 1], [0.2, 0.3])
