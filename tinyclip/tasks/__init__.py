"""Downstream tasks of a trained CLIP: each is a module with ``Options`` and ``run(ctx, options) -> dict``.

``TASKS`` maps the name used on the command line (``python -m tinyclip.evaluate
--task NAME``) to the module that implements it; ``get_task`` imports it.
``Options`` is a frozen dataclass of the task's own settings, each field declared
with ``common.option`` (its type, default, how the command line's text is read and
its help line): ``tinyclip.evaluate`` makes one flag of each field and hands
``run`` the typed instance; ``ctx`` (``common.EvalContext``) holds the model, the
pairs and the settings every task shares.

A task that cannot run with the inputs it was given (no chest X-ray data, no
captions that name a modality, ...) raises ``TaskSkipped`` with the reason:
``--task all`` then records the reason and moves on, while a single ``--task``
fails with that reason as its error message.

The few numeric helpers every zero-shot task needs (a stable softmax, the
model's temperature) live here too.
"""

from __future__ import annotations

import importlib

import numpy as np

TASKS = {
    "retrieval": "tinyclip.tasks.retrieval",
    "modality": "tinyclip.tasks.modality",
    "pneumonia-zeroshot": "tinyclip.tasks.pneumonia",
    "fewshot": "tinyclip.tasks.fewshot",
    "cui": "tinyclip.tasks.cui",
}

# what each task is about, for --help
DESCRIPTIONS = {
    "retrieval": "image→text and text→image recall@1/5/10 and median/mean rank on the evaluation pairs",
    "modality": "zero-shot imaging modality (CT, MRI, ultrasound, fluoroscopy, X-ray, angiography) from "
                "prompts; labels parsed from the captions",
    "pneumonia-zeroshot": "zero-shot normal vs pneumonia on chest X-rays (--chest-dir, --pneumonia-npz, or "
                          "synthetic ones for a synthetic run)",
    "fewshot": "few-shot pneumonia classifiers on the frozen image embeddings, accuracy against the number of "
               "labelled images (--shots, --seeds; same chest X-ray sources as pneumonia-zeroshot)",
    "cui": "UMLS concept (CUI) classifiers from captions and images, trained on the run's training part "
           "(--top-k)",
}


class TaskSkipped(RuntimeError):
    """The task cannot run on these inputs; the message says why."""


def get_task(name: str):
    """The module of task ``name`` (imported now)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """The kernel's (max-subtracted) softmax on a plain float64 NumPy array, no graph recorded."""
    from ..functional.loss import softmax as softmax_kernel
    from ..tensor import Tensor, no_grad
    with no_grad():
        return softmax_kernel(Tensor(np.asarray(logits, dtype=np.float64)), axis=axis).data
