"""Every op of arithmetic, shape and reduce: forward against NumPy, backward against finite differences.

Shapes and values come from hypothesis; all gradient checks run in float64 through
``tinyclip.gradcheck``. The last section tests the gradient checker itself: it must
catch a wrong backward and say where.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinyclip import Function, GradcheckError, Tensor, backend, functional as F, gradcheck


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    """These tests compare with NumPy directly, so new tensors stay on the CPU even where a GPU is."""
    monkeypatch.setitem(backend._state, "device", "cpu")

FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------

def values(lo=-2.0, hi=2.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def arrays(shape, lo=-2.0, hi=2.0):
    return hnp.arrays(np.float64, shape, elements=values(lo, hi))


def away_from_zero(shape, lo=0.2, hi=2.0):
    """Values with |x| in [lo, hi] and either sign (for relu, division)."""
    return st.tuples(arrays(shape, lo, hi), hnp.arrays(np.bool_, shape)).map(
        lambda pair: np.where(pair[1], -pair[0], pair[0]))


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3)

# Hand-picked pairs so the awkward cases are always covered, whatever hypothesis draws.
FIXED_PAIRS = [((3, 4), (4,)), ((2, 1, 3), (4, 3)), ((1,), (2, 3)), ((), (2, 2)), ((1, 3), (2, 1)),
               ((1, 1, 2), (2,)), ((2, 3), (2, 3)), ((1, 4), (1, 4))]


def check(fn, *inputs, **kwargs):
    assert gradcheck(fn, list(inputs), **kwargs)


def t(a):
    return Tensor(a)


# ---------------------------------------------------------------------------
# binary arithmetic with broadcasting
# ---------------------------------------------------------------------------

BINARY = {
    "add": (F.add, np.add, lambda a, b: a + b),
    "sub": (F.sub, np.subtract, lambda a, b: a - b),
    "mul": (F.mul, np.multiply, lambda a, b: a * b),
    "div": (F.div, np.divide, lambda a, b: a / b),
}


@pytest.mark.parametrize("name", list(BINARY))
@FEW
@given(data=st.data(), pair=broadcast_pairs)
def test_binary_broadcasting(name, data, pair):
    op, ref, operator = BINARY[name]
    sa, sb = pair.input_shapes
    a = data.draw(arrays(sa))
    b = data.draw(away_from_zero(sb, 0.5, 2.0) if name == "div" else arrays(sb))
    y = op(t(a), t(b))
    assert y.shape == pair.result_shape
    np.testing.assert_allclose(y.data, ref(a, b))
    np.testing.assert_allclose(operator(t(a), t(b)).data, ref(a, b))
    check(op, a, b)


@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("sa, sb", FIXED_PAIRS + [(b, a) for a, b in FIXED_PAIRS])
def test_binary_fixed_shapes(name, sa, sb):
    op, ref, _ = BINARY[name]
    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa)
    b = rng.uniform(0.5, 2.0, sb)
    np.testing.assert_allclose(op(t(a), t(b)).data, ref(a, b))
    check(op, a, b)


@pytest.mark.parametrize("name", list(BINARY))
@FEW
@given(x=arrays((2, 3), 0.5, 2.0), c=values(0.5, 3.0))
def test_binary_with_python_numbers(name, x, c):
    op, ref, _ = BINARY[name]
    np.testing.assert_allclose(op(t(x), c).data, ref(x, c))
    np.testing.assert_allclose(op(c, t(x)).data, ref(c, x))
    check(lambda a: op(a, c), x)
    check(lambda a: op(c, a), x)


def test_gradient_reaches_only_inputs_that_need_it():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    b = Tensor(np.full(3, 2.0))
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((2, 3), 2.0))
    assert b.grad is None


# ---------------------------------------------------------------------------
# pow and the unary ops
# ---------------------------------------------------------------------------

@FEW
@given(data=st.data(), shape=shapes, p=st.sampled_from([-2, -1, -0.5, 0.5, 1, 1.5, 2, 3]))
def test_pow_positive_base(data, shape, p):
    x = data.draw(arrays(shape, 0.5, 2.0))
    np.testing.assert_allclose(F.pow(t(x), p).data, x ** p)
    np.testing.assert_allclose((t(x) ** p).data, x ** p)
    check(lambda a: a ** p, x)


@FEW
@given(x=arrays((3, 2)), p=st.sampled_from([0, 1, 2, 3]))
def test_pow_integer_exponent_any_sign(x, p):
    np.testing.assert_allclose((t(x) ** p).data, x ** p)
    check(lambda a: a ** p, x)


def test_pow_rejects_tensor_exponent():
    with pytest.raises(TypeError, match="Python number"):
        F.pow(t(np.ones(2)), t(np.ones(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


UNARY = {  # name: (op, reference, strategy of inputs for a shape)
    "neg": (F.neg, np.negative, arrays),
    "exp": (F.exp, np.exp, lambda s: arrays(s, -3.0, 3.0)),
    "log": (F.log, np.log, lambda s: arrays(s, 0.2, 5.0)),
    "sqrt": (F.sqrt, np.sqrt, lambda s: arrays(s, 0.2, 5.0)),
    "tanh": (F.tanh, np.tanh, lambda s: arrays(s, -3.0, 3.0)),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), lambda s: arrays(s, -6.0, 6.0)),
    "relu": (F.relu, lambda x: np.maximum(x, 0), lambda s: away_from_zero(s, 0.05, 3.0)),
    "gelu": (F.gelu, _gelu_tanh, lambda s: arrays(s, -4.0, 4.0)),
}


@pytest.mark.parametrize("name", list(UNARY))
@FEW
@given(data=st.data(), shape=shapes)
def test_unary(name, data, shape):
    op, ref, strategy = UNARY[name]
    x = data.draw(strategy(shape))
    y = op(t(x))
    assert y.shape == x.shape and y.dtype == np.float64
    np.testing.assert_allclose(y.data, ref(x), rtol=1e-12, atol=1e-12)
    check(op, x)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_methods_and_float32(name):
    op = UNARY[name][0]
    x = Tensor(np.array([0.5, 1.5, 2.5], np.float32))
    y = getattr(x, name)() if name != "neg" else -x
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.data, op(x).data)


def test_sigmoid_does_not_overflow():
    with np.errstate(all="raise"):
        y = F.sigmoid(t(np.array([-1000.0, 0.0, 1000.0])))
    np.testing.assert_allclose(y.data, [0.0, 0.5, 1.0])


def test_gelu_tanh_approximation_is_close_to_exact():
    x = np.linspace(-5, 5, 101)
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(F.gelu(t(x)).data, exact, atol=1e-3)


def test_relu_gradient_is_a_step():
    x = Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])


def test_cast_gradcheck():
    # Through float32 the finite differences are only good to ~1e-7 / eps: take a large eps
    # (exact for this quadratic) so rounding stays small.
    check(lambda a: F.cast(a, np.float32).astype(np.float64) * a, np.array([0.5, -1.0]), eps=1e-2, atol=1e-4)


# ---------------------------------------------------------------------------
# matmul and linear
# ---------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 2)),          # plain 2-D
    ((1, 4), (4, 1)),          # batch of one row, one column
    ((2, 3, 4), (2, 4, 5)),    # batched
    ((1, 3, 4), (2, 4, 2)),    # broadcast batch on the left
    ((2, 3, 4), (1, 4, 2)),    # broadcast batch on the right
    ((2, 3, 4), (4, 2)),       # batch @ matrix (the folded path)
    ((2, 2, 3, 4), (4, 2)),    # two batch axes @ matrix
    ((3, 4), (2, 4, 2)),       # matrix @ batch
    ((2, 1, 3, 4), (3, 4, 2)), # different ranks, both broadcast
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul_shapes(sa, sb):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    y = F.matmul(t(a), t(b))
    np.testing.assert_allclose(y.data, a @ b)
    np.testing.assert_allclose((t(a) @ t(b)).data, a @ b)
    check(F.matmul, a, b)


@FEW
@given(data=st.data(), batch=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3),
       m=st.integers(1, 3), k=st.integers(1, 3), n=st.integers(1, 3))
def test_matmul_hypothesis(data, batch, m, k, n):
    # Either side may drop or shrink batch axes to 1: broadcasting of the batch.
    left = data.draw(st.sampled_from([batch, tuple(1 for _ in batch), ()]))
    right = data.draw(st.sampled_from([batch, batch[1:], ()]))
    a = data.draw(arrays(left + (m, k)))
    b = data.draw(arrays(right + (k, n)))
    np.testing.assert_allclose(F.matmul(t(a), t(b)).data, a @ b, atol=1e-12)
    check(F.matmul, a, b)


def test_matmul_needs_two_dims():
    with pytest.raises(ValueError, match="at least 2 dims"):
        F.matmul(t(np.ones(3)), t(np.ones((3, 2))))


@FEW
@given(data=st.data(), lead=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3),
       n_in=st.integers(1, 4), n_out=st.integers(1, 3), bias=st.booleans())
def test_linear(data, lead, n_in, n_out, bias):
    x = data.draw(arrays(lead + (n_in,)))
    w = data.draw(arrays((n_in, n_out)))
    if lead == ():
        x = x.reshape(1, n_in)  # matmul needs 2-D
    if bias:
        b = data.draw(arrays((n_out,)))
        np.testing.assert_allclose(F.linear(t(x), t(w), t(b)).data, x @ w + b, atol=1e-12)
        check(F.linear, x, w, b)
    else:
        np.testing.assert_allclose(F.linear(t(x), t(w)).data, x @ w, atol=1e-12)
        check(F.linear, x, w)


# ---------------------------------------------------------------------------
# shape ops
# ---------------------------------------------------------------------------

@FEW
@given(data=st.data(), shape=shapes)
def test_reshape(data, shape):
    x = data.draw(arrays(shape))
    targets = [(-1,), (x.size,), (1, -1), tuple(reversed(shape)), (x.size, 1, 1)]
    if len(shape) >= 1:
        targets.append((shape[0], -1))
    target = data.draw(st.sampled_from(targets))
    y = F.reshape(t(x), target)
    np.testing.assert_array_equal(y.data, x.reshape(target))
    np.testing.assert_array_equal(t(x).reshape(*target).data, x.reshape(target))
    check(lambda a: F.reshape(a, target), x)


@SOME
@given(data=st.data(), shape=nonscalar_shapes)
def test_transpose(data, shape):
    x = data.draw(arrays(shape))
    axes = data.draw(st.permutations(range(len(shape))))
    # Mix in negative axes: transpose((0, -1, 1)) means transpose((0, 2, 1)).
    signs = data.draw(st.lists(st.booleans(), min_size=len(axes), max_size=len(axes)))
    axes = tuple(a - len(shape) if s else a for a, s in zip(axes, signs))
    expected = np.transpose(x, axes)
    np.testing.assert_array_equal(F.transpose(t(x), axes).data, expected)
    np.testing.assert_array_equal(t(x).permute(*axes).data, expected)
    np.testing.assert_array_equal(t(x).transpose(axes).data, expected)
    check(lambda a: F.transpose(a, axes), x)


def test_transpose_default_reverses():
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(t(x).T.data, x.T)
    np.testing.assert_array_equal(t(x).transpose().data, x.T)
    check(lambda a: a.T, x)


@SOME
@given(data=st.data(), shape=nonscalar_shapes)
def test_getitem_slices(data, shape):
    """Basic slicing: any start/stop and step, including negative steps and empty results."""
    x = data.draw(arrays(shape))
    index = tuple(data.draw(st.slices(n)) for n in shape)
    if data.draw(st.booleans()):  # sometimes an integer on the first axis too
        index = (data.draw(st.integers(-shape[0], shape[0] - 1)),) + index[1:]
    np.testing.assert_array_equal(F.getitem(t(x), index).data, x[index])
    np.testing.assert_array_equal(t(x)[index].data, x[index])
    check(lambda a: a[index], x)


@SOME
@given(data=st.data(), shape=nonscalar_shapes)
def test_getitem_integer_arrays_with_repeats(data, shape):
    x = data.draw(arrays(shape))
    n = shape[0]
    rows = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=6))
    index = np.array(rows)
    if len(shape) >= 2 and data.draw(st.booleans()):
        cols = data.draw(st.lists(st.integers(0, shape[1] - 1), min_size=len(rows), max_size=len(rows)))
        index = (index, np.array(cols))  # paired: picks elements x[r, c]
    np.testing.assert_array_equal(t(x)[index].data, x[index])
    check(lambda a: a[index], x)


def test_getitem_repeats_add_up():
    x = Tensor(np.arange(4.0), requires_grad=True)
    x[[0, 2, 2, 2, -1]].sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 0.0, 3.0, 1.0])


@SOME
@given(data=st.data(), shape=nonscalar_shapes)
def test_getitem_boolean_masks(data, shape):
    x = data.draw(arrays(shape))
    full = data.draw(st.booleans())
    mask = data.draw(hnp.arrays(np.bool_, shape if full else shape[:1]))
    np.testing.assert_array_equal(t(x)[mask].data, x[mask])
    check(lambda a: a[mask], x)


@pytest.mark.parametrize("index", [
    (Ellipsis, 1), (None, slice(None), 0), (slice(None, None, -1), Ellipsis, None),
    (np.array([1, 1, 0]), slice(1, None)), (slice(None), np.array([2, 0, 2])),
    1, -1, np.int64(1), [0, 1, 1],
])
def test_getitem_fixed(index):
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(t(x)[index].data, x[index])
    check(lambda a: a[index], x)


def test_getitem_with_tensor_index():
    x = np.arange(6.0)
    idx = Tensor(np.array([5, 0, 5]))
    np.testing.assert_array_equal(F.getitem(t(x), idx).data, x[[5, 0, 5]])
    np.testing.assert_array_equal(F.getitem(t(x), (idx,)).data, x[[5, 0, 5]])
    check(lambda a: a[idx], x)


@SOME
@given(data=st.data(), shape=nonscalar_shapes, pieces=st.integers(1, 3))
def test_concatenate(data, shape, pieces):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    xs = []
    for _ in range(pieces):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 3))
        xs.append(data.draw(arrays(tuple(s))))
    y = F.concatenate([t(x) for x in xs], axis=axis)
    np.testing.assert_array_equal(y.data, np.concatenate(xs, axis=axis))
    check(lambda *ts: F.concatenate(ts, axis=axis), *xs)


def test_concatenate_with_a_constant():
    a = Tensor(np.ones((2, 2)), requires_grad=True)
    F.concatenate([a, Tensor(np.zeros((1, 2)))], axis=0).sum().backward()
    np.testing.assert_array_equal(a.grad, np.ones((2, 2)))


@SOME
@given(data=st.data(), shape=shapes, count=st.integers(1, 3))
def test_stack(data, shape, count):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    xs = [data.draw(arrays(shape)) for _ in range(count)]
    np.testing.assert_array_equal(F.stack([t(x) for x in xs], axis=axis).data, np.stack(xs, axis=axis))
    check(lambda *ts: F.stack(ts, axis=axis), *xs)


@SOME
@given(data=st.data(), shape=nonscalar_shapes)
def test_split(data, shape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    if data.draw(st.booleans()):
        sections = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    else:
        sections = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    x = data.draw(arrays(shape))
    pieces = F.split(t(x), sections, axis=axis)
    assert isinstance(pieces, tuple)
    expected = np.split(x, sections, axis=axis)
    assert len(pieces) == len(expected)
    for p, e in zip(pieces, expected):
        np.testing.assert_array_equal(p.data, e)
    check(lambda a: F.split(a, sections, axis=axis), x)


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------

reduce_shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3)


def axes_for(ndim):
    """None, one axis (maybe negative), or a tuple of distinct axes (maybe negative)."""
    one = st.integers(-ndim, ndim - 1)
    several = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).flatmap(
        lambda axes: st.tuples(*[st.sampled_from([a, a - ndim]) for a in axes]))
    return st.one_of(st.none(), one, several)


REDUCE = {
    "sum": (F.sum, np.sum),
    "mean": (F.mean, np.mean),
    "var": (F.var, np.var),  # population variance, ddof=0
}


@pytest.mark.parametrize("name", list(REDUCE))
@SOME
@given(data=st.data(), shape=reduce_shapes, keepdims=st.booleans())
def test_reductions(name, data, shape, keepdims):
    op, ref = REDUCE[name]
    axis = data.draw(axes_for(len(shape)))
    x = data.draw(arrays(shape))
    y = op(t(x), axis, keepdims)
    expected = ref(x, axis=axis, keepdims=keepdims)
    assert y.shape == np.shape(expected)
    np.testing.assert_allclose(y.data, expected, atol=1e-12)
    np.testing.assert_allclose(getattr(t(x), name)(axis=axis, keepdims=keepdims).data, expected, atol=1e-12)
    check(lambda a: op(a, axis, keepdims), x)


@SOME
@given(data=st.data(), shape=reduce_shapes, keepdims=st.booleans())
def test_max(data, shape, keepdims):
    axis = data.draw(axes_for(len(shape)))
    size = int(np.prod(shape))
    # Distinct values 0.25 apart, so no finite-difference step can change the winner.
    order = data.draw(st.permutations(range(size)))
    x = (np.array(order, dtype=np.float64) - size / 2).reshape(shape) * 0.25
    y = F.max(t(x), axis, keepdims)
    expected = np.max(x, axis=axis, keepdims=keepdims)
    assert y.shape == np.shape(expected)
    np.testing.assert_array_equal(y.data, expected)
    np.testing.assert_array_equal(t(x).max(axis, keepdims).data, expected)
    check(lambda a: F.max(a, axis, keepdims), x)


@pytest.mark.parametrize("axis, keepdims", [(None, False), (None, True), (0, False), (1, True), (-1, False),
                                            ((0, 2), False), ((-1, 0), True)])
def test_max_ties_send_the_gradient_to_exactly_one_element(axis, keepdims):
    x = Tensor(np.ones((3, 2, 4)), requires_grad=True)  # every element ties
    y = F.max(x, axis, keepdims)
    gy = np.arange(1.0, y.size + 1).reshape(y.shape)  # distinct, so each output's share is traceable
    y.backward(gy)
    grad = x.grad
    assert np.count_nonzero(grad) == y.size  # one winner per output
    assert grad.sum() == gy.sum()
    # And it is the first position, as the docstring promises.
    axes = tuple(range(3)) if axis is None else tuple(a % 3 for a in np.atleast_1d(axis))
    moved = np.moveaxis(grad, axes, tuple(range(3 - len(axes), 3))).reshape(-1, int(np.prod([[3, 2, 4][a] for a in axes])))
    assert np.all(moved[:, 1:] == 0) and np.all(moved[:, 0] != 0)


def test_max_partial_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 1, 0], [1, 0, 0]])


def test_reductions_of_a_0d_tensor():
    x = np.array(2.5)
    for op in (F.sum, F.mean, F.max):
        np.testing.assert_array_equal(op(t(x)).data, 2.5)
        check(op, x)


# ---------------------------------------------------------------------------
# against PyTorch, when it is installed
# ---------------------------------------------------------------------------

def test_composite_expression_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x0, w0, b0 = rng.standard_normal((4, 3, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)

    def ours(x, w, b):
        h = F.gelu(F.linear(x, w, b))
        s = F.sigmoid(h).var(axis=-1, keepdims=True) + h.max(axis=(0, 2)).sum() / h.exp().mean()
        return (s * h[:, ::-1, [0, 0, 3]].tanh().sum(axis=0)).sum()

    def theirs(x, w, b):
        h = torch.nn.functional.gelu(x @ w + b, approximate="tanh")
        s = torch.sigmoid(h).var(dim=-1, keepdim=True, unbiased=False) + h.amax(dim=(0, 2)).sum() / h.exp().mean()
        return (s * h.flip(1)[:, :, [0, 0, 3]].tanh().sum(dim=0)).sum()

    xs = [Tensor(a, requires_grad=True) for a in (x0, w0, b0)]
    ts = [torch.tensor(a, requires_grad=True) for a in (x0, w0, b0)]
    y, ty = ours(*xs), theirs(*ts)
    y.backward()
    ty.backward()
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10)
    for a, ta in zip(xs, ts):
        np.testing.assert_allclose(a.grad, ta.grad.numpy(), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------
# the gradient checker itself
# ---------------------------------------------------------------------------

class _SquareForgotTwo(Function):
    """y = x², with a backward that forgot the factor 2."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return gy * self.x


