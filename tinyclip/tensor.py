"""The Tensor and its graph: reverse-mode automatic differentiation.

A ``Tensor`` wraps an array (``.data``, NumPy or CuPy). Every operation on tensors
is a ``Function``: its ``forward`` computes output arrays from input arrays, and
its ``backward`` turns the gradient of the loss with respect to the outputs into
the gradients with respect to the inputs (the chain rule, one op at a time).

When any input requires a gradient, calling a function records it as the
``creator`` of its outputs. ``loss.backward()`` then walks these records from the
loss back to the leaves:

    x ──► Mul ──► y ──► Sum ──► loss          forward: left to right
    x.grad ◄── Mul.backward ◄── Sum.backward  backward: right to left

The walk is a loop over a heap ordered by *generation* (a function's depth from the
leaves), not a recursion, so a chain of 10,000 ops is fine. A function is visited
only after every function that consumed its outputs, so each gradient is complete
(summed over all uses) before it is passed on. Once a function has passed its
gradients on, it drops the arrays it saved for backward, so memory is released as
the walk proceeds (``retain_graph=True`` keeps them for a second backward).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools

import numpy

from . import backend

# ---------------------------------------------------------------------------
# grad mode
# ---------------------------------------------------------------------------

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Within this block no graph is recorded: for evaluation, and for optimizer updates."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


# ---------------------------------------------------------------------------
# Function: one differentiable operation
# ---------------------------------------------------------------------------

_call_order = itertools.count()


class Function:
    """Base class of every op. Subclasses implement ``forward`` and ``backward`` on raw arrays.

    ``forward(*arrays)`` returns one array or a tuple of arrays and may save on
    ``self`` whatever ``backward`` needs. ``backward(*grads)`` receives one gradient
    per output (``None`` never: unused outputs get zeros) and returns one gradient per
    input, or ``None`` for inputs that need none (see ``self.needs_input_grad``).
    Non-tensor settings (stride, axis, ...) go to ``__init__``.
    """

    def __call__(self, *inputs):
        tensors = [as_tensor(x) for x in inputs]
        self.needs_input_grad = tuple(t.requires_grad for t in tensors)
        outputs = self.forward(*(t.data for t in tensors))
        single = not isinstance(outputs, tuple)
        outputs = (outputs,) if single else outputs
        record = _grad_enabled and any(self.needs_input_grad)
        results = tuple(Tensor(y, requires_grad=record) for y in outputs)
        if record:
            self.inputs = tensors
            self.generation = max(t._generation for t in tensors)
            self.output_meta = [(y.shape, y.dtype) for y in outputs]
            for index, result in enumerate(results):
                result.creator = self
                result._output_index = index
                result._generation = self.generation + 1
        else:
            # Nothing will call backward: drop whatever forward saved.
            self.__dict__.clear()
        return results[0] if single else results

    def forward(self, *xs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *grads):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


# ---------------------------------------------------------------------------
# Tensor
# ---------------------------------------------------------------------------

class Tensor:
    """An array that remembers how it was computed, so gradients can flow back to it.

    ``Tensor(data, requires_grad=False, dtype=None)``: ``data`` may be a NumPy/CuPy
    array (kept as is, no copy), a Python number or a nested list. Python floats
    become the default dtype (float32 unless changed); integers stay integers.
    """

    __array_priority__ = 1000  # so ndarray + Tensor defers to Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        xp = backend.get_array_module(data)
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            xp = backend.default_xp()
            data = xp.asarray(data)
            if dtype is None and data.dtype.kind == "f":
                dtype = backend.default_dtype()
        elif not isinstance(data, xp.ndarray):  # a NumPy scalar
            data = xp.asarray(data)
        if dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self.name = None
        self._output_index = 0
        self._generation = 0
        self._retain_grad = False

    # ----- basic properties -------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def xp(self):
        return backend.get_array_module(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        body = repr(backend.to_numpy(self.data)).replace("array(", "tensor(", 1)
        extra = ", requires_grad=True" if self.requires_grad else ""
        return body[:-1] + extra + ")" if extra else body

    def numpy(self):
        """The data as a NumPy array (copied from the GPU if needed)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, device: str) -> "Tensor":
        """A copy on ``cpu`` or ``cuda`` (the same tensor when already there).

        The copy stays in the graph: its gradient moves back to this tensor's device.
        """
        if backend.resolve_device(device) == self.device:
            return self
        return F.move_to_device(self, device)

    def astype(self, dtype) -> "Tensor":
        return F.cast(self, dtype)

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor too (leaves always keep theirs)."""
        self._retain_grad = True

    def zero_grad(self) -> None:
        self.grad = None

    # ----- backward ---------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` (the gradient of the loss with respect to ``self``) may be left out
        only for a one-element tensor, where it is 1, as in PyTorch. Gradients add up
        over calls: clear them with ``zero_grad``. Without ``retain_graph`` the graph's
        saved arrays are freed as the walk passes, and a second backward through the
        same graph is an error.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without grad needs a one-element tensor, got shape {self.shape}: "
                                   "pass grad= (the gradient of the loss with respect to this tensor)")
            grad = xp.ones(self.shape, dtype=self.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad shape {grad.shape} != tensor shape {self.shape}")
        if self.creator is None:
            _accumulate(self, grad)
            return

        pending = {}  # function -> list of gradients of its outputs (None until one arrives)
        heap = []

        def send(tensor, g):
            if tensor._retain_grad or tensor.creator is None:
                _accumulate(tensor, g)
            fn = tensor.creator
            if fn is None:
                return
            if fn not in pending:
                # Every function enters the walk here, once, so this one check covers the graph.
                if getattr(fn, "inputs", None) is None:  # freed by an earlier backward
                    raise RuntimeError(_FREED)
                pending[fn] = [None] * len(fn.output_meta)
                heapq.heappush(heap, (-fn.generation, next(_call_order), fn))
            slot = pending[fn]
            i = tensor._output_index
            slot[i] = g if slot[i] is None else slot[i] + g

        send(self, grad)
        while heap:
            _, _, fn = heapq.heappop(heap)
            inputs = fn.inputs
            out_grads = [
                g if g is not None else xp.zeros(shape, dtype=dtype)
                for g, (shape, dtype) in zip(pending.pop(fn), fn.output_meta)
            ]
            in_grads = fn.backward(*out_grads)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) != len(inputs):
                raise RuntimeError(f"{fn!r}.backward returned {len(in_grads)} grads for {len(inputs)} inputs")
            if not retain_graph:
                fn.__dict__.clear()  # free saved arrays and the links to the inputs
            for tensor, g in zip(inputs, in_grads):
                if g is None or not tensor.requires_grad:
                    continue
                if g.shape != tensor.shape:
                    raise RuntimeError(f"{fn!r}.backward: grad shape {g.shape} != input shape {tensor.shape}")
                send(tensor, g)

    # ----- operators (the ops themselves live in tinyclip.functional) --------
    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.sub(self, other)

    def __rsub__(self, other):
        return F.sub(other, self)

    def __mul__(self, other):
        return F.mul(self, other)

    def __rmul__(self, other):
        return F.mul(other, self)

    def __truediv__(self, other):
        return F.div(self, other)

    def __rtruediv__(self, other):
        return F.div(other, self)

    def __matmul__(self, other):
        return F.matmul(self, other)

    def __rmatmul__(self, other):
        return F.matmul(other, self)

    def __pow__(self, exponent):
        return F.pow(self, exponent)

    def __neg__(self):
        return F.neg(self)

    def __getitem__(self, index):
        return F.getitem(self, index)

    # ----- methods mirroring the functional API ----------------------------
    def reshape(self, *shape):
        return F.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def transpose(self, *axes):
        return F.transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))

    permute = transpose

    @property
    def T(self):
        return F.transpose(self)

    def sum(self, axis=None, keepdims=False):
        return F.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return F.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return F.max(self, axis, keepdims)

    def var(self, axis=None, keepdims=False):
        return F.var(self, axis, keepdims)

    def exp(self):
        return F.exp(self)

    def log(self):
        return F.log(self)

    def sqrt(self):
        return F.sqrt(self)

    def tanh(self):
        return F.tanh(self)

    def sigmoid(self):
        return F.sigmoid(self)

    def relu(self):
        return F.relu(self)

    def gelu(self):
        return F.gelu(self)


_FREED = ("the graph behind this tensor was already freed by an earlier backward(); "
          "call backward(retain_graph=True) the first time to walk it twice")


def _accumulate(tensor: Tensor, grad) -> None:
    # An op may hand one gradient array to several inputs (Add does), so a leaf's .grad
    # starts as its own copy: optimizers and clipping may then change it in place.
    tensor.grad = grad.copy() if tensor.grad is None else tensor.grad + grad


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """``x`` as a Tensor; numbers take the dtype of ``like`` so float32 stays float32.

    A NumPy scalar (``np.sqrt(d)`` is a float64) counts as a number too, and a float
    next to an integer tensor becomes the default float dtype rather than being truncated.
    A raw float array takes ``like``'s float dtype as well.
    """
    if isinstance(x, Tensor):
        return x
    if like is not None and isinstance(x, numpy.generic):
        x = x.item()
    if like is not None and not hasattr(x, "dtype"):
        dtype = like.dtype
        if dtype.kind in "biu" and isinstance(x, float):
            dtype = backend.default_dtype()
        return Tensor(like.xp.asarray(x, dtype=dtype))
    if like is not None and x.dtype.kind == "f" and like.dtype.kind == "f" and x.dtype != like.dtype:
        x = x.astype(like.dtype)  # a float64 array next to a float32 tensor would make the graph float64
    return Tensor(x)


from . import functional as F  # noqa: E402  (functional imports Function/Tensor from here)
