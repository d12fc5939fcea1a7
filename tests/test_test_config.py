"""The README's test command stays short: the compile checks (nvcc, g++, Triton ahead-of-time
builds; minutes on a 2-core machine) are deselected by default and selected by
`-m compile`, which CI runs as a step of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPILE_FILES = ["tests/backends/test_cuda_compile.py", "tests/backends/test_triton_compile.py",
                 "tests/sparse/test_sparse_triton_compile.py"]


def collect(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args, *COMPILE_FILES],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return done.stdout


def test_compile_checks_are_deselected_by_default_and_run_with_the_marker():
    default = collect()
    assert "::test_" not in default, default
    selected = collect("-m", "compile")
    for path in COMPILE_FILES:  # each file holds compile tests (they skip without nvcc/triton)
        assert path in selected or "skipped" in selected, selected


def test_ci_runs_the_compile_step_and_tolerates_nothing_collected():
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q -m compile" in ci
    assert '"$status" -ne 5' in ci


def test_the_slow_dry_run_is_left_to_its_own_ci_step():
    dry_run = "tests/verify/test_gpu_verify_dry_run.py"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    default = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                              "-p", "no:cacheprovider", dry_run], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120).stdout
    assert "::test_dry_run_runs_the_whole_plan" not in default, default
    assert "python -m pytest -q -m slow" in (REPO / ".ci" / "run").read_text()
