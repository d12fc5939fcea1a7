"""Triton's interpreter on CPU-only machines, set before any test imports a kernel module
(as tests/engine and tests/sparse do): Triton fixes interpreted or compiled at import."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
