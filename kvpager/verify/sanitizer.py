"""compute-sanitizer on a small case that runs every CUDA kernel family once.

`small_case()` is the workload: cache writes (padding slots included), v1 and v2 with and
without block-sparsity, ALiBi, three dtypes and both FP8 formats, copy and swap of blocks,
and the LSE merge with an infinite LSE. Run as `python -m kvpager.verify.sanitizer` it is
the process compute-sanitizer watches (torch's caching allocator off, so an out-of-bounds
access lands past the end of a real allocation, where memcheck sees it). The dry run calls
it in-process on the CPU with the reference backend, so the workload itself stays tested.
"""

from __future__ import annotations

import re
import sys
import time

from kvpager.verify.runner import FAIL, PASS, SKIPPED, Context, StepSkipped

DONE = "small case: all kernels ran"


def small_case(backend: str = "cuda", device: str = "cuda") -> None:
    """Every kernel family once on small shapes, through the backend object."""
    import torch

    from kvpager.backends import get
    from kvpager.backends.op_args import CacheWriteArgs, PagedAttentionArgs

    be = get(backend)
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=dev)

    for dtype, kv, bs, head in ((torch.float16, "auto", 16, 128), (torch.bfloat16, "fp8", 8, 80),
                                (torch.float32, "fp8_e5m2", 32, 64)):
        num_seqs, heads, kv_heads, blocks = 3, 8, 2, 200
        lens = [1, 3 * bs, 1100]
        elem = 1 if kv != "auto" else torch.empty((), dtype=dtype).element_size()
        x = 16 // elem
        cache_dtype = dtype if kv == "auto" else torch.uint8
        kc = torch.zeros(blocks, kv_heads, head // x, bs, x, dtype=cache_dtype, device=dev)
        vc = torch.zeros(blocks, kv_heads, head, bs, dtype=cache_dtype, device=dev)
        tokens = sum(lens)
        key = randn(tokens, kv_heads, head).to(dtype)
        value = randn(tokens, kv_heads, head).to(dtype)
        slots = torch.randperm(blocks * bs, generator=gen, device=dev)[:tokens]
        slots[::11] = -1
        be.reshape_and_cache(CacheWriteArgs(key, value, kc, vc, slots, kv, 0.5, 0.5))
        max_blocks = -(-max(lens) // bs)
        tables = torch.randint(0, blocks, (num_seqs, max_blocks), generator=gen, device=dev,
                               dtype=torch.int32)
        seq_lens = torch.tensor(lens, device=dev, dtype=torch.int32)
        q = randn(num_seqs, heads, head).to(dtype)
        alibi = torch.linspace(0.01, 0.5, heads, device=dev)
        for sparse in ((0, 0, 64, 0), (4, 4, 32, -1)):
            out = torch.empty_like(q)
            be.paged_attention_v1(PagedAttentionArgs(
                out, q, kc, vc, kv_heads, head ** -0.5, tables, seq_lens, bs, max(lens), alibi,
                kv, 0.5, 0.5, 0, *sparse))
            parts = -(-max(lens) // 512)
            es = torch.empty(num_seqs, heads, parts, device=dev)
            ml = torch.empty_like(es)
            tmp = torch.empty(num_seqs, heads, parts, head, device=dev, dtype=dtype)
            be.paged_attention_v2(PagedAttentionArgs.v2(
                out, es, ml, tmp, q, kc, vc, kv_heads, head ** -0.5, tables, seq_lens, bs,
                max(lens), None, kv, torch.tensor(0.5, device=dev), 0.5, 1, *sparse))
        be.copy_blocks([kc, kc.clone()], [vc, vc.clone()],
                       torch.tensor([[0, 5], [1, 6]], device=dev))
        host = torch.empty((4, *kc.shape[1:]), dtype=kc.dtype, pin_memory=device == "cuda")
        be.swap_blocks(kc, host, torch.tensor([[0, 0], [1, 1], [7, 3]]))
        be.swap_blocks(host, kc, torch.tensor([[3, 9]]))
        po = randn(5, heads, head).to(dtype)
        lse = randn(heads, 5)
        lse[0, 0] = float("inf")
        out_m = torch.empty_like(po)
        be.merge_attn_states(out_m, po, lse, po.clone(), lse.clone(), torch.empty_like(lse))
    if device == "cuda":
        torch.cuda.synchronize()


def sanitizer_step(ctx: Context) -> dict:
    """memcheck over `small_case` on the cuda backend (one tool: the one that finds
    out-of-bounds reads and writes, the likeliest defect of hand-written indexing)."""
    import os

    from kvpager.verify.steps_setup import run_group, sanitizer_path

    if ctx.dry_run:
        small_case("reference", "cpu")  # the workload runs; the tool needs a GPU
        raise StepSkipped("dry run: compute-sanitizer needs a GPU (the small case ran on the "
                          "CPU with the reference backend)")
    tool = sanitizer_path()
    if tool is None:
        raise StepSkipped("compute-sanitizer not found (CUDA_HOME/bin, /usr/local/cuda/bin, "
                          "PATH)")
    if not ctx.state.get("cuda_built"):
        raise StepSkipped("the cuda backend was not built in this run")
    timeout = max(10.0, ctx.time_for(ctx.sizes.sanitizer_timeout_s, floor_s=60.0))
    log = ctx.out / "sanitizer_memcheck.log"
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "99", sys.executable, "-m",
           "kvpager.verify.sanitizer"]
    start = time.monotonic()
    with log.open("w") as fh:
        rc = run_group(cmd, fh, env, timeout)
    outcome = memcheck_outcome(rc, log.read_text(errors="replace"), timeout)
    return {**outcome, "log": str(log), "seconds_tool": round(time.monotonic() - start, 1)}


def memcheck_outcome(rc: int | None, text: str, timeout: float) -> dict:
    """The step's record from memcheck's exit status (None: killed at `timeout`) and log.

    Pass: exit 0, "ERROR SUMMARY: 0 errors" and the case's last line printed. Running out
    of time is a skip (nothing learnt about the kernels) unless errors were already
    reported, which is a failure like any memcheck error.
    """
    found = re.search(r"ERROR SUMMARY: (\d+) error", text)
    errors = int(found.group(1)) if found else None
    ran = DONE in text
    result = {"rc": rc, "errors": errors, "case_ran": ran}
    if rc is None:
        early = len(re.findall(r"^========= (?:Invalid|Program hit|Malloc/Free)", text, re.M))
        if early:
            return {"status": FAIL, **result, "errors_before_timeout": early,
                    "note": f"memcheck reported {early} errors, then ran out of time"}
        return {"status": SKIPPED, **result,
                "reason": f"memcheck did not finish in {timeout:.0f}s (no error reported "
                          "before then)"}
    ok = rc == 0 and ran and errors == 0
    return {"status": PASS if ok else FAIL, **result,
            "note": f"memcheck: {errors} errors" + ("" if ran else ", the case did not finish")}


if __name__ == "__main__":
    small_case()
    print(DONE, flush=True)  # the step checks that the case got this far under the tool
    sys.exit(0)
