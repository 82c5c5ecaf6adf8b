"""Recipes and the objective flags of ``tinyclip.train``: parameter groups, concept targets, augmentation,
exact accumulation, SimCLR, selection by R@10, exact resume with all of them on."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import tinyclip
from tinyclip import optim, train
from tinyclip.checkpoint import load_checkpoint
from tinyclip.models import CLIP, CLIPConfig
from tinyclip.nn import Parameter
from tinyclip.recipes import RECIPES, apply_recipe

from test_train import TINY, assert_resume_is_exact

ALL_ON = ["--loss", "concept", "--concept-alpha", "0.5", "--augment", "0.5", "--text-augment", "0.5",
          "--ssl-weight", "0.5", "--accum-steps", "2", "--select", "val_r10", "--optimizer", "adamw",
          "--weight-decay", "0.1", "--warmup-steps", "3", "--logit-scale-lr", "0.1", "--ema", "0.9"]


def rows(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_parameter_groups_set_weight_decay_and_lr_per_group():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(3))
    opt = optim.AdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0, "lr_scale": 0.5}], lr=0.1,
                      weight_decay=0.5)
    a.grad, b.grad = np.zeros(3), np.ones(3)
    opt.step()
    np.testing.assert_allclose(a.data, 1 - 0.1 * 0.5)        # decayed, no gradient step
    np.testing.assert_allclose(b.data, 1 - 0.05, rtol=1e-6)  # not decayed; Adam's first step is lr · lr_scale
    with pytest.raises(ValueError, match="unknown parameter-group keys"):
        optim.Adam([{"params": [a], "momentum": 0.9}])


def test_clip_groups_never_decay_biases_gains_or_the_logit_scale():
    model = CLIP(CLIPConfig(image_size=16, conv_channels=(4, 8), vocab_size=30, max_len=8, width=16,
                            text_layers=1, heads=2, ff_dim=32, embed_dim=16))
    groups = model.parameter_groups(logit_scale_lr_scale=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for p in groups[0]["params"]]
    plain = [names[id(p)] for g in groups[1:] for p in g["params"]]
    assert decayed and all(p.ndim > 1 for p in groups[0]["params"])
    assert not any(n.endswith("bias") or "norm" in n or n == "logit_scale" for n in decayed)
    assert "logit_scale" in plain and any(n.endswith("bias") for n in plain)
    assert groups[-1] == {"params": [model.logit_scale], "weight_decay": 0.0, "lr_scale": 0.1}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_recipe_fills_unset_flags_and_explicit_flags_win():
    args = train.build_parser().parse_args(["--recipe", "small-data", "--lr", "1e-3"])
    apply_recipe(args)
    assert args.lr == 1e-3 and args.loss == RECIPES["small-data"]["loss"]
    args = train.build_parser().parse_args(["--data", "synthetic"])
    apply_recipe(args)
    assert args.recipe == "report" and all(getattr(args, k) == v for k, v in RECIPES["report"].items())
    assert RECIPES["report"]["lr"] == 5e-5 and RECIPES["report"]["loss"] == "clip"


def test_metrics_record_recall_and_logit_scale(tmp_path):
    out = tmp_path / "r"
    assert train.main(TINY + ["--epochs", "2", "--out", str(out)]) == 0
    for row in rows(out):
        assert 0 <= float(row["val_r10_i2t"]) <= 1 and 0 <= float(row["val_r10_t2i"]) <= 1
        assert math.isclose(float(row["logit_scale"]), math.log(1 / 0.07), rel_tol=0.05)


def test_select_by_recall_keeps_the_best_recall_epoch(tmp_path):
    out = tmp_path / "r"
    assert train.main(TINY + ["--epochs", "4", "--patience", "0", "--select", "val_r10", "--out", str(out)]) == 0
    scores = [(float(r["val_r10_i2t"]) + float(r["val_r10_t2i"])) / 2 for r in rows(out)]
    assert load_checkpoint(out, "best")["epoch"] == 1 + int(np.argmax(scores))


def test_fixed_temperature_stays_fixed(tmp_path):
    out = tmp_path / "r"
    assert train.main(TINY + ["--epochs", "2", "--temperature", "0.1", "--out", str(out)]) == 0
    assert all(math.isclose(float(r["logit_scale"]), math.log(10.0), rel_tol=1e-6) for r in rows(out))


def test_every_option_on_resumes_exactly(tmp_path):
    last = assert_resume_is_exact(TINY + ALL_ON + ["--dropout", "0"], tmp_path)
    assert last["args"]["ssl_weight"] == 0.5 and "ssl_head" in last
    assert last["args"]["ema"] == 0.9 and last["average_updates"] == last["step"] and "live_model" in last


def test_weight_average_is_what_is_validated_and_saved(tmp_path, monkeypatch):
    seen = []
    validate = train.validate
    monkeypatch.setattr(train, "validate", lambda model, *a: seen.append(model.state_dict()) or validate(model, *a))
    out = tmp_path / "r"
    assert train.main(TINY + ["--epochs", "2", "--ema", "0.9", "--out", str(out)]) == 0
    last = load_checkpoint(out, "last")
    for key, value in last["model"].items():
        np.testing.assert_array_equal(seen[-1][key], value)
    assert any(not np.array_equal(value, last["live_model"][key]) for key, value in last["model"].items())


def test_resume_refuses_a_changed_recipe_flag(tmp_path, capsys):
    out = tmp_path / "r"
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    assert train.main(["--resume", str(out), "--epochs", "2", "--loss", "concept", "--no-progress"]) == 2
    assert "--loss concept (saved: clip)" in capsys.readouterr().err


def test_initial_model_is_a_function_of_config_and_seed():
    config = CLIPConfig(image_size=16, conv_channels=(4,), vocab_size=20, max_len=8, width=16, text_layers=1,
                        heads=2, ff_dim=16, embed_dim=8)
    a, b = CLIP.initial(config, seed=3), CLIP.initial(config, seed=3)
    tinyclip.manual_seed(99)
    c = CLIP.initial(config, seed=3)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        np.testing.assert_array_equal(p.data, r.data, err_msg=name)


@pytest.mark.slow
def test_small_data_recipe_learns_on_synthetic_data(tmp_path):
    out = tmp_path / "r"
    flags = [f for f in TINY if f not in ("--lr", "1e-3")]
    assert train.main(flags + ["--recipe", "small-data", "--num-samples", "300", "--epochs", "8", "--patience", "0",
                               "--out", str(out)]) == 0
    history = rows(out)
    chance = 10 / 48
    best = max((float(r["val_r10_i2t"]) + float(r["val_r10_t2i"])) / 2 for r in history)
    assert best > 1.5 * chance, history


def test_image_pretraining_runs_once_and_refuses_test_images(tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((np.random.default_rng(i).random((20, 24)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "r"
    assert train.main(TINY + ["--epochs", "1", "--pretrain-epochs", "2", "--pretrain-images", str(folder),
                              "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "pretraining images: 12" in log and "pretrain images epoch 2" in log
    assert [r["epoch"] for r in load_checkpoint(out, "last")["pretrain_history"]] == [1, 2]
    assert train.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "pretrain images" not in capsys.readouterr().out  # resuming never repeats the phase

    kermany_test = tmp_path / "chest_xray" / "test"
    (kermany_test / "NORMAL").mkdir(parents=True)
    assert train.main(TINY + ["--pretrain-epochs", "1", "--pretrain-images", str(kermany_test),
                              "--out", str(tmp_path / "k")]) == 2
    assert "Kermany test folder" in capsys.readouterr().err


def _caption_folder(folder, ids):
    folder.mkdir()
    (folder / "captions.txt").write_text("".join(f"{i}\t Axial zyzzyva scan {k}. Second sentence here.\n"
                                                 for k, i in enumerate(ids)))
    (folder / "cuis.txt").write_text("".join(f"{i}\t\tC00{k % 3}\n" for k, i in enumerate(ids)))
    return folder


def test_caption_pretraining_runs_once_and_refuses_held_out_pairs(tmp_path, capsys):
    folder = _caption_folder(tmp_path / "captions", [f"ROCO_{i:05d}" for i in range(20)])
    out = tmp_path / "r"
    assert train.main(TINY + ["--epochs", "1", "--loss", "concept", "--pretrain-text-epochs", "2",
                              "--pretrain-captions", str(folder), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "pretraining captions: 20" in log and "pretrain captions epoch 2" in log
    state = load_checkpoint(out, "last")
    assert [(r["phase"], r["epoch"]) for r in state["pretrain_history"]] == [("captions", 1), ("captions", 2)]
    assert "zyzzyva" in state["tokenizer"]["vocab"]  # the phase's captions enter the vocabulary
    assert train.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "pretrain captions" not in capsys.readouterr().out  # resuming never repeats the phase

    # a folder sharing a pair with the run's validation or test part is refused; so is a folder without epochs
    held = _caption_folder(tmp_path / "held", [state["ids"][state["split"]["test"][0]]])
    assert train.main(TINY + ["--pretrain-text-epochs", "1", "--pretrain-captions", str(held),
                              "--out", str(tmp_path / "h")]) == 2
    assert "never trained on" in capsys.readouterr().err
    assert train.main(TINY + ["--pretrain-captions", str(folder), "--out", str(tmp_path / "n")]) == 2
    assert "--pretrain-text-epochs" in capsys.readouterr().err


@pytest.mark.parametrize("loss", ["clip", "concept"])
def test_caption_pretraining_moves_the_text_tower_only(loss):
    args = train.build_parser().parse_args(TINY + ["--loss", loss, "--pretrain-text-epochs", "2"])
    apply_recipe(args)
    config = CLIPConfig(image_size=16, conv_channels=(4,), vocab_size=20, max_len=8, width=16, text_layers=1,
                        heads=2, ff_dim=16, embed_dim=8)
    from tinyclip.text import Tokenizer
    captions = [f"ct scan {w}. mri of the {w}" for w in ("liver", "brain", "chest", "knee", "hand", "lung")]
    model = CLIP.initial(config, Tokenizer.fit(captions), seed=0)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    concepts = [["C1"], ["C2"], ["C1"], [], ["C2", "C1"], ["C3"]] if loss == "concept" else None
    rows = train.pretrain_texts(args, model, captions, concepts, log=lambda s: None)
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    moved = {name for name, p in model.named_parameters() if not np.array_equal(p.data, before[name])}
    assert moved and all(name.startswith("text_encoder.") for name in moved), moved
