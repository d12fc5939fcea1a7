"""Swapping contiguous regions between the GPU cache and the CPU swap area.

A region moves whole: the CPU allocator places a block of the same size, so swapping back in
needs a large enough free GPU block again (the buddy allocator's external fragmentation
applies to swap-in as to admission). Only the slots holding tokens are copied.

Spare regions (reserved at admission for samples / beams not forked yet) hold no data: a
group with no member left on the GPU releases them there instead of carrying them to the
CPU, and reserves them again when it comes back.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from kvpager.core.memory.seq_store import ON_CPU, ON_GPU
from kvpager.core.memory.swap import group_rows
from kvpager.core.plans import AllocStatus
from kvpager.sim.buddy import BuddyAllocator, NoFreeBlockError

if TYPE_CHECKING:
    from kvpager.sim.contiguous.manager import ContiguousManager


# The ignores on the methods below: mypy rejects a mixin self-type that subclasses the mixin.
class ContiguousSwapMixin:
    """Swapping methods of `ContiguousManager` (uses its rows, groups and allocators)."""

    def can_swap_out(self: ContiguousManager, seq_ids: Iterable[Hashable]) -> bool:  # type: ignore[misc]
        """Whether the CPU allocator can place a region for each of the sequences."""
        rows = group_rows(self._seqs, seq_ids, ON_GPU)
        return self.cpu is not None and self.cpu.fits(self._size[rows].tolist())

    def swap_out(self: ContiguousManager, seq_ids: Iterable[Hashable]) -> np.ndarray:  # type: ignore[misc]
        """Move whole regions to the CPU, all or nothing.

        Returns int64 `[n, 2]` (gpu_slot, cpu_slot) pairs of the slots holding tokens.

        Raises (nothing changed): ValueError (no swap space), UnknownSequenceError,
            WrongDeviceError, NoFreeBlockError.
        """
        if self.cpu is None:
            raise ValueError("swap_out: this manager has no CPU swap space (num_cpu_tokens=0)")
        rows = group_rows(self._seqs, seq_ids, ON_GPU)
        sizes = self._size[rows].tolist()
        if not self.cpu.fits(sizes):
            raise NoFreeBlockError("cpu", max(sizes), self.cpu.free_slots,
                                   self.cpu.largest_free())
        pairs = _move(self, rows, self.gpu, self.cpu, ON_CPU)
        gids = self._gid[rows]
        for gid in dict.fromkeys(gids.tolist()):
            group = self._groups[gid]
            group.on_gpu -= int((gids == gid).sum())
            if group.on_gpu == 0:
                self._drop_spares(group)
        self.num_slots_swapped_out += int(pairs.shape[0])
        return pairs

    def can_swap_in(self: ContiguousManager, seq_ids: Iterable[Hashable]) -> AllocStatus:  # type: ignore[misc]
        """Whether the regions (and spares released at swap-out) fit back on the GPU, keeping
        the watermark free; NEVER if they would not fit an empty cache."""
        rows = group_rows(self._seqs, seq_ids, ON_CPU)
        return self._status(_swap_in_sizes(self, rows))

    def swap_in(self: ContiguousManager, seq_ids: Iterable[Hashable]) -> np.ndarray:  # type: ignore[misc]
        """Move whole regions back to the GPU, all or nothing.

        Returns int64 `[n, 2]` (cpu_slot, gpu_slot) pairs of the slots holding tokens.

        Raises (nothing changed): ValueError (no swap space), UnknownSequenceError,
            WrongDeviceError, NoFreeBlockError.
        """
        if self.cpu is None:
            raise ValueError("swap_in: this manager has no CPU swap space (num_cpu_tokens=0)")
        rows = group_rows(self._seqs, seq_ids, ON_CPU)
        sizes = _swap_in_sizes(self, rows)
        if not self.gpu.fits(sizes):
            raise NoFreeBlockError("gpu", max(sizes), self.gpu.free_slots,
                                   self.gpu.largest_free())
        pairs = _move(self, rows, self.cpu, self.gpu, ON_GPU)
        gids = self._gid[rows]
        for gid in dict.fromkeys(gids.tolist()):  # same order as _swap_in_sizes
            group = self._groups[gid]
            group.on_gpu += int((gids == gid).sum())
            group.spares = [self.gpu.alloc(group.size) for _ in range(group.dropped)]
            group.dropped = 0
        self.num_slots_swapped_in += int(pairs.shape[0])
        return pairs


def _swap_in_sizes(m: ContiguousManager, rows: np.ndarray) -> list[int]:
    """Block sizes `swap_in` allocates, in its order: the regions, then released spares."""
    sizes = m._size[rows].tolist()
    for gid in dict.fromkeys(m._gid[rows].tolist()):
        group = m._groups[gid]
        sizes += [group.size] * group.dropped
    return sizes


def _move(m: ContiguousManager, rows: np.ndarray, src: BuddyAllocator, dst: BuddyAllocator,
          where: int) -> np.ndarray:
    """Give each row a block of `dst` in place of its `src` block; the caller checked room."""
    pairs = []
    for row in rows.tolist():
        size, old = int(m._size[row]), int(m._off[row])
        new = dst.alloc(size)
        src.free(old)
        pos = np.arange(int(m._seqs.ntokens[row]), dtype=np.int64)
        pairs.append(np.stack([pos + old, pos + new], axis=1))
        m._off[row] = new
        m._seqs.where[row] = where
    return np.concatenate(pairs)
