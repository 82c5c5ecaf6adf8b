"""K-fold comparison of training recipes: ``python -m tinyclip.compare``.

A configuration is a name and ``tinyclip.train`` flags (``--config NAME=FLAGS``). Each one is trained
once per (fold, seed): on K-1 folds of the pairs outside train's fixed test part, validated on the
remaining fold, with seeds 0..S-1. Folds and seeds are the same for every configuration, so the runs
are paired: block b = (fold, seed) holds one metric per configuration. Every run is a subprocess
writing an ordinary run directory ``OUT/runs/NAME-fFOLD-sSEED``; a finished one is reused and an
interrupted one continued with ``--resume``, so the same command picks up an interrupted comparison.
A configuration that gives ``--seed N`` uses seeds N..N+S-1 instead (the same recipe against itself
with other seeds shows the seed noise).

The metric of a run is a ``metrics.csv`` column (``val_loss`` by default) at its best epoch, the one
train kept as its ``best`` checkpoint (chosen by the run's ``--select``). Statistics (``scipy.stats``): the Friedman test over all configurations with the
blocks as repeated measures, mean ranks within blocks, and two-sided Wilcoxon signed-rank tests for
every pair with Holm's correction; with n nonzero paired differences the smallest possible
Wilcoxon p is 2/2^n, so fewer than 6 can never reach 5%.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from . import train
from .checkpoint import load_checkpoint
from .cli import OneLineParser, nonnegative_int, positive_int, probability
from .io import atomic_write, read_json

# Given once at the top level: the folds are built from them and must be the same for every configuration.
DATA_FLAGS = ("data", "data_dir", "num_samples", "split_seed")
# Set by the comparison for each run. (A configuration's --seed N shifts its seeds to N..N+S-1.)
RUN_FLAGS = ("folds", "fold", "out", "resume", "overwrite")
NAME = re.compile(r"[A-Za-z0-9_-]+")


# ---------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------

def parse_config(text: str) -> tuple[str, list[str]]:
    """``"fast=--lr 1e-3 --epochs 2"`` -> ``("fast", ["--lr", "1e-3", "--epochs", "2"])``."""
    name, sep, flags = text.partition("=")
    name = name.strip()
    if not sep or not NAME.fullmatch(name):
        raise ValueError(f"--config {text!r}: expected NAME=FLAGS with a name of letters, digits, - or _")
    return name, shlex.split(flags)


def read_configs(path: Path) -> list[tuple[str, list[str]]]:
    """A JSON or TOML file mapping each name to its flags, as one string or a list: ``{"fast": "--lr 1e-3"}``."""
    try:
        if path.suffix == ".toml":
            table = _read_toml(path)
        else:
            table = read_json(path, "--configs file")
    except OSError as e:  # read_json's FileNotFoundError already names the file
        raise ValueError(f"--configs file {path}: {e.strerror}" if e.strerror else str(e)) from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"--configs file {path}: expected a non-empty table NAME = flags")
    configs = []
    for name, flags in table.items():
        if isinstance(flags, str):
            flags = shlex.split(flags)
        if not NAME.fullmatch(name) or not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise ValueError(f"--configs file {path}: entry {name!r} must be a name of letters, digits, - or _ "
                             f"with a string of flags or a list of strings")
        configs.append((name, flags))
    return configs


def _read_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        raise ValueError(f"--configs file {path}: TOML needs Python 3.11 or later; give a JSON file") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--configs file {path} is not valid TOML: {e}") from None


def train_args(data, flags, where: str) -> argparse.Namespace:
    """``data + flags`` parsed by train's own parser; a bad flag, or a data or per-run flag in ``flags``, is a
    ``ValueError`` naming ``where``."""
    parser = train.build_parser()

    def error(message):
        raise ValueError(f"{where}: {message}")
    parser.error = error  # one line naming the configuration instead of train's exit
    given = train.given_flags(parser, flags)
    for dest, why in [(DATA_FLAGS, "is a data flag: give it once, at the top level"),
                      (RUN_FLAGS, "is set by the comparison for each run")]:
        bad = sorted(given & set(dest))
        if bad:
            raise ValueError(f"{where}: --{bad[0].replace('_', '-')} {why}")
    return parser.parse_args([*data, *flags])


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------

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
    """scores (blocks, configs): Friedman test (3+ configs), mean ranks, Holm-corrected pairwise Wilcoxon."""
    scores = np.asarray(scores, dtype=float)
    n_blocks, k = scores.shape
    ranks = mean_ranks(scores, higher_is_better)
    means = scores.mean(axis=0)
    # The best: the lowest mean rank; equal ranks are broken by the mean.
    best = min(range(k), key=lambda j: (ranks[j], -means[j] if higher_is_better else means[j]))
    result = {"configs": list(names), "blocks": n_blocks, "alpha": alpha, "higher_is_better": higher_is_better,
              "mean": means.tolist(), "std": scores.std(axis=0, ddof=1).tolist() if n_blocks > 1 else None,
              "mean_rank": ranks.tolist(), "best": names[best], "friedman": None, "notes": []}
    if k >= 3 and n_blocks >= 2:
        chi2, p = stats.friedmanchisquare(*scores.T)
        result["friedman"] = {"statistic": float(chi2), "p": float(p), "significant": bool(p < alpha)}
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            d = scores[:, i] - scores[:, j]
            nonzero = int(np.count_nonzero(d))
            # All differences zero: the two are identical on these blocks; scipy would warn and return nan.
            test = stats.wilcoxon(scores[:, i], scores[:, j], zero_method="wilcox") if nonzero else None
            pairs.append({"a": names[i], "b": names[j], "median_diff": float(np.median(d)), "n": nonzero,
                          "statistic": float(test.statistic) if test else None,
                          "p": float(test.pvalue) if test else 1.0})
            if smallest_wilcoxon_p(nonzero) > alpha:
                result["notes"].append(f"{names[i]} vs {names[j]}: too few paired runs for the {alpha:.0%} level "
                                       f"({nonzero} nonzero differences; the smallest possible Wilcoxon p is "
                                       f"2/2^{nonzero} = {smallest_wilcoxon_p(nonzero):.3g})")
    for pair, p_holm in zip(pairs, holm([q["p"] for q in pairs]) if pairs else []):
        pair["p_holm"] = float(p_holm)
        pair["significant"] = bool(p_holm < alpha)
    result["pairs"] = pairs
    return result


def p_against_best(result: dict) -> dict:
    """Each configuration's Holm-adjusted Wilcoxon p against the best one (None for the best itself)."""
    best = result["best"]
    out = {name: None for name in result["configs"]}
    for pair in result["pairs"]:
        if best in (pair["a"], pair["b"]):
            out[pair["b"] if pair["a"] == best else pair["a"]] = pair["p_holm"]
    return out


