"""Paged decode attention in plain torch: the definition every kernel is tested against.

Shapes (S sequences, H query heads, K kv heads, G = H // K, D head size, T tokens read):

    query        [S, H, D]              float32 / float16 / bfloat16
    key_cache    [blocks, K, D // x, block_size, x]
    value_cache  [blocks, K, D, block_size]
    block_tables int32 [S, max_blocks_per_seq]; seq_lens int32 [S]

Everything is computed in float32 and cast to the output dtype once, at the end (v2's
partition outputs are stored in `tmp_out`'s dtype, as in vLLM, and reduced from there).

Semantics (the contract other backends meet):

- logit(h, t) = scale * q_h . k_t, plus `slope_h * (t - seq_len + 1)` with ALiBi, for the
  tokens t < seq_len the sequence attends; a query head h reads kv head h // G.
- block-sparse attention (vert_stride > 1) keeps a cache block b of a head when
  `(k_bs + offset) % vert_stride == 0` or `k_bs > q_bs - local_blocks`, with
  `k_bs = b * block_size // sparse_block`, `q_bs = (seq_len - 1) // sparse_block` and
  `offset = (tp_rank * H + h) * step + 1` (step >= 0) or `(tp_rank * K + h // G) * -step + 1`.
- a head that attends no token (seq_len 0, or every block masked) outputs 0.
- what a head does not read never reaches the arithmetic: slots past seq_len in its last
  block, blocks that sparsity masks for it, and the blocks behind table entries past
  ceil(seq_len / block_size) (gathered as block 0) are removed by selection (`torch.where`),
  not multiplied by a zero probability, so stale bytes there (NaN, inf) change nothing.
- what a head does read is IEEE arithmetic of the stable softmax: a NaN or inf in the query,
  a read key or value, or an ALiBi slope gives what the formula gives (NaN as soon as a
  logit is NaN or +inf, or every attended logit is -inf), never a silent 0.
- v2 splits the tokens into partitions of 512. For each partition p below
  ceil(seq_len / 512) it writes `max_logits` (the partition's max logit, -inf if it attends
  nothing), `exp_sums` (sum of exp(logit - max), 0 if nothing) and `tmp_out` (the
  partition's softmax-weighted values, 0 if nothing; a NaN logit shows in exp_sums and
  tmp_out, a NaN value in tmp_out). Entries of later partitions are not written (other
  backends may write them; nobody may rely on their content). The reduce
  weighs partition p by `exp_sums_p * exp(max_logits_p - global max)`, reading only
  partitions below ceil(seq_len / 512), so leftovers there never matter.
- only the block-table entries a sequence reads (the first ceil(seq_len / block_size)) are
  looked at; the rest may hold padding such as -1.
- sliding window W: the query (at p = seq_len - 1) attends tokens t >= seq_len - W only
  (`window_start`); blocks wholly before that are not gathered (their table entries are
  replaced by block 0 before indexing, like padding), so they may hold anything. It
  combines with block sparsity as an intersection. In v2, partitions wholly before the
  window are, like those past seq_len, neither written nor read by the reduce.
- sinks [H]: the softmax of head h runs over its attended logits plus `sinks[h]`, whose
  value is 0: out_h = sum_t e^(l_t - m) v_t / (e^(s_h - m) + sum_t e^(l_t - m)),
  m = max(s_h, max_t l_t). v1 adds it to its one softmax; v2's partitions are sink-free
  and the reduce adds it once. A head that attends nothing still outputs 0; one whose
  attended logits are all -inf outputs 0 too (the sink takes all the weight).

Host syncs: grouping reads seq_lens back to the host (one sync per call on a GPU); nothing
else waits for the device.

Sequences are processed in groups of similar length (see `length_groups`), so the work
follows the real tokens, not `max_seq_len`, and the gathered float32 keys and values of a
group stay within about 256 MiB whatever the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kvpager.backends.fp8 import dequantize, is_fp8
from kvpager.backends.layout import PARTITION_SIZE, max_num_partitions

if TYPE_CHECKING:
    from kvpager.backends.fp8 import Scale
    from kvpager.backends.op_args import PagedAttentionArgs

_CHUNK_BYTES = 256 * 2**20
_NEG_INF = float("-inf")


@dataclass(frozen=True)
class BlockSparse:
    """vLLM's local + vertical-stride block-sparse pattern (see the module docstring)."""

    local_blocks: int
    vert_stride: int
    sparse_block_size: int
    head_sliding_step: int
    tp_rank: int

    @classmethod
    def from_args(cls, args: PagedAttentionArgs) -> BlockSparse | None:
        """The pattern, or None when vert_stride <= 1 (dense attention, as in the kernels)."""
        if not args.block_sparse:
            return None
        return cls(args.blocksparse_local_blocks, args.blocksparse_vert_stride,
                   args.blocksparse_block_size, args.blocksparse_head_sliding_step,
                   args.tp_rank)

    def block_mask(
        self, seq_lens: torch.Tensor, num_heads: int, num_kv_heads: int, num_blocks: int,
        block_size: int,
    ) -> torch.Tensor:
        """bool [S, H, num_blocks]: True where head h of sequence s reads cache block b."""
        device = seq_lens.device
        k_bs = torch.arange(num_blocks, device=device) * block_size // self.sparse_block_size
        q_bs = (seq_lens.long() - 1) // self.sparse_block_size  # [S]
        heads = torch.arange(num_heads, device=device)
        if self.head_sliding_step >= 0:  # the pattern slides with the query head
            offset = (self.tp_rank * num_heads + heads) * self.head_sliding_step + 1
        else:  # ... or with the kv head, so heads of one group share it
            kv_heads = heads // (num_heads // num_kv_heads)
            offset = (self.tp_rank * num_kv_heads + kv_heads) * -self.head_sliding_step + 1
        remote = (k_bs[None, :] + offset[:, None]) % self.vert_stride == 0  # [H, blocks]
        local = k_bs[None, :] > (q_bs - self.local_blocks)[:, None]  # [S, blocks]
        return remote[None, :, :] | local[:, None, :]


