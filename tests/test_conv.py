"""conv2d and max_pool2d: against by-definition loops (float64), finite differences, and PyTorch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyclip import Tensor, backend, gradcheck, no_grad
from tinyclip.functional.conv import col2im, conv2d, im2col, max_pool2d


# ---------------------------------------------------------------------------
# references: plain loops over output pixels, NCHW, float64
# ---------------------------------------------------------------------------

def naive_conv2d(x, w, b, stride, padding):
    """x (N, C, H, W), w (O, C, kh, kw), b (O,) or None → (N, O, Ho, Wo), straight from the definition."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for r in range(Ho):
                for c in range(Wo):
                    window = xp[n, :, r * sh:r * sh + kh, c * sw:c * sw + kw]
                    y[n, o, r, c] = (window * w[o]).sum() + (b[o] if b is not None else 0.0)
    return y


def naive_max_pool2d(x, k, s, gy=None):
    """x (N, C, H, W) → (y, dx for the output gradient gy): max of each window, its gradient to the
    window's first maximum in row-major order."""
    (kh, kw), (sh, sw) = k, s
    N, C, H, W = x.shape
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    y = np.zeros((N, C, Ho, Wo))
    gx = np.zeros_like(x, dtype=np.float64)
    for n in range(N):
        for ch in range(C):
            for r in range(Ho):
                for c in range(Wo):
                    window = x[n, ch, r * sh:r * sh + kh, c * sw:c * sw + kw]
                    y[n, ch, r, c] = window.max()
                    i, j = np.unravel_index(np.argmax(window), window.shape)  # the first maximum
                    if gy is not None:
                        gx[n, ch, r * sh + i, c * sw + j] += gy[n, ch, r, c]
    return y, gx


def to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def to_nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def pair(v):
    return (v, v) if isinstance(v, int) else v


# ---------------------------------------------------------------------------
# conv2d forward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1),
    ((2, 3, 7, 6), (4, 3, 3, 3), 2, 1),
    ((1, 2, 9, 5), (3, 2, 3, 2), 2, 2),          # rectangular kernel, odd sizes
    ((2, 2, 6, 8), (2, 2, 1, 4), (1, 2), (0, 1)),  # per-axis stride and padding
    ((3, 4, 5, 5), (2, 4, 5, 5), 1, 2),
    ((1, 3, 4, 4), (2, 3, 1, 1), 1, 0),          # 1×1 kernel
    ((2, 1, 8, 8), (2, 1, 3, 3), 3, 0),          # stride larger than a remainder
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv2d_forward_matches_loops(x_shape, w_shape, stride, padding, channels_last, with_bias):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if with_bias else None
    expected = naive_conv2d(x, w, b, pair(stride), pair(padding))
    xin = to_nhwc(x) if channels_last else x
    y = conv2d(Tensor(xin), Tensor(w), None if b is None else Tensor(b), stride, padding, channels_last)
    got = to_nchw(y.data) if channels_last else y.data
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_conv2d_rejects_bad_shapes():
    x = Tensor(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, Tensor(np.zeros((2, 4, 3, 3))))
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(x, Tensor(np.zeros((2, 3, 7, 7))))


