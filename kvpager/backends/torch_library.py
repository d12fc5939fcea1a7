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
`kvpager.backends.dispatch`; the fake ones below run only the static checks.
"""

from __future__ import annotations

import torch

from kvpager.backends import attention_checks, cache_checks, dispatch

NAMESPACE = "kvpager"

_ATTENTION_TAIL = (
    "Tensor query, Tensor key_cache, Tensor value_cache, int num_kv_heads, float scale, "
    "Tensor block_tables, Tensor seq_lens, int block_size, int max_seq_len, "
    "Tensor? alibi_slopes, str kv_cache_dtype, Tensor k_scale, Tensor v_scale, "
    "int tp_rank=0, int blocksparse_local_blocks=0, int blocksparse_vert_stride=0, "
    "int blocksparse_block_size=64, int blocksparse_head_sliding_step=0, "
    "*, str backend='auto', bool check_indices=True) -> ()"
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
    "merge_attn_states": (
        "(Tensor(a!) output, Tensor prefix_output, Tensor prefix_lse, Tensor suffix_output, "
        "Tensor suffix_lse, Tensor(b!)? output_lse=None, *, str backend='auto') -> ()"
    ),
}


# ---- fake implementations -----------------------------------------------------------------
# What torch.compile runs on fake tensors while tracing: the static checks, so a bad call
# fails at trace time with the same message; no data is read and no backend is chosen, so
# `backend` and `check_indices` are accepted and unused.
def fake_paged_attention_v1(*args, backend="auto", check_indices=True) -> None:
    attention_checks.check_attention(*args)


def fake_paged_attention_v2(out, exp_sums, max_logits, tmp_out, *args, backend="auto",
                            check_indices=True) -> None:
    dims = attention_checks.check_attention(out, *args)
    max_seq_len = args[8]  # args: query, key_cache, value_cache, num_kv_heads, scale, ...
    attention_checks.check_v2_workspace(dims, exp_sums, max_logits, tmp_out, max_seq_len)


def fake_reshape_and_cache(*args, backend="auto", check_indices=True) -> None:
    cache_checks.check_reshape_and_cache(*args)


def fake_copy_blocks(key_caches, value_caches, block_mapping, *, backend="auto",
                     check_indices=True) -> None:
    cache_checks.check_copy_blocks(key_caches, value_caches, block_mapping)


def fake_swap_blocks(src, dst, block_mapping, *, backend="auto", check_indices=True) -> None:
    cache_checks.check_swap_blocks(src, dst, block_mapping)


def fake_merge_attn_states(*args, backend="auto") -> None:
    cache_checks.check_merge_attn_states(*args)


# Keeps the registrations alive: dropping a Library object removes what it registered.
_library: torch.library.Library | None = None


def is_registered() -> bool:
    return _library is not None


def register() -> None:
    """Define every op in `SCHEMAS`, real implementation from `dispatch` (idempotent)."""
    global _library
    if _library is not None:
        return
    library = torch.library.Library(NAMESPACE, "FRAGMENT")
    fakes = globals()
    for name, schema in SCHEMAS.items():
        library.define(name + schema)
        # CompositeExplicitAutograd: one implementation for every device; it never needs
        # autograd (the ops write caches and outputs, they are not differentiated).
        library.impl(name, getattr(dispatch, name), "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{name}", fakes[f"fake_{name}"], lib=library)
    _library = library


__all__ = ["NAMESPACE", "SCHEMAS", "is_registered", "register"]
