"""scaled_dot_product_attention: explicit-loop reference, gradients, padding masks, dropout, PyTorch."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyclip
from tinyclip import Tensor, gradcheck
from tinyclip.functional.attention import scaled_dot_product_attention as attention
from tinyclip.functional.norm import keep_mask

try:
    import torch
except ImportError:  # reference tests only
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (used only as a reference)")


def attention_by_loops(q, k, v, pad=None):
    """One query at a time: weights over the unpadded keys, a weighted sum of their values."""
    n, h, length, d = q.shape
    out = np.zeros((n, h, length, v.shape[-1]))
    weights = np.zeros((n, h, length, k.shape[2]))
    for b in range(n):
        keys = [j for j in range(k.shape[2]) if pad is None or not pad[b, j]]
        for head in range(h):
            for i in range(length):
                if not keys:
                    continue  # every key is padding: output 0
                scores = np.array([q[b, head, i] @ k[b, head, j] / np.sqrt(d) for j in keys])
                p = np.exp(scores - scores.max())
                p /= p.sum()
                weights[b, head, i, keys] = p
                out[b, head, i] = sum(pj * v[b, head, j] for pj, j in zip(p, keys))
    return out, weights


@st.composite
def problems(draw):
    n, h = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    length, keys = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    d, dv = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    q = rng.standard_normal((n, h, length, d))
    k = rng.standard_normal((n, h, keys, d))
    v = rng.standard_normal((n, h, keys, dv))
    pad = None
    if draw(st.booleans()):
        pad = rng.random((n, keys)) < 0.4
        if draw(st.booleans()):
            pad[draw(st.integers(0, n - 1))] = True  # one batch item with every key padded
    return q, k, v, pad


@settings(max_examples=20, deadline=None)
@given(problem=problems())
def test_attention_matches_loops_and_gradcheck(problem):
    q, k, v, pad = problem
    out, weights = attention(Tensor(q), Tensor(k), Tensor(v), key_padding_mask=pad, return_weights=True)
    ref_out, ref_weights = attention_by_loops(q, k, v, pad)
    np.testing.assert_allclose(out.data, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights.data, ref_weights, rtol=1e-10, atol=1e-12)
    gradcheck(lambda q, k, v: attention(q, k, v, key_padding_mask=pad), [q, k, v])
    # The weights are a differentiable output too.
    gradcheck(lambda q, k, v: attention(q, k, v, key_padding_mask=pad, return_weights=True), [q, k, v])


@settings(max_examples=10, deadline=None)
@given(problem=problems(), p=st.sampled_from([0.2, 0.5]), seed=st.integers(0, 100))
def test_attention_dropout_gradcheck_with_a_fixed_mask(problem, p, seed):
    q, k, v, pad = problem

    def f(q, k, v):
        tinyclip.manual_seed(seed)  # every pass draws the same dropout mask
        return attention(q, k, v, key_padding_mask=pad, dropout_p=p)

    gradcheck(f, [q, k, v])


def test_dropout_acts_on_the_weights():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 3))
    pad = np.array([[False, False, True, False, False], [False] * 5])
    _, weights = attention_by_loops(q, k, v, pad)
    tinyclip.manual_seed(7)
    out = attention(Tensor(q), Tensor(k), Tensor(v), key_padding_mask=pad, dropout_p=0.3)
    tinyclip.manual_seed(7)
    keep = keep_mask(np, weights.shape, 0.3)
    np.testing.assert_allclose(out.data, (weights * keep / 0.7) @ v, rtol=1e-10, atol=1e-12)
    # Not training, or p = 0: no dropout at all.
    plain = attention(Tensor(q), Tensor(k), Tensor(v), key_padding_mask=pad)
    evaluation = attention(Tensor(q), Tensor(k), Tensor(v), key_padding_mask=pad, dropout_p=0.3, training=False)
    np.testing.assert_array_equal(plain.data, evaluation.data)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        attention(Tensor(q), Tensor(k), Tensor(v), dropout_p=1.0)


@pytest.mark.parametrize("dropout_p", [0.0, 0.5])
def test_fully_padded_rows_give_zeros_and_zero_grads(dropout_p):
    rng = np.random.default_rng(1)
    q, k, v = [Tensor(rng.standard_normal((3, 2, 4, 5)), requires_grad=True) for _ in range(3)]
    pad = np.zeros((3, 4), bool)
    pad[1] = True  # batch item 1: every key is padding
    pad[2, 1:] = True
    tinyclip.manual_seed(0)
    out, weights = attention(q, k, v, key_padding_mask=Tensor(pad), dropout_p=dropout_p, return_weights=True)
    (out * out).sum().backward()
    for a in (out.data, weights.data, q.grad, k.grad, v.grad):
        assert np.isfinite(a).all()
    np.testing.assert_array_equal(out.data[1], 0.0)
    np.testing.assert_array_equal(weights.data[1], 0.0)
    for t in (q, k, v):
        np.testing.assert_array_equal(t.grad[1], 0.0)
    np.testing.assert_array_equal(weights.data[2, :, :, 1:], 0.0)  # padded keys get no weight...
    np.testing.assert_array_equal(k.grad[2, :, 1:], 0.0)  # ... and no gradient
    np.testing.assert_array_equal(v.grad[2, :, 1:], 0.0)


def test_float32_stays_float32():
    rng = np.random.default_rng(2)
    q, k, v = [Tensor(rng.standard_normal((2, 3, 4, 8)).astype(np.float32), requires_grad=True) for _ in range(3)]
    pad = np.array([[False, False, True, True], [False] * 4])
    out, weights = attention(q, k, v, key_padding_mask=pad, dropout_p=0.1, return_weights=True)
    out.sum().backward()
    assert out.dtype == weights.dtype == np.float32
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == np.float32


def test_only_value_grad_and_no_grad_mode():
    rng = np.random.default_rng(3)
    q, k = Tensor(rng.standard_normal((1, 1, 2, 3))), Tensor(rng.standard_normal((1, 1, 3, 3)))
    v = Tensor(rng.standard_normal((1, 1, 3, 2)), requires_grad=True)
    attention(q, k, v).sum().backward()
    _, weights = attention_by_loops(q.data, k.data, v.data)
    np.testing.assert_allclose(v.grad, weights.swapaxes(-1, -2) @ np.ones((1, 1, 2, 2)), rtol=1e-12)
    with tinyclip.no_grad():
        out = attention(q, k, v)
    assert not out.requires_grad and out.creator is None


def test_input_errors():
    x = Tensor(np.zeros((2, 1, 3, 4)))
    with pytest.raises(ValueError, match="N, heads"):
        attention(Tensor(np.zeros((3, 4))), x, x)
    with pytest.raises(ValueError, match="do not fit"):
        attention(x, Tensor(np.zeros((2, 1, 3, 5))), x)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(x, x, x, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(TypeError, match="bool"):
        attention(x, x, x, key_padding_mask=np.ones((2, 3), np.int64))


@needs_torch
@pytest.mark.parametrize("masked", [False, True])
def test_matches_torch(masked):
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((3, 2, 5, 8)), rng.standard_normal((3, 2, 7, 8)), rng.standard_normal((3, 2, 7, 6))
    pad = rng.random((3, 7)) < 0.4 if masked else None
    if masked:
        pad[:, 0] = False  # torch gives NaN for fully padded rows; ours gives 0 (tested above)
    gy = rng.standard_normal((3, 2, 5, 6))
    ours = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = attention(*ours, key_padding_mask=pad)
    out.backward(gy)
    theirs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    allowed = None if pad is None else torch.tensor(~pad)[:, None, None, :]  # torch: True = take part
    ref = torch.nn.functional.scaled_dot_product_attention(*theirs, attn_mask=allowed)
    ref.backward(torch.tensor(gy))
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-9, atol=1e-12)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-8, atol=1e-11)
