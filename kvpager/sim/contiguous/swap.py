"""Swapping contiguous regions between the GPU cache and the CPU swap area.

A region moves whole: the CPU allocator places a block of the same size, so swapping back in
needs a large enough free GPU block again (the buddy allocator's external fragmentation
applies to swap-in as to admission). Only the slots holding tokens are copied.

Spare regions (reserved at admission for samples / beams not forked yet) hold no data: a
group with no member left on the GPU releases them there instead of carrying them to the
CPU, and reserves them again when it comes back.

`RegionSwap` is a collaborator of `ContiguousManager`: it is handed the manager's row table
(whose `region_offset` / `region_size` / `region_group` columns the manager registered), the
reservation groups, both allocators and the manager's admission check, and works only
through their public interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import numpy as np

from kvpager.core.memory.seq_store import ON_CPU, ON_GPU, SequenceStore
from kvpager.core.memory.swap import group_rows
from kvpager.core.plans import AllocStatus
from kvpager.sim.buddy import BuddyAllocator, NoFreeBlockError
from kvpager.sim.contiguous.groups import ReservationGroups


class RegionSwap:
    """Moves whole regions between the GPU and the CPU allocator, all or nothing.

    Args:
        rows: the manager's row table, with its region columns.
        groups: the manager's reservation groups.
        gpu, cpu: the allocators (`cpu` None: no swap space).
        status: the manager's admission check for a list of region sizes (watermark kept).
    """

    def __init__(self, rows: SequenceStore, groups: ReservationGroups, gpu: BuddyAllocator,
                 cpu: BuddyAllocator | None,
                 status: Callable[[list[int]], AllocStatus]) -> None:
        self.rows = rows
        self.groups = groups
        self.gpu = gpu
        self.cpu = cpu
        self.status = status
        self.num_slots_swapped_out = 0
        self.num_slots_swapped_in = 0

    def can_swap_out(self, seq_ids: Iterable[Hashable]) -> bool:
        """Whether the CPU allocator can place a region for each of the sequences."""
        rows = group_rows(self.rows, seq_ids, ON_GPU)
        return self.cpu is not None and self.cpu.fits(self.rows.region_size[rows].tolist())

    def swap_out(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move whole regions to the CPU; int64 `[n, 2]` (gpu_slot, cpu_slot) pairs of the
        slots holding tokens.

        Raises (nothing changed): ValueError (no swap space), UnknownSequenceError,
            WrongDeviceError, NoFreeBlockError.
        """
        if self.cpu is None:
            raise ValueError("swap_out: this manager has no CPU swap space (num_cpu_tokens=0)")
        rows = group_rows(self.rows, seq_ids, ON_GPU)
        sizes = self.rows.region_size[rows].tolist()
        if not self.cpu.fits(sizes):
            raise NoFreeBlockError("cpu", max(sizes), self.cpu.free_slots,
                                   self.cpu.largest_free())
        pairs = self._move(rows, self.gpu, self.cpu, ON_CPU)
        gids = self.rows.region_group[rows]
        for gid in dict.fromkeys(gids.tolist()):
            group = self.groups[gid]
            group.on_gpu -= int((gids == gid).sum())
            if group.on_gpu == 0:
                group.release_spares(self.gpu)
        self.num_slots_swapped_out += int(pairs.shape[0])
        return pairs

    def can_swap_in(self, seq_ids: Iterable[Hashable]) -> AllocStatus:
        """Whether the regions (and spares released at swap-out) fit back on the GPU, keeping
        the watermark free; NEVER if they would not fit an empty cache."""
        rows = group_rows(self.rows, seq_ids, ON_CPU)
        return self.status(self._swap_in_sizes(rows))

    def swap_in(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move whole regions back to the GPU; int64 `[n, 2]` (cpu_slot, gpu_slot) pairs of
        the slots holding tokens.

        Raises (nothing changed): ValueError (no swap space), UnknownSequenceError,
            WrongDeviceError, NoFreeBlockError.
        """
        if self.cpu is None:
            raise ValueError("swap_in: this manager has no CPU swap space (num_cpu_tokens=0)")
        rows = group_rows(self.rows, seq_ids, ON_CPU)
        sizes = self._swap_in_sizes(rows)
        if not self.gpu.fits(sizes):
            raise NoFreeBlockError("gpu", max(sizes), self.gpu.free_slots,
                                   self.gpu.largest_free())
        pairs = self._move(rows, self.cpu, self.gpu, ON_GPU)
        gids = self.rows.region_group[rows]
        for gid in dict.fromkeys(gids.tolist()):  # same order as _swap_in_sizes
            group = self.groups[gid]
            group.on_gpu += int((gids == gid).sum())
            group.reserve_dropped(self.gpu)
        self.num_slots_swapped_in += int(pairs.shape[0])
        return pairs

    def _swap_in_sizes(self, rows: np.ndarray) -> list[int]:
        """Block sizes `swap_in` allocates, in its order: the regions, then released spares."""
        sizes = self.rows.region_size[rows].tolist()
        for gid in dict.fromkeys(self.rows.region_group[rows].tolist()):
            group = self.groups[gid]
            sizes += [group.size] * group.dropped
        return sizes

    def _move(self, rows: np.ndarray, src: BuddyAllocator, dst: BuddyAllocator,
              where: int) -> np.ndarray:
        """Give each row a block of `dst` in place of its `src` block; the caller checked
        room."""
        table = self.rows
        pairs = []
        for row in rows.tolist():
            size, old = int(table.region_size[row]), int(table.region_offset[row])
            new = dst.alloc(size)
            src.free(old)
            pos = np.arange(int(table.ntokens[row]), dtype=np.int64)
            pairs.append(np.stack([pos + old, pos + new], axis=1))
            table.region_offset[row] = new
            table.where[row] = where
        return np.concatenate(pairs)


__all__ = ["RegionSwap"]
