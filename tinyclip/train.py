"""``python -m tinyclip.train``: contrastive training of the CLIP model.

One epoch: shuffle the training pairs, and for each batch compute the symmetric
contrastive loss, backpropagate, clip gradients, take an optimizer step and clamp
the temperature. After each epoch: the validation loss, a row of ``metrics.csv``,
the ``last`` checkpoint, the ``best`` one when validation improved, and the
loss-curve PNG. Training stops early after ``--patience`` epochs without
improvement (small datasets overfit after a few epochs), or at once on a NaN loss.

Run with ``--help`` for the options. ``--resume RUN_DIR`` continues a run exactly
where its ``last`` checkpoint left it (same split, optimizer state, RNG state and
step counter), so 2 epochs in one go equal 1 epoch + 1 resumed epoch.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from . import backend, optim
from .cli import (OneLineParser, nonnegative_float, nonnegative_int, one_line_warnings, positive_float, positive_int,
                  probability)
from .checkpoint import load_checkpoint, restoring, save_checkpoint
from .data.pairs import SOURCES, check_ids, fold_split, load_pairs, run_split
from .data.split import iterate_batches
from .io import atomic_write, remove_stale_temporaries, run_lock
from .models import CLIP, CLIPConfig
from .tensor import no_grad
from .text import Tokenizer

# The files of a run directory (removed before a new run starts in it, so nothing of an old run mixes in).
RUN_FILES = ("last.npz", "best.npz", "last.json", "best.json", "metrics.csv")
RESUMABLE = ("data", "data_dir", "num_samples", "seed", "batch_size", "lr", "optimizer", "weight_decay",
             "warmup_steps", "grad_clip", "max_vocab", "min_freq", "patience", "split_seed",
             "folds", "fold")
# Flags that may differ from the saved run when resuming; every other flag given with --resume must match it.
MAY_CHANGE_ON_RESUME = ("epochs", "data_dir", "device", "no_progress", "cache_dir", "resume", "out")
# The model flags, saved in the checkpoint's config rather than its args.
MODEL_FLAGS = ("image_size", "conv_channels", "text_layers", "width", "heads", "ff_dim", "dropout", "embed_dim",
               "max_len")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m tinyclip.train",
        description="Train tinyclip's CLIP model (CNN image tower + transformer text tower) with the symmetric "
                    "contrastive loss. Writes checkpoints (last, best), metrics.csv and loss_curve.png to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", choices=SOURCES, default="synthetic",
                   help="synthetic: generated radiology-like pairs, nothing to download; roco: a ROCO folder")
    d.add_argument("--data-dir", help="ROCO split folder with captions.txt, cuis.txt and images/ (for --data roco)")
    d.add_argument("--num-samples", type=positive_int, default=2000, help="number of synthetic pairs")
    d.add_argument("--split-seed", type=nonnegative_int, default=0, help="seed of the 64/16/20 train/val/test split")
    d.add_argument("--folds", type=nonnegative_int, default=0,
                   help="k-fold cross-validation (used by tinyclip.compare): validate on fold --fold of the pairs "
                        "outside the test part, train on the other folds; 0: the 64/16/20 split")
    d.add_argument("--fold", type=nonnegative_int, default=0, help="which fold validates (0 .. --folds - 1)")
    d.add_argument("--max-vocab", type=positive_int, default=5000, help="tokenizer vocabulary size, padding and unknown included")
    d.add_argument("--min-freq", type=positive_int, default=1, help="words seen fewer times in training become <unk>")
    d.add_argument("--cache-dir", help="where decoded ROCO images are cached (default: $TINYCLIP_CACHE or ~/.cache/tinyclip)")
    t = p.add_argument_group("training")
    t.add_argument("--out", help="run directory (default: a new runs/<timestamp>-<random>); an existing run is "
                   "never replaced unless --overwrite is given")
    t.add_argument("--overwrite", action="store_true", help="allow --out to name an existing run, replacing it")
    t.add_argument("--epochs", type=positive_int, default=7, help="number of epochs (the total, also when resuming)")
    t.add_argument("--batch-size", type=positive_int, default=64)
    t.add_argument("--lr", type=positive_float, default=5e-5, help="peak learning rate")
    t.add_argument("--optimizer", choices=("adam", "adamw"), default="adam")
    t.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    t.add_argument("--warmup-steps", type=nonnegative_int, default=0, help="linear warmup steps, then cosine decay to 0 "
                   "(with 0: a constant learning rate)")
    t.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="clip the global gradient norm (0: off)")
    t.add_argument("--patience", type=nonnegative_int, default=3,
                   help="stop after this many epochs without a better validation loss (0: never stop early)")
    t.add_argument("--seed", type=nonnegative_int, default=0, help="seed of initialisation, dropout, shuffling and synthetic data")
    t.add_argument("--device", choices=backend.DEVICES, default=os.environ.get("TINYCLIP_DEVICE", "auto").lower(),
                   help="cpu (NumPy) or cuda (CuPy); the default comes from $TINYCLIP_DEVICE")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    m = p.add_argument_group("model")
    defaults = CLIPConfig()
    m.add_argument("--image-size", type=positive_int, default=defaults.image_size)
    m.add_argument("--conv-channels", type=_int_list, default=defaults.conv_channels,
                   help="comma-separated channels of the conv blocks, e.g. 16,32,64,128,256")
    m.add_argument("--text-layers", type=positive_int, default=defaults.text_layers)
    m.add_argument("--width", type=positive_int, default=defaults.width, help="text tower width")
    m.add_argument("--heads", type=positive_int, default=defaults.heads)
    m.add_argument("--ff-dim", type=positive_int, default=defaults.ff_dim)
    m.add_argument("--dropout", type=probability, default=defaults.dropout)
    m.add_argument("--embed-dim", type=positive_int, default=defaults.embed_dim)
    m.add_argument("--max-len", type=positive_int, default=defaults.max_len)
    return p


def _int_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive channel counts, got {text!r}")
    return values


# ---------------------------------------------------------------------------
# one step, one evaluation
# ---------------------------------------------------------------------------

def batch_tensors(model, images, ids, mask, index):
    """The model inputs of the pairs at ``index``, on the model's device."""
    xp = model.logit_scale.xp
    return model.image_input(images[index]), xp.asarray(ids[index]), xp.asarray(mask[index])


