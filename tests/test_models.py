"""The CLIP model: tower shapes, the contrastive loss by hand, gradients end to end, overfitting a batch."""

import math

import numpy as np
import pytest

import tinyclip
from tinyclip import Tensor, backend, gradcheck
from tinyclip.models import CLIP, CLIPConfig, ImageEncoder, TextEncoder, clip_loss
from tinyclip.models.clip import INIT_LOGIT_SCALE, MAX_LOGIT_SCALE

TINY = dict(image_size=16, conv_channels=(4, 8), vocab_size=30, max_len=8, width=16, text_layers=1,
            heads=2, ff_dim=32, dropout=0.1, embed_dim=12)


def tiny_batch(n, config, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, config.image_size, config.image_size)).astype(backend.default_dtype())
    ids = rng.integers(2, config.vocab_size, size=(n, config.max_len))
    lengths = rng.integers(1, config.max_len + 1, size=n)
    mask = np.arange(config.max_len)[None, :] >= lengths[:, None]
    ids[mask] = 0
    return images, ids, mask


def test_tower_shapes():
    config = CLIPConfig(**TINY)
    images, ids, mask = tiny_batch(3, config)
    assert ImageEncoder(config)(Tensor(images)).shape == (3, 12)
    assert TextEncoder(config)(ids, mask).shape == (3, 12)
    model = CLIP(config)
    img, txt = model.encode_image(Tensor(images)), model.encode_text(ids, mask)
    np.testing.assert_allclose(np.linalg.norm(img.numpy(), axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt.numpy(), axis=1), 1, rtol=1e-5)


def test_reference_sizes_give_report_shapes():
    config = CLIPConfig()  # the report's model
    model = CLIP(config)
    assert model.image_encoder.proj.weight.shape == (4 * 4 * 256, 128)
    assert len(model.text_encoder.blocks) == 5
    assert math.isclose(float(model.logit_scale.data[0]), INIT_LOGIT_SCALE, rel_tol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (dict(image_size=18), "divisible by 2\\*\\*2"),
    (dict(width=15), "not divisible by heads"),
    (dict(dropout=1.0), "outside"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        CLIPConfig(**{**TINY, **bad})


def test_image_encoder_rejects_wrong_shape():
    config = CLIPConfig(**TINY)
    with pytest.raises(ValueError, match="expects images of shape"):
        ImageEncoder(config)(Tensor(np.zeros((2, 3, 8, 8), np.float32)))


def numpy_clip_loss(img, txt, scale):
    logits = np.exp(scale) * img @ txt.T

    def ce(z):
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))

    return (ce(logits) + ce(logits.T)) / 2


@pytest.mark.parametrize("n", [1, 2, 5])
def test_clip_loss_matches_numpy(n):
    rng = np.random.default_rng(n)
    img = rng.standard_normal((n, 6))
    txt = rng.standard_normal((n, 6))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    scale = np.array([INIT_LOGIT_SCALE])
    got = clip_loss(Tensor(img), Tensor(txt), Tensor(scale)).item()
    assert math.isclose(got, numpy_clip_loss(img, txt, scale[0]), rel_tol=1e-10)


def test_clip_loss_gradcheck():
    rng = np.random.default_rng(0)
    gradcheck(lambda a, b, s: clip_loss(a, b, s), [rng.standard_normal((4, 5)), rng.standard_normal((4, 5)),
                                                 np.array([0.7])])


def test_tiny_clip_gradcheck_end_to_end():
    with backend.default_dtype_as(np.float64):
        tinyclip.manual_seed(0)
        config = CLIPConfig(**{**TINY, "dropout": 0.0})
        model = CLIP(config)
        images, ids, mask = tiny_batch(3, config)
        names = [name for name, _ in model.named_parameters()]
        originals = [p.data for p in model.parameters()]

        def loss_of(images_t, *weights):
            # Put gradcheck's tensors in the parameters' places, so their grads are the ones checked.
            for name, w in zip(names, weights):
                *path, leaf = name.split(".")
                owner = model
                for part in path:
                    owner = getattr(owner, part)
                object.__setattr__(owner, leaf, w)
            return model.loss(images_t, ids, mask)

        # One random direction per input keeps the check at two forward passes each.
        gradcheck(loss_of, [images] + originals, directions=2, atol=1e-6, rtol=1e-4)


