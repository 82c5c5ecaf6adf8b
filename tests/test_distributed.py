"""Data-parallel training: the communicators, the sharding, and all_gather + the loss across ranks.

The 2-rank checks run this file under ``mpiexec -n 2`` (the ``__main__`` part at the bottom):
each rank computes, in float64, the distributed loss and gradients of a small CLIP *and*
the one-process reference on the whole global batch, and prints how far apart they are.
They are skipped with a reason when mpi4py or mpiexec is missing (``pip install -e ".[mpi]"``).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyclip
from tinyclip import backend
from tinyclip.distributed import (SingleProcess, average_gradients, broadcast_parameters, clip_loss_across_ranks,
                                  communicator, rank_seed, shard)
from tinyclip.functional import all_gather
from tinyclip.gradcheck import gradcheck
from tinyclip.losses import clip_loss
from tinyclip.models import CLIP, CLIPConfig
from tinyclip.tensor import Tensor

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds for one mpiexec job; a hang fails the test instead of blocking the suite


def find_mpiexec():
    """mpiexec from PATH, or the one the ``mpich`` wheel put beside this Python."""
    beside = Path(sys.executable).parent / "mpiexec"
    return shutil.which("mpiexec") or (str(beside) if beside.is_file() else None)


MPIEXEC = find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not (MPIEXEC and HAVE_MPI4PY),
                               reason="needs mpi4py and mpiexec (python -m pip install -e \".[mpi]\")")


def run_ranks(case: str, *args, ranks: int = 2):
    """Run this file's ``case`` on ``ranks`` MPI processes, one BLAS thread each; (returncode, stdout, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TINYCLIP_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, __file__, case, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout, proc.stderr


# ---------------------------------------------------------------------------
# the same small CLIP and global batch on every rank
# ---------------------------------------------------------------------------

CONFIG = dict(image_size=16, conv_channels=(4, 8), vocab_size=30, max_len=8, width=16, text_layers=1, heads=2,
              ff_dim=16, dropout=0.0, embed_dim=8)


def small_clip(seed: int) -> CLIP:
    tinyclip.manual_seed(seed)
    return CLIP(CLIPConfig(**CONFIG))


def global_batch(n: int, seed: int = 0):
    """n random (image, caption) pairs: images (n, 3, 16, 16) float64, ids and padding mask (n, 8)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, 16, 16))
    lengths = rng.integers(2, 9, n)
    mask = np.arange(8)[None, :] >= lengths[:, None]
    ids = np.where(mask, 0, rng.integers(2, 30, (n, 8)))
    return images, ids, mask


def reference_gradients(model, batch):
    """The one-process loss and gradients of ``clip_loss`` on the whole batch."""
    model.zero_grad()
    loss = clip_loss(*model.encode(*batch))
    loss.backward()
    return loss.item(), [p.grad.copy() for p in model.parameters()]


def distributed_gradients(model, batch, comm):
    """This rank's shard through the towers, the loss across ranks, and the averaged gradients."""
    model.zero_grad()
    index = shard(np.arange(len(batch[0])), comm.rank, comm.size)
    loss = clip_loss_across_ranks(*model.encode(*(a[index] for a in batch)), comm)
    loss.backward()
    (mean_loss,) = average_gradients(model.parameters(), comm, loss.item())
    return mean_loss, [p.grad for p in model.parameters()]


def max_relative_error(got, want) -> float:
    """max |got − want| over every entry, relative to the largest |want| of all the arrays.

    (Some true gradients are 0 up to rounding, e.g. the key bias of attention: softmax ignores it.)
    """
    scale = max(float(np.abs(w).max()) for w in want)
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want)) / scale


# ---------------------------------------------------------------------------
# one process
# ---------------------------------------------------------------------------

def test_shards_of_any_world_size_rebuild_the_global_batch():
    batch = np.random.default_rng(3).permutation(100)[:37]
    for size in range(1, 8):
        parts = [shard(batch, rank, size) for rank in range(size)]
        np.testing.assert_array_equal(np.concatenate(parts), batch)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [len(shard(batch, r, 3)) for r in range(3)] == [13, 12, 12]


