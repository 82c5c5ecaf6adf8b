"""Per-layer timing of the image tower's conv blocks (conv 3×3 pad 1 → ReLU → max-pool 2),
forward + backward, tinyclip against PyTorch CPU.

    python benchmarks/bench_conv.py                  # the five reference layers, batch 64
    python benchmarks/bench_conv.py --stack          # the five blocks as one graph
    python benchmarks/bench_conv.py --breakdown      # where tinyclip's time goes, per layer
    python benchmarks/bench_conv.py --layouts        # the candidate layouts of the three conv matmuls
    python benchmarks/bench_conv.py --nchw           # tinyclip in PyTorch's layout (not the fast path)
    python benchmarks/bench_conv.py --threads 1 --cpu-time   # CPU time, steadier when others load the machine

The machines are shared and noisy: every round runs tinyclip and PyTorch back to back and the
table gives medians over rounds (and the median of the per-round ratios). The first layer's
input needs no gradient, as in the model (it is the image). Both libraries use 2 threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import sys  # noqa: E402

_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
os.environ.setdefault("OMP_NUM_THREADS", _threads)
os.environ.setdefault("OPENBLAS_NUM_THREADS", _threads)

import numpy as np  # noqa: E402

from tinyclip import Tensor  # noqa: E402
from tinyclip.functional.arithmetic import relu  # noqa: E402
from tinyclip.functional.conv import col2im, conv2d, im2col, max_pool2d  # noqa: E402

THREADS = int(_threads)
LAYERS = [(3, 16, 128), (16, 32, 64), (32, 64, 32), (64, 128, 16), (128, 256, 8)]  # C → O at H×W


CLOCK = time.perf_counter


def _ms(fn) -> float:
    start = CLOCK()
    fn()
    return (CLOCK() - start) * 1e3


def tinyclip_block(x, w, b, channels_last=True):
    """One block, forward + backward; returns nothing (timing only)."""
    X = Tensor(x, requires_grad=x.shape[-1 if channels_last else 1] != 3)
    W, B = Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
    h = relu(conv2d(X, W, B, padding=1, channels_last=channels_last))
    y = max_pool2d(h, 2, channels_last=channels_last)
    y.backward(np.ones(y.shape, dtype=y.dtype))


def torch_block(torch, x, w, b):
    X = x.requires_grad_(x.shape[1] != 3)
    W, B = w.requires_grad_(), b.requires_grad_()
    F = torch.nn.functional
    y = F.max_pool2d(F.relu(F.conv2d(X, W, B, padding=1)), 2)
    y.backward(torch.ones_like(y))
    W.grad = B.grad = X.grad = None


def compare(batch: int, rounds: int, channels_last: bool = True) -> None:
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"batch {batch}, conv 3×3 pad 1 → ReLU → max-pool 2, forward + backward, "
          f"ms (median of {rounds}); "
          f"tinyclip {'NHWC' if channels_last else 'NCHW'}, torch NCHW, {THREADS} thread(s), "
          f"{'CPU' if CLOCK is time.process_time else 'wall'} time")
    print(f"{'layer':>16} {'tinyclip':>9} {'torch':>9} {'ratio':>6}")
    totals = [0.0, 0.0]
    for C, O, H in LAYERS:
        x = rng.standard_normal((batch, H, H, C), dtype=np.float32)
        w = rng.standard_normal((O, C, 3, 3), dtype=np.float32) * 0.1
        b = np.zeros(O, dtype=np.float32)
        ours, theirs, ratios = [], [], []
        x_ours = x if channels_last else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if torch is not None:
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
            wt, bt = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
        for r in range(rounds + 1):  # round 0 warms up (page faults, buffer pool, thread pools)
            a = _ms(lambda: tinyclip_block(x_ours, w, b, channels_last))
            time.sleep(0.2)  # let the other library's worker threads go idle
            t = _ms(lambda: torch_block(torch, xt, wt, bt)) if torch is not None else float("nan")
            time.sleep(0.2)
            if r:
                ours.append(a), theirs.append(t), ratios.append(a / t)
        a, t = statistics.median(ours), statistics.median(theirs)
        totals[0] += a
        totals[1] += t
        print(f"{f'{C}→{O} @{H}²':>16} {a:9.1f} {t:9.1f} {statistics.median(ratios):6.2f}", flush=True)
    print(f"{'total':>16} {totals[0]:9.1f} {totals[1]:9.1f} {totals[0] / totals[1]:6.2f}")


def stack(batch: int, rounds: int) -> None:
    """The whole five-block stack as one graph, forward + backward, tinyclip against PyTorch."""
    import torch
    torch.set_num_threads(THREADS)
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 128, 128, 3), dtype=np.float32)
    ws = [rng.standard_normal((O, C, 3, 3), dtype=np.float32) * 0.1 for C, O, _ in LAYERS]
    bs = [np.zeros(O, dtype=np.float32) for _, O, _ in LAYERS]
    params = [Tensor(a, requires_grad=True) for a in ws + bs]
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tparams = [torch.from_numpy(a.copy()).requires_grad_() for a in ws + bs]
    n = len(LAYERS)

    def ours():
        h = Tensor(x)
        for w, b in zip(params[:n], params[n:]):
            h = max_pool2d(relu(conv2d(h, w, b, padding=1, channels_last=True)), 2, channels_last=True)
        h.sum().backward()
        for p in params:
            p.grad = None

    def theirs():
        h = xt
        for w, b in zip(tparams[:n], tparams[n:]):
            h = F.max_pool2d(F.relu(F.conv2d(h, w, b, padding=1)), 2)
        h.sum().backward()
        for p in tparams:
            p.grad = None

    a_s, t_s, ratios = [], [], []
    for r in range(rounds + 1):
        a = _ms(ours)
        time.sleep(0.2)
        t = _ms(theirs)
        time.sleep(0.2)
        if r:
            a_s.append(a), t_s.append(t), ratios.append(a / t)
        print(f"round {r}: tinyclip {a:.0f} ms, torch {t:.0f} ms", flush=True)
    print(f"whole stack, batch {batch}, forward + backward: tinyclip {statistics.median(a_s):.0f} ms, "
          f"torch {statistics.median(t_s):.0f} ms, ratio (median per round) {statistics.median(ratios):.2f}")


def breakdown(batch: int, rounds: int) -> None:
    """Time the pieces of tinyclip's conv block separately (raw arrays, channels-last)."""
    rng = np.random.default_rng(0)
    for C, O, H in LAYERS:
        x = rng.standard_normal((batch, H, H, C), dtype=np.float32)
        w_mat = rng.standard_normal((O, 9 * C), dtype=np.float32)
        M = batch * H * H
        gy = rng.standard_normal((M, O), dtype=np.float32)
        cols = np.empty((M, 9 * C), dtype=np.float32)
        parts = {
            "im2col": lambda: im2col(x, 3, 1, 1, out=cols),
            "y=cols@Wᵀ": lambda: cols @ w_mat.T,
            "dW=colsᵀ@gy": lambda: cols.T @ gy,
            "dcols=gy@W": lambda: np.matmul(gy, w_mat, out=cols),
            "col2im": lambda: col2im(cols, x.shape, 3, 1, 1),
        }
        y = np.maximum(rng.standard_normal((batch, H, H, O), dtype=np.float32), 0)
        Y = Tensor(y, requires_grad=True)
        parts["pool fwd"] = lambda: max_pool2d(Y, 2, channels_last=True)
        pooled = max_pool2d(Y, 2, channels_last=True)
        gp = np.ones(pooled.shape, dtype=np.float32)
        parts["pool bwd"] = lambda: pooled.creator.backward(gp)
        times = {k: [] for k in parts}
        for r in range(rounds + 1):
            for k, fn in parts.items():
                t = _ms(fn)
                if r:
                    times[k].append(t)
        cells = "  ".join(f"{k} {statistics.median(v):.1f}" for k, v in times.items())
        print(f"{C}→{O} @{H}²: {cells}", flush=True)


