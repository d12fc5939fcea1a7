"""Correctness of the other kernels: cache writes and block moves, the LSE merge, and the
sparse index ops, each kernel backend against the reference (bit for bit where the
operation is a copy or an integer computation).

Every check is a small function returning None or the mismatch, so one failing dtype does
not hide the others; a step fails when any check does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from kvpager.verify.runner import FAIL, PASS, Context, StepSkipped, error_line
from kvpager.verify.steps_setup import kernel_backends

KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
DTYPES = ("float16", "bfloat16", "float32")


def _run_checks(checks: dict[str, Callable[[], None]]) -> dict:
    results: dict[str, str | None] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = None
        except Exception as exc:  # each check is reported on its own
            results[name] = error_line(exc)
    bad = {k: v for k, v in results.items() if v is not None}
    return {"status": FAIL if bad else PASS, "checks": len(results), "failures": bad,
            "note": f"{len(results) - len(bad)}/{len(results)} checks pass"}


def _backends(ctx: Context) -> list[str]:
    names, excluded = kernel_backends(ctx)
    if not names:
        raise StepSkipped(f"no kernel backend runs here: {excluded}")
    return names


# ---- cache ops -------------------------------------------------------------------------------

def check_reshape_and_cache(backend: str, device: str, dtype_name: str, kv: str) -> None:
    """The backend's cache bytes equal the CPU reference's (IEEE division by the scale);
    k_scale as a float and v_scale as a tensor, padding slots (-1) skipped."""
    import torch

    import kvpager.ops as ops

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    key = torch.randn(40, 4, 128, generator=gen).mul(5).to(dtype)
    value = torch.randn(40, 4, 128, generator=gen).mul(5).to(dtype)
    slots = torch.randperm(64 * 16, generator=gen)[:40]
    slots[[3, 9]] = -1
    results = []
    for where, name in (("cpu", "reference"), (device, backend)):
        kc, vc = ops.allocate_kv_cache(64, 4, 128, 16, dtype=dtype, kv_cache_dtype=kv,
                                       device=where)
        ops.reshape_and_cache(key.to(where), value.to(where), kc, vc, slots.to(where), kv,
                              0.37, torch.tensor(1.3), backend=name)
        results.append((kc.cpu(), vc.cpu()))
    for ref, got in zip(results[0], results[1], strict=True):
        if not torch.equal(got.view(torch.uint8), ref.view(torch.uint8)):
            raise AssertionError("cache bytes differ from the CPU reference")


def check_copy_blocks(backend: str, device: str) -> None:
    """copy_blocks over two layers equals the reference's, bit for bit."""
    import torch

    import kvpager.ops as ops

    gen = torch.Generator().manual_seed(1)
    base_k = torch.randn(12, 2, 8, 16, 8, generator=gen).half()
    base_v = torch.randn(12, 2, 64, 16, generator=gen).half()
    mapping = torch.tensor([[0, 5], [1, 6], [7, 2], [3, 11]])
    results = []
    for name in ("reference", backend):
        ks = [base_k.to(device), (base_k * 2).to(device)]
        vs = [base_v.to(device), (base_v * 3).to(device)]
        ops.copy_blocks(ks, vs, mapping.to(device), backend=name)
        results.append([t.cpu() for t in ks + vs])
    if not all(torch.equal(a, b) for a, b in zip(*results, strict=True)):
        raise AssertionError("copy_blocks differs from the reference")


