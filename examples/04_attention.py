"""One transformer encoder block on a real caption: attention weights, padding, post-norm.

What you will learn
-------------------
1. How a caption becomes model input: ``tinyclip.text.Tokenizer`` maps words to ids and
   pads to a fixed length; the padding mask is True exactly at the padding.
2. What self-attention computes: every token's query is compared with every token's key,
   softmax(q·k / √d) gives one row of weights per token, and the output is the weighted
   average of the values. We print those weights as a tokens × tokens table, per head and
   averaged over the heads, and recompute one head by hand with NumPy.
3. Why padding is harmless: padded keys get a score of -inf, so exactly zero weight; as a
   proof, changing the ids under the padding leaves every real token's output unchanged.
4. The post-norm block of the text tower (``tinyclip.models.text_encoder.EncoderBlock``),
   written out as equations and checked against the block's own forward.

Run it:  python examples/04_attention.py      (a second or two on a laptop CPU;
         TINYCLIP_EXAMPLE_QUICK=1 is the same, it is already small)

It prints the tokens, the equations, the attention tables, the checks, and finally one
line ``RESULT: ...``.
"""

import os

import numpy as np

import tinyclip
from tinyclip import nn
from tinyclip.models.text_encoder import EncoderBlock
from tinyclip.text import Tokenizer

QUICK = os.environ.get("TINYCLIP_EXAMPLE_QUICK") == "1"  # nothing to shrink: the example is tiny either way

CAPTIONS = [
    "Axial CT of the chest shows a mass in the right lung.",
    "T2-weighted MRI of the brain: no acute abnormality.",
    "Chest X-ray with consolidation in the left lower lobe.",
    "Ultrasound of the liver shows a simple cyst.",
]
WIDTH, HEADS, FF_DIM, MAX_LEN = 32, 4, 64, 11

EQUATIONS = """\
The block (post-norm, as in the original transformer), on x of shape (N, L, E):
    Q, K, V = x Wq + bq,  x Wk + bk,  x Wv + bv          split E = h·d into h heads of d
    P_h     = softmax(Q_h K_hᵀ / √d + M)                  M[i, j] = -inf where key j is padding, else 0
    a       = concat(P_1 V_1, ..., P_h V_h) Wo + bo       multi-head attention
    x'      = LayerNorm(x + Dropout(a))                   residual, then normalise ("post-norm")
    y       = LayerNorm(x' + Dropout(FFN(x')))            FFN(z) = ReLU(z W1 + b1) W2 + b2
(in eval mode Dropout is the identity)"""


def section(title):
    print(f"\n=== {title} ===")


def table(weights, tokens, title):
    """Print a (L, L) weight matrix with the tokens as row (query) and column (key) labels."""
    print(title)
    labels = [t[:6] for t in tokens]
    print("   " + " " * 10 + " ".join(f"{t:>6}" for t in labels))
    for label, row in zip(tokens, weights):
        print(f"   {label[:9]:<9} " + " ".join(f"{v:6.3f}" for v in row))


