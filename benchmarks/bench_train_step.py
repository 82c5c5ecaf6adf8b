"""How fast is one CLIP training step in tinyclip, and how does it compare with PyTorch?

    python benchmarks/bench_train_step.py                 # the reference workload, 2 threads
    python benchmarks/bench_train_step.py --threads 1     # one core
    python benchmarks/bench_train_step.py --quick         # tiny sizes: a smoke test, seconds
    python benchmarks/bench_train_step.py --device cuda   # tinyclip on CuPy, torch on CUDA
    python benchmarks/bench_train_step.py --no-torch      # tinyclip alone
    python benchmarks/bench_train_step.py --profile       # where the full step's time goes, op by op

The reference workload is the model of the report: batch 64 of (3, 128, 128) images and
64-token captions; five conv blocks 3→16→32→64→128→256; a 5-block post-norm text
transformer (width 128, 4 heads, FFN 512, dropout 0.1); the symmetric contrastive loss;
Adam. One step = forward + backward + Adam update, ≈ 58 GFLOP.

Rows of the table:

- ``full step``: the whole model, as ``tinyclip.train`` runs it;
- ``image tower step`` / ``text tower step``: one tower alone, its embeddings scored by the
  same contrastive loss against fixed random unit embeddings of the other side, then
  backward and Adam on that tower's parameters (and the logit scale);
- ``inference``: embedding 256 images and 256 captions, eval mode, no graph, batches of 128.

How it measures, so the numbers can be trusted on a shared, noisy machine:

- every (row, framework) pair runs in a fresh subprocess, so its peak RSS
  (``getrusage(RUSAGE_SELF).ru_maxrss``) is that configuration's alone; on a GPU it is the
  peak memory held by the CuPy memory pool (for torch, ``torch.cuda.max_memory_reserved``, its
  caching allocator's counterpart). ``--quick`` runs all rows in one subprocess per framework
  instead, so there the peak is cumulative;
- the thread count is fixed before NumPy or torch is imported in the subprocess
  (OMP/OPENBLAS/MKL_NUM_THREADS, and ``torch.set_num_threads``), the same for both;
- tinyclip and torch alternate: within a round each row runs tinyclip then torch, and the
  next round reverses the order; the step times of all rounds are pooled and the median is
  reported (``--rounds``, ``--steps`` timed steps after ``--warmup`` untimed ones);
- GFLOP are counted analytically from the configuration: every conv, linear and attention
  matmul, ×3 for forward + backward (the backward needs two matmuls per forward one).

Before timing, a check subprocess (with ``--quick``: the first torch worker) runs one tinyclip
step and confirms that the loss, every parameter and every gradient are float32; when torch is
there it also loads tinyclip's weights into the PyTorch twin (``torch_reference.py``) and
compares the loss and gradients in eval mode, so both sides are known to compute the same model.

``--profile`` replaces the table by where the full step's time goes: every tinyclip Function's forward
and backward, the optimizer step and the rest ("other"), clocked in the worker over the timed steps; and,
with torch, the twin's step under ``torch.profiler`` (benchmarks/README.md explains both tables).

Only the standard library is imported at the top: NumPy, tinyclip and torch are imported
inside the worker subprocesses, after the thread variables are set.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The reference workload. The model's sizes are tinyclip.models.CLIPConfig's defaults; they are
# spelled out here so the benchmark keeps measuring the same thing if those defaults change.
REFERENCE = dict(batch=64, image_size=128, conv_channels=[16, 32, 64, 128, 256], vocab_size=5000, max_len=64,
                 width=128, text_layers=5, heads=4, ff_dim=512, dropout=0.1, embed_dim=128,
                 infer_n=256, infer_batch=128)
QUICK = dict(REFERENCE, batch=4, image_size=32, conv_channels=[16, 32], text_layers=1, max_len=16,
             infer_n=8, infer_batch=4)
MODEL_KEYS = ("image_size", "conv_channels", "vocab_size", "max_len", "width", "text_layers", "heads", "ff_dim",
              "dropout", "embed_dim")

ROWS = ("full step", "image tower step", "text tower step", "inference")
FRAMEWORKS = ("tinyclip", "torch")


# ---------------------------------------------------------------------------
# FLOPs, counted from the configuration
# ---------------------------------------------------------------------------

def image_flops(cfg: dict, n: int) -> float:
    """Forward FLOPs of the image tower on n images: 2·(multiply-adds) of every conv and the projection."""
    flops, side, c_in = 0, cfg["image_size"], 3
    for c_out in cfg["conv_channels"]:
        flops += 2 * side * side * c_out * c_in * 9  # 3×3 conv at full resolution (padding 1)
        side, c_in = side // 2, c_out  # max-pool 2
    flops += 2 * side * side * c_in * cfg["embed_dim"]
    return n * flops


def text_flops(cfg: dict, n: int) -> float:
    """Forward FLOPs of the text tower on n captions: projections, attention matmuls, FFN, output projection."""
    length, width, ff = cfg["max_len"], cfg["width"], cfg["ff_dim"]
    per_block = (2 * length * width * width * 4  # q, k, v and output projections
                 + 2 * length * length * width * 2  # q·kᵀ and weights·v, all heads together
                 + 2 * length * width * ff * 2)  # the two FFN linears
    return n * (cfg["text_layers"] * per_block + 2 * width * cfg["embed_dim"])


def loss_flops(n: int, dim: int) -> float:
    return 2 * n * n * dim  # the (n, n) similarity matrix


def row_gflop(cfg: dict, row: str) -> float:
    n, d = cfg["batch"], cfg["embed_dim"]
    if row == "full step":
        return 3 * (image_flops(cfg, n) + text_flops(cfg, n) + loss_flops(n, d)) / 1e9
    if row == "image tower step":
        return 3 * (image_flops(cfg, n) + loss_flops(n, d)) / 1e9
    if row == "text tower step":
        return 3 * (text_flops(cfg, n) + loss_flops(n, d)) / 1e9
    if row == "inference":  # forward only
        return (image_flops(cfg, cfg["infer_n"]) + text_flops(cfg, cfg["infer_n"])) / 1e9
    raise ValueError(row)


# ---------------------------------------------------------------------------
# helpers shared with bench_ops.py
# ---------------------------------------------------------------------------

def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def worker_env(threads: int, device: str) -> dict:
    """The environment of a worker: thread counts fixed before NumPy/torch load, the device, the repo on the path."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                 "NUMEXPR_NUM_THREADS"):
        env[name] = str(threads)
    env["TINYCLIP_DEVICE"] = device
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_worker(script: Path, spec: dict) -> dict:
    """Run ``script --worker SPEC`` in a fresh Python and return the JSON it prints on its ``RESULT`` line."""
    proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)],
                          env=worker_env(spec["threads"], spec["device"]), capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    what = {k: spec[k] for k in ("framework", "rows") if k in spec}
    raise RuntimeError(f"worker {what} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}")


