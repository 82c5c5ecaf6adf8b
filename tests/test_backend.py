"""The backend: device resolution, array conversion, default dtype and the seeded generators."""

import json

import numpy as np
import pytest

import tinyclip
from tinyclip import backend
from tinyclip import functional as F
from tinyclip.tensor import Tensor


# ---------------------------------------------------------------------------
# device resolution
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["cpu", "CPU", "Cpu"])
def test_env_cpu_gives_numpy(monkeypatch, value):
    monkeypatch.setenv("TINYCLIP_DEVICE", value)
    assert backend.resolve_device() == "cpu"
    assert backend.array_module("cpu") is np


def test_env_cpu_sets_default_device_lazily(monkeypatch):
    monkeypatch.setenv("TINYCLIP_DEVICE", "cpu")
    monkeypatch.setitem(backend._state, "device", None)  # forget the cached choice
    assert backend.default_device() == "cpu"
    assert backend.default_xp() is np
    assert Tensor([1.0, 2.0]).device == "cpu"


def test_explicit_argument_beats_environment(monkeypatch):
    monkeypatch.setenv("TINYCLIP_DEVICE", "cuda")
    assert backend.resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("value", ["gpu", "tpu", "cuda:0", "numpy"])
def test_unknown_device_is_a_value_error(monkeypatch, value):
    monkeypatch.setenv("TINYCLIP_DEVICE", value)
    with pytest.raises(ValueError, match="unknown device") as info:
        backend.resolve_device()
    assert repr(value.lower()) in str(info.value)
    for name in backend.DEVICES:  # the message lists the valid choices
        assert name in str(info.value)
    with pytest.raises(ValueError):
        backend.resolve_device(value)


def test_set_default_device_rejects_unknown(monkeypatch):
    monkeypatch.setitem(backend._state, "device", None)
    with pytest.raises(ValueError):
        backend.set_default_device("quantum")
    assert backend._state["device"] is None  # nothing half-set


def test_cuda_without_cupy_is_a_clear_runtime_error(monkeypatch):
    monkeypatch.setattr(backend, "cupy", None)
    monkeypatch.setenv("TINYCLIP_DEVICE", "cuda")
    assert backend.cuda_available() is False
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        backend.resolve_device()
    with pytest.raises(RuntimeError, match="'cuda' was requested"):
        backend.set_default_device("cuda")


def test_cuda_with_cupy_but_no_device_is_a_clear_runtime_error(monkeypatch):
    class _NoDeviceRuntime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorNoDevice")

    class _FakeCuPy:  # imports fine, but the driver finds no GPU
        class cuda:
            runtime = _NoDeviceRuntime

    monkeypatch.setattr(backend, "cupy", _FakeCuPy)
    assert backend.cuda_available() is False
    with pytest.raises(RuntimeError, match="CuPy sees no CUDA device"):
        backend.resolve_device("cuda")


def test_auto_falls_back_to_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(backend, "cupy", None)
    for value in (None, "", "auto", "AUTO"):
        if value is None:
            monkeypatch.delenv("TINYCLIP_DEVICE", raising=False)
        else:
            monkeypatch.setenv("TINYCLIP_DEVICE", value)
        assert backend.resolve_device() == "cpu"


# ---------------------------------------------------------------------------
# arrays: which module, and moving them
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("thing", [np.zeros(3), np.float32(1.5), 3, 2.5, [1, 2]])
def test_get_array_module_numpy_and_python(thing):
    assert backend.get_array_module(thing) is np
    assert tinyclip.get_array_module(thing) is np


def test_to_numpy_of_numpy_is_not_a_copy():
    a = np.arange(4.0)
    assert backend.to_numpy(a) is a
    assert isinstance(backend.to_numpy([1, 2]), np.ndarray)


def test_to_device_cpu_keeps_numpy_arrays():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = backend.to_device(a, "cpu")
    assert b is a
    assert backend.device_of(b) == "cpu"


def test_tensor_to_cpu_is_identity_on_cpu():
    t = Tensor(np.ones(3), requires_grad=True)
    assert t.to("cpu") is t
    assert t.numpy() is t.data


def test_to_device_cuda_without_gpu_raises(monkeypatch):
    monkeypatch.setattr(backend, "cupy", None)
    with pytest.raises(RuntimeError, match="cuda"):
        backend.to_device(np.zeros(2), "cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        Tensor(np.zeros(2), requires_grad=True).to("cuda")


def test_move_to_device_is_differentiable():
    """The Function behind a cross-device ``to()``, run CPU to CPU: it is recorded and passes the gradient back."""
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = F.move_to_device(x, "cpu")
    assert y.creator is not None and y.device == "cpu"
    (y * y).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="CuPy with a CUDA device is not available")
