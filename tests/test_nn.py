"""Tests of tinyclip.nn: Module bookkeeping, the layers' shapes, initialisation and gradients, and attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyclip
from tinyclip import Tensor, backend, gradcheck, nn


@pytest.fixture(autouse=True)
def _cpu_and_seed():
    old = backend._state["device"]
    backend.set_default_device("cpu")
    tinyclip.manual_seed(0)
    yield
    backend._state["device"] = old


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiHeadAttention(dim, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return x + self.drop(self.attn(self.norm(x)))


class Model(nn.Module):
    def __init__(self, dim=4, depth=2):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.scale = nn.Parameter(np.ones(1))
        self.head = nn.Sequential(nn.Linear(dim, 5), nn.GELU(), nn.Linear(5, 2))

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x) * self.scale


def bind(module, tensors):
    """Make ``module`` use ``tensors`` (in named_parameters order) as its parameters, for gradcheck."""
    for (name, _), t in zip(list(module.named_parameters()), tensors):
        *path, leaf = name.split(".")
        owner = module
        for part in path:
            owner = getattr(owner, part)
        object.__setattr__(owner, leaf, t)


def check_module_grads(module, x, **kwargs):
    """gradcheck of module(x) with respect to x and every parameter (module built in float64)."""
    params = [p.data for p in module.parameters()]

    def fn(x, *ps):
        bind(module, ps)
        return module(x)

    return gradcheck(fn, [x, *params], **kwargs)


# ---------------------------------------------------------------------------
# Module bookkeeping
# ---------------------------------------------------------------------------

def test_parameters_are_registered_in_definition_order_with_dotted_names():
    model = Model()
    names = [name for name, _ in model.named_parameters()]
    attn = ["q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
            "out_proj.weight", "out_proj.bias"]
    block = ["norm.weight", "norm.bias"] + [f"attn.{a}" for a in attn]
    expected = (["embed.weight", "embed.bias"] + [f"blocks.{i}.{b}" for i in range(2) for b in block]
                + ["scale", "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"])
    assert names == expected
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())
    assert model.num_parameters() == sum(p.size for p in model.parameters())
    assert [name for name, _ in model.named_children()] == ["embed", "blocks", "head"]
    assert sum(1 for m in model.modules() if isinstance(m, nn.MultiHeadAttention)) == 2
    assert model.blocks[1] is list(model.blocks)[1] and model.blocks[-1] is model.blocks[1]
    assert len(model.blocks) == 2 and len(model.head) == 3
    with pytest.raises(IndexError):
        model.blocks[2]


def test_plain_list_of_layers_is_refused_and_shared_parameters_count_once():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(2, 2)]

    with pytest.raises(TypeError, match="ModuleList"):
        Bad()
    shared = nn.Linear(2, 2)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_parameter_dtype_follows_the_default():
    assert nn.Parameter(np.zeros(3)).dtype == np.float32
    assert nn.Parameter(np.zeros(3, dtype=np.int64)).dtype == np.int64
    with backend.default_dtype_as(np.float64):
        assert nn.Parameter(np.zeros(3, dtype=np.float32)).dtype == np.float64


def test_state_dict_round_trip_gives_identical_outputs():
    x = rand(2, 3, 3)
    tinyclip.manual_seed(1)
    a = Model().eval()
    tinyclip.manual_seed(2)
    b = Model().eval()
    assert not np.allclose(a(x).data, b(x).data)
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    assert all(type(v) is np.ndarray for v in state.values())
    params_before = list(b.parameters())
    b.load_state_dict(state)
    np.testing.assert_array_equal(a(x).data, b(x).data)
    assert all(p is q for p, q in zip(params_before, b.parameters()))  # loaded in place
    # The state is a copy: changing it changes neither model.
    state["embed.weight"][...] = 0
    np.testing.assert_array_equal(a(x).data, b(x).data)
    assert not np.all(a.embed.weight.data == 0)


def test_load_state_dict_keeps_dtype_and_converts_values():
    model = nn.Linear(2, 3)
    state = {k: v.astype(np.float64) + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert model.weight.dtype == np.float32 and model.bias.dtype == np.float32
    np.testing.assert_allclose(model.weight.data, state["weight"], rtol=1e-6)


def test_load_state_dict_reports_missing_unexpected_and_mismatched_keys():
    model = Model()
    state = model.state_dict()
    good = dict(state)
    del state["blocks.1.norm.bias"]
    state["blocks.7.norm.bias"] = np.zeros(4)
    with pytest.raises(KeyError) as err:
        model.load_state_dict(state)
    assert "blocks.1.norm.bias" in str(err.value) and "blocks.7.norm.bias" in str(err.value)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["blocks.1.norm.bias"] and unexpected == ["blocks.7.norm.bias"]

    before = model.embed.bias.data.copy()
    bad = dict(good, **{"head.2.weight": np.zeros((5, 3)), "embed.bias": before + 1})
    with pytest.raises(ValueError, match=r"head\.2\.weight.*\(5, 3\).*\(5, 2\)"):
        model.load_state_dict(bad)
    np.testing.assert_array_equal(model.embed.bias.data, before)  # nothing copied on error


def test_train_eval_propagate_and_dropout_follows():
    model = Model()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    x = rand(2, 3, 3)
    np.testing.assert_array_equal(model(x).data, model(x).data)  # eval: deterministic
    model.train()
    assert all(m.training for m in model.modules())
    drop = nn.Dropout(0.5)
    y = drop(Tensor(np.ones((100, 100), dtype=np.float32))).data
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    np.testing.assert_array_equal(drop.eval()(Tensor(np.ones(5))).data, np.ones(5))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.Dropout(1.0)


def test_evaluate_in_batches_covers_each_row_once_in_eval_mode_without_a_graph():
    model = Model()
    x = Tensor(rand(7, 3, 3))
    seen, modes = [], []

    def compute(s):
        seen.extend(range(7)[s])
        modes.append(model.training)
        out = model(x[s])
        assert out.creator is None and not out.requires_grad  # no graph recorded
        return out

    out = nn.evaluate_in_batches(model, compute, 7, 3)
    assert seen == list(range(7)) and modes == [False] * 3 and model.training
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, model.eval()(x).data, rtol=1e-6)
    scalars = nn.evaluate_in_batches(model, lambda s: float(len(range(7)[s])), 7, 3)  # a scalar is one row
    np.testing.assert_array_equal(scalars, [3, 3, 1])
    empty = nn.evaluate_in_batches(model, compute, 0, 3, empty_shape=(0, 4))
    assert empty.shape == (0, 4) and empty.dtype == np.float32


def test_evaluate_in_batches_restores_the_mode_after_an_exception():
    model = Model()

    def boom(s):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        nn.evaluate_in_batches(model, boom, 5, 2)
    assert all(m.training for m in model.modules())
    assert tinyclip.tensor.is_grad_enabled()  # no_grad ended too
    model.eval()
    with pytest.raises(RuntimeError, match="boom"):
        nn.evaluate_in_batches(model, boom, 5, 2)
    assert not any(m.training for m in model.modules())


def test_zero_grad_and_to_cpu():
    model = Model()
    model(rand(2, 3, 3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    params = list(model.parameters())
    assert model.to("cpu") is model
    assert all(p is q and type(p.data) is np.ndarray for p, q in zip(params, model.parameters()))


def test_repr_lists_children():
    text = repr(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    assert "(0): Linear(2, 3, bias=True)" in text and "(1): ReLU()" in text


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_bounds_and_dtypes(dtype):
    with backend.default_dtype_as(dtype):
        linear = nn.Linear(50, 400)
        conv = nn.Conv2d(6, 80, 3)
        emb = nn.Embedding(300, 64)
        norm = nn.LayerNorm(7)
        attn = nn.MultiHeadAttention(64, 4)
    for module in (linear, conv, emb, norm, attn):
        assert all(p.dtype == dtype for p in module.parameters())
    for w, b, fan_in in ((linear.weight, linear.bias, 50), (conv.weight, conv.bias, 6 * 9)):
        bound = 1 / math.sqrt(fan_in)
        for p in (w, b):
            assert np.abs(p.data).max() <= bound
        assert np.abs(w.data).max() > 0.98 * bound  # uses the whole range
        assert abs(w.data.std() - bound / math.sqrt(3)) < 0.05 * bound  # std of U(-b, b)
    assert linear.weight.shape == (50, 400) and conv.weight.shape == (80, 6, 3, 3) and conv.bias.shape == (80,)
    assert abs(emb.weight.data.mean()) < 0.02 and abs(emb.weight.data.std() - 1) < 0.02
    np.testing.assert_array_equal(norm.weight.data, np.ones(7))
    np.testing.assert_array_equal(norm.bias.data, np.zeros(7))
    xavier = math.sqrt(6 / (64 + 3 * 64))
    assert xavier * 0.95 < np.abs(attn.q_proj.weight.data).max() <= xavier
    assert not attn.q_proj.bias.data.any() and not attn.out_proj.bias.data.any()
    assert nn.Linear(3, 2, bias=False).bias is None


def test_initialisers_repeat_under_manual_seed():
    tinyclip.manual_seed(5)
    a = nn.Linear(4, 4).weight.data.copy()
    tinyclip.manual_seed(5)
    np.testing.assert_array_equal(a, nn.Linear(4, 4).weight.data)
    p = nn.init.empty(2, 3)
    for fill, value in ((nn.init.zeros_, 0), (nn.init.ones_, 1)):
        np.testing.assert_array_equal(fill(p).data, np.full((2, 3), value))
    assert np.all((nn.init.uniform_(p, 2.0, 3.0).data >= 2) & (p.data < 3)) and p.dtype == np.float32


@settings(max_examples=20, deadline=None)
@given(batch=st.lists(st.integers(1, 3), max_size=2), n_in=st.integers(1, 5), n_out=st.integers(1, 5))
def test_linear_shapes_and_formula(batch, n_in, n_out):
    layer = nn.Linear(n_in, n_out)
    x = rand(*batch, n_in)
    y = layer(x)
    assert y.shape == (*batch, n_out) and y.dtype == np.float32
    np.testing.assert_allclose(y.data, x @ layer.weight.data + layer.bias.data, rtol=1e-5, atol=1e-6)


def test_layer_output_shapes():
    x = Tensor(rand(2, 3, 8, 8))
    conv = nn.Conv2d(3, 5, 3, padding=1)
    assert conv(x).shape == (2, 5, 8, 8)
    assert nn.Conv2d(3, 5, (3, 3), stride=2)(x).shape == (2, 5, 3, 3)
    conv_last = nn.Conv2d(3, 5, 3, padding=1, channels_last=True)
    assert conv_last(Tensor(rand(2, 8, 8, 3))).shape == (2, 8, 8, 5)
    assert nn.MaxPool2d(2)(x).shape == (2, 3, 4, 4)
    assert nn.MaxPool2d(2, channels_last=True)(Tensor(rand(2, 8, 8, 3))).shape == (2, 4, 4, 3)
    assert nn.Flatten()(x).shape == (2, 192)
    assert nn.LayerNorm(8)(x).shape == (2, 3, 8, 8)
    emb = nn.Embedding(10, 4)
    ids = np.array([[1, 2, 9], [0, 0, 3]])
    out = emb(ids)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out.data, emb.weight.data[ids])
    np.testing.assert_array_equal(nn.ReLU()(Tensor(np.array([-1.0, 2.0]))).data, [0.0, 2.0])
    assert nn.GELU()(x).shape == x.shape


def test_cnn_step_stays_float32():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.LayerNorm(64), nn.Dropout(0.1), nn.Linear(64, 2))
    y = model(Tensor(rand(2, 3, 8, 8)))
    assert y.dtype == np.float32
    y.sum().backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_gradcheck_linear_and_sequential():
    with backend.default_dtype_as(np.float64):
        check_module_grads(nn.Linear(3, 2), rand(4, 3, dtype=np.float64))
        seq = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4), nn.Linear(4, 2))
        check_module_grads(seq, rand(2, 3, dtype=np.float64))


def test_gradcheck_conv_and_embedding_layers():
    with backend.default_dtype_as(np.float64):
        seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        check_module_grads(seq, rand(2, 2, 4, 4, dtype=np.float64), directions=8)
        emb = nn.Embedding(5, 3)
        ids = np.array([[1, 4, 1]])
        gradcheck(lambda w: (bind(emb, [w]), emb(ids))[1], [emb.weight.data])


# ---------------------------------------------------------------------------
# Multi-head attention
# ---------------------------------------------------------------------------

def mha_reference(module, x, pad=None):
    """Attention by its definition: a loop over heads, softmax of masked scores."""
    w = {name: p.data.astype(np.float64) for name, p in module.named_parameters()}
    x = x.astype(np.float64)
    n, length, e = x.shape
    h = module.num_heads
    d = e // h
    q, k, v = (x @ w[f"{s}_proj.weight"] + w[f"{s}_proj.bias"] for s in "qkv")
    heads, probs = [], np.zeros((n, h, length, length))
    for i in range(h):
        cols = slice(i * d, (i + 1) * d)
        scores = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / math.sqrt(d)
        if pad is not None:
            scores = np.where(pad[:, None, :], -np.inf, scores)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        probs[:, i] = p
        heads.append(p @ v[..., cols])
    return np.concatenate(heads, axis=-1) @ w["out_proj.weight"] + w["out_proj.bias"], probs


def test_mha_matches_definition_with_and_without_padding():
    mha = nn.MultiHeadAttention(8, 2)
    x = rand(3, 5, 8)
    pad = np.zeros((3, 5), dtype=bool)
    pad[0, 3:] = True
    pad[2, 1:] = True
    for mask in (None, pad):
        out, weights = mha(x, key_padding_mask=mask, need_weights=True)
        ref_out, ref_weights = mha_reference(mha, x, mask)
        assert out.shape == (3, 5, 8) and weights.shape == (3, 2, 5, 5) and out.dtype == np.float32
        np.testing.assert_allclose(out.data, ref_out, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(weights.data, ref_weights, rtol=1e-4, atol=1e-6)
    assert mha(x).shape == (3, 5, 8)


def test_mha_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError):
        nn.MultiHeadAttention(8, 2)(rand(1, 2, 6))


def test_mha_gradcheck_with_padding_mask():
    with backend.default_dtype_as(np.float64):
        mha = nn.MultiHeadAttention(4, 2)
        pad = np.array([[False, False, True], [False, False, False]])
        params = [p.data for p in mha.parameters()]

        def fn(x, *ps):
            bind(mha, ps)
            return mha(x, key_padding_mask=pad)

        gradcheck(fn, [rand(2, 3, 4, dtype=np.float64), *params])


def test_mha_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (reference test only)")
    e, h = 8, 2
    mha = nn.MultiHeadAttention(e, h)
    ref = torch.nn.MultiheadAttention(e, h, batch_first=True, dtype=torch.float64)
    w = {name: torch.from_numpy(p.data.astype(np.float64)) for name, p in mha.named_parameters()}
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([w[f"{s}_proj.weight"].T for s in "qkv"]))
        ref.in_proj_bias.copy_(torch.cat([w[f"{s}_proj.bias"] for s in "qkv"]))
        ref.out_proj.weight.copy_(w["out_proj.weight"].T)
        ref.out_proj.bias.copy_(w["out_proj.bias"])
    x = rand(2, 4, e)
    pad = np.array([[False, False, False, True], [False, True, True, True]])
    out, weights = mha(x, key_padding_mask=pad, need_weights=True)
    xt = torch.from_numpy(x.astype(np.float64))
    ref_out, ref_weights = ref(xt, xt, xt, key_padding_mask=torch.from_numpy(pad), need_weights=True,
                               average_attn_weights=False)
    np.testing.assert_allclose(out.data, ref_out.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights.data, ref_weights.detach().numpy(), rtol=1e-4, atol=1e-6)
