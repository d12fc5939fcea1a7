"""Time one decode step of the memory manager, and the memory of a large pool.

A decode step appends one token to every running sequence, allocating a block when one
fills and copying shared blocks on write. Scenarios (block size 16, prefix caching and CPU
swap space enabled, i.e. everything the manager offers switched on):

- decode-256 / decode-1024: plain decode of 256 / 1,024 sequences;
- beam-1024: 256 beam-search groups of width 4; each step a quarter of the groups replace
  one beam by a fork of another (`free_many` + `fork_many`), and the forks copy their shared
  tail on write;
- prefix-1024: 1,024 sequences; each step 4 finish and 4 new ones arrive whose prompts share
  one of 4 system prompts of 512 tokens (prefix-cache hits), then everyone decodes a named
  token and the step is committed, so blocks filled by decode are hashed and cached. Prompt
  keys are hashed when a request arrives, outside the step, as a server does; the hashing
  cost per request is reported separately;
- per-seq-1024: a decode step through the per-sequence API in a Python loop, as engines
  that loop over requests call it (token ids named, a quarter of the sequences forked),
  reported per call;
- pool-1M-blocks: memory of a pool of a million blocks.

Run it with `kvpager bench manager` or `python benchmarks/bench_manager.py` (which records
the results in `benchmarks/results/manager.json`).
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.memory.prefix import hash_block_tokens

BLOCK = 16


def make_manager(num_seqs: int, steps: int) -> KVCacheManager:
    blocks = num_seqs * (600 + steps) // BLOCK + 10_000
    return KVCacheManager(num_gpu_blocks=blocks, block_size=BLOCK, num_cpu_blocks=4096,
                          watermark=0.0, enable_prefix_caching=True)


def time_steps(step, steps: int, repeats: int) -> dict:
    """Best and median wall time per step over `repeats` runs of `steps` steps, and the
    best CPU time of this process per step (`time.process_time`: on a loaded shared
    machine other processes inflate the wall time, not this)."""
    per_step, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        per_step.append((time.perf_counter() - start) / steps)
        cpu.append((time.process_time() - cpu_start) / steps)
    return {"us_per_step_best": round(min(per_step) * 1e6, 1),
            "us_per_step_median": round(statistics.median(per_step) * 1e6, 1),
            "cpu_us_per_step_best": round(min(cpu) * 1e6, 1),
            "steps": steps, "repeats": repeats}


def per_call(result: dict, calls: int) -> dict:
    """`result` of `time_steps` with its figures also per call (`calls` calls a step)."""
    for key in ("us_per_step_best", "us_per_step_median", "cpu_us_per_step_best"):
        result[key.replace("step", "call")] = round(result[key] / calls, 2)
    return result


def bench_decode(num_seqs: int, steps: int, repeats: int) -> dict:
    m = make_manager(num_seqs, steps * (repeats + 1))
    rng = np.random.default_rng(0)
    for i in range(num_seqs):
        m.allocate(i, int(rng.integers(16, 512)))
    rows = m.rows_of(range(num_seqs))
    for _ in range(steps):  # warm up
        m.append_slots_batch(rows)
    return time_steps(lambda: m.append_slots_batch(rows), steps, repeats)


def bench_per_seq(num_seqs: int, steps: int, repeats: int) -> dict:
    """The per-request API as engines that loop over requests call it: one `append_slots`
    per sequence per step, naming the token written (so generated blocks are hashed and
    cached), then one `mark_computed_batch` for the step. A quarter of the sequences are
    forked pairs (parallel samples), so copy-on-write is exercised too. Reported per call."""
    m = make_manager(num_seqs, steps * (repeats + 1))
    rng = np.random.default_rng(0)
    ids: list = []
    for i in range(num_seqs // 8 * 7 if num_seqs >= 8 else num_seqs):
        tokens = rng.integers(0, 32000, int(rng.integers(16, 512))).tolist()
        m.allocate(i, token_ids=tokens)
        m.mark_computed(i, len(tokens))
        ids.append(i)
    for parent in list(ids[: num_seqs - len(ids)]):
        m.fork(parent, ("fork", parent))
        ids.append(("fork", parent))
    rows = m.rows_of(ids)
    token = [7]

    def step():
        for s in ids:
            m.append_slots(s, token_ids=token)
        m.mark_computed_batch(rows)

    result = per_call(time_steps(step, steps, repeats), len(ids))
    result["calls_per_step"] = len(ids)
    result["cow_copies_total"] = m.num_cow_copies
    return result


def bench_beam(num_groups: int, width: int, steps: int, repeats: int) -> dict:
    m = make_manager(num_groups * width, steps * (repeats + 1))
    rng = np.random.default_rng(0)
    beams = []  # batch position -> sequence id
    for g in range(num_groups):
        m.allocate((g, 0), int(rng.integers(16, 512)))
        for b in range(1, width):
            m.fork((g, 0), (g, b))
        beams += [(g, b) for b in range(width)]
    rows = m.rows_of(beams)
    counter = [width]
    copies = [0]

    # Beam choices are drawn up front so the timing holds only the manager's work.
    plans = [rng.permuted(np.tile(np.arange(width), (num_groups, 1)), axis=1)[:, :2]
             for _ in range(steps * repeats)]
    chosen = [rng.choice(num_groups, num_groups // 4, replace=False)
              for _ in range(steps * repeats)]
    turn = [0]

    def step():
        groups, pick = chosen[turn[0]], plans[turn[0]]
        turn[0] += 1
        dead_pos = (groups * width + pick[groups, 0]).tolist()
        parent_pos = (groups * width + pick[groups, 1]).tolist()
        parents = [beams[p] for p in parent_pos]
        children = [(int(g), counter[0] + i) for i, g in enumerate(groups.tolist())]
        counter[0] += len(children)
        m.free_many([beams[p] for p in dead_pos])
        m.fork_many(parents, children)
        for p, c in zip(dead_pos, children, strict=True):
            beams[p] = c
        rows[dead_pos] = m.rows_of(children)
        copies[0] += m.append_slots_batch(rows).num_copies

    result = time_steps(step, steps, repeats)
    result["cow_copies_per_step"] = round(copies[0] / (steps * repeats), 1)
    return result


def bench_prefix(num_seqs: int, steps: int, repeats: int) -> dict:
    """A prefix-heavy server: 4 system prompts of 512 tokens; each step 4 requests finish and
    4 arrive (their keys hashed at arrival, as a server does, reported separately), then the
    whole batch decodes one token it names, and the step is committed: blocks filled by
    decode are hashed and registered too."""
    m = make_manager(num_seqs, steps * (repeats + 1))
    rng = np.random.default_rng(0)
    systems = [rng.integers(0, 32000, 512).tolist() for _ in range(4)]

    def new_request():
        tokens = systems[int(rng.integers(4))] + rng.integers(0, 32000, 64).tolist()
        return tokens, hash_block_tokens(tokens, BLOCK)

    arrivals = [new_request() for _ in range(64)]
    t0 = time.perf_counter()
    for tokens, _ in arrivals:
        hash_block_tokens(tokens, BLOCK)
    hash_us = (time.perf_counter() - t0) / len(arrivals) * 1e6

    running = []
    for i in range(num_seqs):
        tokens, keys = arrivals[i % len(arrivals)]
        m.allocate(i, len(tokens), token_ids=tokens, block_hashes=keys)
        m.mark_computed(i, len(tokens))
        running.append(i)
    rows = m.rows_of(running)
    next_id = [num_seqs]
    decoded = rng.integers(0, 32000, (steps * (repeats + 1), num_seqs))
    turn = [0]

    def step():
        for _ in range(4):
            pos = int(rng.integers(len(running)))
            m.free(running[pos])
            tokens, keys = arrivals[next_id[0] % len(arrivals)]
            seq = next_id[0]
            next_id[0] += 1
            m.allocate(seq, len(tokens), token_ids=tokens, block_hashes=keys)
            m.mark_computed(seq, len(tokens))
            running[pos] = seq
            rows[pos] = m.rows_of([seq])[0]
        m.append_slots_batch(rows, token_ids=decoded[turn[0]])
        m.mark_computed_batch(rows)
        turn[0] += 1

    cache = m.prefix_cache
    if cache is None:
        raise RuntimeError("bench_prefix: make_manager built no prefix cache")
    before = len(cache)
    result = time_steps(step, steps, repeats)
    result["prefix_hit_rate"] = round(cache.hit_rate, 3)
    result["hash_us_per_576_token_request"] = round(hash_us, 1)
    result["cached_blocks_gained"] = len(cache) - before
    return result


def pool_memory(num_blocks: int) -> dict:
    tracemalloc.start()
    pool = BlockPool(num_blocks)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if pool.num_free != num_blocks:  # the measurement is meaningless if the pool is wrong
        raise RuntimeError(f"a fresh pool of {num_blocks} blocks has {pool.num_free} free")
    return {"num_blocks": num_blocks, "traced_mb": round(current / 2**20, 2),
            "peak_mb": round(peak / 2**20, 2)}


SCENARIOS: dict[str, Callable[[int, int], dict]] = {
    "decode-256": lambda s, r: bench_decode(256, s, r),
    "decode-1024": lambda s, r: bench_decode(1024, s, r),
    "beam-1024": lambda s, r: bench_beam(256, 4, s, r),
    "prefix-1024": lambda s, r: bench_prefix(1024, s, r),
    "per-seq-1024": lambda s, r: bench_per_seq(1024, max(1, s // 5), r),
    "pool-1M-blocks": lambda s, r: pool_memory(1_000_000),
}


def run(steps: int = 500, repeats: int = 5, scenarios: list[str] | None = None,
        progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the chosen scenarios (all by default); returns {"block_size", name: result}.

    progress(name, done, total) is called before each scenario and once at the end.
    Raises ValueError naming the argument for bad steps, repeats or scenario names.
    """
    for name, value in (("steps", steps), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    names = list(SCENARIOS) if not scenarios else list(dict.fromkeys(scenarios))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"scenario: unknown {unknown[0]!r}; choose from "
                         f"{', '.join(SCENARIOS)}")
    results: dict = {"block_size": BLOCK}
    for i, name in enumerate(names):
        if progress is not None:
            progress(name, i, len(names))
        results[name] = SCENARIOS[name](steps, repeats)
    if progress is not None:
        progress("", len(names), len(names))
    return results
