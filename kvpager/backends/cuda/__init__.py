"""The CUDA backend: hand-written paged-attention and cache kernels, built on first use.

`BACKEND` is what the registry (`kvpager.backends`) loads. Importing this package imports no
torch and compiles nothing; see `build.py` for the build cache and its environment variables
and `csrc/` for the kernels (plain CUDA, no torch headers) and their thin torch binding.
"""

from __future__ import annotations

from kvpager.backends.cuda import build
from kvpager.backends.cuda.backend import (
    BLOCK_SIZES,
    HEAD_SIZES,
    KV_CACHE_DTYPES,
    PARTITION_SIZE,
    CudaBackend,
)
from kvpager.backends.cuda.build import CudaBuildError

BACKEND = CudaBackend()

__all__ = [
    "BACKEND",
    "BLOCK_SIZES",
    "HEAD_SIZES",
    "KV_CACHE_DTYPES",
    "PARTITION_SIZE",
    "CudaBackend",
    "CudaBuildError",
    "build",
]