def test_shard_refuses_a_batch_smaller_than_the_world_and_a_bad_rank():
    with pytest.raises(ValueError, match="a batch of 1 pairs cannot be split over 2 ranks"):
        shard(np.arange(1), 0, 2)
    with pytest.raises(ValueError, match="rank 2 is not in 0 .. 1"):
        shard(np.arange(4), 2, 2)


def test_rank_seeds_keep_rank_0_and_differ_per_rank():
    assert rank_seed(7, 0) == 7
    seeds = [rank_seed(7, r) for r in range(8)]
    assert len(set(seeds)) == 8 and seeds == [rank_seed(7, r) for r in range(8)]
    assert rank_seed(8, 1) != rank_seed(7, 1) and rank_seed(7, 1, step=5) != rank_seed(7, 1)
    assert rank_seed(7, 0, step=5) == 7
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_single_process_communicator_collectives_return_their_input():
    comm = communicator(distributed=False)
    assert isinstance(comm, SingleProcess) and (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    x = np.arange(6.0).reshape(3, 2)
    assert comm.allreduce(x) is x and comm.allgather(x) is x and comm.reduce_scatter(x, [3]) is x
    assert comm.bcast({"a": 1}) == {"a": 1} and comm.row_counts(3) == [3]


def test_single_process_loss_and_gradients_equal_clip_loss():
    backend.set_default_dtype(np.float64)
    model, batch = small_clip(0), global_batch(5)
    want_loss, want = reference_gradients(model, batch)
    got_loss, got = distributed_gradients(model, batch, SingleProcess())
    assert abs(got_loss - want_loss) <= 1e-12 * abs(want_loss)
    assert max_relative_error(got, want) <= 1e-12


def test_all_gather_and_the_loss_across_ranks_pass_gradcheck_on_one_process():
    rng = np.random.default_rng(0)
    comm = SingleProcess()
    gradcheck(lambda a, b: all_gather(a, b, comm=comm), [rng.standard_normal((4, 3)), rng.standard_normal((4, 2, 2))])
    gradcheck(lambda i, t, s: clip_loss_across_ranks(i, t, s, comm),
              [rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), np.array([0.5])])


def test_all_gather_checks_its_inputs():
    comm = SingleProcess()
    with pytest.raises(ValueError, match="same number of rows"):
        all_gather(Tensor(np.zeros((2, 3))), Tensor(np.zeros((3, 3))), comm=comm)
    with pytest.raises(ValueError, match="counts say rank 0 has 3 rows, its input has 2"):
        all_gather(Tensor(np.zeros((2, 3))), comm=comm, counts=[3])


def test_distributed_without_mpi4py_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(RuntimeError, match=r"--distributed needs mpi4py .*pip install -e \"\.\[mpi\]\""):
        communicator(distributed=True)


# ---------------------------------------------------------------------------
# two processes
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every 2-rank check, in one mpiexec job: {check name: [rank 0's result, rank 1's result]}."""
    out = tmp_path_factory.mktemp("ranks")
    rc, _, err = run_ranks("checks", out)
    assert rc == 0, f"mpiexec -n 2 {__file__} checks failed (exit {rc}):\n{err[-3000:]}"
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {name: [per_rank[0][name], per_rank[1][name]] for name in per_rank[0]}


@needs_mpi
def test_two_rank_collectives(two_ranks):
    assert two_ranks["rank, size, row_counts"] == [[0, 2, [1, 2]], [1, 2, [1, 2]]]
    assert two_ranks["allreduce"] == [[3.0, 3.0, 3.0]] * 2
    assert two_ranks["allgather (uneven rows)"] == [[[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]] * 2
    # each rank sends arange(6).reshape(3, 2) · (rank + 1): the sum is 3·arange, rank 0 keeps row 0
    assert two_ranks["reduce_scatter"] == [[[0.0, 3.0]], [[6.0, 9.0], [12.0, 15.0]]]
    assert two_ranks["bcast (object, array)"] == [[{"out": "runs/x"}, [0.0, 1.0]]] * 2


@needs_mpi
def test_two_ranks_start_from_rank_0s_weights(two_ranks):
    """Each rank initialises with its own seed; after broadcast_parameters all hold rank 0's."""
    assert two_ranks["weights differ before broadcast"] == [True, True]
    assert two_ranks["max |weights - rank 0's| after broadcast"] == [0.0, 0.0]


