"""Measurements of the attention benchmark: one shape, the Triton sweep, the summary.

Records are flat dicts (one per backend x version x shape, one per baseline x shape) so that
a results file loads straight into a dataframe. GB/s = bytes / median seconds / 1e9.
Fields: the shape (`dtype` is the query dtype, `kv_cache_dtype` the cache format,
`dtype_name` the benchmark's label: "fp8" = float16 queries over an fp8_e4m3 cache), then
`backend` / `version` / `auto_version` (what `ops.paged_attention` would pick) or `kind`
("sdpa", "copy"), the timing (`us_per_call` median, `us_per_call_min`, `repeats`, `timing`
method, `us_eager` = the same call launched from Python without a graph), `bytes`,
`gb_per_s`, and with verification `max_abs_diff_vs_sdpa` / `matches_sdpa`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvpager.bench.attention_shapes import (
    DecodeInputs,
    DecodeShape,
    contiguous_kv,
    default_version,
    make_inputs,
)
from kvpager.bench.timing import FLUSH_BYTES, Timing, time_cpu, time_cuda

if TYPE_CHECKING:
    import torch

    from kvpager.bench.attention import AttentionBenchConfig

#: Triton launch configurations `--sweep` times (tile tokens, warps, pipeline stages).
SWEEP_TILES = (16, 32, 64)
SWEEP_WARPS = (4, 8)
SWEEP_STAGES = (1, 3)
#: Targets a GPU run is judged by (see the issue); the summary reports the measured values.
TARGET_SHARE_OF_COPY = 0.75
TARGET_V2_SPEEDUP = 2.0
#: Output agreement with SDPA, (atol, rtol) by query dtype; FP8 adds the cache's rounding.
_TOLERANCE = {"float32": (1e-3, 1e-3), "float16": (5e-3, 5e-3), "bfloat16": (3e-2, 3e-2)}
_SDPA_KERNELS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def _budget_bytes(config: AttentionBenchConfig, device: str) -> float:
    if config.max_memory_gb is not None:
        return config.max_memory_gb * 2**30
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return 0.45 * free * 2  # 45% of free for the cache, as much again for a baseline
    return 4 * 2**30


def _needed_bytes(shape: DecodeShape, baselines: bool) -> int:
    dense = 2 * shape.batch * shape.context * shape.num_kv_heads * shape.head_size * \
        (4 if shape.query_dtype == "float32" else 2)
    extra = max(dense, shape.cache_bytes) if baselines else 0
    return shape.cache_bytes + extra + FLUSH_BYTES + 2**28  # + fill temporaries


def _timer(device: str, config: AttentionBenchConfig, flush: torch.Tensor | None):
    def timed(fn: Callable[[], object], graph: bool = True) -> Timing:
        if device == "cuda":
            return time_cuda(fn, warmup=config.warmup, repeats=config.repeats,
                             use_graph=graph, flush=flush)
        return time_cpu(fn, warmup=config.warmup, repeats=config.repeats)
    return timed


def _attention_call(inputs: DecodeInputs, backend: str, version: str) -> Callable[[], None]:
    import kvpager.ops as ops

    if version == "v1":
        return lambda: ops.paged_attention_v1(inputs.out, *inputs.args(), backend=backend,
                                              check_indices=False)
    return lambda: ops.paged_attention_v2(inputs.out, *inputs.workspace, *inputs.args(),
                                          backend=backend, check_indices=False)


def _sdpa(inputs: DecodeInputs
          ) -> tuple[Callable[[], torch.Tensor], str, tuple[torch.Tensor, torch.Tensor]]:
    """(call, kernel name, keys/values kept alive) of SDPA on contiguous K/V; the first
    kernel in FLASH, EFFICIENT, CUDNN, MATH order that accepts the shape is pinned."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    keys, values = contiguous_kv(inputs)
    query = inputs.query[:, :, None, :]
    gqa: dict[str, Any] = (
        {"enable_gqa": True} if inputs.shape.num_heads != inputs.shape.num_kv_heads else {})
    for name in _SDPA_KERNELS:
        kernel = getattr(SDPBackend, name, None)
        if kernel is None:
            continue

        def call(kernel=kernel) -> torch.Tensor:
            with sdpa_kernel(kernel):
                return torch.nn.functional.scaled_dot_product_attention(
                    query, keys, values, scale=inputs.scale, **gqa)
        try:
            call()
        except RuntimeError:
            continue
        return call, name.lower(), (keys, values)
    raise RuntimeError("no SDPA kernel accepts this shape")


def _record(shape: DecodeShape, timing: Timing, nbytes: int, **fields) -> dict:
    return {**shape.as_dict(), "dtype_name": shape.dtype, **fields, **timing.as_dict(),
            "bytes": nbytes, "gb_per_s": round(nbytes / timing.median_s / 1e9, 3)}


