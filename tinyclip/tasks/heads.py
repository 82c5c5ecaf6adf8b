"""Classifier heads on top of the trained model and the one loop that trains them.

The downstream tasks (few-shot pneumonia, concept classifiers, the modality probe)
all do the same thing: take inputs (usually frozen CLIP features, sometimes token
ids), fit a small ``Module`` that outputs logits, and score its predictions (with
``metrics``). This file holds the shared parts, in reading order:

* heads: ``mlp_head`` (two dense ReLU layers + a linear output) and ``linear_head``
  (logistic / softmax regression);
* ``fit``: Adam on shuffled mini-batches, early stopping on a held-out part of the
  training data, best weights restored; ``predict``: logits in eval mode;
* frozen features: a fingerprint of the model's weights, standardisation, and a
  cache of computed features (an ``.npz`` next to the results).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np

from .. import nn, optim
from ..io import atomic_write
from ..functional.loss import binary_cross_entropy_with_logits, cross_entropy
from ..tensor import Tensor

LOSSES = ("binary", "multiclass", "multilabel")
MIN_HELD_OUT = 10  # a held-out part smaller than this (tiny few-shot sets) is not split off


# ---------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------

def mlp_head(in_features: int, out_features: int, hidden=(128, 64), dropout: float = 0.0) -> nn.Sequential:
    """``Linear → ReLU → Linear → ReLU → Linear`` (one Linear + ReLU per entry of ``hidden``).

    ``(N, in_features)`` → logits ``(N, out_features)``; with ``out_features = 1`` and a
    sigmoid this is the report's few-shot classifier.
    """
    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def linear_head(in_features: int, out_features: int) -> nn.Linear:
    """Logistic regression (``out_features = 1``, sigmoid) or softmax regression: ``x @ W + b``."""
    return nn.Linear(in_features, out_features)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------

def holdout_split(targets: np.ndarray, fraction: float, seed: int, stratify: bool = True):
    """``(train_idx, val_idx)``: a seeded, per-class (when ``stratify``) share ``fraction`` held out.

    Each class keeps at least one example in the training part.
    """
    rng = np.random.default_rng(seed)
    n = len(targets)
    if not stratify:
        order = rng.permutation(n)
        cut = int(round(fraction * n))
        return np.sort(order[cut:]), np.sort(order[:cut])
    val = []
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        val.append(members[:min(int(round(fraction * len(members))), len(members) - 1)])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(n), val), val


def _loss(logits, targets, kind: str, weights=None):
    """The mean loss of a batch; with ``weights`` (N,), the mean of ``weight_i · loss_i``."""
    if weights is None:
        if kind == "binary":
            return binary_cross_entropy_with_logits(logits.reshape(-1), targets)
        if kind == "multiclass":
            return cross_entropy(logits, targets)
        return binary_cross_entropy_with_logits(logits, targets)
    if kind == "binary":
        losses = binary_cross_entropy_with_logits(logits.reshape(-1), targets, reduction="none")
    else:
        losses = cross_entropy(logits, targets, reduction="none")
    return (losses * Tensor(weights)).mean()


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-row weights ``N / (C · count of the row's class)``: every class weighs as much in total.

    The same as training on a class-balanced set; the weights average 1 over the rows.
    """
    classes, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    return (len(targets) / (len(classes) * counts))[inverse].astype(np.float32)


def _to_device(model, arrays, targets=None, kind=None, weights=None):
    """Model inputs on the model's device: float arrays become Tensors, others (ids, masks) stay arrays."""
    param = next(iter(model.parameters()))
    xp = param.xp
    inputs = tuple(Tensor(xp.asarray(a, dtype=param.dtype)) if a.dtype.kind == "f" else xp.asarray(a)
                   for a in arrays)
    if targets is None:
        return inputs
    targets = xp.asarray(targets, dtype=np.int64 if kind == "multiclass" else param.dtype)
    return inputs, targets, None if weights is None else xp.asarray(weights, dtype=param.dtype)