def length_groups(
    seq_lens: torch.Tensor, bytes_per_token: int
) -> Iterator[tuple[torch.Tensor, int]]:
    """(row indices, longest length) of groups of sequences that are computed together.

    A group is padded to its longest sequence, so sequences are taken shortest first and a
    new group starts when padding would more than double the tokens of the group or its
    float32 keys and values would pass `_CHUNK_BYTES`. Empty sequences form their own group.
    Reads seq_lens on the host: one sync on a GPU, which the reference accepts so that it
    costs only real tokens (max_seq_len may be far larger than any sequence).
    """
    lens = seq_lens.tolist()
    order = sorted(range(len(lens)), key=lens.__getitem__)
    empty = [row for row in order if lens[row] == 0]
    if empty:
        yield torch.tensor(empty, device=seq_lens.device), 0
    group: list[int] = []
    real = 0
    for row in order[len(empty):]:
        padded = (len(group) + 1) * lens[row]  # shortest first: the newest is the longest
        real += lens[row]
        if group and (padded > 2 * real or padded * bytes_per_token > _CHUNK_BYTES):
            yield torch.tensor(group, device=seq_lens.device), lens[group[-1]]
            group, real = [], lens[row]
        group.append(row)
    if group:
        yield torch.tensor(group, device=seq_lens.device), lens[group[-1]]


def _decode(cache_values: torch.Tensor, kv_cache_dtype: str, scale: Scale) -> torch.Tensor:
    if is_fp8(kv_cache_dtype):
        return dequantize(cache_values, scale, kv_cache_dtype)
    return cache_values.float()


