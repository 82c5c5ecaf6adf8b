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

``mpiexec -n W python -m tinyclip.train --distributed`` trains data-parallel on W ranks
(``tinyclip.distributed``): each takes its shard of every global batch, the loss spans the
global batch, the gradients are averaged; only rank 0 writes the run directory and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from . import backend, distributed, nn, optim
from .cli import (OneLineParser, flag_value, nonnegative_float, nonnegative_int, one_line_warnings, positive_float,
                  positive_int, positive_int_list, probability)
from .checkpoint import load_checkpoint, restoring, save_checkpoint
from .data.pairs import SOURCES, check_ids, fold_split, load_pairs, run_split
from .data.augment import augment_caption, augment_images
from .data.chest_xray import IMAGE_SUFFIXES, KERMANY_FOLDERS
from .data.split import iterate_batches
from .io import atomic_write, remove_stale_temporaries, run_lock
from .losses import accumulated_clip_step, clip_loss, concept_sets, concept_targets, simclr_loss, soft_clip_loss
from .models import CLIP, CLIPConfig
from .models.config import IMAGE_TOWERS
from .models.clip import l2_normalize
from .recipes import DEFAULT_RECIPE, RECIPE_FLAGS, RECIPES, apply_recipe
from .tasks.retrieval import retrieval_metrics, same_caption
from .tensor import Tensor
from .text import Tokenizer

# The files of a run directory (removed before a new run starts in it, so nothing of an old run mixes in).
RUN_FILES = ("last.npz", "best.npz", "last.json", "best.json", "metrics.csv")
RESUMABLE = ("data", "data_dir", "num_samples", "seed", "batch_size", "grad_clip", "max_vocab", "min_freq",
             "patience", "split_seed", "folds", "fold", "recipe", "pretrain_epochs", "pretrain_images",
             "pretrain_text_epochs", "pretrain_captions") + RECIPE_FLAGS
