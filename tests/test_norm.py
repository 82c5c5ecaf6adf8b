"""layer_norm: by-formula forward, finite-difference gradients in float64, PyTorch, float32 discipline."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyclip import Tensor, gradcheck
from tinyclip.functional.norm import layer_norm

try:
    import torch
except ImportError:  # reference tests only
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (used only as a reference)")


def reference_layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


shapes = st.tuples(st.lists(st.integers(1, 3), min_size=0, max_size=3), st.integers(1, 6))


@settings(max_examples=15, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_layer_norm_gradcheck(shape, seed, scale):
    lead, d = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, d)) * scale + rng.standard_normal()
    w, b = rng.standard_normal(d), rng.standard_normal(d)
    gradcheck(lambda x, w, b: layer_norm(x, w, b), [x, w, b])


@settings(max_examples=15, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_layer_norm_matches_formula(shape, seed):
    lead, d = shape
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((*lead, d)), rng.standard_normal(d), rng.standard_normal(d)
    y = layer_norm(Tensor(x), Tensor(w), Tensor(b), eps=1e-3)
    np.testing.assert_allclose(y.data, reference_layer_norm(x, w, b, eps=1e-3), rtol=1e-10, atol=1e-12)


def test_layer_norm_constant_rows_are_finite():
    # D = 1, or a constant row: x̂ = 0, so y = b and the input gradient is 0 (not NaN).
    for x in (np.full((3, 1), 2.0), np.full((2, 4), -7.0)):
        d = x.shape[-1]
        xt, w, b = Tensor(x, requires_grad=True), Tensor(np.full(d, 3.0), requires_grad=True), Tensor(np.ones(d))
        y = layer_norm(xt, w, b)
        y.backward(np.ones_like(x))
        np.testing.assert_allclose(y.data, 1.0)
        np.testing.assert_allclose(xt.grad, 0.0, atol=1e-12)


def test_layer_norm_float32_stays_float32():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 5, 8)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal(8).astype(np.float32), requires_grad=True)
    b = Tensor(np.zeros(8, np.float32), requires_grad=True)
    y = layer_norm(x, w, b)
    (y * y).sum().backward()
    assert y.dtype == np.float32
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


def test_layer_norm_rejects_wrong_parameter_shape():
    x = Tensor(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="weight and bias"):
        layer_norm(x, Tensor(np.ones(3)), Tensor(np.zeros(4)))


def test_layer_norm_only_some_inputs_need_grad():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((3, 4)))
    w = Tensor(rng.standard_normal(4), requires_grad=True)
    b = Tensor(rng.standard_normal(4))
    layer_norm(x, w, b).sum().backward()
    x_hat = reference_layer_norm(x.data, 1.0, 0.0)
    np.testing.assert_allclose(w.grad, x_hat.sum(axis=0), rtol=1e-10)
    assert x.grad is None and b.grad is None


@needs_torch
def test_layer_norm_matches_torch():
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 3, 16)), rng.standard_normal(16), rng.standard_normal(16)
    gy = rng.standard_normal((2, 3, 16))
    ours = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    layer_norm(*ours).backward(gy)
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    out = torch.nn.functional.layer_norm(theirs[0], (16,), theirs[1], theirs[2], eps=1e-5)
    out.backward(torch.tensor(gy))
    np.testing.assert_allclose(layer_norm(x, w, b).data, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, t.grad.numpy(), rtol=1e-9, atol=1e-12)
