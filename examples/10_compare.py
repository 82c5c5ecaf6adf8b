"""Compare two training recipes with ``tinyclip.compare``: two epochs against one.

Each recipe is trained once per seed (``--folds 1`` keeps train's fixed split; give
``--folds K`` for k-fold validation once train supports it), the best-epoch validation
loss of every run is collected, and the pairs are compared with the Wilcoxon signed-rank
test (Holm-corrected) and, for three or more recipes, the Friedman test. With n seeds the
smallest possible two-sided Wilcoxon p is 2/2^n, so 6 seeds are the fewest that can reach 5%.

    python examples/10_compare.py [--out DIR]

It ends with one line ``RESULT: ...``.
"""
import argparse
import json
import tempfile
from pathlib import Path

from _small_run import QUICK, section

from tinyclip import compare

TINY = ("--num-samples 80 --image-size 16 --conv-channels 4,8 --width 16 --text-layers 1 --heads 2 "
        "--ff-dim 32 --embed-dim 8 --max-len 16 --batch-size 16 --lr 3e-3 --patience 0")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", help="comparison folder (default: a temporary one)")
args = parser.parse_args()
out = args.out or tempfile.mkdtemp(prefix="tinyclip-compare-")
seeds = ["0", "1"] if QUICK else [str(s) for s in range(6)]

section(f"two epochs against one, {len(seeds)} seeds, into {out}")
compare.main(["--config", "two: --epochs 2", "--config", "one: --epochs 1", "--common", TINY,
              "--folds", "1", "--seeds", *seeds, "--out", out])
pair = json.loads((Path(out) / "results.json").read_text())["pairs"][0]
print(f"RESULT: two epochs minus one, median val_loss difference {pair['median_diff']:+.3f} over {len(seeds)} seeds, "
      f"Wilcoxon p {pair['p']:.3g}")
