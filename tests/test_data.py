"""Data loading: image preprocessing and cache, ROCO, chest X-rays, the synthetic set, splits."""

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tinyclip.data.images as images_module
from tinyclip.data import (
    CLASS_NAMES,
    MEAN,
    MODALITIES,
    STD,
    ImageDecodeError,
    default_cache_dir,
    gray_to_rgb,
    iterate_batches,
    load_image,
    load_images,
    load_kermany,
    load_pneumoniamnist,
    load_roco,
    make_synthetic,
    make_synthetic_chest_xray,
    normalize,
    split,
    split_indices,
)
from tinyclip.text import Tokenizer

SHARED = Path(os.environ.get("TINYCLIP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
ROCO_TEST = SHARED / "roco" / "data" / "test" / "radiology"
ROCO_VALIDATION = SHARED / "roco" / "data" / "validation" / "radiology"
KERMANY = SHARED / "chest_xray"
PNEUMONIAMNIST = SHARED / "pneumoniamnist" / "pneumoniamnist.npz"


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"real data not found at {path} (set TINYCLIP_SHARED_DATA)")


def save_image(path: Path, mode: str, size=(40, 30), fmt=None):
    """Write a small test image of ``mode`` with some structure (a gradient)."""
    w, h = size
    gradient = np.linspace(0, 1, w * h).reshape(h, w)
    if mode == "I;16":
        image = Image.fromarray((gradient * 4095).astype(np.uint16))  # a 12-bit scan stored in 16 bits
    elif mode == "F":
        image = Image.fromarray((gradient * 1000 - 500).astype(np.float32))
    else:
        image = Image.fromarray((gradient * 255).astype(np.uint8)).convert(mode)
    image.save(path, format=fmt)
    return path


# ---------------------------------------------------------------------------
# load_image / load_images / normalize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "PNG"), ("RGB", "JPEG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"),
     ("1", "PNG"), ("CMYK", "JPEG"), ("F", "TIFF")],
)
def test_load_image_any_mode(tmp_path, mode, fmt):
    path = save_image(tmp_path / f"image.{fmt.lower()}", mode, fmt=fmt)
    out = load_image(path, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.max() > 0


def test_load_image_stretches_high_bit_depth(tmp_path):
    out = load_image(save_image(tmp_path / "scan.png", "I;16", size=(32, 32)), 32)
    assert out.min() == 0 and out.max() >= 250  # 0..4095 mapped onto 0..255, not clipped or left dark


def test_load_image_composites_transparency_on_black(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:, 10:, 3] = 255  # ... but opaque only on the right half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", 20)
    assert (out[:, :9] == 0).all()
    assert (out[:, 11:, 0] == 255).all() and (out[:, 11:, 1:] == 0).all()


def test_load_image_keeps_aspect_ratio_with_black_padding(tmp_path):
    Image.new("RGB", (40, 20), (255, 255, 255)).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 32)
    assert (out[:8] == 0).all() and (out[24:] == 0).all()  # 40x20 -> 32x16, centred
    assert (out[8:24] == 255).all()


def test_load_image_errors_name_the_path(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ImageDecodeError, match="corrupt.jpg"):
        load_image(corrupt, 16)
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    truncated.write_bytes((tmp_path / "ok.jpg").read_bytes()[:600])
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        load_image(truncated, 16)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg", 16)
    assert issubclass(ImageDecodeError, ValueError)


def test_load_images_flags_failures(tmp_path):
    good = save_image(tmp_path / "good.png", "RGB")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    images, ok = load_images([good, corrupt, tmp_path / "missing.jpg"], 16)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(ok, [True, False, False])
    np.testing.assert_array_equal(images[0], load_image(good, 16))
    assert not images[1:].any()


