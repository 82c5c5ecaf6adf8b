"""Few-shot pneumonia task: the shared head-training loop, balanced sampling, the pipeline end to end, caching."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tinyclip.models import CLIP
from tinyclip.tasks import TaskSkipped, fewshot, heads
from tinyclip.tasks.common import EvalContext
from tinyclip.tasks.metrics import accuracy, multilabel_f1

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


def _context(run_dir, out, **common):
    model, state = CLIP.from_checkpoint(run_dir, "best")
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    return EvalContext(model, state, pd.DataFrame(), empty, pd.DataFrame(), empty, out, seed=0, **common)


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
    assert fewshot.Options().shots == fewshot.DEFAULT_SHOTS
    assert fewshot.parse_shots("10, 50,all") == (10, 50, "all")
    assert fewshot.parse_shots("20,ALL") == (20, "all")
    for bad in ("1", "ten", ",", "10,-5"):
        with pytest.raises(ValueError):
            fewshot.parse_shots(bad)
    assert fewshot.draw_seeds(fewshot.Options().seeds, base=3) == list(range(3, 23))  # 20 draws by default
    assert fewshot.draw_seeds(fewshot.parse_seeds("2")) == [0, 1]
    assert fewshot.draw_seeds(fewshot.parse_seeds("4,9"), base=3) == [4, 9]  # given seeds are used as they are
    assert fewshot.parse_seeds("0,1") == (0, 1)  # seed 0 is a seed; a count of 0 draws is not
    for bad in ("0", "abc", "-1,2"):
        with pytest.raises(ValueError, match="count"):
            fewshot.parse_seeds(bad)


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
    assert accuracy(y[300:], (logits[:, 0] > 0).astype(np.int64)) >= 0.9


def test_fit_multiclass_and_multilabel():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = (np.eye(3)[y] * 3 + rng.standard_normal((300, 3))).astype(np.float32)
    head = heads.mlp_head(3, 3, hidden=(16, 16))
    heads.fit(head, x[:200], y[:200], "multiclass", steps=200)
    assert accuracy(y[200:], heads.predict(head, x[200:]).argmax(axis=1)) >= 0.85
    targets = np.stack([y == 0, y != 2], axis=1).astype(np.float32)
    head = heads.linear_head(3, 2)
    heads.fit(head, x[:200], targets[:200], "multilabel", steps=200, lr=1e-2)
    predicted = heads.predict(head, x[200:]) > 0
    assert multilabel_f1(targets[200:], predicted)["micro_f1"] >= 0.85


def test_fit_without_holdout_for_tiny_sets_and_rejects_bad_input():
    x, y = _separable(10)
    summary = heads.fit(heads.linear_head(16, 1), x, y.astype(np.float32), "binary", steps=20)
    assert summary["n_val"] == 0 and summary["steps"] == 20 and summary["best_val_loss"] is None
    with pytest.raises(ValueError):
        heads.fit(heads.linear_head(16, 1), x, y, "regression")
    with pytest.raises(ValueError):
        heads.fit(heads.linear_head(16, 1), x[:5], y, "binary")


def _curve(x, y, test_x, test_y, shots, seeds, seeds_large=5, steps=150):
    """The protocol on given features: validation part, draws, both heads."""
    val, pool = fewshot.validation_part(y, 40, seed=0)
    plan = fewshot.draw_plan(y[pool], shots, seeds, seeds_large, log=lambda s: None)
    return fewshot.few_shot_curve(x[pool], y[pool], x[val], y[val], test_x, test_y, plan, hidden=(32, 16),
                                  mlp_settings={"steps": steps}, probe_settings={"steps": steps}, log=lambda s: None)


def test_few_shot_curve_on_separable_features():
    x, y = _separable(640, seed=2)
    curve = _curve(x[:440], y[:440], x[440:], y[440:], shots=(10, 50, 1000, "all"), seeds=(0, 1), steps=80)
    assert curve["shots"] == ["10", "50", "all"]  # 1000 > 400 is skipped
    for name in ("mlp", "probe"):
        assert curve[name]["all"]["n"] == 400  # the 440 training rows less the 40 of the validation part
        assert curve[name]["50"]["accuracy_mean"] >= 0.7
        assert curve[name]["all"]["accuracy_mean"] >= 0.9 and curve[name]["all"]["auc_mean"] >= 0.95
        assert len(curve[name]["10"]["accuracies"]) == len(curve[name]["10"]["aucs"]) == 2
        # nearly balanced test classes: balanced accuracy is close to accuracy
        np.testing.assert_allclose(curve[name]["50"]["balanced_accuracies"], curve[name]["50"]["accuracies"],
                                   atol=0.02)


def test_validation_part_is_fixed_balanced_and_disjoint():
    y = np.random.default_rng(0).permutation(np.array([0] * 300 + [1] * 900))
    val, pool = fewshot.validation_part(y, seed=0)
    assert len(val) == fewshot.DEFAULT_VAL_N and np.bincount(y[val]).tolist() == [100, 100]
    assert np.intersect1d(val, pool).size == 0 and len(val) + len(pool) == len(y)
    again, _ = fewshot.validation_part(y, seed=0)
    np.testing.assert_array_equal(val, again)
    assert len(fewshot.validation_part(y[:100], seed=0)[0]) == 20  # at most a fifth of a small folder
    with pytest.raises(ValueError, match="val_n"):
        fewshot.validation_part(y, 1)


def test_draws_depend_only_on_the_seed_n_and_labels():
    """The plan is built from labels alone: every tower that gets it sees the same images (paired draws)."""
    y = np.array([0, 1] * 400)
    plan = fewshot.draw_plan(y, (10, 200, 500, "all"), seeds=range(20), seeds_large=5, log=lambda s: None)
    again = fewshot.draw_plan(y, (10, 200, 500, "all"), seeds=range(20), seeds_large=5, log=lambda s: None)
    assert [e["label"] for e in plan] == ["10", "200", "500", "all"]
    assert [len(e["draws"]) for e in plan] == [20, 20, 5, 5]  # 20 draws up to n = 200, the first 5 above
    for e, f in zip(plan, again):
        for (seed, index), (seed2, index2) in zip(e["draws"], f["draws"]):
            assert seed == seed2 and len(index) == e["n"]
            np.testing.assert_array_equal(index, index2)
    draws_10 = {tuple(i) for _, i in plan[0]["draws"]}
    assert len(draws_10) == 20  # the draws differ from one another
    with pytest.raises(ValueError, match="shots"):
        fewshot.draw_plan(y, (1000,), seeds=[0], log=lambda s: None)


def test_threshold_and_early_stopping_come_from_the_validation_part():
    """Test labels are only scored: shuffling them changes no threshold and no trained head."""
    x, y = _separable(400, seed=3, shift=0.7)
    test_y = y[300:]
    a = _curve(x[:300], y[:300], x[300:], test_y, shots=(20,), seeds=(0, 1, 2), steps=60)
    b = _curve(x[:300], y[:300], x[300:], np.random.default_rng(0).permutation(test_y), shots=(20,),
               seeds=(0, 1, 2), steps=60)
    for name in ("mlp", "probe"):
        assert a[name]["20"]["thresholds"] == b[name]["20"]["thresholds"]
        assert a[name]["20"]["draws"] == b[name]["20"]["draws"]


def test_fit_with_a_given_validation_set():
    x, y = _separable(300, seed=4)
    head = heads.linear_head(16, 1)
    summary = heads.fit(head, x[:20], y[:20].astype(np.float32), "binary", steps=100, val=(x[200:], y[200:]),
                        balance=True)
    assert summary["n_train"] == 20 and summary["n_val"] == 100 and summary["best_val_loss"] is not None
    with pytest.raises(ValueError, match="validation"):
        heads.fit(head, x[:20], y[:20], "binary", val=(x[:3], y[:4]))


def test_wilcoxon_p_and_paired_comparison():
    # all 5 differences positive: the exact two-sided p-value is 2 / 2^5
    assert fewshot.wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert fewshot.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0 and fewshot.wilcoxon_p([0.3]) is None
    x, y = _separable(300, seed=5, shift=0.8)
    curve = _curve(x[:200], y[:200], x[200:], y[200:], shots=(10,), seeds=range(6), steps=40)
    same = fewshot.paired_comparison(curve, curve)["mlp"]["10"]
    assert same["draws"] == 6 and same["auc_gain_mean"] == 0.0 and same["auc_gain_p"] == 1.0
    noise = np.random.default_rng(1).standard_normal((300, 16)).astype(np.float32)
    worse = _curve(noise[:200], y[:200], noise[200:], y[200:], shots=(10,), seeds=range(6), steps=40)
    gain = fewshot.paired_comparison(curve, worse)["mlp"]["10"]
    assert gain["auc_gain_mean"] > 0.1 and gain["auc_gain_p"] == pytest.approx(2 / 64)  # 6 of 6 draws better
    other = _curve(x[:200], y[:200], x[200:], y[200:], shots=(10,), seeds=range(1, 7), steps=40)
    with pytest.raises(ValueError, match="same draws"):
        fewshot.paired_comparison(curve, other)


def test_pixel_features():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[1, :16] = 255
    f = fewshot.pixel_features(images, side=4)
    assert f.shape == (2, 16)
    np.testing.assert_allclose(f[1], [1] * 8 + [0] * 8)


# ---------------------------------------------------------------------------
# the task end to end
# ---------------------------------------------------------------------------

# The tests below read the 32-d embedding (features=clip) for speed; the default is the tower layer.
OPTIONS = fewshot.Options(shots=(10, 40, "all"), seeds=2, synthetic_n=120, head_steps=60, head_hidden=(32, 16),
                          features="clip")


def test_default_features_are_the_tower_layer():
    assert fewshot.Options().features == "tower"


def test_run_end_to_end_and_cache(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    ctx = _context(tiny_run, out)
    metrics = fewshot.run(ctx, OPTIONS, log=lambda s: None)
    json.dumps(metrics)  # JSON-serialisable
    for key in ("data", "features", "feature_dim", "features_from_cache", "n_train_pool", "n_validation", "n_test",
                "majority_baseline", "protocol", "seeds", "shots", "mlp", "probe", "figure", "seconds",
                "accuracy_mlp_10", "balanced_accuracy_probe_all", "auc_mlp_40"):
        assert key in metrics
    assert "compare_init" not in metrics
    assert metrics["data"] == "synthetic" and metrics["feature_dim"] == 32
    assert metrics["n_validation"] == 24 and metrics["n_train_pool"] == 96  # a fifth of 120 held out
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

    # A rerun must not touch the image encoder: the features come from the .npz.
    def boom(*args, **kwargs):
        raise AssertionError("features were recomputed")
    monkeypatch.setattr(ctx.model, "embed_images", boom)
    again = fewshot.run(ctx, replace(OPTIONS, shots=(10,), seeds=1), log=lambda s: None)
    assert again["features_from_cache"]
    assert again["mlp"]["10"]["accuracies"] == metrics["mlp"]["10"]["accuracies"][:1]  # same seed, same numbers


def test_compare_with_the_untrained_tower(tiny_run, tmp_path):
    """compare_init=1: the untrained model of the run's configuration and seed on the same draws, with p-values."""
    from tinyclip.evaluate import initial_model
    lines = []
    options = replace(OPTIONS, shots=(10, "all"), seeds=3, seeds_large=2, head_steps=30, compare_init=True)
    ctx = _context(tiny_run, tmp_path)
    metrics = fewshot.run(ctx, options, log=lines.append)
    json.dumps(metrics)
    compared = metrics["compare_init"]
    assert compared["seed"] == ctx.state["args"]["seed"]
    for name in ("mlp", "probe"):
        for label, draws in (("10", 3), ("all", 2)):
            mine, untrained, row = metrics[name][label], compared["untrained"][name][label], compared[name][label]
            assert mine["draws"] == untrained["draws"] and mine["seeds"] == untrained["seeds"]  # paired
            assert row["draws"] == draws and 0.0 <= row["auc_gain_p"] <= 1.0
            expected = np.mean(np.asarray(mine["aucs"]) - np.asarray(untrained["aucs"]))
            assert row["auc_gain_mean"] == pytest.approx(expected)
            assert row["auc_reference"] == pytest.approx(untrained["auc_mean"])
    for key in ("auc_gain_mlp_10", "auc_gain_p_mlp_10", "accuracy_gain_mlp_all", "accuracy_gain_p_mlp_all"):
        assert key in metrics
    assert len(list(tmp_path.glob("fewshot-features-*.npz"))) == 2  # both towers' features cached
    table = lines[-1]
    assert "ΔAUC" in table and "AUC untrained" in table and len(table.splitlines()) == 2 + 2 * 2  # title, header
    # the untrained tower is the run's: its features are those of initial_model(state)
    untrained = initial_model(ctx.state)
    assert heads.model_fingerprint(untrained) != heads.model_fingerprint(ctx.model)
    with pytest.raises(ValueError, match="untrained one"):
        ctx.model = untrained
        fewshot.run(ctx, options, log=lambda s: None)
    with pytest.raises(ValueError, match="features=clip or tower"):
        fewshot.run(_context(tiny_run, tmp_path), replace(options, features="pixels"), log=lambda s: None)


