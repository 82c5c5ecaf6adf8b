"""tinyclip: a from-scratch, readable NumPy/CuPy CLIP for medical images and captions."""

from . import backend, functional, nn, optim
from .backend import (get_array_module, manual_seed, set_default_device, set_default_dtype, to_device,
                      to_numpy)
from .gradcheck import GradcheckError, gradcheck
from .tensor import Function, Tensor, is_grad_enabled, no_grad

__version__ = "0.1.0"
