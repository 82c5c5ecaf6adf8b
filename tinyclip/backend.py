"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

Every kernel is written against an array module ``xp`` that has NumPy's API. Which
module that is gets decided once, here, from the environment variable
``TINYCLIP_DEVICE``:

- ``cpu``: NumPy, always.
- ``cuda``: CuPy; a clear error if CuPy is missing or sees no GPU.
- ``auto`` (the default): CuPy when it imports and sees a GPU, else NumPy.

Code that holds an array asks ``get_array_module(array)`` rather than assuming,
so one kernel serves both devices. The module also owns the default float dtype
(float32 for speed, float64 for gradient checks) and one seeded random generator
per device, used by dropout and the initialisers, so runs are reproducible.
"""

from __future__ import annotations

import contextlib
import os

import numpy

try:  # CuPy is the optional `gpu` extra.
    import cupy
except Exception:  # ImportError, or a broken CUDA install
    cupy = None

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def resolve_device(device: str | None = None) -> str:
    """Map ``auto``/``cpu``/``cuda`` (default: $TINYCLIP_DEVICE or ``auto``) to ``cpu`` or ``cuda``."""
    device = (device or os.environ.get("TINYCLIP_DEVICE") or "auto").lower()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        reason = "CuPy is not installed (pip install 'tinyclip[gpu]')" if cupy is None else "CuPy sees no CUDA device"
        raise RuntimeError(f"device 'cuda' was requested but {reason}")
    return device


def array_module(device: str) -> object:
    """The array module of a resolved device name: numpy for ``cpu``, cupy for ``cuda``."""
    return cupy if resolve_device(device) == "cuda" else numpy


_state = {"device": None, "dtype": numpy.float32, "rngs": {}, "seed": None}


def default_device() -> str:
    """The device new tensors and models land on (resolved lazily from $TINYCLIP_DEVICE)."""
    if _state["device"] is None:
        _state["device"] = resolve_device()
    return _state["device"]


def set_default_device(device: str) -> None:
    """Choose where new tensors live: ``auto``, ``cpu`` or ``cuda``."""
    _state["device"] = resolve_device(device)


def default_xp():
    """The array module of the default device."""
    return cupy if default_device() == "cuda" else numpy


def get_array_module(array):
    """numpy or cupy, whichever owns ``array`` (numpy for Python scalars and lists)."""
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy
    return numpy


def to_numpy(array) -> numpy.ndarray:
    """A NumPy copy (or view) of a NumPy or CuPy array."""
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy.asnumpy(array)
    return numpy.asarray(array)


def to_device(array, device: str):
    """``array`` on ``cpu`` (NumPy) or ``cuda`` (CuPy); no copy when it is already there."""
    if resolve_device(device) == "cuda":
        return cupy.asarray(array)
    return to_numpy(array)


def device_of(array) -> str:
    return "cuda" if get_array_module(array) is not numpy else "cpu"


# ---------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------

def default_dtype():
    """The float dtype for new tensors and parameters (float32 unless changed)."""
    return _state["dtype"]


def set_default_dtype(dtype) -> None:
    dtype = numpy.dtype(dtype)
    if dtype not in (numpy.float32, numpy.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _state["dtype"] = dtype.type


@contextlib.contextmanager
def default_dtype_as(dtype):
    """Temporarily use another default dtype (gradient checks run in float64)."""
    old = _state["dtype"]
    set_default_dtype(dtype)
    try:
        yield
    finally:
        _state["dtype"] = old


# ---------------------------------------------------------------------------
# random numbers
# ---------------------------------------------------------------------------

def manual_seed(seed: int) -> None:
    """Reseed the generators of every device, so dropout and initialisers repeat exactly."""
    _state["seed"] = int(seed)
    _state["rngs"] = {}


def get_rng(xp=None):
    """The seeded generator of ``xp`` (default: the default device's module)."""
    xp = xp or default_xp()
    rng = _state["rngs"].get(xp.__name__)
    if rng is None:
        rng = xp.random.default_rng(_state["seed"])
        _state["rngs"][xp.__name__] = rng
    return rng


def rng_state() -> dict:
    """The NumPy generator's state, JSON-serialisable, for exact resume of training."""
    return get_rng(numpy).bit_generator.state


def set_rng_state(state: dict) -> None:
    get_rng(numpy).bit_generator.state = state


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` where repeated indices add up (NumPy's ``add.at``, CuPy's ``scatter_add``)."""
    if get_array_module(target) is numpy:
        numpy.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: blocks up to 32 MiB from its heap, no trimming.

    A training step frees and reallocates the same arrays every time. By default glibc maps large
    blocks afresh (mmap) and hands freed memory straight back to the OS, so each step page-faults on
    every 4 KiB it touches again (reference step, 2 alternating pairs: 868–880 → 774–818 ms; peak RSS
    unchanged). Both settings are needed: either alone measured no gain. Returns whether it applied:
    not outside glibc, and not when the user set any ``MALLOC_*`` tuning variable (theirs wins).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in _MALLOC_ENV):
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