# Flags that may differ from the saved run when resuming; every other flag given with --resume must match it.
MAY_CHANGE_ON_RESUME = ("epochs", "data_dir", "device", "no_progress", "cache_dir", "resume", "out", "distributed")
# The model flags, saved in the checkpoint's config rather than its args.
MODEL_FLAGS = ("image_tower", "image_size", "conv_channels", "text_layers", "width", "heads", "ff_dim", "dropout",
               "embed_dim", "max_len")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m tinyclip.train",
        description="Train tinyclip's CLIP model (CNN image tower + transformer text tower) with the symmetric "
                    "contrastive loss. Writes checkpoints (last, best), metrics.csv and loss_curve.png to --out.",
        formatter_class=_HelpFormatter)
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
    t.add_argument("--batch-size", type=positive_int, default=64, help="pairs per micro-batch")
    t.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="clip the global gradient norm (0: off)")
    t.add_argument("--patience", type=nonnegative_int, default=3,
                   help="stop after this many epochs without a better --select score (0: never stop early)")
    t.add_argument("--seed", type=nonnegative_int, default=0, help="seed of initialisation, dropout, shuffling and synthetic data")
    t.add_argument("--device", choices=backend.DEVICES, default=os.environ.get("TINYCLIP_DEVICE", "auto").lower(),
                   help="cpu (NumPy), cuda (CuPy) or auto: cuda when CuPy sees a GPU (default: $TINYCLIP_DEVICE, "
                        "else auto)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel on the ranks of mpiexec (the mpi extra): each rank takes its shard of every "
                        "global --batch-size batch; only rank 0 writes")
    r = p.add_argument_group("recipe", "Every flag of this group, and --image-tower, takes its --recipe value "
                             "unless given explicitly.")
    r.add_argument("--recipe", choices=tuple(RECIPES), help="report: the report's training; small-data: the "
                   "combination measured best on a few thousand real pairs (default: " + ", ".join(
                       f"{name} for --data {data}" for data, name in DEFAULT_RECIPE.items()) + ")")
    r.add_argument("--optimizer", choices=("adam", "adamw"), help="adam: weight decay as an L2 term in the "
                   "gradient; adamw: decoupled weight decay")
    r.add_argument("--lr", type=positive_float, help="peak learning rate")
    r.add_argument("--weight-decay", type=nonnegative_float, help="on weight matrices and kernels only (never on "
                   "biases, norm gains or the logit scale)")
    r.add_argument("--warmup-steps", type=nonnegative_int, help="linear warmup steps, then cosine decay to 0 "
                   "(0: a constant learning rate)")
    r.add_argument("--loss", choices=("clip", "concept"), help="clip: each pair its own target; concept: soft "
                   "targets that also credit pairs sharing UMLS concepts (MedCLIP)")
    r.add_argument("--concept-alpha", type=probability, help="weight of the own pair in the concept targets "
                   "(1: the clip loss)")
    r.add_argument("--concept-source", choices=("cuis", "cuis+modality"),
                   help="the concept set of a pair: its CUIs, or its CUIs plus the modality named by its caption")
    r.add_argument("--augment", type=probability, help="image augmentation strength (crop, rotation, shift, "
                   "brightness/contrast, noise; no flips), 0: off")
    r.add_argument("--text-augment", type=probability, help="caption augmentation strength (one sentence, word "
                   "dropout), 0: off")
    r.add_argument("--accum-steps", type=positive_int, help="micro-batches per step: an exact contrastive batch "
                   "of accum-steps x batch-size pairs at the memory of one micro-batch (exact without dropout "
                   "and batch norm, which see one micro-batch at a time)")
    r.add_argument("--ssl-weight", type=nonnegative_float, help="weight of a SimCLR loss on two views of each "
                   "image (SLIP), 0: off")
    r.add_argument("--select", choices=("val_loss", "val_r10"), help="what chooses the best checkpoint and early "
                   "stopping: the validation loss, or the validation R@10 (mean of both directions)")
    r.add_argument("--temperature", type=nonnegative_float, help="a fixed softmax temperature (e.g. 0.07); 0: learned")
    r.add_argument("--logit-scale-lr", type=nonnegative_float, help="the logit scale's learning rate, as a factor "
                   "of --lr")
    r.add_argument("--ema", type=probability, help="average the weights: the per-step decay of an exponential "
                   "moving average (e.g. 0.99: about the last 100 steps); validation, the best choice and the saved "
                   "model use the average, resuming continues the training weights; 0: off")
    s = p.add_argument_group("image pretraining", "an image-only SimCLR phase before the contrastive epochs, on "
                             "the run's training images and any --pretrain-images folders (labels ignored)")
    s.add_argument("--pretrain-epochs", type=nonnegative_int, default=0, help="epochs of the phase (0: none); a "
                   "crash during it repeats it, since the first checkpoint is written after the first CLIP epoch")
    s.add_argument("--pretrain-images", nargs="+", default=[], metavar="DIR",
                   help="folders of unlabelled images (searched recursively), e.g. "
                        "chest_xray/train; never a Kermany test folder or the run's own data folder")
    t = p.add_argument_group("caption pretraining", "a caption-only contrastive phase of the text tower before the "
                             "contrastive epochs: two augmented views of each caption of the run's training pairs and "
                             "of any --pretrain-captions folders (with --loss concept, soft targets from their CUIs); "
                             "those captions also enter the vocabulary")
    t.add_argument("--pretrain-text-epochs", type=nonnegative_int, default=0, help="epochs of the phase (0: none)")
    t.add_argument("--pretrain-captions", nargs="+", default=[], metavar="DIR",
                   help="ROCO split folders read for their captions.txt and cuis.txt only (images are not needed), "
                        "e.g. roco/data/validation/radiology; never one holding the run's validation or test pairs")
    m = p.add_argument_group("model")
    defaults = CLIPConfig()
    m.add_argument("--image-tower", choices=IMAGE_TOWERS,
                   help="report: conv + ReLU + max-pool blocks; batchnorm: the same with a batch "
                        "norm after each conv; resnet: residual blocks with batch norm; all at the same widths")
    m.add_argument("--image-size", type=positive_int, default=defaults.image_size,
                   help="image side in pixels, divisible by 2 ** (number of conv blocks)")
    m.add_argument("--conv-channels", type=positive_int_list, default=defaults.conv_channels,
                   help="comma-separated channels of the conv blocks, one halving of the image each")
    m.add_argument("--text-layers", type=positive_int, default=defaults.text_layers, help="text transformer blocks")
    m.add_argument("--width", type=positive_int, default=defaults.width, help="text tower width")
    m.add_argument("--heads", type=positive_int, default=defaults.heads, help="attention heads (must divide --width)")
    m.add_argument("--ff-dim", type=positive_int, default=defaults.ff_dim, help="hidden width of the text "
                   "feed-forward layers")
    m.add_argument("--dropout", type=probability, default=defaults.dropout, help="dropout in the text tower")
    m.add_argument("--embed-dim", type=positive_int, default=defaults.embed_dim, help="width of the shared "
                   "embedding space")
    m.add_argument("--max-len", type=positive_int, default=defaults.max_len, help="caption tokens kept, longer "
                   "captions are cut")
    return p