@pytest.mark.parametrize("batch", [6, 5, 2])
@needs_mpi
def test_two_rank_loss_and_every_gradient_equal_one_process_on_the_global_batch(two_ranks, batch):
    """float64, shards of 3+3, 3+2 and 1+1 pairs: the averaged loss and gradients match to 1e-12."""
    for rank in (0, 1):
        loss_error, grad_error = two_ranks[f"clip batch {batch}"][rank]
        assert loss_error <= 1e-12, f"rank {rank}: relative loss error {loss_error}"
        assert grad_error <= 1e-12, f"rank {rank}: max relative gradient error {grad_error}"


@needs_mpi
def test_all_gather_and_the_loss_across_ranks_pass_gradcheck_on_two_ranks(two_ranks):
    """d/dx of the sum over ranks, by backward (summed over ranks) and by central differences."""
    for name in ("gradcheck all_gather", "gradcheck clip_loss_across_ranks"):
        for rank in (0, 1):
            worst = two_ranks[name][rank]
            assert worst <= 1e-7, f"{name}, rank {rank}: backward and finite differences differ by {worst}"


@needs_mpi
def test_a_failing_rank_ends_the_job_with_one_line_not_a_hang():
    """A hang would end in run_ranks' timeout (subprocess.TimeoutExpired fails the test)."""
    rc, out, err = run_ranks("fail")
    assert rc != 0
    assert "rank 1 of 2 failed: FileNotFoundError: no such folder: data/missing" in err
    assert "Traceback" not in err


TINY_RUN = ["--num-samples", "96", "--image-size", "16", "--conv-channels", "4,8", "--text-layers", "1", "--width",
            "16", "--heads", "2", "--ff-dim", "16", "--embed-dim", "8", "--max-len", "16", "--batch-size", "16",
            "--patience", "0", "--no-progress", "--dropout", "0", "--epochs", "2"]


