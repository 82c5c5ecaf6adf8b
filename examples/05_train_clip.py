"""Contrastive training of a small CLIP on synthetic radiology pairs, one piece at a time.

What you will learn
-------------------
1. The data: ``make_synthetic`` draws image-caption pairs (CT, MRI, ultrasound, ...),
   split into train and validation; the tokenizer is fitted on the training captions.
2. A batch and the similarity matrix: both towers map their input to unit vectors, and
   ``exp(logit_scale) · images @ captionsᵀ`` scores every image against every caption of
   the batch. The right caption of image i is caption i: the diagonal.
3. The loss: cross-entropy of each row against its diagonal (image → caption) and of each
   column (caption → image), averaged. We compute it by hand and compare with ``clip_loss``.
   An untrained model scores about ln(batch size): a uniform guess.
4. One training step: zero the gradients, backward, clip the gradient norm, Adam step,
   clamp the temperature; the loss on the same batch goes down.
5. The training loop over a few epochs, with train and validation loss falling, and the
   similarity matrix of a validation batch afterwards (now with a visible diagonal).

This is the loop that ``python -m tinyclip.train`` runs, without its checkpoints,
early stopping and logging, so every line can be read.

Run it:  python examples/05_train_clip.py      (under a minute on a laptop CPU: 800 pairs
         at 32×32, 5 epochs; TINYCLIP_EXAMPLE_QUICK=1: 96 pairs at 16×16, 2 epochs, seconds)

It prints the batch shapes, the similarity matrix and loss by hand, the effect of one
step, the loss per epoch, and finally one line ``RESULT: ...``.
"""

import math
import os
import time

import numpy as np

import tinyclip
from tinyclip import Tensor, optim
from tinyclip.data.images import normalize
from tinyclip.data.split import iterate_batches, split_indices
from tinyclip.data.synthetic import make_synthetic
from tinyclip.models import CLIP, CLIPConfig, clip_loss
from tinyclip.text import Tokenizer

QUICK = os.environ.get("TINYCLIP_EXAMPLE_QUICK") == "1"
NUM_PAIRS = 96 if QUICK else 800
IMAGE_SIZE = 16 if QUICK else 32
EPOCHS = 2 if QUICK else 5
BATCH = 32
LR = 1e-3


def section(title):
    print(f"\n=== {title} ===")


def show_matrix(matrix, fmt="{:6.2f}", size=6):
    """The top-left size×size corner of a matrix, diagonal entries marked with *."""
    for i, row in enumerate(np.asarray(matrix)[:size, :size]):
        cells = [fmt.format(v) + ("*" if i == j else " ") for j, v in enumerate(row)]
        print("   " + " ".join(cells))


def batch_inputs(model, images, ids, mask, index):
    """Model inputs of the pairs at ``index``: normalised images (B, 3, S, S), ids and mask (B, L).

    They go where the model is: NumPy arrays on the CPU, CuPy arrays on a GPU.
    """
    xp = model.logit_scale.xp
    return Tensor(normalize(images[index], xp=xp)), xp.asarray(ids[index]), xp.asarray(mask[index])


def mean_loss(model, images, ids, mask, index):
    """Contrastive loss averaged over fixed batches of ``index`` (eval mode, no graph)."""
    model.eval()
    total = 0.0
    with tinyclip.no_grad():
        for batch in iterate_batches(len(index), BATCH, shuffle=False):
            total += model.loss(*batch_inputs(model, images, ids, mask, index[batch])).item() * len(batch)
    model.train()
    return total / len(index)


