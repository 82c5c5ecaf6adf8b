"""augment_images: shape and dtype kept; strength 0 is the identity; same seed, same output."""

import numpy as np
import pytest

from tinyclip.data.augment import augment_images


def batch(channels=3):
    # Smooth images (a blurred random field), as radiographs are: small warps move values little.
    rng = np.random.default_rng(0)
    field = rng.random((5, 4, 4, channels))
    return (np.kron(field, np.ones((1, 6, 5, 1))) * 255).astype(np.uint8)  # (5, 24, 20, C)


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_and_seed(channels):
    x = batch(channels)
    a = augment_images(x, np.random.default_rng(1))
    assert a.shape == x.shape and a.dtype == np.uint8
    assert not np.array_equal(a, x)
    np.testing.assert_array_equal(a, augment_images(x, np.random.default_rng(1)))
    assert not np.array_equal(a, augment_images(x, np.random.default_rng(2)))


def test_strength_zero_is_identity_and_bad_strength_is_refused():
    x = batch()
    np.testing.assert_array_equal(augment_images(x, np.random.default_rng(1), strength=0.0), x)
    with pytest.raises(ValueError, match="strength"):
        augment_images(x, np.random.default_rng(1), strength=2.0)
    with pytest.raises(ValueError, match="uint8"):
        augment_images(x.astype(np.float32), np.random.default_rng(1))


def test_no_flip_small_strength_stays_close():
    x = batch()
    a = augment_images(x, np.random.default_rng(3), strength=0.01)
    flipped = x[:, :, ::-1]
    assert np.abs(a.astype(int) - x).mean() < 2 < np.abs(flipped.astype(int) - x).mean()


def test_caption_augmentation():
    from tinyclip.data.augment import augment_caption
    from tinyclip.text import Tokenizer

    caption = "Chest X-ray. Right lower lobe consolidation. No effusion."
    assert augment_caption(caption, np.random.default_rng(0), strength=0.0) == caption
    picked = augment_caption(caption, np.random.default_rng(0), dropout=0.0)
    assert picked in {"Chest X-ray.", "Right lower lobe consolidation.", "No effusion."}
    assert augment_caption(caption, np.random.default_rng(5)) == augment_caption(caption, np.random.default_rng(5))
    assert augment_caption("one", np.random.default_rng(0), dropout=1.0) == "one"
    # a punctuation-only sentence or word is never all that remains: the tokenizer must read a word
    for seed in range(50):
        assert Tokenizer.tokenize(augment_caption("Axial CT of the liver. –", np.random.default_rng(seed)))
        assert Tokenizer.tokenize(augment_caption("– lesion", np.random.default_rng(seed), dropout=1.0))
