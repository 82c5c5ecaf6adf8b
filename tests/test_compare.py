import json

import numpy as np
import pytest
from scipy import stats

from tinyclip import compare


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
    assert result["friedman"] == pytest.approx({"statistic": chi2, "p": p})
    raw = [stats.wilcoxon(scores[:, i], scores[:, j]).pvalue for i, j in [(0, 1), (0, 2), (1, 2)]]
    assert [q["p"] for q in result["pairs"]] == pytest.approx(raw)
    assert [q["p_holm"] for q in result["pairs"]] == pytest.approx(compare.holm(raw))


def test_wilcoxon_hand_worked_and_too_few_pairs():
    # five positive differences: exact two-sided p = 2 / 2^5 = 0.0625, above 5%, so a note says so
    scores = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0]])
    result = compare.compare_scores(["a", "b"], scores)
    assert result["pairs"][0]["p"] == pytest.approx(0.0625)
    assert compare.smallest_wilcoxon_p(5) == 0.0625
    assert "too few pairs for 5%" in result["notes"][0]
    assert not result["pairs"][0]["significant"]


def test_parse_config():
    assert compare.parse_config("fast: --lr 1e-3 --epochs 2") == ("fast", ["--lr", "1e-3", "--epochs", "2"])
    with pytest.raises(ValueError, match="NAME"):
        compare.parse_config("--lr 1e-3")


def test_run_metric_best_epoch(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,val_loss,seconds,lr\n1,3,2.5,1,0.1\n2,2,2.0,1,0.1\n"
                                          "3,1,2.2,1,0.1\n")
    assert compare.run_metric(tmp_path) == 2.0
    assert compare.run_metric(tmp_path, "train_loss") == 2.0
    with pytest.raises(ValueError, match="no column"):
        compare.run_metric(tmp_path, "auc")


def test_main_reuses_finished_runs_and_writes_results(tmp_path, capsys):
    # Pre-finished runs: main must reuse them (no training subprocess) and write table, json, csv, figure.
    for name, base in [("a", 1.0), ("b", 2.0)]:
        for fold in range(2):
            run = tmp_path / "runs" / f"{name}-f{fold}-s0"
            run.mkdir(parents=True)
            (run / "metrics.csv").write_text(f"epoch,train_loss,val_loss,seconds,lr\n1,1,{base + fold},1,0.1\n")
    assert compare.main(["--config", "a: --epochs 1", "--config", "b: --epochs 1", "--folds", "2",
                         "--seeds", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["mean"] == [1.5, 2.5]
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "fold,seed,a,b"
    assert (tmp_path / "scores.png").stat().st_size > 0
    assert "reuse a-f0-s0" in capsys.readouterr().out


def test_train_run_resumes_interrupted_and_skips_finished(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", lambda cmd, check: calls.append(cmd))
    run = tmp_path / "a-f1-s0"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,seconds,lr\n1,1,2,1,0.1\n")
    (run / "last.npz").write_bytes(b"")
    compare.train_run(run, ["--epochs", "2"], fold=1, folds=3, seed=0, log=lambda m: None)
    assert calls[0][-1] == "--resume"
    assert calls[0][calls[0].index("--folds") + 1] == "3" and calls[0][calls[0].index("--fold") + 1] == "1"
    compare.train_run(run, ["--epochs", "1"], fold=1, folds=3, seed=0, log=lambda m: None)
    assert len(calls) == 1  # one epoch done of one: reused, no new subprocess
    compare.train_run(tmp_path / "new", ["--epochs", "1"], fold=0, folds=3, seed=0, log=lambda m: None)
    assert "--resume" not in calls[1]


def test_end_to_end_two_epochs_beat_one(tmp_path):
    # 6 seeds: the smallest Wilcoxon p is 2/64 < 5%, reached when all six runs of 'two' beat 'one'.
    tiny = ("--num-samples 80 --image-size 16 --conv-channels 4,8 --width 16 --text-layers 1 --heads 2 "
            "--ff-dim 32 --embed-dim 8 --max-len 16 --batch-size 16 --lr 3e-3 --patience 0")
    argv = ["--config", "two: --epochs 2", "--config", "one: --epochs 1", "--common", tiny, "--folds", "1",
            "--seeds", *map(str, range(6)), "--out", str(tmp_path)]
    assert compare.main(argv) == 0
    pair = json.loads((tmp_path / "results.json").read_text())["pairs"][0]
    assert pair["median_diff"] < 0 and pair["p"] == pytest.approx(2 / 64) and pair["significant"]