def main():
    tinyclip.manual_seed(0)
    start = time.perf_counter()

    section("1. the data")
    frame, images = make_synthetic(num_samples=NUM_PAIRS, image_size=IMAGE_SIZE, seed=0)
    train_idx, val_idx, _ = split_indices(len(frame), (0.8, 0.2, 0.0), seed=0)
    print(f"{len(frame)} pairs, images {images.dtype} {images.shape}; train {len(train_idx)}, val {len(val_idx)}")
    for i in range(3):
        print(f"   {frame['id'][i]} [{frame['modality'][i]:>11}]  {frame['caption'][i]}")
    tokenizer = Tokenizer.fit(frame["caption"].iloc[train_idx])
    config = CLIPConfig(image_size=IMAGE_SIZE, conv_channels=(8, 16, 32), vocab_size=tokenizer.vocab_size,
                        max_len=24, width=32, text_layers=1, heads=2, ff_dim=64, dropout=0.0, embed_dim=32)
    ids, mask = tokenizer.encode(list(frame["caption"]), config.max_len)
    print(f"tokenizer: {tokenizer.vocab_size} words; caption 0 as ids: {ids[0][:12].tolist()} ...")

    model = CLIP(config, tokenizer)
    print(f"model: image tower {model.image_encoder.num_parameters():,} parameters, text tower "
          f"{model.text_encoder.num_parameters():,}, temperature exp(logit_scale) = "
          f"{math.exp(model.logit_scale.item()):.2f}")

    section("2. a batch and its similarity matrix")
    shuffle = np.random.default_rng(0)
    first = next(iterate_batches(len(train_idx), BATCH, rng=shuffle))
    x, batch_ids, batch_mask = batch_inputs(model, images, ids, mask, train_idx[first])
    print(f"images {x.shape} (normalised floats), ids {batch_ids.shape}, padding mask {batch_mask.shape}")
    image_emb = model.encode_image(x)                    # (B, D), unit rows
    text_emb = model.encode_text(batch_ids, batch_mask)  # (B, D), unit rows
    norms = np.linalg.norm(image_emb.numpy(), axis=1)
    print(f"embeddings: images {image_emb.shape}, captions {text_emb.shape}; row norms {norms.min():.3f}..{norms.max():.3f}")
    scale = math.exp(model.logit_scale.item())
    logits = scale * image_emb.numpy() @ text_emb.numpy().T  # (B, B)
    print(f"logits = {scale:.2f} · cos(image i, caption j), top-left 6x6 (* = matching pair):")
    show_matrix(logits)

    section("3. the loss, by hand and by clip_loss")
    print("loss = ½ [ mean_i -log softmax(row i)[i]  +  mean_j -log softmax(column j)[j] ]")

    def log_softmax(z, axis):
        z = z - z.max(axis=axis, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))

    diag = np.arange(len(logits))
    image_to_text = -log_softmax(logits, axis=1)[diag, diag].mean()
    text_to_image = -log_softmax(logits, axis=0)[diag, diag].mean()
    loss = clip_loss(image_emb, text_emb, model.logit_scale)
    print(f"image→caption {image_to_text:.4f}, caption→image {text_to_image:.4f}, "
          f"mean {(image_to_text + text_to_image) / 2:.4f}")
    print(f"clip_loss: {loss.item():.4f};  chance level ln(B) = ln({len(logits)}) = {math.log(len(logits)):.4f}")

    section("4. one training step")
    optimizer = optim.Adam(model.parameters(), lr=LR)
    optimizer.zero_grad()
    loss.backward()  # gradients of every parameter of both towers and of the temperature
    grad_norm = optim.clip_grad_norm(model.parameters(), 1.0)
    optimizer.step()
    model.clamp_logit_scale()  # CLIP keeps exp(logit_scale) ≤ 100
    with tinyclip.no_grad():
        after = model.loss(x, batch_ids, batch_mask).item()
    print(f"gradient norm {grad_norm:.3f} (clipped to 1.0); Adam step with lr {LR}")
    print(f"loss on the same batch: {loss.item():.4f} before the step, {after:.4f} after")

    section(f"5. {EPOCHS} epochs")
    history = []
    first_val = mean_loss(model, images, ids, mask, val_idx)
    sizes = [len(b) for b in iterate_batches(len(val_idx), BATCH, shuffle=False)]
    chance = float(np.average(np.log(sizes), weights=sizes))  # ln(batch size), per validation batch
    print(f"validation loss before: {first_val:.4f} (chance level {chance:.4f})")
    for epoch in range(1, EPOCHS + 1):
        t0, losses = time.perf_counter(), []
        for batch in iterate_batches(len(train_idx), BATCH, rng=shuffle):  # a new order every epoch
            loss = model.loss(*batch_inputs(model, images, ids, mask, train_idx[batch]))
            optimizer.zero_grad()
            loss.backward()
            optim.clip_grad_norm(model.parameters(), 1.0)
            optimizer.step()
            model.clamp_logit_scale()
            losses.append(loss.item())
        val = mean_loss(model, images, ids, mask, val_idx)
        history.append((float(np.mean(losses)), val))
        print(f"   epoch {epoch}: train {np.mean(losses):.4f}   val {val:.4f}   "
              f"temperature {math.exp(model.logit_scale.item()):6.2f}   {time.perf_counter() - t0:.1f} s")

    batch = val_idx[:BATCH]
    with tinyclip.no_grad():
        model.eval()
        x, batch_ids, batch_mask = batch_inputs(model, images, ids, mask, batch)
        cos = model.encode_image(x).numpy() @ model.encode_text(batch_ids, batch_mask).numpy().T
    print("\ncosine similarities of a validation batch after training (* = matching pair):")
    show_matrix(cos)
    best = cos.argmax(axis=1)
    top1 = float((best == np.arange(len(batch))).mean())
    modality = frame["modality"].to_numpy()[batch]
    same_modality = float((modality[best] == modality).mean())
    print(f"image→caption top-1 within this batch of {len(batch)}: {top1:.0%} (chance {1 / len(batch):.0%}); "
          f"the top caption names the image's modality for {same_modality:.0%}")
    print("(many synthetic captions say nearly the same thing, so the exact caption is hard; the modality is not)")
    best_epoch = int(np.argmin([v for _, v in history])) + 1
    print(f"best validation loss at epoch {best_epoch}: after that the model starts to memorise the training "
          f"pairs (tinyclip.train stops early on this and keeps the best checkpoint)")
    print(f"total time {time.perf_counter() - start:.1f} s")
    print(f"RESULT: contrastive loss fell from {first_val:.3f} to {history[-1][1]:.3f} (validation; train "
          f"{history[0][0]:.3f} -> {history[-1][0]:.3f}) in {EPOCHS} epochs; chance level {chance:.3f}")


if __name__ == "__main__":
    main()
