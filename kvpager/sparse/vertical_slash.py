"""Vertical-slash indexes -> block-sparse lookup tables for a blocked prefill kernel.

MInference (arXiv 2407.02490) finds, per attention head, a few *vertical* lines (key
columns every query attends to, e.g. attention sinks) and *slash* lines (diagonals at a fixed
distance behind the query). A prefill kernel that works on `block_size_M` query rows at a
time cannot use those lines directly; Algorithm 4 of the paper turns them, for every block of
query rows, into a list of key *blocks* (the slash lines, merged into contiguous ranges) and a
list of single key *columns* (the vertical lines outside those ranges).

Inputs (vLLM's argument order and layouts)
------------------------------------------
- ``q_seqlens``, ``kv_seqlens``: int32/int64 ``[batch]``; query and key lengths of each
  sequence. The queries are the *last* ``q_seqlen`` positions of the keys when causal
  (bottom-right aligned, ``kv_seqlen >= q_seqlen`` required), and all come after the keys
  when not causal (the "successor chunk" case of dual-chunk attention).
- ``vertical_indexes``: int32/int64 ``[batch, num_heads, nnz_v]``; key positions.
- ``slash_indexes``: int32/int64 ``[batch, num_heads, nnz_s]``; a slash ``s`` is the
  diagonal ``key = query_position - s`` (``s = 0`` is the main diagonal), measured in the key
  coordinates in which query row ``i`` sits at ``kv_seqlen - q_seqlen + i`` (causal) or
  ``kv_seqlen + i`` (not causal).
- ``context_size``: the padded query length; the tables have ``cdiv(context_size,
  block_size_M)`` rows.

Outputs (all int32, on the inputs' device)
------------------------------------------
With ``R = cdiv(context_size, block_size_M)``:

- ``block_count``: ``[batch, num_heads, R]``; how many entries of ``block_offset`` are used.
- ``block_offset``: ``[batch, num_heads, R, nnz_s * (block_size_M // block_size_N)]`` (at
  least one column); the first key position of each ``block_size_N``-wide key block, in
  increasing order. A block may reach past ``kv_seqlen``; the attention kernel masks those
  keys. With the default square blocks this is exactly vLLM's ``[..., nnz_s]``.
- ``column_count``: ``[batch, num_heads, R]``; how many entries of ``column_index`` are used.
- ``column_index``: ``[batch, num_heads, R, nnz_v]``; single key positions not inside any
  listed block, in increasing order.

Entries past the counts, and whole rows whose first query is at or past ``q_seqlen``, are 0
(vLLM leaves them uninitialised in the merge-head variant). A kernel reads only up to the
counts.

Relation to vLLM's CUDA kernel and to the paper
-----------------------------------------------
For what MInference's search produces -- vertical indexes sorted ascending, slash indexes
sorted descending, no repeats, ``0 <= vertical < kv_seqlen``, ``slash >= 0`` -- the outputs
equal vLLM's ``convert_vertical_slash_indexes`` entry for entry, including four behaviours
of its kernel that the paper's pseudo-code does not show:

1. When a slash range starts at most ``block_size_M`` past the end of the current range,
   the current range grows by a whole ``block_size_M`` (not just to the new end), so the
   blocks can cover a few more keys than the slash lines touch.
2. (causal) A row block that no slash line reaches gets one block starting at the causal
   frontier ``kv_seqlen - q_seqlen + end_m`` when that is inside the keys. Every key in it is
   in the future of every query of the row block, so a causal kernel masks it entirely; it
   is kept so that outputs compare equal with vLLM.
3. (causal) Vertical indexes at or beyond the end of the last slash range are dropped.
   (MInference always keeps the main diagonal, which puts that end at the causal
   frontier.) Not causal, every vertical index outside the ranges is kept.
4. A slash equal to a row block's frontier touches no key of it, yet when it is the smallest
   listed slash it still counts, as the range ``[0, block_size_M)``.

Other inputs are normalised first, as the paper's Algorithm 4 does by sorting: indexes are
sorted, repeats are removed, and vertical indexes outside ``[0, kv_seqlen)`` and negative
slash indexes are ignored (vLLM's kernel would instead depend on the order, repeat a
duplicated column -- which double-counts that key in attention -- read past the keys, or,
not causal, never terminate). vLLM's kernel also loops forever for some inputs when
``block_size_N < block_size_M``; here any ``block_size_M`` that is a multiple of
``block_size_N`` works, which keeps the blocks tiling each range exactly and never
overlapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpager.sparse._checks import (
    INT32_MAX,
    check_bool,
    check_int,
    check_range,
    check_same_device,
    check_tensor,
)
from kvpager.sparse._dispatch import select_backend

if TYPE_CHECKING:
    import torch

    VSTables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def convert_vertical_slash_indexes(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    context_size: int,
    block_size_M: int = 64,
    block_size_N: int = 64,
    causal: bool = True,
    *,
    backend: str = "auto",
) -> VSTables:
    """Block-sparse tables ``(block_count, block_offset, column_count, column_index)``.

    Every head uses all ``nnz_v`` / ``nnz_s`` entries of its vertical / slash row. Shapes,
    dtypes and the exact relation to vLLM's kernel are in the module docstring.
    """
    return _convert(
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, None, None,
        context_size, block_size_M, block_size_N, causal, backend,
    )


def convert_vertical_slash_indexes_mergehead(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    vertical_indices_count: torch.Tensor,
    slash_indices_count: torch.Tensor,
    context_size: int,
    block_size_M: int = 64,
    block_size_N: int = 64,
    causal: bool = True,
    *,
    backend: str = "auto",
) -> VSTables:
    """As `convert_vertical_slash_indexes`, with a different number of indexes per head.

    vertical_indices_count, slash_indices_count: int32/int64 ``[num_heads]``; head ``h`` uses
    only the first ``vertical_indices_count[h]`` entries of ``vertical_indexes[:, h]`` (and
    likewise for slashes), so one padded buffer serves heads with different top-k budgets
    (dual-chunk attention pads with INT32_MAX / INT32_MIN beyond the counts). A count of 0
    means the head has no line of that kind.
    """
    return _convert(
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, vertical_indices_count,
        slash_indices_count, context_size, block_size_M, block_size_N, causal, backend,
    )


def _convert(
    q_seqlens: object,
    kv_seqlens: object,
    vertical_indexes: object,
    slash_indexes: object,
    vertical_indices_count: object | None,
    slash_indices_count: object | None,
    context_size: object,
    block_size_M: object,
    block_size_N: object,
    causal: object,
    backend: object,
) -> VSTables:
    import torch

    context_size = check_int("context_size", context_size, minimum=0)
    block_size_M = check_int("block_size_M", block_size_M, minimum=1)
    block_size_N = check_int("block_size_N", block_size_N, minimum=1)
    causal = check_bool("causal", causal)
    if block_size_M % block_size_N != 0:
        raise ValueError(
            f"block_size_M ({block_size_M}) must be a multiple of block_size_N "
            f"({block_size_N}) so that key blocks tile each slash range exactly"
        )
    # Key positions up to kv_seqlen + context_size + 2 * block_size_M are int32 in the
    # kernels and in the tables.
    if 2 * block_size_M > INT32_MAX:
        raise ValueError(f"block_size_M must be <= {INT32_MAX // 2} (key positions are int32), "
                         f"got {block_size_M}")
    if context_size > INT32_MAX - 2 * block_size_M:
        raise ValueError(f"context_size must be <= {INT32_MAX - 2 * block_size_M} with "
                         f"block_size_M {block_size_M} (key positions are int32), got "
                         f"{context_size}")
    named = _check_tensors(
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, vertical_indices_count,
        slash_indices_count,
    )
    device = check_same_device(named)
    q_seqlens, kv_seqlens = named["q_seqlens"], named["kv_seqlens"]
    batch, num_heads, nnz_s = named["slash_indexes"].shape
    nnz_v = named["vertical_indexes"].shape[2]
    _check_table_sizes(batch, num_heads, nnz_s, nnz_v, context_size, block_size_M, block_size_N)
    # Values: one host sync. Key positions and frontiers are int32 in the kernels.
    check_range("q_seqlens", q_seqlens, low=0, high=context_size)
    check_range("kv_seqlens", kv_seqlens, low=0, high=INT32_MAX - context_size - 2 * block_size_M)
    if causal and batch and bool((kv_seqlens < q_seqlens).any()):
        raise ValueError("kv_seqlens must be >= q_seqlens when causal (queries are the last keys)")
    for name, nnz in (("vertical_indices_count", nnz_v), ("slash_indices_count", nnz_s)):
        if name in named:
            check_range(name, named[name], low=0, high=nnz)
    chosen = select_backend(backend, device)

    vertical, n_vertical = _normalize(
        named["vertical_indexes"], kv_seqlens, named.get("vertical_indices_count"),
        descending=False,
    )
    slash, n_slash = _normalize(
        named["slash_indexes"], None, named.get("slash_indices_count"), descending=True
    )
    rows = -(-context_size // block_size_M)
    capacity = max(nnz_s, 1) * (block_size_M // block_size_N)

    def table(*last: int) -> torch.Tensor:
        return torch.zeros(batch, num_heads, rows, *last, dtype=torch.int32, device=device)

    block_count, block_offset, column_count, column_index = (
        table(), table(capacity), table(), table(nnz_v)
    )
    if batch == 0 or num_heads == 0 or rows == 0:
        return block_count, block_offset, column_count, column_index
    if chosen == "triton":
        from kvpager.sparse import triton_vertical_slash as impl
    else:  # the ignore: both modules give the same function; mypy types impl by the first
        from kvpager.sparse import reference as impl  # type: ignore[no-redef]
    q32 = q_seqlens.to(torch.int32).contiguous()
    kv32 = kv_seqlens.to(torch.int32).contiguous()
    impl.vertical_slash_blocks(
        q32, kv32, slash, n_slash, block_count, block_offset, block_size_M, block_size_N, causal
    )
    impl.vertical_slash_columns(
        q32, vertical, n_vertical, block_count, block_offset, column_count, column_index,
        block_size_M, block_size_N, causal,
    )
    return block_count, block_offset, column_count, column_index


def _check_table_sizes(
    batch: int, num_heads: int, nnz_s: int, nnz_v: int, context_size: int, block_size_M: int,
    block_size_N: int,
) -> None:
    """Each output table within INT32_MAX entries (8 GiB of int32), checked before any is
    allocated, naming what makes it large: context_size (its rows) or block_size_N (the
    block_size_M // block_size_N blocks per slash of block_offset)."""
    rows = batch * num_heads * -(-context_size // block_size_M)
    per_slash = block_size_M // block_size_N
    if rows * max(nnz_s, 1) * per_slash <= INT32_MAX and rows * nnz_v <= INT32_MAX:
        return
    if rows * max(nnz_s, nnz_v, 1) > INT32_MAX:
        raise ValueError(
            f"context_size ({context_size}) with block_size_M {block_size_M} gives {rows} table "
            f"rows of up to {max(nnz_s, nnz_v)} entries, more than {INT32_MAX} entries in all"
        )
    raise ValueError(
        f"block_size_N ({block_size_N}) splits each slash into block_size_M // block_size_N = "
        f"{per_slash} blocks: block_offset would hold {rows * max(nnz_s, 1) * per_slash} "
        f"entries, more than {INT32_MAX}"
    )


def _check_tensors(
    q_seqlens: object,
    kv_seqlens: object,
    vertical_indexes: object,
    slash_indexes: object,
    vertical_indices_count: object | None,
    slash_indices_count: object | None,
) -> dict[str, torch.Tensor]:
    """Types, ranks and shapes of the tensor arguments; {name: tensor} of those given."""
    import torch

    ints = (torch.int32, torch.int64)
    named = {
        "q_seqlens": check_tensor("q_seqlens", q_seqlens, ndim=1, dtypes=ints),
        "kv_seqlens": check_tensor("kv_seqlens", kv_seqlens, ndim=1, dtypes=ints),
        "vertical_indexes": check_tensor("vertical_indexes", vertical_indexes, ndim=3, dtypes=ints),
        "slash_indexes": check_tensor("slash_indexes", slash_indexes, ndim=3, dtypes=ints),
    }
    batch, num_heads, _ = named["slash_indexes"].shape
    vertical_shape = tuple(named["vertical_indexes"].shape)
    if vertical_shape[:2] != (batch, num_heads):
        raise ValueError(
            f"vertical_indexes must be [batch, num_heads, nnz_v] = [{batch}, {num_heads}, *] "
            f"like slash_indexes; got {vertical_shape}"
        )
    for name in ("q_seqlens", "kv_seqlens"):
        if named[name].shape[0] != batch:
            got = named[name].shape[0]
            raise ValueError(f"{name} must have {batch} entries (batch), got {got}")
    for name, value in (
        ("vertical_indices_count", vertical_indices_count),
        ("slash_indices_count", slash_indices_count),
    ):
        if value is not None:
            count = check_tensor(name, value, ndim=1, dtypes=ints)
            if count.shape[0] != num_heads:
                raise ValueError(
                    f"{name} must have {num_heads} entries (num_heads), got {count.shape[0]}"
                )
            named[name] = count
    return named


def _normalize(
    indexes: torch.Tensor,
    kv_seqlens: torch.Tensor | None,
    count: torch.Tensor | None,
    *,
    descending: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted, repeat-free int32 index rows and how many entries of each row are real.

    indexes: ``[batch, num_heads, nnz]``. Entries past ``count[h]``, negative ones and (when
    ``kv_seqlens`` is given) ones at or past the sequence's key length become a pad value
    that sorts last: INT32_MAX ascending, -1 descending. Returns the padded rows, int32
    ``[batch, num_heads, nnz]`` contiguous, and the real lengths, int32 ``[batch, num_heads]``.
    Everything stays on the device: no host sync.
    """
    import torch

    batch, num_heads, nnz = indexes.shape
    values = indexes.to(torch.int64)
    keep = values >= 0
    if kv_seqlens is not None:
        keep &= values < kv_seqlens.to(torch.int64).view(batch, 1, 1)
    if count is not None:
        position = torch.arange(nnz, device=indexes.device).view(1, 1, nnz)
        keep &= position < count.to(torch.int64).view(1, num_heads, 1)
    pad = -1 if descending else INT32_MAX
    values = torch.where(keep, values, torch.full_like(values, pad))
    values = torch.sort(values, dim=-1, descending=descending).values
    if nnz > 1:
        repeat = values[..., 1:] == values[..., :-1]
        values[..., 1:] = values[..., 1:].masked_fill(repeat, pad)
        values = torch.sort(values, dim=-1, descending=descending).values
    real = (values != pad).sum(dim=-1).to(torch.int32)
    return values.to(torch.int32).contiguous(), real.contiguous()
