"""Every op on every available backend: gradcheck there, and the same values and gradients as NumPy.

The other op tests explore shapes and values on NumPy; this file runs each op once more on each
backend of the ``xp`` fixture (CuPy only where a GPU is present), so a kernel that only works on
NumPy is caught.
"""

import numpy as np
import pytest

import tinyclip
import tinyclip.functional as F
from tinyclip import Tensor, backend, gradcheck


def _mask(n, length):
    mask = np.zeros((n, length), dtype=bool)
    mask[0, -2:] = True  # some padded keys
    return mask


# name -> (fn taking xp-side constants, float input shapes, positive inputs?, constants as NumPy arrays)
CASES = {
    "add": (lambda c: lambda a, b: a + b, [(3, 4), (4,)], False, {}),
    "sub": (lambda c: lambda a, b: a - b, [(2, 1, 3), (4, 3)], False, {}),
    "mul": (lambda c: lambda a, b: a * b, [(3, 4), (3, 1)], False, {}),
    "div": (lambda c: lambda a, b: a / b, [(3, 4), (4,)], True, {}),
    "pow": (lambda c: lambda a: a ** 3, [(5,)], False, {}),
    "matmul": (lambda c: lambda a, b: a @ b, [(2, 3, 4), (4, 5)], False, {}),
    "linear": (lambda c: lambda x, w, b: F.linear(x, w, b), [(2, 3, 4), (4, 5), (5,)], False, {}),
    "exp": (lambda c: F.exp, [(3, 4)], False, {}),
    "log": (lambda c: F.log, [(3, 4)], True, {}),
    "sqrt": (lambda c: F.sqrt, [(3, 4)], True, {}),
    "tanh": (lambda c: F.tanh, [(3, 4)], False, {}),
    "sigmoid": (lambda c: F.sigmoid, [(3, 4)], False, {}),
    "relu": (lambda c: F.relu, [(3, 4)], True, {}),
    "gelu": (lambda c: F.gelu, [(3, 4)], False, {}),
    "reshape": (lambda c: lambda a: a.reshape(4, 3), [(3, 4)], False, {}),
    "transpose": (lambda c: lambda a: a.transpose(2, 0, 1), [(2, 3, 4)], False, {}),
    "getitem": (lambda c: lambda a: a[c["index"], 1:3], [(3, 4)], False, {"index": np.array([0, 0, 2])}),
    "concatenate": (lambda c: lambda a, b: F.concatenate([a, b], axis=1), [(2, 3), (2, 2)], False, {}),
    "stack": (lambda c: lambda a, b: F.stack([a, b], axis=0), [(2, 3), (2, 3)], False, {}),
    "split": (lambda c: lambda a: F.split(a, [1], axis=1)[1], [(2, 3)], False, {}),
    "sum": (lambda c: lambda a: a.sum(axis=1), [(3, 4)], False, {}),
    "mean": (lambda c: lambda a: a.mean(axis=(0, 2), keepdims=True), [(2, 3, 4)], False, {}),
    "max": (lambda c: lambda a: a.max(axis=-1), [(3, 4)], False, {}),
    "var": (lambda c: lambda a: a.var(axis=0), [(3, 4)], False, {}),
    "conv2d": (lambda c: lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [(2, 3, 5, 5), (4, 3, 3, 3), (4,)],
               False, {}),
    "conv2d channels-last": (lambda c: lambda x, w: F.conv2d(x, w, padding=1, channels_last=True),
                             [(1, 5, 4, 2), (3, 2, 3, 3)], False, {}),
    "max_pool2d": (lambda c: lambda x: F.max_pool2d(x, 2), [(2, 2, 4, 5)], False, {}),
    "layer_norm": (lambda c: F.layer_norm, [(3, 5), (5,), (5,)], False, {}),
    "dropout": (lambda c: lambda x: (tinyclip.manual_seed(1), F.dropout(x, 0.3))[1], [(4, 5)], False, {}),
    "embedding": (lambda c: lambda w: F.embedding(c["ids"], w), [(6, 3)], False, {"ids": np.array([[1, 1, 5], [0, 2, 1]])}),
    "softmax": (lambda c: F.softmax, [(3, 4)], False, {}),
    "log_softmax": (lambda c: F.log_softmax, [(3, 4)], False, {}),
    "cross_entropy": (lambda c: lambda z: F.cross_entropy(z, c["targets"], label_smoothing=0.1), [(3, 4)], False,
                      {"targets": np.array([0, 3, 3])}),
    "binary_cross_entropy_with_logits": (lambda c: lambda z, t: F.binary_cross_entropy_with_logits(z, t),
                                         [(3, 4), (3, 4)], True, {}),
    "scaled_dot_product_attention": (
        lambda c: lambda q, k, v: F.scaled_dot_product_attention(q, k, v, key_padding_mask=c["mask"]),
        [(2, 2, 4, 3), (2, 2, 4, 3), (2, 2, 4, 3)], False, {"mask": _mask(2, 4)}),
}


def _inputs(name, xp):
    _, shapes, positive, constants = CASES[name]
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0.5, 1.5, s) if positive else rng.standard_normal(s) for s in shapes]
    return [xp.asarray(a) for a in arrays], {k: xp.asarray(v) for k, v in constants.items()}


def _run(fn, arrays):
    """Forward value and input gradients of sum(fn(inputs) * fixed weights), as NumPy arrays."""
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    weights = np.random.default_rng(1).standard_normal(out.shape)
    (out * Tensor(out.xp.asarray(weights))).sum().backward()
    return backend.to_numpy(out.data), [backend.to_numpy(t.grad) for t in tensors]


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_on_backend(name, xp):
    make = CASES[name][0]
    with backend.default_dtype_as(np.float64):
        arrays, constants = _inputs(name, xp)
        fn = make(constants)
        gradcheck(fn, arrays)
        value, grads = _run(fn, arrays)
        arrays_np, constants_np = _inputs(name, np)
        value_np, grads_np = _run(make(constants_np), arrays_np)
    if name == "dropout":  # each backend draws its own mask: only the gradcheck above applies
        return
    np.testing.assert_allclose(value, value_np, rtol=1e-10, atol=1e-12)
    for g, g_np in zip(grads, grads_np):
        np.testing.assert_allclose(g, g_np, rtol=1e-9, atol=1e-12)
