"""The verification plan: the steps in priority order, their estimates, and their sizes.

Order (the issue's priority): environment, CUDA build, correctness (attention sample, the
window / sinks / MLA cases, cache ops, merge, sparse ops, the > 2^31-element cache, the
engine, compute-sanitizer), then speed. A step starts only when its estimate fits in what is
left of the budget; elastic steps (the build, the attention sample, the sanitizer) also stop
themselves in time.

Estimates are seconds on an H200 with a bare machine (no Triton cache, no CUDA build) or,
for the dry run, on a CPU running Triton's interpreter; for the elastic steps they are the
least time worth starting with. `Sizes` holds everything that differs between the two.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from kvpager.verify.runner import Context, Step
from kvpager.verify.sanitizer import sanitizer_step
from kvpager.verify.speed import speed_step
from kvpager.verify.steps_attention import attention_sample_step, large_cache_step
from kvpager.verify.steps_engine import engine_step
from kvpager.verify.steps_ops import cache_ops_step, merge_step, sparse_step
from kvpager.verify.steps_setup import build_step, environment_step
from kvpager.verify.steps_window_mla import window_sinks_mla_step

DEFAULT_BUDGET_S = 480.0
DEFAULT_DRY_BUDGET_S = 150.0


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and per-step estimates (seconds) for one kind of run."""

    attention_share: float  # of the budget, for the attention sample
    long_len: tuple[int, int]  # the long sequence of each case (several v2 partitions)
    max_cases: int
    large_blocks: int | None  # None: just past 2^31 elements per cache tensor
    sparse_tokens: int
    topk_rows: int
    topk_cols: int
    topk_k: int
    engine_prompt_lengths: tuple[int, ...]
    engine_new_tokens: int
    sanitizer_timeout_s: float
    speed_batches: tuple[int, int]  # (small, big)
    speed_contexts: tuple[int, int, int]  # (short, mid, long)
    speed_heads: tuple[int, int]  # (query heads, kv heads)
    speed_head_size: int
    speed_dtype: str
    speed_warmup: int
    speed_repeats: int
    estimates: dict[str, float]
    seed: int = 0
    window_cases: int = 100_000  # window / sinks cases per backend
    mla_cases: int = 100_000
    mla_lengths: list[int] | None = None  # None: mla_matrix's own (up to 1,100 tokens)


GPU = Sizes(
    attention_share=1 / 3, long_len=(1025, 2100), max_cases=100_000, large_blocks=None,
    sparse_tokens=4096, topk_rows=64, topk_cols=20_000, topk_k=2048,
    engine_prompt_lengths=(5, 11, 17, 8, 24, 40), engine_new_tokens=24,
    sanitizer_timeout_s=180.0,
    speed_batches=(8, 32), speed_contexts=(4096, 8192, 32768), speed_heads=(32, 8),
    speed_head_size=128, speed_dtype="float16", speed_warmup=3, speed_repeats=20,
    estimates={"environment": 5, "build": 90, "attention_sample": 60,
               "window_sinks_mla": 45, "cache_ops": 20,
               "merge": 10, "sparse_ops": 20, "large_cache": 30, "engine": 60,
               "sanitizer": 75, "speed": 60},
)

DRY = Sizes(
    attention_share=1 / 3, long_len=(1025, 1100), max_cases=100_000, large_blocks=100,
    sparse_tokens=256, topk_rows=4, topk_cols=300, topk_k=32,
    engine_prompt_lengths=(5, 11), engine_new_tokens=4,
    sanitizer_timeout_s=30.0,
    speed_batches=(1, 3), speed_contexts=(16, 40, 72), speed_heads=(4, 2),
    speed_head_size=32, speed_dtype="float32", speed_warmup=1, speed_repeats=2,
    estimates={"environment": 2, "build": 0, "attention_sample": 20,
               "window_sinks_mla": 10, "cache_ops": 10,
               "merge": 5, "sparse_ops": 10, "large_cache": 3, "engine": 15,
               "sanitizer": 3, "speed": 15},
    window_cases=2, mla_cases=1, mla_lengths=[1, 40, 150, 0],
)


def _estimate(name: str):
    def estimate(ctx: Context) -> float:
        if name == "engine" and importlib.util.find_spec("transformers") is None:
            return 0.0  # skipped at once with the reason
        return ctx.sizes.estimates[name]
    return estimate


def steps() -> list[Step]:
    table = [
        ("environment", "GPU, driver, toolkit and library versions", environment_step),
        ("build", "CUDA extension from scratch (MAX_JOBS = cores)", build_step),
        ("attention_sample", "paged attention v1/v2 vs the reference, covering sample",
         attention_sample_step),
        ("window_sinks_mla", "sliding window, sinks (triton, cuda) and MLA decode (triton) "
         "vs the reference, NaN outside the window", window_sinks_mla_step),
        ("cache_ops", "reshape_and_cache / copy_blocks bit-exact, swap round trip",
         cache_ops_step),
        ("merge", "merge_attn_states vs the reference", merge_step),
        ("sparse_ops", "vertical/slash index conversion and top-k vs the reference",
         sparse_step),
        ("large_cache", "a cache tensor of more than 2^31 elements", large_cache_step),
        ("engine", "greedy decode vs transformers on the same device", engine_step),
        ("sanitizer", "compute-sanitizer memcheck on a small case", sanitizer_step),
        ("speed", "bandwidth, SDPA, FP8 and v2/v1 targets; calibration file", speed_step),
    ]
    return [Step(name, what, run, _estimate(name)) for name, what, run in table]


__all__ = ["DEFAULT_BUDGET_S", "DEFAULT_DRY_BUDGET_S", "DRY", "GPU", "Sizes", "steps"]