class _HelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default, once and in the form the flag accepts: a recipe flag's
    values by recipe, ``off`` for a switch; nothing where the help says it already or there is none."""

    def _get_help_string(self, action):
        if "default:" in action.help:
            return action.help
        if action.dest in RECIPE_FLAGS:
            return f"{action.help} (default from --recipe: {_describe(action.dest)})"
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return f"{action.help} (default: {flag_value(action.default)})"


def _describe(flag: str) -> str:
    """The values the recipes give ``flag``: ``report=5e-05, small-data=0.0005``, or ``0.5 in both``."""
    values = {name: recipe[flag] for name, recipe in RECIPES.items()}
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values()))} in both"
    return ", ".join(f"{name}={value}" for name, value in values.items())


# ---------------------------------------------------------------------------
# one step, one evaluation
# ---------------------------------------------------------------------------

def validate(model, images, ids, mask, captions, index, batch_size: int, comm=distributed.SingleProcess()) -> dict:
    """Validation loss (mean CLIP loss over fixed batches) and R@10 both ways over all of ``index`` (eval mode).

    A pair whose caption text repeats counts every identical caption as correct (as the retrieval task).
    Each rank embeds its shard of ``index``; the embeddings are gathered, so every rank returns the same.
    """
    part = distributed.shard(index, comm.rank, comm.size) if comm.size > 1 else index
    image_emb = comm.allgather(model.embed_images(images[part], batch_size))
    text_emb = comm.allgather(model.embed_texts((ids[part], mask[part]), batch_size))
    scale = Tensor(backend.to_numpy(model.logit_scale.data).astype(image_emb.dtype))

    def batch_total(s):  # the batch's mean loss times its pairs (float64)
        return float(clip_loss(Tensor(image_emb[s]), Tensor(text_emb[s]), scale).item()) * len(image_emb[s])

    totals = nn.evaluate_in_batches(model, batch_total, len(index), batch_size)
    recall = retrieval_metrics(image_emb @ text_emb.T, same_caption([captions[i] for i in index]), ks=(10,))
    return {"val_loss": float(sum(totals)) / max(len(index), 1), "val_r10_i2t": recall["i2t_R@10"],
            "val_r10_t2i": recall["t2i_R@10"]}


def selection_score(row: dict, select: str) -> float:
    """Lower is better: the validation loss, or minus the mean validation R@10 of both directions."""
    if select == "val_r10":
        return -(row["val_r10_i2t"] + row["val_r10_t2i"]) / 2
    return row["val_loss"]


class Objective:
    """What one training step minimises, as the recipe flags say.

    The CLIP loss (hard targets, or concept-aware soft targets), over one batch or an exact
    accumulation of micro-batches, plus an optional SimCLR term on two views of each image;
    images and captions augmented on the way in. ``augment_rng`` is saved for exact resume.
    """

    def __init__(self, args, model, tokenizer, frame, images, ids, mask):
        self.args, self.model, self.tokenizer = args, model, tokenizer
        self.ssl_head = projection_head(model.config.embed_dim) if args.ssl_weight > 0 else None
        self.images, self.ids, self.mask = images, ids, mask
        self.captions = [str(c) for c in frame["caption"]]
        self.concepts = (concept_sets(frame, with_modality=args.concept_source == "cuis+modality")
                         if args.loss == "concept" else None)
        self.augment_rng = np.random.default_rng([args.seed, 1])

    def inputs(self, index):
        """(images, ids, mask) of the pairs at ``index``, augmented as the flags say."""
        model, args, xp = self.model, self.args, self.model.logit_scale.xp
        raw = self.images[index]
        x = model.image_input(augment_images(raw, self.augment_rng, args.augment) if args.augment > 0 else raw)
        if args.text_augment > 0:
            ids, mask = self.tokenizer.encode(
                [augment_caption(self.captions[i], self.augment_rng, args.text_augment) for i in index],
                model.config.max_len)
        else:
            ids, mask = self.ids[index], self.mask[index]
        return x, xp.asarray(ids), xp.asarray(mask)

    def loss_fn(self, index):
        """The contrastive loss of embeddings of the pairs at ``index`` (hard or concept targets)."""
        concepts = None if self.concepts is None else [self.concepts[i] for i in index]
        return contrastive_loss_fn(concepts, self.args.concept_alpha, self.model.logit_scale.xp,
                                   self.model.logit_scale.dtype)

    def backward(self, index) -> tuple[float, float]:
        """Backpropagate the objective of the pairs at ``index``; returns (objective, its contrastive part)."""
        args, model = self.args, self.model
        parts = np.array_split(index, min(args.accum_steps, len(index)))
        micro = [self.inputs(part) for part in parts]
        loss_fn = self.loss_fn(index)
        if len(micro) > 1:
            contrastive = accumulated_clip_step(model, micro, loss_fn)
        else:
            loss = loss_fn(*model(*micro[0]))
            contrastive = float(loss.item())
            if math.isfinite(contrastive):
                loss.backward()
        total = contrastive
        if args.ssl_weight > 0 and math.isfinite(contrastive):
            for part, (x, _, _) in zip(parts, micro):  # the CLIP view and one more view of each image
                total += self.simclr_term(self.images[part], args.ssl_weight / len(micro), first_view=x)
        return total, contrastive

    def backward_across_ranks(self, index, comm, params) -> float:
        """Backpropagate this rank's share of the CLIP loss of the global batch ``index``, average the
        gradients of ``params`` over the ranks; returns the global batch's loss (the same on every rank).

        Backward runs even on a non-finite loss: all_gather's backward is a collective every rank joins.
        """
        loss = distributed.clip_loss_across_ranks(
            *self.model(*self.inputs(distributed.shard(index, comm.rank, comm.size))), comm)
        loss.backward()
        (value,) = distributed.average_gradients(params, comm, loss.item())
        return value

    def simclr_term(self, raw, weight: float, first_view=None) -> float:
        """Backpropagate ``weight`` · SimCLR of two augmented views of uint8 ``raw``; returns its value."""
        model, head = self.model, self.ssl_head
        views = [first_view if first_view is not None else
                 model.image_input(augment_images(raw, self.augment_rng, 1.0)),
                 model.image_input(augment_images(raw, self.augment_rng, 1.0))]
        z1, z2 = (l2_normalize(head(model.image_encoder(v))) for v in views)
        loss = simclr_loss(z1, z2, SSL_TEMPERATURE) * weight
        loss.backward()
        return float(loss.item())


SSL_TEMPERATURE = 0.1  # SimCLR's τ for the self-supervised terms and phases (SLIP uses 0.1)


def projection_head(d: int):
    """The projection head of a self-supervised term (SimCLR's): Linear → ReLU → Linear on a tower's output."""
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))


def contrastive_loss_fn(concepts, alpha: float, xp, dtype):
    """The CLIP loss of a batch: hard targets when ``concepts`` (the batch's concept sets) is None, else the
    concept-aware soft targets of weight ``alpha`` on the own pair."""
    if concepts is None:
        return clip_loss
    targets = concept_targets(concepts, alpha, xp=xp, dtype=dtype)
    return lambda a, b, scale: soft_clip_loss(a, b, scale, targets)


def chance_loss(n: int, batch_size: int) -> float:
    """The contrastive loss of a model that knows nothing, over ``n`` pairs in batches: mean of ln(batch)."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    return sum(size * math.log(size) for size in sizes) / max(n, 1)


def make_optimizer(args, params):
    """The ``--optimizer`` of ``args`` over ``params`` (a list or parameter groups), at ``--lr`` and ``--weight-decay``."""
    opt_class = optim.AdamW if args.optimizer == "adamw" else optim.Adam
    return opt_class(params, lr=args.lr, weight_decay=args.weight_decay)


def learning_rate(args, step: int, total_steps: int) -> float:
    if args.warmup_steps > 0:  # a warmup longer than the run warms up over the whole run
        return optim.warmup_cosine(step, args.lr, min(args.warmup_steps, total_steps), total_steps)
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


def _pretraining_pool(args, train_images, log):
    """uint8 images (N, S, S, 3) for the image-only phase: the run's training images and every --pretrain-images."""
    from .data.images import load_images
    parts, data_dir = [train_images], Path(args.data_dir).resolve() if args.data_dir else None
    for folder in args.pretrain_images:
        root = Path(folder).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"--pretrain-images {folder} is not a folder")
        kermany = root.name.upper() in KERMANY_FOLDERS or any((root / c).is_dir() for c in KERMANY_FOLDERS)
        if kermany and "test" in (part.lower() for part in root.parts):
            raise ValueError(f"--pretrain-images {folder} is a Kermany test folder: test images are never trained on")
        if data_dir and (root == data_dir or root in data_dir.parents or data_dir in root.parents):
            raise ValueError(f"--pretrain-images {folder} holds the run's own data (its validation and test pairs "
                             f"included); the run's training images are always part of the phase")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"--pretrain-images {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        found, ok = load_images(files, args.image_size, args.cache_dir, progress=not args.no_progress)
        log(f"pretraining images: {int(ok.sum())} from {folder}")
        parts.append(np.asarray(found)[ok])
    return np.concatenate(parts)


def _pretraining_captions(args, frame, split, log):
    """Captions and concept sets (None unless --loss concept) for the caption-only phase: the run's training
    pairs' and every --pretrain-captions folder's; a folder sharing a pair with the run's validation or test
    part is refused."""
    import pandas as pd
    from .data.roco import load_roco
    parts = [frame.iloc[split["train"]]]
    held_out = set(frame["id"].iloc[np.concatenate([split["val"], split["test"]])])
    for folder in args.pretrain_captions:
        extra = load_roco(folder, images=False)
        shared = held_out.intersection(extra["id"])
        if shared:
            raise ValueError(f"--pretrain-captions {folder} holds {len(shared)} of the run's validation and test "
                             f"pairs (e.g. {min(shared)}): they are never trained on")
        if extra.empty:
            raise ValueError(f"--pretrain-captions {folder} holds no captions")
        log(f"pretraining captions: {len(extra)} from {folder}")
        parts.append(extra[["id", "caption", "cuis"]])
    texts = pd.concat(parts, ignore_index=True)
    concepts = (concept_sets(texts, with_modality=args.concept_source == "cuis+modality")
                if args.loss == "concept" else None)
    return [str(c) for c in texts["caption"]], concepts


def pretrain_images(args, model, objective, pool, log) -> list[dict]:
    """SimCLR on two augmented views of every image of ``pool``: trains the image tower and the objective's head."""
    if objective.ssl_head is None:  # no --ssl-weight term later: the phase gets a head of its own
        objective.ssl_head = projection_head(model.config.embed_dim)
    model.train()
    return _pretrain_phase(args, "images", [*model.image_encoder.parameters(), *objective.ssl_head.parameters()],
                           len(pool), args.pretrain_epochs, lambda batch: objective.simclr_term(pool[batch], 1.0),
                           np.random.default_rng([args.seed, 2]), log)


def pretrain_texts(args, model, captions, concepts, log) -> list[dict]:
    """Caption-only contrastive learning: two augmented views of each caption (a random sentence, word dropout)
    through the text tower and a head of its own, matched by the CLIP loss at τ = 0.1 (with ``concepts``, the
    concept-aware soft targets of the run's --concept-alpha). Trains the text tower; the head is dropped after."""
    xp, dtype, d = model.logit_scale.xp, model.logit_scale.dtype, model.config.embed_dim
    head = projection_head(d)
    scale = Tensor(xp.asarray([math.log(1.0 / SSL_TEMPERATURE)], dtype=dtype))  # fixed: not a parameter here
    rng = np.random.default_rng([args.seed, 3])

    def batch_loss(index):
        views = [model.text_input([augment_caption(captions[i], rng, 1.0) for i in index]) for _ in range(2)]
        z1, z2 = (l2_normalize(head(model.text_encoder(xp.asarray(ids), xp.asarray(mask)))) for ids, mask in views)
        batch_concepts = None if concepts is None else [concepts[i] for i in index]
        loss = contrastive_loss_fn(batch_concepts, args.concept_alpha, xp, dtype)(z1, z2, scale)
        loss.backward()
        return float(loss.item())

    model.train()
    return _pretrain_phase(args, "captions", [*model.text_encoder.parameters(), *head.parameters()], len(captions),
                           args.pretrain_text_epochs, batch_loss, rng, log)


def _pretrain_phase(args, name: str, params, n: int, epochs: int, batch_loss, rng, log) -> list[dict]:
    """``epochs`` epochs over ``n`` items in shuffled batches of --batch-size; ``batch_loss(index)`` backpropagates
    one batch and returns its loss. Its own optimizer (the run's kind, rate and weight decay on matrices, warm-up
    + cosine over the phase); returns one row per epoch."""
    opt = make_optimizer(args, optim.weight_decay_groups(params))
    per_epoch = math.ceil(n / args.batch_size)
    steps = per_epoch * epochs
    rows, step = [], 0
    for epoch in range(1, epochs + 1):
        t0, losses = time.perf_counter(), []
        batches = iterate_batches(n, args.batch_size, rng=rng, shuffle=True)
        for batch in _progress(batches, per_epoch, f"pretrain {name} {epoch}", disable=args.no_progress):
            if len(batch) < 2:
                continue  # a contrastive batch of one has no negatives
            opt.lr = optim.warmup_cosine(step, args.lr, min(max(args.warmup_steps, 1), steps), steps)
            opt.zero_grad()
            loss = batch_loss(batch)
            if not math.isfinite(loss):
                raise Diverged(f"the {name} pretraining loss became {loss} in its epoch {epoch}: try a lower --lr")
            if args.grad_clip > 0:
                optim.clip_grad_norm(params, args.grad_clip)
            opt.step()
            step += 1
            losses.append(loss)
        rows.append({"phase": name, "epoch": epoch, "loss": float(np.mean(losses)),
                     "seconds": round(time.perf_counter() - t0, 2)})
        log(f"pretrain {name} epoch {epoch}: loss {rows[-1]['loss']:.4f} over {n} {name}  {rows[-1]['seconds']:.1f}s")
    return rows


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

def _plot_losses(history, path: Path) -> None:
    """Training and validation loss per epoch, a 500 × 350 PNG at ``path``."""
    from .tasks.figures import new_figure, save  # imports Matplotlib: only when a figure is drawn
    epochs = [h["epoch"] for h in history]
    fig = new_figure(5, 3.5)
    ax = fig.add_subplot()
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("contrastive loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path, crop=False)


def _write_metrics(history, path: Path) -> None:
    fields = ["epoch", "train_loss", "val_loss", "val_r10_i2t", "val_r10_t2i", "logit_scale", "seconds", "lr"]

    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: h.get(k, "") for k in fields} for h in history)  # older runs lack some columns

    atomic_write(path, write, mode="w")