def test_overfit_one_batch():
    tinyclip.manual_seed(0)
    config = CLIPConfig(**{**TINY, "dropout": 0.0})
    model = CLIP(config)
    images, ids, mask = tiny_batch(6, config, seed=1)
    opt = tinyclip.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        loss = model.loss(Tensor(images), ids, mask)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale()
    assert first > 1.0
    assert loss.item() < 0.05


def test_logit_scale_is_clamped():
    model = CLIP(CLIPConfig(**TINY))
    model.logit_scale.data[...] = 10.0
    model.clamp_logit_scale()
    assert math.isclose(float(model.logit_scale.data[0]), MAX_LOGIT_SCALE, rel_tol=1e-6)


def test_float32_step_has_no_float64():
    """Every parameter, activation and gradient of a float32 training step is float32."""
    config = CLIPConfig(**TINY)
    model = CLIP(config)
    images, ids, mask = tiny_batch(4, config)
    seen = []
    original_call = tinyclip.Function.__call__

    def spy(self, *inputs):
        out = original_call(self, *inputs)
        for t in out if isinstance(out, tuple) else (out,):
            if t.dtype.kind == "f":
                seen.append((type(self).__name__, t.dtype))
        return out

    tinyclip.Function.__call__ = spy
    try:
        loss = model.loss(Tensor(images), ids, mask)
    finally:
        tinyclip.Function.__call__ = original_call
    loss.backward()
    opt = tinyclip.optim.Adam(model.parameters(), lr=1e-3)
    opt.step()
    assert seen and all(dtype == np.float32 for _, dtype in seen), {n for n, d in seen if d != np.float32}
    for name, p in model.named_parameters():
        assert p.dtype == np.float32, name
        assert p.grad is not None and p.grad.dtype == np.float32, name


def test_embed_helpers_give_unit_embeddings_and_restore_the_mode():
    from tinyclip.text import Tokenizer
    captions = ["axial ct of the chest", "mri of the brain", "ultrasound of the liver"]
    tok = Tokenizer.fit(captions)
    config = CLIPConfig(**{**TINY, "vocab_size": tok.vocab_size})
    model = CLIP(config, tok)
    images = np.random.default_rng(0).integers(0, 255, size=(3, 16, 16, 3), dtype=np.uint8)
    cos = model.embed_images(images) @ model.embed_texts(captions).T  # unit rows: cosine similarities
    assert cos.shape == (3, 3) and np.all(np.abs(cos) <= 1 + 1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.embed_texts(captions), axis=1), 1, rtol=1e-5)
    assert model.training  # helpers restore the mode they found
    assert model.embed_images(images, batch_size=2).shape == (3, 12)


# ---------------------------------------------------------------------------
# the residual image tower (config.image_tower = "resnet")
# ---------------------------------------------------------------------------

RESNET = {**TINY, "image_tower": "resnet"}


def test_image_tower_field_is_validated_and_defaults_to_report():
    with pytest.raises(ValueError, match="image_tower must be one of 'report', 'batchnorm', 'resnet', got 'vit'"):
        CLIPConfig(**{**TINY, "image_tower": "vit"})
    saved = CLIPConfig(**TINY).to_dict()
    del saved["image_tower"]  # a config written before the field existed
    assert CLIPConfig.from_dict(saved).image_tower == "report"


def test_batchnorm_tower_is_the_report_tower_with_a_norm_after_each_conv():
    encoder = ImageEncoder(CLIPConfig(**{**TINY, "image_tower": "batchnorm"}))
    assert list(encoder.state_dict()) == [
        "blocks.0.0.weight", "blocks.0.1.weight", "blocks.0.1.bias", "blocks.0.1.running_mean", "blocks.0.1.running_var",
        "blocks.1.0.weight", "blocks.1.1.weight", "blocks.1.1.bias", "blocks.1.1.running_mean", "blocks.1.1.running_var",
        "proj.weight", "proj.bias"]


