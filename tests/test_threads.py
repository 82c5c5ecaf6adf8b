"""tinyclip.threads: shares of a list on a thread pool, BLAS single-threaded inside."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from tinyclip import Tensor, threads
from tinyclip.functional.conv import conv2d


@pytest.fixture
def two_workers(monkeypatch):
    """threads set up for 2 workers, whatever this machine's BLAS has."""
    state = threads._setup()
    pool = ThreadPoolExecutor(2, thread_name_prefix="tinyclip")
    monkeypatch.setattr(threads, "_state", {**state, "workers": 2, "pool": pool})
    yield
    pool.shutdown()


def blas_threads() -> int:
    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


def test_shares_cover_every_item_once_in_a_fixed_order(two_workers):
    seen = []

    def fn(share):
        seen.append((threading.current_thread().name, blas_threads()))
        return share

    assert threads.map_shares(fn, list(range(7))) == [[0, 2, 4, 6], [1, 3, 5]]
    assert all(name.startswith("tinyclip") and n == 1 for name, n in seen)  # BLAS on one thread inside
    assert threads.map_shares(fn, [5]) == [[5]]  # one item: no pool
    assert threads.map_shares(fn, []) == [[]]


def test_no_pool_inside_the_pool(two_workers):
    inner = threads.map_shares(lambda share: threads.map_shares(lambda s: s, share), [1, 2, 3])
    assert inner == [[[1, 3]], [[2]]]


def test_an_error_in_a_share_is_raised_and_blas_gets_its_threads_back(two_workers):
    before = blas_threads()

    def fn(share):
        raise ValueError("bad share")

    with pytest.raises(ValueError, match="bad share"):
        threads.map_shares(fn, [1, 2])
    assert blas_threads() == before


@pytest.mark.parametrize("channels_last", [True, False])
def test_conv2d_on_two_threads_equals_one_thread(monkeypatch, two_workers, channels_last):
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((5, 6, 7, 3) if channels_last else (5, 3, 6, 7))
    w0, b0 = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    monkeypatch.setattr(threads, "CHUNK_BYTES", 6 * 7 * 27 * 8)  # one image per chunk: 5 chunks, 2 shares
    results = []
    for workers in (2, 1):
        monkeypatch.setitem(threads._state, "workers", workers)
        x, w, b = (Tensor(a, requires_grad=True) for a in (x0, w0, b0))
        y = conv2d(x, w, b, padding=1, channels_last=channels_last)
        (y * y).sum().backward()
        results.append([y.data, x.grad, w.grad, b.grad])
    for two, one in zip(*results):
        np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [True, False])
def test_max_pool_on_two_threads_equals_one_thread(monkeypatch, two_workers, channels_last):
    from tinyclip.functional.conv import max_pool2d
    rng = np.random.default_rng(6)
    x0 = rng.standard_normal((5, 6, 7, 3) if channels_last else (5, 3, 6, 7))
    x0[0, 0, 0] = x0[0, 0, 1] = 9.0  # a tie: exactly one element gets the gradient either way
    gy = rng.standard_normal((5, 3, 3, 3))
    monkeypatch.setattr(threads, "CHUNK_BYTES", x0[:1].nbytes)  # one image per chunk
    results = []
    for workers in (2, 1):
        monkeypatch.setitem(threads._state, "workers", workers)
        x = Tensor(x0, requires_grad=True)
        y = max_pool2d(x, 2, channels_last=channels_last)
        y.backward(gy if channels_last else gy.transpose(0, 3, 1, 2))
        results.append([y.data, x.grad])
    for two, one in zip(*results):
        np.testing.assert_array_equal(two, one)
