"""One CLIP training step on two processes (MPI), and proof that it is the step of one process.

What you will learn
-------------------
1. The shard: each rank (process) holds the whole model but embeds only its part of the
   global batch (``shard``: rank 0 the first pairs, rank 1 the rest).
2. ``all_gather``: CLIP's loss scores every image against every caption of the *global*
   batch, so each rank needs every rank's embeddings. ``all_gather`` concatenates them, in
   rank order, on every rank; the gathered matrix equals the whole batch's embeddings.
3. The local loss (OpenCLIP's ``local_loss``): rank r scores only its own rows against all
   columns, the right caption of its row i being global column o_r + i (o_r: the rows of the
   ranks before it). The mean of the ranks' losses is the CLIP loss of the global batch.
4. The gradient average: after backward each rank's gradients differ (different rows;
   ``all_gather``'s backward sends every rank the gradient of its own rows from all ranks'
   losses). One ``Allreduce`` of one flat buffer averages them, and the average equals the
   gradient of one process on the whole batch, so every rank makes the same optimizer step.

The checks run in float64, so "equal" means to rounding (≈ 1e-16), not to float32's 1e-7.

Run it:  mpiexec -n 2 python examples/11_distributed.py
         python examples/11_distributed.py    (starts itself under ``mpiexec -n 2`` when mpi4py and
                                               mpiexec are installed: pip install -e ".[mpi]";
                                               without them it runs the same code on one process)
A few seconds either way (TINYCLIP_EXAMPLE_QUICK=1 changes nothing: the example is tiny).

Rank 0 prints what every rank saw, and finally one line ``RESULT: ...``.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import tinyclip
from tinyclip import backend
from tinyclip.distributed import (abort_on_failure, average_gradients, broadcast_parameters,
                                  clip_loss_across_ranks, communicator, shard)
from tinyclip.functional import all_gather
from tinyclip.losses import clip_loss
from tinyclip.models import CLIP, CLIPConfig

RANKS = 2
BATCH = 6  # global batch: 3 pairs per rank
CONFIG = CLIPConfig(image_size=16, conv_channels=(4, 8), vocab_size=30, max_len=8, width=16, text_layers=1, heads=2,
                    ff_dim=16, dropout=0.0, embed_dim=8)
# Environment variables that MPI launchers set in the processes they start (MPICH/Hydra and Intel MPI,
# PMIx, Open MPI, Slurm): if one is there we already are a rank and must not start mpiexec again.
LAUNCHED_BY_MPI = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")


def find_mpiexec():
    """mpiexec from PATH, or the one the ``mpich`` wheel put beside this Python."""
    beside = Path(sys.executable).parent / "mpiexec"
    return shutil.which("mpiexec") or (str(beside) if beside.is_file() else None)


def relaunch_under_mpiexec(mpiexec: str) -> int:
    """Run this file as ``mpiexec -n 2 python 11_distributed.py`` (one BLAS thread per rank); its exit status."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"(not started by mpiexec: running  {mpiexec} -n {RANKS} {Path(sys.executable).name} "
          f"{Path(__file__).name}  for you)", flush=True)
    return subprocess.run([mpiexec, "-n", str(RANKS), sys.executable, str(Path(__file__).resolve())], env=env).returncode


