"""tinyclip: a from-scratch, readable NumPy/CuPy CLIP for medical images and captions."""

import os

# OpenBLAS's idle threads spin for ≈ 2^28 cycles after each product before they sleep, competing
# with tinyclip's own threads (threads.py); 1 lets them sleep at once (reference step, 3 alternating
# pairs: 962–1191 → 867–1011 ms). OpenBLAS reads it when NumPy loads: it acts when tinyclip is
# imported first (the command-line tools), a value already set wins, and child processes inherit it.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

from . import backend, functional, nn, optim

backend.keep_freed_memory()  # glibc: reuse freed arrays instead of page-faulting on fresh ones (see there)
from .backend import (get_array_module, manual_seed, set_default_device, set_default_dtype, to_device,
                      to_numpy)
from .gradcheck import GradcheckError, gradcheck
from .tensor import Function, Tensor, is_grad_enabled, no_grad

__version__ = "0.1.0"
