"""The Tensor and its graph: construction and dtype rules, grad mode, and backward's semantics."""

import gc
import weakref

import numpy as np
import pytest

import tinyclip
from tinyclip import Function, Tensor, backend, functional as F, no_grad
from tinyclip.tensor import is_grad_enabled


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    """These tests compare with NumPy directly, so new tensors stay on the CPU even where a GPU is."""
    monkeypatch.setitem(backend._state, "device", "cpu")


# ---------------------------------------------------------------------------
# construction and dtype rules
# ---------------------------------------------------------------------------

def test_python_floats_become_float32():
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor([[1, 2.5], [3, 4]]).dtype == np.float32  # mixed list: float


def test_python_floats_follow_the_default_dtype():
    with backend.default_dtype_as(np.float64):
        assert Tensor([1.0]).dtype == np.float64


def test_numpy_arrays_keep_their_dtype_and_are_not_copied():
    a = np.arange(4.0)  # float64
    t = Tensor(a)
    assert t.dtype == np.float64
    assert t.data is a
    assert Tensor(np.zeros(2, np.float16)).dtype == np.float16


def test_ints_stay_ints():
    assert Tensor(3).dtype.kind == "i"
    assert Tensor([1, 2, 3]).dtype.kind == "i"
    assert Tensor(np.array([1, 2], np.int32)).dtype == np.int32
    assert Tensor([True, False]).dtype == np.bool_


def test_numpy_scalar_becomes_a_0d_array():
    t = Tensor(np.float64(2.5))
    assert isinstance(t.data, np.ndarray) and t.shape == () and t.dtype == np.float64


def test_explicit_dtype_and_tensor_input():
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert Tensor(np.ones(2, np.float64), dtype=np.float32).dtype == np.float32
    a = Tensor(np.ones(3))
    b = Tensor(a)
    assert b.data is a.data and b.creator is None


@pytest.mark.parametrize("op", [
    lambda x: x + 1.5, lambda x: 1.5 + x, lambda x: x - 2, lambda x: 2 - x, lambda x: x * 0.1,
    lambda x: 0.1 * x, lambda x: x / 3.0, lambda x: 3.0 / x, lambda x: x ** 2, lambda x: x ** 0.5,
    lambda x: -x, lambda x: x * np.float64(0.5), lambda x: np.float64(2.0) * x, lambda x: x / np.sqrt(4.0),
])
def test_python_and_numpy_scalars_keep_float32(op):
    x = Tensor(np.array([1.0, 4.0], np.float32), requires_grad=True)
    y = op(x)
    assert isinstance(y, Tensor)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_int_tensor_times_a_float_is_not_truncated():
    y = Tensor([1, 2, 3]) * 0.5
    assert y.dtype.kind == "f"  # NumPy promotes int64 with the float32 number to float64
    np.testing.assert_allclose(y.data, [0.5, 1.0, 1.5])
    assert (Tensor(np.array([1, 2], np.int32)) + 1).dtype == np.int32


def test_ndarray_on_the_left_defers_to_tensor():
    x = Tensor(np.ones(3), requires_grad=True)
    y = np.arange(3.0) * x
    assert isinstance(y, Tensor) and y.requires_grad
    z = np.ones(3) - x
    assert isinstance(z, Tensor)
    np.testing.assert_array_equal(z.data, np.zeros(3))


# ---------------------------------------------------------------------------
# properties and conversions
# ---------------------------------------------------------------------------

def test_properties():
    t = Tensor(np.zeros((2, 3, 4), np.float32))
    assert t.shape == (2, 3, 4) and t.ndim == 3 and t.size == 24 and len(t) == 2
    assert t.dtype == np.float32 and t.device == "cpu" and t.xp is np
    assert t.is_leaf and not t.requires_grad and t.grad is None and t.creator is None


def test_repr_and_item():
    assert repr(Tensor([1.0, 2.0])) == "tensor([1., 2.], dtype=float32)"
    assert "requires_grad=True" in repr(Tensor([1.0], requires_grad=True))
    assert Tensor(np.float64(3.25)).item() == 3.25


def test_numpy_returns_the_data():
    a = np.arange(3.0)
    assert Tensor(a).numpy() is a


def test_detach_cuts_the_graph_but_shares_data():
    x = Tensor(np.arange(3.0), requires_grad=True)
    y = x * 2
    d = y.detach()
    assert d.data is y.data
    assert d.creator is None and not d.requires_grad and d.is_leaf
    assert not y.is_leaf


def test_astype_is_differentiable():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.astype(np.float32)
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


# ---------------------------------------------------------------------------
# grad mode
# ---------------------------------------------------------------------------

def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2).exp().sum()
    assert is_grad_enabled()
    assert not y.requires_grad and y.creator is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_nests_and_restores_after_errors():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            with no_grad():
                pass
            assert not is_grad_enabled()
            1 / 0
    assert is_grad_enabled()


def test_constant_inputs_record_no_graph():
    y = Tensor(np.ones(3)) * 2
    assert y.creator is None and not y.requires_grad


def test_unrecorded_function_drops_saved_arrays():
    fn = F.arithmetic.Mul()
    fn(Tensor(np.ones(2)), Tensor(np.ones(2)))
    assert fn.__dict__ == {}


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------

