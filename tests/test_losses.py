"""tinyclip.losses: clip_loss, concept_targets, soft_clip_loss (α = 1 is clip_loss), simclr_loss."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyclip import Tensor, gradcheck
from tinyclip.functional.loss import soft_cross_entropy
from tinyclip.losses import clip_loss, concept_targets, simclr_loss, soft_clip_loss


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def concepts_for(rng, n):
    pool = ["C1", "C2", "C3", "CT", "MRI"]
    return [list(rng.choice(pool, size=rng.integers(0, 3), replace=False)) for _ in range(n)]


def test_concept_targets_by_definition():
    t = concept_targets([["a", "b"], ["a"], [], ["c"]], alpha=0.5)
    # rows 0,1: Jaccard(ab, a) = 1/2 → [0.5 + 0.5·1, 0.5·0.5] normalised = [0.8, 0.2]
    np.testing.assert_allclose(t, [[0.8, 0.2, 0, 0], [0.2, 0.8, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    cos = concept_targets([["a", "b"], ["a"]], alpha=0.0, similarity="cosine")
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(cos, [[1 / (1 + s), s / (1 + s)], [s / (1 + s), 1 / (1 + s)]])
    with pytest.raises(ValueError, match="alpha"):
        concept_targets([["a"]], alpha=1.5)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_soft_clip_loss_alpha_one_is_clip_loss(n, d, seed):
    rng = np.random.default_rng(seed)
    img, txt, scale = unit(rng, n, d), unit(rng, n, d), np.array([rng.uniform(0, 3)])
    targets = concept_targets(concepts_for(rng, n), alpha=1.0)
    grads = []
    for loss_fn in (lambda a, b, s: clip_loss(a, b, s), lambda a, b, s: soft_clip_loss(a, b, s, targets)):
        ts = [Tensor(x, requires_grad=True) for x in (img, txt, scale)]
        loss = loss_fn(*ts)
        loss.backward()
        grads.append((loss.item(), [t.grad for t in ts]))
    assert math.isclose(grads[0][0], grads[1][0], rel_tol=1e-12)
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        np.testing.assert_allclose(g0, g1, rtol=1e-10, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 5), st.floats(0.0, 1.0), st.sampled_from(["jaccard", "cosine"]), st.integers(0, 2**31 - 1))
def test_soft_clip_loss_gradcheck(n, alpha, similarity, seed):
    rng = np.random.default_rng(seed)
    targets = concept_targets(concepts_for(rng, n), alpha=alpha, similarity=similarity)
    gradcheck(lambda a, b, s: soft_clip_loss(a, b, s, targets),
              [rng.standard_normal((n, 4)), rng.standard_normal((n, 4)), np.array([0.5])])


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 5), st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_soft_cross_entropy_by_definition_and_gradcheck(n, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c))
    q = rng.random((n, c))
    q /= q.sum(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    assert math.isclose(soft_cross_entropy(Tensor(x), q).item(), -(q * logp).sum() / n, rel_tol=1e-12)
    gradcheck(lambda a: soft_cross_entropy(a, q), [x])


def simclr_by_definition(z1, z2, tau):
    z = np.concatenate([z1, z2])
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        others = [k for k in range(n2) if k != i]
        sims = np.array([z[i] @ z[k] / tau for k in others])
        total += -(z[i] @ z[j] / tau) + np.log(np.exp(sims).sum())
    return total / n2


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 5), st.floats(0.05, 1.0), st.integers(0, 2**31 - 1))
def test_simclr_loss_by_definition_and_gradcheck(n, tau, seed):
    rng = np.random.default_rng(seed)
    z1, z2 = unit(rng, n, 3), unit(rng, n, 3)
    assert math.isclose(simclr_loss(Tensor(z1), Tensor(z2), tau).item(), simclr_by_definition(z1, z2, tau),
                        rel_tol=1e-10, abs_tol=1e-12)  # n = 1: the loss is exactly 0
    gradcheck(lambda a, b: simclr_loss(a, b, tau), [z1, z2])


def test_accumulated_clip_step_equals_one_big_batch():
    from tinyclip import backend
    from tinyclip.losses import accumulated_clip_step
    from tinyclip.models import CLIP, CLIPConfig

    config = CLIPConfig(image_size=8, conv_channels=(2, 4), vocab_size=20, max_len=6, width=8, text_layers=1,
                        heads=2, ff_dim=16, dropout=0.0, embed_dim=6)
    rng = np.random.default_rng(0)
    n = 64
    images = rng.standard_normal((n, 3, 8, 8))
    ids = rng.integers(2, 20, size=(n, 6))
    mask = np.arange(6)[None, :] >= rng.integers(1, 7, size=n)[:, None]
    ids[mask] = 0
    with backend.default_dtype_as(np.float64):
        model = CLIP(config)
        loss = model.loss(Tensor(images), ids, mask)
        loss.backward()
        full = {name: p.grad.copy() for name, p in model.named_parameters()}
        model.zero_grad()
        micro = [(Tensor(images[i:i + 16]), ids[i:i + 16], mask[i:i + 16]) for i in range(0, n, 16)]
        value = accumulated_clip_step(model, micro)
    assert math.isclose(value, loss.item(), rel_tol=1e-12)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, full[name], atol=1e-10, rtol=0, err_msg=name)
