"""Registration of the ops as `torch.ops.kvpager.*` custom operators.

Why: `torch.compile` cannot trace into a backend (Triton launchers, CUDA bindings, data
checks that read tensors), so each op is an opaque custom operator with a schema that says
which arguments it writes (`Tensor(a!)`) and a fake implementation that runs only the static
checks. Dynamo then captures a call as one graph node, functionalizes the writes, and the
real implementation (validation, backend choice, kernel) runs when the graph runs.

The schemas are vLLM's, argument for argument, with `k_scale` / `v_scale` as tensors as in
vLLM's own registrations, plus kvpager's keyword-only `backend` and `check_indices`.
Registration happens once, when `kvpager.ops` is first imported; `import kvpager` does not
import torch at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

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

# Keeps the registrations alive: dropping a Library object removes what it registered.
_library: torch.library.Library | None = None


def is_registered() -> bool:
    return _library is not None


def register(real: Mapping[str, Callable[..., None]], fake: Mapping[str, Callable[..., None]]):
    """Define every op in `SCHEMAS` with its real and fake implementation (idempotent).

    real: op name -> function with the schema's signature that validates and dispatches.
    fake: op name -> function that runs the static checks on fake tensors and returns None.
    """
    global _library
    if _library is not None:
        return
    missing = set(SCHEMAS) - set(real) | set(SCHEMAS) - set(fake)
    if missing:
        raise ValueError(f"real and fake must cover every op; missing {sorted(missing)}")
    library = torch.library.Library(NAMESPACE, "FRAGMENT")
    for name, schema in SCHEMAS.items():
        library.define(name + schema)
        # CompositeExplicitAutograd: one implementation for every device; it never needs
        # autograd (the ops write caches and outputs, they are not differentiated).
        library.impl(name, real[name], "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{name}", fake[name], lib=library)
    _library = library


__all__ = ["NAMESPACE", "SCHEMAS", "is_registered", "register"]
