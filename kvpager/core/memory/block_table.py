"""BlockTable: one sequence's logical-to-physical block mapping, and the kernel tensors.

Logical block `i` of a sequence holds its tokens `i * block_size ... (i + 1) * block_size - 1`;
the table maps it to a physical block id of the pool the sequence lives in. A token at
position `p` is stored in slot `table[p // block_size] * block_size + p % block_size`, the
flat index that `reshape_and_cache` writes to.

`KVCacheManager.block_table(seq)` returns a `BlockTable` snapshot. For batches the manager
keeps all tables in one array and builds kernel tensors from it directly
(`KVCacheManager.block_tables_tensor`); the helpers here serve single sequences and tables a
caller builds by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kvpager.core.errors import import_torch

if TYPE_CHECKING:
    import torch


def num_blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold `num_tokens` tokens: ceil(num_tokens / block_size)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return -(-num_tokens // block_size)


def slots_for_positions(
    blocks: np.ndarray, positions: np.ndarray, block_size: int
) -> np.ndarray:
    """Slots (int64) of token positions through one table: `block * block_size + offset`."""
    positions = np.asarray(positions, dtype=np.int64)
    return blocks[positions // block_size].astype(np.int64) * block_size + positions % block_size


class BlockTable:
    """An immutable logical-to-physical block mapping of one sequence.

    Args:
        block_size: tokens per block, > 0.
        blocks: physical block ids, logical order.
        num_tokens: tokens the sequence holds, at most `len(blocks) * block_size`.
        device: the pool the ids belong to ("gpu" or "cpu").
    """

    __slots__ = ("_blocks", "block_size", "device", "num_tokens")

    def __init__(
        self,
        block_size: int,
        blocks: Sequence[int] | np.ndarray = (),
        num_tokens: int = 0,
        device: str = "gpu",
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        arr = np.array(blocks, dtype=np.int32).reshape(-1)
        if arr.size and arr.min() < -1:  # -1: NULL_BLOCK, a released window entry
            raise ValueError(f"blocks must be >= 0 (or -1, a released entry), got "
                             f"{int(arr.min())}")
        if not 0 <= num_tokens <= arr.size * block_size:
            raise ValueError(
                f"num_tokens must be in [0, {arr.size * block_size}] for {arr.size} blocks "
                f"of {block_size}, got {num_tokens}"
            )
        arr.flags.writeable = False
        self._blocks = arr
        self.block_size = block_size
        self.num_tokens = num_tokens
        self.device = device

    @property
    def blocks(self) -> np.ndarray:
        """Physical block ids, int32 `[num_blocks]`, read-only."""
        return self._blocks

    def __len__(self) -> int:
        return int(self._blocks.size)

    def __getitem__(self, logical: int) -> int:
        return int(self._blocks[logical])

    def __iter__(self):
        return iter(self._blocks.tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockTable):
            return NotImplemented
        return (self.block_size == other.block_size and self.num_tokens == other.num_tokens
                and self.device == other.device
                and np.array_equal(self._blocks, other._blocks))

    def __repr__(self) -> str:
        return (f"BlockTable(block_size={self.block_size}, blocks={self._blocks.tolist()}, "
                f"num_tokens={self.num_tokens}, device={self.device!r})")

    @property
    def num_free_slots(self) -> int:
        """Slots allocated but not yet holding a token (room before the next block)."""
        return len(self) * self.block_size - self.num_tokens

    def slot(self, position: int) -> int:
        """The slot of the token at `position` (0-based)."""
        if not 0 <= position < len(self) * self.block_size:
            raise ValueError(
                f"position must be in [0, {len(self) * self.block_size}), got {position}"
            )
        return int(self._blocks[position // self.block_size]) * self.block_size + (
            position % self.block_size
        )

    def slot_mapping(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Slots of positions `start..end-1` (default: all tokens), int64 `[end - start]`."""
        end = self.num_tokens if end is None else end
        if not 0 <= start <= end <= len(self) * self.block_size:
            raise ValueError(
                f"need 0 <= start <= end <= {len(self) * self.block_size}, got {start}..{end}"
            )
        return slots_for_positions(self._blocks, np.arange(start, end), self.block_size)

    def to_tensor(self, width: int | None = None, pad: int = 0) -> torch.Tensor:
        """int32 `[width]` tensor of the ids padded with `pad` (kernels never read the pad)."""
        return block_tables_to_tensor([self], width=width, pad=pad)[0]


def block_tables_to_tensor(
    tables: Sequence[BlockTable | Sequence[int] | np.ndarray],
    width: int | None = None,
    pad: int = 0,
) -> torch.Tensor:
    """Stack tables into the kernels' int32 `[num_seqs, width]` block-table tensor.

    `width` defaults to the longest table. Padding with a valid id (0) rather than -1 keeps a
    kernel that prefetches one block past the end inside the cache.
    """
    torch = import_torch("block_tables_tensor")

    rows = [t.blocks if isinstance(t, BlockTable) else np.asarray(t, dtype=np.int32)
            for t in tables]
    longest = max((r.size for r in rows), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width must be >= the longest table ({longest}), got {width}")
    out = np.full((len(rows), width), pad, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return torch.from_numpy(out)
