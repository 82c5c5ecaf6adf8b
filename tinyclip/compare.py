"""K-fold comparison of training recipes: ``python -m tinyclip.compare``.

Each configuration (a name and extra ``tinyclip.train`` flags) is trained once per (fold, seed) in a
subprocess, so a crash or Ctrl-C in one run leaves the others intact; finished runs are reused and an
interrupted one is continued with ``--resume``. The metric of a run is read from its ``metrics.csv``
(best-epoch ``val_loss`` by default). Statistics: Friedman test over the configurations on the
(fold, seed) blocks, mean ranks, pairwise two-sided Wilcoxon signed-rank tests with Holm's correction.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from .io import atomic_write


def parse_config(text: str) -> tuple[str, list[str]]:
    """``"NAME: --lr 1e-3 --epochs 2"`` -> ``("NAME", ["--lr", "1e-3", "--epochs", "2"])``."""
    name, sep, flags = text.partition(":")
    name = name.strip()
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"config {text!r}: expected 'NAME: --flag value ...' with a name of letters, digits, - or _")
    return name, shlex.split(flags)


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values: sorted p_(i) times (m - i), running maximum, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def mean_ranks(scores: np.ndarray, higher_is_better: bool = False) -> np.ndarray:
    """scores (blocks, configs) -> (configs,) mean rank within a block, 1 = best, ties averaged."""
    ranks = stats.rankdata(-scores if higher_is_better else scores, axis=1)
    return ranks.mean(axis=0)


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon p with n nonzero paired differences: 2 / 2^n."""
    return 2.0 / 2 ** n


def compare_scores(names, scores, alpha: float = 0.05, higher_is_better: bool = False) -> dict:
    """scores (blocks, configs): Friedman test, mean ranks and Holm-corrected pairwise Wilcoxon tests."""
    scores = np.asarray(scores, dtype=float)
    n_blocks, k = scores.shape
    result = {"configs": list(names), "blocks": n_blocks, "alpha": alpha,
              "mean": scores.mean(axis=0).tolist(), "std": scores.std(axis=0, ddof=1).tolist() if n_blocks > 1 else None,
              "mean_rank": mean_ranks(scores, higher_is_better).tolist(), "notes": []}
    if k >= 3 and n_blocks >= 2:
        chi2, p = stats.friedmanchisquare(*scores.T)
        result["friedman"] = {"statistic": float(chi2), "p": float(p)}
    pairs, raw = [], []
    for i in range(k):
        for j in range(i + 1, k):
            d = scores[:, i] - scores[:, j]
            nonzero = int(np.count_nonzero(d))
            if nonzero == 0:
                p = 1.0
            else:
                p = float(stats.wilcoxon(scores[:, i], scores[:, j], zero_method="wilcox").pvalue)
            if smallest_wilcoxon_p(max(nonzero, 1)) > alpha:
                result["notes"].append(f"{names[i]} vs {names[j]}: too few pairs for {alpha:.0%} "
                                       f"({nonzero} nonzero differences; the smallest possible p is "
                                       f"{smallest_wilcoxon_p(max(nonzero, 1)):.3g})")
            pairs.append({"a": names[i], "b": names[j], "median_diff": float(np.median(d)), "n": nonzero, "p": p})
            raw.append(p)
    for pair, p_holm in zip(pairs, holm(raw) if raw else []):
        pair["p_holm"] = float(p_holm)
        pair["significant"] = bool(p_holm < alpha)
    result["pairs"] = pairs
    return result


