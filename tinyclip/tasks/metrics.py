"""The classification metrics of every task, as plain NumPy functions on host arrays, by definition.

Labels are class indices ``0 .. C-1`` (or any values, where a function takes ``labels``);
scores are real numbers, higher meaning "more positive". In reading order:

* counts: ``confusion_matrix``, ``accuracy``;
* per class: ``per_class_scores`` (precision, recall, F1, support), ``balanced_accuracy``
  (mean recall), ``macro_f1``, and ``multilabel_f1`` for 0/1 label matrices;
* ranking: ``roc_auc`` (by average ranks), ``roc_points`` (the curve) and
  ``balanced_threshold`` (the cut with the best balanced accuracy).
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------
# counts
# ---------------------------------------------------------------------------

def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def accuracy(y_true, y_pred) -> float:
    """Share of rows where the predicted label equals the true one; NaN for no rows."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"accuracy: shapes differ, {y_true.shape} vs {y_pred.shape}")
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


# ---------------------------------------------------------------------------
# per class
# ---------------------------------------------------------------------------

def _f1(tp, fp, fn) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) (= 2PR / (P + R)) element-wise; 0 where undefined (sklearn's zero_division=0)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def _counts(y_true, y_pred, labels):
    """``(TP, FP, FN)``, each ``(len(labels),)``, of single-label predictions, one label against the rest."""
    y_true, y_pred = np.asarray(y_true).reshape(1, -1), np.asarray(y_pred).reshape(1, -1)
    labels = np.asarray(list(labels)).reshape(-1, 1)
    true, pred = y_true == labels, y_pred == labels
    return (true & pred).sum(axis=1), (~true & pred).sum(axis=1), (true & ~pred).sum(axis=1)


def per_class_scores(y_true, y_pred, labels) -> dict:
    """``{label: {"precision", "recall", "f1", "support"}}`` of single-label predictions.

    precision = TP / (TP + FP), None when the label is never predicted; recall = TP / (TP + FN),
    None when it has no examples; F1 as ``_f1`` (0 when undefined); support = TP + FN.
    """
    labels = list(labels)
    tp, fp, fn = (v.tolist() for v in _counts(y_true, y_pred, labels))
    f1 = _f1(tp, fp, fn)
    return {c: {"precision": tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else None,
                "recall": tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else None,
                "f1": float(f1[i]), "support": tp[i] + fn[i]} for i, c in enumerate(labels)}


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes that occur in ``y_true``: chance is 1/C whatever the class shares."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    if not classes.size:
        return float("nan")
    tp, _, fn = _counts(y_true, y_pred, classes)
    return float(np.mean(tp / (tp + fn)))


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of the per-class F1 of single-label predictions.

    ``labels`` default: every label that occurs in ``y_true`` or ``y_pred`` (as sklearn does).
    """
    labels = np.union1d(np.asarray(y_true), np.asarray(y_pred)) if labels is None else labels
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(_f1(*_counts(y_true, y_pred, labels))))


def multilabel_f1(y_true, y_pred) -> dict:
    """Micro and macro F1 of 0/1 matrices ``(N, K)``, and the F1 of each of the K labels.

    micro: one F1 from TP, FP, FN summed over all labels (frequent labels weigh more);
    macro: the mean of the K per-label F1s (a label never true nor predicted scores 0).
    """
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"multilabel_f1: expected two (N, K) matrices, got {y_true.shape} and {y_pred.shape}")
    tp = (y_true & y_pred).sum(axis=0)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    per_label = _f1(tp, fp, fn)
    return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(per_label.mean()) if per_label.size else float("nan"),
            "per_label_f1": per_label.tolist()}


# ---------------------------------------------------------------------------
# ranking: ROC
# ---------------------------------------------------------------------------

def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties count ½.

    Computed from ranks (Mann-Whitney U): ``(Σ ranks of positives - P(P+1)/2) / (P·N)``,
    with tied scores sharing their average rank. NaN when one class is absent.
    """
    y_true = np.asarray(y_true).astype(bool)
    pos, neg = int(y_true.sum()), int((~y_true).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[y_true].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_points(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1); its trapezoids sum to the AUC."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], y_true[order]
    # one point per distinct threshold: the last position of each run of equal scores
    cut = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp, fp = np.cumsum(y)[cut], np.cumsum(~y)[cut]
    return (np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)])


def balanced_threshold(y_true, scores) -> float:
    """The cut ``t`` that maximises the balanced accuracy ``(TPR + TNR) / 2`` of "positive iff score > t".

    Candidates: midpoints between consecutive distinct scores, and one below / above
    them all; of several best ones the middle one is taken. Needs both classes.
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.all() or not y_true.any():
        raise ValueError("balanced_threshold: both classes are needed")
    u = np.unique(scores)
    cuts = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    pos, neg = np.sort(scores[y_true]), np.sort(scores[~y_true])
    tpr = 1.0 - np.searchsorted(pos, cuts, side="right") / len(pos)
    tnr = np.searchsorted(neg, cuts, side="right") / len(neg)
    ba = (tpr + tnr) / 2
    best = np.flatnonzero(ba == ba.max())
    return float(cuts[best[len(best) // 2]])