def run(args, log=print, comm=distributed.SingleProcess()) -> dict:
    """Train as ``args`` say; returns the run summary (history, best epoch, paths).

    ``comm``: the ranks of a distributed run. Every rank reads the checkpoint to resume; only rank 0
    creates, locks and writes the run directory, whose path it sends to the others.
    """
    backend.set_default_device(args.device)
    resumed = None
    if args.resume:
        resumed = _load_resumable(args)
        out = Path(args.resume)
    else:
        apply_recipe(args)
        out = _new_run_dir(args.out, args.overwrite) if comm.is_root else None
    out = Path(comm.bcast(str(out) if comm.is_root else None))
    with run_lock(out) if comm.is_root else contextlib.nullcontext():
        if comm.is_root:
            for tmp in remove_stale_temporaries(out):
                log(f"removed {tmp.name}, left by an interrupted write")
        if not resumed and comm.is_root:  # nothing of a replaced run, or of a crashed first epoch, may mix in
            for name in RUN_FILES + ("loss_curve.png",):
                (out / name).unlink(missing_ok=True)
        try:
            return _train(args, out, resumed, log, comm)
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
    # Runs saved before recipes existed trained with the report's settings.
    saved_args = {"recipe": "report", **RECIPES["report"], **saved_args}
    for key in RESUMABLE:  # the data, split and optimisation settings of the original run
        if key == "data_dir" and "data_dir" in given:
            continue  # the data moved: the new folder is checked against the saved pair ids below
        setattr(args, key, saved_args.get(key, getattr(args, key)))
    return resumed


