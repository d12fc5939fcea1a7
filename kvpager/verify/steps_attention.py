"""Correctness of paged attention on each kernel backend against the reference.

`attention_sample_step` walks the kernel matrix in covering order (every value of every
dimension first, then pairs of values; `matrix.covering_order`) until its time slice is
spent. The covering prefix always runs unless the whole budget is gone: without it the
sample says nothing about some dimension. Every other case has the cache's unused slots
filled with NaN (compared with the reference on the clean cache), so the NaN case is part
of the sample, not a separate test. Each case is journaled as it finishes.

`large_cache_step` reads blocks at the end of a cache of more than 2^31 elements per
tensor, which needs 64-bit offsets in the kernels.
"""

from __future__ import annotations

import time

from kvpager.verify.runner import FAIL, PASS, Context, StepSkipped
from kvpager.verify.steps_setup import kernel_backends


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    return f"{type(exc).__name__}: " + " | ".join(lines[:4])[:600]


def check_case(case, backends: list[str], device: str, long_len: tuple[int, int],
               poison: bool) -> dict[str, str | None]:
    """backend -> None when it matches the reference on `case`, else the mismatch."""
    from kvpager.verify.matrix import assert_matches_reference as compare
    from kvpager.verify.matrix import make_inputs, poison_unused_slots, reference_outputs

    inputs = make_inputs(case, device, long_len=long_len)
    want = reference_outputs(inputs)
    tested = poison_unused_slots(inputs) if poison else inputs
    outcome: dict[str, str | None] = {}
    for backend in backends:
        try:
            compare(tested, want, backend)
            outcome[backend] = None
        except Exception as exc:  # a mismatch or a kernel error is this case's finding
            outcome[backend] = _first_line(exc)
    return outcome


def attention_sample_step(ctx: Context) -> dict:
    from kvpager.verify.matrix import case_values, covering_order, full_matrix

    backends, excluded = kernel_backends(ctx)
    if not backends:
        raise StepSkipped(f"no kernel backend runs here: {excluded}")
    sizes = ctx.sizes
    deadline = time.monotonic() + ctx.time_for(ctx.budget.total_s * sizes.attention_share)
    hard_stop = ctx.budget.start + ctx.budget.total_s
    pool = full_matrix()
    uncovered = set().union(*map(case_values, pool))
    ran, singles, failures, per_backend = 0, 0, [], {b: 0 for b in backends}
    for index, case in enumerate(covering_order(pool, seed=sizes.seed)):
        now = time.monotonic()
        if index >= sizes.max_cases or now >= hard_stop or (not uncovered and now >= deadline):
            break
        if uncovered:
            singles += 1
            uncovered -= case_values(case)
        poison = index % 2 == 1
        start = time.monotonic()
        outcome = check_case(case, backends, ctx.device, sizes.long_len, poison)
        ran += 1
        bad = {b: why for b, why in outcome.items() if why is not None}
        for b in bad:
            per_backend[b] += 1
        if bad:
            failures.append({"case": case.id, "nan_unused": poison, "errors": bad})
        ctx.journal.write("case", step="attention_sample", index=index, case=case.id,
                          nan_unused=poison, seconds=round(time.monotonic() - start, 2),
                          status=FAIL if bad else PASS, errors=bad)
    covered = not uncovered
    return {"status": FAIL if failures or not covered else PASS, "backends": backends,
            "excluded_backends": excluded, "cases": ran, "covering_prefix": singles,
            "every_value_covered": covered, "failures_per_backend": per_backend,
            "failures": failures[:50],
            "note": f"{ran} cases ({singles} cover every value), "
                    f"{len(failures)} with a mismatch, backends {', '.join(backends)}"
                    + ("" if covered else "; STOPPED BEFORE EVERY VALUE WAS COVERED")}


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
        workspace = ops.v2_workspace(2, 32, head_size, 320, dtype=torch.float16, device=device)
        ops.paged_attention_v2(v2, *workspace, *args, backend=name)
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
            results[backend] = {"skipped": _first_line(exc)}
        except Exception as exc:
            results[backend] = {"error": _first_line(exc)}
            status = FAIL
        finally:
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    elements = max((r.get("elements_per_tensor", 0) for r in results.values()), default=0)
    return {"status": status, "results": results, "excluded_backends": excluded,
            "note": f"{elements:,} elements per cache tensor"
                    + (" (> 2^31)" if elements > 2**31 else " (dry-run size, < 2^31)")}


__all__ = ["attention_sample_step", "check_case", "check_large_cache", "large_cache_step"]
