"""Fixtures of the engine tests: single-threaded torch and one tiny random Llama."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Single-threaded torch: tiny matmuls on a shared CPU run faster without worker threads
    spinning for cores other processes hold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hf_model():
    from hf_reference import tiny_llama

    return tiny_llama()
