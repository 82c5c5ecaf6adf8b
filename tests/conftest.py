"""Shared fixtures: the array backends to test on, and a clean random/dtype state per test."""

import numpy
import pytest

import tinyclip
from tinyclip import backend


@pytest.fixture(params=[
    "numpy",
    pytest.param("cupy", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not backend.cuda_available(), reason="CuPy with a CUDA device is not available"),
    ]),
])
def xp(request):
    """The array module to run a test on: NumPy always, CuPy when a GPU is there."""
    return numpy if request.param == "numpy" else backend.cupy


@pytest.fixture(autouse=True)
def _reset_global_state():
    """Every test starts seeded at 0 with float32 as the default dtype, and leaves it so."""
    tinyclip.manual_seed(0)
    backend.set_default_dtype(numpy.float32)
    yield
    tinyclip.manual_seed(0)
    backend.set_default_dtype(numpy.float32)
