"""Edge cases found in review: nested index tuples, float64 operands in a float32 graph, huge gradients."""

import math

import numpy as np

import tinyclip.functional as F
from tinyclip import Tensor
from tinyclip.nn import Parameter
from tinyclip.optim import clip_grad_norm


def test_nested_tuple_index_accumulates_repeats():
    a = Tensor(np.arange(3.0, dtype=np.float32), requires_grad=True)
    a[((0, 0),)].sum().backward()
    np.testing.assert_array_equal(a.grad, [2, 0, 0])


def test_float64_operands_keep_a_float32_graph():
    x = Tensor(np.zeros(2, np.float32), requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(x, np.array([1.0, 0.0]))  # float64 targets
    loss.backward()
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32
    y = x * np.array([2.0, 3.0])  # a float64 array operand
    assert y.dtype == np.float32


def test_clip_grad_norm_survives_float32_overflow():
    p = Parameter(np.zeros(4, np.float32))
    p.grad = np.full(4, 1e30, np.float32)  # Σ g² overflows float32
    total = clip_grad_norm([p], 1.0)
    assert math.isclose(total, 2e30, rel_tol=1e-5)
    assert np.all(np.isfinite(p.grad)) and math.isclose(float(np.linalg.norm(p.grad)), 1.0, rel_tol=1e-3)


def test_clip_grad_norm_leaves_non_finite_grads_visible():
    p = Parameter(np.zeros(2, np.float32))
    p.grad = np.array([np.inf, 1.0], np.float32)
    assert not math.isfinite(clip_grad_norm([p], 1.0))
    assert np.isinf(p.grad[0]) and p.grad[1] == 1.0
