"""Parameter, Buffer and Module: the containers that layers and models are built from.

A ``Module`` holds ``Parameter``s (tensors an optimizer updates), ``Buffer``s (state it
keeps but does not learn, such as batch norm's running statistics) and other modules.
Nothing has to be declared: assigning an attribute registers it, and the order of
assignment is the order of ``parameters()``:

    class Block(Module):
        def __init__(self):
            super().__init__()
            self.norm = LayerNorm(64)          # a submodule, named "norm"
            self.proj = Linear(64, 64)         # parameters "proj.weight", "proj.bias"

The registry is the instance ``__dict__`` itself (Python keeps it in insertion
order): ``named_parameters`` walks it and picks out the Parameters and Modules,
``named_buffers`` the Buffers, and ``state_dict`` both.
``evaluate_in_batches`` is the one inference loop: eval mode, no graph, batch by batch.
``__setattr__`` only guards against the classic silent bug, a plain list of layers
(its parameters would never reach the optimizer): use ``ModuleList`` for those.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from .. import backend
from ..tensor import Tensor, no_grad


def _float_default(data, dtype):
    """(array data, dtype): float arrays get ``backend.default_dtype()`` unless ``dtype`` is given."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is None and getattr(data, "dtype", None) is not None and data.dtype.kind == "f":
        dtype = backend.default_dtype()
    return data, dtype


