"""Argument checks of `paged_attention_v1` / `paged_attention_v2`.

`check_attention` and `check_v2_workspace` are static (metadata only) and run when a
`kvpager.backends.op_args.PagedAttentionArgs` is built, so they also serve as the fake
implementation under `torch.compile`; `queue_attention_data_checks` adds the checks that read
tensor contents. Backends may rely on everything checked here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpager.backends import validation as v
from kvpager.backends.fp8 import is_fp8, normalize_kv_cache_dtype
from kvpager.backends.layout import (
    BLOCK_SIZES,
    HEAD_SIZES,
    attention_dtypes,
    max_num_partitions,
    x_for,
)

if TYPE_CHECKING:
    import torch

    from kvpager.backends.op_args import PagedAttentionArgs, V2Workspace


def check_blocksparse(
    block_size: int, num_heads: int, max_seq_len: int, tp_rank: object, local_blocks: object,
    vert_stride: object, sparse_block_size: object, sliding_step: object,
) -> None:
    """Block-sparse parameters; sparsity is on when vert_stride > 1 (as in vLLM's kernel).

    Each is an int within int32 (kernels hold them in 32-bit registers). With sparsity on,
    the pattern offset `(tp_rank * H + h) * |step| + 1` plus a sparse block index must stay
    within int32 too, or the kernels' modulo would wrap while the reference's would not.
    """
    tp_rank = v.check_int("tp_rank", tp_rank, 0)
    v.check_int("blocksparse_local_blocks", local_blocks, 0)
    vert_stride = v.check_int("blocksparse_vert_stride", vert_stride, 0)
    sparse_block_size = v.check_int("blocksparse_block_size", sparse_block_size, 1)
    sliding_step = v.check_int("blocksparse_head_sliding_step", sliding_step)
    if vert_stride <= 1:
        return
    if sparse_block_size % block_size:
        # Kernels keep or skip whole cache blocks, so a sparse block must be made of them.
        raise v.fail("blocksparse_block_size",
                     f"must be a multiple of block_size {block_size} when block-sparse "
                     f"attention is on, got {sparse_block_size}")
    room = v.INT32_MAX - 1 - max_seq_len  # what is left for the offset beside a block index
    heads = max(num_heads, 1)
    if (tp_rank + 1) * heads > room:
        raise v.fail("tp_rank", f"({tp_rank}) times the {num_heads} heads leaves the sparse "
                                f"pattern's offsets outside int32 (need (tp_rank + 1) * "
                                f"num_heads <= {room})")
    # the ignore: torch's stub of SymInt (a traced int) declares no __abs__
    if (tp_rank + 1) * heads * abs(sliding_step) > room:  # type: ignore[arg-type]
        raise v.fail("blocksparse_head_sliding_step",
                     f"({sliding_step}) with tp_rank {tp_rank} and {num_heads} heads gives "
                     f"sparse-pattern offsets outside int32 (need (tp_rank + 1) * num_heads * "
                     f"|step| <= {room})")


def check_tables_and_lens(block_tables: object, seq_lens: object, device: torch.device,
                          num_seqs: int) -> None:
    """The paged ops' shared index arguments: `block_tables` int32 `[num_seqs,
    max_blocks_per_seq]` and `seq_lens` int32 `[num_seqs]`, packed, on the query's device
    (kernels index them with plain strides)."""
    import torch

    tables = v.check_tensor("block_tables", block_tables)
    v.check_device("block_tables", tables, device, "query")
    v.check_dtype("block_tables", tables, (torch.int32,))
    v.check_ndim("block_tables", tables, 2, "[num_seqs, max_blocks_per_seq]")
    if tables.shape[0] != num_seqs:
        raise v.fail("block_tables", f"has {tables.shape[0]} rows but query has "
                                     f"{num_seqs} sequences")
    v.check_packed("block_tables", tables, 0, "[num_seqs, max_blocks_per_seq]")
    lens = v.check_tensor("seq_lens", seq_lens)
    v.check_device("seq_lens", lens, device, "query")
    v.check_dtype("seq_lens", lens, (torch.int32,))
    v.check_shape("seq_lens", lens, (num_seqs,), "[num_seqs]")
    v.check_packed("seq_lens", lens, 0, "[num_seqs]")


def check_attention(args: PagedAttentionArgs) -> tuple[str, float]:
    """Static checks shared by v1 and v2, in vLLM's argument order where it matters.

    Runs when a `PagedAttentionArgs` is built; returns the canonical kv_cache_dtype and the
    scale as a float, which the object stores. The fields are typed as the op expects, but
    this is where a caller's values are first looked at, so each is checked as an object.
    """
    import math

    query = v.check_tensor("query", args.query)
    v.check_ndim("query", query, 3, "[num_seqs, num_heads, head_size]")
    v.check_dtype("query", query, attention_dtypes())
    num_seqs, num_heads, head_size = query.shape
    device = query.device
    if head_size not in HEAD_SIZES:
        raise v.fail("query", f"has head_size {head_size}; supported head sizes are "
                              f"{', '.join(map(str, HEAD_SIZES))}")
    if query.stride(2) != 1 or (num_heads > 1 and query.stride(1) != head_size):
        raise v.fail("query", f"must have its heads packed (strides [*, {head_size}, 1]), "
                              f"got strides {tuple(query.stride())}")

    out = v.check_tensor("out", args.out)
    v.check_device("out", out, device, "query")
    if out.dtype != query.dtype:
        raise v.fail("out", f"must have the dtype of query ({query.dtype}), got {out.dtype}")
    v.check_shape("out", out, (num_seqs, num_heads, head_size),
                  "[num_seqs, num_heads, head_size] of query")
    v.check_packed("out", out, 0, "[num_seqs, num_heads, head_size]")

    num_kv_heads = args.num_kv_heads
    v.check_int("num_kv_heads", num_kv_heads, 1)
    if num_heads % num_kv_heads:
        raise v.fail("num_kv_heads", f"({num_kv_heads}) must divide the number of query heads "
                                     f"({num_heads})")
    kv_cache_dtype = args.kv_cache_dtype
    try:
        kv_name = normalize_kv_cache_dtype(kv_cache_dtype)
    except ValueError as exc:
        raise v.fail("kv_cache_dtype", str(exc).removeprefix("kv_cache_dtype ")) from None

    import torch

    cache_dtype = torch.uint8 if is_fp8(kv_name) else query.dtype
    key_cache = v.check_tensor("key_cache", args.key_cache)
    v.check_device("key_cache", key_cache, device, "query")
    if key_cache.dtype != cache_dtype:
        why = "FP8 caches are stored as uint8" if is_fp8(kv_name) else "the dtype of query"
        raise v.fail("key_cache", f"must have dtype {cache_dtype} for kv_cache_dtype "
                                  f"{kv_cache_dtype!r} ({why}), got {key_cache.dtype}")
    x = x_for(cache_dtype)
    v.check_ndim("key_cache", key_cache, 5, "[num_blocks, num_kv_heads, head_size // x, "
                                            "block_size, x]")
    num_blocks = key_cache.shape[0]
    if num_blocks < 1:
        raise v.fail("key_cache", "has no blocks")
    if head_size % x:
        raise v.fail("kv_cache_dtype", f"{kv_cache_dtype!r} stores keys in chunks of x={x} "
                                       f"elements, which do not divide head_size {head_size}")
    if key_cache.shape[1] != num_kv_heads:
        raise v.fail("num_kv_heads", f"({num_kv_heads}) must equal the kv-head dimension of "
                                     f"key_cache ({key_cache.shape[1]})")
    block_size = args.block_size
    v.check_int("block_size", block_size, 1)
    if block_size != key_cache.shape[3]:
        raise v.fail("block_size", f"({block_size}) must equal the block dimension of "
                                   f"key_cache ({key_cache.shape[3]})")
    if block_size not in BLOCK_SIZES:
        raise v.fail("block_size", f"must be one of {', '.join(map(str, BLOCK_SIZES))}, got "
                                   f"{block_size}")
    v.check_shape("key_cache", key_cache, (num_blocks, num_kv_heads, head_size // x, block_size, x),
                  "[num_blocks, num_kv_heads, head_size // x, block_size, x]")
    v.check_packed("key_cache", key_cache, 1, "after the block dimension")
    value_cache = v.check_tensor("value_cache", args.value_cache)
    v.check_device("value_cache", value_cache, device, "query")
    if value_cache.dtype != cache_dtype:
        raise v.fail("value_cache", f"must have the dtype of key_cache ({cache_dtype}), got "
                                    f"{value_cache.dtype}")
    v.check_shape("value_cache", value_cache, (num_blocks, num_kv_heads, head_size, block_size),
                  "[num_blocks, num_kv_heads, head_size, block_size]")
    v.check_packed("value_cache", value_cache, 1, "after the block dimension")

    check_tables_and_lens(args.block_tables, args.seq_lens, device, num_seqs)
    max_seq_len = args.max_seq_len
    v.check_int("max_seq_len", max_seq_len, 1)

    scale = v.check_float("scale", args.scale)
    if not math.isfinite(scale) or scale <= 0:
        raise v.fail("scale", f"must be finite and > 0, got {scale!r}")
    if args.alibi_slopes is not None:
        alibi_slopes = v.check_tensor("alibi_slopes", args.alibi_slopes)
        v.check_device("alibi_slopes", alibi_slopes, device, "query")
        v.check_dtype("alibi_slopes", alibi_slopes, (torch.float32,))
        v.check_shape("alibi_slopes", alibi_slopes, (num_heads,), "[num_heads]")
        v.check_packed("alibi_slopes", alibi_slopes, 0, "[num_heads]")
    v.check_scale("k_scale", args.k_scale, device)
    v.check_scale("v_scale", args.v_scale, device)
    check_blocksparse(block_size, num_heads, max_seq_len, args.tp_rank,
                      args.blocksparse_local_blocks, args.blocksparse_vert_stride,
                      args.blocksparse_block_size, args.blocksparse_head_sliding_step)
    check_window_and_sinks(args.sliding_window, args.sinks, num_heads, device)
    return kv_name, scale


def check_window_and_sinks(
    sliding_window: object, sinks: object, num_heads: int, device: torch.device
) -> None:
    """sliding_window: None or an int >= 1 (within int32); sinks: None or a float32 tensor
    [num_heads] on the query's device, packed (one logit per query head).

    Every combination with the other arguments is supported (GQA / MQA, ALiBi, FP8 caches,
    block sparsity: a token is read when the window and the sparse pattern both keep it).
    """
    import torch

    if sliding_window is not None:
        if not v.is_int(sliding_window):
            raise v.fail("sliding_window", f"must be a positive int or None, got "
                                           f"{type(sliding_window).__name__} {sliding_window!r}")
        v.check_int("sliding_window", sliding_window, 1)
    if sinks is not None:
        sinks = v.check_tensor("sinks", sinks)
        v.check_device("sinks", sinks, device, "query")
        v.check_dtype("sinks", sinks, (torch.float32,))
        v.check_shape("sinks", sinks, (num_heads,), "[num_heads] (one logit per query head)")
        v.check_packed("sinks", sinks, 0, "[num_heads]")


def check_v2_workspace(args: PagedAttentionArgs, workspace: V2Workspace) -> None:
    """exp_sums / max_logits float32 [S, H, P] and tmp_out [S, H, P, D], P from max_seq_len.

    The partition count must match exactly: kernels derive the row strides of these buffers
    from max_seq_len, as vLLM's do. Runs after `check_attention`, so `args` is well formed.
    """
    import torch

    parts = max_num_partitions(args.max_seq_len)
    shape = (args.num_seqs, args.num_heads, parts)
    for name, t in (("exp_sums", workspace.exp_sums), ("max_logits", workspace.max_logits)):
        t = v.check_tensor(name, t)
        v.check_device(name, t, args.device, "query")
        v.check_dtype(name, t, (torch.float32,))
        v.check_shape(name, t, shape, "[num_seqs, num_heads, ceil(max_seq_len / 512)]")
        v.check_packed(name, t, 0, "[num_seqs, num_heads, max_num_partitions]")
    tmp_out = v.check_tensor("tmp_out", workspace.tmp_out)
    v.check_device("tmp_out", tmp_out, args.device, "query")
    if tmp_out.dtype != args.dtype:
        raise v.fail("tmp_out", f"must have the dtype of out ({args.dtype}), got {tmp_out.dtype}")
    v.check_shape("tmp_out", tmp_out, (*shape, args.head_size),
                  "[num_seqs, num_heads, ceil(max_seq_len / 512), head_size]")
    v.check_packed("tmp_out", tmp_out, 0, "[num_seqs, num_heads, max_num_partitions, head_size]")


def queue_attention_data_checks(checks: v.DataChecks, args: PagedAttentionArgs) -> None:
    """Lengths within max_seq_len and the table, and every block id a sequence reads valid.

    Only the first ceil(seq_len / block_size) entries of a row are read, so entries past them
    (padding such as -1) are allowed; with a sliding window, so are the entries of blocks
    wholly before the window.
    """
    import torch

    block_tables, max_seq_len = args.block_tables, args.max_seq_len
    lens = args.seq_lens.long()
    checks.require((lens >= 0).all(), "seq_lens", lambda: (
        f"must be >= 0; seq_lens[{v.first_index(lens < 0)[0]}] = {int(lens[lens < 0][0])}"))
    too_long = lens > max_seq_len
    checks.require(~too_long.any(), "seq_lens", lambda: (
        f"must not exceed max_seq_len={max_seq_len}; seq_lens[{v.first_index(too_long)[0]}] = "
        f"{int(lens[too_long][0])}"))
    capacity = args.max_blocks_per_seq * args.block_size
    beyond = lens > capacity
    checks.require(~beyond.any(), "seq_lens", lambda: (
        f"[{v.first_index(beyond)[0]}] = {int(lens[beyond][0])} needs more than the "
        f"{args.max_blocks_per_seq} blocks of block_tables (capacity {capacity} tokens)"))
    columns = torch.arange(args.max_blocks_per_seq, device=block_tables.device)
    read = columns[None, :] * args.block_size < lens[:, None]
    if args.sliding_window is not None:  # blocks wholly before the window are not read
        first = (lens - args.sliding_window).clamp(min=0)
        read &= (columns[None, :] + 1) * args.block_size > first[:, None]
    bad = read & ((block_tables < 0) | (block_tables >= args.num_blocks))

    def explain_block() -> str:
        row, col = v.first_index(bad)
        return (f"[{row}, {col}] = {int(block_tables[row, col])} is not a block of the cache "
                f"(0..{args.num_blocks - 1}) but sequence {row} reads it")

    checks.require(~bad.any(), "block_tables", explain_block)
    v.check_scale_values(checks, "k_scale", args.k_scale)
    v.check_scale_values(checks, "v_scale", args.v_scale)


__all__ = ["check_attention", "check_v2_workspace", "queue_attention_data_checks"]