def test_load_images_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    paths = [save_image(tmp_path / f"{i}.png", "L") for i in range(3)] + [tmp_path / "missing.png"]
    cache = tmp_path / "cache"
    first, ok = load_images(paths, 16, cache_dir=cache)

    def must_not_decode(path, size):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(images_module, "load_image", must_not_decode)
    second, ok2 = load_images(paths, 16, cache_dir=cache)
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(second, first)
    np.testing.assert_array_equal(ok2, [True, True, True, False])
    assert not [p for p in cache.iterdir() if p.suffix == ".tmp"]
    monkeypatch.undo()

    # A changed file (new size and time) or another image size means a new cache entry.
    save_image(paths[0], "L", size=(50, 30))
    os.utime(paths[0], ns=(1, 1))
    third, _ = load_images(paths, 16, cache_dir=cache)
    assert not isinstance(third, np.memmap)
    assert not isinstance(load_images(paths, 8, cache_dir=cache)[0], np.memmap)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYCLIP_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TINYCLIP_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tinyclip"


def test_normalize():
    batch = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    batch[1] = 255
    batch[0, :, :, 1] = 255
    out = normalize(batch)
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32 and out.flags.c_contiguous
    mean, std = np.array(MEAN), np.array(STD)
    np.testing.assert_allclose(out[1, :, 0, 0], (1 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 0], (np.array([0, 1, 0]) - mean) / std, rtol=1e-6)
    assert normalize(batch, dtype=np.float64, xp=np).dtype == np.float64
    with pytest.raises(ValueError, match="uint8"):
        normalize(batch.astype(np.float32))


# ---------------------------------------------------------------------------
# ROCO
# ---------------------------------------------------------------------------


def make_roco(folder: Path, with_images=True) -> Path:
    """A small ROCO folder: good images in several formats, a corrupt and a missing one, an empty caption."""
    folder.mkdir()
    captions = {
        "ROCO_00001": "Axial CT of the abdomen.",
        "ROCO_00002": "Chest radiograph (grayscale JPEG).",
        "ROCO_00003": "RGBA image saved as PNG but named .jpg",
        "ROCO_00004": "Corrupt image file.",
        "ROCO_00005": "Image file missing.",
        "ROCO_00006": "   ",
        "ROCO_00007": "Ultrasound with no CUIs.",
    }
    (folder / "captions.txt").write_text("".join(f"{i}\t {c}\n" for i, c in captions.items()), encoding="utf-8")
    cuis = {i: ["C0040405", "C0000726"] for i in captions} | {"ROCO_00007": []}
    (folder / "cuis.txt").write_text("".join(f"{i}\t\t" + "\t".join(c) + "\n" for i, c in cuis.items()))
    if with_images:
        images = folder / "images"
        images.mkdir()
        save_image(images / "ROCO_00001.jpg", "RGB", fmt="JPEG")
        save_image(images / "ROCO_00002.jpg", "L", fmt="JPEG")
        save_image(images / "ROCO_00003.jpg", "RGBA", fmt="PNG")
        (images / "ROCO_00004.jpg").write_bytes(np.random.default_rng(1).bytes(2000))
        save_image(images / "ROCO_00006.jpg", "RGB", fmt="JPEG")
        save_image(images / "ROCO_00007.jpg", "RGB", fmt="JPEG")
    return folder


def test_load_roco_skips_bad_pairs_with_one_warning(tmp_path):
    folder = make_roco(tmp_path / "roco")
    with pytest.warns(UserWarning) as record:
        frame = load_roco(folder)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 3 of 7 pairs" in message
    assert "1 with an empty caption" in message
    assert "1 with a missing image" in message
    assert "1 with an unreadable image" in message
    assert list(frame.columns) == ["id", "caption", "cuis", "image"]
    assert frame["id"].tolist() == ["ROCO_00001", "ROCO_00002", "ROCO_00003", "ROCO_00007"]
    assert frame["caption"][0] == "Axial CT of the abdomen."  # the space after the tab is stripped
    assert frame["cuis"][0] == ["C0040405", "C0000726"] and frame["cuis"][3] == []
    images, ok = load_images(frame["image"], 16)
    assert ok.all()