def report(result: dict) -> None:
    """The worker's last word: one ``RESULT {json}`` line on stdout, read by ``run_worker``."""
    print("RESULT " + json.dumps(result), flush=True)


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def time_calls(fn, warmup: int, repeats: int, sync=lambda: None, after=lambda: None) -> list:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (``sync`` waits for a GPU)."""
    for _ in range(warmup):
        fn()
        sync()
        after()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        after()
    return times


def median_ms(seconds: list) -> float | None:
    return 1000 * statistics.median(seconds) if seconds else None


def fmt_ms(ms) -> str:
    if ms is None:
        return "—"
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def fmt_ratio(a, b) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


def fmt_mib(nbytes) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"


def load_average() -> str:
    """The machine's 1-minute load average: above the thread count, other work competed for the cores."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def make_inputs(cfg: dict, n: int, seed: int = 0):
    """n random (image, caption) pairs as NumPy arrays: float32 images (n, 3, S, S), int64 ids (n, L) and
    a bool padding mask (n, L), True at padding, with caption lengths between L/4 and L."""
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, cfg["image_size"], cfg["image_size"]), dtype=np.float32)
    length = cfg["max_len"]
    ids = rng.integers(1, cfg["vocab_size"], size=(n, length), dtype=np.int64)
    lengths = rng.integers(max(1, length // 4), length + 1, size=n)
    mask = np.arange(length)[None, :] >= lengths[:, None]
    ids[mask] = 0
    return images, ids, mask


def random_unit_rows(n: int, dim: int, seed: int = 1):
    """Fixed random unit embeddings (n, dim): the other side of the contrastive loss for a tower alone."""
    import numpy as np
    rows = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# workers: one configuration each, in a fresh process
# ---------------------------------------------------------------------------

def tinyclip_model(cfg: dict):
    """The benchmark's CLIP in tinyclip, seeded 0, on the worker's device (``TINYCLIP_DEVICE``)."""
    import tinyclip
    from tinyclip.models import CLIP, CLIPConfig
    tinyclip.manual_seed(0)
    return CLIP(CLIPConfig(**{k: cfg[k] for k in MODEL_KEYS}))


def tinyclip_train_step(model, cfg: dict, device: str, row: str):
    """``(step, optimizer)``: one training step of ``row`` (any row but inference) on fixed random inputs."""
    from tinyclip import Tensor, no_grad, to_device
    from tinyclip.models import clip_loss
    from tinyclip.optim import Adam

    images, ids, mask = make_inputs(cfg, cfg["batch"])
    images, ids, mask = Tensor(to_device(images, device)), to_device(ids, device), to_device(mask, device)
    other = Tensor(to_device(random_unit_rows(cfg["batch"], cfg["embed_dim"]), device))
    if row == "full step":
        params = list(model.parameters())
        compute_loss = lambda: model.loss(images, ids, mask)  # noqa: E731
    elif row == "image tower step":
        params = list(model.image_encoder.parameters()) + [model.logit_scale]
        compute_loss = lambda: clip_loss(model.encode_image(images), other, model.logit_scale)  # noqa: E731
    else:
        params = list(model.text_encoder.parameters()) + [model.logit_scale]
        compute_loss = lambda: clip_loss(other, model.encode_text(ids, mask), model.logit_scale)  # noqa: E731
    optimizer = Adam(params, lr=1e-4)

    def step():
        optimizer.zero_grad()
        loss = compute_loss()
        loss.backward()
        with no_grad():
            optimizer.step()
        model.clamp_logit_scale()
    return step, optimizer


def tinyclip_worker(spec: dict) -> dict:
    """Time ``spec["rows"]`` (one row, except with --quick) in tinyclip; the peak memory after each row."""
    import tinyclip  # first, as in the command-line tools: it sets OpenBLAS's thread timeout before NumPy loads

    import numpy as np
    import tinyclip.models  # noqa: F401  (the imports the step needs, before the RSS reading)
    import tinyclip.optim  # noqa: F401
    rss_after_import = peak_rss_bytes()

    cfg, device = spec["cfg"], spec["device"]
    model = tinyclip_model(cfg)
    peak = {"bytes": 0}
    if device == "cuda":
        import cupy
        pool = cupy.get_default_memory_pool()
        sync = cupy.cuda.Device().synchronize

        def sample_memory():  # the pool keeps the blocks it allocated, so its size after a step is the step's peak
            peak["bytes"] = max(peak["bytes"], pool.total_bytes())
    else:
        sync = sample_memory = lambda: None  # noqa: E731

    def time_row(row):
        if row == "inference":
            images, ids, mask = (tinyclip.to_device(a, device) for a in make_inputs(cfg, cfg["infer_n"]))

            def run():  # embed_images / embed_texts switch to eval mode and no_grad themselves
                model.embed_images(images, batch_size=cfg["infer_batch"])
                model.embed_texts((ids, mask), batch_size=cfg["infer_batch"])
            return time_calls(run, 1, spec["infer_steps"], sync, sample_memory)
        step, _ = tinyclip_train_step(model, cfg, device, row)
        return time_calls(step, spec["warmup"], spec["steps"], sync, sample_memory)

    rows = {}
    for row in spec["rows"]:
        times = time_row(row)
        rows[row] = {"times": times, "peak_bytes": peak["bytes"] if device == "cuda" else peak_rss_bytes()}
    return {"rows": rows, "rss_after_import": rss_after_import, "version": f"numpy {np.__version__}"}


def torch_model(spec: dict):
    """The PyTorch twin of the model (``torch_reference.CLIP``), seeded 0, on the device, torch's threads set."""
    import torch

    import torch_reference as ref
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    return ref.CLIP(argparse.Namespace(**spec["cfg"])).to(spec["device"])


def torch_train_step(model, cfg: dict, device: str, row: str):
    """One training step of ``row`` in PyTorch, as ``tinyclip_train_step`` does it."""
    import torch

    import torch_reference as ref
    images, ids, mask = (torch.from_numpy(a).to(device) for a in make_inputs(cfg, cfg["batch"]))
    other = torch.from_numpy(random_unit_rows(cfg["batch"], cfg["embed_dim"])).to(device)
    if row == "full step":
        params = list(model.parameters())
        compute_loss = lambda: model(images, ids, mask)  # noqa: E731
    elif row == "image tower step":
        params = list(model.image_encoder.parameters()) + [model.logit_scale]
        compute_loss = lambda: ref.clip_loss(model.encode_image(images), other, model.logit_scale)  # noqa: E731
    else:
        params = list(model.text_encoder.parameters()) + [model.logit_scale]
        compute_loss = lambda: ref.clip_loss(other, model.encode_text(ids, mask), model.logit_scale)  # noqa: E731
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale()
    return step


def torch_worker(spec: dict) -> dict:
    """The same rows with the PyTorch twin of the model (``torch_reference.CLIP``)."""
    import torch

    import torch_reference  # noqa: F401  (the imports the step needs, before the RSS reading)
    rss_after_import = peak_rss_bytes()

    cfg, device = spec["cfg"], spec["device"]
    model = torch_model(spec)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def time_row(row):
        if row == "inference":
            images, ids, mask = (torch.from_numpy(a).to(device) for a in make_inputs(cfg, cfg["infer_n"]))
            size = cfg["infer_batch"]

            def run():  # as tinyclip's embed_images / embed_texts: eval mode, no graph, batches
                model.eval()
                with torch.no_grad():
                    for i in range(0, len(images), size):
                        model.encode_image(images[i:i + size]).cpu()
                    for i in range(0, len(ids), size):
                        model.encode_text(ids[i:i + size], mask[i:i + size]).cpu()
                model.train()
            return time_calls(run, 1, spec["infer_steps"], sync)
        return time_calls(torch_train_step(model, cfg, device, row), spec["warmup"], spec["steps"], sync)

    rows = {}
    for row in spec["rows"]:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = time_row(row)
        rows[row] = {"times": times,
                     "peak_bytes": torch.cuda.max_memory_reserved() if device == "cuda" else peak_rss_bytes()}
    return {"rows": rows, "rss_after_import": rss_after_import, "version": f"torch {torch.__version__}"}


def check_worker(spec: dict) -> dict:
    """One tinyclip training step with dtype checks; with torch, the same weights in both and a comparison."""
    import numpy as np

    import tinyclip
    from tinyclip import Tensor, no_grad
    from tinyclip.optim import Adam

    cfg, device = spec["cfg"], spec["device"]
    model = tinyclip_model(cfg)
    images, ids, mask = make_inputs(cfg, cfg["batch"])
    on_device = lambda a: tinyclip.to_device(a, device)  # noqa: E731
    lines = []

    # 1. dtypes through one training step (dropout on).
    named = dict(model.named_parameters())
    loss = model.loss(Tensor(on_device(images)), on_device(ids), on_device(mask))
    loss.backward()
    bad = [f"loss is {loss.dtype}"] if loss.dtype != np.float32 else []
    bad += [f"parameter {n} is {p.dtype}" for n, p in named.items() if p.dtype != np.float32]
    bad += [f"grad of {n} is {'missing' if p.grad is None else p.grad.dtype}" for n, p in named.items()
            if p.grad is None or p.grad.dtype != np.float32]
    with no_grad():
        Adam(list(named.values()), lr=1e-4).step()
    bad += [f"parameter {n} is {p.dtype} after Adam" for n, p in named.items() if p.dtype != np.float32]
    if bad:
        more = f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""
        lines.append("dtype check: FAILED: " + "; ".join(bad[:8]) + more)
    else:
        lines.append(f"dtype check (tinyclip, one training step): loss, all {len(named)} parameters and their "
                     f"{len(named)} grads are float32, and stay float32 after Adam: OK")

    # 2. the PyTorch twin computes the same model (eval mode: no dropout, so both are deterministic).
    if spec["torch"]:
        import torch

        import torch_reference as ref
        torch.set_num_threads(spec["threads"])
        model.eval()
        model.zero_grad()
        loss = model.loss(Tensor(on_device(images)), on_device(ids), on_device(mask))
        loss.backward()
        twin = ref.CLIP(argparse.Namespace(**cfg)).eval()
        ref.load_tinyclip_weights(twin, {n: tinyclip.to_numpy(p.data) for n, p in named.items()})
        twin_loss = twin(*(torch.from_numpy(a) for a in (images, ids, mask)))
        twin_loss.backward()
        expected = ref.tinyclip_to_torch_state({n: tinyclip.to_numpy(p.grad) for n, p in named.items()})
        worst, worst_name = 0.0, ""
        for name, param in twin.named_parameters():
            reference = param.grad.numpy()
            error = np.linalg.norm(expected[name] - reference) / (np.linalg.norm(reference) + 1e-12)
            if error > worst:
                worst, worst_name = float(error), name
        a, b = float(loss.item()), float(twin_loss.item())
        # float32 rounding alone reaches ≈ 1e-3 at the reference size: against a float64 run, PyTorch's
        # gradients of the first convs (sums over a million pixels) are off by up to ≈ 8e-4, tinyclip's by
        # ≈ 1e-5. A real bug shows up as O(1).
        verdict = "OK" if abs(a - b) <= 1e-4 * max(1.0, abs(b)) and worst < 1e-2 else "MISMATCH"
        lines.append(f"same weights in PyTorch (eval mode): loss tinyclip {a:.6f} vs torch {b:.6f}; largest relative "
                     f"gradient difference {worst:.1e} ({worst_name}): {verdict}")
    return {"lines": lines}


# ---------------------------------------------------------------------------
# --profile: where the full step's time goes, op by op
# ---------------------------------------------------------------------------

class OpClock:
    """Exclusive wall time and calls per key: time spent in a timed call nested inside another counts
    for the inner one only, so the keys' times add up to at most the time measured around them.

    ``sync`` waits for the GPU before each clock read, so an op's asynchronous kernels are charged to it.
    """

    def __init__(self, sync):
        self.sync = sync
        self.seconds, self.calls = collections.Counter(), collections.Counter()
        self._open = []  # the timed calls in progress: [key, owner, seconds spent in calls nested in it]

    def call(self, key, owner, fn, *args):
        if self._open and self._open[-1][0] == key and self._open[-1][1] is owner:
            return fn(*args)  # Mean.backward calling Sum.backward through super(): still the one op
        frame = [key, owner, 0.0]
        self._open.append(frame)
        self.sync()
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.sync()
            elapsed = time.perf_counter() - start
            self._open.pop()
            self.seconds[key] += elapsed - frame[2]
            self.calls[key] += 1
            if self._open:
                self._open[-1][2] += elapsed

    def reset(self):
        self.seconds.clear()
        self.calls.clear()


def clock_functions(clock: OpClock) -> None:
    """Put every tinyclip Function's forward and backward on ``clock``, keyed (class name, phase).

    Forward is timed at ``Function.__call__``, which every op goes through (so it includes wrapping the
    outputs in Tensors); backward at each class's own ``backward``, which the graph walk calls.
    """
    from tinyclip.tensor import Function

    def timed(method, phase):
        return lambda self, *args: clock.call((type(self).__name__, phase), self, method, self, *args)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    Function.__call__ = timed(Function.__call__, "forward")
    for cls in set(subclasses(Function)):
        if "backward" in vars(cls):
            cls.backward = timed(vars(cls)["backward"], "backward")


def tinyclip_profile_worker(spec: dict) -> dict:
    """The full step in tinyclip, every op's forward and backward and the optimizer step clocked, over the
    timed steps (the clock restarts after the warm-up)."""
    cfg, device = spec["cfg"], spec["device"]
    if device == "cuda":
        import cupy
        sync = cupy.cuda.Device().synchronize
    else:
        sync = lambda: None  # noqa: E731
    model = tinyclip_model(cfg)
    step, optimizer = tinyclip_train_step(model, cfg, device, "full step")
    clock = OpClock(sync)
    clock_functions(clock)
    name = f"{type(optimizer).__name__}.step"
    optimizer.step = functools.partial(clock.call, (name, "optimizer"), optimizer, optimizer.step)
    time_calls(step, spec["warmup"], 0, sync)
    clock.reset()
    times = time_calls(step, 0, spec["steps"], sync)
    entries = [[op, phase, clock.seconds[op, phase], clock.calls[op, phase]] for op, phase in clock.seconds]
    return {"times": times, "entries": entries}


def torch_profile_worker(spec: dict) -> dict:
    """The full step in PyTorch under ``torch.profiler`` over the timed steps: each op's self time
    (on the CPU; with CUDA, the kernels' self time on the GPU) and calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cfg, device = spec["cfg"], spec["device"]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step = torch_train_step(torch_model(spec), cfg, device, "full step")
    time_calls(step, spec["warmup"], 0, sync)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        times = time_calls(step, 0, spec["steps"], sync)
    attribute = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    entries = [[event.key, "self", getattr(event, attribute) / 1e6, event.count] for event in prof.key_averages()]
    return {"times": times, "entries": [e for e in entries if e[2] > 0]}


def mean_step_ms(result: dict) -> float:
    """The mean of a profile worker's timed steps, in ms: the denominator of its table's shares."""
    return 1000 * sum(result["times"]) / len(result["times"])


def fmt_calls(calls: float) -> str:
    return f"{calls:.0f}" if calls == int(calls) else f"{calls:.1f}"


def tinyclip_profile_table(result: dict) -> str:
    """One row per op (forward and backward ms per step), the optimizer step, and the rest of the step as
    "other"; sorted by time, the shares add up to 100%."""
    steps, step_ms = len(result["times"]), mean_step_ms(result)
    ops = collections.defaultdict(dict)  # op -> phase -> (ms per step, calls per step)
    for op, phase, seconds, calls in result["entries"]:
        ops[op][phase] = (1000 * seconds / steps, calls / steps)
    rows = []
    for op, phases in ops.items():
        ms = sum(m for m, _ in phases.values())
        if "optimizer" in phases:
            cells = [f"{op} (optimizer)", fmt_calls(phases["optimizer"][1]), "—", "—"]
        else:
            forward, backward = phases.get("forward", (0.0, 0)), phases.get("backward", (0.0, 0))
            cells = [op, f"{fmt_calls(forward[1])}/{fmt_calls(backward[1])}", fmt_ms(forward[0]), fmt_ms(backward[0])]
        rows.append((ms, cells))
    rows.sort(key=lambda row: -row[0])
    other = step_ms - sum(ms for ms, _ in rows)
    other_cells = ["other (outside any op: the backward walk, its gradient sums and leaf .grad copies, zero_grad, "
                   "clamp)", "", "—", "—"]
    rows.append((other, other_cells))
    header = ["op", "calls per step fwd/bwd", "fwd ms per step", "bwd ms per step", "ms per step", "share of step"]
    return markdown_table(header, [cells + [fmt_ms(ms), f"{100 * ms / step_ms:.1f}%"] for ms, cells in rows])


def torch_profile_table(result: dict, top: int = 20) -> str:
    """The ``top`` ops by self time, the rest summed in one row, and the step time outside any op."""
    steps, step_ms = len(result["times"]), mean_step_ms(result)
    ops = sorted(((1000 * seconds / steps, op, calls / steps) for op, _, seconds, calls in result["entries"]),
                 reverse=True)
    rows = [[op, fmt_calls(calls), ms] for ms, op, calls in ops[:top]]
    if len(ops) > top:
        rows.append([f"{len(ops) - top} more ops", fmt_calls(sum(c for _, _, c in ops[top:])),
                     sum(ms for ms, _, _ in ops[top:])])
    rows.append(["other (outside any op)", "", step_ms - sum(ms for ms, _, _ in ops)])
    header = ["torch op", "calls per step", "self ms per step", "share of step"]
    return markdown_table(header, [[op, calls, fmt_ms(ms), f"{100 * ms / step_ms:.1f}%"] for op, calls, ms in rows])


def profile(args, base: dict, use_torch: bool) -> None:
    """--profile: one worker per framework on the full step, then the table of each."""
    for fw in ["tinyclip"] + (["torch"] if use_torch else []):
        result = run_worker(Path(__file__), dict(base, framework=f"{fw} profile"))
        steps, step_ms = len(result["times"]), fmt_ms(mean_step_ms(result))
        print()
        if fw == "tinyclip":
            print(f"tinyclip full step, profiled: {step_ms} ms per step, mean of "
                  f"{steps} steps after {args.warmup} warm-up (the clock on every op adds to it; on a GPU it also "
                  "synchronises around every op). Exclusive time: an op run inside another op counts once, for itself.")
            print()
            print(tinyclip_profile_table(result))
        else:
            what = "the kernels' self time on the GPU" if args.device == "cuda" else "self CPU time"
            print(f"torch full step under torch.profiler: {step_ms} ms per step, "
                  f"mean of {steps} steps after {args.warmup} warm-up; {what} per op (the backward ones are "
                  "aten::*_backward and the like; Optimizer.* rows are the optimizer's own Python)")
            print()
            print(torch_profile_table(result))
    print()
    print(f"Load average {load_average()} at the end.")


# ---------------------------------------------------------------------------
# the driver: rounds of alternating subprocesses, then one table
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="threads for both NumPy/BLAS and torch (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per subprocess (default 10, quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    parser.add_argument("--infer-steps", type=int, default=None, help="timed inference passes (default 3, quick 1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of alternating tinyclip/torch subprocesses (default 2, quick 1)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    parser.add_argument("--no-torch", action="store_true", help="tinyclip alone, even when torch is installed")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the table: the full step's time per op, forward and backward "
                             "(and torch.profiler's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one configuration (JSON spec)
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (2 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.infer_steps = args.infer_steps or (1 if quick else 3)
    args.rounds = args.rounds or (1 if quick else 2)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = check_worker(spec) if spec.get("check") else {}
        if spec["framework"] != "check":
            workers = {"tinyclip": tinyclip_worker, "torch": torch_worker,
                       "tinyclip profile": tinyclip_profile_worker, "torch profile": torch_profile_worker}
            result.update(workers[spec["framework"]](spec))
        report(result)
        return

    cfg = QUICK if args.quick else REFERENCE
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    use_torch = torch_installed() and not args.no_torch
    frameworks = list(FRAMEWORKS) if use_torch else ["tinyclip"]
    base = {"cfg": cfg, "threads": args.threads, "device": args.device, "steps": args.steps, "warmup": args.warmup,
            "infer_steps": args.infer_steps}

    print(f"# tinyclip training-step benchmark ({'quick sizes' if args.quick else 'reference workload'})")
    sizes = (f"device {args.device}, {args.threads} thread(s), batch {cfg['batch']}, images {cfg['image_size']}², "
             f"conv {cfg['conv_channels']}, text {cfg['text_layers']} blocks × width {cfg['width']}, "
             f"seq {cfg['max_len']}, vocab {cfg['vocab_size']}")
    timing = (f"profile of the full step over {args.steps} steps after {args.warmup} warm-up" if args.profile else
              f"median of {args.steps} steps after {args.warmup} warm-up × {args.rounds} round(s)")
    print(f"{sizes}; {timing}; load average {load_average()} at the start")
    if not use_torch:
        print("torch is not " + ("used (--no-torch)" if args.no_torch else "installed") + ": tinyclip alone")
    if args.profile:
        profile(args, base, use_torch)
        return
    if args.quick:
        print("--quick: all rows run in one subprocess per framework, so the peak memory column is cumulative")
    # The check runs first, in its own subprocess; --quick saves a second torch start-up (seconds) by
    # running it inside the first worker of the last framework instead, before that worker's timing.
    if not args.quick:
        for line in run_worker(Path(__file__), dict(base, framework="check", check=True, torch=use_torch))["lines"]:
            print(line)
        sys.stdout.flush()

    # One subprocess per (row, framework), so each peak RSS is that configuration's own; --quick runs all
    # rows in one subprocess per framework (seconds instead of a minute; its peak RSS is then cumulative).
    groups = [[row] for row in rows] if not args.quick else [rows]
    results = {(fw, row): [] for fw in frameworks for row in rows}
    workers = {fw: [] for fw in frameworks}
    for round_index in range(args.rounds):
        for group in groups:
            order = frameworks if round_index % 2 == 0 else frameworks[::-1]
            for fw in order:
                check = args.quick and round_index == 0 and group is groups[0] and fw == frameworks[-1]
                result = run_worker(Path(__file__), dict(base, framework=fw, rows=group, check=check, torch=use_torch))
                workers[fw].append(result)
                for line in result.get("lines", []):
                    print(line, flush=True)
                for row in group:
                    results[fw, row].append(result["rows"][row])
                    median = fmt_ms(median_ms(result["rows"][row]["times"]))
                    print(f"  round {round_index + 1}/{args.rounds}  {row:<17} {fw:<8} median {median:>6} ms",
                          file=sys.stderr, flush=True)

    memory = "peak GPU mem" if args.device == "cuda" else "peak RSS"
    header = ["row", "tinyclip ms"] + (["torch ms", "ratio tinyclip/torch"] if use_torch else [])
    header += ["GFLOP", "GFLOP/s tinyclip"] + (["GFLOP/s torch"] if use_torch else [])
    header += [f"{memory} {fw}" for fw in frameworks]
    table = []
    for row in rows:
        gflop = row_gflop(cfg, row)
        ms = {fw: median_ms([t for r in results[fw, row] for t in r["times"]]) for fw in frameworks}
        cells = [row, fmt_ms(ms["tinyclip"])]
        if use_torch:
            cells += [fmt_ms(ms["torch"]), fmt_ratio(ms["tinyclip"], ms["torch"])]
        cells += [f"{gflop:.3g}"] + [f"{gflop / ms[fw] * 1000:.3g}" for fw in frameworks]
        cells += [fmt_mib(max(r["peak_bytes"] for r in results[fw, row])) for fw in frameworks]
        table.append(cells)
    print()
    print(markdown_table(header, table))
    print()
    versions = "; ".join(f"{fw} worker: {workers[fw][0]['version']}, "
                         f"RSS right after imports {fmt_mib(workers[fw][0]['rss_after_import'])}"
                         for fw in frameworks)
    print(f"{versions}. GFLOP: conv/linear/attention matmuls, ×3 for forward+backward (inference: ×1). "
          f"Load average {load_average()} at the end.")


if __name__ == "__main__":
    main()