def validation_loss(model, images, ids, mask, index, batch_size: int) -> float:
    """Mean contrastive loss over ``index`` in fixed batches (eval mode, no graph)."""
    model.eval()
    total, count = 0.0, 0
    with no_grad():
        for start in range(0, len(index), batch_size):
            part = index[start:start + batch_size]
            total += float(model(*batch_tensors(model, images, ids, mask, part)).item()) * len(part)
            count += len(part)
    model.train()
    return total / max(count, 1)


def chance_loss(n: int, batch_size: int) -> float:
    """The contrastive loss of a model that knows nothing, over ``n`` pairs in batches: mean of ln(batch)."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    return sum(size * math.log(size) for size in sizes) / max(n, 1)


def learning_rate(args, step: int, total_steps: int) -> float:
    if args.warmup_steps > 0:
        return optim.warmup_cosine(step, args.lr, args.warmup_steps, total_steps)
    return optim.constant(step, args.lr)


class Diverged(RuntimeError):
    """The loss became non-finite, the weights non-finite, or the loss stuck at or far above chance."""


def on_disk(out: Path) -> str:
    """What an interrupted run leaves in ``out``: the last finished epoch's checkpoint, or nothing yet."""
    try:
        epoch = load_checkpoint(out, "last")["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no epoch finished, so no checkpoint was written in {out}"
    return f"the checkpoint of epoch {epoch} (the last finished) is kept in {out}; continue with --resume {out}"


def _check_divergence(model, epoch: int, losses, batch_chance, out: Path, history) -> None:
    """Stop on non-finite weights, or from the second epoch on a training loss far above or stuck at chance."""
    xp = model.logit_scale.xp
    if not all(bool(xp.isfinite(p.data).all()) for p in model.parameters()):
        raise Diverged(f"the weights became non-finite in epoch {epoch}: training stopped; {on_disk(out)}")
    if epoch < 2:
        return
    loss, chance = float(np.mean(losses)), float(np.mean(batch_chance))
    # Far above chance *and* above the first epoch: growing, not merely an untrained model's high start.
    if loss > 2 * chance and history and loss > history[0]["train_loss"]:
        raise Diverged(f"the training loss of epoch {epoch} ({loss:.4f}) is above twice the chance level "
                       f"({chance:.4f}): training diverged (try a lower --lr); {on_disk(out)}")
    # Collapsed embeddings give every batch exactly ln(batch size): the model has stopped learning anything.
    if np.allclose(losses, batch_chance, rtol=1e-4, atol=0):
        raise Diverged(f"the training loss of epoch {epoch} sits exactly at the chance level ({chance:.4f}) in "
                       f"every batch: the embeddings collapsed (try a lower --lr); {on_disk(out)}")


def _saved_split(saved, n: int, where: Path) -> dict:
    """The saved train/val/test indices as arrays, checked against the ``n`` pairs."""
    try:
        split = {k: np.asarray(saved[k], dtype=np.int64) for k in ("train", "val", "test")}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {where} is damaged: its split is not three lists of indices ({e})") from None
    for k, v in split.items():
        if v.ndim != 1 or (v.size and (v.min() < 0 or v.max() >= n)):
            raise ValueError(f"checkpoint {where} is damaged: its {k} split has indices outside the {n} pairs")
    return split


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

def _plot_losses(history, path: Path) -> None:
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("contrastive loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _write_metrics(history, path: Path) -> None:
    fields = ["epoch", "train_loss", "val_loss", "seconds", "lr"]

    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: h[k] for k in fields} for h in history)

    atomic_write(path, write, mode="w")


