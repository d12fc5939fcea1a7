"""Registration of the ops as `torch.ops.kvpager.*` custom operators.

Why: `torch.compile` cannot trace into a backend (Triton launchers, CUDA bindings, data
checks that read tensors), so each op is an opaque custom operator with a schema that says
which arguments it writes (`Tensor(a!)`) and a fake implementation that runs only the static
checks. Dynamo then captures a call as one graph node, functionalizes the writes, and the
real implementation (validation, backend choice, kernel) runs when the graph runs.

The schemas are vLLM's, argument for argument, with `k_scale` / `v_scale` as tensors as in
vLLM's own registrations, plus kvpager's keyword-only `backend` and `check_indices`.
Registration happens once, when `kvpager.ops` is first imported (it calls `register()`);
`import kvpager` does not import torch at all. The real implementations are the functions of
`kvpager.backends.dispatch` (attention and cache writes through `real_*` below, which build
their argument object from the schema's arguments); the fake ones run only the static checks,
which for those ops means building the same object.
"""

from __future__ import annotations

from typing import Any

import torch

from kvpager.backends import cache_checks, dispatch, mla_checks
from kvpager.backends.op_args import CacheWriteArgs, MLADecodeArgs, PagedAttentionArgs

NAMESPACE = "kvpager"

_ATTENTION_TAIL = (
    "Tensor query, Tensor key_cache, Tensor value_cache, int num_kv_heads, float scale, "
    "Tensor block_tables, Tensor seq_lens, int block_size, int max_seq_len, "
    "Tensor? alibi_slopes, str kv_cache_dtype, Tensor k_scale, Tensor v_scale, "
    "int tp_rank=0, int blocksparse_local_blocks=0, int blocksparse_vert_stride=0, "
    "int blocksparse_block_size=64, int blocksparse_head_sliding_step=0, "
    "*, int? sliding_window=None, Tensor? sinks=None, str backend='auto', "
    "bool check_indices=True) -> ()"
)

#: Op name -> schema (without the name). `(a!)` marks what an op writes.
SCHEMAS: dict[str, str] = {
    "paged_attention_v1": "(Tensor(a!) out, " + _ATTENTION_TAIL,
    "paged_attention_v2": (
        "(Tensor(a!) out, Tensor(b!) exp_sums, Tensor(c!) max_logits, Tensor(d!) tmp_out, "
        + _ATTENTION_TAIL
    ),
    "reshape_and_cache": (
        "(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
        "Tensor slot_mapping, str kv_cache_dtype, Tensor k_scale, Tensor v_scale, "
        "*, str backend='auto', bool check_indices=True) -> ()"
    ),
    "copy_blocks": (
        "(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, Tensor block_mapping, "
        "*, str backend='auto', bool check_indices=True) -> ()"
    ),
    "swap_blocks": (
        "(Tensor src, Tensor(a!) dst, Tensor block_mapping, "
        "*, str backend='auto', bool check_indices=True) -> ()"
    ),
    "paged_mla_decode": (
        "(Tensor(a!) out, Tensor query, Tensor latent_cache, Tensor block_tables, "
        "Tensor seq_lens, int block_size, int kv_lora_rank, float scale, "
        "*, int? sliding_window=None, str backend='auto', bool check_indices=True) -> ()"
    ),
    "concat_and_cache_mla": (
        "(Tensor kv_c, Tensor k_pe, Tensor(a!) latent_cache, Tensor slot_mapping, "
        "str kv_cache_dtype, Tensor scale, *, bool check_indices=True) -> ()"
    ),
    "merge_attn_states": (
        "(Tensor(a!) output, Tensor prefix_output, Tensor prefix_lse, Tensor suffix_output, "
        "Tensor suffix_lse, Tensor(b!)? output_lse=None, *, str backend='auto') -> ()"
    ),
}


# ---- real implementations of the ops with an argument object -----------------------------
# The dispatcher passes the schema's arguments positionally (vLLM's order) and the keyword-only
# ones by name; `PagedAttentionArgs` / `CacheWriteArgs` take the same order.
def real_paged_attention_v1(*vllm_args: Any, sliding_window: int | None = None,
                            sinks: torch.Tensor | None = None, backend: str = "auto",
                            check_indices: bool = True) -> None:
    dispatch.paged_attention_v1(PagedAttentionArgs(*vllm_args, sliding_window=sliding_window,
                                                  sinks=sinks),
                                backend=backend, check_indices=check_indices)