def test_leaf_gradients():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([3.0, 5.0]), requires_grad=True)
    c = Tensor(np.array([7.0, 7.0]))  # no grad wanted
    (a * b + c).sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0, 5.0])
    np.testing.assert_array_equal(b.grad, [1.0, 2.0])
    assert c.grad is None


def test_backward_on_a_leaf():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_tensor_used_several_times_accumulates():
    x = Tensor(np.array([0.5, -2.0, 3.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_diamond_graph():
    """a feeds two branches that meet again: a's gradient must be complete before it flows on."""
    x = Tensor(np.array([1.5, -0.5]), requires_grad=True)
    a = x * 2
    b = a + 1
    c = a * 3
    d = (b * c).sum()  # d = (2x + 1)(6x) = 12x² + 6x
    d.backward()
    np.testing.assert_allclose(x.grad, 24 * x.data + 6)


def test_retain_graph_twice_doubles():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])


def test_second_backward_without_retain_graph_is_an_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="already freed.*retain_graph=True"):
        y.backward()


def test_backward_through_a_freed_shared_part_is_an_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x.exp()
    (h * 2).sum().backward()
    with pytest.raises(RuntimeError, match="already freed"):
        (h * 3).sum().backward()


def test_zero_grad():
    x = Tensor(np.array([1.0]), requires_grad=True)
    (x * 3).sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 5).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0])


def test_intermediates_keep_no_grad_unless_retained():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 3
    k = x * 4
    h.retain_grad()
    (h * h + k).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)
    assert k.grad is None
    np.testing.assert_allclose(x.grad, 18 * x.data + 4)


def test_retain_grad_on_the_root():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * 2
    y.retain_grad()
    y.backward(np.array([1.0, -1.0]))
    np.testing.assert_array_equal(y.grad, [1.0, -1.0])
    np.testing.assert_array_equal(x.grad, [2.0, -2.0])


def test_explicit_grad_and_its_shape():
    x = Tensor(np.array([[1.0, 2.0]]), requires_grad=True)
    y = x * 3
    with pytest.raises(ValueError, match=r"grad shape \(2,\) != tensor shape \(1, 2\)"):
        y.backward(np.ones(2))
    y.backward(Tensor(np.array([[1.0, 2.0]])))
    np.testing.assert_array_equal(x.grad, [[3.0, 6.0]])


def test_backward_without_grad_needs_one_element():
    """As in PyTorch: a non-scalar needs an explicit grad; a one-element tensor's default is 1."""
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"one-element tensor, got shape \(2, 2\)"):
        (x * 5).backward()
    assert x.grad is None
    (x * 5).backward(np.ones((2, 2)))
    np.testing.assert_array_equal(x.grad, np.full((2, 2), 5.0))
    w = Tensor(np.array([[2.0]]), requires_grad=True)
    (w * 3).backward()
    np.testing.assert_array_equal(w.grad, [[3.0]])


def test_long_chain_has_no_recursion_limit():
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 10_000], rtol=1e-10)


def test_long_chain_can_be_dropped_without_backward():
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y + 1.0
    del y  # deallocating a deep graph must not overflow the C stack
    gc.collect()


def test_saved_buffers_are_freed_after_backward():
    x = Tensor(np.array([0.5, 1.5]), requires_grad=True)
    h = x * 3
    saved = weakref.ref(h.data)  # Log saves its input array for backward
    y = h.log()
    fn = y.creator
    del h
    gc.collect()
    assert saved() is not None and fn.__dict__  # kept alive by the graph
    y.sum().backward()
    gc.collect()
    assert fn.__dict__ == {}
    assert saved() is None
    np.testing.assert_allclose(x.grad, 1 / x.data)


def test_retain_graph_keeps_buffers():
    x = Tensor(np.array([0.5, 1.5]), requires_grad=True)
    y = x.log()
    y.sum().backward(retain_graph=True)
    assert "x" in y.creator.__dict__


def test_unused_outputs_of_a_multi_output_op_get_zeros():
    x = Tensor(np.arange(6.0), requires_grad=True)
    a, b, c = F.split(x, 3)
    (b * 2).sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 0, 2, 2, 0, 0])


def test_no_gradient_flows_into_constant_inputs():
    w = Tensor(np.ones(2), requires_grad=True)
    c = Tensor(np.ones(2))
    (w * c).sum().backward()
    assert c.grad is None


class _WrongCount(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        return gy  # one gradient for two inputs


class _WrongShape(Function):
    def forward(self, a):
        return a * 2

    def backward(self, gy):
        return gy.sum()  # a scalar for a vector input


def test_bad_backward_count_is_reported():
    a = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="returned 1 grads for 2 inputs"):
        _WrongCount()(a, a).sum().backward()


def test_bad_backward_shape_is_reported():
    a = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"_WrongShape.*grad shape \(\) != input shape \(2,\)"):
        _WrongShape()(a).sum().backward()


def test_manual_seed_is_reset_between_tests():
    """The autouse fixture in conftest reseeds to 0 before every test."""
    first = backend.get_rng(np).random()
    tinyclip.manual_seed(0)
    assert backend.get_rng(np).random() == first
