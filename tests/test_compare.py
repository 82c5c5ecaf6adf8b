"""tinyclip.compare: the statistics against scipy.stats and hand-worked values, the configurations and the
command line, the fold assignment of the runs, resuming an interrupted comparison, and (slow) the
end-to-end verdicts: a recipe that learns against ``--lr 1e-8``, and a recipe against itself with other seeds."""
import contextlib
import json
import subprocess

import numpy as np
import pytest
from scipy import stats

from tinyclip import compare, train
from tinyclip.checkpoint import load_checkpoint, save_checkpoint
from tinyclip.data.pairs import run_split

# A model that trains in a fraction of a second on 60 synthetic pairs.
TINY = ("--image-size 16 --conv-channels 4,8 --width 16 --text-layers 1 --heads 2 --ff-dim 32 --embed-dim 8 "
        "--max-len 16 --batch-size 16 --patience 0")


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------

def test_holm_hand_worked():
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(compare.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(compare.holm([0.5, 0.9]), [1.0, 1.0])  # 0.5*2 = 1, then max(1, 0.9)


def test_mean_ranks_ties_and_direction():
    scores = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 3.0]])
    np.testing.assert_allclose(compare.mean_ranks(scores), [1.25, 1.75, 3.0])
    np.testing.assert_allclose(compare.mean_ranks(scores, higher_is_better=True), [2.75, 2.25, 1.0])


def test_statistics_match_scipy_on_fixed_arrays():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(10, 3)) + np.array([0.0, 0.5, 2.0])
    result = compare.compare_scores(["a", "b", "c"], scores)
    chi2, p = stats.friedmanchisquare(*scores.T)
    assert (result["friedman"]["statistic"], result["friedman"]["p"]) == pytest.approx((chi2, p))
    raw = [stats.wilcoxon(scores[:, i], scores[:, j]).pvalue for i, j in [(0, 1), (0, 2), (1, 2)]]
    assert [q["p"] for q in result["pairs"]] == pytest.approx(raw)
    assert [q["p_holm"] for q in result["pairs"]] == pytest.approx(compare.holm(raw))
    assert result["best"] == "a" and result["std"] == pytest.approx(scores.std(axis=0, ddof=1).tolist())
    vs_best = compare.p_against_best(result)
    assert vs_best == {"a": None, "b": result["pairs"][0]["p_holm"], "c": result["pairs"][1]["p_holm"]}
    table = compare.format_table(result, "val_loss")
    assert "Friedman over 3 configurations, 10 blocks" in table and table.splitlines()[1].split()[0] == "a"


def test_wilcoxon_hand_worked_and_too_few_pairs():
    # five positive differences: exact two-sided p = 2 / 2^5 = 0.0625, above 5%, so a note says so
    scores = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0]])
    result = compare.compare_scores(["a", "b"], scores)
    assert result["pairs"][0]["p"] == pytest.approx(0.0625) and result["pairs"][0]["statistic"] == 0
    assert compare.smallest_wilcoxon_p(5) == 0.0625
    assert "too few paired runs for the 5% level" in result["notes"][0] and "2/2^5" in result["notes"][0]
    assert not result["pairs"][0]["significant"]
    assert result["friedman"] is None  # two configurations: the Wilcoxon test alone
    assert result["best"] == "b"  # lower is better by default
    # six differences of one sign reach 2/64 < 5%, and no note is added
    six = compare.compare_scores(["a", "b"], np.vstack([scores, [[6.0, 0.0]]]))
    assert six["pairs"][0]["p"] == pytest.approx(2 / 64) and six["pairs"][0]["significant"] and not six["notes"]


def test_identical_configurations_are_not_different():
    scores = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    pair = compare.compare_scores(["a", "b"], scores)["pairs"][0]
    assert pair["n"] == 0 and pair["p"] == 1.0 and not pair["significant"]


# ---------------------------------------------------------------------------
# configurations and command line
# ---------------------------------------------------------------------------

def test_parse_config():
    assert compare.parse_config("fast=--lr 1e-3 --epochs 2") == ("fast", ["--lr", "1e-3", "--epochs", "2"])
    assert compare.parse_config("report=") == ("report", [])
    for bad in ["--lr 1e-3", "a b=--lr 1"]:
        with pytest.raises(ValueError, match="NAME=FLAGS"):
            compare.parse_config(bad)


@pytest.mark.parametrize("suffix, text", [(".json", '{"fast": "--lr 1e-3", "slow": ["--lr", "1e-4"]}'),
                                          (".toml", 'fast = "--lr 1e-3"\nslow = ["--lr", "1e-4"]\n')])
def test_read_configs_json_and_toml(tmp_path, suffix, text):
    path = tmp_path / f"configs{suffix}"
    path.write_text(text)
    assert compare.read_configs(path) == [("fast", ["--lr", "1e-3"]), ("slow", ["--lr", "1e-4"])]
    path.write_text('{"fast": 3}' if suffix == ".json" else "fast = 3\n")
    with pytest.raises(ValueError, match="entry 'fast'"):
        compare.read_configs(path)