def _resumed_from(args) -> Path:
    return Path(args.resume) / "last"


def _comparable(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_distributed(args, comm, n_train: int) -> None:
    """Refuse what the distributed step does not do (yet), and batches that cannot give every rank a pair."""
    unsupported = [flag for flag, on in (("--loss concept", args.loss == "concept"),
                                         ("--accum-steps > 1", args.accum_steps > 1),
                                         ("--ssl-weight > 0", args.ssl_weight > 0),
                                         ("--pretrain-epochs > 0", args.pretrain_epochs > 0),
                                         ("--pretrain-text-epochs > 0", args.pretrain_text_epochs > 0)) if on]
    if unsupported:
        raise ValueError(f"--distributed does not support {', '.join(unsupported)} yet")
    if args.batch_size < comm.size:
        raise ValueError(f"--batch-size {args.batch_size} is smaller than the {comm.size} ranks")
    last = n_train % args.batch_size
    if 0 < last < comm.size:
        raise ValueError(f"--batch-size {args.batch_size} leaves a last batch of {last} of the {n_train} training "
                         f"pairs, fewer than the {comm.size} ranks: choose another --batch-size")


def _train(args, out: Path, resumed, log, comm) -> dict:
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
    if args.pretrain_captions and not args.pretrain_text_epochs:
        raise ValueError("--pretrain-captions needs --pretrain-text-epochs (the epochs of the caption phase)")
    texts = (_pretraining_captions(args, frame, split, log) if args.pretrain_text_epochs and not resumed
             else None)
    if comm.size > 1:
        _check_distributed(args, comm, len(train_idx))

    if resumed:
        with restoring(_resumed_from(args)):
            config = CLIPConfig.from_dict(resumed["config"])
            tokenizer = Tokenizer.from_dict(resumed["tokenizer"])
    else:
        # The vocabulary of every caption trained on: the training pairs' and the caption phase's.
        vocabulary_captions = texts[0] if texts is not None else frame["caption"].iloc[train_idx]
        tokenizer = Tokenizer.fit(vocabulary_captions, max_vocab=args.max_vocab, min_freq=args.min_freq)
        config = CLIPConfig(image_tower=args.image_tower, image_size=args.image_size,
                            conv_channels=args.conv_channels,
                            vocab_size=tokenizer.vocab_size, max_len=args.max_len, width=args.width,
                            text_layers=args.text_layers, heads=args.heads, ff_dim=args.ff_dim,
                            dropout=args.dropout, embed_dim=args.embed_dim)
    ids, mask = tokenizer.encode(list(frame["caption"]), config.max_len)

    # The untrained model is a function of the configuration and the seed alone (evaluate --checkpoint init).
    model = CLIP.initial(config, tokenizer, args.seed)
    if args.temperature > 0:  # fixed: set once, and left out of the optimizer
        model.logit_scale.data[...] = math.log(1.0 / args.temperature)
    objective = Objective(args, model, tokenizer, frame, images, ids, mask)
    ssl_head = objective.ssl_head
    extra = [ssl_head] if ssl_head else []
    if args.weight_decay == 0 and args.logit_scale_lr == 1 and args.temperature == 0:
        # Groups would change nothing: one flat list in model order, as runs saved before groups existed.
        groups = [p for module in [model, *extra] for p in module.parameters()]
    else:
        groups = [g for g in model.parameter_groups(extra, args.logit_scale_lr)
                  if not (args.temperature > 0 and g["params"] == [model.logit_scale])]
    optimizer = make_optimizer(args, groups)
    average = optim.WeightAverage(model, args.ema) if args.ema else None
    shuffle_rng = np.random.default_rng(args.seed)
    history, step = [], 0
    if resumed:
        with restoring(_resumed_from(args)):
            # With a weight average, "model" is the average (what evaluate reads) and "live_model" the
            # weights training continues from.
            model.load_state_dict(resumed.get("live_model", resumed["model"]))
            if average is not None:
                average.load_state_dict(resumed["model"], resumed["average_updates"])
            if ssl_head is not None:
                ssl_head.load_state_dict(resumed["ssl_head"])
            optimizer.load_state_dict(resumed["optimizer"])
            shuffle_rng.bit_generator.state = resumed["shuffle_rng"]
            if "augment_rng" in resumed:
                objective.augment_rng.bit_generator.state = resumed["augment_rng"]
            backend.set_rng_state(resumed["rng"])
            history, step = list(resumed["history"]), int(resumed["step"])
    if comm.size > 1:
        # Rank 0's weights everywhere (also after a resume read on every host), then per-rank streams:
        # rank 0 keeps its own (checkpointed), ranks > 0 draw new ones for dropout and augmentation.
        distributed.broadcast_parameters([p for module in [model, *extra] for p in module.parameters()], comm)
        if comm.rank > 0:
            backend.manual_seed(distributed.rank_seed(args.seed, comm.rank, step))
            objective.augment_rng = np.random.default_rng([distributed.rank_seed(args.seed, comm.rank, step), 1])
    pairs_per_step = args.batch_size * args.accum_steps
    steps_per_epoch = math.ceil(len(train_idx) / pairs_per_step)
    total_steps = steps_per_epoch * args.epochs
    log(f"tinyclip.train: {len(frame)} pairs ({args.data}), train {len(train_idx)} / val {len(val_idx)} / "
        f"test {len(split['test'])}; vocabulary {tokenizer.vocab_size}; {model.num_parameters():,} parameters; "
        f"recipe {args.recipe}; device {backend.default_device()}; "
        f"{comm.size} rank{'s' if comm.size > 1 else ''}; out {out}")
    log(f"chance level of the validation loss: {chance_loss(len(val_idx), args.batch_size):.4f} "
        f"(ln of the batch size, averaged over the validation batches); of R@10: {min(10 / len(val_idx), 1):.4f}")
    if resumed:
        pretrain_history = list(resumed.get("pretrain_history", []))
    else:
        pretrain_history = []
        if args.pretrain_epochs:
            pool = _pretraining_pool(args, images[train_idx], log)
            pretrain_history += pretrain_images(args, model, objective, pool, log)
        if texts is not None:
            pretrain_history += pretrain_texts(args, model, *texts, log)

    def checkpoint_state(epoch):
        state = {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "args": {k: getattr(args, k) for k in RESUMABLE},
                 "split": {k: v.tolist() for k, v in split.items()}, "ids": list(frame["id"]),
                 "epoch": epoch, "step": step, "best_val_loss": min(h["val_loss"] for h in history),
                 "history": history, "rng": backend.rng_state(), "shuffle_rng": shuffle_rng.bit_generator.state,
                 "augment_rng": objective.augment_rng.bit_generator.state, "pretrain_history": pretrain_history,
                 "world_size": comm.size}
        if ssl_head is not None:
            state["ssl_head"] = ssl_head.state_dict()
        if average is not None:
            state.update(model=average.state_dict(), live_model=state["model"], average_updates=average.updates)
        return state

    start_epoch = len(history)
    since_best = _epochs_since_best(history, args.select)
    stopped = None
    for epoch in range(start_epoch + 1, args.epochs + 1):
        if args.patience and since_best >= args.patience:
            stopped = f"early stop: no better {args.select} for {since_best} epochs"
            break
        t0 = time.perf_counter()
        model.train()
        losses, contrastive, batch_chance = [], [], []
        batches = iterate_batches(len(train_idx), pairs_per_step, rng=shuffle_rng, shuffle=True)
        bar = _progress(batches, steps_per_epoch, f"epoch {epoch}/{args.epochs}",
                        disable=args.no_progress or not comm.is_root)
        for batch in bar:
            optimizer.lr = learning_rate(args, step, total_steps)
            optimizer.zero_grad()
            if comm.size > 1:
                value = part = objective.backward_across_ranks(train_idx[batch], comm, optimizer.params)
            else:
                value, part = objective.backward(train_idx[batch])
            if not math.isfinite(value):
                raise Diverged(f"loss became {value} at epoch {epoch}, step {step}: training stopped; "
                               f"{on_disk(out)}")
            if args.grad_clip > 0:
                optim.clip_grad_norm(optimizer.params, args.grad_clip)
            optimizer.step()
            model.clamp_logit_scale()
            if average is not None:
                average.update()
            step += 1
            losses.append(value)
            contrastive.append(part)
            batch_chance.append(math.log(len(batch)))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        _check_divergence(model, epoch, contrastive, batch_chance, out, history)
        with average.swapped_in() if average is not None else contextlib.nullcontext():  # the model saved
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                   **validate(model, images, ids, mask, objective.captions, val_idx, args.batch_size, comm),
                   "logit_scale": float(backend.to_numpy(model.logit_scale.data)[0]),
                   "seconds": round(time.perf_counter() - t0, 2), "lr": optimizer.lr}
        previous_best = min((selection_score(h, args.select) for h in history), default=math.inf)
        history.append(row)
        improved = selection_score(row, args.select) < previous_best
        since_best = 0 if improved else since_best + 1
        # ``last`` is committed last: a crash before it re-runs this epoch on --resume, which rewrites
        # best, metrics.csv and the figure identically, so the files never disagree.
        if comm.is_root:
            state = checkpoint_state(epoch)
            if improved:
                save_checkpoint(out, "best", state)
            _write_metrics(history, out / "metrics.csv")
            _plot_losses(history, out / "loss_curve.png")
            save_checkpoint(out, "last", state)
        log(f"epoch {epoch}: train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  R@10 i2t "
            f"{row['val_r10_i2t']:.3f} t2i {row['val_r10_t2i']:.3f}{'  (best)' if improved else ''}  "
            f"{row['seconds']:.1f}s")
    if stopped:
        log(stopped)
    if len(history) == start_epoch:
        log(f"nothing trained: the run has done {start_epoch} epochs and --epochs is {args.epochs}"
            + ("" if stopped else "; give a larger --epochs to train more"))
    best_row = min(history, key=lambda h: selection_score(h, args.select)) if history else None
    best_val = min((h["val_loss"] for h in history), default=math.inf)
    if best_row:
        log(f"done: best epoch {best_row['epoch']} by {args.select} (validation loss {best_row['val_loss']:.4f}, "
            f"R@10 i2t {best_row['val_r10_i2t']:.3f} t2i {best_row['val_r10_t2i']:.3f}); checkpoints in {out}")
    return {"out": out, "history": history, "best_val_loss": best_val,
            "best_epoch": best_row["epoch"] if best_row else None}


def _epochs_since_best(history, select: str) -> int:
    """How many epochs have passed since the best ``select`` score so far."""
    if not history:
        return 0
    scores = [selection_score(h, select) for h in history]
    return len(scores) - 1 - int(np.argmin(scores))


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
        comm = distributed.communicator(args.distributed)
    except RuntimeError as e:
        print(f"tinyclip.train: error: {e}", file=sys.stderr)
        return 2
    with distributed.abort_on_failure(comm, "tinyclip.train"):
        code = _main(args, comm)
    if code and comm.size > 1:  # the other ranks may wait in a collective: end them all
        comm.abort(code)
    return code


def _main(args, comm) -> int:
    log = print if comm.is_root else (lambda *a, **k: None)
    if not comm.is_root:
        args.no_progress = True
    try:
        with one_line_warnings():
            run(args, log, comm)
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
