"""Few-shot pneumonia task: the shared head-training loop, balanced sampling, the pipeline end to end, caching."""

import json

import numpy as np
import pandas as pd
import pytest

from tinyclip.models import CLIP
from tinyclip.tasks import TaskSkipped, fewshot, heads
from tinyclip.tasks.common import EvalContext

TINY = ["--epochs", "1", "--num-samples", "48", "--image-size", "32", "--conv-channels", "8,16", "--text-layers", "1",
        "--width", "32", "--ff-dim", "64", "--embed-dim", "32", "--max-len", "24", "--batch-size", "16",
        "--no-progress"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A barely trained tiny CLIP on synthetic pairs (a few seconds)."""
    from tinyclip.train import main
    out = tmp_path_factory.mktemp("fewshot_run")
    assert main([*TINY, "--out", str(out)]) == 0
    return out


def _context(run_dir, out, options):
    model, state = CLIP.from_checkpoint(run_dir, "best")
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    return EvalContext(model, state, pd.DataFrame(), empty, pd.DataFrame(), empty, out, options, seed=0)


def _separable(n, dim=16, seed=0, shift=1.5):
    """Two Gaussian classes whose means differ by ``shift`` along every axis: nearly separable."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    x = rng.standard_normal((n, dim)).astype(np.float32) + shift * y[:, None].astype(np.float32)
    return x, y.astype(np.int64)


# ---------------------------------------------------------------------------
# options and sampling
# ---------------------------------------------------------------------------

def test_parse_options():
    assert fewshot.parse_shots(None) == fewshot.DEFAULT_SHOTS
    assert fewshot.parse_shots("10, 50,all") == (10, 50, "all")
    assert fewshot.parse_shots([20, "ALL"]) == (20, "all")
    with pytest.raises(ValueError):
        fewshot.parse_shots("1")
    assert fewshot.parse_seeds(None, base=3) == [3, 4, 5, 6, 7]
    assert fewshot.parse_seeds("2") == [0, 1]
    assert fewshot.parse_seeds("4,9") == [4, 9]


def test_sample_shots_is_balanced_and_falls_back():
    labels = np.array([0] * 30 + [1] * 5)
    rng = np.random.default_rng(0)
    for n in (2, 10, 11):
        index = fewshot.sample_shots(labels, n, rng)
        assert len(index) == n == len(np.unique(index))
        assert abs(int(labels[index].sum()) - n / 2) <= 0.5  # n/2 of each class (±1 for odd n)
    index = fewshot.sample_shots(labels, 20, rng)  # only 5 positives: all of them, 15 negatives
    assert len(np.unique(index)) == 20 and labels[index].sum() == 5
    assert len(fewshot.sample_shots(labels, 100, rng)) == 35


def test_holdout_split_keeps_every_class_in_training():
    y = np.array([0] * 10 + [1] * 2 + [2])
    train, val = heads.holdout_split(y, 0.5, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert set(y[train]) == {0, 1, 2}
    assert (y[val] == 0).sum() == 5 and (y[val] == 1).sum() == 1


# ---------------------------------------------------------------------------
# the heads and their training loop
# ---------------------------------------------------------------------------

def test_fit_binary_mlp_learns_separable_features():
    x, y = _separable(400)
    head = heads.mlp_head(x.shape[1], 1, hidden=(32, 16))
    summary = heads.fit(head, x[:300], y[:300].astype(np.float32), "binary", steps=200)
    assert summary["n_val"] == 60 and summary["best_val_loss"] is not None
    logits = heads.predict(head, x[300:])
    assert logits.shape == (100, 1)
    assert heads.accuracy(y[300:], (logits[:, 0] > 0).astype(np.int64)) >= 0.9


def test_fit_multiclass_and_multilabel():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = (np.eye(3)[y] * 3 + rng.standard_normal((300, 3))).astype(np.float32)
    head = heads.mlp_head(3, 3, hidden=(16, 16))
    heads.fit(head, x[:200], y[:200], "multiclass", steps=200)
    assert heads.accuracy(y[200:], heads.predict(head, x[200:]).argmax(axis=1)) >= 0.85
    targets = np.stack([y == 0, y != 2], axis=1).astype(np.float32)
    head = heads.linear_head(3, 2)
    heads.fit(head, x[:200], targets[:200], "multilabel", steps=200, lr=1e-2)
    predicted = heads.predict(head, x[200:]) > 0
    assert heads.multilabel_f1(targets[200:], predicted)["micro_f1"] >= 0.85


def test_fit_without_holdout_for_tiny_sets_and_rejects_bad_input():
    x, y = _separable(10)
    summary = heads.fit(heads.linear_head(16, 1), x, y.astype(np.float32), "binary", steps=20)
    assert summary["n_val"] == 0 and summary["steps"] == 20 and summary["best_val_loss"] is None
    with pytest.raises(ValueError):
        heads.fit(heads.linear_head(16, 1), x, y, "regression")
    with pytest.raises(ValueError):
        heads.fit(heads.linear_head(16, 1), x[:5], y, "binary")


def test_few_shot_curve_on_separable_features():
    x, y = _separable(600, seed=2)
    curve = fewshot.few_shot_curve(x[:400], y[:400], x[400:], y[400:], shots=(10, 50, 1000, "all"), seeds=(0, 1),
                                   hidden=(32, 16), mlp_settings={"steps": 150}, probe_settings={"steps": 150},
                                   log=lambda s: None)
    assert curve["shots"] == ["10", "50", "all"]  # 1000 > 400 is skipped
    for name in ("mlp", "probe"):
        assert curve[name]["all"]["n"] == 400
        assert curve[name]["50"]["accuracy_mean"] >= 0.7
        assert curve[name]["all"]["accuracy_mean"] >= 0.9
        assert len(curve[name]["10"]["accuracies"]) == 2


def test_pixel_features():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[1, :16] = 255
    f = fewshot.pixel_features(images, side=4)
    assert f.shape == (2, 16)
    np.testing.assert_allclose(f[1], [1] * 8 + [0] * 8)


# ---------------------------------------------------------------------------
# the task end to end
# ---------------------------------------------------------------------------

OPTIONS = {"shots": "10,40,all", "seeds": "2", "synthetic_n": "120", "head_steps": "60", "head_hidden": "32,16"}


def test_run_end_to_end_and_cache(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    ctx = _context(tiny_run, out, dict(OPTIONS))
    metrics = fewshot.run(ctx, log=lambda s: None)
    json.dumps(metrics)  # JSON-serialisable
    for key in ("data", "features", "feature_dim", "features_from_cache", "n_train_pool", "n_test",
                "majority_baseline", "seeds", "shots", "mlp", "probe", "figure", "seconds"):
        assert key in metrics
    assert metrics["data"] == "synthetic" and metrics["feature_dim"] == 32 and metrics["n_train_pool"] == 120
    assert metrics["shots"] == ["10", "40", "all"] and metrics["seeds"] == [0, 1]
    assert not metrics["features_from_cache"]
    for name in ("mlp", "probe"):
        for label in metrics["shots"]:
            stats = metrics[name][label]
            assert 0.0 <= stats["accuracy_mean"] <= 1.0 and stats["accuracy_std"] >= 0.0
            assert len(stats["accuracies"]) == 2
    png = out / metrics["figure"]
    assert png.is_file() and png.stat().st_size > 1000
    assert len(list(out.glob("fewshot-features-*.npz"))) == 1

    # A rerun must not touch the image encoder: first from memory, then from the .npz alone.
    def boom(*args, **kwargs):
        raise AssertionError("features were recomputed")
    monkeypatch.setattr(ctx.model, "embed_images", boom)
    ctx.options.update(shots="10", seeds="1")
    assert fewshot.run(ctx, log=lambda s: None)["features_from_cache"]
    monkeypatch.setattr(heads, "_MEMORY", {})
    again = fewshot.run(ctx, log=lambda s: None)
    assert again["features_from_cache"]
    assert again["mlp"]["10"]["accuracies"] == metrics["mlp"]["10"]["accuracies"][:1]  # same seed, same numbers


def test_run_with_pixel_features_beats_chance(tiny_run, tmp_path):
    """Synthetic pneumonia is visible in the pixels: the whole pipeline gets well above chance."""
    options = {**OPTIONS, "features": "pixels", "shots": "all", "seeds": "1", "synthetic_n": "200",
               "head_steps": "100"}
    metrics = fewshot.run(_context(tiny_run, tmp_path, options), log=lambda s: None)
    assert metrics["probe"]["all"]["accuracy_mean"] >= 0.65


def test_run_on_pneumoniamnist_layout(tiny_run, tmp_path):
    """The npz branch: grey 28² images resized to the model's 32² and labels read per split."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 4), ("test", 20)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 100, (n, 28, 28)).astype(np.uint8)
        images[labels == 1, 8:20, 8:20] = 250  # a bright blob marks the positives
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    path = tmp_path / "pm.npz"
    np.savez(path, **arrays)
    options = {**OPTIONS, "pneumonia_npz": str(path), "shots": "10,all", "features": "pixels"}
    metrics = fewshot.run(_context(tiny_run, tmp_path / "eval", options), log=lambda s: None)
    assert metrics["data"] == "pneumoniamnist" and metrics["n_train_pool"] == 40 and metrics["n_test"] == 20
    assert metrics["probe"]["all"]["accuracy_mean"] >= 0.9


def test_balanced_weights_and_weighted_fit():
    y = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(heads.balanced_weights(y), [2 / 3, 2 / 3, 2 / 3, 2.0])
    # 90% positives and constant features: only the bias learns, and it converges to the prior,
    # σ(b) = 0.9 unweighted; weighted, both classes count the same and σ(b) = 0.5.
    x = np.zeros((200, 4), np.float32)
    y = (np.arange(200) % 10 != 0).astype(np.float32)
    for balance, expected in ((False, 0.9), (True, 0.5)):
        head = heads.linear_head(4, 1)
        heads.fit(head, x, y, "binary", steps=300, lr=5e-2, batch_size=200, balance=balance, val_fraction=0)
        assert heads.sigmoid(heads.predict(head, x[:1]))[0, 0] == pytest.approx(expected, abs=0.02)


def test_real_run_without_chest_xrays_is_skipped(tiny_run, tmp_path):
    ctx = _context(tiny_run, tmp_path, {})
    ctx.state = {**ctx.state, "args": {**ctx.state["args"], "data": "roco"}}
    with pytest.raises(TaskSkipped, match="chest-dir"):
        fewshot.run(ctx, log=lambda s: None)