def test_train_args_refuses_data_and_run_flags():
    args = compare.train_args(["--num-samples", "60"], ["--lr", "1e-3", "--seed", "5"], "configuration 'a'")
    assert (args.lr, args.seed, args.num_samples) == (1e-3, 5, 60)
    for flags, message in [(["--data-dir", "x"], "--data-dir is a data flag"),
                           (["--split-s", "3"], "--split-seed is a data flag"),  # an abbreviation, as argparse allows
                           (["--fold", "1"], "--fold is set by the comparison"),
                           (["--lr", "-1"], "argument --lr"), (["--nope"], "unrecognized arguments: --nope")]:
        with pytest.raises(ValueError, match=f"configuration 'a': .*{message}"):
            compare.train_args([], flags, "configuration 'a'")


@pytest.mark.parametrize("argv, message", [
    (["--config", "a=--num-samples 9"], "configuration 'a': --num-samples is a data flag"),
    (["--config", "a=", "--config", "a=--lr 1"], "names must differ"),
    ([], "at least one configuration"),
])
def test_main_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert compare.main([*argv, "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_rerun_with_other_flags_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    compare._settings(out, {"data": [], "folds": 5, "configs": {"a": ["--lr", "1e-3"]}})
    compare._settings(out, {"data": [], "folds": 5, "configs": {"b": []}})  # a new configuration joins
    assert set(json.loads((out / "comparison.json").read_text())["configs"]) == {"a", "b"}
    with pytest.raises(ValueError, match="configuration 'a' was run with other flags"):
        compare._settings(out, {"data": [], "folds": 5, "configs": {"a": ["--lr", "1e-2"]}})
    with pytest.raises(ValueError, match="other folds"):
        compare._settings(out, {"data": [], "folds": 3, "configs": {}})


# ---------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------

def fake_run(run_dir, val_losses, best_epoch, finished=True):
    """A run directory as train leaves it: metrics.csv, the best checkpoint's epoch, the finished mark."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{e},1,{v},0.1,0.2,2.6,1,0.1\n" for e, v in enumerate(val_losses, 1))
    (run_dir / "metrics.csv").write_text("epoch,train_loss,val_loss,val_r10_i2t,val_r10_t2i,logit_scale,seconds,lr\n"
                                         + rows)
    save_checkpoint(run_dir, "best", {"epoch": best_epoch})
    save_checkpoint(run_dir, "last", {"epoch": len(val_losses)})
    if finished:
        (run_dir / compare.FINISHED).write_text('{"diverged": false}')


def test_run_metric_at_the_best_checkpoint(tmp_path):
    fake_run(tmp_path / "r", [2.5, 2.0, 2.2], best_epoch=3)  # e.g. chosen by --select val_r10
    assert compare.run_metric(tmp_path / "r") == 2.2
    assert compare.run_metric(tmp_path / "r", "val_r10") == pytest.approx(0.15)  # mean of both directions
    with pytest.raises(ValueError, match="--metric auc: .* has no such column"):
        compare.run_metric(tmp_path / "r", "auc")


def test_run_state_and_command(tmp_path):
    assert compare.run_state(tmp_path / "none") == "new"
    fake_run(tmp_path / "half", [2.0], best_epoch=1, finished=False)
    assert compare.run_state(tmp_path / "half") == "interrupted"
    fake_run(tmp_path / "done", [2.0], best_epoch=1)
    assert compare.run_state(tmp_path / "done") == "finished"
    cmd = compare.train_command(tmp_path / "half", ["--lr", "1"], fold=1, folds=3, seed=4, state="interrupted")
    assert cmd[cmd.index("--resume") + 1] == str(tmp_path / "half") and "--out" not in cmd
    assert cmd[cmd.index("--folds") + 1] == "3" and cmd[cmd.index("--fold") + 1] == "1"
    assert cmd[cmd.index("--seed") + 1] == "4"
    fresh = compare.train_command(tmp_path / "new", [], fold=0, folds=1, seed=0, state="new")
    assert "--folds" not in fresh and fresh[fresh.index("--out") + 1] == str(tmp_path / "new")


def test_main_reuses_finished_runs_and_writes_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was retrained"))
    for name, base in [("a", 1.0), ("b", 2.0)]:
        for fold in range(2):
            fake_run(tmp_path / "runs" / f"{name}-f{fold}-s0", [base + fold + 0.5, base + fold], best_epoch=2)
    assert compare.main(["--config", "a=--epochs 2", "--config", "b=--epochs 2", "--folds", "2", "--seeds", "1",
                         "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[1/4] a fold 0 seed 0: reused, val_loss 1.0000" in out and "Holm p vs best (a)" in out
    assert "too few paired runs" in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["mean"] == [1.5, 2.5] and result["friedman"] is None and len(result["runs"]) == 4
    assert (tmp_path / "results.csv").read_text().splitlines()[:2] == [
        "config,fold,seed,val_loss,run", f"a,0,0,1.0,{tmp_path / 'runs' / 'a-f0-s0'}"]
    assert (tmp_path / "pvalues.csv").read_text().splitlines()[1].startswith("wilcoxon,a,b,2,")
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"


def in_process(cmd, stdout, **kwargs):
    """``subprocess.run`` of a ``python -m tinyclip.train`` command, run in this process (no interpreter start)."""
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
        return subprocess.CompletedProcess(cmd, train.main(cmd[3:]))


def test_interrupted_comparison_resumes_and_folds_are_paired(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare.subprocess, "run", in_process)
    common = ["--num-samples", "60", "--common", TINY + " --epochs 2", "--folds", "2", "--seeds", "1",
              "--out", str(tmp_path)]
    argv = ["--config", "a=--lr 3e-3", "--config", "b=--lr 1e-3", *common]
    # An interrupted comparison: a-f0-s0 has committed one epoch of its two, nothing else exists yet.
    half = tmp_path / "runs" / "a-f0-s0"
    assert train.main(["--num-samples", "60", *TINY.split(), "--epochs", "1", "--lr", "3e-3", "--folds", "2",
                       "--fold", "0", "--seed", "0", "--out", str(half), "--no-progress"]) == 0
    capsys.readouterr()
    assert compare.main(argv) == 0
    out = capsys.readouterr().out
    assert "a fold 0 seed 0: resumed" in out and "b fold 0 seed 0: trained" in out and "a fold 1 seed 0: trained" in out
    assert [h["epoch"] for h in load_checkpoint(half, "last")["history"]] == [1, 2]

    # The folds: the same for both configurations, validation parts disjoint and covering the non-test
    # pairs, the test part train's fixed one and never trained or validated on.
    splits = {(n, f): load_checkpoint(tmp_path / "runs" / f"{n}-f{f}-s0", "last")["split"] for n in "ab" for f in (0, 1)}
    for f in (0, 1):
        assert splits["a", f] == splits["b", f]
    test = set(run_split(60, 0)["test"].tolist())
    val0, val1 = set(splits["a", 0]["val"]), set(splits["a", 1]["val"])
    assert not val0 & val1 and val0 | val1 == set(range(60)) - test
    for split in splits.values():
        assert set(split["test"]) == test and not test & (set(split["train"]) | set(split["val"]))
        assert set(split["train"]) | set(split["val"]) == set(range(60)) - test

    # Run again: every run is reused, nothing trains.
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert compare.main(argv) == 0
    assert capsys.readouterr().out.count(": reused,") == 4


def test_failed_run_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare.subprocess, "run", in_process)
    argv = ["--data", "roco", "--data-dir", str(tmp_path / "missing"), "--config", "a=--epochs 1", "--folds", "2",
            "--seeds", "1", "--out", str(tmp_path / "cmp")]
    assert compare.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training" in err and "a-f0-s0" in err and "train.log" in err
    assert compare.run_state(tmp_path / "cmp" / "runs" / "a-f0-s0") == "new"


def test_diverged_run_counts_with_its_best_epoch(tmp_path, capsys, monkeypatch):
    def diverging(cmd, stdout, **kwargs):  # train's divergence stop: exit status 1 after a best epoch
        fake_run(tmp_path / "runs" / "a-f0-s0", [2.0, 9.0], best_epoch=1, finished=False)
        return subprocess.CompletedProcess(cmd, 1)
    monkeypatch.setattr(compare.subprocess, "run", diverging)
    assert compare.main(["--config", "a=", "--folds", "1", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert "a fold 0 seed 0: trained, val_loss 2.0000 (diverged" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["diverged"] is True
    assert compare.run_state(tmp_path / "runs" / "a-f0-s0") == "finished"


# ---------------------------------------------------------------------------
# end to end (slow): real subprocesses, 5 folds x 2 seeds
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_learning_beats_lr_1e8_and_a_recipe_ties_itself(tmp_path, capsys):
    # 'again' is 'learns' with seeds 10, 11 instead of 0, 1: its differences from 'learns' are seed noise.
    argv = ["--num-samples", "60", "--common", TINY + " --epochs 2", "--config", "learns=--lr 3e-3",
            "--config", "again=--lr 3e-3 --seed 10", "--config", "frozen=--lr 1e-8", "--folds", "5", "--seeds", "2",
            "--out", str(tmp_path)]
    assert compare.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    pairs = {(q["a"], q["b"]): q for q in result["pairs"]}
    for learner in ("learns", "again"):
        q = pairs[learner, "frozen"]
        assert q["n"] == 10 and q["median_diff"] < 0 and q["significant"], q
    assert not pairs["learns", "again"]["significant"] and pairs["learns", "again"]["p"] > 0.05
    assert result["friedman"]["significant"] and result["mean_rank"][2] == 3.0
    assert sorted({r["seed"] for r in result["runs"] if r["config"] == "again"}) == [10, 11]
