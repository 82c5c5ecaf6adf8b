"""Smoke test of the benchmark scripts: they run end to end at tiny sizes and print their table.

Each script runs as a user would run it, in a subprocess, with ``--quick`` (a few ms of work per
configuration). The torch column is expected exactly when torch is installed; ``--no-torch``
shows the output without it, on any machine.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run_script(name, *args):
    # One thread: with 2, OpenBLAS stalls for scheduler ticks whenever other work shares the cores.
    command = [sys.executable, str(BENCHMARKS / name), "--quick", "--device", "cpu", "--threads", "1", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def table_header(output):
    return next(line for line in output.splitlines() if line.startswith("| "))


def test_train_step_quick():
    out = run_script("bench_train_step.py")
    header = table_header(out)
    assert header.startswith("| row | tinyclip ms |")
    assert ("torch ms" in header) == HAS_TORCH
    for row in ("full step", "image tower step", "text tower step", "inference"):
        assert f"| {row} |" in out
    assert "dtype check (tinyclip, one training step)" in out and ": OK" in out
    if HAS_TORCH:
        assert "same weights in PyTorch" in out and "MISMATCH" not in out


def test_ops_quick():
    out = run_script("bench_ops.py")
    header = table_header(out)
    assert header.startswith("| op | tinyclip fwd ms |")
    assert ("torch fwd ms" in header) == HAS_TORCH
    assert "conv2d 3→16" in out and "layer_norm" in out
    assert "error:" not in out


@pytest.mark.skipif(not HAS_TORCH, reason="without torch the runs above already cover the tinyclip-only table")
def test_ops_without_torch_has_no_torch_column():
    out = run_script("bench_ops.py", "--no-torch", "--only", "linear,cross_entropy")
    header = table_header(out)
    assert "torch" not in header
    assert "linear" in out and "cross_entropy" in out


def profile_rows(output, header_start):
    """The body rows of the markdown table whose header starts with ``header_start``, as lists of cells."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_train_step_profile_quick():
    out = run_script("bench_train_step.py", "--profile", "--no-torch")
    rows = profile_rows(out, "| op | calls per step fwd/bwd |")
    names = [row[0] for row in rows]
    assert "Conv2d" in names and "LayerNorm" in names and "Adam.step (optimizer)" in names
    assert names[-1].startswith("other")
    conv = rows[names.index("Conv2d")]
    assert conv[1] == "2/2"  # --quick has two conv blocks, each run forward and backward once per step
    assert sum(float(row[-1].rstrip("%")) for row in rows) == pytest.approx(100, abs=1.5)  # shares rounded to 0.1%
    assert "torch op" not in out and "| row |" not in out


@pytest.mark.skipif(not HAS_TORCH, reason="the torch.profiler table needs torch")
def test_train_step_profile_quick_torch_table():
    out = run_script("bench_train_step.py", "--profile")
    rows = profile_rows(out, "| torch op |")
    names = [row[0] for row in rows]
    assert any(name.startswith("aten::") for name in names) and names[-1].startswith("other")
    assert sum(float(row[-1].rstrip("%")) for row in rows) == pytest.approx(100, abs=2.5)
