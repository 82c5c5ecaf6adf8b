"""``python -m tinyclip.train``: a tiny run end to end, exact resume, clean errors, NaN handling."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyclip import train
from tinyclip.checkpoint import load_checkpoint, save_checkpoint

TINY = ["--num-samples", "60", "--image-size", "16", "--conv-channels", "4,8", "--text-layers", "1",
        "--width", "16", "--heads", "2", "--ff-dim", "32", "--embed-dim", "16", "--max-len", "16",
        "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def run_cli(*args, cwd=None):
    env = {**os.environ, "TINYCLIP_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-m", "tinyclip.train", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def losses(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return [(float(r["train_loss"]), float(r["val_loss"])) for r in csv.DictReader(f)]


def test_tiny_run_writes_everything(tmp_path):
    out = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "2", "--out", str(out)]) == 0
    for name in ("last.npz", "last.json", "best.npz", "best.json", "metrics.csv", "loss_curve.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = losses(out)
    assert len(rows) == 2 and all(np.isfinite(rows).ravel())
    state = load_checkpoint(out, "last")
    assert state["epoch"] == 2 and state["step"] == 2 * 5
    assert sorted(state["split"]) == ["test", "train", "val"]
    with open(out / "last.json") as f:
        meta = json.load(f)
    assert meta["state"]["config"]["conv_channels"] == [4, 8]


def assert_resume_is_exact(flags, tmp_path) -> dict:
    """2 epochs in one go == 1 epoch + 1 resumed: same losses, same weights; returns the last checkpoint."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert train.main(flags + ["--epochs", "2", "--out", str(straight)]) == 0
    assert train.main(flags + ["--epochs", "1", "--out", str(resumed)]) == 0
    assert train.main(["--resume", str(resumed), "--epochs", "2", "--no-progress"]) == 0
    assert losses(straight) == losses(resumed)
    a, b = load_checkpoint(straight, "last"), load_checkpoint(resumed, "last")
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key], b["model"][key])
    return a


def test_resume_gives_identical_losses(tmp_path):
    assert_resume_is_exact(TINY, tmp_path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    good = load_checkpoint(out, "last")
    original = train.clip_loss
    monkeypatch.setattr(train, "clip_loss", lambda *a: original(*a) * float("nan"))
    assert train.main(["--resume", str(out), "--epochs", "2", "--no-progress"]) == 1
    assert "loss became nan" in capsys.readouterr().err
    kept = load_checkpoint(out, "last")
    assert kept["epoch"] == good["epoch"] == 1


def test_early_stopping(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "30", "--lr", "1e-30", "--patience", "2", "--out", str(out)]) == 0
    assert len(losses(out)) == 3  # the first epoch sets the best; two more without improvement
    assert "early stop" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--data", "roco"], "needs --data-dir"),
    (["--data", "roco", "--data-dir", "/no/such/folder"], "/no/such/folder"),
    (["--image-size", "18", "--conv-channels", "4,8"], "divisible"),
    (["--resume", "/no/such/run"], "/no/such/run"),
])
def test_bad_input_exits_cleanly(tmp_path, args, message):
    result = run_cli(*TINY, "--out", str(tmp_path / "r"), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_flag_value_exits_cleanly():
    result = run_cli("--optimizer", "rmsprop")
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_help_explains_flags():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--data", "--data-dir", "--resume", "--conv-channels", "--patience", "--warmup-steps"):
        assert flag in result.stdout


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "last", {"epoch": 1, "w": np.ones(3)})

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "last", {"epoch": 2, "w": np.zeros(3)})
    state = load_checkpoint(tmp_path, "last")
    assert state["epoch"] == 1 and state["w"].tolist() == [1, 1, 1]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "roco/data/test/radiology/images").is_dir(), reason="real ROCO data not present")
def test_real_roco_learns(tmp_path):
    out = tmp_path / "roco"
    result = run_cli("--data", "roco", "--data-dir", str(SHARED / "roco/data/test/radiology"), "--epochs", "3",
                     "--lr", "3e-4", "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    val = [v for _, v in losses(out)]
    assert min(val) < np.log(64)


def test_fold_split_is_disjoint_covering_and_keeps_the_test_part():
    from tinyclip.data.pairs import fold_split, run_split
    n, folds = 103, 5
    test = run_split(n, 3)["test"]
    parts = [fold_split(n, 3, folds, f) for f in range(folds)]
    vals = np.concatenate([p["val"] for p in parts])
    assert sorted(vals.tolist()) == sorted(set(range(n)) - set(test.tolist()))  # each non-test pair validates once
    for p in parts:
        assert p["test"].tolist() == test.tolist()
        assert not set(p["train"].tolist()) & set(p["val"].tolist())
        assert len(p["train"]) + len(p["val"]) + len(test) == n
    with pytest.raises(ValueError, match="--fold"):
        fold_split(n, 3, folds, folds)
