"""`ContiguousManager`: one region per sequence, reserved in full at admission.

See the package docstring (`kvpager.sim.contiguous`) for the model; reservation lengths are
in `policy.py`, reservation groups in `groups.py`, swapping in `swap.py` (a collaborator
handed the row table and the groups), the memory breakdown in `usage.py`.

Each sequence's region is three columns of the manager's row table (`region_offset`,
`region_size`, `region_group`), so a reused row starts clean whatever the order of cleanup.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

from kvpager.core.errors import KVPagerError, WrongDeviceError
from kvpager.core.memory.seq_store import DEVICE_NAMES, ON_GPU, SequenceStore
from kvpager.core.plans import EMPTY_PAIRS, Allocation, AllocStatus, AppendResult
from kvpager.sim.buddy import BuddyAllocator, NoFreeBlockError
from kvpager.sim.contiguous.groups import ReservationGroup, ReservationGroups
from kvpager.sim.contiguous.policy import POLICIES, check_int, reserve
from kvpager.sim.contiguous.swap import RegionSwap
from kvpager.sim.contiguous.usage import contiguous_breakdown


class ReservationExceededError(KVPagerError, ValueError):
    """A sequence would grow past the end of its region: the `max_tokens` hint it was admitted
    with was too small. A contiguous cache cannot grow a region in place."""


class Region(NamedTuple):
    device: str
    offset: int
    size: int  # slots of the buddy block, rounding included


class ContiguousManager:
    """A `kvpager.core.protocol.KVManager` that reserves one contiguous region per sequence.

    Args:
        capacity_tokens: token slots of the GPU KV cache, >= 1.
        policy: one of `POLICIES` (see `kvpager.sim.contiguous.policy`).
        max_model_len: longest sequence (prompt + output) served; required by "orca-max",
            a cap on every reservation otherwise.
        num_cpu_tokens: slots of the CPU swap area, >= 0 (0: no swapping).
        watermark: fraction of the cache, in [0, 1), that admitting a new request must leave
            free (as `CacheConfig.watermark`).
    """

    block_size = 1
    #: A contiguous cache shares no content: no prefix cache, no copy-on-write
    #: (`kvpager.sim.manager_protocol.SimManager`).
    prefix_cache: None = None
    num_cow_copies = 0

    def __init__(self, capacity_tokens: int, policy: str, max_model_len: int | None = None,
                 num_cpu_tokens: int = 0, watermark: float = 0.0) -> None:
        check_int("capacity_tokens", capacity_tokens, 1)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if max_model_len is not None:
            check_int("max_model_len", max_model_len, 2)
        elif policy == "orca-max":
            raise ValueError("max_model_len is required by policy 'orca-max' (it reserves "
                             "max_model_len slots per sequence)")
        check_int("num_cpu_tokens", num_cpu_tokens, 0)
        if isinstance(watermark, bool) or not isinstance(watermark, (int, float)) or not (
                0.0 <= watermark < 1.0):
            raise ValueError(f"watermark must be a float in [0, 1), got {watermark!r}")
        self.policy = policy
        self.max_model_len = None if max_model_len is None else int(max_model_len)
        self.capacity_tokens = int(capacity_tokens)
        self.watermark_slots = int(watermark * capacity_tokens)
        self.gpu = BuddyAllocator(capacity_tokens, device="gpu")
        self.cpu = BuddyAllocator(num_cpu_tokens, device="cpu") if num_cpu_tokens else None
        self._seqs = SequenceStore()
        for column in ("region_offset", "region_size", "region_group"):
            self._seqs.add_column(column, np.int64, 0)
        self._groups = ReservationGroups()
        self._swap = RegionSwap(self._seqs, self._groups, self.gpu, self.cpu, self._status)
        self._copies: list[np.ndarray] = []
        self.num_copied_slots = 0

    @property
    def groups(self) -> ReservationGroups:
        """The live reservation groups (a request's members and spare regions)."""
        return self._groups

    @property
    def num_slots_swapped_out(self) -> int:
        """Token slots moved to the CPU so far."""
        return self._swap.num_slots_swapped_out

    @property
    def num_slots_swapped_in(self) -> int:
        """Token slots moved back to the GPU so far."""
        return self._swap.num_slots_swapped_in

    @property
    def num_blocks_swapped_out(self) -> int:
        """Slots moved to the CPU so far (block_size is 1): `SimManager`'s swap counter."""
        return self.num_slots_swapped_out

    @property
    def num_blocks_swapped_in(self) -> int:
        """Slots moved back to the GPU so far."""
        return self.num_slots_swapped_in

    # ---- swapping (`swap.py`) -------------------------------------------------------------
    def can_swap_out(self, seq_ids: Iterable[Hashable]) -> bool:
        """Whether the CPU allocator can place a region for each of the sequences."""
        return self._swap.can_swap_out(seq_ids)

    def swap_out(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move whole regions to the CPU, all or nothing (`RegionSwap.swap_out`)."""
        return self._swap.swap_out(seq_ids)

    def can_swap_in(self, seq_ids: Iterable[Hashable]) -> AllocStatus:
        """Whether the regions and their released spares fit back on the GPU."""
        return self._swap.can_swap_in(seq_ids)

    def swap_in(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move whole regions back to the GPU, all or nothing (`RegionSwap.swap_in`)."""
        return self._swap.swap_in(seq_ids)

    # ---- reservations -------------------------------------------------------------------
    def _reserve(self, num_tokens: int, max_tokens: int | None) -> int | None:
        return reserve(self.policy, num_tokens, max_tokens, self.max_model_len)

    def reservation(self, num_tokens: int, max_tokens: int | None = None) -> int:
        """Slots the policy reserves for one sequence (before the buddy allocator rounds it
        up to `gpu.block_size_for(...)`).

        Raises:
            ValueError: bad counts, `max_tokens` missing for a policy that needs it, or a
                sequence longer than `max_model_len`.
        """
        check_int("num_tokens", num_tokens, 1)
        if max_tokens is not None:
            check_int("max_tokens", max_tokens, 1)
        r = self._reserve(num_tokens, max_tokens)
        if r is None:
            raise ValueError(f"a sequence of num_tokens={num_tokens}, max_tokens={max_tokens} "
                             f"exceeds max_model_len={self.max_model_len}")
        return r

    # ---- queries ------------------------------------------------------------------------
    @property
    def rows(self) -> SequenceStore:
        """The row table (`kvpager.core.protocol.KVManager.rows`)."""
        return self._seqs

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def seq_ids(self) -> list[Hashable]:
        return self._seqs.seq_ids()

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._seqs.num_tokens(seq_id)

    def device_of(self, seq_id: Hashable) -> str:
        return self._seqs.device_of(seq_id)

    def rows_of(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        return self._seqs.rows(seq_ids)

    def seq_lens(self, rows: np.ndarray) -> np.ndarray:
        return self._seqs.seq_lens(rows)

    def check_rows(self, rows: np.ndarray) -> None:
        """Rows must be alive, on the GPU and distinct (see `SequenceStore.check_rows`)."""
        self._seqs.check_rows(rows, ON_GPU)

    def mark_computed_batch(self, rows: np.ndarray, num_computed: np.ndarray | None = None
                            ) -> int:
        """Nothing to register: a contiguous cache shares no content."""
        return 0

    def take_host_transfers(self) -> tuple[np.ndarray, np.ndarray]:
        """No host prefix tier: nothing to copy."""
        return EMPTY_PAIRS, EMPTY_PAIRS

    @property
    def has_swap_space(self) -> bool:
        return self.cpu is not None

    def num_free_blocks(self, device: str = "gpu") -> int:
        """Free slots (block_size is 1) of "gpu" or "cpu"."""
        return self._alloc(device).free_slots

    def region(self, seq_id: Hashable) -> Region:
        """Where the sequence's KV lives: its device, the block's offset and size in slots."""
        row = self._seqs.row(seq_id)
        return Region(DEVICE_NAMES[int(self._seqs.where[row])], int(self._seqs.region_offset[row]),
                      int(self._seqs.region_size[row]))

    def spare_regions(self) -> list[tuple[int, int]]:
        """(offset, size) of GPU regions reserved for samples / beams not forked yet."""
        return sorted((o, g.size) for g in self._groups for o in g.spares)

    def slot_mapping(self, seq_id: Hashable, start: int, end: int) -> np.ndarray:
        """int64 slots of positions `start..end-1` in the sequence's region."""
        row = self._seqs.row(seq_id)
        if not 0 <= start <= end <= self._seqs.region_size[row]:
            raise ValueError(f"positions [{start}, {end}) must lie in the region of "
                             f"{int(self._seqs.region_size[row])} slots")
        return np.arange(start, end, dtype=np.int64) + self._seqs.region_offset[row]

    def take_copies(self) -> np.ndarray:
        """int64 `[n, 2]` (src_slot, dst_slot) GPU copies made by forks since the last call,
        in order; an executor carries them out before the children's next step.

        The scheduler drops what `fork_many` returns, so a driver calls this after every
        `Scheduler.complete_step` (forks happen there) and after `Scheduler.fork_seq`; the
        queue grows until drained. `num_copied_slots` counts every copied slot regardless.
        """
        pairs = np.concatenate(self._copies) if self._copies else EMPTY_PAIRS
        self._copies = []
        return pairs

    # ---- admission ----------------------------------------------------------------------
    def can_allocate(
        self,
        num_tokens: int,
        *,
        token_ids: Sequence[int] | np.ndarray | None = None,
        block_hashes: Sequence[Hashable] | None = None,
        max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> AllocStatus:
        """Whether `num_seqs` regions for a prompt of `num_tokens` can be placed now: the
        buddy allocator must have a large enough free block for each (the free total is
        not enough), leaving the watermark free. NEVER if they do not fit an empty cache or
        the sequence is longer than `max_model_len`."""
        check_int("num_tokens", num_tokens, 1)
        check_int("num_seqs", num_seqs, 1)
        r = self._reserve(num_tokens, max_tokens)
        return AllocStatus.NEVER if r is None else self._status([r] * num_seqs)

    def can_allocate_many(
        self, token_counts: Sequence[int], *, max_tokens: int | None = None
    ) -> AllocStatus:
        """Whether independent sequences (a recomputed group) can all be placed, in order.

        `max_tokens` is their common final length. The protocol does not pass it yet: without
        it, "orca-pow2" and "orca-oracle" check against regions of `max_model_len` slots (an
        upper bound of what `allocate` will then reserve), and need `max_model_len`.
        """
        if max_tokens is None and self.policy != "orca-max":
            if self.max_model_len is None:
                raise ValueError(f"can_allocate_many needs max_tokens under policy "
                                 f"{self.policy!r} when max_model_len is not set")
            max_tokens = self.max_model_len
        sizes = []
        for n in token_counts:
            check_int("token_counts[i]", n, 1)
            r = self._reserve(n, max_tokens)
            if r is None:
                return AllocStatus.NEVER
            sizes.append(r)
        return self._status(sizes)

    def _status(self, sizes: list[int]) -> AllocStatus:
        taken = sum(self.gpu.block_size_for(s) for s in sizes)
        if (self.gpu.capacity - taken < self.watermark_slots
                or not self.gpu.fits(sizes, empty=True)):
            return AllocStatus.NEVER
        if self.gpu.free_slots - taken >= self.watermark_slots and self.gpu.fits(sizes):
            return AllocStatus.OK
        return AllocStatus.LATER

    def allocate(
        self,
        seq_id: Hashable,
        num_tokens: int | None = None,
        *,
        token_ids: Sequence[int] | np.ndarray | None = None,
        block_hashes: Sequence[Hashable] | None = None,
        max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> Allocation:
        """Reserve `num_seqs` regions: one for `seq_id`, the rest for the samples / beams
        that `fork_many` will make of it. `Allocation.blocks` are the prompt's slots.

        Raises:
            DuplicateSequenceError, ValueError, NoFreeBlockError (nothing changed).
        """
        self._seqs.check_new(seq_id)
        if num_tokens is None:
            if token_ids is None:
                raise ValueError("allocate needs num_tokens or token_ids")
            num_tokens = len(token_ids)
        check_int("num_seqs", num_seqs, 1)
        r = self.reservation(num_tokens, max_tokens)
        if not self.gpu.fits([r] * num_seqs):
            raise NoFreeBlockError("gpu", self.gpu.block_size_for(r), self.gpu.free_slots,
                                   self.gpu.largest_free())
        offsets = [self.gpu.alloc(r) for _ in range(num_seqs)]
        size = self.gpu.block_size_for(r)
        gid = self._groups.add(ReservationGroup(
            size, None if max_tokens is None else max_tokens - 1, spares=offsets[1:]))
        row = self._add_row(seq_id, ON_GPU, offsets[0], size, gid)
        self._seqs.ntokens[row] = num_tokens
        return Allocation(seq_id, np.arange(num_tokens, dtype=np.int32) + offsets[0], 0)

    def mark_computed(self, seq_id: Hashable, num_computed_tokens: int) -> int:
        """Nothing to register: no prefix cache in a contiguous cache."""
        self._seqs.row(seq_id)
        return 0

    # ---- growth -------------------------------------------------------------------------
    def blocks_needed_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> np.ndarray:
        """Slots each row would need beyond its region, int64 `[len(rows)]`: zero while it
        stays inside. Lookahead slots are served only inside the region (a contiguous cache
        has nothing to lend past its end, and the scheduler never needs them there)."""
        rows = self._check_batch(rows, num_new_tokens, num_lookahead_slots)
        if not rows.size:
            return np.zeros(0, dtype=np.int64)
        table = self._seqs
        return np.maximum(table.ntokens[rows] + num_new_tokens - table.region_size[rows], 0)

    def append_slots_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0, *,
        token_ids: np.ndarray | None = None,
    ) -> AppendResult:
        """`num_new_tokens` slots per row, row-major in `rows` order; never copies.
        `token_ids` is accepted for the protocol and unused (no content caching).

        Raises:
            ReservationExceededError (nothing changed), UnknownSequenceError, WrongDeviceError.
        """
        rows = self._check_batch(rows, num_new_tokens, num_lookahead_slots)
        if not rows.size:
            return AppendResult(np.zeros(0, dtype=np.int64), EMPTY_PAIRS)
        ntokens = self._seqs.ntokens[rows]
        over = ntokens + num_new_tokens > self._seqs.region_size[rows]
        if over.any():
            row = int(rows[int(np.argmax(over))])
            raise ReservationExceededError(
                f"sequence {self._seqs.seq_of[row]!r} would hold "
                f"{int(self._seqs.ntokens[row]) + num_new_tokens} tokens in its region of "
                f"{int(self._seqs.region_size[row])} slots (was its max_tokens hint too "
                "small?)")
        start = self._seqs.region_offset[rows] + ntokens
        slots = (start[:, None] + np.arange(num_new_tokens)).ravel()
        self._seqs.ntokens[rows] = ntokens + num_new_tokens
        return AppendResult(slots, EMPTY_PAIRS)

    def _check_batch(self, rows: np.ndarray, k: int, lookahead: int) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if k < 1 or lookahead < 0:
            raise ValueError(f"num_new_tokens must be >= 1 and num_lookahead_slots >= 0, "
                             f"got {k} and {lookahead}")
        self._seqs.check_rows(rows, ON_GPU)
        return rows

    # ---- forks and frees ----------------------------------------------------------------
    def fork(self, parent_id: Hashable, child_id: Hashable) -> np.ndarray:
        """`fork_many([parent_id], [child_id])`."""
        return self.fork_many([parent_id], [child_id])

    def fork_many(
        self, parent_ids: Sequence[Hashable], child_ids: Sequence[Hashable]
    ) -> np.ndarray:
        """Give each child a region of its parent's size (a spare reserved at admission, else
        a new block) and a copy of the parent's tokens.

        Returns int64 `[n, 2]` (src_slot, dst_slot) copies, also queued for `take_copies`.

        Raises (nothing changed): ValueError, UnknownSequenceError, DuplicateSequenceError,
            WrongDeviceError (a parent swapped out), NoFreeBlockError.
        """
        if len(parent_ids) != len(child_ids):
            raise ValueError(f"parent_ids has {len(parent_ids)} ids, child_ids "
                             f"{len(child_ids)}: they must pair up")
        parents = self._seqs.rows(parent_ids)
        if parents.size and (self._seqs.where[parents] != ON_GPU).any():
            bad = parent_ids[int(np.argmax(self._seqs.where[parents] != ON_GPU))]
            raise WrongDeviceError(f"sequence {bad!r} is swapped out: fork it on the GPU")
        for child in child_ids:
            self._seqs.check_new(child)
        if len(set(child_ids)) != len(child_ids):
            raise ValueError("child_ids lists a sequence twice")
        spares = {gid: len(self._groups[gid].spares)
                  for gid in set(self._seqs.region_group[parents].tolist())}
        fresh = []
        for p in parents.tolist():
            gid = int(self._seqs.region_group[p])
            if spares[gid]:
                spares[gid] -= 1
            else:
                fresh.append(int(self._seqs.region_size[p]))
        if not self.gpu.fits(fresh):
            raise NoFreeBlockError("gpu", max(fresh), self.gpu.free_slots,
                                   self.gpu.largest_free())
        pairs = []
        for p, child in zip(parents.tolist(), child_ids, strict=True):
            group = self._groups[int(self._seqs.region_group[p])]
            size = int(self._seqs.region_size[p])
            spare = group.take_spare()
            offset = self.gpu.alloc(size) if spare is None else spare
            row = self._add_row(child, ON_GPU, offset, size, int(self._seqs.region_group[p]))
            group.live += 1
            group.on_gpu += 1
            n = int(self._seqs.ntokens[p])
            self._seqs.ntokens[row] = n
            pos = np.arange(n, dtype=np.int64)
            pairs.append(np.stack([pos + self._seqs.region_offset[p], pos + offset], axis=1))
        out = np.concatenate(pairs) if pairs else EMPTY_PAIRS
        if out.size:
            self._copies.append(out)
            self.num_copied_slots += int(out.shape[0])
        return out

    def free(self, seq_id: Hashable) -> int:
        """Drop a sequence and release its region; return its token count. The last member
        of a group also releases the group's unused spare regions."""
        return int(self.free_many([seq_id])[0])

    def free_many(self, seq_ids: Sequence[Hashable]) -> np.ndarray:
        """`free` each sequence; int64 token counts. Raises before changing anything if an id
        is unknown or listed twice."""
        rows = self._seqs.rows(seq_ids)
        if np.unique(rows).size != rows.size:
            raise ValueError("seq_ids lists a sequence twice")
        counts = self._seqs.ntokens[rows].copy()
        for row in rows.tolist():
            where = int(self._seqs.where[row])
            allocator = self.gpu if where == ON_GPU else self.cpu
            assert allocator is not None  # a row is on the CPU only with a CPU swap area
            allocator.free(int(self._seqs.region_offset[row]))
            gid = int(self._seqs.region_group[row])
            group = self._groups[gid]
            group.live -= 1
            group.on_gpu -= int(where == ON_GPU)
            if group.on_gpu == 0:
                group.release_spares(self.gpu)
            if group.live == 0:
                self._groups.remove(gid)
        self._seqs.remove_many(rows)
        return counts

    # ---- memory breakdown ---------------------------------------------------------------
    def memory_breakdown(
        self,
        rows: np.ndarray,
        final_slots: np.ndarray,
        next_reservation: int | None = None,
        *,
        next_num_tokens: int | None = None,
    ) -> dict[str, int]:
        """GPU slots by kind (token, reserved, internal, external, free), summing to
        `capacity_tokens`; the definitions are in `kvpager.sim.contiguous.usage`.

        Args:
            rows: int64 rows of sequences on the GPU (`rows_of`, `Scheduler.resident`).
            final_slots: int64 slots each will hold at the end.
            next_reservation: the longest the head of the waiting queue may get, in tokens
                (`Scheduler.next_waiting()[1]`), or None if nothing waits.
            next_num_tokens: that request's token count now (`next_waiting()[0]`); needed by
                "orca-pow2", which reserves prompt + a power of two of the output.
        """
        return contiguous_breakdown(self, rows, final_slots, next_reservation,
                                    next_num_tokens)

    # ---- helpers ------------------------------------------------------------------------
    def _alloc(self, device: str) -> BuddyAllocator:
        if device == "gpu":
            return self.gpu
        if device == "cpu":
            if self.cpu is None:
                raise ValueError("this manager has no CPU swap space (num_cpu_tokens=0)")
            return self.cpu
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")

    def _add_row(self, seq_id: Hashable, where: int, offset: int, size: int, gid: int) -> int:
        row = self._seqs.add(seq_id, where)
        table = self._seqs  # columns are read after `add`, which may have grown them
        table.region_offset[row], table.region_size[row], table.region_group[row] = (
            offset, size, gid)
        return row


__all__ = ["POLICIES", "ContiguousManager", "Region", "ReservationExceededError"]
