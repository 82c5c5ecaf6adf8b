"""CuPy: a training step on the GPU keeps every array there (runs only where CuPy sees a GPU)."""

import numpy as np
import pytest

import tinyclip
from tinyclip import Tensor, backend
from tinyclip.models import CLIP, CLIPConfig
from tinyclip.optim import Adam

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not backend.cuda_available(), reason="CuPy with a CUDA device is not available")]

TINY = CLIPConfig(image_size=16, conv_channels=(4, 8), vocab_size=30, max_len=8, width=16, text_layers=1,
                  heads=2, ff_dim=32, dropout=0.0, embed_dim=12)


def batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    ids = rng.integers(2, 30, size=(n, 8))
    mask = np.zeros((n, 8), dtype=bool)
    mask[:, 6:] = True
    ids[mask] = 0
    return images, ids, mask


def step_loss(device):
    tinyclip.manual_seed(0)
    model = CLIP(TINY)  # initialised on the CPU generator, so both devices start from the same weights
    model.to(device)
    images, ids, mask = (backend.to_device(a, device) for a in batch())
    loss = model.loss(Tensor(images), ids, mask)
    loss.backward()
    return model, loss


def test_cupy_step_creates_no_numpy_arrays():
    import cupy
    seen = []
    original = tinyclip.Function.__call__

    def spy(self, *inputs):
        out = original(self, *inputs)
        seen.extend((type(self).__name__, type(t.data)) for t in (out if isinstance(out, tuple) else (out,)))
        return out

    tinyclip.Function.__call__ = spy
    try:
        model, _ = step_loss("cuda")
    finally:
        tinyclip.Function.__call__ = original
    assert seen and all(kind is cupy.ndarray for _, kind in seen), {n for n, k in seen if k is not cupy.ndarray}
    Adam(model.parameters(), lr=1e-3).step()
    for name, p in model.named_parameters():
        assert isinstance(p.data, cupy.ndarray) and isinstance(p.grad, cupy.ndarray), name


def test_cupy_and_numpy_steps_agree():
    cpu_model, cpu_loss = step_loss("cpu")
    gpu_model, gpu_loss = step_loss("cuda")
    assert abs(cpu_loss.item() - gpu_loss.item()) < 1e-4
    for (name, p), q in zip(cpu_model.named_parameters(), gpu_model.parameters()):
        np.testing.assert_allclose(p.grad, backend.to_numpy(q.grad), rtol=1e-3, atol=1e-5, err_msg=name)
