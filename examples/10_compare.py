"""Why one validation run is not enough to choose a recipe: k-fold runs, several seeds, a paired test.

Two recipes that differ only in the learning rate are trained with ``tinyclip.compare`` on synthetic
pairs, once per (fold, seed) block: each run validates on one fold of the pairs outside the fixed
test part and trains on the others. The example then reads the paired results three ways:

1. as one validation run would: fold 0, seed 0 alone names a winner;
2. block by block: how much the difference moves from fold to fold and seed to seed, and whether
   its sign changes, which a single run cannot show;
3. as a test: the two-sided Wilcoxon signed-rank test on the paired differences. With n blocks its
   smallest possible p is 2/2^n, so 5 blocks can never reach 5% however large the difference.

    python examples/10_compare.py [--out DIR]

It ends with one line ``RESULT: ...``.
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _small_run import QUICK, section

from tinyclip import compare

TINY = ("--image-size 16 --conv-channels 4,8 --width 16 --text-layers 1 --heads 2 --ff-dim 32 --embed-dim 8 "
        "--max-len 16 --batch-size 16 --patience 0 --epochs 2")
FOLDS, SEEDS = (2, 1) if QUICK else (5, 2)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", help="comparison folder (default: a temporary one)")
args = parser.parse_args()
out = Path(args.out or tempfile.mkdtemp(prefix="tinyclip-compare-"))

section(f"lr 3e-3 against lr 1e-3: {FOLDS} folds x {SEEDS} seeds of 120 synthetic pairs, into {out}")
rc = compare.main(["--num-samples", "120", "--common", TINY, "--config", "lr3e-3=--lr 3e-3",
                   "--config", "lr1e-3=--lr 1e-3", "--folds", str(FOLDS), "--seeds", str(SEEDS), "--out", str(out)])
if rc != 0:
    raise SystemExit(rc)
result = json.loads((out / "results.json").read_text())
value = {(r["config"], r["fold"], r["seed"]): r["value"] for r in result["runs"]}
blocks = sorted({(r["fold"], r["seed"]) for r in result["runs"]})
diff = np.array([value["lr3e-3", f, s] - value["lr1e-3", f, s] for f, s in blocks])

section("1. one validation run: fold 0, seed 0")
winner = "lr3e-3" if diff[0] < 0 else "lr1e-3"
print(f"val_loss lr3e-3 {value['lr3e-3', 0, 0]:.4f}, lr1e-3 {value['lr1e-3', 0, 0]:.4f}: "
      f"one run says {winner} is better, by {abs(diff[0]):.4f}")

section("2. every block: the paired difference lr3e-3 - lr1e-3 (negative: lr3e-3 better)")
for (f, s), d in zip(blocks, diff):
    print(f"fold {f} seed {s}: {d:+.4f}")
wins = int((diff < 0).sum())
print(f"lr3e-3 better in {wins} of {len(diff)} blocks; the difference ranges from {diff.min():+.4f} to "
      f"{diff.max():+.4f} (the single run above is one of these)")

section("3. the paired test")
pair = result["pairs"][0]
print(f"Wilcoxon signed-rank, two-sided: p = {pair['p']:.4g} over {pair['n']} nonzero differences "
      f"(the smallest p possible with {pair['n']} is {compare.smallest_wilcoxon_p(pair['n']):.4g})")
for note in result["notes"]:
    print(note)
verdict = "significant" if pair["significant"] else "not significant"
print(f"RESULT: lr3e-3 - lr1e-3 median val_loss difference {pair['median_diff']:+.4f} over {len(diff)} blocks "
      f"({wins} won by lr3e-3), Wilcoxon p {pair['p']:.3g}: {verdict} at 5%")
