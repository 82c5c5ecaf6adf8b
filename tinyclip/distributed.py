"""Data-parallel training over MPI: the communicator and the helpers of a distributed step.

W processes (ranks), started by ``mpiexec -n W``, each hold the whole model and read the
same data. One step, on every rank:

1. take this rank's shard of the global batch (``shard``: the same global batches whatever W);
2. embed the shard and compute this rank's share of the CLIP loss of the *global* batch
   (``clip_loss_across_ranks``: its rows against every rank's columns, via ``all_gather``);
3. backward, then average the gradients over ranks in one flat buffer (``average_gradients``:
   one ``Allreduce`` per step), and step the optimizer: every rank makes the same update.

Before the first step rank 0's initial weights are sent to all (``broadcast_parameters``);
dropout and augmentation draw per-rank streams (``rank_seed``); only rank 0 writes files
(``comm.is_root``). ``SingleProcess`` is the communicator of a run without MPI: every
collective returns its input, so the same code trains on one process.

This is the only module that imports MPI (``mpi4py``, the optional extra ``mpi``). CuPy arrays
are staged through host memory (the pip MPICH is not CUDA-aware): correct everywhere, but each
collective copies GPU → host → GPU. Tested on CPU (NumPy) with 2 ranks of the pip MPICH; the
CuPy path has not been run on a GPU yet, and NCCL (``cupyx.distributed``) is not used.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from . import backend
from .functional.arithmetic import exp
from .functional.distributed import all_gather
from .functional.loss import cross_entropy


# ---------------------------------------------------------------------------
# communicators
# ---------------------------------------------------------------------------

class SingleProcess:
    """The communicator of one process: rank 0 of 1; each collective returns its input unchanged."""

    rank, size = 0, 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def row_counts(self, n: int) -> list:
        return [int(n)]

    def allreduce(self, array):
        return array

    def allgather(self, array, counts=None):
        return array

    def reduce_scatter(self, array, counts):
        return array

    def bcast(self, value, root: int = 0):
        return value

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1):
        sys.exit(code)


class MPICommunicator(SingleProcess):
    """The ranks of ``MPI.COMM_WORLD`` (mpi4py). Arrays may be NumPy or CuPy (staged through the host).

    Collectives block until every rank has called them, so all ranks must call the same ones in
    the same order. Array collectives use mpi4py's buffer methods (no pickling).
    """

    def __init__(self):
        from mpi4py import MPI  # imported here: MPI starts only in a run that asked for it
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def row_counts(self, n: int) -> list:
        """Every rank's ``n`` (its number of rows), in rank order."""
        return [int(c) for c in self.comm.allgather(int(n))]

    def allreduce(self, array):
        """The element-wise sum over ranks of ``array`` (same shape and dtype on every rank); in place on NumPy."""
        host = _host(array)
        self.comm.Allreduce(self._mpi.IN_PLACE, host, op=self._mpi.SUM)
        return _back(host, array)

    def allgather(self, array, counts=None):
        """Every rank's rows (n_r, ...) concatenated in rank order → (Σ n_r, ...); n_r may differ by rank."""
        host = _host(array)
        counts = self.row_counts(host.shape[0]) if counts is None else counts
        row = int(np.prod(host.shape[1:], dtype=np.int64))
        out = np.empty((sum(counts),) + host.shape[1:], dtype=host.dtype)
        self.comm.Allgatherv(host, [out, [c * row for c in counts]])
        return _back(out, array)

    def reduce_scatter(self, array, counts):
        """This rank's rows of the sum over ranks of ``array`` (Σ counts, ...) → (counts[rank], ...)."""
        host = _host(array)
        row = int(np.prod(host.shape[1:], dtype=np.int64))
        out = np.empty((counts[self.rank],) + host.shape[1:], dtype=host.dtype)
        self.comm.Reduce_scatter(host, out, recvcounts=[c * row for c in counts], op=self._mpi.SUM)
        return _back(out, array)

    def bcast(self, value, root: int = 0):
        """Root's ``value`` on every rank: an array is overwritten in place (same shape and dtype on
        every rank); any other Python object is pickled."""
        if not hasattr(value, "dtype"):
            return self.comm.bcast(value, root=root)
        host = _host(value)
        self.comm.Bcast(host, root=root)
        if host is not value:
            value[...] = _back(host, value)
        return value

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1):
        """End every rank of the job now (a rank that stops alone would leave the others waiting forever)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def _host(array) -> np.ndarray:
    """A C-contiguous NumPy array for MPI: the array itself when it is one, else a host copy."""
    return np.ascontiguousarray(backend.to_numpy(array))


def _back(host: np.ndarray, like):
    """``host`` on the device of ``like`` (a copy to the GPU for CuPy)."""
    xp = backend.get_array_module(like)
    return host if xp is np else xp.asarray(host)


def communicator(distributed: bool):
    """``MPICommunicator()`` when ``distributed``, else ``SingleProcess()``.

    Raises RuntimeError (one line) when MPI was asked for and mpi4py does not import.
    """
    if not distributed:
        return SingleProcess()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise RuntimeError("--distributed needs mpi4py and an MPI runtime: "
                           "python -m pip install -e \".[mpi]\"") from None
    return MPICommunicator()


@contextlib.contextmanager
def abort_on_failure(comm, prog: str):
    """Around a rank's work: an exception on any rank ends the whole job with one line, not a hang.

    On one process the exception propagates as usual.
    """
    try:
        yield
    except Exception as e:
        if comm.size == 1:
            raise
        print(f"{prog}: rank {comm.rank} of {comm.size} failed: {type(e).__name__}: {e}", file=sys.stderr)
        comm.abort(1)


# ---------------------------------------------------------------------------
# the training helpers
# ---------------------------------------------------------------------------

def shard(batch: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous part of a global batch of B ≥ W indices (sizes differ by at most 1).

    The first B mod W ranks get one more; concatenating the shards in rank order gives ``batch``
    back, so the global batch (drawn from the seed) is the same for any number of ranks.
    """
    if not 0 <= rank < size:
        raise ValueError(f"shard: rank {rank} is not in 0 .. {size - 1}")
    if len(batch) < size:  # the towers need at least one row each
        raise ValueError(f"a batch of {len(batch)} pairs cannot be split over {size} ranks (at least one each)")
    base, extra = divmod(len(batch), size)
    start = rank * base + min(rank, extra)
    return batch[start:start + base + (rank < extra)]


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank ``rank``'s own random streams (dropout, augmentation).

    Rank 0 keeps ``seed`` itself, so a one-process run draws exactly as without MPI; rank r > 0
    gets a 63-bit number from ``SeedSequence([seed, r, step])``: independent streams, reproducible.
    ``step``: the optimizer step a resumed run starts from (only rank 0's streams are checkpointed).
    """
    if rank == 0:
        return int(seed)
    entropy = [int(seed), int(rank), int(step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _flat(arrays, dtype, xp):
    """The arrays raveled into one new 1-D buffer, and the (start, stop, shape) of each."""
    spans, start = [], 0
    for a in arrays:
        spans.append((start, start + a.size, a.shape))
        start += a.size
    flat = xp.empty(start, dtype=dtype)
    for a, (lo, hi, _) in zip(arrays, spans):
        flat[lo:hi] = a.ravel()
    return flat, spans


def broadcast_parameters(params, comm, root: int = 0) -> None:
    """Overwrite every rank's parameter values with ``root``'s, in one flat ``Bcast``."""
    params = list(params)
    if comm.size == 1 or not params:
        return
    flat, spans = _flat([p.data for p in params], params[0].dtype, params[0].xp)
    comm.bcast(flat, root)
    for p, (lo, hi, shape) in zip(params, spans):
        p.data[...] = flat[lo:hi].reshape(shape)


def average_gradients(params, comm, *scalars) -> tuple:
    """Replace each ``p.grad`` by its mean over ranks, and return the mean of each of ``scalars``.

    Gradients and scalars (e.g. the loss value) travel in ONE flat buffer: one ``Allreduce``
    per step, not one per parameter. A parameter without a gradient counts as zeros.
    """
    params = list(params)
    if comm.size == 1:
        return tuple(float(s) for s in scalars)
    xp, dtype = params[0].xp, params[0].dtype
    grads = [p.grad if p.grad is not None else xp.zeros(p.shape, dtype=p.dtype) for p in params]
    flat, spans = _flat(grads + [xp.asarray(scalars, dtype=dtype)], dtype, xp)
    flat = comm.allreduce(flat)
    flat /= comm.size
    for p, (lo, hi, shape) in zip(params, spans):
        p.grad = flat[lo:hi].reshape(shape)  # views into the one buffer; the optimizer may change them in place
    lo, hi, _ = spans[-1]
    return tuple(float(s) for s in backend.to_numpy(flat[lo:hi]))


def clip_loss_across_ranks(image_emb, text_emb, logit_scale, comm):
    """This rank's share ℒ_r of the CLIP loss of the global batch; the mean of ℒ_r over ranks is that loss.

    image_emb, text_emb: this rank's (n_r, D) unit embeddings; N = Σ n_r. With every rank's
    rows gathered (I, T: (N, D)) and o_r = Σ_{s<r} n_s, over this rank's rows i = o_r .. o_r + n_r − 1:
    ℒ_r = W / (2N) · Σ_i [CE(s · I_i Tᵀ, i) + CE(s · T_i Iᵀ, i)],  s = exp(logit_scale).
    With one rank it is ``tinyclip.losses.clip_loss``. Every rank must call it (it gathers).
    """
    counts = comm.row_counts(image_emb.shape[0])
    image_all, text_all = all_gather(image_emb, text_emb, comm=comm, counts=counts)
    offset, total = sum(counts[:comm.rank]), sum(counts)
    targets = image_emb.xp.arange(offset, offset + counts[comm.rank])
    scale = exp(logit_scale)
    rows = cross_entropy(scale * (image_emb @ text_all.T), targets, reduction="sum")  # image → caption
    cols = cross_entropy(scale * (text_emb @ image_all.T), targets, reduction="sum")  # caption → image
    return (rows + cols) * (comm.size / (2 * total))