def run(args, log=print) -> dict:
    """Train as ``args`` say; returns the run summary (history, best epoch, paths)."""
    backend.set_default_device(args.device)
    resumed = None
    if args.resume:
        resumed = _load_resumable(args)
        out = Path(args.resume)
    else:
        out = _new_run_dir(args.out, args.overwrite)
    with run_lock(out):
        for tmp in remove_stale_temporaries(out):
            log(f"removed {tmp.name}, left by an interrupted write")
        if not resumed:  # nothing of a replaced run, or of a first epoch that crashed, may mix with the new one
            for name in RUN_FILES + ("loss_curve.png",):
                (out / name).unlink(missing_ok=True)
        try:
            return _train(args, out, resumed, log)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; {on_disk(out)}") from None


class Interrupted(RuntimeError):
    """Ctrl-C: the message says what is on disk."""


def _new_run_dir(out, overwrite: bool) -> Path:
    """The directory of a new run: ``out``, refused when it holds a run (unless ``overwrite``), or a fresh default."""
    if out is None:  # a timestamp and a random suffix, created exclusively: two runs never share it
        while True:
            out = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            try:
                out.mkdir(parents=True)
                return out
            except FileExistsError:
                continue
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    # A run exists once its first epoch committed ``last``; files without it are a first epoch that crashed.
    if not overwrite and (out / "last.npz").is_file():
        raise ValueError(f"--out {out} already holds a run: continue it with --resume {out}, choose a new --out, "
                         f"or replace it with --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out} cannot be created: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable")
    return out


