"""Files: written so that an interrupt never leaves a half-written one, and JSON read with clear errors.

Every file tinyclip writes (checkpoints, tokenizers, image caches, metrics, figures)
goes to a temporary file in the same folder first and is then renamed over the
target: a rename within one file system is atomic, so readers see the old file or
the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write(path, write, mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json(path, what: str = "file"):
    """The JSON value in ``path``; a missing or malformed file is an error naming ``what`` and the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
