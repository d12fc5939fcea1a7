"""The gpu_verify step of the window / sinks / MLA cases, at dry-run sizes on the CPU
(Triton interpreted): every (kind, backend) runs, each case is journaled, and a broken kernel
is reported as a failing case."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from kvpager.verify.journal import Budget, Journal
from kvpager.verify.plan import DRY
from kvpager.verify.runner import Context
from kvpager.verify.steps_window_mla import window_sinks_mla_step


def _context(tmp_path: Path) -> Context:
    return Context(out=tmp_path, journal=Journal(tmp_path / "r.jsonl"), budget=Budget(120),
                   dry_run=True, sizes=DRY, say=lambda line: None)


def test_the_step_runs_window_and_mla_cases_and_journals_them(tmp_path: Path) -> None:
    result = window_sinks_mla_step(_context(tmp_path))
    assert result["status"] == "pass", result
    assert set(result["counts"]) == {"window_sinks/triton", "mla/triton"}
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {x["kind"] for x in lines if x["event"] == "case"} == {"window_sinks", "mla"}


def test_a_kernel_that_ignores_the_window_fails_the_step(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Triton launcher told there is no window, it reads the NaN blocks before it."""
    from kvpager.backends.op_args import PagedAttentionArgs
    from kvpager.backends.triton import attention

    launch = attention._launch_attention

    def no_window(args: PagedAttentionArgs, workspace) -> None:
        object.__setattr__(args, "sliding_window", None)
        launch(args, workspace)

    monkeypatch.setattr(attention, "_launch_attention", no_window)
    monkeypatch.setattr("kvpager.verify.mla_matrix.mla_matrix", lambda: [])  # window only
    result = window_sinks_mla_step(_context(tmp_path))
    assert result["status"] == "fail"
    assert result["counts"]["window_sinks/triton"]["failures"] >= 1
