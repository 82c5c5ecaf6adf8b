"""Tests of tinyclip.optim: updates against hand-written formulas (and PyTorch), resuming, clipping, schedules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyclip import Tensor, nn, optim


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(shape), dtype=dtype) for shape in ((3, 2), (4,))]


def grads_for(step, shapes, seed=1):
    rng = np.random.default_rng(seed + 100 * step)
    return [rng.standard_normal(shape) for shape in shapes]


def run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        for p, g in zip(params, grads_for(t, [p.shape for p in params])):
            p.grad = g.astype(p.dtype)
        opt.step()
    return [p.data.copy() for p in params]


# ---------------------------------------------------------------------------
# the update rules, against the formulas written out in NumPy
# ---------------------------------------------------------------------------

def adam_by_hand(p0, grads, lr, b1, b2, eps, wd=0.0, decoupled=False):
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * wd * p
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_adam_and_adamw_three_steps_by_hand(cls, wd):
    params = make_params()
    start = [p.data.copy() for p in params]
    opt = cls(params, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=wd)
    got = run(opt, params, 3)
    shapes = [p.shape for p in params]
    for i, (p0, p) in enumerate(zip(start, got)):
        grads = [grads_for(t, shapes)[i] for t in range(3)]
        expected = adam_by_hand(p0, grads, 0.01, 0.8, 0.9, 1e-6, wd, decoupled=cls is optim.AdamW)
        np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-14)
    assert opt.step_count == 3


def test_adamw_default_weight_decay_and_adam_default():
    assert optim.AdamW(make_params()).weight_decay == 1e-2
    assert optim.Adam(make_params()).weight_decay == 0.0


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.05), (0.0, 0.05)])
def test_sgd_by_hand(momentum, wd):
    params = make_params()
    start = [p.data.copy() for p in params]
    got = run(optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=wd), params, 3)
    shapes = [p.shape for p in params]
    for i, p0 in enumerate(start):
        p, buf = p0.copy(), np.zeros_like(p0)
        for t in range(3):
            g = grads_for(t, shapes)[i] + wd * p
            buf = momentum * buf + g
            p = p - 0.1 * (buf if momentum else g)
        np.testing.assert_allclose(got[i], p, rtol=1e-12)


def test_float32_updates_stay_float32_and_grads_are_untouched():
    params = make_params(np.float32)
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        opt = cls(params, lr=0.1, weight_decay=0.1) if cls is not optim.SGD else cls(params, 0.1, 0.9, 0.1)
        grads = [np.ones(p.shape, dtype=np.float32) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        assert all(p.dtype == np.float32 for p in params)
        assert all(v.dtype == np.float32 for s in opt.state for v in s.values() if hasattr(v, "dtype"))
        assert all(np.all(g == 1) for g in grads)  # weight decay did not write into the grads


def test_params_without_grad_are_skipped():
    params = make_params()
    before = params[1].data.copy()
    opt = optim.Adam(params)
    params[0].grad = np.ones(params[0].shape)
    opt.step()
    np.testing.assert_array_equal(params[1].data, before)
    assert opt.state[1] == {} and opt.state[0]["step"] == 1
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_optimizer_rejects_bad_params():
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD([Tensor(np.zeros(2))], lr=0.1)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_matches_torch(name):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (reference test only)")
    params = make_params()
    tparams = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
    kwargs = {"lr": 0.05, "weight_decay": 0.1}
    if name == "SGD":
        kwargs["momentum"] = 0.9
    ours, theirs = getattr(optim, name)(params, **kwargs), getattr(torch.optim, name)(tparams, **kwargs)
    for t in range(5):
        for p, tp, g in zip(params, tparams, grads_for(t, [p.shape for p in params])):
            p.grad, tp.grad = g, torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# saving and resuming
# ---------------------------------------------------------------------------

def to_json_and_back(state):
    """What a checkpoint does: arrays aside, everything through JSON (int keys become strings)."""
    arrays = {}

    def strip(tree, path):
        if isinstance(tree, dict):
            return {k: strip(v, f"{path}/{k}") for k, v in tree.items()}
        if isinstance(tree, np.ndarray):
            arrays[path] = tree
            return {"__array__": path}
        return tree

    def fill(tree):
        if isinstance(tree, dict):
            return arrays[tree["__array__"]] if "__array__" in tree else {k: fill(v) for k, v in tree.items()}
        return tree

    return fill(json.loads(json.dumps(strip(state, ""))))


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
                                  lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.01),
                                  lambda ps: optim.AdamW(ps, lr=0.01)])
def test_state_dict_round_trip_resumes_exactly(make):
    params = make_params(np.float32)
    opt = make(params)
    run(opt, params, 3)
    saved = to_json_and_back(opt.state_dict())
    resumed_params = [nn.Parameter(p.data.copy()) for p in params]
    resumed = make(resumed_params)
    resumed.lr = 123.0  # restored by load_state_dict
    resumed.load_state_dict(saved)
    assert resumed.lr == opt.lr and resumed.step_count == 3
    saved_copy = {k: {kk: np.copy(vv) for kk, vv in v.items()} for k, v in saved["state"].items()}
    expected, got = run(opt, params, 3, start=3), run(resumed, resumed_params, 3, start=3)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    for k, v in saved["state"].items():  # resuming did not write into the loaded dict
        for kk, vv in v.items():
            np.testing.assert_array_equal(vv, saved_copy[k][kk])


def test_load_state_dict_checks_params_and_type():
    opt = optim.Adam(make_params())
    run(opt, opt.params, 1)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameters"):
        optim.Adam(make_params()[:1]).load_state_dict(state)
    with pytest.raises(ValueError, match="shapes differ"):
        optim.Adam([nn.Parameter(np.zeros((2, 3))), nn.Parameter(np.zeros(4))]).load_state_dict(state)
    with pytest.raises(ValueError, match="Adam"):
        optim.SGD(make_params(), lr=0.1).load_state_dict(state)


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------

def test_clip_grad_norm():
    params = make_params(np.float32)
    grads = [np.full(p.shape, 2.0, dtype=np.float32) for p in params]  # 10 elements of 2: norm √40
    for p, g in zip(params, grads):
        p.grad = g.copy()
    norm = optim.clip_grad_norm(params, max_norm=100.0)
    assert norm == pytest.approx(math.sqrt(40)) and isinstance(norm, float)
    assert all(np.all(p.grad == 2) for p in params)  # below the limit: untouched
    norm = optim.clip_grad_norm(params, max_norm=1.0)
    assert norm == pytest.approx(math.sqrt(40))
    new = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in params))
    assert new == pytest.approx(1.0, rel=1e-5) and params[0].grad.dtype == np.float32
    assert optim.clip_grad_norm([nn.Parameter(np.zeros(2))], 1.0) == 0.0


def test_clip_grad_norm_scales_a_shared_grad_array_once():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    (a + b).sum().backward()  # Add's backward may hand the same array to both
    optim.clip_grad_norm([a, b], max_norm=1.0)
    np.testing.assert_allclose(a.grad, np.full(2, 0.5), rtol=1e-5)
    np.testing.assert_allclose(b.grad, np.full(2, 0.5), rtol=1e-5)


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------

def test_warmup_cosine_values():
    f = lambda s: optim.warmup_cosine(s, lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)  # noqa: E731
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # cosine midpoint: (lr + min_lr) / 2
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert optim.warmup_cosine(3, 1.0, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    assert optim.constant(7, 3e-4) == 3e-4
    assert optim.constant(0, 0.5) == optim.constant(99, 0.5) == 0.5
    assert optim.warmup_cosine(50, 1.0, 0, 0) == 1.0  # no steps to decay over: lr throughout
    with pytest.raises(ValueError):
        optim.warmup_cosine(0, 1.0, -1, 10)
    with pytest.raises(ValueError):
        optim.warmup_cosine(0, 1.0, 20, 10)


@settings(max_examples=50, deadline=None)
@given(step=st.integers(0, 300), warmup=st.integers(0, 50), extra=st.integers(1, 200),
       lr=st.floats(1e-5, 1.0), frac=st.floats(0.0, 1.0))
def test_warmup_cosine_is_pure_and_bounded(step, warmup, extra, lr, frac):
    min_lr = lr * frac
    args = (lr, warmup, warmup + extra, min_lr)
    value = optim.warmup_cosine(step, *args)
    optim.warmup_cosine(step + 1, *args)
    assert optim.warmup_cosine(step, *args) == value  # same step, same lr, whatever came between
    if step >= warmup:
        assert min_lr - 1e-12 <= value <= lr + 1e-12
        assert optim.warmup_cosine(step + 1, *args) <= value + 1e-12  # non-increasing after warmup
    else:
        assert 0.0 <= value < lr


def test_weight_average_is_the_bias_corrected_exponential_average():
    module = nn.Module()
    module.w, module.stat = nn.Parameter(np.zeros(3)), nn.Buffer(np.zeros(2))
    average, d, visited = optim.WeightAverage(module, 0.8), 0.8, []
    for t in range(5):
        module.w.data[...], module.stat.data[...] = np.arange(3) * t + 1.0, t
        visited.append((module.w.data.copy(), module.stat.data.copy()))
        average.update()
    weights = np.array([(1 - d) * d ** (4 - s) for s in range(5)]) / (1 - d ** 5)  # by definition
    with average.swapped_in():
        np.testing.assert_allclose(module.w.data, sum(c * w for c, (w, _) in zip(weights, visited)))
        np.testing.assert_allclose(module.stat.data, sum(c * b for c, (_, b) in zip(weights, visited)))
    np.testing.assert_array_equal(module.w.data, visited[-1][0])  # its own weights back
    again = optim.WeightAverage(module, 0.8)
    again.load_state_dict(average.state_dict(), average.updates)
    assert again.updates == 5 and all(np.array_equal(a, b) for a, b in zip(again.averages, average.averages))
    with pytest.raises(ValueError, match="decay"):
        optim.WeightAverage(module, 1.0)