def check_swap_round_trip(backend: str, device: str) -> None:
    """Blocks swapped out to (pinned) host memory and back in are bit-identical, and blocks
    the mappings do not name are untouched."""
    import torch

    import kvpager.ops as ops

    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float16, torch.uint8):
        gpu = torch.randint(0, 250, (16, 2, 64, 16), generator=gen).to(dtype).to(device)
        pinned = device == "cuda"
        host = torch.zeros(6, 2, 64, 16, dtype=dtype, pin_memory=pinned)
        out_map = torch.tensor([[3, 0], [4, 1], [5, 2], [9, 5]])  # a run of three, then one
        ops.swap_blocks(gpu, host, out_map, backend=backend)
        back = torch.zeros_like(gpu)
        in_map = torch.tensor([[0, 10], [1, 11], [2, 12], [5, 2]])
        ops.swap_blocks(host, back, in_map, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        for (src, mid), (_, dst) in zip(out_map.tolist(), in_map.tolist(), strict=True):
            if not torch.equal(back[dst].cpu(), gpu[src].cpu()):
                raise AssertionError(f"{dtype}: block {src} -> host {mid} -> {dst} changed")
        untouched = [b for b in range(16) if b not in (10, 11, 12, 2)]
        if not back[untouched].eq(0).all():
            raise AssertionError(f"{dtype}: swap-in wrote blocks outside its mapping")


def cache_ops_step(ctx: Context) -> dict:
    checks: dict[str, Callable[[], None]] = {}
    for backend in _backends(ctx):
        for dtype in DTYPES:
            for kv in KV_CACHE_DTYPES:
                checks[f"{backend}/reshape_and_cache/{dtype}/{kv}"] = (
                    partial(check_reshape_and_cache, backend, ctx.device, dtype, kv))
        checks[f"{backend}/copy_blocks"] = partial(check_copy_blocks, backend, ctx.device)
        checks[f"{backend}/swap_round_trip"] = (
            partial(check_swap_round_trip, backend, ctx.device))
    return _run_checks(checks)


# ---- merge_attn_states -----------------------------------------------------------------------

def check_merge(backend: str, device: str, dtype_name: str, head_size: int) -> None:
    """merge_attn_states against the reference, with an infinite LSE marking empty parts."""
    import torch

    import kvpager.ops as ops

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(head_size)
    parts = [torch.randn(33, 8, head_size, generator=gen).to(dtype).to(device)
             for _ in range(2)]
    lses = [torch.randn(8, 33, generator=gen).mul(3).to(device) for _ in range(2)]
    lses[0][2, 5] = float("inf")
    lses[1][:, 7] = float("-inf")
    outs = []
    for name in ("reference", backend):
        out = torch.empty_like(parts[0])
        out_lse = torch.empty_like(lses[0])
        ops.merge_attn_states(out, parts[0], lses[0], parts[1], lses[1], out_lse, backend=name)
        outs.append((out, out_lse))
    tol = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}[dtype_name]
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=tol, rtol=tol)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)


def merge_step(ctx: Context) -> dict:
    checks: dict[str, Callable[[], None]] = {}
    for backend in _backends(ctx):
        for dtype in DTYPES:
            for head_size in (64, 128):
                checks[f"{backend}/{dtype}/d{head_size}"] = (
                    partial(check_merge, backend, ctx.device, dtype, head_size))
    return _run_checks(checks)


# ---- sparse index ops ------------------------------------------------------------------------

def _minference_like(gen, batch: int, heads: int, kv: int, nnz_v: int, nnz_s: int):
    """Sorted vertical / slash index lists with MInference's always-kept sinks (the first
    keys) and local diagonals (the first slashes)."""
    import torch

    sinks, local = min(30, nnz_v), min(100, nnz_s)
    vertical = torch.stack([torch.cat([torch.arange(sinks), sinks + torch.randperm(
        kv - sinks, generator=gen)[: nnz_v - sinks]]).sort().values
        for _ in range(batch * heads)]).view(batch, heads, nnz_v)
    slash = torch.stack([torch.cat([torch.arange(local), local + torch.randperm(
        kv - local, generator=gen)[: nnz_s - local]]).sort(descending=True).values
        for _ in range(batch * heads)]).view(batch, heads, nnz_s)
    return vertical.int(), slash.int()


def _same(want, got) -> None:
    import torch

    for w, g in zip(want, got, strict=True):
        if not torch.equal(w.cpu(), g.cpu()):
            raise AssertionError("differs from the reference")


