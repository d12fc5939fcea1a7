"""Paged MLA decode cases shared by the backend tests and `benchmarks/gpu_verify.py`.

A case fixes the latent layout (kv_lora_rank + rope_dim: DeepSeek-V3's 512 + 64, and small
ones for CPU runs), heads, block size, dtype, an optional sliding window and a seed. Inputs
are built through `kvpager.ops.concat_and_cache_mla` (so the write op is exercised too) with
shuffled physical blocks; table entries a sequence does not read hold -1. Only torch is
imported here; the run helpers call `kvpager.ops` when used.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

#: What `poison_mla` writes where nothing may be read.
NAN = float("nan")


@dataclass(frozen=True)
class MLACase:
    kv_lora_rank: int
    rope_dim: int
    num_heads: int
    block_size: int
    dtype: str
    seed: int
    window: int | None = None

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.rope_dim

    @property
    def id(self) -> str:
        window = "" if self.window is None else f"-w{self.window}"
        return (f"r{self.kv_lora_rank}+{self.rope_dim}-h{self.num_heads}-bs{self.block_size}-"
                f"{self.dtype}{window}")


def mla_matrix() -> list[MLACase]:
    """DeepSeek-V3's layout (512 + 64) at 16 and 128 heads (one TP-8 rank holds 16 of its
    128), every block size and dtype, with and without a window; plus two odd layouts."""
    cases = []
    for index, (heads, block_size, dtype) in enumerate(
        (h, b, d) for h in (16, 128) for b in (16, 64, 8, 32)
        for d in ("bfloat16", "float16", "float32")
    ):
        window = (None, 100, 700)[index % 3]
        cases.append(MLACase(512, 64, heads, block_size, dtype, seed=30_000 + index,
                             window=window))
    cases.append(MLACase(96, 32, 3, 16, "float32", seed=30_100))
    cases.append(MLACase(128, 0, 5, 32, "bfloat16", seed=30_101, window=33))
    return cases


@dataclass
class MLAInputs:
    case: MLACase
    query: torch.Tensor  # [S, H, L]
    latent_cache: torch.Tensor  # [blocks, block_size, L]
    block_tables: torch.Tensor  # int32 [S, max_blocks]
    seq_lens: torch.Tensor  # int32 [S]
    scale: float

    def window_start(self, seq: int) -> int:
        length = int(self.seq_lens[seq])
        window = self.case.window
        return 0 if window is None else max(0, length - window)


def make_mla_inputs(case: MLACase, device: torch.device | str = "cpu", *,
                    lengths: list[int] | None = None) -> MLAInputs:
    """Random inputs (deterministic in case.seed); the cache is written with
    `concat_and_cache_mla`, unwritten slots stay NaN (the op must never read them)."""
    import kvpager.ops as ops

    rng = random.Random(case.seed)
    gen = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    bs = case.block_size
    lens = lengths if lengths is not None else [1, bs * rng.randint(1, 6),
                                                rng.randint(600, 1100), rng.randint(2, 300)]
    needed = [math.ceil(n / bs) for n in lens]
    num_blocks = sum(needed) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.full((len(lens), max(needed) + 1), -1, dtype=torch.int32)
    start = 0
    for row, count in enumerate(needed):
        table[row, :count] = torch.tensor(order[start:start + count], dtype=torch.int32)
        start += count
    cache = torch.full((num_blocks, bs, case.latent_dim), NAN, dtype=dtype, device=device)
    slots = torch.cat([
        (table[row, torch.arange(n) // bs].long() * bs + torch.arange(n) % bs)
        for row, n in enumerate(lens)
    ]) if sum(lens) else torch.zeros(0, dtype=torch.int64)
    total = int(slots.numel())
    kv_c = torch.randn(total, case.kv_lora_rank, generator=gen).to(dtype)
    k_pe = torch.randn(total, case.rope_dim, generator=gen).to(dtype)
    ops.concat_and_cache_mla(kv_c.to(device), k_pe.to(device), cache, slots.to(device))
    query = torch.randn(len(lens), case.num_heads, case.latent_dim, generator=gen).to(dtype)
    return MLAInputs(case, query.to(device), cache, table.to(device),
                     torch.tensor(lens, dtype=torch.int32, device=device),
                     scale=1.0 / math.sqrt(192))  # DeepSeek-V3: 1 / sqrt(128 + 64)


def poison_mla(inputs: MLAInputs) -> MLAInputs:
    """A copy whose blocks wholly before each window hold NaN behind -1 table entries, and
    whose slots before the window's first token hold NaN: outputs must not change."""
    cache, table = inputs.latent_cache.clone(), inputs.block_tables.clone()
    bs = inputs.case.block_size
    for row in range(table.shape[0]):
        whole, partial = divmod(inputs.window_start(row), bs)
        for col in range(whole):
            cache[int(table[row, col])] = NAN
            table[row, col] = -1
        if partial:
            cache[int(table[row, whole]), :partial] = NAN
    return MLAInputs(inputs.case, inputs.query, cache, table, inputs.seq_lens, inputs.scale)


def run_mla(inputs: MLAInputs, backend: str) -> torch.Tensor:
    import kvpager.ops as ops

    s, h, _ = inputs.query.shape
    out = torch.empty(s, h, inputs.case.kv_lora_rank, dtype=inputs.query.dtype,
                      device=inputs.query.device)
    ops.paged_mla_decode(out, inputs.query, inputs.latent_cache, inputs.block_tables,
                         inputs.seq_lens, inputs.case.block_size, inputs.case.kv_lora_rank,
                         inputs.scale, sliding_window=inputs.case.window, backend=backend)
    return out


def mla_tolerance(dtype: str) -> tuple[float, float]:
    """(atol, rtol) against float32/float64 results: the 576-long dot products in 16-bit
    inputs round more than attention's shorter heads."""
    return {"float32": (1e-4, 1e-4), "float16": (2e-3, 2e-3),
            "bfloat16": (1.6e-2, 1.6e-2)}[dtype]


def check_mla_against_reference(case: MLACase, backend: str,
                                device: torch.device | str = "cuda", *,
                                lengths: list[int] | None = None) -> None:
    """`backend` on poisoned inputs (window) against the reference on clean ones."""
    inputs = make_mla_inputs(case, device, lengths=lengths)
    want = run_mla(inputs, "reference")
    got = run_mla(poison_mla(inputs) if case.window else inputs, backend)
    assert torch.isfinite(got).all(), "read a slot outside what the sequence attends"
    atol, rtol = mla_tolerance(case.dtype)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


__all__ = [
    "MLACase",
    "MLAInputs",
    "check_mla_against_reference",
    "make_mla_inputs",
    "mla_matrix",
    "mla_tolerance",
    "poison_mla",
    "run_mla",
]
