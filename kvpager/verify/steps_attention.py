"""Correctness of paged attention on each kernel backend against the reference.

`attention_sample_step` walks the kernel matrix in covering order (every value of every
dimension first, then pairs of values; `matrix.covering_order`), one backend after the
other, until its time slice (a third of the budget) is spent. The covering prefix always
runs unless the whole budget is gone: without it the sample says nothing about some
dimension. Every other case has the cache's unused slots filled with NaN (compared with the
reference on the clean cache), so the NaN case is part of the sample, not a separate test.
Each case is journaled as it finishes.

`large_cache_step` reads blocks at the end of a cache of more than 2^31 elements per
tensor, which needs 64-bit offsets in the kernels.
"""

from __future__ import annotations

import time

from kvpager.verify.runner import (
    FAIL,
    PASS,
    Context,
    StepSkipped,
    device_problem,
    error_line,
)
from kvpager.verify.steps_setup import kernel_backends


def check_case(case, backend: str, device: str, long_len: tuple[int, int],
               poison: bool) -> str | None:
    """None when `backend` matches the reference on `case`, else the mismatch. With
    `poison`, the backend reads a cache whose unused slots hold NaN and the reference the
    clean one."""
    from kvpager.verify.matrix import assert_matches_reference as compare
    from kvpager.verify.matrix import make_inputs, poison_unused_slots, reference_outputs

    try:
        inputs = make_inputs(case, device, long_len=long_len)
        want = reference_outputs(inputs)
        compare(poison_unused_slots(inputs) if poison else inputs, want, backend)
    except Exception as exc:  # a mismatch or a kernel error is this case's finding
        return error_line(exc)
    return None


def _sample_one_backend(ctx: Context, backend: str, seconds: float) -> dict:
    """Cases in covering order for `seconds` (the covering prefix regardless, unless the
    budget ends or the GPU stops answering); one journal line per case. With failures, the
    record names the values every failing case shares (e.g. kv_cache_dtype=fp8_e5m2, or
    nan_unused=True), the first hint of where a defect lies."""
    from kvpager.verify.matrix import case_values, covering_order, full_matrix

    sizes = ctx.sizes
    deadline = time.monotonic() + seconds
    hard_stop = ctx.budget.start + ctx.budget.total_s
    pool = full_matrix()
    uncovered = set().union(*map(case_values, pool))
    ran, prefix, failures, lost = 0, 0, [], None
    shared: set | None = None  # the (dimension, value) pairs every failing case has
    for index, case in enumerate(covering_order(pool, seed=sizes.seed)):
        now = time.monotonic()
        if index >= sizes.max_cases or now >= hard_stop or (not uncovered and now >= deadline):
            break
        if uncovered:
            prefix += 1
            uncovered -= case_values(case)
        poison = index % 2 == 1  # every other case: NaN in the slots nobody reads
        start = time.monotonic()
        error = check_case(case, backend, ctx.device, sizes.long_len, poison)
        ran += 1
        if error is not None:
            failures.append({"case": case.id, "nan_unused": poison, "error": error})
            values = set(case_values(case)) | {("nan_unused", poison)}
            shared = values if shared is None else shared & values
        ctx.journal.write("case", step="attention_sample", backend=backend, index=index,
                          case=case.id, nan_unused=poison,
                          seconds=round(time.monotonic() - start, 2),
                          status=PASS if error is None else FAIL, error=error)
        if error is not None and (lost := device_problem(ctx)) is not None:
            break  # every later case would fail the same way; the worker restarts
    return {"cases": ran, "covering_prefix": prefix, "every_value_covered": not uncovered,
            "failures": len(failures), "first_failures": failures[:25],
            "common_to_all_failures": sorted(f"{k}={v}" for k, v in shared or ()),
            "context_lost": lost}