def sparse_step(ctx: Context) -> dict:
    """convert_vertical_slash_indexes (causal and not, merged heads), top-k prefill and
    decode: the Triton kernels against the reference, exactly."""
    import torch

    from kvpager.sparse import (
        convert_vertical_slash_indexes,
        convert_vertical_slash_indexes_mergehead,
        top_k_per_row_decode,
        top_k_per_row_prefill,
    )

    if "triton" not in _backends(ctx):
        raise StepSkipped("the sparse ops' kernels are Triton's, and Triton cannot run here")
    s = ctx.sizes
    dev = ctx.device
    gen = torch.Generator().manual_seed(0)

    def convert(causal: bool) -> None:
        n = s.sparse_tokens
        q = torch.tensor([n, n * 3 // 4], dtype=torch.int32)
        kv = q.clone() if causal else torch.tensor([2 * n, 100], dtype=torch.int32)
        vertical, slash = _minference_like(gen, 2, 4, n * 3 // 4, n // 16, n // 12)
        args = (vertical, slash, n, 64, 64, causal)
        want = convert_vertical_slash_indexes(q, kv, *args, backend="reference")
        got = convert_vertical_slash_indexes(q.to(dev), kv.to(dev), vertical.to(dev),
                                             slash.to(dev), *args[2:], backend="triton")
        _same(want, got)

    def mergehead() -> None:
        n = s.sparse_tokens // 2
        q = kv = torch.tensor([n], dtype=torch.int32)
        vertical = torch.randint(-5, n + 50, (1, 8, 200), generator=gen, dtype=torch.int32)
        slash = torch.randint(-5, n + 50, (1, 8, 300), generator=gen, dtype=torch.int32)
        v_count = torch.randint(0, 201, (8,), generator=gen, dtype=torch.int32)
        s_count = torch.randint(0, 301, (8,), generator=gen, dtype=torch.int32)
        tensors = (q, kv, vertical, slash, v_count, s_count)
        want = convert_vertical_slash_indexes_mergehead(*tensors, n, 64, 32, True,
                                                        backend="reference")
        # the ignore: mypy cannot count the arguments a star-expanded generator gives
        got = convert_vertical_slash_indexes_mergehead(*(t.to(dev) for t in tensors), n, 64,  # type: ignore[call-arg, misc, arg-type]
                                                       32, True, backend="triton")
        _same(want, got)

    def top_k_prefill(dtype: torch.dtype, ties: bool) -> None:
        rows, cols, k = s.topk_rows, s.topk_cols, s.topk_k
        logits = (torch.randint(0, 300, (rows, cols), generator=gen) if ties
                  else torch.randn(rows, cols, generator=gen)).to(dtype)
        starts = torch.randint(0, cols // 4, (rows,), generator=gen, dtype=torch.int32)
        ends = (starts + torch.randint(0, cols, (rows,), generator=gen)).clamp(max=cols)
        want = torch.empty(rows, k, dtype=torch.int32)
        top_k_per_row_prefill(logits, starts, ends.int(), want, rows, cols, 1, k,
                              backend="reference")
        got = torch.empty(rows, k, dtype=torch.int32, device=dev)
        top_k_per_row_prefill(logits.to(dev), starts.to(dev), ends.int().to(dev), got, rows,
                              cols, 1, k, backend="triton")
        _same([want], [got])

    def top_k_decode() -> None:
        next_n, batch, cols, k = 2, s.topk_rows // 2, s.topk_cols, s.topk_k
        seq_lens = torch.randint(1, cols + 1, (batch,), generator=gen, dtype=torch.int32)
        logits = torch.randn(batch * next_n, cols, generator=gen)
        want = torch.empty(batch * next_n, k, dtype=torch.int32)
        top_k_per_row_decode(logits, next_n, seq_lens, want, batch * next_n, cols, 1, k,
                             backend="reference")
        got = torch.empty(batch * next_n, k, dtype=torch.int32, device=dev)
        top_k_per_row_decode(logits.to(dev), next_n, seq_lens.to(dev), got, batch * next_n,
                             cols, 1, k, backend="triton")
        _same([want], [got])

    return _run_checks({
        "convert/causal": lambda: convert(True),
        "convert/non_causal": lambda: convert(False),
        "convert_mergehead": mergehead,
        "top_k_prefill/float32": lambda: top_k_prefill(torch.float32, False),
        "top_k_prefill/bfloat16_ties": lambda: top_k_prefill(torch.bfloat16, True),
        "top_k_decode": top_k_decode,
    })


__all__ = ["cache_ops_step", "check_copy_blocks", "check_merge", "check_reshape_and_cache",
           "check_swap_round_trip", "merge_step", "sparse_step"]
