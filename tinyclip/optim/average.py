"""A moving average of a model's weights (Polyak averaging, "model EMA").

With a few thousand pairs every step is noisy; the average of the recent weights is a smoother
model that usually generalises better than the last step's (OpenCLIP, timm and SimCLR-style
training keep one). The average is the bias-corrected exponential one,
``w̄_t = Σ_s (1 − d) d^(t−s) w_s / (1 − d^t)``, so the first update already gives the weights.
"""

from __future__ import annotations

from contextlib import contextmanager

from .. import backend


class WeightAverage:
    """``WeightAverage(module, decay)``: call ``update()`` after each optimizer step.

    Averages every parameter and buffer of ``module`` (batch-norm running statistics too, so the
    averaged model is evaluated with statistics of the same age). ``decay`` in [0, 1): the weight
    of the past per step; ``1 / (1 − decay)`` steps is about the window averaged.
    """

    def __init__(self, module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"the decay of a weight average must be in [0, 1), got {decay}")
        self.decay = decay
        self.names, self.tensors = zip(*[*module.named_parameters(), *module.named_buffers()])
        self.averages = [t.data.copy() for t in self.tensors]
        self.updates = 0

    def update(self) -> None:
        """``w̄ ← w̄ + (w − w̄)·(1 − d)/(1 − d^t)``: the bias-corrected average, one step at a time."""
        self.updates += 1
        rate = (1 - self.decay) / (1 - self.decay ** self.updates)
        for average, tensor in zip(self.averages, self.tensors):
            average += rate * (tensor.data - average)

    @contextmanager
    def swapped_in(self):
        """Inside the block the module holds the averaged weights; afterwards its own again (in place,
        so an optimizer's references to the parameters stay valid)."""
        own = [t.data.copy() for t in self.tensors]
        try:
            for tensor, average in zip(self.tensors, self.averages):
                tensor.data[...] = average
            yield
        finally:
            for tensor, saved in zip(self.tensors, own):
                tensor.data[...] = saved

    def state_dict(self) -> dict:
        """{dotted name: NumPy copy of the averaged array}, in the module's ``state_dict`` order."""
        return {name: backend.to_numpy(average).copy() for name, average in zip(self.names, self.averages)}

    def load_state_dict(self, state: dict, updates: int) -> None:
        """Restore the averages (from ``state_dict``) and the number of updates they have seen."""
        missing = [name for name in self.names if name not in state]
        if missing:
            raise KeyError(f"weight average: missing {', '.join(missing)}")
        for name, average in zip(self.names, self.averages):
            average[...] = backend.to_device(state[name], backend.device_of(average))
        self.updates = int(updates)
