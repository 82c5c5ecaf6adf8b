"""embedding (gather forward, scatter-add backward) and inverted dropout."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyclip
from tinyclip import Tensor, gradcheck
from tinyclip.functional.embedding import embedding
from tinyclip.functional.norm import dropout

try:
    import torch
except ImportError:  # reference tests only
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (used only as a reference)")


# ---------------------------------------------------------------------------
# embedding
# ---------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(ids_shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), vocab=st.integers(1, 4),
       dim=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_embedding_lookup_and_gradcheck(ids_shape, vocab, dim, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, ids_shape)  # a small vocabulary, so ids repeat
    weight = rng.standard_normal((vocab, dim))
    y = embedding(ids, Tensor(weight))
    assert y.shape == (*ids_shape, dim)
    np.testing.assert_array_equal(y.data, weight[ids])
    gradcheck(lambda w: embedding(ids, w), [weight])


def test_repeated_ids_accumulate():
    weight = Tensor(np.zeros((5, 2)), requires_grad=True)
    ids = np.array([[1, 3, 1], [1, 0, 3]])
    gy = np.arange(12.0).reshape(2, 3, 2)
    embedding(Tensor(ids), weight).backward(gy)
    expected = np.zeros((5, 2))
    np.add.at(expected, ids, gy)
    np.testing.assert_array_equal(weight.grad, expected)
    np.testing.assert_array_equal(weight.grad[1], gy[0, 0] + gy[0, 2] + gy[1, 0])
    np.testing.assert_array_equal(weight.grad[[2, 4]], 0.0)


def test_embedding_ids_from_list_and_int32_and_float32():
    weight = Tensor(np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32), requires_grad=True)
    y = embedding([[5, 0], [2, 2]], weight)
    z = embedding(np.array([1, 5], np.int32), weight)
    (y.sum() + z.sum()).backward()
    assert y.dtype == z.dtype == weight.grad.dtype == np.float32
    np.testing.assert_array_equal(weight.grad[:, 0], [1, 1, 2, 0, 0, 2])


def test_embedding_errors():
    weight = Tensor(np.zeros((4, 2)))
    with pytest.raises(IndexError, match="id 4 is out of range"):
        embedding(np.array([0, 4]), weight)
    with pytest.raises(IndexError, match="id -1 is out of range"):
        embedding(np.array([-1, 2]), weight)
    with pytest.raises(TypeError, match="integers"):
        embedding(np.array([0.0, 1.0]), weight)
    with pytest.raises(ValueError, match=r"\(V, D\)"):
        embedding(np.array([0]), Tensor(np.zeros(4)))


@needs_torch
def test_embedding_matches_torch():
    rng = np.random.default_rng(1)
    weight, ids = rng.standard_normal((50, 8)), rng.integers(0, 50, (6, 20))
    gy = rng.standard_normal((6, 20, 8))
    ours = Tensor(weight, requires_grad=True)
    embedding(ids, ours).backward(gy)
    theirs = torch.tensor(weight, requires_grad=True)
    torch.nn.functional.embedding(torch.tensor(ids), theirs).backward(torch.tensor(gy))
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------

def test_dropout_identity_when_off():
    x = Tensor(np.ones((3, 4)), requires_grad=True)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.5, training=False) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_p_outside_0_1(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(Tensor(np.ones(3)), p)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_the_mean(p):
    tinyclip.manual_seed(0)
    n = 200_000
    x = Tensor(np.ones(n, np.float32), requires_grad=True)
    y = dropout(x, p)
    assert y.dtype == np.float32
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1 / (1 - p), rtol=1e-6)  # survivors scaled by 1/(1-p)
    # The dropped fraction and the mean: within 5 standard errors of p and 1.
    assert abs((~kept).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert abs(y.data.mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)
    y.backward(np.full(n, 2.0, np.float32))
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 2 * y.data, rtol=1e-6)  # the same mask and scale


def test_dropout_reproducible_with_manual_seed():
    x = Tensor(np.ones((50, 40)))
    tinyclip.manual_seed(123)
    a = dropout(x, 0.3).data
    tinyclip.manual_seed(123)
    b = dropout(x, 0.3).data
    c = dropout(x, 0.3).data  # the generator moved on
    tinyclip.manual_seed(124)
    d = dropout(x, 0.3).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


@settings(max_examples=10, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), p=st.sampled_from([0.2, 0.5, 0.9]),
       seed=st.integers(0, 2**16))
def test_dropout_gradcheck_with_a_fixed_mask(shape, p, seed):
    x = np.random.default_rng(seed).standard_normal(shape)

    def f(x):
        tinyclip.manual_seed(seed)  # both passes draw the same mask
        return dropout(x, p)

    gradcheck(f, [x])