def test_cupy_round_trip():
    cupy = backend.cupy
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    g = backend.to_device(a, "cuda")
    assert isinstance(g, cupy.ndarray)
    assert backend.get_array_module(g) is cupy
    assert backend.device_of(g) == "cuda"
    assert backend.to_device(g, "cuda") is g  # already there: no copy
    back = backend.to_numpy(g)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)
    x = Tensor(a, requires_grad=True)
    t = x.to("cuda")
    assert t.device == "cuda" and t.xp is cupy and t.requires_grad
    (t * t).sum().backward()  # the move is in the graph: the gradient comes back to the CPU leaf
    assert isinstance(x.grad, np.ndarray)
    np.testing.assert_allclose(x.grad, 2 * a)
    assert t.to("cpu").device == "cpu"


def test_array_module_fixture(xp):
    """Kernels see the right module whichever backend the ``xp`` fixture gives."""
    a = xp.arange(6.0).reshape(2, 3)
    assert backend.get_array_module(a) is xp
    np.testing.assert_array_equal(backend.to_numpy(a), np.arange(6.0).reshape(2, 3))
    rng = backend.get_rng(xp)
    assert backend.get_array_module(rng.standard_normal(3)) is xp


# ---------------------------------------------------------------------------
# default dtype
# ---------------------------------------------------------------------------

def test_default_dtype_is_float32():
    assert backend.default_dtype() is np.float32
    assert Tensor(1.5).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float64, "float64", np.dtype("float64")])
def test_set_default_dtype_switches_new_tensors(dtype):
    tinyclip.set_default_dtype(dtype)
    assert backend.default_dtype() is np.float64
    assert Tensor([1.0, 2.0]).dtype == np.float64
    tinyclip.set_default_dtype(np.float32)
    assert Tensor([1.0, 2.0]).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "complex64", bool])
def test_set_default_dtype_rejects_others(dtype):
    with pytest.raises(ValueError, match="float32 or float64"):
        backend.set_default_dtype(dtype)
    assert backend.default_dtype() is np.float32


def test_default_dtype_as_restores_even_on_error():
    with backend.default_dtype_as(np.float64):
        assert backend.default_dtype() is np.float64
        assert Tensor(0.5).dtype == np.float64
        with backend.default_dtype_as(np.float32):  # nests
            assert Tensor(0.5).dtype == np.float32
        assert backend.default_dtype() is np.float64
    assert backend.default_dtype() is np.float32
    with pytest.raises(KeyError):
        with backend.default_dtype_as(np.float64):
            raise KeyError("boom")
    assert backend.default_dtype() is np.float32


# ---------------------------------------------------------------------------
# random numbers
# ---------------------------------------------------------------------------

def test_manual_seed_reproduces_the_stream():
    tinyclip.manual_seed(123)
    first = backend.get_rng(np).standard_normal(5)
    more = backend.get_rng(np).standard_normal(5)
    tinyclip.manual_seed(123)
    np.testing.assert_array_equal(backend.get_rng(np).standard_normal(5), first)
    np.testing.assert_array_equal(backend.get_rng(np).standard_normal(5), more)
    assert not np.array_equal(first, more)  # one generator, advancing


def test_different_seeds_differ():
    tinyclip.manual_seed(1)
    a = backend.get_rng(np).random(8)
    tinyclip.manual_seed(2)
    b = backend.get_rng(np).random(8)
    assert not np.array_equal(a, b)


def test_get_rng_defaults_to_default_device_module(monkeypatch):
    monkeypatch.setitem(backend._state, "device", "cpu")
    assert backend.get_rng() is backend.get_rng(np)


def test_rng_state_round_trip_is_exact_and_json_serialisable():
    tinyclip.manual_seed(7)
    backend.get_rng(np).random(3)  # advance a little
    state = backend.rng_state()
    saved = json.loads(json.dumps(state))  # survives a checkpoint file
    expected = backend.get_rng(np).standard_normal(10)
    backend.get_rng(np).standard_normal(100)  # wander off
    backend.set_rng_state(saved)
    np.testing.assert_array_equal(backend.get_rng(np).standard_normal(10), expected)


def test_rng_state_restores_into_a_fresh_session():
    tinyclip.manual_seed(5)
    backend.get_rng(np).random(11)
    state = json.loads(json.dumps(backend.rng_state()))
    expected = backend.get_rng(np).random(4)
    tinyclip.manual_seed(999)  # a new process would start from some other seed
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.get_rng(np).random(4), expected)


# ---------------------------------------------------------------------------
# scatter_add: repeated indices add up
# ---------------------------------------------------------------------------

def test_scatter_add_repeated_indices(xp):
    target = xp.zeros(4)
    backend.scatter_add(target, xp.asarray([0, 2, 2, 2]), xp.asarray([1.0, 1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(backend.to_numpy(target), [1.0, 0.0, 6.0, 0.0])


# ---------------------------------------------------------------------------
# the CPU allocator
# ---------------------------------------------------------------------------

def test_keep_freed_memory_applies_on_glibc_unless_the_user_tuned_malloc(monkeypatch):
    import platform
    for name in backend._MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    assert backend.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")  # glibc accepted both values
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert backend.keep_freed_memory() is False  # the user's own setting wins
