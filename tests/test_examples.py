"""Every example runs to the end in its quick mode and reports one ``RESULT:`` line.

The examples are found by a glob (``examples/[0-9][0-9]_*.py``), so a new one is tested
without touching this file. Each runs in a subprocess with ``TINYCLIP_EXAMPLE_QUICK=1``
(which every example honours by shrinking its sizes), in a temporary working directory
and with a temporary image cache, so nothing is left in the repository or the home folder.

``09_real_roco.py`` runs twice: without data (it must explain how to get ROCO and skip),
and on the shared ROCO copy when ``$TINYCLIP_SHARED_DATA`` or ``../shared/data`` exists.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
TIMEOUT = 120  # seconds per example; quick modes take a few


def shared_data() -> Path | None:
    """The read-only real-data folder, if this machine has it."""
    for candidate in (os.environ.get("TINYCLIP_SHARED_DATA"), ROOT.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def run_example(path: Path, tmp_path: Path, *args: str) -> str:
    env = dict(os.environ, TINYCLIP_EXAMPLE_QUICK="1", TINYCLIP_CACHE=str(tmp_path / "cache"), MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run([sys.executable, str(path), *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{path.name} did not finish within {TIMEOUT} s in quick mode; output so far:\n"
                    f"{(e.stdout or b'')[-3000:]!r}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}:\n{output[-4000:]}"
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert len(results) == 1, f"{path.name} printed {len(results)} RESULT lines (expected 1):\n{proc.stdout[-3000:]}"
    assert proc.stdout.rstrip().splitlines()[-1].startswith("RESULT:"), \
        f"{path.name}: the RESULT line must be the last line of its output:\n{proc.stdout[-2000:]}"
    return results[0]


def test_examples_were_found():
    assert len(EXAMPLES) >= 5, f"expected the numbered examples in {ROOT / 'examples'}, found {EXAMPLES}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    args = []
    data = shared_data()
    if path.name == "09_real_roco.py" and data is not None and (data / "roco").is_dir():
        args = ["--data-dir", str(data / "roco")]
    result = run_example(path, tmp_path, *args)
    if args:
        assert "skipped" not in result, result


def test_real_roco_without_data_skips(tmp_path):
    path = ROOT / "examples" / "09_real_roco.py"
    if not path.exists():
        pytest.skip("examples/09_real_roco.py is not there")
    result = run_example(path, tmp_path)
    assert "skipped" in result