def run_metric(run_dir: Path, column: str = "val_loss") -> float | None:
    """The metric of a finished run: ``column`` at the epoch of the lowest val_loss in metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    if column not in rows[0]:
        raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(rows[0])})")
    best = min(rows, key=lambda r: float(r["val_loss"]))
    return float(best[column])


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        return len(list(csv.DictReader(f)))


def _flag_value(flags, name, default):
    return flags[flags.index(name) + 1] if name in flags else default


def train_run(run_dir: Path, flags, fold: int, folds: int, seed: int, log=print) -> None:
    """Train (or continue with --resume) one run in a subprocess unless metrics.csv says it is done."""
    epochs = int(_flag_value(flags, "--epochs", 0) or 0)
    done = _epochs_done(run_dir)
    if done and (epochs == 0 or done >= epochs):
        log(f"reuse {run_dir.name}: {done} epochs in metrics.csv")
        return
    # --folds 1 keeps train's own fixed 64/16/20 split and varies only the seed.
    fold_flags = ["--folds", str(folds), "--fold", str(fold)] if folds > 1 else []
    cmd = [sys.executable, "-m", "tinyclip.train", *flags, *fold_flags,
           "--seed", str(seed), "--out", str(run_dir), "--no-progress"]
    if (run_dir / "last.npz").exists():
        cmd.append("--resume")
    log(("resume " if "--resume" in cmd else "train ") + run_dir.name)
    subprocess.run(cmd, check=True)


def _plot(names, scores, metric, path: Path) -> None:
    # A bare Figure on the Agg canvas, like train._plot_losses: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1.2 * len(names) + 2, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.boxplot([scores[:, j] for j in range(len(names))])
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def format_table(result: dict) -> str:
    lines = [f"{'config':<16}{'mean':>10}{'std':>10}{'mean rank':>11}"]
    for j, name in enumerate(result["configs"]):
        std = result["std"][j] if result["std"] else float("nan")
        lines.append(f"{name:<16}{result['mean'][j]:>10.4f}{std:>10.4f}{result['mean_rank'][j]:>11.2f}")
    if "friedman" in result:
        lines.append(f"Friedman chi2 {result['friedman']['statistic']:.3f}  p {result['friedman']['p']:.4g}")
    for pair in result["pairs"]:
        lines.append(f"{pair['a']} vs {pair['b']}: median diff {pair['median_diff']:+.4f}  Wilcoxon p {pair['p']:.4g}"
                     f"  Holm p {pair['p_holm']:.4g}{'  *' if pair['significant'] else ''}")
    lines.extend(result["notes"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinyclip.compare",
                                description="Train each configuration on K folds x seeds and compare them.")
    p.add_argument("--config", action="append", required=True, help="'NAME: --train-flag value ...' (repeat)")
    p.add_argument("--common", default="", help="train flags shared by every configuration")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--metric", default="val_loss", help="a metrics.csv column, read at the best-val_loss epoch")
    p.add_argument("--higher-is-better", action="store_true")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", required=True, type=Path)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configs = [parse_config(c) for c in args.config]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    common = shlex.split(args.common)
    names = [name for name, _ in configs]
    blocks, rows = [], []
    for fold in range(args.folds):
        for seed in args.seeds:
            row = []
            for name, flags in configs:
                run_dir = args.out / "runs" / f"{name}-f{fold}-s{seed}"
                try:
                    train_run(run_dir, common + flags, fold, args.folds, seed)
                except subprocess.CalledProcessError as e:
                    print(f"error: training {run_dir} failed with exit status {e.returncode}", file=sys.stderr)
                    return 1
                row.append(run_metric(run_dir, args.metric))
            blocks.append((fold, seed))
            rows.append(row)
    scores = np.array(rows, dtype=float)
    result = compare_scores(names, scores, args.alpha, args.higher_is_better)
    result["metric"] = args.metric
    result["scores"] = [{"fold": f, "seed": s, **dict(zip(names, r))} for (f, s), r in zip(blocks, rows)]
    atomic_write(args.out / "results.json", lambda f: json.dump(result, f, indent=2), mode="w")

    def write_csv(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["fold", "seed", *names])
        writer.writerows([f_, s, *r] for (f_, s), r in zip(blocks, rows))
    atomic_write(args.out / "results.csv", write_csv, mode="w")
    _plot(names, scores, args.metric, args.out / "scores.png")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
