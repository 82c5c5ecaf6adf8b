"""Time each op of the CLIP model at the reference sizes, forward and forward + backward, against PyTorch.

    python benchmarks/bench_ops.py                     # every op, 2 threads
    python benchmarks/bench_ops.py --only conv         # ops whose name contains "conv" (comma-separated list)
    python benchmarks/bench_ops.py --quick             # tiny sizes: a smoke test
    python benchmarks/bench_ops.py --device cuda       # tinyclip on CuPy, torch on CUDA
    python benchmarks/bench_ops.py --no-torch          # tinyclip alone

The sizes are those of the reference training step (``bench_train_step.py``, batch 64):

- conv2d 3×3, padding 1, at each block of the image tower (3→16 at 128², 16→32 at 64², …,
  128→256 at 8²): channels-last (NHWC), as the model calls it, and the NCHW API; PyTorch
  runs NCHW, its native layout, in both rows. The first layer needs no input gradient (its
  input is the image), as in the model;
- max-pool 2 and ReLU at the conv outputs (NHWC; PyTorch NCHW);
- the linear layers of the model, attention (the ``scaled_dot_product_attention`` kernel and
  the whole ``nn.MultiHeadAttention`` module, with the padding mask and dropout 0.1 as in
  training), layer norm, dropout, the embedding lookup and the cross-entropy of the loss.

"fwd" is a forward pass with the graph recorded (as in training); "fwd+bwd" adds
``out.backward(gy)`` with a fixed random ``gy``. Each figure is the median over repeated
calls (at least ``--min-reps`` and ``--min-time`` seconds, after one warm-up call), pooled
over ``--rounds`` rounds that alternate a tinyclip subprocess and a torch subprocess, each
with the same thread count set before NumPy or torch is imported. GFLOP/s is given where
the op is matmul work (conv, linear, attention): forward FLOPs ×3 for forward + backward
(×2 for the first conv, which has no input gradient).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_train_step import (QUICK, REFERENCE, fmt_ms, fmt_ratio, load_average, markdown_table, median_ms, report,
                              run_worker, torch_installed)

FRAMEWORKS = ("tinyclip", "torch")


# ---------------------------------------------------------------------------
# the cases: one dict per row of the table, framework-neutral
# ---------------------------------------------------------------------------

def op_cases(cfg: dict) -> list:
    """The ops of the reference model at its sizes (``cfg``: REFERENCE or QUICK from bench_train_step)."""
    n, length, width, heads = cfg["batch"], cfg["max_len"], cfg["width"], cfg["heads"]
    tokens = n * length
    blocks, side, c_in = [], cfg["image_size"], 3
    for c_out in cfg["conv_channels"]:
        blocks.append((side, c_in, c_out))
        side, c_in = side // 2, c_out
    flat = side * side * c_in  # the image projection's input features

    cases = []
    for layout in ("NHWC", "NCHW"):
        for side, c_in, c_out in blocks:
            flops = 2 * n * side * side * c_out * c_in * 9
            cases.append(dict(name=f"conv2d {c_in}→{c_out} @{side}² {layout}", kind="conv", n=n, side=side,
                              c_in=c_in, c_out=c_out, layout=layout, input_grad=c_in != 3,
                              flops=flops, flops_fb=flops * (3 if c_in != 3 else 2)))
    for side, _, c_out in blocks:
        cases.append(dict(name=f"max_pool2d 2 ({n}, {side}, {side}, {c_out}) NHWC", kind="maxpool", n=n, side=side,
                          c=c_out))
    side, _, c_out = blocks[0]
    cases.append(dict(name=f"relu ({n}, {side}, {side}, {c_out})", kind="relu", shape=[n, side, side, c_out]))
    for rows, fan_in, fan_out, what in ((n, flat, cfg["embed_dim"], "image proj"),
                                        (tokens, width, width, "q/k/v/out proj"),
                                        (tokens, width, cfg["ff_dim"], "FFN up"),
                                        (tokens, cfg["ff_dim"], width, "FFN down")):
        flops = 2 * rows * fan_in * fan_out
        cases.append(dict(name=f"linear {fan_in}→{fan_out} × {rows} rows ({what})", kind="linear", rows=rows,
                          fan_in=fan_in, fan_out=fan_out, flops=flops, flops_fb=3 * flops))
    attention_flops = 4 * n * length * length * width  # q·kᵀ and weights·v over all heads
    cases.append(dict(name=f"scaled_dot_product_attention ({n}, {heads}, {length}, {width // heads}) mask+dropout",
                      kind="sdpa", n=n, length=length, width=width, heads=heads,
                      flops=attention_flops, flops_fb=3 * attention_flops))
    mha_flops = attention_flops + 4 * 2 * tokens * width * width
    cases.append(dict(name=f"MultiHeadAttention {width}, {heads} heads, ({n}, {length}) mask+dropout", kind="mha",
                      n=n, length=length, width=width, heads=heads, flops=mha_flops, flops_fb=3 * mha_flops))
    cases.append(dict(name=f"layer_norm ({tokens}, {width})", kind="layernorm", shape=[n, length, width]))
    cases.append(dict(name=f"dropout 0.1 ({n}, {length}, {width})", kind="dropout", shape=[n, length, width]))
    cases.append(dict(name=f"embedding {cfg['vocab_size']}×{width}, ids ({n}, {length})", kind="embedding",
                      vocab=cfg["vocab_size"], width=width, n=n, length=length))
    cases.append(dict(name=f"cross_entropy ({n}, {n})", kind="cross_entropy", n=n))
    return cases


def padding_mask(np, n: int, length: int):
    """(n, length) bool, True at padding; caption lengths between length/4 and length."""
    lengths = np.random.default_rng(2).integers(max(1, length // 4), length + 1, size=n)
    return np.arange(length)[None, :] >= lengths[:, None]


# ---------------------------------------------------------------------------
# building each case: a forward closure and its leaves, per framework
# ---------------------------------------------------------------------------

def build_tinyclip(case: dict, device: str):
    """``(forward, leaves)``: ``forward()`` returns the op's output Tensor; ``leaves`` get gradients."""
    import numpy as np

    import tinyclip
    from tinyclip import Tensor, nn
    from tinyclip.functional.arithmetic import linear, relu
    from tinyclip.functional.attention import scaled_dot_product_attention
    from tinyclip.functional.conv import conv2d, max_pool2d
    from tinyclip.functional.embedding import embedding
    from tinyclip.functional.loss import cross_entropy
    from tinyclip.functional.norm import dropout, layer_norm

    rng = np.random.default_rng(0)

    def leaf(*shape, grad=True):
        return Tensor(tinyclip.to_device(rng.standard_normal(shape, dtype=np.float32), device), requires_grad=grad)

    kind = case["kind"]
    if kind == "conv":
        n, s, ci, co = case["n"], case["side"], case["c_in"], case["c_out"]
        channels_last = case["layout"] == "NHWC"
        x = leaf(n, s, s, ci, grad=case["input_grad"]) if channels_last else leaf(n, ci, s, s, grad=case["input_grad"])
        w, b = leaf(co, ci, 3, 3), leaf(co)
        return (lambda: conv2d(x, w, b, stride=1, padding=1, channels_last=channels_last)), [x, w, b]
    if kind == "maxpool":
        x = leaf(case["n"], case["side"], case["side"], case["c"])
        return (lambda: max_pool2d(x, 2, channels_last=True)), [x]
    if kind == "relu":
        x = leaf(*case["shape"])
        return (lambda: relu(x)), [x]
    if kind == "linear":
        x, w, b = leaf(case["rows"], case["fan_in"]), leaf(case["fan_in"], case["fan_out"]), leaf(case["fan_out"])
        return (lambda: linear(x, w, b)), [x, w, b]
    if kind == "sdpa":
        n, length, heads = case["n"], case["length"], case["heads"]
        q, k, v = (leaf(n, heads, length, case["width"] // heads) for _ in range(3))
        mask = tinyclip.to_device(padding_mask(np, n, length), device)
        return (lambda: scaled_dot_product_attention(q, k, v, key_padding_mask=mask, dropout_p=0.1,
                                                     training=True)), [q, k, v]
    if kind == "mha":
        module = nn.MultiHeadAttention(case["width"], case["heads"], dropout=0.1).to(device)
        x = leaf(case["n"], case["length"], case["width"])
        mask = tinyclip.to_device(padding_mask(np, case["n"], case["length"]), device)
        return (lambda: module(x, key_padding_mask=mask)), [x] + list(module.parameters())
    if kind == "layernorm":
        x, w, b = leaf(*case["shape"]), leaf(case["shape"][-1]), leaf(case["shape"][-1])
        return (lambda: layer_norm(x, w, b)), [x, w, b]
    if kind == "dropout":
        x = leaf(*case["shape"])
        return (lambda: dropout(x, 0.1, training=True)), [x]
    if kind == "embedding":
        table = leaf(case["vocab"], case["width"])
        ids = tinyclip.to_device(rng.integers(0, case["vocab"], size=(case["n"], case["length"])), device)
        return (lambda: embedding(ids, table)), [table]
    if kind == "cross_entropy":
        logits = leaf(case["n"], case["n"])
        targets = tinyclip.to_device(np.arange(case["n"]), device)
        return (lambda: cross_entropy(logits, targets)), [logits]
    raise ValueError(kind)


def build_torch(case: dict, device: str):
    """The same op in PyTorch (NCHW for conv and max-pool; Linear weights stored (out, in))."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)

    def leaf(*shape, grad=True):
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(device).requires_grad_(grad)

    kind = case["kind"]
    if kind == "conv":
        n, s, ci, co = case["n"], case["side"], case["c_in"], case["c_out"]
        x, w, b = leaf(n, ci, s, s, grad=case["input_grad"]), leaf(co, ci, 3, 3), leaf(co)
        return (lambda: F.conv2d(x, w, b, padding=1)), [x, w, b]
    if kind == "maxpool":
        x = leaf(case["n"], case["c"], case["side"], case["side"])
        return (lambda: F.max_pool2d(x, 2)), [x]
    if kind == "relu":
        n, s, _, c = case["shape"]
        x = leaf(n, c, s, s)
        return (lambda: F.relu(x)), [x]
    if kind == "linear":
        x, w, b = leaf(case["rows"], case["fan_in"]), leaf(case["fan_out"], case["fan_in"]), leaf(case["fan_out"])
        return (lambda: F.linear(x, w, b)), [x, w, b]
    if kind == "sdpa":
        n, length, heads = case["n"], case["length"], case["heads"]
        q, k, v = (leaf(n, heads, length, case["width"] // heads) for _ in range(3))
        attend = ~torch.from_numpy(padding_mask(np, n, length)).to(device)[:, None, None, :]  # True = attend
        return (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=0.1)), [q, k, v]
    if kind == "mha":
        module = torch.nn.MultiheadAttention(case["width"], case["heads"], dropout=0.1, batch_first=True).to(device)
        x = leaf(case["n"], case["length"], case["width"])
        mask = torch.from_numpy(padding_mask(np, case["n"], case["length"])).to(device)
        return (lambda: module(x, x, x, key_padding_mask=mask, need_weights=False)[0]), [x] + list(module.parameters())
    if kind == "layernorm":
        x, w, b = leaf(*case["shape"]), leaf(case["shape"][-1]), leaf(case["shape"][-1])
        return (lambda: F.layer_norm(x, w.shape, w, b)), [x, w, b]
    if kind == "dropout":
        x = leaf(*case["shape"])
        return (lambda: F.dropout(x, 0.1, training=True)), [x]
    if kind == "embedding":
        table = leaf(case["vocab"], case["width"])
        ids = torch.from_numpy(rng.integers(0, case["vocab"], size=(case["n"], case["length"]))).to(device)
        return (lambda: F.embedding(ids, table)), [table]
    if kind == "cross_entropy":
        logits = leaf(case["n"], case["n"])
        targets = torch.arange(case["n"], device=device)
        return (lambda: F.cross_entropy(logits, targets)), [logits]
    raise ValueError(kind)


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def repeat_timed(fn, sync, min_reps: int, min_time: float, max_reps: int = 200) -> list:
    """Seconds per call of ``fn`` after one warm-up: at least ``min_reps`` calls and ``min_time`` seconds."""
    fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def ops_worker(spec: dict) -> dict:
    """Time every case in this process, for one framework; a case that fails reports its error."""
    device, framework = spec["device"], spec["framework"]
    if framework == "torch":
        import torch
        torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        build, to_device = build_torch, (lambda a: torch.from_numpy(a).to(device))
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    else:
        import tinyclip
        tinyclip.manual_seed(0)
        build, to_device = build_tinyclip, (lambda a: tinyclip.to_device(a, device))
        if device == "cuda":
            import cupy
            sync = cupy.cuda.Device().synchronize
        else:
            sync = lambda: None  # noqa: E731

    results = {}
    for case in spec["cases"]:
        try:
            results[case["name"]] = time_case(build(case, device), to_device, sync, spec)
        except Exception as error:  # noqa: BLE001  (one broken op should not hide the others)
            results[case["name"]] = {"error": f"{type(error).__name__}: {error}"}
        print(f"    {framework:<8} {case['name']}", file=sys.stderr, flush=True)
    return results


def time_case(built, to_device, sync, spec) -> dict:
    """Seconds per call of the forward alone and of forward + backward with a fixed random ``gy``."""
    import numpy as np
    forward, leaves = built
    out = forward()
    gy = to_device(np.asarray(np.random.default_rng(3).standard_normal(tuple(out.shape)), dtype=np.float32))

    def forward_backward():
        for t in leaves:
            t.grad = None
        forward().backward(gy)
    return {"fwd": repeat_timed(forward, sync, spec["min_reps"], spec["min_time"]),
            "fwd_bwd": repeat_timed(forward_backward, sync, spec["min_reps"], spec["min_time"])}


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="threads for both NumPy/BLAS and torch (default 2)")
    parser.add_argument("--only", default="", help="comma-separated substrings: keep the ops whose name has one")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2, quick 1)")
    parser.add_argument("--min-reps", type=int, default=None, help="timed calls per figure, at least (default 5)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per figure, at least (default 0.5)")
    parser.add_argument("--no-torch", action="store_true", help="tinyclip alone, even when torch is installed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: time the cases of a JSON spec
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.min_reps = args.min_reps or (2 if args.quick else 5)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 0.5)
    return args


def pooled(results: list, name: str, key: str):
    """Median ms over all rounds, or the error text when the op failed."""
    for r in results:
        if "error" in r[name]:
            return r[name]["error"]
    return median_ms([t for r in results for t in r[name][key]])


def gflops(case: dict, ms) -> str:
    """GFLOP/s of forward + backward, for the ops that are matmul work."""
    return f"{case['flops_fb'] / ms / 1e6:.0f}" if "flops_fb" in case and ms else "—"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        report(ops_worker(json.loads(args.worker)))
        return

    cfg = QUICK if args.quick else REFERENCE
    cases = op_cases(cfg)
    if args.only:
        wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
        cases = [c for c in cases if any(w in c["name"].lower() for w in wanted)]
        if not cases:
            sys.exit(f"--only {args.only!r} matches no op")
    use_torch = torch_installed() and not args.no_torch
    frameworks = list(FRAMEWORKS) if use_torch else ["tinyclip"]

    print(f"# tinyclip op benchmark ({'quick sizes' if args.quick else 'reference sizes, batch 64'})")
    print(f"device {args.device}, {args.threads} thread(s); median over ≥ {args.min_reps} calls and "
          f"≥ {args.min_time} s per figure × {args.rounds} round(s); load average {load_average()} at the start")
    if not use_torch:
        print("torch is not " + ("used (--no-torch)" if args.no_torch else "installed") + ": tinyclip alone")
    sys.stdout.flush()

    spec = {"cases": cases, "device": args.device, "threads": args.threads, "min_reps": args.min_reps,
            "min_time": args.min_time}
    results = {fw: [] for fw in frameworks}
    for round_index in range(args.rounds):
        for fw in (frameworks if round_index % 2 == 0 else frameworks[::-1]):
            print(f"  round {round_index + 1}/{args.rounds}: {fw}", file=sys.stderr, flush=True)
            results[fw].append(run_worker(Path(__file__), dict(spec, framework=fw)))

    header = ["op", "tinyclip fwd ms"]
    if use_torch:
        header += ["torch fwd ms", "ratio", "tinyclip fwd+bwd ms", "torch fwd+bwd ms", "ratio",
                   "GFLOP/s fwd+bwd tinyclip", "GFLOP/s fwd+bwd torch"]
    else:
        header += ["tinyclip fwd+bwd ms", "GFLOP/s fwd+bwd tinyclip"]
    table, errors = [], []
    for case in cases:
        name = case["name"]
        ms = {}
        for fw in frameworks:
            fwd, fwd_bwd = pooled(results[fw], name, "fwd"), pooled(results[fw], name, "fwd_bwd")
            if isinstance(fwd, str):  # the op failed: its error text
                errors.append(f"{fw} {name}: {fwd}")
                fwd = fwd_bwd = None
            ms[fw, "fwd"], ms[fw, "fwd_bwd"] = fwd, fwd_bwd
        rate = {fw: gflops(case, ms[fw, "fwd_bwd"]) for fw in frameworks}
        if use_torch:
            table.append([name, fmt_ms(ms["tinyclip", "fwd"]), fmt_ms(ms["torch", "fwd"]),
                          fmt_ratio(ms["tinyclip", "fwd"], ms["torch", "fwd"]),
                          fmt_ms(ms["tinyclip", "fwd_bwd"]), fmt_ms(ms["torch", "fwd_bwd"]),
                          fmt_ratio(ms["tinyclip", "fwd_bwd"], ms["torch", "fwd_bwd"]),
                          rate["tinyclip"], rate["torch"]])
        else:
            table.append([name, fmt_ms(ms["tinyclip", "fwd"]), fmt_ms(ms["tinyclip", "fwd_bwd"]), rate["tinyclip"]])
    print()
    print(markdown_table(header, table))
    if use_torch:
        print("\nratio = tinyclip / torch (above 1: tinyclip is slower). torch runs conv, max-pool and relu in NCHW.")
    print(f"load average {load_average()} at the end")
    for line in dict.fromkeys(errors):
        print(f"error: {line}")


if __name__ == "__main__":
    main()
