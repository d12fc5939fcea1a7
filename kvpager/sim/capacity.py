"""How many requests of a given length fit on a deployment at once, with and without
hybrid allocation: the figure vLLM prints at start-up ("maximum concurrency"), per group.

    from kvpager.sim.capacity import capacity
    plan = capacity("gpt-oss-120b", "h200", max_model_len=131072)
    plan["max_concurrency"], plan["no_hybrid"]["max_concurrency"]

A request of `max_model_len` tokens holds, in each group, what that group keeps at its
longest (`kvpager.sim.kv_groups.KVLayout.pages_per_request`: every token for full attention
and MLA; the window plus one step's tokens for a window; the chunk plus one step's for a
chunked group), in pages of the shared pool, plus any linear-attention state.
`max_concurrency` = KV memory per GPU / bytes per request (vLLM's figure divides blocks the
same way). The memory itself is `CostModel.kv_capacity_bytes` (one formula).
"""

from __future__ import annotations

from kvpager.sim.cost_model import CostModel, ModelDoesNotFitError
from kvpager.sim.kv_groups import layout
from kvpager.sim.presets import GPUSpec, ModelSpec, get_gpu, get_model


def _one(cost: CostModel, max_model_len: int, block_size: int, hybrid: bool) -> dict:
    kv = layout(cost, block_size, hybrid)
    step = min(cost.max_num_batched_tokens, max_model_len)
    per_request = kv.bytes_per_request(max_model_len, step)
    groups = kv.describe()
    for spec, row in zip(kv.paged, groups, strict=False):
        held = kv.tokens_held(spec, max_model_len, step)
        row["tokens_held_per_request"] = held
    return {
        "hybrid": hybrid,
        "groups": groups,
        "page_bytes": kv.page_bytes,
        "num_pages": int(cost.kv_capacity_bytes // kv.page_bytes),
        "pages_per_request": kv.pages_per_request(max_model_len, step),
        "bytes_per_request": per_request,
        "max_concurrency": cost.kv_capacity_bytes / per_request,
    }


def capacity(model: str | ModelSpec, gpu: str | GPUSpec, *, tp: int = 1,
             max_model_len: int | None = None, kv_cache_dtype: str = "auto",
             block_size: int = 16, max_num_batched_tokens: int = 8192,
             gpu_memory_utilization: float = 0.9, hybrid: bool = True) -> dict:
    """KV memory per GPU and the requests of `max_model_len` tokens (default the model's
    context) that fit at once, for the allocation `hybrid` chooses, and the other one under
    "hybrid" / "no_hybrid" (whichever `hybrid` is not). Raises ModelDoesNotFitError /
    ValueError naming the argument."""
    spec = get_model(model)
    length = spec.max_context if max_model_len is None else max_model_len
    if type(length) is not int or length < 1:
        raise ValueError(f"max_model_len: expected an integer >= 1, got {length!r}")
    if type(block_size) is not int or block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, got {block_size!r}")
    cost = CostModel(spec, gpu, tp=tp, kv_cache_dtype=kv_cache_dtype,
                     gpu_memory_utilization=gpu_memory_utilization,
                     max_num_batched_tokens=max_num_batched_tokens)
    main = _one(cost, length, block_size, hybrid)
    other = _one(cost, length, block_size, not hybrid)
    out = {"model": spec.name, "gpu": get_gpu(cost.gpu).name, "tp": tp, "max_model_len": length,
           "kv_cache_dtype": kv_cache_dtype, "block_size": block_size,
           "weight_bytes_per_gpu": cost.weight_bytes_per_gpu,
           "kv_cache_bytes": cost.kv_capacity_bytes} | main
    out["no_hybrid" if hybrid else "hybrid_allocation"] = other
    with_groups, without = (main, other) if hybrid else (other, main)
    out["hybrid_gain"] = with_groups["max_concurrency"] / without["max_concurrency"]
    out["no_hybrid_waste"] = 1 - with_groups["bytes_per_request"] / without["bytes_per_request"]
    # once the prompt is in and the request decodes, a window holds W tokens (+ one block),
    # not W + a prefill chunk: vLLM's RFC figures are this steady state
    dec_with = layout(cost, block_size, True).bytes_per_request(length, 1)
    dec_without = layout(cost, block_size, False).bytes_per_request(length, 1)
    out["decode"] = {"max_concurrency": cost.kv_capacity_bytes / dec_with,
                     "no_hybrid_max_concurrency": cost.kv_capacity_bytes / dec_without,
                     "hybrid_gain": dec_without / dec_with,
                     "no_hybrid_waste": 1 - dec_with / dec_without}
    return out


__all__ = ["ModelDoesNotFitError", "capacity"]