def real_paged_attention_v2(*vllm_args: Any, sliding_window: int | None = None,
                            sinks: torch.Tensor | None = None, backend: str = "auto",
                            check_indices: bool = True) -> None:
    dispatch.paged_attention_v2(PagedAttentionArgs.v2(*vllm_args, sliding_window=sliding_window,
                                                   sinks=sinks),
                                backend=backend, check_indices=check_indices)


def real_paged_mla_decode(*args: Any, sliding_window: int | None = None,
                          backend: str = "auto", check_indices: bool = True) -> None:
    dispatch.paged_mla_decode(MLADecodeArgs(*args, sliding_window=sliding_window),
                              backend=backend, check_indices=check_indices)


def real_reshape_and_cache(*vllm_args: Any, backend: str = "auto",
                           check_indices: bool = True) -> None:
    dispatch.reshape_and_cache(CacheWriteArgs(*vllm_args), backend=backend,
                               check_indices=check_indices)


# ---- fake implementations -----------------------------------------------------------------
# What torch.compile runs on fake tensors while tracing: the static checks, so a bad call
# fails at trace time with the same message; no data is read and no backend is chosen, so
# `backend` and `check_indices` are accepted and unused.
def fake_paged_attention_v1(*vllm_args: Any, sliding_window: int | None = None,
                            sinks: torch.Tensor | None = None, backend: str = "auto",
                            check_indices: bool = True) -> None:
    PagedAttentionArgs(*vllm_args, sliding_window=sliding_window, sinks=sinks)


def fake_paged_attention_v2(*vllm_args: Any, sliding_window: int | None = None,
                            sinks: torch.Tensor | None = None, backend: str = "auto",
                            check_indices: bool = True) -> None:
    PagedAttentionArgs.v2(*vllm_args, sliding_window=sliding_window, sinks=sinks)


def fake_paged_mla_decode(*args: Any, sliding_window: int | None = None,
                          backend: str = "auto", check_indices: bool = True) -> None:
    MLADecodeArgs(*args, sliding_window=sliding_window)


def fake_concat_and_cache_mla(*args: Any, check_indices: bool = True) -> None:
    mla_checks.check_concat_and_cache_mla(*args)


def fake_reshape_and_cache(*vllm_args: Any, backend: str = "auto",
                           check_indices: bool = True) -> None:
    CacheWriteArgs(*vllm_args)


def fake_copy_blocks(key_caches: Any, value_caches: Any, block_mapping: Any, *,
                     backend: str = "auto", check_indices: bool = True) -> None:
    cache_checks.check_copy_blocks(key_caches, value_caches, block_mapping)


def fake_swap_blocks(src: Any, dst: Any, block_mapping: Any, *, backend: str = "auto",
                     check_indices: bool = True) -> None:
    cache_checks.check_swap_blocks(src, dst, block_mapping)


def fake_merge_attn_states(*args: Any, backend: str = "auto") -> None:
    cache_checks.check_merge_attn_states(*args)


# Keeps the registrations alive: dropping a Library object removes what it registered.
_library: torch.library.Library | None = None


def is_registered() -> bool:
    return _library is not None


def register() -> None:
    """Define every op in `SCHEMAS`, real implementation `real_<op>` here or else `dispatch`'s
    function of that name (idempotent)."""
    global _library
    if _library is not None:
        return
    library = torch.library.Library(NAMESPACE, "FRAGMENT")
    here = globals()
    for name, schema in SCHEMAS.items():
        library.define(name + schema)
        # CompositeExplicitAutograd: one implementation for every device; it never needs
        # autograd (the ops write caches and outputs, they are not differentiated).
        real = here.get(f"real_{name}", getattr(dispatch, name))
        library.impl(name, real, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{name}", here[f"fake_{name}"], lib=library)
    _library = library


__all__ = ["NAMESPACE", "SCHEMAS", "is_registered", "register"]
