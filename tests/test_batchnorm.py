"""batch_norm2d and nn.BatchNorm2d: finite-difference gradients, a by-definition reference built from
primitive Tensor ops, running statistics, evaluation mode, PyTorch, float32, buffers in the state_dict."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyclip import Tensor, backend, gradcheck, nn
from tinyclip import functional as F
from tinyclip.functional.norm import batch_norm2d

try:
    import torch
except ImportError:  # reference tests only
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (used only as a reference)")


def reference_batch_norm2d(x, w, b, eps=1e-5, channels_last=True, mean=None, var=None):
    """By definition, from primitive ops (so autograd gives its gradient): batch statistics unless given."""
    axes = (0, 1, 2) if channels_last else (0, 2, 3)
    per_channel = (lambda v: v) if channels_last else (lambda v: v.reshape(-1, 1, 1))
    if mean is None:
        mean = F.mean(x, axis=axes, keepdims=True)
        centred = x - mean
        var = F.mean(centred * centred, axis=axes, keepdims=True)
    else:
        centred = x - Tensor(per_channel(mean))
        var = Tensor(per_channel(var))
    return centred / F.sqrt(var + eps) * per_channel(w) + per_channel(b)


def random_case(seed, shape, channels_last, scale=1.0):
    """x of ``shape`` (N, H, W, C) or its NCHW twin; weight, bias, and positive running statistics (C,)."""
    rng = np.random.default_rng(seed)
    n, h, w, c = shape
    x = rng.standard_normal(shape) * scale + rng.standard_normal(c) * scale
    if not channels_last:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return (x, rng.standard_normal(c), rng.standard_normal(c),
            rng.standard_normal(c), rng.uniform(0.2, 3.0, c))


# (N, H, W, C) with at least two values per channel (training mode needs them)
shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4)).filter(
    lambda s: s[0] * s[1] * s[2] > 1)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), scale=st.sampled_from([0.1, 1.0, 10.0]),
       channels_last=st.booleans(), training=st.booleans())
def test_batch_norm2d_gradcheck(shape, seed, scale, channels_last, training):
    x, w, b, mean, var = random_case(seed, shape, channels_last, scale)
    if training:  # no running statistics: gradcheck's many forward passes would move them
        fn = lambda x, w, b: batch_norm2d(x, w, b, channels_last=channels_last)
    else:
        fn = lambda x, w, b: batch_norm2d(x, w, b, mean, var, training=False, channels_last=channels_last)
    gradcheck(fn, [x, w, b])


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), channels_last=st.booleans(), training=st.booleans())
def test_batch_norm2d_matches_reference_values_and_gradients(shape, seed, channels_last, training):
    x, w, b, mean, var = random_case(seed, shape, channels_last)
    gy = np.random.default_rng(seed + 1).standard_normal(x.shape)
    results = []
    for fused in (True, False):
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        if fused:
            y = batch_norm2d(xt, wt, bt, mean.copy(), var.copy(), training=training, eps=1e-3,
                             channels_last=channels_last)
        else:
            y = reference_batch_norm2d(xt, wt, bt, eps=1e-3, channels_last=channels_last,
                                       mean=None if training else mean, var=None if training else var)
        y.backward(gy)
        results.append((y.data, xt.grad, wt.grad, bt.grad))
    for got, want, name in zip(*results, ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10, err_msg=name)


def test_running_statistics_follow_pytorch_rule():
    # running ← (1 - m) running + m batch, with the unbiased variance for the running one.
    rng = np.random.default_rng(3)
    c, m = 3, 0.1
    running_mean, running_var = np.zeros(c), np.ones(c)
    want_mean, want_var = np.zeros(c), np.ones(c)
    for step in range(4):
        x = rng.standard_normal((2, 3, 4, c)) * (step + 1) + step
        batch_norm2d(Tensor(x), Tensor(np.ones(c)), Tensor(np.zeros(c)), running_mean, running_var,
                     momentum=m, channels_last=True)
        flat = x.reshape(-1, c)
        want_mean = (1 - m) * want_mean + m * flat.mean(axis=0)
        want_var = (1 - m) * want_var + m * flat.var(axis=0, ddof=1)
    np.testing.assert_allclose(running_mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(running_var, want_var, rtol=1e-12)


def test_eval_mode_uses_running_statistics_and_leaves_them():
    x, w, b, mean, var = random_case(4, (1, 2, 2, 3), channels_last=True)  # one image is fine in eval
    before = mean.copy(), var.copy()
    y = batch_norm2d(Tensor(x), Tensor(w), Tensor(b), mean, var, training=False, eps=1e-5, channels_last=True)
    np.testing.assert_allclose(y.data, (x - mean) / np.sqrt(var + 1e-5) * w + b, rtol=1e-12)
    np.testing.assert_array_equal(mean, before[0])
    np.testing.assert_array_equal(var, before[1])


def test_constant_channel_is_finite():
    # σ² = 0: x̂ = 0, so y = b and dx = (w/√eps)(gy - mean(gy)) (eps keeps 1/σ finite).
    x = Tensor(np.full((2, 2, 2, 3), 5.0), requires_grad=True)
    w, b = Tensor(np.full(3, 2.0), requires_grad=True), Tensor(np.arange(3.0))
    y = batch_norm2d(x, w, b, eps=1e-5, channels_last=True)
    gy = np.random.default_rng(0).standard_normal(x.shape)
    y.backward(gy)
    np.testing.assert_allclose(y.data, np.broadcast_to(np.arange(3.0), x.shape))
    np.testing.assert_allclose(x.grad, 2.0 / np.sqrt(1e-5) * (gy - gy.mean(axis=(0, 1, 2))), rtol=1e-12)


def test_float32_stays_float32():
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((4, 5, 5, 8)).astype(np.float32), requires_grad=True)
    w, b = Tensor(np.ones(8, np.float32), requires_grad=True), Tensor(np.zeros(8, np.float32), requires_grad=True)
    mean, var = np.zeros(8, np.float32), np.ones(8, np.float32)
    y = batch_norm2d(x, w, b, mean, var, channels_last=True)
    (y * y).sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == b.grad.dtype == mean.dtype == var.dtype == np.float32
    assert batch_norm2d(x, w, b, mean, var, training=False, channels_last=True).dtype == np.float32
    want = reference_batch_norm2d(Tensor(x.data.astype(np.float64)), w.data, b.data).data
    np.testing.assert_allclose(y.data, want, rtol=1e-4, atol=1e-5)


def test_float32_statistics_stay_accurate_over_many_positions():
    # 2**18 positions per channel, far from zero mean: a single float32 running sum would drift to ~1e-4.
    x = (np.random.default_rng(11).standard_normal((64, 64, 64, 2)) * 0.5 + 3.0).astype(np.float32)
    mean, var = np.zeros(2, np.float32), np.ones(2, np.float32)
    batch_norm2d(Tensor(x), Tensor(np.ones(2, np.float32)), Tensor(np.zeros(2, np.float32)), mean, var,
                 momentum=1.0, channels_last=True)
    exact = x.astype(np.float64).reshape(-1, 2)
    np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=2e-6)
    np.testing.assert_allclose(var, exact.var(axis=0, ddof=1), rtol=2e-5)


@pytest.mark.parametrize("call, message", [
    (lambda x, w: batch_norm2d(x[:1, :1, :1], w, w, channels_last=True), "more than one value per channel"),
    (lambda x, w: batch_norm2d(x, w, w, training=False, channels_last=True), "needs running_mean and running_var"),
    (lambda x, w: batch_norm2d(x, w, w, np.zeros(3), channels_last=True), "both running_mean and running_var"),
    (lambda x, w: batch_norm2d(x, w[:2], w[:2], channels_last=True), "weight and bias of shape \\(3,\\)"),
    (lambda x, w: batch_norm2d(x[0], w, w, channels_last=True), "4-D input"),
])
def test_bad_input_is_one_clear_error(call, message):
    x, w = Tensor(np.zeros((2, 2, 2, 3))), Tensor(np.ones(3))
    with pytest.raises(ValueError, match=message):
        call(x, w)


def test_other_backend_matches_numpy(xp):
    x, w, b, mean, var = random_case(6, (3, 4, 4, 5), channels_last=True)
    gy = np.random.default_rng(7).standard_normal(x.shape)
    outs = []
    for mod in (np, xp):
        xt, wt, bt = (Tensor(mod.asarray(a), requires_grad=True) for a in (x, w, b))
        rm, rv = mod.asarray(mean), mod.asarray(var)
        y = batch_norm2d(xt, wt, bt, rm, rv, channels_last=True)
        y.backward(mod.asarray(gy))
        outs.append([backend.to_numpy(a) for a in (y.data, xt.grad, wt.grad, bt.grad, rm, rv)])
    for got, want in zip(outs[1], outs[0]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# the layer: modes and buffers
# ---------------------------------------------------------------------------

def test_layer_switches_mode_and_keeps_running_statistics_in_state_dict():
    layer = nn.BatchNorm2d(3, channels_last=True)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in layer.named_buffers()] == ["running_mean", "running_var"]
    assert list(layer.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    x = Tensor(np.random.default_rng(8).standard_normal((4, 3, 3, 3)).astype(np.float32) * 2 + 1)
    y_train = layer(x)
    np.testing.assert_allclose(y_train.data.reshape(-1, 3).mean(axis=0), 0, atol=1e-5)
    assert not np.allclose(layer.running_mean.data, 0)  # moved towards the batch mean
    layer.eval()
    before = layer.state_dict()
    y_eval = layer(x)
    assert not np.allclose(y_eval.data, y_train.data)  # running statistics, not the batch's
    np.testing.assert_array_equal(layer.running_mean.data, before["running_mean"])

    twin = nn.BatchNorm2d(3, channels_last=True).eval()
    twin.load_state_dict(before)
    np.testing.assert_array_equal(twin(x).data, y_eval.data)
    with pytest.raises(KeyError, match="missing keys \\(2\\): running_mean, running_var"):
        twin.load_state_dict({"weight": before["weight"], "bias": before["bias"]})


def test_buffers_are_not_parameters():
    layer = nn.BatchNorm2d(2)
    assert all(isinstance(p, nn.Parameter) for p in layer.parameters())
    assert len(list(layer.parameters())) == 2 and layer.num_parameters() == 4
    assert all(not b.requires_grad and b.dtype == np.float32 for b in layer.buffers())


@needs_torch
@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_pytorch(channels_last):
    x, w, b, _, _ = random_case(9, (4, 3, 5, 6), channels_last)
    theirs = torch.nn.BatchNorm2d(6).double()
    with backend.default_dtype_as(np.float64):
        ours = nn.BatchNorm2d(6, channels_last=channels_last)
    ours.weight.data[...] = w
    ours.bias.data[...] = b
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(w))
        theirs.bias.copy_(torch.from_numpy(b))
    to_nchw = (lambda a: a.transpose(0, 3, 1, 2)) if channels_last else (lambda a: a)
    gy = np.random.default_rng(10).standard_normal(x.shape)
    for step in range(3):  # training steps move the running statistics; then one in eval
        xs = x * (step + 1) + step
        xt = Tensor(xs, requires_grad=True)
        tt = torch.from_numpy(np.ascontiguousarray(to_nchw(xs))).requires_grad_()
        y, ty = ours(xt), theirs(tt)
        y.backward(gy)
        ty.backward(torch.from_numpy(np.ascontiguousarray(to_nchw(gy))))
        np.testing.assert_allclose(to_nchw(y.data), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(to_nchw(xt.grad), tt.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-9, atol=1e-11)
        ours.zero_grad()
        theirs.zero_grad()
    np.testing.assert_allclose(ours.running_mean.data, theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var.data, theirs.running_var.numpy(), rtol=1e-12)
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(to_nchw(ours(Tensor(x)).data),
                               theirs(torch.from_numpy(np.ascontiguousarray(to_nchw(x)))).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
