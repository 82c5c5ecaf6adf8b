"""augment_images: shape, dtype and range kept; strength 0 is the identity; same seed, same output."""

import numpy as np
import pytest

from tinyclip.data.augment import augment_images


def batch():
    return np.random.default_rng(0).random((5, 3, 12, 10)).astype(np.float32)


def test_shape_dtype_range_and_seed():
    x = batch()
    a = augment_images(x, np.random.default_rng(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= x.min() and a.max() <= x.max()
    assert not np.allclose(a, x)
    np.testing.assert_array_equal(a, augment_images(x, np.random.default_rng(1)))
    assert not np.array_equal(a, augment_images(x, np.random.default_rng(2)))


def test_strength_zero_is_identity_and_bad_strength_is_refused():
    x = batch()
    np.testing.assert_array_equal(augment_images(x, np.random.default_rng(1), strength=0.0), x)
    with pytest.raises(ValueError, match="strength"):
        augment_images(x, np.random.default_rng(1), strength=2.0)


def test_no_flip_small_strength_stays_close():
    x = batch()
    a = augment_images(x, np.random.default_rng(3), strength=0.01)
    assert np.abs(a - x).mean() < 0.05  # a flip would move pixels far more


def test_caption_augmentation():
    from tinyclip.data.augment import augment_caption

    caption = "Chest X-ray. Right lower lobe consolidation. No effusion."
    assert augment_caption(caption, np.random.default_rng(0), strength=0.0) == caption
    picked = augment_caption(caption, np.random.default_rng(0), dropout=0.0)
    assert picked in {"Chest X-ray.", "Right lower lobe consolidation.", "No effusion."}
    assert augment_caption(caption, np.random.default_rng(5)) == augment_caption(caption, np.random.default_rng(5))
    assert augment_caption("one", np.random.default_rng(0), dropout=1.0) == "one"
