"""HybridKVCacheManager: one manager per KV-cache group over one shared pool of pages.

A hybrid model (sliding window + full, chunked local + full, MLA, linear attention) has one
group per attention kind (`kvpager.core.groups`). One pool with a common page size
(`page_bytes`: the largest group's block), so copy / swap pairs of all groups are plain
page copies and memory moves freely between groups (`docs/architecture.md`, the page
design). Each paged group is a `KVCacheManager` over the shared pools; this class keeps
them in step: every call is checked for all groups first (their pages summed against the
one pool), and every group sees the same row additions and removals, so a sequence has the
same row and token count in every group (group 0's `rows` is what the scheduler registers
on). Its collaborators: growth and window release (`hybrid_growth.GroupGrowth`, with
`group_step`), prefix hits every group serves (`group_hits`), state pages (`state_pages`),
swapping (`swap.swap_groups`). One host prefix tier serves every group
(`group_hits.extend_into_tier`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import replace

import numpy as np

from kvpager.core.config import CacheConfig
from kvpager.core.errors import OutOfBlocksError
from kvpager.core.groups import (
    ChunkedLocalSpec,
    GroupSpec,
    PagedSpec,
    SlidingWindowSpec,
    StateSpec,
    page_bytes,
)
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.block_table import num_blocks_for, slots_for_positions
from kvpager.core.memory.group_hits import GroupHit, hit_start, match_prompt
from kvpager.core.memory.hybrid_admission import pages_needed, place_prompt
from kvpager.core.memory.hybrid_growth import GroupGrowth
from kvpager.core.memory.manager import KVCacheManager, TokenIds
from kvpager.core.memory.prefix import PrefixCache
from kvpager.core.memory.prefix_tier import HostPrefixTier
from kvpager.core.memory.seq_store import ON_CPU, ON_GPU, SequenceStore
from kvpager.core.memory.state_pages import StatePages
from kvpager.core.memory.swap import group_pages, swap_groups
from kvpager.core.memory.window import add_released_column, check_truncate
from kvpager.core.plans import Allocation, AllocStatus, AppendResult


class HybridKVCacheManager:
    """The KV memory of a model with several KV-cache groups (`CacheConfig.groups`).

    Speaks the `PagedKVManager` protocol, answering for group 0 where the protocol has
    one answer (`slot_mapping`, `block_tables_array`, `AppendResult.slots`), and adds the
    per-group forms (`group_slot_mapping`, `group_block_tables`, `AppendResult.group_slots`).
    """

    def __init__(self, config: CacheConfig | None = None, **fields: object) -> None:
        if config is None:
            config = CacheConfig(**fields)  # type: ignore[arg-type]
        elif fields:
            raise ValueError("pass either a CacheConfig or its fields, not both")
        groups = config.groups
        if groups is None:
            raise ValueError("groups: HybridKVCacheManager needs CacheConfig.groups")
        paged = [g for g in groups if not isinstance(g, StateSpec)]
        states = [g for g in groups if isinstance(g, StateSpec)]
        if groups[: len(paged)] != tuple(paged):
            raise ValueError("groups: state groups must come after every paged group (the "
                             "paged groups are numbered 0.. for tables and slots)")
        self.config = config
        #: Every group's spec, the paged groups first; `paged_groups` / `state_groups`.
        self.groups: tuple[GroupSpec, ...] = groups
        self.paged_groups: tuple[PagedSpec, ...] = tuple(paged)  # type: ignore[arg-type]
        self.state_groups: tuple[StateSpec, ...] = tuple(states)
        self.block_size = config.block_size
        self.max_model_len = config.max_model_len
        self.page_bytes = page_bytes(groups, config.block_size)
        self.gpu = BlockPool(config.num_gpu_blocks, "gpu",
                             one_queue=config.free_order == "lru")
        self.cpu = BlockPool(config.num_cpu_blocks, "cpu") if config.num_cpu_blocks else None
        sub = replace(config, groups=None)
        # one host prefix tier for every group (keys tagged per group, as on the GPU)
        self._tier = (HostPrefixTier(config.num_cpu_prefix_blocks, base=config.num_cpu_blocks)
                      if config.num_cpu_prefix_blocks else None)
        self._managers = [KVCacheManager(sub, shared_pools=(self.gpu, self.cpu), key_tag=g,
                                         shared_tier=self._tier)
                          for g in range(len(paged))]
        self._windows: list[tuple[KVCacheManager, SlidingWindowSpec | ChunkedLocalSpec]] = []
        windowed: list[tuple[int, SlidingWindowSpec | ChunkedLocalSpec]] = []
        for g, (m, spec) in enumerate(zip(self._managers, paged, strict=True)):
            if isinstance(spec, (SlidingWindowSpec, ChunkedLocalSpec)):
                m.has_null_entries = True
                add_released_column(m.rows)
                self._windows.append((m, spec))
                windowed.append((g, spec))
        self._first = self._managers[0]
        self._state = StatePages(self._first.rows, states, self.page_bytes) if states else None
        #: Pages one sequence's state groups hold (0 without state groups).
        self.state_pages_per_seq = 0 if self._state is None else self._state.per_seq
        self._row_of = self._first.rows.row_of  # seq id -> row, the same in every group
        self._growth = GroupGrowth(self._managers, self.gpu, windowed, self._state,
                                   self.block_size, self.max_model_len)

    # ---- queries ------------------------------------------------------------------------
    @property
    def num_groups(self) -> int:
        """Paged groups (each with block tables and slots), numbered 0.. in `groups`."""
        return len(self._managers)

    @property
    def num_state_groups(self) -> int:
        """State groups (after the paged ones in `groups`): pages, no tables."""
        return len(self.state_groups)

    def group(self, index: int) -> KVCacheManager:
        """Group `index`'s manager, for reads (tables, counts); change it through this
        class only, which keeps the groups in step."""
        return self._managers[index]

    @property
    def rows(self) -> SequenceStore:
        """Group 0's row table: the same row numbers as every group's."""
        return self._first.rows

    @property
    def has_swap_space(self) -> bool:
        return self.cpu is not None

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._first

    def __len__(self) -> int:
        return len(self._first)

    def seq_ids(self) -> list[Hashable]:
        return self._first.seq_ids()

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._first.num_tokens(seq_id)

    def device_of(self, seq_id: Hashable) -> str:
        return self._first.device_of(seq_id)

    def rows_of(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        return self._first.rows_of(seq_ids)

    def seq_lens(self, rows: np.ndarray) -> np.ndarray:
        return self._first.seq_lens(rows)

    def num_free_blocks(self, device: str = "gpu") -> int:
        return self._first.num_free_blocks(device)

    def num_used_blocks(self, device: str = "gpu") -> int:
        return self._first.num_used_blocks(device)

    def slot_mapping(self, seq_id: Hashable, start: int, end: int) -> np.ndarray:
        return self.group_slot_mapping(0, seq_id, start, end)

    def group_slot_mapping(self, group: int, seq_id: Hashable, start: int, end: int
                           ) -> np.ndarray:
        """int64 slots of positions `start..end-1` in group `group`'s table (inside its
        window: a released position has no slot)."""
        m = self._managers[group]
        if end <= start:
            return np.zeros(0, dtype=np.int64)
        blocks = m.block_ids(seq_id)
        if end > blocks.size * self.block_size or (blocks[start // self.block_size] < 0):
            raise ValueError(f"positions {start}..{end - 1} are not all held by group "
                             f"{group} (released or not allocated)")
        return slots_for_positions(blocks, np.arange(start, end), self.block_size)

    def block_ids(self, seq_id: Hashable) -> np.ndarray:
        return self._first.block_ids(seq_id)

    def block_tables_array(self, rows: np.ndarray, width: int | None = None, pad: int = 0
                           ) -> np.ndarray:
        return self._first.block_tables_array(rows, width, pad)

    def group_block_tables(self, rows: np.ndarray, pad: int = 0) -> tuple[np.ndarray, ...]:
        """Per group, int32 `[len(rows), W_g]` GPU block tables (released entries read
        `pad`): what an executor hands each group's layers."""
        return tuple(m.block_tables_array(rows, pad=pad) for m in self._managers)

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """Group 0's prefix cache, which counts the hits of the whole model (a hit is the
        prefix every group serves, `group_hits`); its length counts the cached pages of all
        groups (one pool). None without prefix caching."""
        return self._first.prefix_cache

    def reset_prefix_cache(self) -> bool:
        """Forget every cached page of every group (one pool, one index); refused (False)
        while a cached page is in use."""
        return self._first.reset_prefix_cache()

    # ---- admission ----------------------------------------------------------------------
    def _prompt_blocks(self, num_tokens: int) -> int:
        return (len(self._managers) * num_blocks_for(num_tokens, self.block_size)
                + self.state_pages_per_seq)

    def _match(self, keys: list[Hashable], num_tokens: int) -> GroupHit:
        return match_prompt([m.prefix_cache for m in self._managers], self.paged_groups,
                            keys, num_tokens, self.block_size, self._tier is not None)

    def _need(self, num_tokens: int, hit: GroupHit) -> int:
        return pages_needed(self.gpu, len(self._managers), num_tokens, self.block_size, hit,
                            self.state_pages_per_seq)

    def _status(self, need: int) -> AllocStatus:
        mark = self.config.watermark_blocks
        if self.gpu.num_blocks - need < mark:
            return AllocStatus.NEVER
        return AllocStatus.OK if self.gpu.num_free - need >= mark else AllocStatus.LATER

    def can_allocate(self, num_tokens: int, *, token_ids: TokenIds | None = None,
                     block_hashes: Sequence[Hashable] | None = None,
                     max_tokens: int | None = None, num_seqs: int = 1) -> AllocStatus:
        """Whether every group can take its prompt blocks (each group's table holds the
        whole prompt until `mark_computed` lets a window release)."""
        self._first.can_allocate(num_tokens)  # validates num_tokens
        keys = self._first.prompt_keys(num_tokens, token_ids, block_hashes)
        hit = self._match(keys, num_tokens)
        total = self._prompt_blocks(num_tokens)
        mark = self.config.watermark_blocks
        if self.gpu.num_blocks - total < mark:
            return AllocStatus.NEVER
        need = self._need(num_tokens, hit)
        return AllocStatus.OK if self.gpu.num_free - need >= mark else AllocStatus.LATER

    def can_allocate_many(self, token_counts: Sequence[int], *,
                          max_tokens: int | None = None) -> AllocStatus:
        return self._status(sum(self._prompt_blocks(n) for n in token_counts))

    def allocate(self, seq_id: Hashable, num_tokens: int | None = None, *,
                 token_ids: TokenIds | None = None,
                 block_hashes: Sequence[Hashable] | None = None,
                 max_tokens: int | None = None, num_seqs: int = 1) -> Allocation:
        """Blocks for a new sequence's prompt in every group, sharing the longest prefix
        every group can serve (`group_hits.match_prompt`, the host tier included;
        `hybrid_admission.place_prompt`): a window group's table starts with `NULL_BLOCK`
        entries before what its window reads of the hit. Raises
        OutOfBlocksError, DuplicateSequenceError, ValueError (nothing changed)."""
        first = self._first
        num_tokens = first.check_prompt(seq_id, num_tokens, token_ids)
        keys = first.prompt_keys(num_tokens, token_ids, block_hashes)
        hit = self._match(keys, num_tokens)
        need = self._need(num_tokens, hit)
        if need > self.gpu.num_free:
            raise OutOfBlocksError("gpu", need, self.gpu.num_free)
        place_prompt(self._managers, self.gpu, seq_id, num_tokens, keys, token_ids, hit,
                     self.block_size)
        num_hits = hit.num_hits
        if self._state is not None:
            self._state.add(first.rows.row_of[seq_id], self.gpu)
        if num_hits:
            row = first.rows.row_of[seq_id]
            for m, spec in self._windows:
                m.rows.released[row] = hit_start(spec, num_hits, self.block_size)
        cache = first.prefix_cache
        if cache is not None:
            cache.record_query(min(len(keys), (num_tokens - 1) // self.block_size),
                               hit.gpu_hits, num_hits - hit.gpu_hits)
        return Allocation(seq_id, first.block_ids(seq_id), num_hits * self.block_size)

    def mark_computed(self, seq_id: Hashable, num_computed_tokens: int) -> int:
        """The first tokens are computed: windows release what the next chunk no longer
        reads (between prefill chunks)."""
        row = self._first.rows.row(seq_id)
        return self.mark_computed_batch(np.asarray([row], dtype=np.int64),
                                        np.asarray([num_computed_tokens], dtype=np.int64))

    def mark_computed_batch(self, rows: np.ndarray, num_computed: np.ndarray | None = None
                            ) -> int:
        """Register each group's computed blocks (prefix caching), then let windows
        release what the next chunk no longer reads; returns group 0's registered count."""
        rows = np.asarray(rows, dtype=np.int64)
        added = 0
        if self._first.prefix_cache is not None:
            added = self._first.mark_computed_batch(rows, num_computed)
            for m in self._managers[1:]:
                m.mark_computed_batch(rows, num_computed)
        if rows.size and self._windows:
            self._growth.release_computed(rows, num_computed)
        return added

    def take_host_transfers(self) -> tuple[np.ndarray, np.ndarray]:
        """The host prefix tier's copies of every group (one tier): offloads
        `[n, 2]` (gpu, host), then loads `[m, 2]` (host, gpu), as `KVCacheManager`'s."""
        return self._first.take_host_transfers()

    # ---- growth: `hybrid_growth.GroupGrowth` -------------------------------------------
    @property
    def num_released_blocks(self) -> int:
        """Window blocks released so far (every windowed group)."""
        return self._growth.num_released_blocks

    def append_slots(self, seq_id: Hashable, num_new_tokens: int = 1,
                     num_lookahead_slots: int = 0, *, token_ids: TokenIds | None = None
                     ) -> AppendResult:
        """One sequence's step in every group: a one-token step goes straight to the
        scalar path (`GroupGrowth.append_one`), anything else is planned
        (`GroupGrowth.append_slots`)."""
        if num_new_tokens == 1 and num_lookahead_slots == 0 and (
                token_ids is None or len(token_ids) == 1):
            try:
                row = self._row_of.get(seq_id)
            except TypeError:  # unhashable: the planned path names the error
                row = None
            if row is not None and type(num_new_tokens) is int:
                return self._growth.append_one(seq_id, row, token_ids)
        return self._growth.append_slots(seq_id, num_new_tokens, num_lookahead_slots,
                                         token_ids=token_ids)

    def append_slots_batch(self, rows: np.ndarray, num_new_tokens: int = 1,
                           num_lookahead_slots: int = 0, *,
                           token_ids: np.ndarray | None = None) -> AppendResult:
        """A step for every row in every group, checked for all groups first
        (`GroupGrowth.append_slots_batch`): group 0's slots in `slots`, every group's in
        `group_slots`, all groups' copies together."""
        return self._growth.append_slots_batch(rows, num_new_tokens, num_lookahead_slots,
                                               token_ids=token_ids)

    def blocks_needed_batch(self, rows: np.ndarray, num_new_tokens: int = 1,
                            num_lookahead_slots: int = 0) -> np.ndarray:
        """Per-row pages all groups' appends would take, int64 `[len(rows)]`."""
        return self._growth.blocks_needed_batch(rows, num_new_tokens, num_lookahead_slots)

    def state_pages(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per state group, int32 `[len(rows), P_g]` page ids of each row's state (empty
        tuple without state groups): what an executor's linear-attention / Mamba layers
        read and write (`SchedulerOutput.decode_state_pages`)."""
        if self._state is None:
            return ()
        rows = np.asarray(rows, dtype=np.int64)
        self._first.rows.check_rows(rows, ON_GPU)
        return self._state.pages(rows)

    # ---- sharing and release ------------------------------------------------------------
    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        self.fork_many([parent_id], [child_id])

    def fork_many(self, parent_ids: Sequence[Hashable], child_ids: Sequence[Hashable]) -> None:
        """Fork in every group (group 0 checks the ids; a fork takes no block)."""
        for m in self._managers:
            m.fork_many(parent_ids, child_ids)
        if (self._windows or self._state is not None) and len(child_ids):
            parents, children = self.rows_of(parent_ids), self.rows_of(child_ids)
            for m, _spec in self._windows:
                m.rows.released[children] = m.rows.released[parents]
            if self._state is not None:  # shared until the first append copies it
                self._state.fork(parents, children, self.gpu)

    def _free_state(self, rows: np.ndarray) -> None:
        state = self._state
        if state is not None:
            where = self._first.rows.where[rows]
            state.free(rows[where == ON_GPU], self.gpu)
            if self.cpu is not None:
                state.free(rows[where == ON_CPU], self.cpu)

    def free(self, seq_id: Hashable) -> int:
        if self._state is not None:
            self._free_state(np.asarray([self._first.rows.row(seq_id)], dtype=np.int64))
        count = self._first.free(seq_id)
        for m in self._managers[1:]:
            m.free(seq_id)
        return count

    preempt_recompute = free

    def free_many(self, seq_ids: Sequence[Hashable]) -> np.ndarray:
        if self._state is not None:
            rows = self._first.rows.rows(seq_ids)
            if self._first.rows.has_repeats(rows):
                raise ValueError("seq_ids lists a sequence twice")
            self._free_state(rows)
        counts = self._first.free_many(seq_ids)
        for m in self._managers[1:]:
            m.free_many(seq_ids)
        return counts

    def truncate(self, seq_id: Hashable, num_tokens: int) -> None:
        """Truncate every group; a window that already released what the new end reads
        refuses (ValueError, nothing changed)."""
        row = self._first.rows.row(seq_id)
        if self._state is not None and num_tokens != self.num_tokens(seq_id):
            raise ValueError("truncate: this model has a state group (linear attention / "
                             "Mamba), whose recurrent state cannot be rolled back to "
                             f"num_tokens={num_tokens!r}")
        if isinstance(num_tokens, (int, np.integer)) and not isinstance(num_tokens, bool):
            for m, spec in self._windows:
                check_truncate(m.rows, spec, row, int(num_tokens), self.block_size)
        for m in self._managers:
            m.truncate(seq_id, num_tokens)

    # ---- swapping: `swap.swap_groups` ----------------------------------------------------
    def can_swap_out(self, seq_ids: Iterable[Hashable]) -> bool:
        return self.cpu is not None and group_pages(
            self._managers, self._state, list(seq_ids), ON_GPU) <= self.cpu.num_free

    def can_swap_in(self, seq_ids: Iterable[Hashable]) -> AllocStatus:
        return self._status(group_pages(self._managers, self._state, list(seq_ids), ON_CPU))

    def swap_out(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Every group's pages of the group of sequences to the CPU, all or nothing."""
        if self.cpu is None:
            raise ValueError("swap_out: this manager has no CPU swap space (num_cpu_blocks=0)")
        return swap_groups(self._managers, self._state, list(seq_ids), self.gpu, self.cpu,
                           ON_GPU)

    def swap_in(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Every group's pages of the group of sequences back to the GPU, all or nothing."""
        if self.cpu is None:
            raise ValueError("swap_in: this manager has no CPU swap space (num_cpu_blocks=0)")
        return swap_groups(self._managers, self._state, list(seq_ids), self.cpu, self.gpu,
                           ON_CPU)


__all__ = ["HybridKVCacheManager", "PagedSpec"]
