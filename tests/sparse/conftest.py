"""Shared fixtures for the sparse-op tests.

Without CUDA the Triton kernels run in Triton's interpreter, which reads TRITON_INTERPRET
when a kernel module is imported; set it here, before any test imports one. The variable is
process-wide, so it is set only where no GPU could use compiled kernels anyway.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _triton_param() -> object:
    from kvpager.sparse._dispatch import triton_reason

    reason = triton_reason(torch.device("cpu"))
    why = f"{reason} (test_sparse_gpu.py runs Triton on CUDA tensors)"
    return pytest.param("triton", marks=pytest.mark.skipif(reason is not None, reason=why))


@pytest.fixture(params=["reference", _triton_param()])
def backend(request: pytest.FixtureRequest) -> str:
    """Each index-op backend that can run on CPU tensors here (Triton: interpreted)."""
    return request.param


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's $KVPAGER_BACKEND must not change which backend a test exercises."""
    monkeypatch.delenv("KVPAGER_BACKEND", raising=False)
