"""Files: written so that an interrupt never leaves a half-written one, and JSON read with clear errors.

Every file tinyclip writes (checkpoints, tokenizers, image caches, metrics, figures)
goes to a temporary file in the same folder first and is then renamed over the
target: a rename within one file system is atomic, so readers see the old file or
the new one, never a mix.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
from pathlib import Path


def atomic_write(path, write, mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _fault_point()
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            _fault_point()
            f.flush()
            os.fsync(f.fileno())
        _fault_point()
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        _fault_point()
        os.replace(tmp, path)
        _fault_point()
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


# Fault injection for the crash tests: with TINYCLIP_KILL_AT_FILE_OP=N the process SIGKILLs itself at the
# N-th fault point of atomic_write (between two file operations). Unset, this is one dict lookup per write.
_fault_ops = 0


def _fault_point() -> None:
    global _fault_ops
    target = os.environ.get("TINYCLIP_KILL_AT_FILE_OP")
    if target is None:
        return
    _fault_ops += 1
    if _fault_ops == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temporaries(directory) -> list:
    """Delete the ``.NAME.*.tmp`` files that an interrupted ``atomic_write`` left in ``directory``."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


class RunLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


class run_lock:
    """``with run_lock(dir):`` holds ``dir/.lock`` (created with O_EXCL, holding the pid) for the block.

    A lock whose process is gone (killed, crashed) is stale: it is taken over.
    """

    def __init__(self, directory):
        self.path = Path(directory) / ".lock"

    def __enter__(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _lock_owner(self.path)
                if pid is None and _age(self.path) < 5:  # just created, its pid not written yet
                    pid = -1
                if pid is not None and pid != os.getpid() and (pid == -1 or _alive(pid)):
                    owner = f"process {pid}" if pid > 0 else "another process"
                    raise RunLocked(f"run directory {self.path.parent} is in use by {owner} (another training "
                                    f"writes there); choose another --out") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise RunLocked(f"cannot take the lock {self.path}")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def _lock_owner(path: Path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # unreadable or not yet written: stale unless only seconds old


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return math.inf


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