def main():
    tinyclip.manual_seed(0)

    section("1. tokenise a caption")
    tokenizer = Tokenizer.fit(CAPTIONS)
    caption = CAPTIONS[3]  # 8 words: 3 padding positions at length 11
    ids, mask = tokenizer.encode([caption], MAX_LEN)  # (1, L) int64 and (1, L) bool
    tokens = [tokenizer.vocab[i] for i in ids[0]]
    n_real = int((~mask[0]).sum())
    print(f"vocabulary of {tokenizer.vocab_size} words fitted on {len(CAPTIONS)} captions")
    print(f"caption: {caption!r}")
    print(f"tokens:  {tokens}")
    print(f"ids:     {ids[0].tolist()}")
    print(f"padding: {mask[0].astype(int).tolist()}   ({n_real} real tokens, {MAX_LEN - n_real} padding)")

    section("2. the encoder block and its equations")
    token_embedding = nn.Embedding(tokenizer.vocab_size, WIDTH)
    position_embedding = nn.Embedding(MAX_LEN, WIDTH)
    block = EncoderBlock(WIDTH, HEADS, FF_DIM, dropout=0.1).eval()  # eval: no dropout, deterministic

    def embed(token_ids):  # what TextEncoder does before its blocks
        return token_embedding(token_ids) + position_embedding(np.arange(MAX_LEN))

    x = embed(ids)
    print(EQUATIONS)
    print(f"here: E = {WIDTH}, h = {HEADS}, d = {WIDTH // HEADS}, FFN width {FF_DIM}, L = {MAX_LEN}; "
          f"{block.num_parameters():,} parameters in the block")

    with tinyclip.no_grad():
        y = block(x, key_padding_mask=mask)
        a, weights = block.attn(x, key_padding_mask=mask, need_weights=True)  # weights (1, h, L, L)
        x1 = block.norm1(x + a)
        y_by_hand = block.norm2(x1 + block.ff(x1))
    block_ok = np.allclose(y.numpy(), y_by_hand.numpy(), atol=1e-5)
    print(f"the equations, step by step, reproduce block(x): {block_ok}")

    section("3. attention weights (rows: queries, columns: keys; each row sums to 1)")
    w = weights.numpy()[0]  # (h, L, L)
    print("(a freshly initialised block: which word looks at which is still random; the structure is not:"
          " rows sum to 1, padded keys get 0)")
    table(w[0], tokens, "head 0:")
    print()
    table(w.mean(axis=0), tokens, f"averaged over the {HEADS} heads:")
    pad_weight = float(w[:, :, mask[0]].max()) if mask[0].any() else 0.0
    print(f"\nlargest weight on any padded key, over all heads and queries: {pad_weight}")
    print("(rows of padded queries are computed too, but the tower's mean pooling ignores them)")
    rows_ok = np.allclose(w.sum(axis=-1), 1.0, atol=1e-5)
    print(f"every row sums to 1: {rows_ok}")

    # Head 0 again with nothing but NumPy and the block's projection weights.
    xd = x.numpy()[0]
    d = WIDTH // HEADS

    def project(linear):
        return (xd @ linear.weight.numpy() + linear.bias.numpy())[:, :d]  # head 0 = the first d features

    q, k = project(block.attn.q_proj), project(block.attn.k_proj)
    scores = q @ k.T / np.sqrt(d)
    scores[:, mask[0]] = -np.inf
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    head_ok = np.allclose(p, w[0], atol=1e-5)
    print(f"head 0 recomputed by hand, softmax(q kᵀ / √{d}) with -inf on padding: matches {head_ok}")

    section("4. padding is invisible to the real tokens")
    other = ids.copy()
    other[mask] = tokenizer.vocab.index("brain")  # different words under the padding, same mask
    with tinyclip.no_grad():
        y_other = block(embed(other), key_padding_mask=mask)
    real = ~mask[0]
    change_real = float(np.abs(y_other.numpy()[0, real] - y.numpy()[0, real]).max())
    change_pad = float(np.abs(y_other.numpy()[0, ~real] - y.numpy()[0, ~real]).max())
    print(f"ids under the padding replaced by {other[0].tolist()}")
    print(f"largest change of a real token's output: {change_real:.2e}   (padded positions' own outputs "
          f"change by {change_pad:.2f})")
    invisible = change_real < 1e-5

    ok = block_ok and rows_ok and head_ok and invisible and pad_weight == 0.0
    print(f"RESULT: {HEADS}-head attention over {n_real} tokens + {MAX_LEN - n_real} padding; "
          f"padded keys get weight {pad_weight:g}; block matches the post-norm equations: {block_ok}"
          f"{'' if ok else ' (A CHECK FAILED)'}")


if __name__ == "__main__":
    main()