def test_tower_features_are_what_the_projection_sees(tiny_run, tmp_path):
    """features=tower: the flattened last conv block (proj's input), for the run's and the untrained tower."""
    ctx = _context(tiny_run, tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    features = ctx.model.image_features(images, batch_size=2)
    assert features.shape == (5, ctx.model.image_encoder.proj.in_features) == (5, 8 * 8 * 16)
    projected = features @ ctx.model.image_encoder.proj.weight.data + ctx.model.image_encoder.proj.bias.data
    unit = projected / np.linalg.norm(projected, axis=1, keepdims=True)
    assert np.allclose(unit, ctx.model.embed_images(images), atol=1e-5)  # embedding = normalised proj(features)
    assert ctx.model.image_features(images[:0]).shape == (0, 8 * 8 * 16)
    options = replace(OPTIONS, features="tower", shots=(10,), seeds=2, head_steps=30, compare_init=True)
    metrics = fewshot.run(ctx, options, log=lambda s: None)
    assert metrics["feature_dim"] == 8 * 8 * 16 and "before its projection" in metrics["features"]
    assert metrics["compare_init"]["mlp"]["10"]["draws"] == 2
    clip = fewshot.run(ctx, replace(options, compare_init=False), log=lambda s: None)
    assert clip["features_from_cache"]  # the tower features of this checkpoint, cached apart from the embeddings
    assert len(list(tmp_path.glob("fewshot-features-*.npz"))) == 2
    assert fewshot.run(ctx, replace(options, features="clip", compare_init=False),
                       log=lambda s: None)["feature_dim"] == 32


def test_run_with_pixel_features_beats_chance(tiny_run, tmp_path):
    """Synthetic pneumonia is visible in the pixels: the whole pipeline gets well above chance."""
    options = replace(OPTIONS, features="pixels", shots=("all",), seeds=1, synthetic_n=200, head_steps=100)
    metrics = fewshot.run(_context(tiny_run, tmp_path), options, log=lambda s: None)
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
    options = replace(OPTIONS, shots=(10, "all"), features="pixels")
    metrics = fewshot.run(_context(tiny_run, tmp_path / "eval", pneumonia_npz=path), options, log=lambda s: None)
    assert metrics["data"] == "pneumoniamnist" and metrics["n_test"] == 20
    assert metrics["n_train_pool"] + metrics["n_validation"] == 40
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
        assert 1 / (1 + np.exp(-heads.predict(head, x[:1])[0, 0])) == pytest.approx(expected, abs=0.02)


def test_real_run_without_chest_xrays_is_skipped(tiny_run, tmp_path):
    ctx = _context(tiny_run, tmp_path)
    ctx.state = {**ctx.state, "args": {**ctx.state["args"], "data": "roco"}}
    with pytest.raises(TaskSkipped, match="chest-dir"):
        fewshot.run(ctx, log=lambda s: None)
