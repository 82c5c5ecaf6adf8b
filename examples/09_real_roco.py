"""The same pipeline on real radiology pairs: ROCO (Pelka et al. 2018).

What you will learn
-------------------
1. What real data looks like next to the synthetic set: ROCO's captions are raw figure
   captions from PubMed Central articles, and its images are every kind of radiology
   figure (CT, MRI, X-ray, ultrasound, angiography, ...), of any size and aspect ratio.
2. How to point tinyclip at a ROCO folder: ``tinyclip.train.run`` with ``--data roco
   --data-dir FOLDER`` reads ``captions.txt``, ``cuis.txt`` and ``images/``, decodes the
   images once (cached), splits 64/16/20 and trains; here for a few epochs at a small
   image size on a random subset, so it fits a laptop.
3. How to score the result: image→text and text→image retrieval on the run's test
   pairs (``tinyclip.tasks.retrieval``): R@K is the share of queries whose partner is
   among the K best, to compare with the chance level K/N.

Without ``--data-dir`` the example prints how to get ROCO and exits (RESULT: skipped).

Run it:  python examples/09_real_roco.py --data-dir PATH/TO/roco
         PATH may be a split folder (``.../data/test/radiology``) or the dataset's root.
         (about a minute on a laptop CPU: 1,500 pairs at 32×32, 3 epochs, plus decoding the
         images the first time; TINYCLIP_EXAMPLE_QUICK=1: 64 pairs at 16×16, 1 epoch, seconds)

It prints the data found, the training log of ``tinyclip.train``, the retrieval table,
the command that evaluates the run on every task, and finally one line ``RESULT: ...``.
"""

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinyclip import train
from tinyclip.data.pairs import load_pairs
from tinyclip.data.roco import load_roco
from tinyclip.models import CLIP

QUICK = os.environ.get("TINYCLIP_EXAMPLE_QUICK") == "1"

HOW_TO_GET_ROCO = """\
No ROCO folder given. To get the dataset (images come from PubMed Central, about 80k pairs):

    git clone https://github.com/razorx89/roco-dataset
    cd roco-dataset
    python scripts/fetch.py          # downloads and extracts the images (takes a while)

It leaves this layout, one folder per split:

    data/{train,validation,test}/radiology/captions.txt   ROCO_id<TAB>caption
    data/{train,validation,test}/radiology/cuis.txt       ROCO_id<TAB><TAB>CUI<TAB>...
    data/{train,validation,test}/radiology/images/        ROCO_id.jpg

Then run:  python examples/09_real_roco.py --data-dir roco-dataset/data/train/radiology
(or give the dataset's root: the first split folder with images is used)"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train and evaluate tinyclip on a ROCO folder (a short run).")
    p.add_argument("--data-dir", help="ROCO split folder (captions.txt, cuis.txt, images/) or the dataset's root")
    p.add_argument("--max-pairs", type=int, default=64 if QUICK else 1500,
                   help="random subset of this many pairs (0: all of them)")
    p.add_argument("--epochs", type=int, default=1 if QUICK else 3)
    p.add_argument("--image-size", type=int, default=16 if QUICK else 32, help="divisible by 8")
    p.add_argument("--out", help="run directory (default: runs/09_real_roco; a temporary one in quick mode)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def find_split_folder(path: Path) -> Path:
    """``path`` if it holds captions.txt, else the first ``[data/]{train,validation,test}/radiology`` with images."""
    if (path / "captions.txt").is_file():
        return path
    for base in (path / "data", path):
        for split in ("train", "validation", "test"):
            folder = base / split / "radiology"
            if (folder / "captions.txt").is_file() and (folder / "images").is_dir():
                return folder
    raise FileNotFoundError(f"{path} is not a ROCO split folder (no captions.txt) and holds no "
                            f"data/{{train,validation,test}}/radiology/ with images/")


def make_subset(folder: Path, frame, n: int, seed: int, dest: Path) -> Path:
    """A ROCO-layout folder at ``dest`` with ``n`` random pairs of ``frame`` (images linked, not copied)."""
    pick = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    rows = frame.iloc[pick]
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True)
    with open(dest / "captions.txt", "w", encoding="utf-8") as f:
        f.writelines(f"{r.id}\t {' '.join(r.caption.split())}\n" for r in rows.itertuples())
    with open(dest / "cuis.txt", "w", encoding="utf-8") as f:
        f.writelines(f"{r.id}\t\t" + "\t".join(r.cuis) + "\n" for r in rows.itertuples())
    for r in rows.itertuples():
        source = (folder / "images" / f"{r.id}.jpg").resolve()
        target = dest / "images" / f"{r.id}.jpg"
        try:
            target.symlink_to(source)
        except OSError:  # no symlinks (some Windows setups): a copy, in the run folder only
            shutil.copyfile(source, target)
    return dest


def retrieval(model, state, data_dir: Path, cache_dir):
    """Retrieval metrics of ``model`` on the run's own test pairs, or None without the task module."""
    try:
        from tinyclip.tasks.retrieval import embed_pairs, retrieval_metrics, same_caption
    except ImportError as e:
        print(f"tinyclip.tasks.retrieval is not available ({e}): no retrieval metrics")
        return None
    frame, images = load_pairs("roco", data_dir, image_size=model.config.image_size, cache_dir=cache_dir)
    test = np.asarray(state["split"]["test"], dtype=np.int64)
    captions = [str(c) for c in frame["caption"].iloc[test]]
    image_emb, text_emb = embed_pairs(model, np.asarray(images[test]), captions)
    sim = image_emb.astype(np.float64) @ text_emb.astype(np.float64).T  # (N, N) cosine similarities
    return retrieval_metrics(sim, same_caption(captions))


