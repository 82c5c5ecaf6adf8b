"""``python -m tinyclip.evaluate`` end to end on a tiny run trained here: the zero-shot and retrieval tasks,
metrics.json merging, the evaluation pairs of each --split, task options, and clean errors."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tinyclip import evaluate, tasks, train
from tinyclip.checkpoint import load_checkpoint, save_checkpoint
from tinyclip.data.synthetic import make_synthetic
from tinyclip.tasks import TaskSkipped
from tinyclip.tasks import cui as cui_task
from tinyclip.tasks import fewshot as fewshot_task
from tinyclip.tasks import pneumonia as pneumonia_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-samples", "60", "--image-size", "16", "--conv-channels", "4,8", "--text-layers", "1",
        "--width", "16", "--heads", "2", "--ff-dim", "32", "--embed-dim", "16", "--max-len", "16",
        "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A one-epoch run on 60 synthetic pairs at 16 px (test part: 12 pairs)."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    return out


def run_main(*argv, capsys):
    code = evaluate.main([str(a) for a in argv] + ["--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------
# the real tasks on the tiny run
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = evaluate.main(["--run", str(tiny_run), "--task", "retrieval,modality,pneumonia-zeroshot",
                          "--out", str(out), "--device", "cpu", "--no-progress"])
    return code, out, json.loads((out / "metrics.json").read_text())


def test_tasks_write_metrics(evaluated):
    code, out, metrics = evaluated
    assert code == 0
    assert set(metrics) == {"retrieval", "modality", "pneumonia-zeroshot"}
    r = metrics["retrieval"]
    assert r["n"] == 12 and r["split"] == "test" and r["checkpoint"] == "best"
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
        assert 0.0 <= r[key] <= 1.0
    assert r["i2t_R@1"] <= r["i2t_R@5"] <= r["i2t_R@10"]
    assert 1 <= r["i2t_median_rank"] <= 12 and 1 <= r["t2i_mean_rank"] <= 12
    m = metrics["modality"]
    assert m["n"] == 12 and m["counts"]["kept"] == 12  # every synthetic caption names one modality
    for key in ("accuracy_single", "accuracy_ensemble_mean_prob", "accuracy_ensemble_mean_emb", "majority_baseline"):
        assert 0.0 <= m[key] <= 1.0
    assert set(m["per_class"]["single"]) == set(m["classes"])
    assert sum(map(sum, m["confusion"]["ensemble_mean_emb"])) == 12
    p = metrics["pneumonia-zeroshot"]
    assert p["source"] == "synthetic" and p["n"] == 400 and p["n_pneumonia"] == 200
    assert 0.0 <= p["roc_auc"] <= 1.0 and 0.0 <= p["balanced_accuracy"] <= 1.0


def test_figures_are_written(evaluated):
    _, out, metrics = evaluated
    names = [n for task in metrics.values() for n in task["figures"]]
    assert len(names) == 7
    for name in names:
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_retrieval_matches_the_metrics_of_the_embeddings(evaluated, tiny_run):
    from tinyclip.models import CLIP
    from tinyclip.tasks.retrieval import retrieval_metrics, same_caption
    model, state = CLIP.from_checkpoint(tiny_run)
    frame, images = make_synthetic(num_samples=60, image_size=16, seed=0)
    test = state["split"]["test"]
    sim = model.embed_images(images[test]).astype(np.float64) @ model.embed_texts(
        list(frame["caption"].iloc[test])).astype(np.float64).T
    expected = retrieval_metrics(sim, same_caption(frame["caption"].iloc[test]))
    got = evaluated[2]["retrieval"]
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def test_initial_model_is_what_training_starts_from(tmp_path, monkeypatch):
    """``initial_model`` rebuilds, weight for weight, the model tinyclip.train built before its first step."""
    from tinyclip.models import CLIP
    started = {}

    class Recorded(CLIP):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.setdefault("weights", {k: np.array(v) for k, v in self.state_dict().items()})

    monkeypatch.setattr(train, "CLIP", Recorded)
    out = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--seed", "3", "--out", str(out)]) == 0
    model = evaluate.initial_model(load_checkpoint(out, "best"))
    assert not model.training
    weights = model.state_dict()
    assert set(weights) == set(started["weights"])
    for name, value in weights.items():
        np.testing.assert_array_equal(value, started["weights"][name], err_msg=name)


def test_checkpoint_init_evaluates_the_untrained_model(evaluated, tiny_run, capsys):
    """--checkpoint init: every task on the untrained model of the run's configuration and seed, results apart."""
    from tinyclip.tasks.retrieval import retrieval_metrics, same_caption
    code, out, err = run_main("--run", tiny_run, "--task", "retrieval,modality", "--checkpoint", "init", capsys=capsys)
    assert code == 0, err
    assert "untrained model, seed 0" in out
    metrics = json.loads((tiny_run / "eval-init" / "metrics.json").read_text())  # never the trained model's file
    assert metrics["retrieval"]["checkpoint"] == "init" and metrics["retrieval"]["epoch"] == 0
    assert "modality" in metrics
    state = load_checkpoint(tiny_run, "best")
    model = evaluate.initial_model(state)
    frame, images = make_synthetic(num_samples=60, image_size=16, seed=0)
    test = state["split"]["test"]
    sim = model.embed_images(images[test]).astype(np.float64) @ model.embed_texts(
        list(frame["caption"].iloc[test])).astype(np.float64).T
    expected = retrieval_metrics(sim, same_caption(frame["caption"].iloc[test]))
    assert {k: metrics["retrieval"][k] for k in expected} == pytest.approx(expected)
    assert metrics["retrieval"] != evaluated[2]["retrieval"]


