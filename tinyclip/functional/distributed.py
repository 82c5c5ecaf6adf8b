"""The collective op that lets one loss span several processes: ``all_gather``, forward and backward.

In data-parallel training each rank (process) holds a shard of the global batch. CLIP's
loss compares every image with every caption of the *global* batch, so each rank needs
the embeddings of all ranks: ``all_gather`` concatenates them, in rank order, on every
rank. Its backward sends each rank the gradient of its own rows summed over all ranks'
losses (a reduce-scatter), so gradients still reach the tower that made each row.
Why the gradients then equal those of the single-process loss: docs/math.md, section 6.

``comm`` is a communicator of ``tinyclip.distributed`` (``row_counts``, ``allgather``,
``reduce_scatter``); this file knows nothing of MPI.
"""

from __future__ import annotations

import math

from ..backend import get_array_module
from ..tensor import Function


class AllGather(Function):
    """y = [x⁽⁰⁾; x⁽¹⁾; …; x⁽ᵂ⁻¹⁾]: rank r's x (n_r, ...) → (Σ_s n_s, ...) on every rank.

    Several inputs (the same n_r rows each) travel in one message. With ℒ = Σ_s ℒ_s over the
    ranks' losses, dx⁽ʳ⁾ = Σ_s (dℒ_s/dy)[rows of r]: the reduce-scatter (sum) of the incoming gradients.
    """

    def __init__(self, comm, counts=None):
        self.comm, self.counts = comm, counts

    def forward(self, *xs):
        xp = get_array_module(xs[0])
        n = xs[0].shape[0]
        if any(x.shape[0] != n for x in xs):
            raise ValueError(f"all_gather: every input needs the same number of rows, got {[x.shape for x in xs]}")
        if self.counts is None:
            self.counts = self.comm.row_counts(n)
        elif self.counts[self.comm.rank] != n:
            raise ValueError(f"all_gather: counts say rank {self.comm.rank} has {self.counts[self.comm.rank]} "
                             f"rows, its input has {n}")
        self.shapes = [x.shape[1:] for x in xs]
        packed = xp.concatenate([x.reshape(n, -1) for x in xs], axis=1)  # one message for all inputs
        return self._unpack(self.comm.allgather(packed, self.counts))

    def backward(self, *gys):
        xp = get_array_module(gys[0])
        total = gys[0].shape[0]
        packed = xp.concatenate([g.reshape(total, -1) for g in gys], axis=1)
        return self._unpack(self.comm.reduce_scatter(packed, self.counts))

    def _unpack(self, packed):
        """Cut the columns of a packed (rows, Σ widths) array back into the inputs' shapes."""
        pieces, start = [], 0
        for shape in self.shapes:
            width = math.prod(shape)
            pieces.append(packed[:, start:start + width].reshape((packed.shape[0],) + shape))
            start += width
        return tuple(pieces)


def all_gather(*xs, comm, counts=None):
    """Every rank's rows of each ``x``, concatenated in rank order; one tensor per input.

    xs: tensors (n_r, ...) with the same n_r on this rank (ranks may differ) → (Σ n_r, ...) each.
    ``counts`` (every rank's n_r, from ``comm.row_counts``) saves one small collective when known.
    Every rank must call it, with the inputs in the same order.
    """
    out = AllGather(comm, None if counts is None else list(counts))(*xs)
    return out[0] if len(xs) == 1 else out