def measure_shape(shape: DecodeShape, device: str, backends: tuple[str, ...],
                  config: AttentionBenchConfig, say: Callable[[str], None]) -> dict:
    """{"points": [...], "baselines": [...]} for one shape, or {"skipped": reason}."""
    import torch

    needed, budget = _needed_bytes(shape, config.baselines), _budget_bytes(config, device)
    if needed > budget:
        return {"skipped": f"needs ~{needed / 2**30:.1f} GiB of buffers, over the "
                           f"{budget / 2**30:.1f} GiB budget (--max-memory-gb)"}
    inputs = make_inputs(shape, device, seed=config.seed)
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device) \
        if device == "cuda" else None
    timed = _timer(device, config, flush)
    baselines: list[dict] = []
    want = None
    if config.baselines:
        sdpa, kernel, keep = _sdpa(inputs)
        want = sdpa().squeeze(2).float() if config.verify else None
        sdpa_bytes = sum(t.numel() * t.element_size() for t in keep) + \
            2 * inputs.query.numel() * inputs.query.element_size()
        baselines.append(_record(shape, timed(sdpa), sdpa_bytes, kind="sdpa",
                                 sdpa_kernel=kernel))
        del keep, sdpa
        dst_k, dst_v = torch.empty_like(inputs.key_cache), torch.empty_like(inputs.value_cache)

        def copy() -> None:
            dst_k.copy_(inputs.key_cache)
            dst_v.copy_(inputs.value_cache)

        baselines.append(_record(shape, timed(copy), 2 * shape.cache_bytes, kind="copy",
                                 bytes_note="read + written"))
        del dst_k, dst_v
    points = []
    auto = default_version(shape)
    for backend, version in itertools.product(backends, config.versions):
        call = _attention_call(inputs, backend, version)
        extra = {}
        timing = timed(call, graph=backend != "reference")
        if device == "cuda" and backend != "reference":
            extra["us_eager"] = timed(call, graph=False).as_dict()["us_per_call"]
        if want is not None:
            call()
            atol, rtol = _TOLERANCE[shape.query_dtype]
            got = inputs.out.float()
            extra["max_abs_diff_vs_sdpa"] = float((got - want).abs().max())
            extra["matches_sdpa"] = bool(torch.allclose(got, want, atol=atol, rtol=rtol))
        points.append(_record(shape, timing, shape.io_bytes, backend=backend,
                              version=version, auto_version=auto, **extra))
        say(f"{backend} {version} {shape.dtype} kv{shape.num_kv_heads} b{shape.batch} "
            f"ctx{shape.context}: {timing.median_s * 1e6:.1f} us")
    return {"points": points, "baselines": baselines}


def sweep_triton(config: AttentionBenchConfig, device: str,
                 say: Callable[[str], None]) -> list[dict]:
    """Time the Triton kernels' launch alternatives on `config.sweep_shapes`."""
    from kvpager.backends.triton.attention import tuned

    records = []
    for (batch, context), kv in itertools.product(config.sweep_shapes, config.kv_heads):
        shape = DecodeShape(batch, context, config.num_heads, kv, config.head_size,
                            config.block_size, config.dtypes[0])
        if _needed_bytes(shape, False) > _budget_bytes(config, device):
            continue
        inputs = make_inputs(shape, device, seed=config.seed)
        timed = _timer(device, config, None)
        for tile, warps, stages in itertools.product(SWEEP_TILES, SWEEP_WARPS, SWEEP_STAGES):
            if tile % shape.block_size:
                continue
            for version in config.versions:
                with tuned(tile=tile, num_warps=warps, num_stages=stages):
                    timing = timed(_attention_call(inputs, "triton", version))
                records.append(_record(shape, timing, shape.io_bytes, backend="triton",
                                       version=version, tile=tile, num_warps=warps,
                                       num_stages=stages))
                say(f"sweep tile{tile} w{warps} s{stages} {version} kv{kv} b{batch} "
                    f"ctx{context}: {timing.median_s * 1e6:.1f} us")
    return records


def summarize(points: list[dict], baselines: list[dict]) -> dict:
    """Per (dtype, kv heads, backend): the measured figures the GPU targets are about."""
    copies = {(b["dtype_name"], b["num_kv_heads"], b["batch"], b["context"]): b["gb_per_s"]
              for b in baselines if b["kind"] == "copy"}
    groups: dict[str, dict] = {}
    for p in points:
        key = f"{p['backend']}/{p['dtype_name']}/kv{p['num_kv_heads']}"
        groups.setdefault(key, {"share_of_copy": {}, "times": {}})
        g = groups[key]
        shape = (p["batch"], p["context"])
        g["times"][(*shape, p["version"])] = p["us_per_call"]
        ceiling = copies.get((p["dtype_name"], p["num_kv_heads"], *shape))
        if ceiling and p["batch"] >= 32 and p["context"] >= 4096:
            best = g["share_of_copy"].get(shape, 0.0)
            g["share_of_copy"][shape] = max(best, p["gb_per_s"] / ceiling)
    summary = {}
    for key, g in groups.items():
        shares = g["share_of_copy"]
        v1, v2 = g["times"].get((8, 32768, "v1")), g["times"].get((8, 32768, "v2"))
        summary[key] = {
            "min_share_of_copy_bandwidth_batch_ge_32_context_ge_4096":
                round(min(shares.values()), 4) if shares else None,
            "shapes_in_that_range": len(shares),
            "v2_speedup_over_v1_batch_8_context_32768":
                round(v1 / v2, 3) if v1 and v2 else None,
            "targets": {"share_of_copy": TARGET_SHARE_OF_COPY,
                        "v2_speedup": TARGET_V2_SPEEDUP},
        }
    return summary


__all__ = ["measure_shape", "summarize", "sweep_triton"]
