"""vLLM-compatible paged-attention and cache ops, dispatched to a kernel backend.

Code written against vLLM's custom ops switches by import: every function here has vLLM's
name, argument order, tensor layouts and in-place outputs (see docs/architecture.md,
"Cache layouts"), plus two keyword-only arguments:

- `backend`: "auto" (default; `$KVPAGER_BACKEND` when set), or "reference", "triton",
  "cuda". A named backend that cannot serve the call raises `BackendUnavailableError`
  listing what is available; it is never swapped for another.
- `check_indices`: run the checks that read tensor contents (block ids a sequence reads,
  sequence lengths, slots, tensor scales, block mappings). True by default. They cost one
  device->host sync per call on a GPU (none on the CPU); pass False on a hot path that
  produces its own indices, and inside CUDA-graph capture, where a sync is not allowed.

Every call validates its arguments before anything is written and raises `OpArgumentError`
(a `ValueError`) whose message starts with the argument's name. `k_scale` / `v_scale` are
floats or one-element float32 tensors (0-d, or [1] as vLLM sometimes keeps them). Integer
arguments are Python ints (a bool is not one) within int32, as the kernels hold them; tensors
on the meta device are refused by name (they hold no data; under `torch.compile` the ops
trace through their fake implementations instead). Zero-size tensors are valid: a call with
nothing to write (no sequences, tokens, heads or block pairs) checks its arguments and
returns.

Importing this module registers the ops as `torch.ops.kvpager.<name>` (see
`kvpager.backends.torch_library`), so a function calling them compiles with
`torch.compile(fullgraph=True)`: under compilation these functions call the registered op,
which traces as one node; in eager mode they validate and dispatch directly.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch

from kvpager.backends import dispatch, torch_library
from kvpager.backends.layout import (
    BLOCK_SIZES,
    HEAD_SIZES,
    PARTITION_SIZE,
    allocate_kv_cache,
    cache_dtype_for,
    kv_cache_shapes,
    max_num_partitions,
    use_v1,
    v2_workspace,
    x_for,
)
from kvpager.backends.mla_checks import MLA_BLOCK_SIZES
from kvpager.backends.op_args import CacheWriteArgs, MLADecodeArgs, PagedAttentionArgs
from kvpager.backends.validation import (
    OpArgumentError,
    check_dtype,
    check_int,
    check_ndim,
    check_real_device,
    check_tensor,
)

Scale = float | torch.Tensor


def _scale_tensor(scale: object) -> object:
    """The registered ops take tensor scales, as vLLM's do; a float becomes a 0-d tensor
    (anything else goes on as it is, for the op's own checks to name)."""
    if isinstance(scale, (int, float)):
        return torch.tensor(float(scale), dtype=torch.float32)
    return scale


#: Where k_scale and v_scale stand in attention's arguments after `out` (vLLM's order).
_K_SCALE = [f.name for f in fields(PagedAttentionArgs)].index("k_scale") - 1


def _schema_scales(rest: tuple[object, ...]) -> tuple[object, ...]:
    """Attention's arguments after `out` with k_scale / v_scale as the schema's tensors."""
    k_scale, v_scale = rest[_K_SCALE:_K_SCALE + 2]
    return (*rest[:_K_SCALE], _scale_tensor(k_scale), _scale_tensor(v_scale),
            *rest[_K_SCALE + 2:])


# ---- attention ---------------------------------------------------------------------------
def paged_attention_v1(
    out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
    value_cache: torch.Tensor, num_kv_heads: int, scale: float, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, block_size: int, max_seq_len: int,
    alibi_slopes: torch.Tensor | None, kv_cache_dtype: str, k_scale: Scale, v_scale: Scale,
    tp_rank: int = 0, blocksparse_local_blocks: int = 0, blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64, blocksparse_head_sliding_step: int = 0,
    *, sliding_window: int | None = None, sinks: torch.Tensor | None = None,
    backend: str = "auto", check_indices: bool = True,
) -> None:
    """Decode attention of one query token per sequence over its paged cache, into `out`.

    out, query: [num_seqs, num_heads, head_size], float32 / float16 / bfloat16, one dtype;
        query may have a row stride (a slice of a fused QKV tensor), out is contiguous.
    key_cache: [num_blocks, num_kv_heads, head_size // x, block_size, x];
    value_cache: [num_blocks, num_kv_heads, head_size, block_size]; the query dtype for
        kv_cache_dtype "auto", uint8 for "fp8" / "fp8_e4m3" / "fp8_e5m2".
    block_tables: int32 [num_seqs, max_blocks_per_seq]; seq_lens: int32 [num_seqs], each in
        0..max_seq_len (0 gives a zero output).
    alibi_slopes: float32 [num_heads] or None. head_size in `HEAD_SIZES`, block_size in
    `BLOCK_SIZES`, num_heads a multiple of num_kv_heads (GQA / MQA). Block-sparse attention
    is on when blocksparse_vert_stride > 1 (semantics in `kvpager.backends.reference`).

    Keyword-only extensions (kvpager's, not vLLM's; every backend serves them, combined with
    GQA / MQA, ALiBi, FP8 caches and block sparsity):
    sliding_window: int >= 1 or None. The query (at position p = seq_len - 1) attends keys
        p - W + 1 .. p, transformers' convention; None attends every key. Blocks wholly
        before the window are never read, so their table entries may be padding.
    sinks: float32 [num_heads] or None. One extra logit per query head that joins the
        softmax's denominator only (it carries no value), as gpt-oss's attention sinks:
        out_h = sum_t e^(l_t) v_t / (e^(sink_h) + sum_t e^(l_t)).

    What a head does not read never affects the output: cache slots past seq_len, blocks
    behind table entries past ceil(seq_len / block_size) (padding: any value), blocks that
    block-sparsity skips or that lie wholly before the window; stale bytes there, NaN
    included, are ignored. What it reads is
    plain softmax arithmetic: NaN or inf in the query, a read key or value, or an ALiBi slope
    gives NaN where softmax attention does (never a silent 0).
    """
    rest = (query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
            block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank,
            blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
            blocksparse_head_sliding_step)
    if torch.compiler.is_compiling():
        torch.ops.kvpager.paged_attention_v1(out, *_schema_scales(rest),
                                             sliding_window=sliding_window, sinks=sinks,
                                             backend=backend, check_indices=check_indices)
        return
    dispatch.paged_attention_v1(PagedAttentionArgs(out, *rest, sliding_window=sliding_window,
                                                   sinks=sinks),
                                backend=backend, check_indices=check_indices)


def paged_attention_v2(
    out: torch.Tensor, exp_sums: torch.Tensor, max_logits: torch.Tensor,
    tmp_out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
    value_cache: torch.Tensor, num_kv_heads: int, scale: float, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, block_size: int, max_seq_len: int,
    alibi_slopes: torch.Tensor | None, kv_cache_dtype: str, k_scale: Scale, v_scale: Scale,
    tp_rank: int = 0, blocksparse_local_blocks: int = 0, blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64, blocksparse_head_sliding_step: int = 0,
    *, sliding_window: int | None = None, sinks: torch.Tensor | None = None,
    backend: str = "auto", check_indices: bool = True,
) -> None:
    """`paged_attention_v1` split into partitions of `PARTITION_SIZE` (512) tokens.

    Writes, for each sequence, head and partition p < ceil(seq_len / 512):
    exp_sums, max_logits: float32 [num_seqs, num_heads, P], P = ceil(max_seq_len / 512):
        sum of exp(logit - max) and the max logit of the partition;
    tmp_out: out's dtype [num_seqs, num_heads, P, head_size]: the partition's own softmax
        output; then reduces them into `out`. Entries of later partitions are never read
    (their content afterwards is unspecified; the reference leaves them untouched). A
    partition that block-sparsity leaves empty gets max -inf, sum 0 and output 0 from the
    reference. With `sliding_window`, partitions wholly before the window are neither
    written nor read (like those past seq_len); `sinks` enter once, in the reduce (the
    partition buffers hold the sink-free per-partition softmax). `v2_workspace` allocates
    the three buffers.
    """
    rest = (query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
            block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank,
            blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
            blocksparse_head_sliding_step)
    if torch.compiler.is_compiling():
        torch.ops.kvpager.paged_attention_v2(out, exp_sums, max_logits, tmp_out,
                                             *_schema_scales(rest),
                                             sliding_window=sliding_window, sinks=sinks,
                                             backend=backend, check_indices=check_indices)
        return
    dispatch.paged_attention_v2(PagedAttentionArgs.v2(out, exp_sums, max_logits, tmp_out, *rest,
                                                      sliding_window=sliding_window,
                                                      sinks=sinks),
                                backend=backend, check_indices=check_indices)


def paged_attention(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
    block_tables: torch.Tensor, seq_lens: torch.Tensor, *, scale: float | None = None,
    num_kv_heads: int | None = None, block_size: int | None = None,
    max_seq_len: int | None = None, alibi_slopes: torch.Tensor | None = None,
    kv_cache_dtype: str = "auto", k_scale: Scale = 1.0, v_scale: Scale = 1.0,
    tp_rank: int = 0, blocksparse_local_blocks: int = 0, blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64, blocksparse_head_sliding_step: int = 0,
    sliding_window: int | None = None, sinks: torch.Tensor | None = None,
    out: torch.Tensor | None = None, backend: str = "auto", check_indices: bool = True,
) -> torch.Tensor:
    """Allocate the output (and v2's workspace), pick v1 or v2 as vLLM does, return `out`.

    Defaults: scale 1/sqrt(head_size); num_kv_heads and block_size from the caches;
    max_seq_len = max(seq_lens), which reads seq_lens back to the host (pass it to avoid
    the sync). v1 when max_seq_len <= 8192 and (one partition, or num_seqs * num_heads > 512);
    v2 otherwise (see `use_v1`).
    """
    query = check_tensor("query", query)
    check_ndim("query", query, 3, "[num_seqs, num_heads, head_size]")
    key_cache = check_tensor("key_cache", key_cache)
    value_cache = check_tensor("value_cache", value_cache)
    check_ndim("value_cache", value_cache, 4, "[num_blocks, num_kv_heads, head_size, "
                                              "block_size]")
    num_seqs, num_heads, head_size = query.shape
    if scale is None:
        scale = 1.0 / math.sqrt(head_size)
    if num_kv_heads is None:
        num_kv_heads = value_cache.shape[1]
    if block_size is None:
        block_size = value_cache.shape[3]
    if max_seq_len is None:  # read back from seq_lens, so check it first
        seq_lens = check_tensor("seq_lens", seq_lens)
        check_dtype("seq_lens", seq_lens, (torch.int32,))
        check_real_device("seq_lens", seq_lens.device)
        max_seq_len = max(1, int(seq_lens.max())) if seq_lens.numel() else 1
    else:  # before it sizes v2's workspace
        check_int("max_seq_len", max_seq_len, 1)
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    common = (query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
              block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale,
              tp_rank, blocksparse_local_blocks, blocksparse_vert_stride,
              blocksparse_block_size, blocksparse_head_sliding_step)
    if isinstance(max_seq_len, int) and max_seq_len >= 1 and not use_v1(
        max_seq_len, num_seqs, num_heads
    ):
        exp_sums, max_logits, tmp_out = v2_workspace(num_seqs, num_heads, head_size,
                                                     max_seq_len, dtype=query.dtype,
                                                     device=query.device)
        paged_attention_v2(out, exp_sums, max_logits, tmp_out, *common,
                           sliding_window=sliding_window, sinks=sinks, backend=backend,
                           check_indices=check_indices)
    else:  # v1, or a bad max_seq_len that v1's checks will name
        paged_attention_v1(out, *common, sliding_window=sliding_window, sinks=sinks,
                           backend=backend, check_indices=check_indices)
    return out


# ---- MLA (DeepSeek-V2/V3 latent attention) -----------------------------------------------
def paged_mla_decode(
    out: torch.Tensor, query: torch.Tensor, latent_cache: torch.Tensor,
    block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, kv_lora_rank: int,
    scale: float, *, sliding_window: int | None = None, backend: str = "auto",
    check_indices: bool = True,
) -> None:
    """Decode attention of one absorbed-form query per sequence over a paged latent cache.

    MLA caches one latent row per token and no K/V pair; keys are the whole rows and values
    their first kv_lora_rank elements, shared by every query head:
        out[s, h] = sum_t softmax_t(scale * query[s, h] . latent[t]) * latent[t, :kv_lora_rank]

    out: [num_seqs, num_heads, kv_lora_rank], query's dtype, contiguous.
    query: [num_seqs, num_heads, L], L = kv_lora_rank + rope_dim (DeepSeek-V3: 512 + 64 =
        576): the no-rope part already absorbed into the latent space (q_nope @ W_UK), then
        the rope part; float32 / float16 / bfloat16, heads packed (the sequence stride is
        free).
    latent_cache: [num_blocks, block_size, L] of query's dtype (no FP8), block_size in
        `MLA_BLOCK_SIZES` (8, 16, 32, 64); rows packed, the block stride free.
    block_tables: int32 [num_seqs, max_blocks_per_seq]; seq_lens: int32 [num_seqs] (0 gives
        a zero output). scale: the softmax scale (DeepSeek: 1 / sqrt(qk_nope + qk_rope head
        dims), times the YaRN mscale^2 where the model uses it).
    sliding_window: keyword-only, as in `paged_attention_v1` (blocks wholly before the
        window are never read; their table entries may be padding).
    Backends: reference and triton ("auto" picks what runs here; cuda has no MLA kernel and
    says so). Unread slots never matter; NaN in what is read propagates.
    """
    if torch.compiler.is_compiling():
        torch.ops.kvpager.paged_mla_decode(out, query, latent_cache, block_tables, seq_lens,
                                           block_size, kv_lora_rank, scale,
                                           sliding_window=sliding_window, backend=backend,
                                           check_indices=check_indices)
        return
    dispatch.paged_mla_decode(
        MLADecodeArgs(out, query, latent_cache, block_tables, seq_lens, block_size,
                      kv_lora_rank, scale, sliding_window=sliding_window),
        backend=backend, check_indices=check_indices)


def concat_and_cache_mla(
    kv_c: torch.Tensor, k_pe: torch.Tensor, latent_cache: torch.Tensor,
    slot_mapping: torch.Tensor, kv_cache_dtype: str = "auto", scale: Scale = 1.0, *,
    check_indices: bool = True,
) -> None:
    """Write new tokens' latent rows [kv_c | k_pe] into the paged latent cache (vLLM's name
    and argument order).

    kv_c: [num_tokens, kv_lora_rank]; k_pe: [num_tokens, rope_dim] (rows may be strided),
    one dtype; latent_cache: [num_blocks, block_size, kv_lora_rank + rope_dim] of that dtype;
    slot_mapping: int64 [num_tokens], slot = block * block_size + offset, negative = padding
    (skipped), no slot twice. kv_cache_dtype must be "auto" (FP8 latent caches are refused
    by name); scale is checked and unused. One implementation on every device (torch
    indexing: a row scatter needs no kernel), so there is no `backend` argument.
    """
    if torch.compiler.is_compiling():
        torch.ops.kvpager.concat_and_cache_mla(kv_c, k_pe, latent_cache, slot_mapping,
                                               kv_cache_dtype, _scale_tensor(scale),
                                               check_indices=check_indices)
        return
    dispatch.concat_and_cache_mla(kv_c, k_pe, latent_cache, slot_mapping, kv_cache_dtype,
                                  scale, check_indices=check_indices)


def allocate_latent_cache(
    num_blocks: int, block_size: int, latent_dim: int, *, dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A zeroed MLA latent cache [num_blocks, block_size, latent_dim] (latent_dim =
    kv_lora_rank + rope_dim, 576 for DeepSeek-V3)."""
    check_int("num_blocks", num_blocks, 1)
    if block_size not in MLA_BLOCK_SIZES:
        raise OpArgumentError("block_size", f"must be one of {MLA_BLOCK_SIZES}, got "
                                            f"{block_size!r}")
    check_int("latent_dim", latent_dim, 1)
    return torch.zeros(num_blocks, block_size, latent_dim, dtype=dtype, device=device)


# ---- cache ops ---------------------------------------------------------------------------
def reshape_and_cache(
    key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
    value_cache: torch.Tensor, slot_mapping: torch.Tensor, kv_cache_dtype: str,
    k_scale: Scale, v_scale: Scale, *, backend: str = "auto", check_indices: bool = True,
) -> None:
    """Write new tokens' keys and values into the paged cache at their slots.

    key, value: [num_tokens, num_kv_heads, head_size], float32 / float16 / bfloat16 (a row
        stride is allowed); slot_mapping: int64 [num_tokens], slot = block * block_size +
        offset, negative = padding (skipped). Caches as in `paged_attention_v1`; any block
        size. An FP8 cache receives quantize(x / scale), saturated to the format's range.
        No slot may appear twice.
    """
    if torch.compiler.is_compiling():
        torch.ops.kvpager.reshape_and_cache(
            key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype,
            _scale_tensor(k_scale), _scale_tensor(v_scale), backend=backend,
            check_indices=check_indices,
        )
        return
    dispatch.reshape_and_cache(CacheWriteArgs(key, value, key_cache, value_cache, slot_mapping,
                                              kv_cache_dtype, k_scale, v_scale),
                               backend=backend, check_indices=check_indices)


def copy_blocks(
    key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
    block_mapping: torch.Tensor, *, backend: str = "auto", check_indices: bool = True,
) -> None:
    """Copy whole blocks inside every layer's caches (the copy of copy-on-write).

    key_caches, value_caches: one tensor per layer, all layers of one shape, dtype and
        device; only dim 0 (blocks) is interpreted. block_mapping: int64 [num_pairs, 2] of
        (src, dst) ids on the caches' device, applied to every layer. Destinations must be
        distinct and no block may be both a source and a destination (pairs run in
        parallel).
    """
    if torch.compiler.is_compiling():
        torch.ops.kvpager.copy_blocks(list(key_caches), list(value_caches), block_mapping,
                                      backend=backend, check_indices=check_indices)
        return
    dispatch.copy_blocks(key_caches, value_caches, block_mapping, backend=backend,
                         check_indices=check_indices)


def swap_blocks(
    src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor, *,
    backend: str = "auto", check_indices: bool = True,
) -> None:
    """Copy blocks between two caches of one layer, possibly on different devices.

    src, dst: caches of one dtype and per-block shape (key or value layout; the number of
        blocks may differ, e.g. GPU cache and CPU swap space). block_mapping: int64
        [num_pairs, 2] of (src, dst) ids, on the CPU as in vLLM. With a pinned CPU side the
        copy is asynchronous: synchronize before reading a CPU destination.
    """
    if torch.compiler.is_compiling():
        torch.ops.kvpager.swap_blocks(src, dst, block_mapping, backend=backend,
                                      check_indices=check_indices)
        return
    dispatch.swap_blocks(src, dst, block_mapping, backend=backend, check_indices=check_indices)


def merge_attn_states(
    output: torch.Tensor, prefix_output: torch.Tensor, prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor, suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None = None, *, backend: str = "auto",
) -> None:
    """Merge two partial attention results over disjoint key sets by their LSEs.

    output, prefix_output, suffix_output: [num_tokens, num_heads, head_size], one dtype.
    prefix_lse, suffix_lse, output_lse: float32 [num_heads, num_tokens] (natural log).
    An infinite LSE (+inf or -inf) marks an empty part: it contributes nothing and its output
    is not read. Both parts empty: output 0, output_lse -inf. A NaN LSE is not an empty
    part: that row's output and LSE are NaN.
    """
    if torch.compiler.is_compiling():
        torch.ops.kvpager.merge_attn_states(output, prefix_output, prefix_lse, suffix_output,
                                            suffix_lse, output_lse, backend=backend)
        return
    dispatch.merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse,
                               output_lse, backend=backend)


torch_library.register()

# The sparse-attention index ops live in `kvpager.sparse` (their own reference and Triton
# implementations); they are exported here too so that vLLM-style code finds every op in one
# module.
from kvpager.sparse import (  # noqa: E402
    convert_vertical_slash_indexes,
    convert_vertical_slash_indexes_mergehead,
    top_k_per_row_decode,
    top_k_per_row_prefill,
)

__all__ = [
    "BLOCK_SIZES",
    "HEAD_SIZES",
    "MLA_BLOCK_SIZES",
    "PARTITION_SIZE",
    "OpArgumentError",
    "allocate_kv_cache",
    "allocate_latent_cache",
    "cache_dtype_for",
    "concat_and_cache_mla",
    "convert_vertical_slash_indexes",
    "convert_vertical_slash_indexes_mergehead",
    "copy_blocks",
    "kv_cache_shapes",
    "max_num_partitions",
    "merge_attn_states",
    "paged_attention",
    "paged_attention_v1",
    "paged_attention_v2",
    "paged_mla_decode",
    "reshape_and_cache",
    "swap_blocks",
    "top_k_per_row_decode",
    "top_k_per_row_prefill",
    "use_v1",
    "v2_workspace",
    "x_for",
]