def window_starts(seq_lens: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """int64 [S]: the first token each sequence attends (seq_len - W, at least 0)."""
    lens = seq_lens.long()
    if sliding_window is None:
        return torch.zeros_like(lens)
    return (lens - sliding_window).clamp(min=0)


def gather_kv(
    key_cache: torch.Tensor, value_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, num_blocks: int, kv_cache_dtype: str, k_scale: Scale,
    v_scale: Scale, first_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense float32 keys and values [S, K, num_blocks * block_size, D] of each sequence.

    Reads the first `num_blocks` entries of each table row; entries a sequence does not
    need (past seq_len, or wholly before `first_tokens` [S], its window's first token) are
    replaced by block 0 before indexing, so padding ids never reach the cache.
    Tokens at or past seq_len or before the window hold whatever their block holds (block 0
    for unneeded blocks): callers mask them.
    """
    _, num_kv_heads, chunks, block_size, x = key_cache.shape
    columns = torch.arange(num_blocks, device=block_tables.device)
    needed = columns[None, :] * block_size < seq_lens[:, None].long()
    if first_tokens is not None:
        needed &= (columns[None, :] + 1) * block_size > first_tokens[:, None]
    ids = torch.where(needed, block_tables[:, :num_blocks], 0).long()  # [S, n]
    seqs, n = ids.shape
    # [S, n, K, D // x, bs, x] -> [S, K, n, bs, D // x, x]: tokens in order, then the head dim
    keys = key_cache[ids].permute(0, 2, 1, 4, 3, 5).reshape(seqs, num_kv_heads, n * block_size,
                                                           chunks * x)
    # [S, n, K, D, bs] -> [S, K, n, bs, D]
    values = value_cache[ids].permute(0, 2, 1, 4, 3).reshape(seqs, num_kv_heads,
                                                             n * block_size, chunks * x)
    return _decode(keys, kv_cache_dtype, k_scale), _decode(values, kv_cache_dtype, v_scale)


def attention_logits(
    query: torch.Tensor, keys: torch.Tensor, seq_lens: torch.Tensor, scale: float,
    alibi_slopes: torch.Tensor | None, sparse: BlockSparse | None, block_size: int,
    first_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, attended): float32 logits [S, H, T], and bool attended [S, 1, T] (dense) or
    [S, H, T] (block-sparse), True where head h of sequence s reads token t.

    Positions not attended (past seq_len, before `first_tokens` [S] (the window), or masked
    by sparsity) hold -inf, put there by selection (`torch.where`), so whatever their keys
    hold, NaN included, is dropped.
    """
    seqs, num_heads, head_size = query.shape
    num_kv_heads, num_tokens = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    q = query.float().reshape(seqs, num_kv_heads, group, head_size)
    logits = (q @ keys.transpose(-1, -2)).reshape(seqs, num_heads, num_tokens) * scale
    tokens = torch.arange(num_tokens, device=query.device)
    lens = seq_lens.long()[:, None, None]  # [S, 1, 1]
    if alibi_slopes is not None:
        logits = logits + alibi_slopes.float()[None, :, None] * (tokens - lens + 1).float()
    attended = tokens < lens  # [S, 1, T]
    if first_tokens is not None:
        attended = attended & (tokens >= first_tokens[:, None, None])
    if sparse is not None:
        blocks = sparse.block_mask(seq_lens, num_heads, num_kv_heads,
                                   num_tokens // block_size, block_size)
        attended = attended & blocks.repeat_interleave(block_size, dim=-1)
    return torch.where(attended, logits, _NEG_INF), attended


def _softmax_parts(
    logits: torch.Tensor, attended: torch.Tensor, sinks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, max, sum of exp) over the attended positions of the last dim.

    A row that attends nothing gives 0, -inf, 0. Any other row is the IEEE arithmetic of
    the usual stable softmax, so a NaN or +inf logit, or attended logits that are all -inf,
    give NaN, as softmax does: the oracle does not hide a model's NaN. Positions not
    attended are left out by selection, never multiplied by a zero weight.

    sinks (float32 [H], logits [S, H, T] only): one more logit per head in the denominator
    (max and sum include it; no probability is returned for it).
    """
    anything = attended.any(-1)  # [..., 1 or H]
    top = logits.amax(-1)  # propagates NaN; -inf where nothing is attended
    if sinks is not None:
        top = torch.maximum(top, sinks.float()[None, :])
    shift = torch.where(anything, top, 0.0)
    shifted = torch.where(attended, torch.exp(logits - shift[..., None]), 0.0)
    total = shifted.sum(-1)
    if sinks is not None:
        total = total + torch.exp(sinks.float()[None, :] - shift)
    probs = torch.where(anything[..., None], shifted / total[..., None], 0.0)
    return probs, top, total


def _value_masks(
    attended: torch.Tensor, num_kv_heads: int
) -> list[tuple[int | None, torch.Tensor]]:
    """Which value positions each query head reads, per kv head: pairs (g, mask).

    attended: [S, 1 or H, T]. mask: bool [S, 1 or K, T]. g None: every query head of a kv
    head's group reads mask[:, k] (dense attention, or a sparse pattern that slides with
    the kv head); g = 0..G-1: query head k * G + g reads mask[:, k] (a pattern that slides
    with the query head, so heads sharing values read different tokens).
    """
    if attended.shape[1] == 1:
        return [(None, attended)]
    seqs, num_heads, num_tokens = attended.shape
    group = num_heads // num_kv_heads
    grouped = attended.reshape(seqs, num_kv_heads, group, num_tokens)
    if group == 1 or torch.equal(grouped, grouped[:, :, :1].expand_as(grouped)):
        return [(None, grouped[:, :, 0])]
    return [(g, grouped[:, :, g]) for g in range(group)]


def _weighted_values(
    probs: torch.Tensor, values: torch.Tensor, attended: torch.Tensor
) -> torch.Tensor:
    """probs [S, H, T] x values [S, K, T, D] -> [S, H, D], each head using its kv head.

    Values a head does not read are replaced by 0 (selection) before the product: a zero
    probability times a stale NaN would otherwise be NaN. `values` is the caller's own copy
    (gathered from the cache) and may be zeroed in place.
    """
    seqs, num_heads, num_tokens = probs.shape
    num_kv_heads, head_size = values.shape[1], values.shape[-1]
    grouped = probs.reshape(seqs, num_kv_heads, num_heads // num_kv_heads, num_tokens)
    masks = _value_masks(attended, num_kv_heads)
    if masks[0][0] is None:  # one mask for every head: zero in place (values is a copy)
        values.masked_fill_(~masks[0][1][..., None], 0.0)
        return (grouped @ values).reshape(seqs, num_heads, head_size)
    out = torch.empty(seqs, num_kv_heads, grouped.shape[2], head_size, device=probs.device)
    for g, mask in masks:
        read = torch.where(mask[..., None], values, 0.0)
        out[:, :, g] = (grouped[:, :, g, None, :] @ read)[:, :, 0]
    return out.reshape(seqs, num_heads, head_size)


def _bytes_per_token(num_heads: int, num_kv_heads: int, head_size: int) -> int:
    return 4 * (2 * num_kv_heads * head_size + 4 * num_heads)


def _read_groups(
    args: PagedAttentionArgs,
) -> Iterator[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(rows, longest, lens, values, logits, attended) for each group of sequences that read
    at least one token (see `length_groups`); sequences of length 0 are left out.

    values: float32 [n, K, T, D]; logits, attended as `attention_logits` gives them.
    """
    sparse = BlockSparse.from_args(args)
    seq_lens, block_tables = args.seq_lens, args.block_tables
    per_token = _bytes_per_token(args.num_heads, args.num_kv_heads, args.head_size)
    for rows, longest in length_groups(seq_lens, per_token):
        if longest == 0:
            continue
        lens = seq_lens[rows]
        first = None if args.sliding_window is None else window_starts(lens,
                                                                       args.sliding_window)
        num_blocks = min(-(-longest // args.block_size), block_tables.shape[1])
        keys, values = gather_kv(args.key_cache, args.value_cache, block_tables[rows], lens,
                                 num_blocks, args.kv_cache_dtype, args.k_scale, args.v_scale,
                                 first)
        logits, attended = attention_logits(args.query[rows], keys, lens, args.scale,
                                            args.alibi_slopes, sparse, args.block_size, first)
        yield rows, longest, lens, values, logits, attended


def paged_attention_v1(args: PagedAttentionArgs) -> None:
    """One softmax over all tokens of each sequence, written into `out` [S, H, D]."""
    out = args.out
    out.masked_fill_((args.seq_lens == 0)[:, None, None], 0)  # a head that reads nothing
    for rows, _, _, values, logits, attended in _read_groups(args):
        probs, _, _ = _softmax_parts(logits, attended, args.sinks)
        out[rows] = _weighted_values(probs, values, attended).to(out.dtype)


def paged_attention_v2(args: PagedAttentionArgs) -> None:
    """Per-partition softmax into exp_sums / max_logits / tmp_out, then `reduce_partitions`.

    args.workspace: exp_sums, max_logits float32 [S, H, P]; tmp_out out's dtype [S, H, P, D];
    P = ceil(max_seq_len / 512). Sequences of length 0 write no partition.
    """
    workspace = args.v2_workspace()
    exp_sums, max_logits, tmp_out = workspace.exp_sums, workspace.max_logits, workspace.tmp_out
    num_heads, num_kv_heads, head_size = args.num_heads, args.num_kv_heads, args.head_size
    group = num_heads // num_kv_heads
    for rows, longest, lens, values, logits, attended in _read_groups(args):
        parts = max_num_partitions(longest)
        extra = parts * PARTITION_SIZE - logits.shape[-1]  # >= 0: block sizes divide 512
        logits = torch.nn.functional.pad(logits, (0, extra), value=_NEG_INF)
        attended = torch.nn.functional.pad(attended, (0, extra), value=False)
        values = torch.nn.functional.pad(values, (0, 0, 0, extra))
        n = logits.shape[0]
        by_part = (n, attended.shape[1], parts, PARTITION_SIZE)
        probs, top, total = _softmax_parts(
            logits.reshape(n, num_heads, parts, PARTITION_SIZE), attended.reshape(by_part))
        # [n, K, G, P, 512] x [n, K, P, 512, D] -> [n, H, P, D]: head h reads kv head h // G,
        # its values selected by what it attends (see `_weighted_values`)
        grouped = probs.reshape(n, num_kv_heads, group, parts, PARTITION_SIZE)
        partial = torch.empty(n, num_kv_heads, group, parts, head_size, device=probs.device)
        for g, mask in _value_masks(attended, num_kv_heads):
            if g is None:  # one mask for every head: zero in place (values is padded, a copy)
                read = values.masked_fill_(~mask[..., None], 0.0)
            else:
                read = torch.where(mask[..., None], values, 0.0)
            read = read.reshape(n, num_kv_heads, parts, PARTITION_SIZE, head_size)
            if g is None:
                partial = torch.einsum("nkgpt,nkptd->nkgpd", grouped, read)
            else:
                partial[:, :, g] = torch.einsum("nkpt,nkptd->nkpd", grouped[:, :, g], read)
        partial = partial.reshape(n, num_heads, parts, head_size)
        used = _used_partitions(lens, parts, args.sliding_window)  # [n, 1, P]
        window = (rows, slice(None), slice(0, parts))
        exp_sums[window] = torch.where(used, total, exp_sums[window])
        max_logits[window] = torch.where(used, top, max_logits[window])
        tmp_out[window] = torch.where(used[..., None], partial.to(tmp_out.dtype),
                                      tmp_out[window])
    reduce_partitions(args.out, exp_sums, max_logits, tmp_out, args.seq_lens,
                      sliding_window=args.sliding_window, sinks=args.sinks)


def _used_partitions(
    seq_lens: torch.Tensor, parts: int, sliding_window: int | None = None
) -> torch.Tensor:
    """bool [S, 1, P]: partition p holds attended tokens of the sequence: p below
    ceil(seq_len / 512) and, with a window, not wholly before its first token."""
    lens = seq_lens.long()
    count = (lens + PARTITION_SIZE - 1) // PARTITION_SIZE
    index = torch.arange(parts, device=seq_lens.device)[None, :]
    used = index < count[:, None]
    if sliding_window is not None:
        used &= index >= (window_starts(lens, sliding_window) // PARTITION_SIZE)[:, None]
    return used[:, None, :]


def reduce_partitions(
    out: torch.Tensor, exp_sums: torch.Tensor, max_logits: torch.Tensor,
    tmp_out: torch.Tensor, seq_lens: torch.Tensor, *, sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> None:
    """v2's second pass: combine partition results as stored (tmp_out in out's dtype).

    Partition p gets weight `exp_sums_p * exp(max_logits_p - max over partitions)`; the
    partitions past the sequence (or wholly before its window) are left out with `where`,
    never multiplied, so NaN or inf leftovers there cannot leak into `out`. sinks (float32
    [H]) join the max and the denominator once, here.
    """
    used = _used_partitions(seq_lens, exp_sums.shape[-1], sliding_window)  # [S, 1, P]
    maxes = torch.where(used, max_logits, _NEG_INF)
    top = maxes.amax(-1, keepdim=True)  # NaN when a used partition's max is NaN
    if sinks is not None:
        top = torch.maximum(top, sinks.float()[None, :, None])
    top = torch.where(top == _NEG_INF, 0.0, top)
    weights = torch.where(used, exp_sums * torch.exp(maxes - top), 0.0)  # [S, H, P]
    total = weights.sum(-1)[..., None]  # [S, H, 1]
    if sinks is not None:
        total = total + torch.exp(sinks.float()[None, :, None] - top)
    parts = torch.where(used[..., None], tmp_out.float(), 0.0)
    merged = (weights[..., None] * parts).sum(-2)  # [S, H, D]
    # total is 0 only when no partition attends anything (the partition holding the global
    # max weighs its exp_sum >= 1); NaN from any used partition stays NaN.
    out.copy_(torch.where(total == 0, 0.0, merged / total).to(out.dtype))


__all__ = [
    "BlockSparse",
    "attention_logits",
    "gather_kv",
    "length_groups",
    "paged_attention_v1",
    "paged_attention_v2",
    "reduce_partitions",
    "window_starts",
]
