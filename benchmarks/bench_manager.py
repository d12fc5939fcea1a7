"""Time one decode step of the memory manager, and the memory of a large pool.

The scenarios live in `kvpager.bench.manager` (also run by `kvpager bench manager`); this
script runs them all and records the results in `benchmarks/results/manager.json`.

Usage: python benchmarks/bench_manager.py [--steps N] [--repeats R] [--no-record]
"""

from __future__ import annotations

import argparse

import numpy as np

from kvpager.bench.manager import BLOCK, run, time_steps
from kvpager.core.config import CacheConfig
from kvpager.core.groups import FullAttentionSpec, SlidingWindowSpec
from kvpager.core.memory.hybrid import HybridKVCacheManager

try:
    from benchmarks._common import record
except ImportError:  # run as a script from benchmarks/
    from _common import record  # type: ignore[no-redef]


def make_hybrid(num_seqs: int, steps: int) -> HybridKVCacheManager:
    """Two groups, window 128 + full (gpt-oss's pattern), no prefix caching (not yet
    supported across groups), CPU swap space on."""
    blocks = 2 * num_seqs * (600 + steps) // BLOCK + 10_000
    groups = (FullAttentionSpec(num_layers=12), SlidingWindowSpec(num_layers=12, window=128))
    return HybridKVCacheManager(CacheConfig(num_gpu_blocks=blocks, block_size=BLOCK,
                                            num_cpu_blocks=4096, watermark=0.0,
                                            groups=groups))


def bench_hybrid_decode(num_seqs: int, steps: int, repeats: int) -> dict:
    """decode-1024 with two groups: one `append_slots_batch` per step (window release
    included)."""
    m = make_hybrid(num_seqs, steps * (repeats + 1))
    rng = np.random.default_rng(0)
    for i in range(num_seqs):
        m.allocate(i, int(rng.integers(16, 512)))
    rows = m.rows_of(range(num_seqs))
    m.mark_computed_batch(rows)
    for _ in range(steps):
        m.append_slots_batch(rows)
    result = time_steps(lambda: m.append_slots_batch(rows), steps, repeats)
    result["released_blocks"] = m.num_released_blocks
    return result


def bench_hybrid_per_seq(num_seqs: int, steps: int, repeats: int) -> dict:
    """The per-sequence `append_slots` of 1,024 sequences, two groups, reported per call."""
    m = make_hybrid(num_seqs, steps * (repeats + 1))
    rng = np.random.default_rng(0)
    for i in range(num_seqs):
        m.allocate(i, int(rng.integers(16, 512)))
    ids = list(range(num_seqs))

    def step() -> None:
        for s in ids:
            m.append_slots(s)

    result = time_steps(step, steps, repeats)
    for key in ("us_per_step_best", "us_per_step_median"):
        result[key.replace("step", "call")] = round(result[key] / len(ids), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    results = run(args.steps, args.repeats)
    results["hybrid-decode-1024"] = bench_hybrid_decode(1024, args.steps, args.repeats)
    results["hybrid-per-seq-1024"] = bench_hybrid_per_seq(1024, max(args.steps // 5, 1),
                                                          args.repeats)
    single = results["decode-1024"]["us_per_step_best"]
    results["hybrid-decode-1024"]["ratio_to_single_group_best"] = round(
        results["hybrid-decode-1024"]["us_per_step_best"] / single, 2)
    for name, value in results.items():
        print(f"{name:>16}: {value}")
    if not args.no_record:
        print("recorded", record("manager", results))


if __name__ == "__main__":
    main()