def _batch(inputs, index, prepare):
    arrays = tuple(np.asarray(a[index]) for a in inputs)
    return prepare(*arrays) if prepare is not None else arrays


def fit(model, inputs, targets, kind: str, *, lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 64,
        steps: int = 500, epochs: int | None = None, val_fraction: float = 0.2, patience: int = 10,
        balance: bool = False, seed: int = 0, prepare=None, val=None, log=None) -> dict:
    """Train ``model`` (its outputs are logits) on ``inputs`` → ``targets`` with Adam; returns a summary.

    ``inputs``: one array or a tuple of arrays with the same first axis N (float arrays
    are passed as Tensors, integer/bool ones such as token ids and masks as arrays);
    ``prepare(*batch_arrays) -> arrays`` may reshape a batch first (e.g. trim padding).
    ``kind``: ``binary`` (targets (N,) in {0, 1}, logits (N, 1), sigmoid + BCE),
    ``multiclass`` (int targets (N,), logits (N, C), softmax + cross-entropy) or
    ``multilabel`` (targets (N, K) in {0, 1}, sigmoid + BCE per label).

    At most ``steps`` Adam steps (``epochs`` full passes instead, when given) on
    shuffled mini-batches. A share ``val_fraction`` of the rows (per class for
    binary/multiclass) is held out; its loss is measured once per epoch (at least
    every 10 steps), training stops after ``patience`` checks without improvement and
    the best weights are put back. When the held-out part would have fewer than
    ``MIN_HELD_OUT`` rows (tiny few-shot sets), nothing is held out and the full budget
    of steps is used: weight decay is then what keeps the head from memorising.
    ``val = (val_inputs, val_targets)``: a held-out set given by the caller (e.g. one
    fixed set shared by many small training sets); then every row trains and
    ``val_fraction`` is ignored.
    ``balance`` (binary/multiclass): weight every row by ``balanced_weights``, in
    training and in the held-out loss, so that a majority class cannot dominate.
    Summary: ``steps``, ``n_train``, ``n_val``, ``best_val_loss`` (None when nothing
    was held out), ``stopped_early``, ``seconds``.
    """
    if kind not in LOSSES:
        raise ValueError(f"kind must be one of {LOSSES}, got {kind!r}")
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    targets = np.asarray(targets)
    n = len(targets)
    if n == 0 or any(len(a) != n for a in inputs):
        raise ValueError(f"fit: need matching, non-empty inputs and targets, got {[len(a) for a in inputs]} and {n}")
    if balance and kind == "multilabel":
        raise ValueError("fit: balance applies to binary and multiclass targets only")
    t0 = time.perf_counter()
    train_idx, val_idx = np.arange(n), np.zeros(0, np.int64)
    weights = balanced_weights(targets) if balance else None
    if val is not None:
        val_inputs = val[0] if isinstance(val[0], tuple) else (val[0],)
        val_targets = np.asarray(val[1])
        if len(val_targets) == 0 or any(len(a) != len(val_targets) for a in val_inputs):
            raise ValueError(f"fit: need matching, non-empty validation inputs and targets, got "
                             f"{[len(a) for a in val_inputs]} and {len(val_targets)}")
        val_idx = np.arange(len(val_targets))
        val_weights = balanced_weights(val_targets) if balance else None
    else:
        if val_fraction > 0 and int(round(val_fraction * n)) >= MIN_HELD_OUT:
            train_idx, val_idx = holdout_split(targets, val_fraction, seed, stratify=kind != "multilabel")
        val_inputs, val_targets, val_weights = inputs, targets, weights
    batch_size = max(1, min(batch_size, len(train_idx)))
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    total = epochs * steps_per_epoch if epochs is not None else steps
    check_every = max(min(steps_per_epoch, total), min(10, total))

    optimizer = optim.Adam(list(model.parameters()), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)

    def batches():  # shuffled passes over the training rows, one after the other
        while True:
            order = train_idx[rng.permutation(len(train_idx))]
            yield from (order[start:start + batch_size] for start in range(0, len(order), batch_size))

    best, best_state, since_best = math.inf, None, 0
    step, losses, stopped_early = 0, [], False
    model.train()
    for step, part in enumerate(itertools.islice(batches(), total), start=1):
        x, t, w = _to_device(model, _batch(inputs, part, prepare), targets[part], kind,
                             None if weights is None else weights[part])
        loss = _loss(model(*x), t, kind, w)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
        if len(val_idx) and (step % check_every == 0 or step == total):
            val_loss = evaluate_loss(model, val_inputs, val_targets, kind, val_idx, prepare=prepare,
                                     weights=val_weights)
            if log:
                log(f"  step {step}/{total}: train {np.mean(losses[-check_every:]):.4f}  held-out {val_loss:.4f}")
            if val_loss < best - 1e-6:
                best, best_state, since_best = val_loss, model.state_dict(), 0
            else:
                since_best += 1
                if since_best >= patience:
                    stopped_early = True
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"steps": step, "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
            "best_val_loss": best if best_state is not None else None, "stopped_early": stopped_early,
            "seconds": round(time.perf_counter() - t0, 3)}


