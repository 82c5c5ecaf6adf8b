"""Nothing lost, nothing mixed, one clear line for every bad input: checkpoints and the training command line.

Each CLI case checks the exit code, exactly one line on stderr, no traceback, and that the files of an
earlier run are byte-identical afterwards.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyclip import io, train
from tinyclip.checkpoint import load_checkpoint, save_checkpoint
from tinyclip.data.images import load_images

from test_train import ROOT, TINY, losses, run_cli


def one_line_error(result, *needles):
    """The CLI failed with one line on stderr naming every needle, and no traceback."""
    assert result.returncode not in (0, None), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 2-epoch tiny run (never modified: tests copy it)."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert train.main(TINY + ["--epochs", "2", "--out", str(out)]) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for p in run.iterdir():
        if p.is_file() and p.name != ".lock":
            (to / p.name).write_bytes(p.read_bytes())
    return to


def history_losses(run: Path):
    return [(h["train_loss"], h["val_loss"]) for h in load_checkpoint(run, "last")["history"]]


# ---------------------------------------------------------------------------
# crashes at any instant of a checkpoint write
# ---------------------------------------------------------------------------

def kill_and_resume(tmp_path, kill_at: int, reference):
    """Train 2 epochs, SIGKILLed at the ``kill_at``-th file-operation point; then check and resume to 3 epochs."""
    out = tmp_path / f"kill{kill_at}"
    env = {**os.environ, "TINYCLIP_DEVICE": "cpu", "TINYCLIP_KILL_AT_FILE_OP": str(kill_at)}
    killed = subprocess.run([sys.executable, "-m", "tinyclip.train", *TINY, "--epochs", "2", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert killed.returncode in (-signal.SIGKILL, 0), killed.stderr
    if not (out / "last.npz").exists():  # killed in the first epoch's writes: a fresh start must work
        assert run_cli(*TINY, "--epochs", "3", "--out", str(out)).returncode == 0
    else:
        epoch = load_checkpoint(out, "last")["epoch"]
        # best is committed before last, so it may be one epoch ahead: resuming redoes that epoch identically
        assert load_checkpoint(out, "best")["epoch"] <= epoch + 1
        result = run_cli("--resume", str(out), "--epochs", "3", "--no-progress")
        assert result.returncode == 0, result.stderr
    assert history_losses(out) == reference
    assert losses(out) == reference
    assert not list(out.glob(".*.tmp"))
    return killed.returncode


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "three"
    assert run_cli(*TINY, "--epochs", "3", "--out", str(out)).returncode == 0
    return losses(out)


# Five fault points per file write; an epoch writes best.npz, best.json, metrics.csv, loss_curve.png,
# then commits last.npz, then last.json: points 31-60 are the second epoch's writes.
# Points 1-25 fall before the first last.npz: a fresh start into that directory must work.
@pytest.mark.parametrize("kill_at", [3, 8, 24, 33, 44, 53, 54, 55, 58])
def test_sigkill_during_checkpoint_write_loses_nothing(tmp_path, reference_losses, kill_at):
    assert kill_and_resume(tmp_path, kill_at, reference_losses) == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_at_every_file_operation(tmp_path, reference_losses):
    for kill_at in range(1, 62):
        kill_and_resume(tmp_path, kill_at, reference_losses)


def test_reader_never_sees_a_half_written_checkpoint(tmp_path):
    save_checkpoint(tmp_path, "last", {"epoch": 0, "w": np.zeros(20000)})
    stop = threading.Event()

    def writer():
        epoch = 0
        while not stop.is_set():
            epoch += 1
            save_checkpoint(tmp_path, "last", {"epoch": epoch, "w": np.full(20000, float(epoch))})

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            state = load_checkpoint(tmp_path, "last")
            assert (state["w"] == state["epoch"]).all()
    finally:
        stop.set()
        thread.join()


def test_old_format_checkpoint_still_loads(tmp_path):
    np.savez(tmp_path / "best.npz", **{"/w": np.arange(3.0), "__tag__": np.frombuffer(b"abcd", np.uint8)})
    (tmp_path / "best.json").write_text(json.dumps({"tag": "abcd", "state": {"epoch": 4, "w": {"__array__": "/w"}}}))
    state = load_checkpoint(tmp_path, "best")
    assert state["epoch"] == 4 and state["w"].tolist() == [0, 1, 2]
    (tmp_path / "best.json").write_text(json.dumps({"tag": "other", "state": {}}))
    with pytest.raises(ValueError, match="do not belong together"):
        load_checkpoint(tmp_path, "best")


def test_disk_full_while_saving_keeps_the_old_checkpoint(tmp_path, done_run, monkeypatch, capsys):
    run = copy_run(done_run, tmp_path / "run")
    before = snapshot(run)

    def full(path, write, mode="wb"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(train, "atomic_write", full)
    monkeypatch.setattr("tinyclip.checkpoint.atomic_write", full)
    assert train.main(["--resume", str(run), "--epochs", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert snapshot(run) == before
    assert load_checkpoint(run, "last")["epoch"] == 2


# ---------------------------------------------------------------------------
# runs never overwrite or mix with each other
# ---------------------------------------------------------------------------

def test_new_run_into_existing_run_is_refused(tmp_path, done_run):
    run = copy_run(done_run, tmp_path / "run")
    before = snapshot(run)
    one_line_error(run_cli(*TINY, "--epochs", "1", "--out", str(run)), "--resume", "--out", "--overwrite")
    assert snapshot(run) == before


def test_overwrite_replaces_the_run(tmp_path, done_run):
    run = copy_run(done_run, tmp_path / "run")
    assert run_cli(*TINY, "--epochs", "1", "--out", str(run), "--overwrite").returncode == 0
    assert load_checkpoint(run, "last")["epoch"] == 1 and len(losses(run)) == 1


def test_second_training_into_a_locked_run_dir_is_refused(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getpid()}\n")  # this test process is alive
    one_line_error(run_cli(*TINY, "--epochs", "1", "--out", str(out)), "in use", str(os.getpid()))
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "stale"
    out.mkdir()
    (out / ".lock").write_text(f"{dead.pid}\n")
    assert run_cli(*TINY, "--epochs", "1", "--out", str(out)).returncode == 0
    assert not (out / ".lock").exists()


def test_default_run_dirs_are_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = {train._new_run_dir(None, False) for _ in range(20)}
    assert len(made) == 20 and all(p.is_dir() for p in made)


def test_leftover_temporaries_are_removed_on_resume(tmp_path, done_run):
    run = copy_run(done_run, tmp_path / "run")
    (run / ".last.npz.x1y2.tmp").write_bytes(b"half")
    assert run_cli("--resume", str(run), "--epochs", "2", "--no-progress").returncode == 0
    assert not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------
# damaged checkpoints: one line, never a traceback
# ---------------------------------------------------------------------------

def _damage(path: Path, how: str):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero bytes":
        path.write_bytes(b"")
    elif how == "bit flips":
        flipped = bytearray(data)
        for i in range(100, len(flipped), 97):
            flipped[i] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif how == "npy":
        np.save(path.with_suffix(".tmp.npy"), np.zeros(3))
        path.write_bytes(path.with_suffix(".tmp.npy").read_bytes())
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))


@pytest.mark.parametrize("how", ["truncated", "zero bytes", "bit flips", "npy", "random"])
def test_corrupt_checkpoint_in_resume(tmp_path, done_run, how):
    run = copy_run(done_run, tmp_path / "run")
    _damage(run / "last.npz", how)
    before = snapshot(run)
    one_line_error(run_cli("--resume", str(run), "--epochs", "3", "--no-progress"), "last.npz")
    assert snapshot(run) == before


@pytest.mark.parametrize("damage, needle", [
    (lambda s: s.pop("config"), "damaged"),
    (lambda s: s.pop("args"), "damaged"),
    (lambda s: s.update(split={"train": [0, 1], "val": [10 ** 6], "test": []}), "outside"),
    (lambda s: s.update(split="abc"), "damaged"),
    (lambda s: s["config"].update(width="wide"), "last"),
])
def test_damaged_checkpoint_metadata_in_resume(tmp_path, done_run, damage, needle):
    run = copy_run(done_run, tmp_path / "run")
    state = load_checkpoint(run, "last")
    damage(state)
    save_checkpoint(run, "last", state)
    one_line_error(run_cli("--resume", str(run), "--epochs", "3", "--no-progress"), needle)


def test_metadata_that_is_not_an_object(tmp_path):
    np.savez(tmp_path / "last.npz", __meta__=np.frombuffer(b"[1, 2]", np.uint8))
    with pytest.raises(ValueError, match="not a tinyclip checkpoint"):
        load_checkpoint(tmp_path, "last")


# ---------------------------------------------------------------------------
# bad flags: refused at parse time, naming the flag
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--batch-size", "0"), ("--image-size", "0"), ("--heads", "0"), ("--epochs", "0"), ("--epochs", "-1"),
    ("--patience", "-1"), ("--lr", "0"), ("--lr", "-1e-3"), ("--lr", "nan"), ("--lr", "inf"),
    ("--weight-decay", "nan"), ("--grad-clip", "-1"), ("--warmup-steps", "-1"), ("--dropout", "1.5"),
    ("--num-samples", "abc"), ("--seed", "-3"),
])
def test_bad_numeric_flag(tmp_path, flag, value):
    one_line_error(run_cli(*TINY, "--out", str(tmp_path / "r"), flag, value), flag)
    assert not (tmp_path / "r").exists()


def test_out_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(run_cli(*TINY, "--out", str(tmp_path / "afile")), "--out", "afile")
    one_line_error(run_cli(*TINY, "--out", str(tmp_path / "afile" / "sub")), "--out")


def test_divergence_that_is_not_nan_stops(tmp_path):
    out = tmp_path / "div"
    result = run_cli(*TINY, "--epochs", "5", "--lr", "1e6", "--grad-clip", "0", "--out", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and ("chance" in result.stderr or "non-finite" in result.stderr)
    assert len(losses(out)) < 5


def test_nan_before_any_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    original = train.clip_loss
    monkeypatch.setattr(train, "clip_loss", lambda *a: original(*a) * float("nan"))
    assert train.main(TINY + ["--epochs", "2", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "no epoch finished" in err and "kept" not in err


def test_interrupt_says_what_is_on_disk(tmp_path, monkeypatch, capsys):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "validate", interrupt)
    assert train.main(TINY + ["--epochs", "2", "--out", str(tmp_path / "r")]) == 130
    assert "no epoch finished" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# --resume: what may change, what may not
# ---------------------------------------------------------------------------

def test_resume_refuses_conflicting_flags(tmp_path, done_run):
    run = copy_run(done_run, tmp_path / "run")
    before = snapshot(run)
    line = one_line_error(run_cli("--resume", str(run), "--epochs", "3", "--lr", "0.5", "--width", "32"),
                          "--lr 0.5", "--width 32")
    assert "saved" in line
    assert snapshot(run) == before


def test_resume_accepts_flags_equal_to_the_saved_ones(tmp_path, done_run):
    run = copy_run(done_run, tmp_path / "run")
    assert run_cli("--resume", str(run), *TINY, "--epochs", "3").returncode == 0
    assert len(losses(run)) == 3


def test_resume_with_nothing_left_to_train_says_why(tmp_path, done_run):
    run = copy_run(done_run, tmp_path / "run")
    result = run_cli("--resume", str(run), "--epochs", "2", "--no-progress")
    assert result.returncode == 0 and "nothing trained" in result.stdout and "--epochs" in result.stdout


def _roco(folder: Path, n: int = 40) -> Path:
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = ["ct", "mri", "chest", "abdomen", "liver", "lesion", "axial", "ultrasound"]
    lines = []
    for i in range(n):
        rid = f"ROCO_{i:05d}"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / "images" / f"{rid}.jpg")
        lines.append(f"{rid}\t {' '.join(rng.choice(words, 5))}.\n")
    (folder / "captions.txt").write_text("".join(lines))
    (folder / "cuis.txt").write_text("".join(f"ROCO_{i:05d}\t\tC0040405\n" for i in range(n)))
    return folder


def test_resume_accepts_a_moved_data_dir(tmp_path):
    data = _roco(tmp_path / "roco")
    run = tmp_path / "run"
    args = [a for a in TINY if a not in ("--num-samples", "60")]
    assert run_cli(*args, "--data", "roco", "--data-dir", str(data), "--epochs", "1", "--out", str(run),
                   "--cache-dir", str(tmp_path / "cache")).returncode == 0
    moved = data.rename(tmp_path / "moved")
    result = run_cli("--resume", str(run), "--epochs", "2", "--data-dir", str(moved), "--no-progress",
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(run, "last")["args"]["data_dir"] == str(moved)


def test_device_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TINYCLIP_DEVICE", "cuda")
    assert train.build_parser().parse_args([]).device == "cuda"
    monkeypatch.delenv("TINYCLIP_DEVICE")
    assert train.build_parser().parse_args([]).device == "auto"


# ---------------------------------------------------------------------------
# the image cache is an optimisation: damage to it never stops a run
# ---------------------------------------------------------------------------

def test_damaged_image_cache_is_ignored(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    cache = tmp_path / "cache"
    expected, _ = load_images(paths, 8, cache_dir=cache)
    for entry in cache.glob("*.npy"):
        entry.write_bytes(b"")  # zero bytes
    again, ok = load_images(paths, 8, cache_dir=cache)
    assert ok.all() and (np.asarray(again) == expected).all()
    for entry in cache.glob("images-*px-3-*.npy"):
        if not entry.name.endswith(".ok.npy"):
            np.save(entry, np.zeros((2, 8, 8, 3), np.uint8))  # wrong shape
    again, _ = load_images(paths, 8, cache_dir=cache)
    assert (np.asarray(again) == expected).all()


def test_file_in_place_of_the_cache_folder_warns_once(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "cache").write_text("not a folder")
    with pytest.warns(UserWarning, match="image cache") as record:
        images, ok = load_images([tmp_path / "a.png"], 8, cache_dir=tmp_path / "cache")
    assert ok.all() and len(record) == 1


def test_lock_is_released_after_a_run(tmp_path):
    with io.run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()
