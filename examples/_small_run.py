"""The small demo model that examples 06, 07 and 08 share.

Those three examples are about *using* a trained CLIP (zero-shot classification,
retrieval, few-shot heads), not about training one, so each begins the same way:
take a run of ``tinyclip.train`` if you give one (``--run RUN_DIR``), or else train a
small CLIP on synthetic image-caption pairs right here. This module is that shared
beginning; ``05_train_clip.py`` shows how training itself works.

What it offers
--------------
``QUICK``
    True when ``TINYCLIP_EXAMPLE_QUICK=1``: every example then shrinks its sizes so it
    finishes in a few seconds (the test suite runs them like that).
``section(title)``
    Prints a section heading, ``=== title ===``, so the output reads like the code.
``trained_run(run=None, out=None, prefix="tinyclip-example")``
    Returns ``(model, state, run_dir)``: the best checkpoint of a run and its saved
    state (the run's arguments, the data split, the epoch, ...). Without ``run`` it
    first trains the small model with ``tinyclip.train`` into ``out``, or into a
    temporary folder that is removed when the script ends.

The file name starts with ``_`` so that it is not one of the numbered examples
(``tests/test_examples.py`` runs ``examples/[0-9][0-9]_*.py``). Python puts the
folder of the script it runs on ``sys.path``, so ``python examples/06_zero_shot.py``
can simply ``from _small_run import ...``.
"""

import atexit
import os
import tempfile

from tinyclip import train
from tinyclip.models import CLIP

QUICK = os.environ.get("TINYCLIP_EXAMPLE_QUICK") == "1"

# How much synthetic data and training: a few seconds in quick mode, about a minute otherwise.
SIZE_ARGS = (["--num-samples", "120", "--image-size", "16", "--epochs", "1"] if QUICK else
             ["--num-samples", "600", "--image-size", "32", "--epochs", "5"])
# The model and optimiser, the same in both modes: a three-stage CNN image tower, a one-layer
# transformer text tower, 64-d joint embeddings; no early stopping (--patience 0).
MODEL_ARGS = ["--conv-channels", "16,32,64", "--text-layers", "1", "--width", "64", "--heads", "4",
              "--ff-dim", "128", "--embed-dim", "64", "--max-len", "24", "--batch-size", "32",
              "--lr", "2e-3", "--patience", "0", "--no-progress"]


def section(title):
    print(f"\n=== {title} ===")


def trained_run(run=None, out=None, prefix="tinyclip-example"):
    """(model, state, run_dir) of the best checkpoint of ``run``, training a small model first if run is None.

    run:    a run directory of ``tinyclip.train`` to use as it is.
    out:    where to train when run is None; the run stays there. Without it the run goes to a
            temporary folder (named ``{prefix}-...``) that is removed when the script ends.
    """
    run_dir = run
    if run_dir is None:
        section("0. training a small CLIP on synthetic image-caption pairs")
        if out is None:
            scratch = tempfile.TemporaryDirectory(prefix=prefix + "-")
            atexit.register(scratch.cleanup)  # removed at the end, also when the example fails
        run_dir = out or scratch.name
        code = train.main(SIZE_ARGS + MODEL_ARGS + ["--out", run_dir])
        if code != 0:
            raise SystemExit(f"training failed (exit status {code})")
    model, state = CLIP.from_checkpoint(run_dir, "best")
    return model, state, run_dir
