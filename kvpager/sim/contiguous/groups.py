"""Reservation groups of the contiguous baselines: a request's sequences and its spare regions.

A request with `n` samples or a beam width reserves one region per member at admission;
the members not forked yet hold *spare* regions. The group is the owner of those spares and
of its member counts: `ReservationGroups` hands out group ids, and each `ReservationGroup`
releases and re-reserves its own spares, so neither the manager nor swapping touches them
directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from kvpager.sim.buddy import BuddyAllocator


@dataclass
class ReservationGroup:
    """Sequences admitted together (a request's samples or beams) and their spare regions."""

    size: int  # slots of each member's block
    final: int | None  # slots each member holds at the end (max_tokens - 1), if known
    live: int = 1
    on_gpu: int = 1
    spares: list[int] = field(default_factory=list)  # GPU offsets of regions not forked into
    dropped: int = 0  # spares released while the whole group was swapped out

    def take_spare(self) -> int | None:
        """The GPU offset of a spare region for a member being forked, or None."""
        return self.spares.pop(0) if self.spares else None

    def release_spares(self, gpu: BuddyAllocator) -> None:
        """Release the spares of a group with no member left on the GPU: they hold no data.
        A member coming back (`reserve_dropped`) reserves them again."""
        for offset in self.spares:
            gpu.free(offset)
        self.dropped += len(self.spares)
        self.spares = []

    def reserve_dropped(self, gpu: BuddyAllocator) -> None:
        """Reserve again the spares released at swap-out; the caller checked room."""
        self.spares = [gpu.alloc(self.size) for _ in range(self.dropped)]
        self.dropped = 0

    def reserved_slots(self) -> int:
        """Slots the spares will hold once forked into (0 when the final length is unknown):
        the memory breakdown counts them as reserved."""
        return 0 if self.final is None else len(self.spares) * min(self.final, self.size)


class ReservationGroups:
    """The live reservation groups by id."""

    def __init__(self) -> None:
        self._groups: dict[int, ReservationGroup] = {}
        self._next_gid = 0

    def add(self, group: ReservationGroup) -> int:
        """Register a group; returns its id."""
        gid = self._next_gid
        self._next_gid += 1
        self._groups[gid] = group
        return gid

    def __getitem__(self, gid: int) -> ReservationGroup:
        return self._groups[gid]

    def remove(self, gid: int) -> None:
        """Forget a group whose last member was freed."""
        del self._groups[gid]

    def __iter__(self) -> Iterator[ReservationGroup]:
        return iter(self._groups.values())

    def __len__(self) -> int:
        return len(self._groups)


__all__ = ["ReservationGroup", "ReservationGroups"]