def format_table(result: dict, metric: str) -> str:
    """The printed summary: config, mean ± std, mean rank, adjusted p against the best; tests and notes."""
    vs_best = p_against_best(result)
    lines = [f"{'config':<16}{metric + ' mean ± std':>24}{'mean rank':>11}   Holm p vs best ({result['best']})"]
    for j, name in enumerate(result["configs"]):
        std = f"{result['std'][j]:.4f}" if result["std"] else "-"
        p = "best" if vs_best[name] is None else f"{vs_best[name]:.4g}"
        lines.append(f"{name:<16}{result['mean'][j]:>15.4f} ± {std:<6}{result['mean_rank'][j]:>11.2f}   {p}")
    if result["friedman"]:
        f = result["friedman"]
        lines.append(f"Friedman over {len(result['configs'])} configurations, {result['blocks']} blocks: "
                     f"chi2 {f['statistic']:.3f}, p {f['p']:.4g}")
    for pair in result["pairs"]:
        lines.append(f"{pair['a']} - {pair['b']}: median difference {pair['median_diff']:+.4f}, Wilcoxon p "
                     f"{pair['p']:.4g}, Holm p {pair['p_holm']:.4g}"
                     f"{'  (significant at ' + format(result['alpha'], '.0%') + ')' if pair['significant'] else ''}")
    lines.extend(result["notes"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------

def run_metric(run_dir: Path, column: str = "val_loss") -> float:
    """``column`` of ``run_dir/metrics.csv`` at the run's best epoch (its ``best`` checkpoint, as train chose it).

    ``val_r10`` is the mean of ``val_r10_i2t`` and ``val_r10_t2i`` (what ``train --select val_r10`` uses).
    """
    path = run_dir / "metrics.csv"
    with open(path, newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    best = int(load_checkpoint(run_dir, "best")["epoch"])
    if best not in rows:
        raise ValueError(f"{path} has no row for the best epoch {best}")
    row = rows[best]
    if column == "val_r10" and column not in row and {"val_r10_i2t", "val_r10_t2i"} <= set(row):
        return (float(row["val_r10_i2t"]) + float(row["val_r10_t2i"])) / 2
    if column not in row:
        raise ValueError(f"--metric {column}: {path} has no such column (it has {', '.join(row)})")
    return float(row[column])


# Written into a run directory once its training subprocess exited 0 (all epochs done or stopped early).
FINISHED = "compare_finished.json"


def run_state(run_dir: Path) -> str:
    """``"finished"`` (its training exited 0), ``"interrupted"`` (an epoch was committed) or ``"new"``."""
    if (run_dir / FINISHED).is_file():
        return "finished"
    # Without a committed ``last`` train starts afresh and removes any partial files.
    return "interrupted" if (run_dir / "last.npz").is_file() else "new"


def train_command(run_dir: Path, flags, fold: int, folds: int, seed: int, state: str) -> list[str]:
    """The ``tinyclip.train`` command line of one run (``--resume`` for an interrupted one)."""
    # --folds 1: train's own fixed 64/16/20 split, only the seed varies.
    fold_flags = ["--folds", str(folds), "--fold", str(fold)] if folds > 1 else []
    where = ["--resume", str(run_dir)] if state == "interrupted" else ["--out", str(run_dir)]
    return [sys.executable, "-m", "tinyclip.train", *flags, *fold_flags, "--seed", str(seed), *where,
            "--no-progress"]


class RunFailed(RuntimeError):
    """A training subprocess exited non-zero; the message names the run and its log's last line."""


def train_run(run_dir: Path, cmd) -> None:
    """Run ``cmd`` with its output appended to ``run_dir/train.log``; when it ends, mark the run finished."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.log"
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc == 130:
        raise KeyboardInterrupt
    # Exit status 1 is train's divergence stop: the recipe ends there, with the best checkpoint before it.
    stopped = rc == 1 and (run_dir / "best.npz").is_file()
    if rc != 0 and not stopped:
        last = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
        raise RunFailed(f"training {run_dir} failed (exit status {rc}): {last} (log: {log})")
    atomic_write(run_dir / FINISHED, lambda f: json.dump({"command": cmd, "diverged": stopped}, f), mode="w")


def diverged(run_dir: Path) -> bool:
    """Whether a finished run was ended by train's divergence stop."""
    return bool(read_json(run_dir / FINISHED, "run mark").get("diverged"))


def _settings(out: Path, settings: dict) -> None:
    """Record the data flags, folds and configurations in ``out/comparison.json``; refuse a conflicting rerun."""
    path = out / "comparison.json"
    if path.exists():
        old = read_json(path, "comparison settings")
        for key in ("data", "folds"):
            if old.get(key) != settings[key]:
                raise ValueError(f"--out {out} holds a comparison with other {key} ({old.get(key)}; now "
                                 f"{settings[key]}): its runs cannot be reused; choose a new --out")
        for name, flags in settings["configs"].items():
            if name in old.get("configs", {}) and old["configs"][name] != flags:
                raise ValueError(f"--out {out}: configuration {name!r} was run with other flags "
                                 f"({shlex.join(old['configs'][name])}); rename it or choose a new --out")
        settings = {**settings, "configs": {**old.get("configs", {}), **settings["configs"]}}
    atomic_write(path, lambda f: json.dump(settings, f, indent=2), mode="w")


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------

def _plot(names, scores, result: dict, metric: str, path: Path) -> None:
    """Box plot of the metric per configuration, every run as a dot, the paired runs joined by lines."""
    # A bare Figure on the Agg canvas, like train._plot_losses: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1.4 * len(names) + 2.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(1, len(names) + 1)
    ax.boxplot([scores[:, j] for j in range(len(names))], widths=0.5, showfliers=False)
    for row in scores:
        ax.plot(x, row, "-", color="0.7", lw=0.7, zorder=1)
    for j in range(len(names)):
        ax.plot(np.full(len(scores), x[j]), scores[:, j], "o", ms=4, alpha=0.7, zorder=2)
    ax.set_xticks(x, [f"{n}\nrank {r:.2f}" for n, r in zip(names, result["mean_rank"])])
    ax.set_ylabel(metric + (" (higher is better)" if result["higher_is_better"] else " (lower is better)"))
    if result["friedman"]:
        title = f"Friedman p = {result['friedman']['p']:.3g}"
    else:
        title = f"Wilcoxon p = {result['pairs'][0]['p']:.3g}" if result["pairs"] else ""
    ax.set_title(f"{len(scores)} blocks of paired runs (fold x seed); {title}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def write_results(out: Path, result: dict, names, scores) -> None:
    """``results.json`` (everything), ``results.csv`` (one row per run), ``pvalues.csv`` (every test), figure."""
    atomic_write(out / "results.json", lambda f: json.dump(result, f, indent=2), mode="w")

    def runs_csv(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["config", "fold", "seed", result["metric"], "run"])
        writer.writerows([r["config"], r["fold"], r["seed"], r["value"], r["run"]] for r in result["runs"])

    def pvalues_csv(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["test", "a", "b", "n", "statistic", "p", "p_holm"])
        if result["friedman"]:
            writer.writerow(["friedman", "all", "", result["blocks"], result["friedman"]["statistic"],
                             result["friedman"]["p"], ""])
        for q in result["pairs"]:
            writer.writerow(["wilcoxon", q["a"], q["b"], q["n"], q["statistic"], q["p"], q["p_holm"]])
    atomic_write(out / "results.csv", runs_csv, mode="w")
    atomic_write(out / "pvalues.csv", pvalues_csv, mode="w")
    _plot(names, scores, result, result["metric"], out / "scores.png")


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m tinyclip.compare",
                      description="Train each configuration on K folds x S seeds (paired runs) and compare them: "
                                  "Friedman test, mean ranks, pairwise Wilcoxon tests with Holm's correction.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c = p.add_argument_group("configurations")
    c.add_argument("--config", action="append", default=[], metavar="NAME=FLAGS",
                   help="a configuration: a name and tinyclip.train flags, e.g. fast='--lr 1e-3' (repeat)")
    c.add_argument("--configs", type=Path, metavar="FILE",
                   help="a JSON or TOML file of configurations, NAME = \"flags\" (added to --config)")
    c.add_argument("--common", default="", metavar="FLAGS",
                   help="train flags added to every configuration (written first, so a configuration can override)")
    d = p.add_argument_group("data (the same folds for every configuration)")
    d.add_argument("--data", choices=("synthetic", "roco"), help="as in tinyclip.train (default: train's)")
    d.add_argument("--data-dir", help="as in tinyclip.train")
    d.add_argument("--num-samples", type=positive_int, help="as in tinyclip.train")
    d.add_argument("--split-seed", type=nonnegative_int, help="seed of the fixed test part and the folds")
    s = p.add_argument_group("runs and statistics")
    s.add_argument("--folds", type=positive_int, default=5,
                   help="K: each run validates on one fold of the non-test pairs (1: train's fixed 64/16/20 split)")
    s.add_argument("--seeds", type=positive_int, default=2, help="S: seeds 0..S-1 for every fold")
    s.add_argument("--metric", default="val_loss", help="a metrics.csv column, read at the best-val_loss epoch")
    s.add_argument("--better", choices=("lower", "higher"),
                   help="which direction of the metric is better (default: higher for val_r*, else lower)")
    s.add_argument("--alpha", type=probability, default=0.05, help="significance level")
    s.add_argument("--out", required=True, type=Path, help="comparison folder; runs go to OUT/runs/")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configs = [parse_config(c) for c in args.config] + (read_configs(args.configs) if args.configs else [])
        if not configs:
            raise ValueError("give at least one configuration (--config NAME=FLAGS or --configs FILE)")
        names = [name for name, _ in configs]
        if len(set(names)) < len(names):
            raise ValueError(f"configuration names must differ: {', '.join(names)}")
        data = [tok for dest in DATA_FLAGS if getattr(args, dest) is not None
                for tok in (f"--{dest.replace('_', '-')}", str(getattr(args, dest)))]
        common = shlex.split(args.common)
        full = {name: common + flags for name, flags in configs}
        parsed = {name: train_args(data, flags, f"configuration {name!r}") for name, flags in full.items()}
        _settings(args.out, {"data": data, "folds": args.folds, "configs": full})
    except OSError as e:  # --out not writable, or a file
        print(f"tinyclip.compare: error: --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"tinyclip.compare: error: {e}", file=sys.stderr)
        return 2

    # Block (fold, i): seed i of every configuration, or seed N + i of one whose flags give --seed N.
    blocks = [(fold, i) for fold in range(args.folds) for i in range(args.seeds)]
    total, done = len(blocks) * len(configs), 0
    rows, runs = [], []
    try:
        for fold, i in blocks:
            row = []
            for name in names:
                seed = parsed[name].seed + i
                run_dir = args.out / "runs" / f"{name}-f{fold}-s{seed}"
                state = run_state(run_dir)
                t0 = time.perf_counter()
                if state != "finished":
                    train_run(run_dir, train_command(run_dir, data + full[name], fold, args.folds, seed, state))
                value = run_metric(run_dir, args.metric)
                done += 1
                how = {"new": "trained", "interrupted": "resumed", "finished": "reused"}[state]
                stopped = diverged(run_dir)
                print(f"[{done}/{total}] {name} fold {fold} seed {seed}: {how}, {args.metric} {value:.4f}"
                      f"{' (diverged; its best epoch before that)' if stopped else ''} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                row.append(value)
                runs.append({"config": name, "fold": fold, "seed": seed, "value": value, "diverged": stopped,
                             "run": str(run_dir)})
            rows.append(row)
    except KeyboardInterrupt:
        print(f"tinyclip.compare: interrupted after {done} of {total} runs; the same command continues "
              f"(finished runs are reused, the interrupted one resumes)", file=sys.stderr)
        return 130
    except (RunFailed, ValueError, OSError) as e:
        print(f"tinyclip.compare: error: {e}", file=sys.stderr)
        return 1

    scores = np.array(rows, dtype=float)
    higher = args.better == "higher" if args.better else args.metric.startswith("val_r")
    result = compare_scores(names, scores, args.alpha, higher)
    result.update(metric=args.metric, folds=args.folds, seeds=args.seeds, data=data, flags=full, runs=runs)
    write_results(args.out, result, names, scores)
    print(format_table(result, args.metric))
    print(f"results: {args.out / 'results.json'}, results.csv, pvalues.csv, scores.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