def test_load_roco_text_only_needs_no_images(tmp_path):
    folder = make_roco(tmp_path / "roco", with_images=False)
    (folder / "keywords.txt").write_text("ROCO_00001\t\taxial\tabdomen\n")
    with pytest.warns(UserWarning, match="skipped 1 of 7 pairs: 1 with an empty caption"):
        frame = load_roco(folder, images=False)
    assert len(frame) == 6
    assert frame["image"].isna().all()
    assert frame["keywords"][0] == ["axial", "abdomen"] and frame["keywords"][1] == []


def test_load_roco_clean_folder_does_not_warn(tmp_path):
    folder = make_roco(tmp_path / "roco", with_images=False)
    (folder / "captions.txt").write_text("ROCO_00001\t CT.\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_roco(folder, images=False)) == 1


@pytest.mark.parametrize(
    "line, problem",
    [("ROCO_00009 no tab here", "expected 'id<TAB>caption'"), ("ROCO 9\tcaption", "bad id"),
     ("ROCO_00001\tagain", "duplicate id")],
)
def test_load_roco_malformed_line_names_file_and_line(tmp_path, line, problem):
    folder = make_roco(tmp_path / "roco", with_images=False)
    with open(folder / "captions.txt", "a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"captions.txt, line 8: {problem}")):
        load_roco(folder, images=False)


def test_load_roco_missing_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_roco(tmp_path / "nowhere")
    folder = make_roco(tmp_path / "roco", with_images=False)
    with pytest.raises(FileNotFoundError, match="images/"):
        load_roco(folder, images=True)
    (folder / "cuis.txt").unlink()
    with pytest.raises(FileNotFoundError, match="cuis.txt"):
        load_roco(folder, images=False)
    (folder / "captions.txt").unlink()
    with pytest.raises(FileNotFoundError, match="captions.txt"):
        load_roco(folder, images=False)


@needs(ROCO_TEST)
def test_load_roco_real_test_split():
    frame = load_roco(ROCO_TEST)
    assert len(frame) == 3645
    assert frame["caption"].str.len().gt(0).all()
    assert set(frame.columns) >= {"id", "caption", "cuis", "image", "keywords"}


@needs(ROCO_VALIDATION)
def test_load_roco_real_validation_text_only():
    frame = load_roco(ROCO_VALIDATION, images=False)
    assert len(frame) == 8180
    tok = Tokenizer.fit(frame["caption"], max_vocab=5000)
    captions = frame["caption"].drop(Tokenizer.find_empty(frame["caption"]))
    ids, mask = tok.encode(list(captions), max_len=32)
    assert (~mask).any(axis=1).all()


# ---------------------------------------------------------------------------
# Pneumonia chest X-rays
# ---------------------------------------------------------------------------


def test_load_kermany_fixture(tmp_path):
    for split_name in ("train", "test"):
        for name in ("NORMAL", "PNEUMONIA"):
            (tmp_path / split_name / name).mkdir(parents=True)
    save_image(tmp_path / "test" / "NORMAL" / "b.jpeg", "L", fmt="JPEG")
    save_image(tmp_path / "test" / "NORMAL" / "a.JPG", "L", fmt="JPEG")
    save_image(tmp_path / "test" / "PNEUMONIA" / "c.png", "L")
    (tmp_path / "test" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    frame = load_kermany(tmp_path, "test")
    assert [Path(p).name for p in frame["image"]] == ["a.JPG", "b.jpeg", "c.png"]
    assert frame["label"].tolist() == [0, 0, 1] and frame["label"].dtype == np.int64
    with pytest.raises(ValueError, match="no images"):
        load_kermany(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="val"):
        load_kermany(tmp_path, "val")
    assert CLASS_NAMES == ("normal", "pneumonia")


@needs(KERMANY)
def test_load_kermany_real():
    frame = load_kermany(KERMANY, "test")
    assert (frame["label"] == 0).sum() == 234 and (frame["label"] == 1).sum() == 390
    assert frame.equals(load_kermany(KERMANY, "test"))


def pneumoniamnist_arrays(n=(6, 2, 3), size=28):
    rng = np.random.default_rng(0)
    arrays = {}
    for split_name, count in zip(("train", "val", "test"), n):
        arrays[f"{split_name}_images"] = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
        arrays[f"{split_name}_labels"] = rng.integers(0, 2, (count, 1), dtype=np.uint8)
    return arrays


def test_load_pneumoniamnist_fixture(tmp_path):
    np.savez(tmp_path / "p.npz", **pneumoniamnist_arrays())
    data = load_pneumoniamnist(tmp_path / "p.npz")
    assert data["train_images"].shape == (6, 28, 28) and data["train_images"].dtype == np.uint8
    assert data["test_labels"].shape == (3,) and data["test_labels"].dtype == np.int64


@pytest.mark.parametrize(
    "change, message",
    [(lambda a: a.pop("val_labels"), "'val_labels'"),
     (lambda a: a.update(test_images=a["test_images"][:, :, :5]), "'test_images'"),
     (lambda a: a.update(train_labels=np.zeros((5, 1))), "'train_labels'"),
     (lambda a: a.update(train_labels=np.full((6, 1), 3)), "only 0 and 1")],
)
def test_load_pneumoniamnist_rejects_bad_files(tmp_path, change, message):
    arrays = pneumoniamnist_arrays()
    change(arrays)
    np.savez(tmp_path / "p.npz", **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_pneumoniamnist(tmp_path / "p.npz")
    assert "p.npz" in str(info.value)


def test_load_pneumoniamnist_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_pneumoniamnist(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz"):
        load_pneumoniamnist(tmp_path / "junk.npz")


@needs(PNEUMONIAMNIST)
def test_load_pneumoniamnist_real():
    data = load_pneumoniamnist(PNEUMONIAMNIST)
    assert data["train_images"].shape == (4707, 28, 28)
    assert len(data["val_labels"]) == 524 and len(data["test_labels"]) == 624


def test_gray_to_rgb():
    images = np.full((2, 28, 28), 7, dtype=np.uint8)
    out = gray_to_rgb(images, 64)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    assert (out == 7).all()
    with pytest.raises(ValueError, match="uint8"):
        gray_to_rgb(images.astype(np.float32), 64)


# ---------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------

# Independent of the generator's own phrase table: how a reader would spot each modality.
MODALITY_WORDS = {
    "ct": r"\bct\b|computed tomography",
    "mri": r"\bmri?\b|magnetic resonance|weighted|flair",
    "ultrasound": r"ultraso|sonograph|\bus\b|doppler",
    "fluoroscopy": r"fluoroscop|barium",
    "xray": r"x-ray|radiograph|plain film",
    "angiography": r"angiogra|\bdsa\b",
}


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(num_samples=240, image_size=32, seed=3)


def test_synthetic_shapes_and_columns(synthetic):
    frame, images = synthetic
    assert images.shape == (240, 32, 32, 3) and images.dtype == np.uint8
    assert list(frame.columns) == ["id", "caption", "cuis", "modality", "region", "finding", "label"]
    assert frame["id"][0] == "SYN_00000" and frame["id"].is_unique
    assert frame["modality"].value_counts().to_dict() == {m: 40 for m in MODALITIES}
    assert all(cuis and all(re.fullmatch(r"C\d{7}", c) for c in cuis) for cuis in frame["cuis"])
    assert (images[..., 0] == images[..., 1]).all()  # grey, like most radiology


def test_synthetic_captions_name_exactly_their_modality(synthetic):
    frame, _ = synthetic
    for caption, modality in zip(frame["caption"], frame["modality"]):
        named = [m for m, pattern in MODALITY_WORDS.items() if re.search(pattern, caption.lower())]
        assert named == [modality], caption
    assert not Tokenizer.find_empty(frame["caption"])


def test_synthetic_labels(synthetic):
    frame, _ = synthetic
    chest_xray = (frame["modality"] == "xray") & (frame["region"] == "chest")
    assert (frame.loc[~chest_xray, "label"] == -1).all()
    np.testing.assert_array_equal(frame.loc[chest_xray, "label"], frame.loc[chest_xray, "finding"] == "consolidation")


def test_synthetic_is_deterministic():
    frame_a, images_a = make_synthetic(num_samples=24, image_size=16, seed=5)
    frame_b, images_b = make_synthetic(num_samples=24, image_size=16, seed=5)
    pd.testing.assert_frame_equal(frame_a, frame_b)
    np.testing.assert_array_equal(images_a, images_b)
    frame_c, images_c = make_synthetic(num_samples=24, image_size=16, seed=6)
    assert not frame_a["caption"].equals(frame_c["caption"])
    assert not np.array_equal(images_a, images_c)


def nearest_mean_accuracy(images, labels, n_train):
    """Accuracy of a nearest-class-mean classifier on 8x8 grey thumbnails: a cheap learnability check."""
    k = images.shape[1] // 8
    x = images[..., 0].reshape(len(images), 8, k, 8, k).mean(axis=(2, 4)).reshape(len(images), -1)
    classes = np.unique(labels)
    means = np.stack([x[:n_train][labels[:n_train] == c].mean(0) for c in classes])
    predicted = classes[((x[n_train:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    return (predicted == labels[n_train:]).mean()


def test_synthetic_modalities_are_learnable(synthetic):
    frame, images = synthetic
    labels = frame["modality"].map(MODALITIES.index).to_numpy()
    assert nearest_mean_accuracy(images, labels, n_train=160) > 0.5  # chance is 1/6


def test_synthetic_chest_xray():
    images, labels = make_synthetic_chest_xray(20, image_size=32, seed=1)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [10, 10]
    again, again_labels = make_synthetic_chest_xray(20, image_size=32, seed=1)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)


@pytest.mark.slow
def test_synthetic_default_size():
    frame, images = make_synthetic()
    assert images.shape == (2000, 128, 128, 3)
    assert frame["label"].isin([0, 1]).sum() > 50


# ---------------------------------------------------------------------------
# Splits and batches
# ---------------------------------------------------------------------------


def test_split_indices_partition():
    train, val, test = split_indices(100, seed=0)
    assert (len(train), len(val), len(test)) == (64, 16, 20)
    combined = np.concatenate([train, val, test])
    np.testing.assert_array_equal(np.sort(combined), np.arange(100))
    assert train.dtype.kind == "i"
    for a, b in zip((train, val, test), split_indices(100, seed=0)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(train, split_indices(100, seed=1)[0])
    assert [len(p) for p in split_indices(10, (0.5, 0.5, 0.0))] == [5, 5, 0]
    assert [len(p) for p in split_indices(0)] == [0, 0, 0]


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (0.7, 0.3), (1.2, -0.1, -0.1)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, fractions)


def test_split_frame_keeps_index():
    frame = pd.DataFrame({"caption": [f"c{i}" for i in range(50)]})
    train, val, test = split(frame, seed=2)
    assert len(train) + len(val) + len(test) == 50
    assert set(train.index).isdisjoint(val.index) and set(val.index).isdisjoint(test.index)
    assert (train["caption"] == [f"c{i}" for i in train.index]).all()


def test_iterate_batches_covers_and_reshuffles():
    rng = np.random.default_rng(0)
    epochs = [list(iterate_batches(10, 4, rng)) for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [4, 4, 2]
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(10))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    assert [len(b) for b in iterate_batches(10, 4, rng, drop_last=True)] == [4, 4]
    ordered = list(iterate_batches(5, 2, shuffle=False))
    np.testing.assert_array_equal(np.concatenate(ordered), np.arange(5))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(5, 0))