class _MulWrongOnSecond(Function):
    """y = a * b, right for a, wrong for b at element (1, 2) only."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        gb = gy * self.a
        gb = gb.copy()
        gb[1, 2] *= 1.5
        return gy * self.b, gb


class _RightSquare(Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return 2 * gy * self.x


def test_gradcheck_passes_a_correct_op():
    assert gradcheck(lambda x: _RightSquare()(x), [np.array([1.0, -2.0, 3.0])]) is True


def test_gradcheck_catches_a_wrong_backward_and_names_the_element():
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(3,\)\) at element \(0,\)") as info:
        gradcheck(lambda x: _SquareForgotTwo()(x), [np.array([1.0, 2.0, 3.0])])
    assert "backward gives" in str(info.value) and "finite differences give" in str(info.value)


def test_gradcheck_names_the_second_input_and_its_element():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(1, 2, (2, 3)), rng.uniform(1, 2, (2, 3))
    with pytest.raises(GradcheckError, match=r"input 1 \(shape \(2, 3\)\) at element \(1, 2\)"):
        gradcheck(lambda x, y: _MulWrongOnSecond()(x, y), [a, b])


def test_gradcheck_fast_mode_passes_and_catches():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 40)), rng.standard_normal((40, 20))
    assert gradcheck(F.matmul, [a, b], directions=3)
    with pytest.raises(GradcheckError, match="input 0 .* along random direction 0"):
        gradcheck(lambda x: _SquareForgotTwo()(x), [rng.uniform(1, 2, (20, 20))], directions=2)
    with pytest.raises(GradcheckError, match="input 1 .* along random direction"):
        gradcheck(lambda x, y: _MulWrongOnSecond()(x, y), [rng.uniform(1, 2, (2, 3)), rng.uniform(1, 2, (2, 3))],
                  directions=4)


def test_gradcheck_runs_in_float64_and_leaves_inputs_alone():
    x32 = np.array([0.3, 0.7], np.float32)
    before = x32.copy()
    seen = []

    def fn(a):
        seen.append(a.dtype)
        return a * 0.1  # the Python number follows a's float64

    assert gradcheck(fn, [Tensor(x32, requires_grad=True)])
    assert set(seen) == {np.dtype(np.float64)}
    np.testing.assert_array_equal(x32, before)


def test_gradcheck_passes_integer_inputs_through():
    x = np.arange(5.0)
    idx = np.array([4, 4, 1])
    assert gradcheck(lambda a, i: a[i] * 2, [x, idx])


def test_gradcheck_multiple_outputs():
    assert gradcheck(lambda a: F.split(a, 2, axis=1), [np.random.default_rng(0).standard_normal((2, 4))])


def test_gradcheck_needs_a_differentiable_output():
    with pytest.raises(GradcheckError, match="no float output"):
        gradcheck(lambda a: Tensor(np.ones(2)), [np.ones(2)])


def test_gradcheck_restores_the_default_dtype_after_failure():
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: _SquareForgotTwo()(x), [np.array([1.0])])
    assert backend.default_dtype() is np.float32