@needs_mpi
def test_two_rank_training_gives_the_weights_of_one_process(tmp_path):
    """2 epochs on 2 ranks (float32, dropout 0) end at the weights of 2 epochs on one process.

    Relative to the largest weight, within 1e-6. The attention key bias is left out: its true
    gradient is 0 (softmax ignores a constant per row), so Adam steps it by rounding noise.
    """
    from tinyclip.checkpoint import load_checkpoint
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", TINYCLIP_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    train = [sys.executable, "-m", "tinyclip.train", *TINY_RUN]
    for command in ([*train, "--out", "one"], [MPIEXEC, "-n", "2", *train, "--distributed", "--out", "two"]):
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}"
    one, two = (load_checkpoint(tmp_path / name, "last") for name in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    keys = [k for k in one["model"] if not k.endswith("k_proj.bias")]
    scale = max(float(np.abs(one["model"][k]).max()) for k in keys)
    worst = max(float(np.abs(one["model"][k] - two["model"][k]).max()) for k in keys)
    assert worst <= 1e-6 * scale, f"weights differ by {worst} (largest weight {scale})"
    np.testing.assert_allclose([h["train_loss"] for h in two["history"]],
                               [h["train_loss"] for h in one["history"]], rtol=1e-6)


# ---------------------------------------------------------------------------
# what each rank runs under mpiexec
# ---------------------------------------------------------------------------

def cross_rank_gradcheck(fn, inputs, comm, directions: int = 4, eps: float = 1e-6) -> float:
    """Check d(Σ_r fn_r)/dx for global float64 ``inputs`` (the same on every rank; fn shards them).

    Backward: each rank's x.grad, summed over ranks. Finite differences: every rank moves x the
    same way (same seed) and the sum over ranks of fn is taken. Returns the worst error, relative.
    """
    rng = np.random.default_rng(1)
    tensors = [Tensor(x, requires_grad=True) for x in inputs]
    fn(*tensors).backward()
    grads = [comm.allreduce(t.grad.copy()) for t in tensors]
    worst = 0.0
    for t, grad in zip(tensors, grads):
        x0 = t.data.copy()
        for _ in range(directions):
            d = rng.standard_normal(x0.shape)
            total = []
            for sign in (1, -1):
                t.data = x0 + sign * eps * d
                total.append(comm.allreduce(np.array([fn(*tensors).item()]))[0])
            t.data = x0
            numeric, analytic = (total[0] - total[1]) / (2 * eps), float((grad * d).sum())
            worst = max(worst, abs(numeric - analytic) / max(abs(analytic), 1.0))
    return worst


def worker_checks(comm, out):
    """Each rank writes {check name: result} to ``out``/rank<r>.json (two ranks' prints would interleave)."""
    backend.set_default_dtype(np.float64)
    results = {}

    def report(name, value):
        results[name] = value

    report("rank, size, row_counts", [comm.rank, comm.size, comm.row_counts(comm.rank + 1)])
    report("allreduce", comm.allreduce(np.full(3, comm.rank + 1.0)).tolist())
    report("allgather (uneven rows)", comm.allgather(np.full((comm.rank + 1, 2), float(comm.rank))).tolist())
    report("reduce_scatter", comm.reduce_scatter(np.arange(6.0).reshape(3, 2) * (comm.rank + 1), [1, 2]).tolist())
    sent = np.arange(2.0) if comm.rank == 0 else np.full(2, -1.0)
    report("bcast (object, array)", [comm.bcast({"out": "runs/x"} if comm.rank == 0 else None), comm.bcast(sent).tolist()])

    model = small_clip(seed=100 + comm.rank)
    rank0 = small_clip(seed=100)
    pairs = list(zip(model.parameters(), rank0.parameters()))
    report("weights differ before broadcast", comm.rank == 0 or any(not np.array_equal(p.data, q.data) for p, q in pairs))
    broadcast_parameters(model.parameters(), comm)
    report("max |weights - rank 0's| after broadcast", max(float(np.abs(p.data - q.data).max()) for p, q in pairs))

    for n in (6, 5, 2):
        batch = global_batch(n, seed=n)
        want_loss, want = reference_gradients(model, batch)
        got_loss, got = distributed_gradients(model, batch, comm)
        report(f"clip batch {n}", [abs(got_loss - want_loss) / abs(want_loss), max_relative_error(got, want)])

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((2, 5, 3))  # a different weighting of the gathered rows on each rank
    report("gradcheck all_gather", cross_rank_gradcheck(
        lambda x: (all_gather(x[shard(np.arange(5), comm.rank, comm.size)], comm=comm)
                   * Tensor(weights[comm.rank])).sum(),
        [rng.standard_normal((5, 3))], comm))

    def local_loss(images, texts, scale):
        index = shard(np.arange(5), comm.rank, comm.size)
        return clip_loss_across_ranks(images[index], texts[index], scale, comm) * (1.0 / comm.size)

    report("gradcheck clip_loss_across_ranks", cross_rank_gradcheck(
        local_loss, [rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), np.array([0.7])], comm))
    (Path(out) / f"rank{comm.rank}.json").write_text(json.dumps(results))


def worker_fail(comm, *_):
    """Rank 1 fails (as on a bad data path) while rank 0 already waits in a collective."""
    from tinyclip.distributed import abort_on_failure
    with abort_on_failure(comm, "test_distributed"):
        if comm.rank == 1:
            raise FileNotFoundError("no such folder: data/missing")
        comm.allreduce(np.zeros(1))


if __name__ == "__main__":
    from tinyclip.distributed import MPICommunicator
    {"checks": worker_checks, "fail": worker_fail}[sys.argv[1]](MPICommunicator(), *sys.argv[2:])
