"""What a sequence does not read, and non-finite values in what it does: inputs for the tests
that every backend ignores the former and propagates the latter as softmax attention does.

A real cache holds stale bytes: slots past a sequence's length in its last block, blocks no
sequence owns (vLLM's own kernel tests fill unused FP8 slots with NaN), and block-table rows
padded with block 0 when a short sequence is batched with a longer one. Only torch and the
dense oracle's block-sparse rule are used here: nothing calls kvpager.
"""

from __future__ import annotations

import math

import torch
from dense_attention import block_attended
from kernel_matrix import AttentionInputs

#: A NaN byte in both FP8 formats (e4m3fn: S.1111.111; e5m2: S.11111.11).
FP8_NAN_BYTE = 0x7F


def blocks_read(inp: AttentionInputs) -> list[list[tuple[int, int, list[int]]]]:
    """Per sequence: (physical block, slots used, heads reading it) of each block it holds."""
    num_heads = inp.case.heads[0]
    bs = inp.case.block_size
    result = []
    for seq, length in enumerate(inp.seq_lens.tolist()):
        row = []
        for b in range(math.ceil(length / bs)):
            heads = [h for h in range(num_heads) if block_attended(inp, length, h, b)]
            row.append((int(inp.block_tables[seq, b]), min(bs, length - b * bs), heads))
        result.append(row)
    return result


def read_slots(inp: AttentionInputs) -> torch.Tensor:
    """bool [num_blocks, block_size]: True where some head of some sequence reads the slot."""
    read = torch.zeros(inp.key_cache.shape[0], inp.case.block_size, dtype=torch.bool)
    for row in blocks_read(inp):
        for block, used, heads in row:
            if heads:
                read[block, :used] = True
    return read


def pad_tables_with_block_zero(inp: AttentionInputs) -> None:
    """Make block 0 a block nobody reads (swapping it with an unread one) and point every table
    entry past a sequence's blocks at it, as engines pad block tables with 0."""
    read = read_slots(inp).any(1)
    if read[0]:
        spare = int((~read).nonzero()[0])
        for cache in (inp.key_cache, inp.value_cache):
            cache[[0, spare]] = cache[[spare, 0]]
        table = inp.block_tables
        zero, other = table == 0, table == spare
        table[zero], table[other] = spare, 0
    bs = inp.case.block_size
    for seq, length in enumerate(inp.seq_lens.tolist()):
        inp.block_tables[seq, math.ceil(length / bs):] = 0


def nan_fill(cache: torch.Tensor) -> float | int:
    return FP8_NAN_BYTE if cache.dtype == torch.uint8 else float("nan")


def poison_unread(inp: AttentionInputs) -> int:
    """Fill every key and value slot no head of any sequence reads with NaN; returns how many
    slots were poisoned (so a test can check it poisoned something)."""
    unread = ~read_slots(inp)  # [blocks, slots]
    inp.key_cache.permute(0, 3, 1, 2, 4)[unread] = nan_fill(inp.key_cache)
    inp.value_cache.permute(0, 3, 1, 2)[unread] = nan_fill(inp.value_cache)
    return int(unread.sum())


def poison_values_some_heads_skip(inp: AttentionInputs) -> torch.Tensor:
    """With block sparsity that varies between heads: NaN into the values (only) of every
    slot a sequence holds in a block that some of its heads read and others skip. Returns
    bool [S, H]: True for the heads that read a poisoned value (their output is NaN); the
    others must not notice."""
    num_heads = inp.case.heads[0]
    reads_nan = torch.zeros(len(inp.seq_lens), num_heads, dtype=torch.bool)
    for seq, row in enumerate(blocks_read(inp)):
        for block, used, heads in row:
            if 0 < len(heads) < num_heads:
                inp.value_cache[block, :, :, :used] = nan_fill(inp.value_cache)
                reads_nan[seq, heads] = True
    return reads_nan


def clone_inputs(inp: AttentionInputs) -> AttentionInputs:
    """A deep copy of the tensors (AttentionInputs.to on the same device would share them)."""
    copy = inp.to("cpu")
    for name in ("query", "key_cache", "value_cache", "block_tables", "seq_lens",
                 "alibi_slopes"):
        value = getattr(copy, name)
        if isinstance(value, torch.Tensor):
            setattr(copy, name, value.clone())
    return copy


__all__ = [
    "FP8_NAN_BYTE",
    "blocks_read",
    "clone_inputs",
    "nan_fill",
    "pad_tables_with_block_zero",
    "poison_unread",
    "poison_values_some_heads_skip",
    "read_slots",
]
