"""Helpers of the engine tests: engines over the session's tiny Llama, backend selection
that skips with the registry's reason when a backend cannot run here."""

from __future__ import annotations

import pytest
import torch

from kvpager import backends
from kvpager.core.config import CacheConfig, SchedulerConfig

BLOCK_SIZE = 8


def require_backend(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """Skip the test unless backend `name` serves this engine's configuration here."""
    try:
        backends.resolve(name, torch.device(device), head_size=32, block_size=BLOCK_SIZE,
                         dtype=dtype)
    except backends.BackendUnavailableError as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")
    return name


def make_engine(hf_model, *, num_gpu_blocks: int = 256, num_cpu_blocks: int = 0,
                prefix: bool = False, backend: str = "reference", dtype=None, device=None,
                layers_per_group: int | None = None, **scheduler: object):
    from kvpager.engine import LLMEngine

    cache = CacheConfig(num_gpu_blocks=num_gpu_blocks, block_size=BLOCK_SIZE,
                        num_cpu_blocks=num_cpu_blocks, watermark=0.0,
                        enable_prefix_caching=prefix)
    return LLMEngine.from_hf(hf_model, cache, SchedulerConfig(**scheduler), backend=backend,
                             dtype=dtype, device=device, layers_per_group=layers_per_group)


def tokens_of(outputs) -> list[list[int]]:
    """First completion's tokens of each request output."""
    return [list(o.outputs[0].token_ids) for o in outputs]