def main(argv=None):
    args = parse_args(argv)
    if not args.data_dir:
        print(HOW_TO_GET_ROCO)
        print("RESULT: skipped (no ROCO folder given: pass --data-dir)")
        return 0
    if args.image_size % 8:
        sys.exit(f"--image-size {args.image_size} must be divisible by 8 (three conv blocks halve it)")

    print("=== 1. the data ===")
    folder = find_split_folder(Path(args.data_dir))
    frame = load_roco(folder, images=False)  # text only: fast; images are checked when the subset is read
    print(f"{folder}: {len(frame):,} captions")
    for r in frame.head(3).itertuples():
        print(f"   {r.id}: {r.caption[:90]}{'...' if len(r.caption) > 90 else ''}   CUIs {r.cuis[:3]}")

    scratch = tempfile.TemporaryDirectory(prefix="tinyclip-roco-") if QUICK or not args.out else None
    if args.out:
        out = Path(args.out)
    elif QUICK:
        out = Path(scratch.name) / "run"
    else:
        out = Path("runs") / "09_real_roco"
    cache_dir = Path(scratch.name) / "cache" if QUICK else None  # quick runs leave nothing behind
    data_dir = folder
    if args.max_pairs and args.max_pairs < len(frame):
        data_dir = make_subset(folder, frame, args.max_pairs, args.seed, out / "data")
        print(f"a random subset of {args.max_pairs} pairs (seed {args.seed}), images linked into {data_dir}")

    print("\n=== 2. training with tinyclip.train.run ===")
    train_args = train.build_parser().parse_args([
        "--data", "roco", "--data-dir", str(data_dir), "--out", str(out), "--epochs", str(args.epochs),
        "--image-size", str(args.image_size), "--conv-channels", "8,16,32", "--text-layers", "1",
        "--width", "32", "--heads", "2", "--ff-dim", "64", "--embed-dim", "32", "--max-len", "32",
        "--batch-size", "32", "--lr", "1e-3", "--min-freq", "2", "--dropout", "0.1", "--patience", "0", "--seed", str(args.seed), "--no-progress",
        *(["--cache-dir", str(cache_dir)] if cache_dir else []),
    ])
    summary = train.run(train_args)
    history = summary["history"]

    print("\n=== 3. retrieval on the run's test pairs ===")
    model, state = CLIP.from_checkpoint(out, "best")  # the epoch with the lowest validation loss
    metrics = retrieval(model, state, data_dir, cache_dir)
    if metrics:
        n = metrics["n"]
        print(f"{n} test pairs (chance: R@K = K/N)")
        print(f"   {'':<14}" + "".join(f"{f'R@{k}':>8}" for k in (1, 5, 10)) + f"{'median rank':>13}")
        for way, name in (("i2t", "image → text"), ("t2i", "text → image")):
            print(f"   {name:<14}" + "".join(f"{metrics[f'{way}_R@{k}']:8.2f}" for k in (1, 5, 10))
                  + f"{metrics[f'{way}_median_rank']:13.1f}")
        print(f"   {'chance':<14}" + "".join(f"{min(k / n, 1.0):8.2f}" for k in (1, 5, 10)) + f"{(n + 1) / 2:13.1f}")
    print("\nA short run of a tiny model on about a thousand real pairs is only a little better than chance:")
    print("real captions are long and varied, and often about details too small to see at 32 px.")
    print("The report's run trains the default model at 128 px on all of ROCO's training pairs:")
    print("    python -m tinyclip.train --data roco --data-dir roco-dataset/data/train/radiology --out runs/roco")
    if not QUICK:
        print(f"\nEvaluate this run on every task (figures and metrics.json in {out / 'eval'}):")
        print(f"    python -m tinyclip.evaluate --run {out} --task all")
    if scratch is not None:
        scratch.cleanup()

    first, best = history[0]["val_loss"], min(h["val_loss"] for h in history)
    chance = math.log(min(train_args.batch_size, len(state["split"]["val"])))  # a uniform guess
    text = (f"; test i2t R@10 {metrics['i2t_R@10']:.2f}, t2i R@10 {metrics['t2i_R@10']:.2f} "
            f"(chance {min(10 / metrics['n'], 1):.2f})") if metrics else ""
    print(f"RESULT: ROCO, {len(state['ids'])} pairs, {len(history)} epoch(s) at {args.image_size}px: best validation "
          f"loss {best:.3f} (epoch 1: {first:.3f}, chance {chance:.3f}){text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