def test_report_tower_state_dict_is_its_parameters():
    # No buffers in the report tower: its checkpoints keep exactly the names they had.
    encoder = ImageEncoder(CLIPConfig(**TINY))
    assert list(encoder.named_buffers()) == []
    assert list(encoder.state_dict()) == ["blocks.0.0.weight", "blocks.0.0.bias", "blocks.1.0.weight",
                                          "blocks.1.0.bias", "proj.weight", "proj.bias"]


def test_resnet_tower_shapes_and_modes():
    config = CLIPConfig(**RESNET)
    model = CLIP(config)
    encoder = model.image_encoder
    images = Tensor(tiny_batch(4, config)[0])
    assert encoder(images).shape == (4, 12)
    names = [name for name, _ in encoder.named_buffers()]
    assert "blocks.0.bn1.running_mean" in names and "blocks.1.skip.1.running_var" in names  # 4 → 8: 1×1 skip
    train_out = encoder(images).numpy()
    model.eval()
    assert not any(m.training for m in model.modules())
    stats = {name: b.data.copy() for name, b in encoder.named_buffers()}
    eval_out = encoder(images).numpy()
    assert not np.allclose(train_out, eval_out)  # running statistics, not the batch's
    np.testing.assert_array_equal(eval_out, encoder(images).numpy())
    assert all(np.array_equal(stats[name], b.data) for name, b in encoder.named_buffers())  # eval moves none
    np.testing.assert_allclose(encoder(images[:1]).numpy(), eval_out[:1], rtol=1e-5, atol=1e-6)  # one image
    model.train()
    assert all(m.training for m in model.modules())


def test_resnet_state_dict_round_trip_keeps_running_statistics():
    config = CLIPConfig(**RESNET)
    encoder = ImageEncoder(config)
    images = Tensor(tiny_batch(5, config)[0])
    for _ in range(3):
        encoder(images)  # training-mode passes move the running statistics
    state = encoder.state_dict()
    assert not np.allclose(state["blocks.0.bn1.running_mean"], 0)
    tinyclip.manual_seed(1)
    twin = ImageEncoder(config)
    twin.load_state_dict(state)
    for name, value in twin.state_dict().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    np.testing.assert_array_equal(twin.eval()(images).numpy(), encoder.eval()(images).numpy())


@pytest.mark.parametrize("tower", ["resnet", "batchnorm"])
def test_batch_norm_towers_learn(tower):
    # Gradients reach every parameter, and a few Adam steps lower a regression loss on a tiny batch.
    config = CLIPConfig(**{**TINY, "image_tower": tower})
    encoder = ImageEncoder(config)
    images = Tensor(tiny_batch(6, config, seed=2)[0])
    target = Tensor(np.random.default_rng(3).standard_normal((6, 12)).astype(np.float32))
    opt = tinyclip.optim.Adam(encoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        diff = encoder(images) - target
        loss = (diff * diff).mean()
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and np.abs(p.grad).sum() > 0 for p in encoder.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_relu_after_the_pool_is_relu_before_it_bit_for_bit():
    """The towers run ReLU after max-pool: the same values and input gradients as the report's order."""
    from tinyclip import functional as F
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 8, 8, 5)).astype(np.float32)
    x0[0, :2, :2] = -np.abs(x0[0, :2, :2])  # a window with no positive value
    gy = rng.standard_normal((3, 4, 4, 5)).astype(np.float32)
    outs = []
    for order in ("relu first", "pool first"):
        x = Tensor(x0, requires_grad=True)
        pool = lambda t: F.max_pool2d(t, 2, channels_last=True)  # noqa: E731
        y = pool(F.relu(x)) if order == "relu first" else F.relu(pool(x))
        y.backward(gy)
        outs.append((y.data, x.grad))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
