"""Fixtures of the engine tests: Triton's interpreter on CPU-only machines, single-threaded
torch, no backend override from the environment, and one tiny random Llama."""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel module is imported: set it before any test
# imports one, and only where no GPU could run compiled kernels anyway (as tests/sparse does).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Single-threaded torch: tiny matmuls on a shared CPU run faster without worker threads
    spinning for cores other processes hold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's $KVPAGER_BACKEND must not change which backend a test exercises."""
    monkeypatch.delenv("KVPAGER_BACKEND", raising=False)


@pytest.fixture(scope="session")
def hf_model():
    from hf_reference import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="module", params=["gemma3", "gpt_oss"])
def hybrid_model(request):
    """A tiny gpt-oss or Gemma 3 (`hybrid_helpers.ARCHITECTURES`), one per test module."""
    from hybrid_helpers import ARCHITECTURES

    return ARCHITECTURES[request.param]()
