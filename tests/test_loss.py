"""softmax, log_softmax, cross_entropy, binary_cross_entropy_with_logits: definitions, gradients, stability."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyclip import Tensor, gradcheck
from tinyclip.functional.loss import binary_cross_entropy_with_logits, cross_entropy, log_softmax, softmax

try:
    import torch
except ImportError:  # reference tests only
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (used only as a reference)")

REDUCTIONS = ["mean", "sum", "none"]


def softmax_by_definition(x, axis):
    e = np.exp(x)  # fine for the moderate values used here
    return e / e.sum(axis=axis, keepdims=True)


def cross_entropy_by_definition(logits, targets, eps=0.0):
    n, c = logits.shape
    losses = []
    for i in range(n):
        p = softmax_by_definition(logits[i], 0)
        q = np.full(c, eps / c)
        q[targets[i]] += 1 - eps
        losses.append(-(q * np.log(p)).sum())
    return np.array(losses)


def bce_by_definition(x, t):
    s = 1 / (1 + np.exp(-x))
    return -(t * np.log(s) + (1 - t) * np.log(1 - s))


def reduce(losses, reduction):
    return {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]


array_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3)


# ---------------------------------------------------------------------------
# softmax and log-softmax
# ---------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(shape=array_shapes, seed=st.integers(0, 2**16), data=st.data())
def test_softmax_and_log_softmax_by_definition_and_gradcheck(shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * 3
    expected = softmax_by_definition(x, axis)
    np.testing.assert_allclose(softmax(Tensor(x), axis=axis).data, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(log_softmax(Tensor(x), axis=axis).data, np.log(expected), rtol=1e-10, atol=1e-12)
    gradcheck(lambda x: softmax(x, axis=axis), [x])
    gradcheck(lambda x: log_softmax(x, axis=axis), [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_log_softmax_stable_at_1e4(dtype):
    x = Tensor(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype), requires_grad=True)
    gy = np.array([[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]], dtype)
    y = softmax(x)
    y.backward(gy)
    np.testing.assert_allclose(y.data, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    # dx = y (gy - Σ gy·y): the saturated row has zero gradient.
    expected = y.data * (gy - (gy * y.data).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(x.grad, expected, rtol=1e-5, atol=1e-7)
    assert np.isfinite(x.grad).all() and x.grad.dtype == dtype

    x.zero_grad()
    z = log_softmax(x)
    z.backward(gy)
    np.testing.assert_allclose(z.data[0], [0, -2e4, -1e4], rtol=1e-6)
    assert np.isfinite(z.data).all() and z.dtype == dtype
    expected = gy - y.data * gy.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(1, 5), seed=st.integers(0, 2**16),
       smoothing=st.sampled_from([0.0, 0.1, 0.5]), reduction=st.sampled_from(REDUCTIONS))
def test_cross_entropy_by_definition_and_gradcheck(n, c, seed, smoothing, reduction):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * 2
    targets = rng.integers(0, c, n)
    got = cross_entropy(Tensor(logits), targets, label_smoothing=smoothing, reduction=reduction)
    expected = reduce(cross_entropy_by_definition(logits, targets, smoothing), reduction)
    np.testing.assert_allclose(got.data, expected, rtol=1e-10, atol=1e-12)
    gradcheck(lambda x: cross_entropy(x, targets, label_smoothing=smoothing, reduction=reduction), [logits])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_stable_at_1e4(dtype):
    logits = Tensor(np.array([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4]], dtype), requires_grad=True)
    loss = cross_entropy(logits, np.array([1, 1, 0]))
    loss.backward()
    np.testing.assert_allclose(loss.item(), (2e4 + 0 + np.log(2)) / 3, rtol=1e-6)
    expected = np.array([[1, -1], [0, 0], [-0.5, 0.5]]) / 3  # (softmax - onehot) / N
    np.testing.assert_allclose(logits.grad, expected, rtol=1e-6, atol=1e-7)
    assert loss.dtype == logits.grad.dtype == dtype


def test_cross_entropy_accepts_tensor_targets_and_float32():
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    loss = cross_entropy(x, Tensor(np.array([0, 2, 1, 2])), label_smoothing=0.1)
    loss.backward()
    assert loss.dtype == x.grad.dtype == np.float32 and loss.shape == ()


def test_cross_entropy_errors():
    x = Tensor(np.zeros((3, 4)))
    with pytest.raises(IndexError, match="out of range"):
        cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(IndexError, match="out of range"):
        cross_entropy(x, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integer"):
        cross_entropy(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, np.array([0, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(x, np.array([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        cross_entropy(Tensor(np.zeros(4)), np.array([0]))


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch(reduction, smoothing):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 5)) * 3
    logits[0] = [1e4, -1e4, 0, 5, -5]
    targets = rng.integers(0, 5, 6)
    ours = Tensor(logits, requires_grad=True)
    loss = cross_entropy(ours, targets, label_smoothing=smoothing, reduction=reduction)
    gy = rng.standard_normal(loss.shape)
    loss.backward(gy)
    theirs = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(theirs, torch.tensor(targets), label_smoothing=smoothing,
                                            reduction=reduction)
    ref.backward(torch.tensor(gy))
    np.testing.assert_allclose(loss.data, ref.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# binary cross-entropy with logits
# ---------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(shape=array_shapes, seed=st.integers(0, 2**16), reduction=st.sampled_from(REDUCTIONS))
def test_bce_by_definition_and_gradcheck(shape, seed, reduction):
    rng = np.random.default_rng(seed)
    x, t = rng.standard_normal(shape) * 3, rng.random(shape)
    got = binary_cross_entropy_with_logits(Tensor(x), Tensor(t), reduction=reduction)
    np.testing.assert_allclose(got.data, reduce(bce_by_definition(x, t), reduction), rtol=1e-9, atol=1e-12)
    gradcheck(lambda x, t: binary_cross_entropy_with_logits(x, t, reduction=reduction), [x, t])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_stable_at_1e4(dtype):
    x = Tensor(np.array([1e4, -1e4, 1e4, -1e4], dtype), requires_grad=True)
    t = np.array([1, 0, 0, 1], dtype)
    loss = binary_cross_entropy_with_logits(x, t, reduction="none")
    np.testing.assert_allclose(loss.data, [0, 0, 1e4, 1e4], atol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad, [0, 0, 1, -1], atol=1e-7)  # σ(x) - t
    assert loss.dtype == x.grad.dtype == dtype


def test_bce_errors_and_int_targets():
    with pytest.raises(ValueError, match="same shape"):
        binary_cross_entropy_with_logits(Tensor(np.zeros(3)), np.zeros(4))
    with pytest.raises(ValueError, match="reduction"):
        binary_cross_entropy_with_logits(Tensor(np.zeros(3)), np.zeros(3), reduction="max")
    x = Tensor(np.zeros(2, np.float32))
    loss = binary_cross_entropy_with_logits(x, np.array([0, 1]))
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), np.log(2), rtol=1e-6)


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_torch(reduction):
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((3, 4)) * 4, rng.random((3, 4))
    x[0, :2] = [1e4, -1e4]
    ours = [Tensor(x, requires_grad=True), Tensor(t, requires_grad=True)]
    loss = binary_cross_entropy_with_logits(*ours, reduction=reduction)
    gy = rng.standard_normal(loss.shape)
    loss.backward(gy)
    theirs = [torch.tensor(x, requires_grad=True), torch.tensor(t, requires_grad=True)]
    ref = torch.nn.functional.binary_cross_entropy_with_logits(*theirs, reduction=reduction)
    ref.backward(torch.tensor(gy))
    np.testing.assert_allclose(loss.data, ref.detach().numpy(), rtol=1e-10)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-9, atol=1e-12)
