"""Per-row top-k over a logits matrix, as a sparse-attention indexer uses to pick KV entries.

DeepSeek-V3.2's indexer scores every (query token, key token) pair, then keeps, for each
query, the keys with the k largest scores; sparse MLA attends only to those. vLLM exposes the
selection as two custom ops with the argument order kept here:

- ``top_k_per_row_prefill(logits, row_starts, row_ends, indices, num_rows, stride0, stride1,
  top_k)``: row ``r`` considers ``logits[r, row_starts[r]:row_ends[r]]`` (in a chunked
  prefill the rows of one sequence share a key window of the batch's packed keys);
- ``top_k_per_row_decode(logits, next_n, seq_lens, indices, num_rows, stride0, stride1,
  top_k)``: row ``r`` is query ``r % next_n`` of sequence ``r // next_n`` (``next_n`` > 1
  with speculative tokens) and considers ``logits[r, :seq_lens[r // next_n] - next_n + r %
  next_n + 1]``, the keys that query may see. A 2-D ``seq_lens`` ``[num_seqs, next_n]`` gives
  each row's end directly (newer vLLM accepts that form too).

Output contract (vLLM's): ``indices[r, :top_k]`` holds positions *relative to the row start*,
int32. A row with ``len <= top_k`` valid entries gets ``0, 1, ..., len - 1`` followed by -1
(-1 means "no key": the consumer skips it). A longer row gets the positions of its ``top_k``
largest logits. vLLM leaves their order unspecified (its kernel writes them in thread order);
here they are written in increasing position order, ties at the threshold go to the lower
position, and NaN ranks above every number (as in ``torch.topk``), so the reference and
Triton backends agree entry for entry. A row whose end is before its start is empty.

Both ops write into ``indices`` and return None, like vLLM's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpager.sparse._checks import check_int, check_range, check_same_device, check_tensor
from kvpager.sparse._dispatch import select_backend

if TYPE_CHECKING:
    import torch


def top_k_per_row_prefill(
    logits: torch.Tensor,
    row_starts: torch.Tensor,
    row_ends: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    top_k: int,
    *,
    backend: str = "auto",
) -> None:
    """Top-k positions of each row's window ``[row_starts[r], row_ends[r])``, into `indices`.

    logits: float32/float16/bfloat16 ``[>= num_rows, num_cols]``, any strides.
    row_starts, row_ends: int32/int64 ``[>= num_rows]``; ``0 <= start`` and ``end <= num_cols``.
    indices: int32 ``[>= num_rows, top_k]``, written in place (rows past `num_rows` untouched).
    stride0, stride1: logits' strides in elements; vLLM's kernel reads a raw pointer with
    them, kvpager reads the tensor, so they must equal ``logits.stride()``.
    """
    import torch

    _check_common(logits, indices, num_rows, stride0, stride1, top_k)
    starts = _check_row_bounds("row_starts", row_starts, num_rows)
    ends = _check_row_bounds("row_ends", row_ends, num_rows)
    device = check_same_device(
        {"logits": logits, "row_starts": row_starts, "row_ends": row_ends, "indices": indices}
    )
    check_range("row_starts", starts, low=0)
    check_range("row_ends", ends, high=logits.shape[1])
    # A row whose end is at or before its start is empty: make it [0, 0) before any
    # subtraction, which for an end near -2^63 would wrap around int64.
    empty = ends <= starts
    starts = torch.where(empty, 0, starts.to(torch.int64))
    ends = torch.where(empty, 0, ends.to(torch.int64))
    _run(select_backend(backend, device), logits, starts, ends, indices, num_rows, top_k)


def top_k_per_row_decode(
    logits: torch.Tensor,
    next_n: int,
    seq_lens: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    top_k: int,
    *,
    backend: str = "auto",
) -> None:
    """Top-k positions among the keys each decode query may see, into `indices`.

    logits: float32/float16/bfloat16 ``[>= num_rows, num_cols]``, any strides.
    next_n: queries per sequence (1 + speculative tokens); row ``r`` belongs to sequence
    ``r // next_n``.
    seq_lens: int32/int64 ``[>= cdiv(num_rows, next_n)]`` (sequence lengths; row ``r`` ends
    at ``seq_lens[r // next_n] - next_n + r % next_n + 1``, clamped at 0) or
    ``[num_seqs, next_n]`` (each row's end, flattened row-major). Ends must be ``<= num_cols``.
    indices: int32 ``[>= num_rows, top_k]``, written in place.
    stride0, stride1: must equal ``logits.stride()`` (see `top_k_per_row_prefill`).
    """
    import torch

    _check_common(logits, indices, num_rows, stride0, stride1, top_k)
    next_n = check_int("next_n", next_n, minimum=1)
    seq_lens = check_tensor("seq_lens", seq_lens, ndim=(1, 2), dtypes=(torch.int32, torch.int64))
    device = check_same_device({"logits": logits, "seq_lens": seq_lens, "indices": indices})
    row = torch.arange(num_rows, device=device)
    if seq_lens.dim() == 1:
        needed = -(-num_rows // next_n)
        if seq_lens.shape[0] < needed:
            raise ValueError(
                f"seq_lens must have >= cdiv(num_rows, next_n) = {needed} entries, "
                f"got {seq_lens.shape[0]}"
            )
        # Clamped at 0 first: subtracting from a length near -2^63 would wrap around int64.
        lens = seq_lens.to(torch.int64).clamp(min=0)
        ends = lens[row // next_n] - next_n + row % next_n + 1
    else:
        if seq_lens.shape[1] != next_n or seq_lens.numel() < num_rows:
            raise ValueError(
                f"a 2-D seq_lens must be [num_seqs, next_n={next_n}] with >= num_rows="
                f"{num_rows} entries, got {tuple(seq_lens.shape)}"
            )
        ends = seq_lens.reshape(-1)[:num_rows].to(torch.int64)
    ends = ends.clamp(min=0)
    check_range("seq_lens (as row ends)", ends, high=logits.shape[1])
    starts = torch.zeros_like(ends)
    _run(select_backend(backend, device), logits, starts, ends, indices, num_rows, top_k)


def _check_common(
    logits: object, indices: object, num_rows: object, stride0: object, stride1: object,
    top_k: object,
) -> None:
    import torch

    logits = check_tensor(
        "logits", logits, ndim=2, dtypes=(torch.float32, torch.float16, torch.bfloat16)
    )
    indices = check_tensor("indices", indices, ndim=2, dtypes=(torch.int32,))
    num_rows = check_int("num_rows", num_rows, minimum=0)
    top_k = check_int("top_k", top_k, minimum=1)
    for name, given, actual in (
        ("stride0", stride0, logits.stride(0)), ("stride1", stride1, logits.stride(1)),
    ):
        check_int(name, given, maximum=None)
        if given != actual:
            raise ValueError(
                f"{name} must equal logits.stride({name[-1]}) = {actual}, got {given}"
            )
    if logits.shape[0] < num_rows:
        raise ValueError(f"logits has {logits.shape[0]} rows, fewer than num_rows={num_rows}")
    if indices.shape[0] < num_rows or indices.shape[1] != top_k:
        raise ValueError(
            f"indices must be [>= num_rows={num_rows}, top_k={top_k}], "
            f"got {tuple(indices.shape)}"
        )


def _check_row_bounds(name: str, value: object, num_rows: int) -> torch.Tensor:
    import torch

    tensor = check_tensor(name, value, ndim=1, dtypes=(torch.int32, torch.int64))
    if tensor.shape[0] < num_rows:
        raise ValueError(f"{name} must have >= num_rows={num_rows} entries, got {tensor.shape[0]}")
    return tensor[:num_rows]


def _run(
    chosen: str,
    logits: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int,
    top_k: int,
) -> None:
    import torch

    if num_rows == 0:
        return
    if chosen == "triton":
        from kvpager.sparse import triton_topk as impl

        starts = starts.to(torch.int32).contiguous()
        ends = ends.to(torch.int32).contiguous()
    else:  # the ignore: both modules give the same function; mypy types impl by the first
        from kvpager.sparse import reference as impl  # type: ignore[no-redef]
    impl.top_k_rows(logits, starts, ends, indices, num_rows, top_k)
