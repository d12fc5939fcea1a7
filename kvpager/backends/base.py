"""The interface every kernel backend implements.

A backend is a set of functions with vLLM's tensor layouts (see docs/architecture.md, "Cache
layouts"). `kvpager.ops` validates arguments once, picks a backend and calls these methods, so
a backend may assume its inputs are well formed: shapes agree, dtypes are the supported ones,
block ids are inside the cache, and every tensor is on a device the backend accepted through
`device_reason`. Attention and cache writes receive one argument object
(`kvpager.backends.op_args`: vLLM's arguments as fields, checked when it was built); the short
ops keep vLLM's argument order.

Outputs are written in place into the tensors passed in (`out`, `exp_sums`, caches, ...), as
vLLM's ops do, so callers can preallocate and capture them in CUDA graphs. A backend is never
called with nothing to write (zero sequences, heads, tokens or block pairs): `kvpager.ops`
returns after its checks.

Attention backends meet the reference's contract on what is not read and on non-finite
values (`kvpager.backends.reference.attention`): bytes a head does not read, NaN included,
never reach an output (select them away; 0 * NaN is NaN), and NaN or inf in what it reads
propagates as the softmax formula gives, never as a silent 0.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays optional for the memory manager
    import torch

    from kvpager.backends.op_args import CacheWriteArgs, MLADecodeArgs, PagedAttentionArgs


def common_capability_reason(
    *, head_size: int, block_size: int, dtype: torch.dtype, kv_cache_dtype: str
) -> str | None:
    """The capability checks every backend shares (model dtype, KV format, positive sizes),
    for `Backend.capability_reason` implementations to start from. Imports no torch."""
    from kvpager.backends.fp8 import KV_CACHE_DTYPES
    from kvpager.backends.layout import DTYPE_NAMES

    if str(dtype).removeprefix("torch.") not in DTYPE_NAMES:
        return f"dtype {dtype} is not float32, float16 or bfloat16"
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        return f"kv_cache_dtype {kv_cache_dtype!r} is not one of {KV_CACHE_DTYPES}"
    if head_size <= 0 or block_size <= 0:
        return f"head_size {head_size} and block_size {block_size} must be positive"
    return None


class Backend(abc.ABC):
    """One implementation of the attention and cache kernels.

    Subclasses set `name` and implement every operation. An operation that a backend serves
    with another backend's code must say so in its docstring: there are no silent fallbacks.
    """

    name: str = ""

    # ---- availability -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine at all, or None when it can.

        Must be cheap after the first call and must not raise: the registry calls it to list
        backends and to explain why one is missing.
        """
        return None

    def usable_reason(self) -> str | None:
        """Why no tensor on this machine can use this backend as things stand, or None.

        Unlike `unavailable_reason` (fixed for the process: a missing package, no GPU) this
        may change while the process runs, so the registry asks it on every `available()` /
        `status()`; it must be cheap and must not raise. Example: Triton without a CUDA GPU
        runs only when its interpreter is on.
        """
        return None

    def device_reason(self, device: torch.device) -> str | None:
        """Why this backend cannot run on tensors on `device`, or None when it can."""
        return None

    def capability_reason(
        self, *, head_size: int, block_size: int, dtype: torch.dtype, kv_cache_dtype: str
    ) -> str | None:
        """Why this backend cannot run this attention configuration, or None when it can."""
        return None

    # ---- attention ----------------------------------------------------------------------
    @abc.abstractmethod
    def paged_attention_v1(self, args: PagedAttentionArgs) -> None:
        """Single-pass decode attention over a paged cache, written into `args.out`.

        out, query: [num_seqs, num_heads, head_size], dtype fp32/fp16/bf16.
        key_cache: [num_blocks, num_kv_heads, head_size // x, block_size, x].
        value_cache: [num_blocks, num_kv_heads, head_size, block_size].
        block_tables: int32 [num_seqs, max_blocks_per_seq]; seq_lens: int32 [num_seqs].
        alibi_slopes: float32 [num_heads] or None. All fields of `PagedAttentionArgs`.
        """

    @abc.abstractmethod
    def paged_attention_v2(self, args: PagedAttentionArgs) -> None:
        """Partitioned decode attention (512-token partitions) followed by the reduce.

        `args.workspace`: exp_sums, max_logits float32 [num_seqs, num_heads,
        max_num_partitions]; tmp_out [num_seqs, num_heads, max_num_partitions, head_size],
        dtype of `out`. Other fields as in `paged_attention_v1`.
        """

    # ---- MLA (DeepSeek latent attention) --------------------------------------------------
    def mla_reason(self) -> str | None:
        """Why this backend cannot run `paged_mla_decode`, or None when it can. Backends
        that implement the op override this and `paged_mla_decode`."""
        return f"the {self.name} backend has no MLA decode kernel"

    def paged_mla_decode(self, args: MLADecodeArgs) -> None:
        """Decode attention of absorbed-form queries over a paged latent cache, into
        `args.out` [num_seqs, num_heads, kv_lora_rank] (see `reference.mla`)."""
        raise NotImplementedError(self.mla_reason())

    # ---- cache ops ----------------------------------------------------------------------
    @abc.abstractmethod
    def reshape_and_cache(self, args: CacheWriteArgs) -> None:
        """Write new tokens' K/V into the cache at their slots; negative slots are skipped.

        key, value: [num_tokens, num_kv_heads, head_size]; slot_mapping: int64 [num_tokens].
        """

    @abc.abstractmethod
    def copy_blocks(
        self,
        key_caches: list[torch.Tensor],
        value_caches: list[torch.Tensor],
        block_mapping: torch.Tensor,
    ) -> None:
        """Copy whole blocks inside each layer's caches (copy-on-write).

        block_mapping: int64 [num_pairs, 2] of (src, dst) block ids, applied to every layer.
        """

    @abc.abstractmethod
    def swap_blocks(
        self, src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor
    ) -> None:
        """Copy blocks between two caches of one layer, possibly on different devices.

        src, dst: caches of the same layout; block_mapping: int64 [num_pairs, 2] (src, dst).
        """

    @abc.abstractmethod
    def merge_attn_states(
        self,
        output: torch.Tensor,
        prefix_output: torch.Tensor,
        prefix_lse: torch.Tensor,
        suffix_output: torch.Tensor,
        suffix_lse: torch.Tensor,
        output_lse: torch.Tensor | None = None,
    ) -> None:
        """Merge two partial attention results by their log-sum-exps.

        output, prefix_output, suffix_output: [num_tokens, num_heads, head_size].
        prefix_lse, suffix_lse, output_lse: float32 [num_heads, num_tokens]. An infinite LSE
        marks an empty part, which contributes nothing.
        """

    def __repr__(self) -> str:
        return f"<kvpager backend {self.name!r}>"