class Parameter(Tensor):
    """A tensor that a model learns: always ``requires_grad``; floats in the default dtype.

    ``Parameter(data)``: ``data`` an array, Tensor, number or list. Float data is
    cast to ``backend.default_dtype()`` unless ``dtype`` is given.
    """

    def __init__(self, data, dtype=None):
        data, dtype = _float_default(data, dtype)
        super().__init__(data, requires_grad=True, dtype=dtype)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class Buffer(Tensor):
    """A tensor a module keeps but does not learn: saved by ``state_dict``, moved by ``to``, never
    given to an optimizer, never ``requires_grad``. Floats in the default dtype, as Parameter.
    """

    def __init__(self, data, dtype=None):
        data, dtype = _float_default(data, dtype)
        super().__init__(data, requires_grad=False, dtype=dtype)

    def __repr__(self) -> str:
        return "Buffer containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of layers and models: subclasses set attributes in ``__init__`` and define ``forward``."""

    training = True  # also a class default, so a subclass that forgets super().__init__() still works

    def __init__(self):
        self.training = True

    def __setattr__(self, name, value):
        if isinstance(value, (list, tuple)) and any(isinstance(v, (Module, Parameter)) for v in value):
            raise TypeError(
                f"{type(self).__name__}.{name}: a plain {type(value).__name__} of modules/parameters is not "
                f"registered (its parameters would never be trained); wrap it in ModuleList(...)")
        object.__setattr__(self, name, value)

    # ----- forward ------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ----- walking the tree ---------------------------------------------------
    def named_children(self):
        """(name, module) for the direct submodules, in assignment order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module ("") and every descendant, depth first."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            kids = [(f"{name}.{n}" if name else n, m) for n, m in module.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def _named_tensors(self, kinds: tuple, prefix: str = "", _seen=None):
        """(dotted name, tensor) for the tensors of the given classes, in assignment order, depth first.

        A tensor or module reachable twice (shared) is listed once, under its first name.
        """
        seen = set() if _seen is None else _seen
        for name, value in vars(self).items():
            if id(value) in seen or not isinstance(value, (*kinds, Module)):
                continue
            seen.add(id(value))
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(value, Module):
                yield from value._named_tensors(kinds, full, seen)
            else:
                yield full, value

    def named_parameters(self, prefix: str = ""):
        """(dotted name, parameter) in assignment order, e.g. ``blocks.0.attn.q_proj.weight``."""
        return self._named_tensors((Parameter,), prefix)

    def parameters(self):
        for _, param in self.named_parameters():
            yield param

    def named_buffers(self, prefix: str = ""):
        """(dotted name, buffer) in assignment order, e.g. ``blocks.0.bn1.running_mean``."""
        return self._named_tensors((Buffer,), prefix)

    def buffers(self):
        for _, buffer in self.named_buffers():
            yield buffer

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ----- modes, gradients, devices -----------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set ``training`` on this module and all below it (dropout reads it)."""
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for param in self.parameters():
            param.grad = None

    def to(self, device: str) -> "Module":
        """Move every parameter (and its gradient), buffer and plain Tensor attribute to ``device``, in place.

        The Parameter objects stay the same, so an optimizer built before the move still holds them.
        """
        for module in self.modules():
            for value in vars(module).values():
                if isinstance(value, Tensor):
                    value.data = backend.to_device(value.data, device)
                    if value.grad is not None:
                        value.grad = backend.to_device(value.grad, device)
        return self

    # ----- saving and loading -------------------------------------------------
    def state_dict(self) -> dict:
        """{dotted name: NumPy copy of the parameter or buffer}, in assignment order.

        A module without buffers gives exactly the ``named_parameters`` (older checkpoints load).
        """
        state = {}
        for name, param in self._named_tensors((Parameter, Buffer)):
            array = backend.to_numpy(param.data)
            state[name] = array.copy() if array is param.data else array
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy ``state``'s arrays into the existing parameters and buffers (keeping their device and dtype).

        Raises ``KeyError`` listing missing and unexpected names (when ``strict``) and
        ``ValueError`` listing shape mismatches (always). Nothing is copied when it raises.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        params = dict(self._named_tensors((Parameter, Buffer)))
        missing = [name for name in params if name not in state]
        unexpected = [name for name in state if name not in params]
        if strict and (missing or unexpected):
            lines = [f"load_state_dict for {type(self).__name__}:"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            raise KeyError("\n".join(lines))
        values = {}
        mismatched = []
        for name, param in params.items():
            if name not in state:
                continue
            value = state[name]
            value = value.data if isinstance(value, Tensor) else value
            if tuple(value.shape) != param.shape:
                mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs model {param.shape}")
            values[name] = value
        if mismatched:
            raise ValueError(f"load_state_dict for {type(self).__name__}: {len(mismatched)} shape "
                             f"mismatch(es):\n  " + "\n  ".join(mismatched))
        for name, value in values.items():
            param = params[name]
            # In place: the Parameter objects (held by optimizers) stay the same.
            param.data[...] = backend.to_device(value, param.device)
        return IncompatibleKeys(missing, unexpected)

    # ----- printing -----------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not kids:
            return head + ")"
        lines = [head]
        for name, module in kids:
            body = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def evaluate_in_batches(module: Module, compute, n: int, batch_size: int, empty_shape=(0,)) -> np.ndarray:
    """``compute(s)`` for the slices ``s`` = 0:b, b:2b, ... of ``range(n)``, concatenated as one NumPy array.

    ``compute(s)``: an array or Tensor ``(rows, ...)`` (a scalar is one row), run with ``module``
    in eval mode and no graph recorded; the module's mode is put back afterwards, also when
    ``compute`` raises. ``n = 0``: ``np.zeros(empty_shape, float32)``.
    """
    was_training = module.training
    module.eval()
    try:
        with no_grad():
            parts = []
            for start in range(0, n, batch_size):
                value = compute(slice(start, start + batch_size))
                parts.append(np.atleast_1d(backend.to_numpy(value.data if isinstance(value, Tensor) else value)))
    finally:
        module.train(was_training)
    return np.concatenate(parts) if parts else np.zeros(empty_shape, np.float32)


class ModuleList(Module):
    """A list of modules, registered under the names "0", "1", ... (``blocks.3.attn...``)."""

    def __init__(self, modules=()):
        super().__init__()
        self._length = 0
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(self._length), module)
        self._length += 1
        return self

    def extend(self, modules) -> "ModuleList":
        for module in modules:
            self.append(module)
        return self

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        return (getattr(self, str(i)) for i in range(self._length))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModuleList(list(self)[index])
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self._length}")
        return getattr(self, str(index % self._length))


class Sequential(ModuleList):
    """``Sequential(a, b, c)(x) == c(b(a(x)))``; parameters named ``0.weight``, ``1.weight``, ..."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x

