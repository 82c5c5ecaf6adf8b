"""How well does data-parallel training over MPI (``tinyclip.distributed``) use the cores of one machine?

    python benchmarks/bench_distributed.py               # reference workload on 2 cores (a few minutes idle)
    python benchmarks/bench_distributed.py --cores 4     # 1 × 1, 1 rank × 4 threads, 4 ranks × 1 thread
    python benchmarks/bench_distributed.py --quick       # tiny sizes: a smoke test, seconds

Every row runs the same training step on the same global batch (the reference workload of
``bench_train_step.py``: batch 64, images 128², the report's model, dropout 0.1, Adam), as
``python -m tinyclip.train --distributed`` runs it: each rank embeds its shard of the batch,
``clip_loss_across_ranks`` gathers every rank's embeddings (``all_gather``; its backward is a
reduce-scatter), backward, ``average_gradients`` (one flat ``Allreduce``), Adam on every rank.

Rows, with C = ``--cores``:

- ``1 rank × 1 thread``: the baseline of the speed-up;
- ``1 rank × C threads``: the C cores shared by OpenBLAS threads inside one process;
- ``C ranks × 1 thread``: ``mpiexec -n C``, each rank one BLAS thread and 1/C of the batch.

Columns: the step time (median over the timed steps; a step's time is its slowest rank's), steps
per second, the speed-up over 1 × 1 and the scaling efficiency (speed-up / cores), and the time per
step spent inside the collectives, from a communicator that clocks every call: the gradient
``Allreduce``, and the embeddings' ``all_gather`` (forward, plus the row counts) with its backward
reduce-scatter. That time includes waiting for the slower rank to arrive. A second table times the
two collectives alone, every rank starting together after a barrier: their pure cost at these sizes.

How it measures: every configuration runs in a fresh process (``mpiexec`` for several ranks), the
thread count fixed before NumPy is imported; the ranks meet at a barrier before each step (outside
the clock) so that one step's time is not the previous step's imbalance; ``--rounds`` rounds run
the configurations in alternating order, and the step times of all rounds are pooled. The load
average is printed at the start and the end: above the core count, other work competed for the
cores (and MPICH's waiting ranks spin, so they compete too).

Only the standard library is imported at the top: NumPy, tinyclip and MPI are imported in the
workers, after their thread variables are set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_train_step import (MODEL_KEYS, QUICK, REFERENCE, fmt_ms, load_average, make_inputs, markdown_table,
                              median_ms, report, worker_env)

TIMEOUT = 3600  # seconds for one configuration: a hung collective fails the benchmark instead of blocking it


def find_mpiexec() -> str | None:
    """mpiexec from PATH, or the one the ``mpich`` wheel put beside this Python."""
    beside = Path(sys.executable).parent / "mpiexec"
    return shutil.which("mpiexec") or (str(beside) if beside.is_file() else None)


# ---------------------------------------------------------------------------
# the worker: one configuration, on every rank
# ---------------------------------------------------------------------------

class ClockedCommunicator:
    """A communicator that adds the seconds spent in each collective to ``seconds[kind]``.

    kind "gradients": ``allreduce`` (``average_gradients``); "embeddings": ``row_counts``,
    ``allgather`` and ``reduce_scatter`` (``clip_loss_across_ranks`` and ``all_gather``'s backward).
    """

    KINDS = {"allreduce": "gradients", "row_counts": "embeddings", "allgather": "embeddings",
             "reduce_scatter": "embeddings"}

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.seconds = dict.fromkeys(set(self.KINDS.values()), 0.0)

    def __getattr__(self, name):
        method = getattr(self.comm, name)
        if name not in self.KINDS:
            return method

        def clocked(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[self.KINDS[name]] += time.perf_counter() - start
        return clocked


def worker(spec: dict, raw) -> dict | None:
    """On rank ``raw.rank`` of communicator ``raw``: time ``spec["steps"]`` distributed training steps (after ``warmup``) and the two collectives alone.

    Every rank returns its own numbers; rank 0 gathers them: "steps" (W, steps, 3) seconds of
    (whole step, gradient Allreduce, embeddings' gather + reduce-scatter), "alone" {collective: (W, reps)}.
    """
    import numpy as np

    import tinyclip
    from tinyclip import Tensor, no_grad
    from tinyclip.distributed import average_gradients, broadcast_parameters, clip_loss_across_ranks, rank_seed, shard
    from tinyclip.functional import all_gather
    from tinyclip.models import CLIP, CLIPConfig
    from tinyclip.optim import Adam

    cfg = spec["cfg"]
    comm = ClockedCommunicator(raw)
    tinyclip.manual_seed(0)
    model = CLIP(CLIPConfig(**{k: cfg[k] for k in MODEL_KEYS}))
    params = list(model.parameters())
    broadcast_parameters(params, raw)  # as train does (every rank built the same weights anyway)
    tinyclip.manual_seed(rank_seed(0, comm.rank))  # per-rank dropout streams
    optimizer = Adam(params, lr=1e-4)
    part = shard(np.arange(cfg["batch"]), comm.rank, comm.size)
    images, ids, mask = (a[part] for a in make_inputs(cfg, cfg["batch"]))
    images = Tensor(images)

    def step():
        optimizer.zero_grad()
        loss = clip_loss_across_ranks(*model.encode(images, ids, mask), comm)
        loss.backward()
        average_gradients(params, comm, loss.item())
        with no_grad():
            optimizer.step()
        model.clamp_logit_scale()

    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        raw.barrier()
        comm.seconds = dict.fromkeys(comm.seconds, 0.0)
        start = time.perf_counter()
        step()
        if i >= spec["warmup"]:
            times.append([time.perf_counter() - start, comm.seconds["gradients"], comm.seconds["embeddings"]])

    # The collectives alone, at the step's sizes: the flat gradient buffer (+ the loss) and this rank's
    # (n_r, 2D) embeddings of both towers, gathered and scattered back as all_gather does.
    grads = np.ones(sum(p.size for p in params) + 1, dtype=np.float32)
    emb = Tensor(np.ones((len(part), 2 * cfg["embed_dim"]), dtype=np.float32), requires_grad=True)
    alone = {"gradient Allreduce": lambda: raw.allreduce(grads),
             "embeddings all_gather + backward": lambda: all_gather(emb, comm=raw).sum().backward()}
    alone_times = {}
    for name, fn in alone.items():
        alone_times[name] = []
        for i in range(1 + spec["reps"]):
            raw.barrier()
            start = time.perf_counter()
            fn()
            if i:
                alone_times[name].append(time.perf_counter() - start)
    result = {"steps": raw.allgather(np.array([times])).tolist(),
              "alone": {k: raw.allgather(np.array([v])).tolist() for k, v in alone_times.items()},
              "parameters": int(grads.size - 1), "version": f"numpy {np.__version__}"}
    return result if comm.rank == 0 else None


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------

def run_config(spec: dict, mpiexec: str | None) -> dict:
    """Run one configuration (``mpiexec -n ranks`` when ranks > 1) and return rank 0's ``RESULT`` JSON."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    if spec["ranks"] > 1:
        command = [mpiexec, "-n", str(spec["ranks"]), *command]
    proc = subprocess.run(command, env=worker_env(spec["threads"], "cpu"), capture_output=True, text=True,
                          timeout=TIMEOUT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT ") and proc.returncode == 0:
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{spec['ranks']} rank(s) × {spec['threads']} thread(s) failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-3000:]}{proc.stderr[-5000:]}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test")
    parser.add_argument("--cores", type=int, default=2, help="C: the rows 1 × 1, 1 rank × C threads, C ranks × 1 "
                                                             "thread (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 8, quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls of each collective alone (default 20, "
                                                               "quick 3)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the configurations, in alternating "
                                                                 "order (default 2, quick 1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one configuration (JSON spec)
    args = parser.parse_args(argv)
    for name, least in (("cores", 2), ("steps", 1), ("warmup", 0), ("reps", 1), ("rounds", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name} must be at least {least}, got {value}")
    quick = args.quick
    args.steps = args.steps or (2 if quick else 8)
    args.warmup = args.warmup if args.warmup is not None else 1 if quick else 2
    args.reps = args.reps or (3 if quick else 20)
    args.rounds = args.rounds or (1 if quick else 2)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        from tinyclip.distributed import abort_on_failure, communicator
        spec = json.loads(args.worker)
        comm = communicator(distributed=spec["ranks"] > 1)
        with abort_on_failure(comm, "bench_distributed worker"):  # one failing rank ends the job, no hang
            result = worker(spec, comm)
        if result is not None:
            report(result)
        return

    mpiexec = find_mpiexec()
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        sys.exit("bench_distributed: needs mpi4py and mpiexec for the rows with several ranks: "
                 "python -m pip install -e \".[mpi]\"")
    cfg = QUICK if args.quick else REFERENCE
    c = args.cores
    configs = [(1, 1), (1, c), (c, 1)]  # (ranks, threads per rank)
    base = {"cfg": cfg, "steps": args.steps, "warmup": args.warmup, "reps": args.reps}
    print(f"# tinyclip data-parallel benchmark ({'quick sizes' if args.quick else 'reference workload'}), "
          f"{c} cores")
    print(f"global batch {cfg['batch']}, images {cfg['image_size']}², conv {cfg['conv_channels']}, text "
          f"{cfg['text_layers']} blocks × width {cfg['width']}, seq {cfg['max_len']}, embed {cfg['embed_dim']}, "
          f"dropout {cfg['dropout']}; median of {args.steps} steps after {args.warmup} warm-up × {args.rounds} "
          f"round(s); mpiexec {mpiexec}; load average {load_average()} at the start", flush=True)

    results = {config: [] for config in configs}
    for round_index in range(args.rounds):
        for ranks, threads in configs if round_index % 2 == 0 else configs[::-1]:
            result = run_config(dict(base, ranks=ranks, threads=threads), mpiexec)
            results[ranks, threads].append(result)
            step_ms = median_ms([max(rank[i][0] for rank in result["steps"]) for i in range(args.steps)])
            print(f"  round {round_index + 1}/{args.rounds}  {ranks} rank(s) × {threads} thread(s)  median step "
                  f"{fmt_ms(step_ms)} ms", file=sys.stderr, flush=True)

    def per_step(config, column):
        """Seconds per step pooled over rounds: the slowest rank's step time (column 0), else the ranks' mean."""
        pick = max if column == 0 else statistics.mean
        return [pick(rank[i][column] for rank in result["steps"]) for result in results[config]
                for i in range(args.steps)]

    baseline = median_ms(per_step((1, 1), 0))
    table = []
    for ranks, threads in configs:
        ms = median_ms(per_step((ranks, threads), 0))
        speedup = baseline / ms
        comm_ms = [median_ms(per_step((ranks, threads), k)) if ranks > 1 else None for k in (1, 2)]
        share = f"{(comm_ms[0] + comm_ms[1]) / ms:.0%}" if ranks > 1 else "—"
        table.append([f"{ranks} rank{'s' if ranks > 1 else ''} × {threads} thread{'s' if threads > 1 else ''}",
                      fmt_ms(ms), f"{1000 / ms:.3g}", f"{speedup:.2f}×", f"{speedup / (ranks * threads):.0%}",
                      fmt_ms(comm_ms[0]), fmt_ms(comm_ms[1]), share])
    print()
    print(markdown_table(["configuration", "step ms", "steps/s", "speed-up vs 1 × 1", "efficiency (speed-up / cores)",
                          "gradient Allreduce ms", "embeddings all_gather + backward ms", "communication share"],
                         table))

    n_params = results[c, 1][0]["parameters"]
    grad_bytes = 4 * (n_params + 1)
    gather_bytes = 4 * 2 * cfg["batch"] * cfg["embed_dim"]
    payload = {"gradient Allreduce": f"{n_params + 1:,} float32 = {grad_bytes / 2**20:.2f} MiB per rank",
               "embeddings all_gather + backward": f"2·B·D = 2·{cfg['batch']}·{cfg['embed_dim']} float32 = "
                                                   f"{gather_bytes / 2**10:.0f} KiB gathered, the same scattered back"}
    alone = []
    for name, text in payload.items():
        seconds = [max(rank[i] for rank in r["alone"][name]) for r in results[c, 1] for i in range(args.reps)]
        ms = median_ms(seconds)
        alone.append([name, text, fmt_ms(ms)])
    print()
    print(f"The collectives alone on {c} ranks (median of {args.reps} calls × {args.rounds} round(s), the ranks "
          f"starting together after a barrier; the slowest rank's time):")
    print()
    print(markdown_table(["collective", "payload", "ms"], alone))
    print()
    print(f"Communication ms: time inside the collectives per step, mean over ranks, including the wait for the "
          f"slower rank; the step is the slowest rank's. {results[1, 1][0]['version']}. "
          f"Load average {load_average()} at the end.")


if __name__ == "__main__":
    main()