def evaluate_loss(model, inputs, targets, kind: str, index=None, batch_size: int = 512, prepare=None,
                  weights=None) -> float:
    """Mean (row-``weights``-weighted) loss over the rows ``index`` (all by default), in eval mode, no graph."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    targets = np.asarray(targets)
    index = np.arange(len(targets)) if index is None else np.asarray(index)

    def batch_total(s):  # the batch's mean loss times its rows (float64)
        part = index[s]
        x, t, w = _to_device(model, _batch(inputs, part, prepare), targets[part], kind,
                             None if weights is None else weights[part])
        return float(_loss(model(*x), t, kind, w).item()) * len(part)

    totals = nn.evaluate_in_batches(model, batch_total, len(index), batch_size)
    return float(sum(totals)) / max(len(index), 1)  # left to right, as a running total (np.sum adds pairwise)


def predict(model, inputs, batch_size: int = 512, prepare=None) -> np.ndarray:
    """Logits of ``model`` on all rows of ``inputs`` as a NumPy array (eval mode, no graph); no rows: ``(0, 1)``."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    rows = np.arange(len(inputs[0]))
    return nn.evaluate_in_batches(model, lambda s: model(*_to_device(model, _batch(inputs, rows[s], prepare))),
                                  len(rows), batch_size, empty_shape=(0, 1))


# ---------------------------------------------------------------------------
# frozen features
# ---------------------------------------------------------------------------

def model_fingerprint(model) -> str:
    """A short hash of the model's configuration and every weight: equal iff the checkpoint is the same."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:16]


def cache_key(*parts) -> str:
    """A short hash of JSON-serialisable ``parts`` (model fingerprint, data description, ...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_arrays(out_dir, prefix: str, key: str, compute):
    """``(arrays, from_cache)``: ``compute()``'s dict of arrays, kept in ``out_dir/prefix-key.npz``.

    A rerun on the same output folder with the same ``key`` loads instead of recomputing:
    feature extraction is the slow part of the tasks (21 s of a 130 s few-shot run with the
    default image tower on 1,400 synthetic X-rays), loading the file takes milliseconds.
    """
    path = Path(out_dir) / f"{prefix}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}, True
        except (OSError, ValueError):
            pass  # a damaged file: compute again and overwrite it
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return arrays, False


def standardize(reference: np.ndarray, *arrays: np.ndarray, eps: float = 1e-6):
    """Each of ``arrays`` as ``(x - mean) / std`` with per-column statistics of ``reference``, float32.

    Adam-trained heads learn faster on unit-scale inputs; unit CLIP embeddings have
    entries of about ``1/√D``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    mean, std = reference.mean(axis=0), reference.std(axis=0) + eps
    return tuple(((np.asarray(a, dtype=np.float64) - mean) / std).astype(np.float32) for a in arrays)