def global_batch(n: int):
    """n random pairs, the same on every rank: images (n, 3, 16, 16), token ids and padding mask (n, 8)."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 3, 16, 16))
    lengths = rng.integers(2, 9, n)
    mask = np.arange(8)[None, :] >= lengths[:, None]
    ids = np.where(mask, 0, rng.integers(2, 30, (n, 8)))
    return images, ids, mask


def relative(got, want) -> float:
    """max |got − want| over all the arrays, relative to the largest |want|."""
    scale = max(float(np.abs(w).max()) for w in want)
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want)) / scale


def main(comm) -> None:
    def say(*lines):  # one rank speaks: the lines of two would interleave
        if comm.is_root:
            print(*lines, flush=True)

    def section(title):
        say(f"\n=== {title} ===")

    backend.set_default_dtype(np.float64)
    tinyclip.manual_seed(comm.rank)  # each rank initialises differently on purpose ...
    model = CLIP(CONFIG)
    broadcast_parameters(model.parameters(), comm)  # ... and then every rank holds rank 0's weights
    batch = global_batch(BATCH)
    mine = shard(np.arange(BATCH), comm.rank, comm.size)
    counts = comm.row_counts(len(mine))

    section(f"1. The shards ({comm.size} rank{'s' if comm.size > 1 else ''}, global batch {BATCH})")
    start = 0
    for rank, n in enumerate(counts):
        say(f"rank {rank}: pairs {list(range(start, start + n))}")
        start += n

    section("2. all_gather: every rank's embeddings, on every rank")
    image_emb, text_emb, logit_scale = model.encode(*(a[mine] for a in batch))
    image_all, text_all = all_gather(image_emb, text_emb, comm=comm, counts=counts)
    whole_image, whole_text, _ = model.encode(*batch)  # what one process would compute on the whole batch
    gather_error = relative([image_all.data, text_all.data], [whole_image.data, whole_text.data])
    errors = comm.allgather(np.array([[gather_error]]))[:, 0]
    say(f"each rank embeds its {tuple(image_emb.shape)} rows of each tower; all_gather gives {tuple(image_all.shape)}")
    for rank, error in enumerate(errors):
        say(f"rank {rank}: gathered images and captions vs the whole batch's embeddings: max rel. difference "
            f"{error:.1e}")

    section("3. The local loss: my rows against all columns")
    offset = sum(counts[:comm.rank])
    loss = clip_loss_across_ranks(image_emb, text_emb, logit_scale, comm)
    whole_loss = clip_loss(whole_image, whole_text, logit_scale)
    per_rank = comm.allgather(np.array([[loss.item(), offset]]))
    for rank, (value, first) in enumerate(per_rank):
        say(f"rank {rank}: rows {int(first)}..{int(first) + counts[rank] - 1}, right captions at columns "
            f"{int(first)}..{int(first) + counts[rank] - 1}; local loss {value:.6f}")
    mean_loss = float(per_rank[:, 0].mean())
    loss_error = abs(mean_loss - whole_loss.item()) / abs(whole_loss.item())
    say(f"mean over ranks {mean_loss:.12f}; clip_loss of one process on the whole batch {whole_loss.item():.12f}")

    section("4. The gradient average: one Allreduce of one flat buffer")
    model.zero_grad()
    whole_loss.backward()
    want = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    loss.backward()
    projection = model.image_encoder.proj.weight
    norms = comm.allgather(np.array([[float(np.linalg.norm(projection.grad))]]))[:, 0]
    for rank, norm in enumerate(norms):
        say(f"rank {rank}: before averaging, |grad of image_encoder.proj.weight| = {norm:.6f}")
    average_gradients(model.parameters(), comm)
    grad_error = relative([p.grad for p in model.parameters()], want)
    worst = float(comm.allgather(np.array([[grad_error]])).max())
    say(f"after averaging, on every rank: |grad| = {float(np.linalg.norm(projection.grad)):.6f}; every gradient vs "
        f"one process on the whole batch: max rel. difference {worst:.1e}")

    worst_all = max(float(errors.max()), loss_error, worst)
    ok = worst_all < 1e-12
    if comm.size == 1:
        say("\n(ran on ONE process: mpi4py or mpiexec is missing, so all_gather and the average are the identity; "
            "pip install -e \".[mpi]\" and run  mpiexec -n 2 python examples/11_distributed.py  to see two ranks)")
    say(f"RESULT: {comm.size} rank(s): gathered embeddings, the mean of the local losses and the averaged gradients "
        f"{'equal' if ok else 'DIFFER FROM'} one process on the global batch of {BATCH} (max rel. difference "
        f"{worst_all:.1e})")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    under_mpi = any(name in os.environ for name in LAUNCHED_BY_MPI)
    have_mpi4py = importlib.util.find_spec("mpi4py") is not None
    mpiexec = find_mpiexec()
    if not under_mpi and have_mpi4py and mpiexec:
        sys.exit(relaunch_under_mpiexec(mpiexec))
    try:
        comm = communicator(distributed=under_mpi)
    except RuntimeError as e:  # started by mpiexec, but mpi4py is missing
        sys.exit(f"11_distributed: {e}")
    with abort_on_failure(comm, "11_distributed"):  # a failing rank ends the job instead of leaving the other waiting
        main(comm)