def _load_resumable(args) -> dict:
    """The ``last`` checkpoint of ``--resume``, its saved settings applied to ``args`` (conflicting flags refused)."""
    resumed = load_checkpoint(args.resume, "last")
    missing = [k for k in ("args", "config", "model", "optimizer", "tokenizer", "split", "ids", "history", "step",
                           "rng", "shuffle_rng") if k not in resumed]
    if missing:
        raise ValueError(f"checkpoint {_resumed_from(args)} is damaged: it has no {', '.join(missing)}")
    with restoring(_resumed_from(args)):
        saved_args, saved_config = dict(resumed["args"]), dict(resumed["config"])
    given = getattr(args, "given", set())
    saved = {**saved_args, **{k: saved_config.get(k) for k in MODEL_FLAGS}}
    conflicts = [k for k in sorted(given) if k not in MAY_CHANGE_ON_RESUME and k in saved
                 and _comparable(getattr(args, k)) != _comparable(saved[k])]
    if conflicts:
        raise ValueError("--resume continues the saved run; these flags differ from its settings: " + ", ".join(
            f"--{k.replace('_', '-')} {getattr(args, k)} (saved: {saved[k]})" for k in conflicts))
    for key in RESUMABLE:  # the data, split and optimisation settings of the original run
        if key == "data_dir" and "data_dir" in given:
            continue  # the data moved: the new folder is checked against the saved pair ids below
        setattr(args, key, saved_args.get(key, getattr(args, key)))
    return resumed


def _resumed_from(args) -> Path:
    return Path(args.resume) / "last"


