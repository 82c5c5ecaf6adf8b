"""Independent parts of an op on every CPU core: a batch in cache-sized chunks, shared out to a
thread pool whose threads run BLAS on one thread.

NumPy releases the GIL in its copy and ufunc loops and in BLAS, so Python threads run NumPy code
in parallel. OpenBLAS's own threads help only inside large products, and they hand work over
badly when the machine is busy; an op made of copies and mid-size products (conv2d, a few
images at a time) runs ≈ 2× faster on 2 cores as one share of the images per thread, each thread
calling BLAS single-threaded (benchmarks/README.md). As many threads as BLAS has, so a run told
to use one thread (``OPENBLAS_NUM_THREADS=1``, one MPI rank per core) stays on one core.

Used by the image tower's ops (conv2d, max_pool2d), whose calls run for milliseconds. Not by the
text tower's: its calls are sub-millisecond, and the pool's threads would wait on each other for
the GIL between them (measured: the text tower step 356-397 ms without, 433-520 ms with attention
and layer norm shared out); its products keep OpenBLAS's own threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

# How much of an op's work (its biggest per-item array: conv2d's patch matrix, max-pool's input)
# one chunk of the batch holds. The whole batch's patch matrix is ≈ 150 MB at the reference sizes;
# ≈ 3 MB of it stays in the cache from im2col through the product and back, which alone makes
# conv2d ≈ 1.5× faster on one thread. CuPy takes the whole batch at once: a GPU wants few, large kernels.
CHUNK_BYTES = 3 << 20

_lock = threading.Lock()
_region = threading.Lock()
_state: dict = {}  # the BLAS controller and the pool, made on first use


def _setup() -> dict:
    with _lock:
        if not _state:
            controller = ThreadpoolController()
            blas = [lib.num_threads for lib in controller.lib_controllers if lib.user_api == "blas"]
            _state["controller"] = controller
            _state["workers"] = n = max(blas, default=1)
            _state["pool"] = ThreadPoolExecutor(n, thread_name_prefix="tinyclip") if n > 1 else None
    return _state


def workers() -> int:
    """How many threads ``map_shares`` uses: BLAS's thread count when tinyclip first ran in parallel."""
    return _setup()["workers"]


def map_shares(fn, items: list) -> list:
    """``[fn(share) for share in shares]``: items dealt round-robin into one share per thread.

    The shares run at once, BLAS on one thread inside each; ``fn`` must write only its own
    items' outputs. The result order is the shares' order, whatever finishes first, so a sum
    over the results is the same number from run to run.
    """
    state = _setup()
    n = min(state["workers"], len(items))
    if n <= 1 or threading.current_thread().name.startswith("tinyclip"):  # no pool inside the pool
        return [fn(items)]
    # One parallel region at a time (say, two server threads): the BLAS limit is process-wide, and
    # two regions entering and leaving it out of order could leave BLAS on one thread for good.
    with _region, state["controller"].limit(limits=1, user_api="blas"):
        return list(state["pool"].map(fn, [items[k::n] for k in range(n)]))


def batch_chunks(xp, n: int, bytes_per_item: int) -> list:
    """Slices of a batch of n items, each about CHUNK_BYTES of work and at least one per thread
    (one slice on a GPU)."""
    step = n
    if xp.__name__ == "numpy":
        step = max(1, min(CHUNK_BYTES // max(bytes_per_item, 1), -(-n // workers())))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def over_batch(xp, share_fn, n: int, bytes_per_item: int) -> list:
    """share_fn(list of batch slices) over the chunks of a batch: on NumPy one share per CPU thread."""
    chunks = batch_chunks(xp, n, bytes_per_item)
    return map_shares(share_fn, chunks) if xp.__name__ == "numpy" else [share_fn(chunks)]