def attention_sample_step(ctx: Context) -> dict:
    """Each backend in turn (Triton first: if the hand-written CUDA kernels take the GPU
    context down, Triton's sample is already recorded), sharing the time slice."""
    backends, excluded = kernel_backends(ctx)
    if not backends:
        raise StepSkipped(f"no kernel backend runs here: {excluded}")
    end = time.monotonic() + ctx.time_for(ctx.budget.total_s * ctx.sizes.attention_share)
    results: dict[str, dict] = {}
    for position, backend in enumerate(backends):
        share = max(0.0, end - time.monotonic()) / (len(backends) - position)
        results[backend] = _sample_one_backend(ctx, backend, share)
        if results[backend]["context_lost"]:
            break
    bad = any(r["failures"] or not r["every_value_covered"] for r in results.values())
    notes = [f"{b} {r['cases']} cases, {r['failures']} failing"
             + ("" if r["every_value_covered"] else ", NOT EVERY VALUE COVERED")
             + (", GPU CONTEXT LOST" if r["context_lost"] else "")
             for b, r in results.items()]
    return {"status": FAIL if bad or len(results) < len(backends) else PASS,
            "backends": results, "excluded_backends": excluded, "note": "; ".join(notes)}


def check_large_cache(backend: str, device: str, num_blocks: int | None = None) -> dict:
    """v1 and v2 of `backend` against the reference on blocks at the end of a float16 cache
    of `num_blocks` blocks (default: just past 2^31 elements per tensor, 2 x 4.3 GB).

    Raises AssertionError on a mismatch; torch.OutOfMemoryError when the cache does not fit.
    """
    import torch

    import kvpager.ops as ops

    num_kv_heads, head_size, block_size = 8, 128, 16
    per_block = num_kv_heads * head_size * block_size
    if num_blocks is None:
        num_blocks = 2**31 // per_block + 64
    key_cache, value_cache = ops.allocate_kv_cache(num_blocks, num_kv_heads, head_size,
                                                   block_size, dtype=torch.float16,
                                                   device=device)
    gen = torch.Generator(device=device).manual_seed(5)
    blocks = torch.arange(num_blocks - 40, num_blocks, device=device, dtype=torch.int32)
    key_cache[blocks.long()] = torch.randn(key_cache[:40].shape, generator=gen,
                                           device=device).half()
    value_cache[blocks.long()] = torch.randn(value_cache[:40].shape, generator=gen,
                                             device=device).half()
    query = torch.randn(2, 32, head_size, generator=gen, device=device).half()
    tables = blocks.reshape(2, 20)
    lens = torch.tensor([320, 301], dtype=torch.int32, device=device)
    args = (query, key_cache, value_cache, num_kv_heads, 0.088, tables, lens, block_size, 320,
            None, "auto", 1.0, 1.0)
    outs = {}
    for name in ("reference", backend):
        v1 = torch.empty_like(query)
        ops.paged_attention_v1(v1, *args, backend=name)
        v2 = torch.empty_like(query)
        exp_sums, max_logits, tmp_out = ops.v2_workspace(2, 32, head_size, 320,
                                                         dtype=torch.float16, device=device)
        ops.paged_attention_v2(v2, exp_sums, max_logits, tmp_out, *args, backend=name)
        outs[name] = (v1, v2)
    for got, want in zip(outs[backend], outs["reference"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    return {"elements_per_tensor": key_cache.numel(), "num_blocks": num_blocks}


def large_cache_step(ctx: Context) -> dict:
    import torch

    backends, excluded = kernel_backends(ctx)
    if not backends:
        raise StepSkipped(f"no kernel backend runs here: {excluded}")
    results, status = {}, PASS
    for backend in backends:
        try:
            results[backend] = check_large_cache(backend, ctx.device, ctx.sizes.large_blocks)
        except torch.OutOfMemoryError as exc:
            results[backend] = {"skipped": error_line(exc)}
        except Exception as exc:
            results[backend] = {"error": error_line(exc)}
            status = FAIL
        finally:
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    elements = max((r.get("elements_per_tensor", 0) for r in results.values()), default=0)
    return {"status": status, "results": results, "excluded_backends": excluded,
            "note": f"{elements:,} elements per cache tensor"
                    + (" (> 2^31)" if elements > 2**31 else " (dry-run size, < 2^31)")}


__all__ = ["attention_sample_step", "check_case", "check_large_cache", "large_cache_step"]
