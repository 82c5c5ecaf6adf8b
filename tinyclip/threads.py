"""Independent parts of an op on every CPU core: a thread pool whose threads run BLAS on one thread.

NumPy releases the GIL in its copy and ufunc loops and in BLAS, so Python threads run NumPy code
in parallel. OpenBLAS's own threads help only inside large products, and they hand work over
badly when the machine is busy; an op made of copies and mid-size products (conv2d, a few
images at a time) runs ≈ 2× faster on 2 cores as one share of the images per thread, each thread
calling BLAS single-threaded (benchmarks/README.md). As many threads as BLAS has, so a run told
to use one thread (``OPENBLAS_NUM_THREADS=1``, one MPI rank per core) stays on one core.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

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