def _comparable(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _train(args, out: Path, resumed, log) -> dict:
    backend.manual_seed(args.seed)
    if resumed:
        with restoring(_resumed_from(args)):
            args.image_size = int(resumed["config"]["image_size"])
    frame, images = load_pairs(args.data, args.data_dir, image_size=args.image_size, num_samples=args.num_samples,
                               seed=args.seed, cache_dir=args.cache_dir, progress=not args.no_progress)
    if resumed:  # the very pairs and split of the original run, or a clear error
        check_ids(frame, resumed["ids"], args.data_dir or "the synthetic generator", hint="resume with the same data")
        split = _saved_split(resumed["split"], len(frame), _resumed_from(args))
    else:
        if args.fold and not args.folds:
            raise ValueError("--fold needs --folds (the number of folds)")
        split = (fold_split(len(frame), args.split_seed, args.folds, args.fold) if args.folds
                 else run_split(len(frame), args.split_seed))
    train_idx, val_idx = split["train"], split["val"]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{len(frame)} pairs are too few for a train/validation split")

    if resumed:
        with restoring(_resumed_from(args)):
            config = CLIPConfig.from_dict(resumed["config"])
            tokenizer = Tokenizer.from_dict(resumed["tokenizer"])
    else:
        tokenizer = Tokenizer.fit(frame["caption"].iloc[train_idx], max_vocab=args.max_vocab, min_freq=args.min_freq)
        config = CLIPConfig(image_size=args.image_size, conv_channels=args.conv_channels,
                            vocab_size=tokenizer.vocab_size, max_len=args.max_len, width=args.width,
                            text_layers=args.text_layers, heads=args.heads, ff_dim=args.ff_dim,
                            dropout=args.dropout, embed_dim=args.embed_dim)
    ids, mask = tokenizer.encode(list(frame["caption"]), config.max_len)

    model = CLIP(config, tokenizer)
    opt_class = optim.AdamW if args.optimizer == "adamw" else optim.Adam
    optimizer = opt_class(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    shuffle_rng = np.random.default_rng(args.seed)
    history, step, best = [], 0, math.inf
    if resumed:
        with restoring(_resumed_from(args)):
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
            shuffle_rng.bit_generator.state = resumed["shuffle_rng"]
            backend.set_rng_state(resumed["rng"])
            history, step, best = list(resumed["history"]), int(resumed["step"]), float(resumed["best_val_loss"])
    steps_per_epoch = math.ceil(len(train_idx) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    log(f"tinyclip.train: {len(frame)} pairs ({args.data}), train {len(train_idx)} / val {len(val_idx)} / "
        f"test {len(split['test'])}; vocabulary {tokenizer.vocab_size}; {model.num_parameters():,} parameters; "
        f"device {backend.default_device()}; out {out}")
    log(f"chance level of the validation loss: {chance_loss(len(val_idx), args.batch_size):.4f} "
        f"(ln of the batch size, averaged over the validation batches)")

    def checkpoint_state(epoch):
        return {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "args": {k: getattr(args, k) for k in RESUMABLE},
                "split": {k: v.tolist() for k, v in split.items()}, "ids": list(frame["id"]),
                "epoch": epoch, "step": step, "best_val_loss": best, "history": history,
                "rng": backend.rng_state(), "shuffle_rng": shuffle_rng.bit_generator.state}

    start_epoch = len(history)
    since_best = _epochs_since_best(history)
    stopped = None
    for epoch in range(start_epoch + 1, args.epochs + 1):
        if args.patience and since_best >= args.patience:
            stopped = f"early stop: no better validation loss for {since_best} epochs"
            break
        t0 = time.perf_counter()
        model.train()
        losses, batch_chance = [], []
        batches = iterate_batches(len(train_idx), args.batch_size, rng=shuffle_rng, shuffle=True)
        bar = _progress(batches, steps_per_epoch, f"epoch {epoch}/{args.epochs}", disable=args.no_progress)
        for batch in bar:
            optimizer.lr = learning_rate(args, step, total_steps)
            loss = model(*batch_tensors(model, images, ids, mask, train_idx[batch]))
            value = float(loss.item())
            if not math.isfinite(value):
                raise Diverged(f"loss became {value} at epoch {epoch}, step {step}: training stopped; "
                               f"{on_disk(out)}")
            optimizer.zero_grad()
            loss.backward()
            if args.grad_clip > 0:
                optim.clip_grad_norm(model.parameters(), args.grad_clip)
            optimizer.step()
            model.clamp_logit_scale()
            step += 1
            losses.append(value)
            batch_chance.append(math.log(len(batch)))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        _check_divergence(model, epoch, losses, batch_chance, out, history)
        val = validation_loss(model, images, ids, mask, val_idx, args.batch_size)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val,
               "seconds": round(time.perf_counter() - t0, 2), "lr": optimizer.lr}
        history.append(row)
        improved = val < best
        best = min(best, val)
        since_best = 0 if improved else since_best + 1
        # ``last`` is committed last: a crash before it re-runs this epoch on --resume, which rewrites
        # best, metrics.csv and the figure identically, so the files never disagree.
        state = checkpoint_state(epoch)
        if improved:
            save_checkpoint(out, "best", state)
        _write_metrics(history, out / "metrics.csv")
        _plot_losses(history, out / "loss_curve.png")
        save_checkpoint(out, "last", state)
        log(f"epoch {epoch}: train {row['train_loss']:.4f}  val {val:.4f}{'  (best)' if improved else ''}  "
            f"{row['seconds']:.1f}s")
    if stopped:
        log(stopped)
    if len(history) == start_epoch:
        log(f"nothing trained: the run has done {start_epoch} epochs and --epochs is {args.epochs}"
            + ("" if stopped else "; give a larger --epochs to train more"))
    best_epoch = min(history, key=lambda h: h["val_loss"])["epoch"] if history else None
    log(f"done: best validation loss {best:.4f} at epoch {best_epoch}; checkpoints in {out}")
    return {"out": out, "history": history, "best_val_loss": best, "best_epoch": best_epoch}


def _epochs_since_best(history) -> int:
    """How many epochs have passed since the best validation loss so far."""
    if not history:
        return 0
    losses = [h["val_loss"] for h in history]
    return len(losses) - 1 - int(np.argmin(losses))


def _progress(iterable, total, desc, disable):
    if disable:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, file=sys.stderr)


def given_flags(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the flags written on the command line (not left at their defaults)."""
    unset = object()
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=probe)
    return {k for k, v in vars(probe).items() if v is not unset}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = given_flags(parser, argv)
    try:
        with one_line_warnings():
            run(args)
    except (Diverged, Interrupted) as e:
        print(f"tinyclip.train: {e}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 1
    except (FileNotFoundError, NotADirectoryError) as e:  # a missing input
        print(f"tinyclip.train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: the previous checkpoint stays (every write is atomic)
        where = f" ({e.filename})" if e.filename else ""
        print(f"tinyclip.train: error: {e.strerror or e}{where}; files already written are intact", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, KeyError) as e:
        print(f"tinyclip.train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