def test_pneumonia_on_a_kermany_folder(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for folder, n in (("NORMAL", 3), ("PNEUMONIA", 5)):
        (tmp_path / "chest" / "test" / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(
                tmp_path / "chest" / "test" / folder / f"x{i}.jpeg")
    code, out, err = run_main("--run", tiny_run, "--task", "pneumonia-zeroshot", "--chest-dir", tmp_path / "chest",
                              "--cache-dir", tmp_path / "cache", "--out", tmp_path / "eval",
                              "--pneumonia-prompts", "a normal chest x ray; pneumonia", capsys=capsys)
    assert code == 0, err
    p = json.loads((tmp_path / "eval" / "metrics.json").read_text())["pneumonia-zeroshot"]
    assert (p["source"], p["n"], p["n_normal"], p["n_pneumonia"]) == ("kermany", 8, 3, 5)
    assert p["prompts"]["normal"] == ["a normal chest x ray"]


def test_pneumonia_npz_and_missing_data(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(tmp_path / "p.npz", **arrays)
    images, labels, source = pneumonia_task.load_test_images(16, "roco", pneumonia_npz=tmp_path / "p.npz")
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8 and list(labels) == [0, 1] * 3
    assert source == "pneumoniamnist"
    with pytest.raises(TaskSkipped, match="--chest-dir"):
        pneumonia_task.load_test_images(16, "roco")


def test_modality_on_all_pairs_of_a_roco_folder(tiny_run, tmp_path, capsys):
    captions = ["Axial CT of the abdomen showing a mass.", "Chest radiograph showing consolidation.",
                "T2-weighted MRI of the knee.", "Fused PET/CT image.", "Postoperative view of the wound.",
                "Doppler ultrasound of the liver."]
    folder = tmp_path / "roco"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines, cuis = [], []
    for i, caption in enumerate(captions):
        rid = f"ROCO_{i:05d}"
        lines.append(f"{rid}\t {caption}")
        cuis.append(f"{rid}\t\tC0000{i:03d}")
        Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(folder / "images" / f"{rid}.jpg")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    (folder / "cuis.txt").write_text("\n".join(cuis) + "\n")
    code, out, err = run_main("--run", tiny_run, "--task", "modality", "--split", "all", "--data", "roco",
                              "--eval-data-dir", folder, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "eval",
                              capsys=capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())["modality"]
    assert m["split"] == "all" and m["n_captions"] == 6
    assert m["counts"] == {"kept": 4, "none": 1, "several": 1, "not_in_prompts": 0}
    assert m["class_counts"]["ct"] == m["class_counts"]["xray"] == m["class_counts"]["mri"] == 1


# ---------------------------------------------------------------------------
# the command line around the tasks (with stand-in tasks: fast)
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a stand-in task: none."""


@pytest.fixture
def fake_tasks(monkeypatch):
    """Replace the task registry by stand-ins that record the context (``seen[name]``) and options they get;
    fake-a declares the few-shot task's options, cui the concept task's."""
    seen = {"options": {}}

    def make(name, result=None, error=None, options=NoOptions):
        def run(ctx, given):
            seen[name], seen["options"][name] = ctx, given
            if error:
                raise error
            return dict(result or {"score": 0.5})
        return SimpleNamespace(run=run, Options=options)

    fakes = {"fake-a": make("fake-a", {"score": 0.25, "n": 3}, options=fewshot_task.Options),
             "fake-b": make("fake-b", {"score": 0.75}),
             "skipper": make("skipper", error=TaskSkipped("no data for this one")),
             "broken": make("broken", error=ValueError("bad option")),
             "cui": make("cui", options=cui_task.Options)}
    monkeypatch.setattr(tasks, "TASKS", {name: f"fake.{name}" for name in fakes})
    monkeypatch.setattr(evaluate, "TASKS", tasks.TASKS)
    monkeypatch.setattr(evaluate, "get_task", lambda name: fakes[name])
    return seen


def test_metrics_accumulate_across_runs(tiny_run, tmp_path, fake_tasks, capsys):
    assert run_main("--run", tiny_run, "--task", "fake-a", "--out", tmp_path, capsys=capsys)[0] == 0
    assert run_main("--run", tiny_run, "--task", "fake-b", "--out", tmp_path, capsys=capsys)[0] == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fake-a"]["score"] == 0.25 and metrics["fake-b"]["score"] == 0.75
    assert run_main("--run", tiny_run, "--task", "fake-a", "--checkpoint", "last", "--out", tmp_path,
                    capsys=capsys)[0] == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fake-a"]["checkpoint"] == "last" and metrics["fake-b"]["checkpoint"] == "best"


def test_default_out_and_table(tiny_run, fake_tasks, capsys):
    code, out, err = run_main("--run", tiny_run, "--task", "fake-a", capsys=capsys)
    assert code == 0
    assert (tiny_run / "eval" / "metrics.json").is_file()
    assert any(line.split() == ["fake-a", "score", "0.2500"] for line in out.splitlines())
    shutil.rmtree(tiny_run / "eval")


def test_split_test_is_the_runs_test_part(tiny_run, tmp_path, fake_tasks, capsys):
    assert run_main("--run", tiny_run, "--task", "fake-a,cui", "--out", tmp_path, capsys=capsys)[0] == 0
    state = load_checkpoint(tiny_run, "best")
    ctx = fake_tasks["fake-a"]
    assert list(ctx.frame["id"]) == [state["ids"][i] for i in state["split"]["test"]]
    assert list(ctx.train_frame["id"]) == [state["ids"][i] for i in state["split"]["train"]]
    assert ctx.images.shape == (12, 16, 16, 3) and ctx.train_images.shape == (38, 16, 16, 3)
    assert fake_tasks["cui"] is ctx  # one context for all tasks


def test_split_all(tiny_run, tmp_path, fake_tasks, capsys):
    assert run_main("--run", tiny_run, "--task", "fake-a", "--split", "all", "--out", tmp_path,
                    capsys=capsys)[0] == 0
    ctx = fake_tasks["fake-a"]
    assert len(ctx.frame) == 60 and len(ctx.train_frame) == 0  # no task here needs training pairs
    assert run_main("--run", tiny_run, "--task", "fake-a,cui", "--split", "all", "--num-samples", "30",
                    "--out", tmp_path, capsys=capsys)[0] == 0
    ctx = fake_tasks["fake-a"]
    assert len(ctx.frame) == 30 and len(ctx.train_frame) == 38


def test_task_options_reach_the_tasks(tiny_run, tmp_path, fake_tasks, capsys):
    assert run_main("--run", tiny_run, "--task", "fake-a,cui", "--out", tmp_path, "--shots", "10,all", "--seeds",
                    "3", "--top-k", "7", "--option", "head_steps=5", "--option", "cui-init=scratch", "--seed", "4",
                    "--batch-size", "16", capsys=capsys)[0] == 0
    ctx, options = fake_tasks["fake-a"], fake_tasks["options"]
    # typed, each task its own fields; a field two tasks share (head_steps) reaches both
    assert options["fake-a"] == fewshot_task.Options(shots=(10, "all"), seeds=3, head_steps=5)
    assert options["cui"] == cui_task.Options(top_k=7, cui_init="scratch", head_steps=5)
    assert ctx.seed == 4 and ctx.batch_size == 16
    assert ctx.chest_dir is None and ctx.pneumonia_npz is None  # not given: the tasks use their defaults


def test_skipped_and_failed_tasks(tiny_run, tmp_path, fake_tasks, capsys):
    code, out, err = run_main("--run", tiny_run, "--task", "fake-a,skipper", "--out", tmp_path, capsys=capsys)
    assert code == 0 and err.strip().endswith("skipper: skipped: no data for this one")
    code, out, err = run_main("--run", tiny_run, "--task", "broken,fake-b", "--out", tmp_path, capsys=capsys)
    assert code == 1 and "broken: failed: bad option" in err and "fake-b" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"fake-a", "fake-b"}
    code, out, err = run_main("--run", tiny_run, "--task", "skipper", "--out", tmp_path, capsys=capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit, no traceback
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--task", "retrieval"], "required"),
    (["--run", "{tmp}/nowhere", "--task", "retrieval"], "run directory not found"),
    (["--run", "{run}", "--task", "retrival"], "unknown task 'retrival'"),
    (["--run", "{run}", "--task", "retrieval", "--split", "val"], "invalid choice"),
    (["--run", "{tmp}", "--task", "retrieval"], "no 'best' checkpoint"),
    (["--run", "{tmp}", "--task", "retrieval", "--checkpoint", "init"], "expected best.npz or last.npz"),
    (["--run", "{run}", "--task", "pneumonia-zeroshot", "--chest-dir", "{tmp}/no_chest"], "does not exist"),
    (["--run", "{run}", "--task", "modality", "--prompts", "{tmp}/none.json"], "does not exist"),
    (["--run", "{run}", "--task", "retrieval", "--data", "roco"], "--split test evaluates on the run's own data"),
    (["--run", "{run}", "--task", "retrieval", "--split", "all", "--data", "roco"], "needs --eval-data-dir"),
    (["--run", "{run}", "--task", "retrieval", "--split", "all", "--data", "roco", "--eval-data-dir", "{tmp}/x"],
     "data folder not found"),
    # --data-dir is only where the run's own data moved: the folder of --split all has its own flag
    (["--run", "{run}", "--task", "retrieval", "--split", "all", "--data-dir", "{tmp}/x"],
     "--split all evaluates on --eval-data-dir"),
    (["--run", "{run}", "--task", "retrieval", "--eval-data-dir", "{tmp}/x"], "--eval-data-dir is the folder of "
     "--split all"),
    (["--run", "{run}", "--task", "retrieval", "--option", "novalue"], "KEY=VALUE"),
])
def test_bad_input(tiny_run, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=tiny_run) for a in argv]
    code, out, err = run_main(*argv, capsys=capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_pairs_that_differ_from_the_run_are_refused(tiny_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("eval"))
    state = load_checkpoint(copy, "best")
    state["ids"][3] = "SYN_99999"
    save_checkpoint(copy, "best", state)
    code, out, err = run_main("--run", copy, "--task", "retrieval", capsys=capsys)
    assert code == 1 and "not the ones the run was trained on" in err and "'SYN_00003'" in err


def test_process_help_and_error():
    env = {**os.environ, "TINYCLIP_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-m", "tinyclip.evaluate", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0
    for word in ("--run", "--split", "--checkpoint", "--prompts", "--chest-dir", "--shots", *tasks.TASKS):
        assert word in done.stdout
    done = subprocess.run([sys.executable, "-m", "tinyclip.evaluate", "--run", "/nonexistent/run", "--task", "all"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
