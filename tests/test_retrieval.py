"""Retrieval metrics against by-definition references: ranks by sorting, recall by counting."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinyclip.tasks import softmax
from tinyclip.tasks.retrieval import ranks, recall_at_k, retrieval_metrics, same_caption


def reference_ranks(sim, positives):
    """Sort each row by score, best first; among equal scores put wrong items first (ties count
    against the correct item); the rank is the 1-based position of the first correct item."""
    out = []
    for row, pos in zip(sim, positives):
        order = sorted(range(len(row)), key=lambda j: (-row[j], bool(pos[j])))
        out.append(1 + next(i for i, j in enumerate(order) if pos[j]))
    return np.array(out)


@st.composite
def sims_with_positives(draw, square=True):
    n = draw(st.integers(1, 9))
    m = n if square else draw(st.integers(1, 9))
    # few distinct values, so ties are common
    sim = draw(arrays(np.float64, (n, m), elements=st.integers(-3, 3).map(float)))
    positives = draw(arrays(np.bool_, (n, m)))
    for i in range(n):  # every query needs a correct item
        if not positives[i].any():
            positives[i, draw(st.integers(0, m - 1))] = True
    return sim, positives


@settings(max_examples=120, deadline=None)
@given(sims_with_positives(square=False))
def test_ranks_match_sorting_reference(case):
    sim, positives = case
    np.testing.assert_array_equal(ranks(sim, positives), reference_ranks(sim, positives))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 9)).map(lambda t: (t[0], t[0])),
              elements=st.integers(-2, 2).map(float)))
def test_ranks_of_the_diagonal(sim):
    expected = reference_ranks(sim, np.eye(len(sim), dtype=bool))
    np.testing.assert_array_equal(ranks(sim), expected)


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.integers(0, 30), elements=st.integers(1, 12)), st.integers(1, 12))
def test_recall_at_k_counts(rank, k):
    expected = sum(1 for r in rank if r <= k) / len(rank) if len(rank) else None
    got = recall_at_k(rank, k)
    if expected is None:
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(sims_with_positives())
def test_metrics_both_ways(case):
    sim, positives = case
    positives = positives | np.eye(len(sim), dtype=bool)  # as in use: each pair's own partner is correct
    m = retrieval_metrics(sim, positives)
    i2t, t2i = reference_ranks(sim, positives), reference_ranks(sim.T, positives.T)
    for k in (1, 5, 10):
        assert m[f"i2t_R@{k}"] == pytest.approx(np.mean(i2t <= k))
        assert m[f"t2i_R@{k}"] == pytest.approx(np.mean(t2i <= k))
    assert m["i2t_median_rank"] == np.median(i2t) and m["t2i_mean_rank"] == pytest.approx(np.mean(t2i))
    assert m["n"] == len(sim)


def test_metric_keys():
    m = retrieval_metrics(np.eye(4))
    assert set(m) == {"n", *(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)),
                      *(f"{d}_{s}_rank" for d in ("i2t", "t2i") for s in ("median", "mean"))}


def test_perfect_and_collapsed_models():
    perfect = retrieval_metrics(np.eye(20) + 0.01 * np.random.default_rng(0).random((20, 20)))
    assert perfect["i2t_R@1"] == perfect["t2i_R@1"] == 1.0 and perfect["i2t_mean_rank"] == 1.0
    # A model that scores everything the same must not look good: every rank is n.
    collapsed = retrieval_metrics(np.full((20, 20), 0.3))
    assert collapsed["i2t_R@10"] == 0.0 and collapsed["t2i_median_rank"] == 20.0


def test_ranks_are_asymmetric_when_the_matrix_is():
    sim = np.array([[0.9, 0.1, 0.0],
                    [0.8, 0.5, 0.0],
                    [0.7, 0.6, 0.4]])
    np.testing.assert_array_equal(ranks(sim), [1, 2, 3])     # image i: caption i against the others in row i
    np.testing.assert_array_equal(ranks(sim.T), [1, 2, 1])   # caption j: image j against column j


def test_duplicate_captions_count_as_correct():
    captions = ["CT of the chest.", "MRI of the knee.", "CT  of the chest."]  # same text up to spaces
    positives = same_caption(captions)
    np.testing.assert_array_equal(positives, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    sim = np.array([[0.5, 0.1, 0.5], [0.1, 0.9, 0.1], [0.5, 0.1, 0.5]])  # identical captions embed identically
    assert list(ranks(sim, positives)) == [1, 1, 1]
    assert list(ranks(sim)) == [2, 1, 2]


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        ranks(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positives"):
        ranks(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least one correct"):
        ranks(np.zeros((2, 2)), np.zeros((2, 2), dtype=bool))


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]]), axis=1)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(p[1], np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum())