def layouts(batch: int, rounds: int) -> None:
    """The three conv matmuls in each operand layout, at the real sizes (ms, median)."""
    rng = np.random.default_rng(0)
    for C, O, H in LAYERS:
        M, K = batch * H * H, 9 * C
        cols = rng.standard_normal((M, K), dtype=np.float32)
        gy = rng.standard_normal((M, O), dtype=np.float32)
        w_ok = rng.standard_normal((O, K), dtype=np.float32)
        w_ko = np.ascontiguousarray(w_ok.T)
        y, y_t = np.empty((M, O), np.float32), np.empty((O, M), np.float32)
        g = np.empty((M, K), np.float32)
        gw_ok, gw_ko = np.empty((O, K), np.float32), np.empty((K, O), np.float32)
        cands = {
            "fwd cols@W_ok.T": lambda: np.matmul(cols, w_ok.T, out=y),
            "fwd cols@W_ko": lambda: np.matmul(cols, w_ko, out=y),
            "fwd (W_ok@cols.T)": lambda: np.matmul(w_ok, cols.T, out=y_t),
            "dW gy.T@cols": lambda: np.matmul(gy.T, cols, out=gw_ok),
            "dW cols.T@gy": lambda: np.matmul(cols.T, gy, out=gw_ko),
            "dx gy@W_ok": lambda: np.matmul(gy, w_ok, out=g),
            "dx gy@W_ko.T": lambda: np.matmul(gy, w_ko.T, out=g),
        }
        times = {k: [] for k in cands}
        for r in range(rounds + 1):
            for k, fn in cands.items():
                t = _ms(fn)
                if r:
                    times[k].append(t)
        cells = "  ".join(f"{k} {statistics.median(v):.1f}/{min(v):.1f}" for k, v in times.items())
        print(f"{C}→{O} @{H}² (M={M}, K={K}): {cells}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true",
                        help="process CPU time, not wall time (steadier on a busy machine; with --threads 1)")
    parser.add_argument("--nchw", action="store_true", help="run tinyclip in NCHW (default: channels-last)")
    parser.add_argument("--stack", action="store_true", help="the whole five-block stack as one graph")
    parser.add_argument("--breakdown", action="store_true", help="time the pieces of tinyclip's block")
    parser.add_argument("--layouts", action="store_true", help="time the matmul operand layouts (median/min)")
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK = time.process_time
    if args.stack:
        stack(args.batch, args.rounds)
    elif args.layouts:
        layouts(args.batch, args.rounds)
    elif args.breakdown:
        breakdown(args.batch, args.rounds)
    else:
        compare(args.batch, args.rounds, channels_last=not args.nchw)