def test_im2col_and_col2im_are_adjoint():
    """<im2col(x), c> = <x, col2im(c)>: col2im is the exact gradient of im2col."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 6, 3))
    for k, s, p in [(3, 1, 1), ((3, 2), (2, 1), (2, 0)), (2, 2, 0)]:
        cols = im2col(x, k, s, p)
        c = rng.standard_normal(cols.shape)
        back = col2im(c, x.shape, k, s, p)
        assert back.shape == x.shape
        np.testing.assert_allclose((cols * c).sum(), (x * back).sum(), rtol=1e-12)


# ---------------------------------------------------------------------------
# conv2d backward: finite differences over drawn shapes
# ---------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(3, 7)), draw(st.integers(3, 7))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    return dict(x=(N, C, H, W), w=(O, C, kh, kw), stride=stride, padding=padding,
                bias=draw(st.booleans()), channels_last=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=15, deadline=None)
@given(conv_cases())
def test_conv2d_gradcheck(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x"])
    if case["channels_last"]:
        x = to_nhwc(x)
    inputs = [x, rng.standard_normal(case["w"])]
    if case["bias"]:
        inputs.append(rng.standard_normal(case["w"][0]))

    def fn(*ts):
        return conv2d(*ts, stride=case["stride"], padding=case["padding"],
                      channels_last=case["channels_last"])

    gradcheck(fn, inputs)


def test_conv2d_backward_twice_with_retain_graph():
    """The second backward rebuilds the patch matrix that the first one gave back."""
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((2, 3, 6, 6)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    y = conv2d(x, w, padding=1)
    gy = rng.standard_normal(y.shape)
    y.backward(gy, retain_graph=True)
    gx, gw = x.grad.copy(), w.grad.copy()
    y.backward(gy)
    np.testing.assert_allclose(x.grad, 2 * gx, rtol=1e-12)
    np.testing.assert_allclose(w.grad, 2 * gw, rtol=1e-12)


def test_conv2d_reused_buffers_are_never_shared():
    """Patch matrices big enough to be pooled (> 1 MB): two live graphs of the same shape and a
    no-grad forward in between must each keep their own buffer."""
    rng = np.random.default_rng(4)
    shape, w_shape = (2, 32, 32, 8), (4, 8, 3, 3)   # cols: 2048 × 72 float64 ≈ 1.2 MB
    xs = [rng.standard_normal(shape) for _ in range(3)]
    w0 = rng.standard_normal(w_shape)
    gys = [rng.standard_normal((2, 32, 32, 4)) for _ in range(2)]

    def grads_alone(x, gy):
        X, W = Tensor(x, requires_grad=True), Tensor(w0, requires_grad=True)
        conv2d(X, W, padding=1, channels_last=True).backward(gy)
        return X.grad, W.grad

    expected = [grads_alone(xs[0], gys[0]), grads_alone(xs[1], gys[1])]
    X0, X1, W = (Tensor(xs[0], requires_grad=True), Tensor(xs[1], requires_grad=True),
                 Tensor(w0, requires_grad=True))
    y0 = conv2d(X0, W, padding=1, channels_last=True)
    y1 = conv2d(X1, W, padding=1, channels_last=True)
    with no_grad():
        conv2d(Tensor(xs[2]), W, padding=1, channels_last=True)
    y0.backward(gys[0])
    y1.backward(gys[1])
    np.testing.assert_allclose(X0.grad, expected[0][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(X1.grad, expected[1][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(W.grad, expected[0][1] + expected[1][1], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# max_pool2d
# ---------------------------------------------------------------------------

POOL_CASES = [  # x shape (NCHW), kernel, stride
    ((2, 3, 8, 8), 2, None),        # the fast case: stride = kernel, sizes divide
    ((1, 2, 7, 9), 2, None),        # remainders are dropped (floor mode)
    ((2, 2, 9, 7), 3, 2),           # overlapping windows
    ((1, 1, 6, 5), (2, 3), (1, 2)),  # rectangular, per-axis stride
    ((1, 2, 5, 5), 3, 3),
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("x_shape, kernel, stride", POOL_CASES)
def test_max_pool2d_matches_loops(x_shape, kernel, stride, channels_last):
    rng = np.random.default_rng(5)
    # Rounded values: ties happen, and the gradient must go to the first maximum of each window.
    x = np.round(rng.standard_normal(x_shape), 1)
    y_ref, _ = naive_max_pool2d(x, pair(kernel), pair(stride or kernel))
    gy = rng.standard_normal(y_ref.shape)
    _, gx_ref = naive_max_pool2d(x, pair(kernel), pair(stride or kernel), gy)

    X = Tensor(to_nhwc(x) if channels_last else x, requires_grad=True)
    y = max_pool2d(X, kernel, stride, channels_last)
    y.backward(to_nhwc(gy) if channels_last else gy)
    got_y = to_nchw(y.data) if channels_last else y.data
    got_gx = to_nchw(X.grad) if channels_last else X.grad
    np.testing.assert_array_equal(got_y, y_ref)
    np.testing.assert_allclose(got_gx, gx_ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("x_shape, kernel, stride", POOL_CASES)
def test_max_pool2d_gradcheck(x_shape, kernel, stride, channels_last):
    rng = np.random.default_rng(6)
    # Distinct values 0.01 apart: the finite-difference steps cannot change a window's winner.
    x = rng.permutation(int(np.prod(x_shape))).reshape(x_shape) * 0.01
    x = to_nhwc(x) if channels_last else x
    gradcheck(lambda t: max_pool2d(t, kernel, stride, channels_last), [x])


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool2d_ties_send_the_gradient_to_one_element(channels_last):
    x = np.full((2, 3, 6, 4), 0.5)
    X = Tensor(to_nhwc(x) if channels_last else x, requires_grad=True)
    y = max_pool2d(X, 2, channels_last=channels_last)
    gy = np.random.default_rng(7).uniform(1, 2, size=y.shape)  # nonzero everywhere
    y.backward(gy)
    gx = to_nchw(X.grad) if channels_last else X.grad
    gy = to_nchw(gy) if channels_last else gy
    windows = gx.reshape(2, 3, 3, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 2, 4)
    np.testing.assert_allclose(windows.sum(-1), gy, rtol=1e-15)
    assert ((windows != 0).sum(-1) == 1).all()
    assert (windows[..., 0] == gy).all()  # the first element of each window


# ---------------------------------------------------------------------------
# dtype: float32 in, float32 out and float32 gradients
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_stays_float32(channels_last):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    X = Tensor(to_nhwc(x) if channels_last else x, requires_grad=True)
    W = Tensor(rng.standard_normal((4, 3, 3, 3), dtype=np.float32), requires_grad=True)
    B = Tensor(np.zeros(4, dtype=np.float32), requires_grad=True)
    y = conv2d(X, W, B, padding=1, channels_last=channels_last)
    p = max_pool2d(y, 2, channels_last=channels_last)
    q = max_pool2d(y, 3, 2, channels_last=channels_last)
    assert y.dtype == p.dtype == q.dtype == np.float32
    (p.sum() + q.sum()).backward()
    for t in (X, W, B):
        assert t.grad.dtype == np.float32 and t.grad.shape == t.shape


# ---------------------------------------------------------------------------
# every backend (CuPy where a GPU is) against NumPy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
def test_same_results_on_every_backend(xp, channels_last):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 9, 8))
    x = to_nhwc(x) if channels_last else x
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    results = []
    for module in (np, xp):
        X, W, B = (Tensor(module.asarray(a), requires_grad=True) for a in (x, w, b))
        h = conv2d(X, W, B, stride=1, padding=1, channels_last=channels_last)
        h = conv2d(h.relu(), Tensor(module.asarray(w[:, :1].repeat(4, axis=1))), None, 2, 2, channels_last)
        y = max_pool2d(h, 3, 1, channels_last) + max_pool2d(h, 2, channels_last=channels_last).sum()
        y.sum().backward()
        results.append([backend.to_numpy(a) for a in (y.data, X.grad, W.grad, B.grad)])
    for ours, reference in zip(*results[::-1]):
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# against PyTorch
# ---------------------------------------------------------------------------

def test_against_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (a benchmark-only dependency)")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 10, 9))
    w, b = rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    F = torch.nn.functional
    yt = F.max_pool2d(torch.relu(F.conv2d(xt, wt, bt, stride=1, padding=1)), 2)
    gy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(gy))
    for channels_last in (False, True):
        X = Tensor(to_nhwc(x) if channels_last else x, requires_grad=True)
        W, B = Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
        y = max_pool2d(conv2d(X, W, B, 1, 1, channels_last).relu(), 2, channels_last=channels_last)
        y.backward(to_nhwc(gy) if channels_last else gy)
        got_y = to_nchw(y.data) if channels_last else y.data
        got_gx = to_nchw(X.grad) if channels_last else X.grad
        np.testing.assert_allclose(got_y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got_gx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(W.grad, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(B.grad, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels_last", [True, False])
def test_conv2d_in_chunks_of_images_equals_one_chunk(monkeypatch, channels_last):
    """conv2d runs a few images at a time: chunks of 2 of 5 images (the last one short) give the whole batch's values."""
    from tinyclip import threads
    threads._setup()
    monkeypatch.setitem(threads._state, "workers", 1)  # one thread: the chunks alone decide
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((5, 6, 7, 3) if channels_last else (5, 3, 6, 7))
    w0, b0 = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    results = []
    for chunk_bytes in (10 ** 9, 2 * 6 * 7 * 27 * 8):  # the whole batch; two images of patch matrix (float64)
        monkeypatch.setattr(threads, "CHUNK_BYTES", chunk_bytes)
        assert len(threads.batch_chunks(np, 5, 6 * 7 * 27 * 8)) == (1 if chunk_bytes == 10 ** 9 else 3)
        x, w, b = (Tensor(a, requires_grad=True) for a in (x0, w0, b0))
        y = conv2d(x, w, b, stride=1, padding=1, channels_last=channels_last)
        (y * y).sum().backward()
        results.append([y.data, x.grad, w.grad, b.grad])
    for whole, chunked in zip(*results):
        np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)
