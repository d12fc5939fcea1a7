"""KVCacheManager: the policy layer over the block pools and the prefix cache.

The manager decides which physical blocks each sequence uses and answers with *plans*, plain
data that an executor carries out (`kvpager.core.plans`): slots for new tokens, copy-on-write
pairs, swap pairs. It never touches K/V memory, so the same object drives a real engine
(through `KVCache` and the kernels) and the simulator.

Who owns what (`docs/architecture.md`): the `BlockPool`s own reference counts and free /
cached state and the cached-block index (key <-> block), and are the only code that changes
them; the `SequenceStore` is the manager's `RowTable` (`rows`): each sequence's row (table,
counts, location), with the per-row columns other concepts register on it (the prefix
chains of `PrefixChains`); `append.py` is the one writer of a row's growth and `room`; the
`PrefixCache` registers computed chains in the pool and drives the host tier; this class
owns the policy that ties them together. Every check comes
first: a call that raises leaves everything as it was, so a caller (the scheduler) can
catch `OutOfBlocksError`, preempt someone and try again.

Sequences are identified by any hashable id; the batched calls take the manager's *rows*
(`rows_of`), valid while the sequence lives. A sequence lives wholly on one device: on the
GPU while it runs, in the CPU swap area while it is swapped out.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kvpager.core.config import CacheConfig
from kvpager.core.errors import (
    OutOfBlocksError,
    UnknownSequenceError,
    WrongDeviceError,
    import_torch,
)
from kvpager.core.groups import NULL_BLOCK
from kvpager.core.memory.append import (
    AppendPlan,
    append_one,
    apply_append,
    clear_room,
    plan_append,
    refresh_room,
    set_prompt,
    shrink,
)
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.block_table import BlockTable, num_blocks_for
from kvpager.core.memory.event_sink import KVEventSink
from kvpager.core.memory.prefix import PrefixCache, hash_block_tokens
from kvpager.core.memory.prefix_chains import PrefixChains
from kvpager.core.memory.prefix_tier import HostPrefixTier
from kvpager.core.memory.seq_store import DEVICE_NAMES, ON_CPU, ON_GPU, SequenceStore
from kvpager.core.memory.swap import distinct_blocks, group_rows, move_rows
from kvpager.core.memory.usage import paged_breakdown
from kvpager.core.plans import EMPTY_PAIRS, Allocation, AllocStatus, AppendResult

if TYPE_CHECKING:
    import torch

TokenIds = Sequence[int] | np.ndarray
#: (tokens already cached on the GPU, blocks the host tier could load next) -> how many of
#: those blocks to load; the rest are recomputed.
TierLoadPolicy = Callable[[int, int], int]


class KVCacheManager:
    """Allocates, shares, copies on write, swaps and frees the KV blocks of sequences.

    Construct with a `CacheConfig` or its fields as keywords:
    `KVCacheManager(num_gpu_blocks=1024, block_size=16, num_cpu_blocks=256)`.
    `tier_load_policy` decides, with a host prefix tier, how many matched host blocks to load
    rather than recompute (default: all; a simulator compares the host link with the
    prefill by its cost model).
    `events` (a `kvpager.events.KVEventBus`, or any `KVEventSink`) is told the keys the GPU
    pool and the host tier store and drop, and prefix-cache resets (docs/architecture.md,
    "KV events"); subscribe to it to receive vLLM-style KV events.
    """

    def __init__(self, config: CacheConfig | None = None, *,
                 tier_load_policy: TierLoadPolicy | None = None,
                 events: KVEventSink | None = None,
                 shared_pools: tuple[BlockPool, BlockPool | None] | None = None,
                 key_tag: Hashable | None = None, shared_tier: HostPrefixTier | None = None,
                 **fields: object) -> None:
        if config is None:
            config = CacheConfig(**fields)  # type: ignore[arg-type]
        elif fields:
            raise ValueError("pass either a CacheConfig or its fields, not both")
        if config.groups is not None and len(config.groups) > 1 and shared_pools is None:
            raise ValueError(f"config.groups has {len(config.groups)} groups: use "
                             "kvpager.core.memory.hybrid.HybridKVCacheManager")
        self.config = config
        self._watermark_blocks = config.watermark_blocks  # frozen config: read once
        self.block_size = config.block_size
        self.max_model_len = config.max_model_len
        if events is not None and shared_pools is not None:
            raise ValueError("events: a group of a HybridKVCacheManager reports no KV events "
                             "of its own (not supported for hybrid models yet)")
        if events is not None:
            events.bind(self.block_size)
        self.events = events
        #: Whether tables may hold NULL_BLOCK entries (a windowed group releases blocks).
        self.has_null_entries = False
        if shared_pools is not None:  # one group of a HybridKVCacheManager
            self.gpu, self.cpu = shared_pools
        else:
            self.gpu = BlockPool(config.num_gpu_blocks, "gpu", events=events,
                                 one_queue=config.free_order == "lru")
            self.cpu = (BlockPool(config.num_cpu_blocks, "cpu") if config.num_cpu_blocks
                        else None)
        tier = shared_tier
        if tier is None and config.num_cpu_prefix_blocks:
            tier = HostPrefixTier(config.num_cpu_prefix_blocks, base=config.num_cpu_blocks,
                                  events=events)
        self._seqs = SequenceStore()
        self._chains = (PrefixChains(self._seqs, self.block_size)
                        if config.enable_prefix_caching else None)
        self.prefix_cache = (PrefixCache(self.gpu, self.block_size, self._chains, tier,
                                         config.prefix_tier_write_through, events=events,
                                         key_tag=key_tag)
                             if self._chains is not None else None)
        self.tier_load_policy = tier_load_policy
        self.num_cow_copies = 0
        self.num_blocks_swapped_out = 0
        self.num_blocks_swapped_in = 0

    # ---- queries ------------------------------------------------------------------------
    @property
    def rows(self) -> SequenceStore:
        """The manager's row table (`kvpager.core.rows.RowTable`), one row per sequence:
        read its columns (`table`, `nblocks`, `ntokens`, `room`, `where`, `chain_*`), and
        register a layer's own per-row columns on it (`add_column`); only the manager adds,
        removes or writes its own columns' rows."""
        return self._seqs

    @property
    def prefix_chains(self) -> PrefixChains | None:
        """Each sequence's prefix-chain cursor (None without prefix caching)."""
        return self._chains

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def seq_ids(self) -> list[Hashable]:
        return self._seqs.seq_ids()

    def num_tokens(self, seq_id: Hashable) -> int:
        """Tokens the sequence holds (slots written or being written this step)."""
        return self._seqs.num_tokens(seq_id)

    def device_of(self, seq_id: Hashable) -> str:
        return self._seqs.device_of(seq_id)

    def rows_of(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Row handles (int64) of sequences, for the batched calls; valid until freed."""
        return self._seqs.rows(seq_ids)

    def seq_lens(self, rows: np.ndarray) -> np.ndarray:
        """Token counts of rows, int64 (cast to int32 for kernels)."""
        return self._seqs.seq_lens(rows)

    @property
    def has_swap_space(self) -> bool:
        return self.cpu is not None

    def num_free_blocks(self, device: str = "gpu") -> int:
        return self._pool(device).num_free

    def num_used_blocks(self, device: str = "gpu") -> int:
        return self._pool(device).num_used

    @property
    def gpu_utilization(self) -> float:
        """Fraction of GPU blocks in use (evictable cached blocks count as free)."""
        return self.gpu.num_used / self.gpu.num_blocks

    def block_table(self, seq_id: Hashable) -> BlockTable:
        """A snapshot of the sequence's table (ids of the pool it lives in)."""
        row = self._seqs.row(seq_id)
        return BlockTable(self.block_size, self._seqs.blocks(row),
                          int(self._seqs.ntokens[row]), DEVICE_NAMES[int(self._seqs.where[row])])

    def block_ids(self, seq_id: Hashable) -> np.ndarray:
        """int32 copy of the sequence's block ids (of the pool it lives in)."""
        return self._seqs.blocks(self._seqs.row(seq_id)).copy()

    def slot_mapping(self, seq_id: Hashable, start: int, end: int) -> np.ndarray:
        """int64 slots of positions `start..end-1`, inside the allocated blocks."""
        if end <= start:
            return np.zeros(0, dtype=np.int64)
        return self.block_table(seq_id).slot_mapping(start, end)

    def block_tables_array(
        self, rows: np.ndarray, width: int | None = None, pad: int = 0
    ) -> np.ndarray:
        """int32 `[len(rows), width]` GPU block tables of a batch, padded with `pad`: one
        gather from the table array, no per-sequence work.

        Raises WrongDeviceError for a row swapped out to the CPU (its ids name CPU blocks,
        which a GPU kernel must never read), UnknownSequenceError for a dead row.
        """
        rows = np.asarray(rows, dtype=np.int64)
        self._seqs.check_rows(rows, ON_GPU)
        longest = int(self._seqs.nblocks[rows].max()) if rows.size else 0
        width = longest if width is None else width
        if width < longest:
            raise ValueError(f"width must be >= the longest table ({longest}), got {width}")
        self._seqs.ensure_width(width)
        out = self._seqs.table[rows, :width]  # fancy indexing: a copy
        out[np.arange(width)[None, :] >= self._seqs.nblocks[rows][:, None]] = pad
        if self.has_null_entries:
            out[out == NULL_BLOCK] = pad  # released entries: never read by a kernel
        return out

    def block_tables_tensor(
        self, rows: np.ndarray, width: int | None = None, pad: int = 0
    ) -> torch.Tensor:
        """`block_tables_array` as the kernels' int32 torch tensor (CPU; move it yourself)."""
        torch = import_torch("KVCacheManager.block_tables_tensor")
        return torch.from_numpy(self.block_tables_array(rows, width, pad))

    def memory_breakdown(
        self, rows: np.ndarray, final_slots: np.ndarray, next_reservation: int | None = None,
        *, next_num_tokens: int | None = None,
    ) -> dict[str, int]:
        """GPU slots by kind (token, reserved, internal, external, cached, free), summing to
        capacity; see `kvpager.core.memory.usage`. `next_reservation` / `next_num_tokens`
        (the waiting head's final and current length, which contiguous managers need) are
        unused: paging has no external fragmentation."""
        return paged_breakdown(self._seqs, self.gpu, self.block_size, rows, final_slots)

    # ---- admission ----------------------------------------------------------------------
    def can_allocate(
        self, num_tokens: int, *, token_ids: TokenIds | None = None,
        block_hashes: Sequence[Hashable] | None = None, max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> AllocStatus:
        """Whether a prompt of `num_tokens` can get its blocks, keeping the watermark free.

        Prefix hits reduce the need: a hit on a block in use costs nothing, a hit on an
        evictable cached block still takes one free block. `max_tokens` and `num_seqs`
        (reservation hints, see `kvpager.core.protocol`) are ignored: blocks come on demand and
        the samples of a request share its prompt.
        """
        _check_positive("num_tokens", num_tokens)
        total = num_blocks_for(num_tokens, self.block_size)
        hits = self._match(self._prompt_keys(num_tokens, token_ids, block_hashes), num_tokens)
        if not hits:  # the common case without prefix caching: every block comes free
            return self._status(total, total)
        hit_ids = np.asarray(hits, dtype=np.int32)
        return self._status(total, total - hit_ids.size + self.gpu.count_free(hit_ids))

    def can_allocate_many(
        self, token_counts: Sequence[int], *, max_tokens: int | None = None
    ) -> AllocStatus:
        """Whether independent sequences of these lengths can all get blocks (no sharing).
        `max_tokens` (their common final length) is a reservation hint, ignored here."""
        need = sum(num_blocks_for(n, self.block_size) for n in token_counts)
        return self._status(need, need)

    def _status(self, total: int, take: int) -> AllocStatus:
        """NEVER if `total` blocks exceed the cache minus the watermark, OK if `take` free
        blocks leave the watermark, else LATER."""
        mark = self._watermark_blocks
        if self.gpu.num_blocks - total < mark:
            return AllocStatus.NEVER
        if self.gpu.num_free - take >= mark:
            return AllocStatus.OK
        return AllocStatus.LATER

    def allocate(
        self, seq_id: Hashable, num_tokens: int | None = None, *,
        token_ids: TokenIds | None = None, block_hashes: Sequence[Hashable] | None = None,
        max_tokens: int | None = None, num_seqs: int = 1,
    ) -> Allocation:
        """Give a new sequence GPU blocks for its `num_tokens` prompt tokens.

        With prefix caching, the longest cached prefix is shared instead of allocated; at
        least the last prompt token is always left to compute, since its logits are needed.
        Keys come from `block_hashes` (chained keys of the full blocks: kvpager's own digests
        made at arrival by `hash_block_tokens`, or a caller's) or else from hashing
        `token_ids`; both may be given (precomputed keys of those tokens), and the token ids
        let the chain go on into generated blocks. Full blocks are registered for others by
        `mark_computed`, once computed. `max_tokens` / `num_seqs` are reservation hints that
        a paged manager ignores.

        Raises:
            DuplicateSequenceError, ValueError, OutOfBlocksError (nothing changed).
        """
        num_tokens = self.check_prompt(seq_id, num_tokens, token_ids)
        keys = self._prompt_keys(num_tokens, token_ids, block_hashes)
        hits = self._match(keys, num_tokens)
        total = num_blocks_for(num_tokens, self.block_size)
        hit_ids = np.asarray(hits, dtype=np.int32)
        need = total - hit_ids.size + self.gpu.count_free(hit_ids)
        if need > self.gpu.num_free:
            raise OutOfBlocksError("gpu", need, self.gpu.num_free)
        loaded = self._tier_hits(keys, len(hits), num_tokens)

        if hits:
            self.gpu.touch(hit_ids)
        fresh = self.gpu.allocate(total - hit_ids.size)
        if loaded:  # the blocks after the GPU hits come from the host tier
            self.prefix_cache.load(keys[len(hits) : len(hits) + loaded],  # type: ignore[union-attr]
                                   fresh[:loaded])
        if self.prefix_cache is not None:
            queried = min(len(keys), (num_tokens - 1) // self.block_size)
            self.prefix_cache.record_query(queried, len(hits), loaded)
        blocks = np.concatenate([hit_ids, fresh]) if hits else fresh
        self._add_prompt_row(seq_id, num_tokens, blocks, keys, len(hits), token_ids)
        return Allocation(seq_id, blocks, (len(hits) + loaded) * self.block_size)

    def check_prompt(self, seq_id: Hashable, num_tokens: int | None,
                     token_ids: TokenIds | None) -> int:
        """Check a new sequence's id and prompt before anything changes; returns its
        token count. Raises DuplicateSequenceError or ValueError naming the argument."""
        self._seqs.check_new(seq_id)
        if num_tokens is None:
            if token_ids is None:
                raise ValueError("allocate needs num_tokens or token_ids")
            num_tokens = len(token_ids)
        _check_positive("num_tokens", num_tokens)
        if token_ids is not None and len(token_ids) < num_tokens:
            raise ValueError(
                f"token_ids has {len(token_ids)} ids, fewer than num_tokens={num_tokens}")
        if self.max_model_len is not None and num_tokens > self.max_model_len:
            raise ValueError(f"num_tokens={num_tokens} exceeds max_model_len="
                             f"{self.max_model_len}")
        return int(num_tokens)

    def prompt_keys(self, num_tokens: int, token_ids: TokenIds | None,
                    block_hashes: Sequence[Hashable] | None) -> list[Hashable]:
        """Chained keys of a prompt's full blocks (empty without prefix caching)."""
        return self._prompt_keys(num_tokens, token_ids, block_hashes)

    def allocate_group_prompt(self, seq_id: Hashable, num_tokens: int,
                              head: np.ndarray, fresh: np.ndarray, keys: list[Hashable],
                              token_ids: TokenIds | None, num_registered: int | None = None
                              ) -> None:
        """One group's part of a `HybridKVCacheManager.allocate`, after it checked every
        group and took the pages: the row's table is `head` (int32, the prefix hit: block
        ids already referenced by the caller's `touch`, `NULL_BLOCK` where a window needs
        none, or fresh pages a host-tier load fills) then `fresh` (int32, allocated by the
        caller). `num_registered`: the head's leading blocks already cached (all of it by
        default); `mark_computed` registers the rest, as loaded blocks are."""
        blocks = np.concatenate([head, fresh]) if head.size else fresh
        done = int(head.size) if num_registered is None else num_registered
        # each group's chain grows its own copy of the keys
        self._add_prompt_row(seq_id, num_tokens, blocks, list(keys), done, token_ids)

    def _add_prompt_row(self, seq_id: Hashable, num_tokens: int, blocks: np.ndarray,
                        keys: list[Hashable], num_hits: int,
                        token_ids: TokenIds | None) -> int:
        seqs = self._seqs
        row = seqs.add(seq_id, ON_GPU)
        set_prompt(seqs, row, blocks, num_tokens, self.block_size, self.max_model_len)
        if self._chains is not None:
            tail = None
            if token_ids is not None:
                full = num_tokens // self.block_size * self.block_size
                tail = np.asarray(token_ids[full:num_tokens], dtype=np.int64)
            self._chains.start(row, keys, num_hits, tail)
        return row

    def mark_computed(self, seq_id: Hashable, num_computed_tokens: int) -> int:
        """Register the sequence's full blocks whose KV is now computed (prompt blocks, and
        generated blocks whose tokens were given to the appends); return how many.

        Registering only computed blocks keeps a sequence scheduled in the same step from
        hitting a block whose KV is still being written. No-op without prefix caching or
        for a swapped-out sequence.
        """
        row = self._seqs.row(seq_id)
        if self.prefix_cache is None or self._seqs.where.item(row) != ON_GPU:
            return 0
        computed = min(int(num_computed_tokens), self._seqs.ntokens.item(row))
        return self.prefix_cache.commit(row, self._seqs.blocks(row), computed)

    def mark_computed_batch(
        self, rows: np.ndarray, num_computed: np.ndarray | None = None
    ) -> int:
        """`mark_computed` for rows (int64) at once; `num_computed` (int64 `[len(rows)]`)
        defaults to every token each row holds, as after a decode step. Python work is done
        only for the rows that filled a block."""
        prefix = self.prefix_cache
        rows = np.asarray(rows, dtype=np.int64)
        if prefix is None or rows.size == 0:
            return 0
        seqs = self._seqs
        held = seqs.ntokens[rows]
        computed = held if num_computed is None else np.minimum(
            np.asarray(num_computed, dtype=np.int64), held)
        todo = prefix.commit_candidates(rows, computed)
        if todo.size == 0:
            return 0
        on_gpu = seqs.where[rows[todo]] == ON_GPU
        if not on_gpu.all():
            todo = todo[on_gpu]
        return prefix.commit_batch(rows[todo], computed[todo], seqs.table)

    def _prompt_keys(self, num_tokens: int, token_ids: TokenIds | None,
                     block_hashes: Sequence[Hashable] | None) -> list[Hashable]:
        if self.prefix_cache is None:
            return []
        full = num_tokens // self.block_size
        if block_hashes is not None:
            return list(block_hashes[:full])
        if token_ids is not None:
            return list(hash_block_tokens(np.asarray(token_ids)[: full * self.block_size],
                                          self.block_size))
        return []

    def _match(self, keys: list[Hashable], num_tokens: int) -> list[int]:
        if not keys or self.prefix_cache is None:
            return []
        return self.prefix_cache.match(keys, (num_tokens - 1) // self.block_size)

    def _tier_hits(self, keys: list[Hashable], num_gpu_hits: int, num_tokens: int) -> int:
        """Blocks to load from the host tier after `num_gpu_hits` GPU hits: the tier's run of
        the following keys (never the block of the last prompt token), as the policy allows."""
        prefix = self.prefix_cache
        if prefix is None or prefix.tier is None:
            return 0
        limit = (num_tokens - 1) // self.block_size
        held = len(prefix.match_tier(keys[num_gpu_hits:limit]))
        if held and self.tier_load_policy is not None:
            wanted = self.tier_load_policy(num_gpu_hits * self.block_size, held)
            held = max(0, min(held, int(wanted)))
        prefix.pin_tier(keys[num_gpu_hits : num_gpu_hits + held])
        return held

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix block, on the GPU and in the host tier, and report
        `AllBlocksCleared` to `events`. Refused (False, nothing changed) while a cached block
        is in use or a tier load is pending; True without prefix caching (nothing to
        forget)."""
        return True if self.prefix_cache is None else self.prefix_cache.reset()

    def take_host_transfers(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies between the GPU and the host prefix tier planned since the last call:
        (offloads int64 `[n, 2]` (gpu, host), loads int64 `[m, 2]` (host, gpu)). Carry out
        the offloads before writing any block handed out since (they save evicted blocks),
        and the loads before reading the allocated sequences' blocks. The scheduler puts
        them in each `SchedulerOutput`."""
        if self.prefix_cache is None:
            return EMPTY_PAIRS, EMPTY_PAIRS
        return self.prefix_cache.take_plans()

    # ---- growth -------------------------------------------------------------------------
    def append_slots(
        self, seq_id: Hashable, num_new_tokens: int = 1, num_lookahead_slots: int = 0, *,
        token_ids: TokenIds | None = None,
    ) -> AppendResult:
        """Make room for `num_new_tokens` tokens (+ lookahead slots) and return their slots.

        The same plan as `append_slots_batch` over one row. Lookahead slots (speculative or
        multi-step decoding) are allocated but not counted as tokens. A block about to be
        written that is shared, or prefix-cached (cached content is immutable), is first
        copied (`copies`), unless it holds no token yet, when a fresh block replaces it.
        `token_ids`: the ids of the tokens written at these slots, so that the blocks they
        fill can be prefix-cached once computed; without them the sequence's later blocks
        are not cached.

        Raises (nothing changed): OutOfBlocksError, SequenceTooLongError,
        UnknownSequenceError, WrongDeviceError, ValueError.
        """
        seqs = self._seqs
        try:
            row = seqs.row_of[seq_id]
        except (KeyError, TypeError):
            raise UnknownSequenceError(f"unknown sequence {seq_id!r}") from None
        if (num_new_tokens == 1 and num_lookahead_slots == 0
                and (token_ids is None or len(token_ids) == 1)):
            # The per-sequence decode step that needs no plan (most steps): one call into
            # the append module, then the token's record in the row's chain.
            slot = append_one(seqs, self.gpu, row, self.block_size, self.max_model_len)
            if slot is not None:
                chains = self._chains
                if chains is not None:
                    if token_ids is None:
                        chains.end_chain(row)
                    else:
                        chains.record_token(row, seqs.ntokens.item(row) - 1,
                                            int(token_ids[0]))
                return AppendResult(np.array((slot,), dtype=np.int64), EMPTY_PAIRS)
        tokens = None if token_ids is None else np.asarray(token_ids, dtype=np.int64)
        if tokens is not None and tokens.shape != (num_new_tokens,):
            raise ValueError(f"token_ids has shape {tokens.shape}, expected "
                             f"({num_new_tokens},)")
        rows = np.asarray([row], dtype=np.int64)
        return self._append(rows, num_new_tokens, num_lookahead_slots,
                            None if tokens is None else tokens[None, :], allow_zero=True)

    def append_slots_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0, *,
        token_ids: np.ndarray | None = None,
    ) -> AppendResult:
        """A decode step for a batch: `num_new_tokens` new slots for every row in `rows`.

        `rows` (int array from `rows_of`) must be distinct sequences on the GPU. Slots come
        back row-major, in `rows` order. The same semantics as `append_slots` applied to
        each row in turn (a block all of whose holders write into it in this step is copied
        by all but the last of them), done with whole-batch array operations.
        `token_ids`: int64 `[len(rows), num_new_tokens]` (or `[len(rows)]` for one token),
        -1 where unknown. `num_new_tokens > 1` serves multi-step decoding.

        Raises (nothing changed): OutOfBlocksError, SequenceTooLongError,
        UnknownSequenceError, WrongDeviceError, ValueError.
        """
        rows = np.asarray(rows, dtype=np.int64)
        tokens = None
        if token_ids is not None:
            tokens = np.asarray(token_ids, dtype=np.int64).reshape(rows.size, -1)
            if tokens.shape[1] != num_new_tokens:
                raise ValueError(f"token_ids must be [{rows.size}, {num_new_tokens}], got "
                                 f"{np.shape(token_ids)}")
        return self._append(rows, num_new_tokens, num_lookahead_slots, tokens)

    def blocks_needed(
        self, seq_id: Hashable, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> int:
        """GPU blocks `append_slots` would take now (new blocks plus copy-on-write copies)."""
        rows = np.asarray([self._seqs.row(seq_id)], dtype=np.int64)
        return int(self._plan(rows, num_new_tokens, num_lookahead_slots, True).num_blocks)

    def blocks_needed_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> np.ndarray:
        """Per-row GPU blocks `append_slots_batch` would take now, int64 `[len(rows)]`."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._plan(rows, num_new_tokens, num_lookahead_slots).blocks_per_row()

    def plan(self, rows: np.ndarray, k: int, lookahead: int) -> AppendPlan:
        """The append plan of `k` tokens (+ `lookahead` slots) for distinct GPU `rows`
        (checked here), without applying it (`apply_plan`): a hybrid manager plans every
        group before it changes any."""
        return self._plan(rows, k, lookahead)

    def _plan(self, rows: np.ndarray, k: int, lookahead: int,
              allow_zero: bool = False) -> AppendPlan:
        low = 0 if allow_zero else 1
        # the common call (plain ints in range) costs two type tests, the rest the full check
        if not (type(k) is int and k >= low and type(lookahead) is int and lookahead >= 0):
            for name, value, least in (("num_new_tokens", k, low),
                                       ("num_lookahead_slots", lookahead, 0)):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
                        value < least):
                    raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if rows.size == 1:  # one sequence: its row came from `row_of` or is checked here
            row = rows.item(0)
            if not 0 <= row < self._seqs.where.size or self._seqs.where.item(row) != ON_GPU:
                self._seqs.check_rows(rows, ON_GPU)  # raises the right error
        else:
            self._seqs.check_rows(rows, ON_GPU)
        return plan_append(self._seqs, self.gpu, rows, int(k), int(lookahead),
                           self.block_size, self.max_model_len)

    def _append(self, rows: np.ndarray, k: int, lookahead: int, tokens: np.ndarray | None,
                allow_zero: bool = False) -> AppendResult:
        return self.apply_plan(self._plan(rows, k, lookahead, allow_zero), tokens)

    def apply_plan(self, plan: AppendPlan, tokens: np.ndarray | None = None) -> AppendResult:
        """Carry out an append plan of this manager's rows (`_plan`, or `plan_append` over
        rows already checked) and record its tokens in the chains; raises OutOfBlocksError
        (nothing changed)."""
        rows, k = plan.rows, plan.num_new_tokens
        if rows.size == 0:
            return AppendResult(np.zeros(0, dtype=np.int64), EMPTY_PAIRS)
        result = apply_append(self._seqs, self.gpu, plan, self.block_size, self.max_model_len)
        self.num_cow_copies += result.num_copies
        chains = self._chains
        if chains is not None and k:
            if rows.size == 1 and k == 1:  # a per-sequence append: scalar writes
                if tokens is None:
                    chains.end_chain(rows.item(0))
                else:
                    chains.record_token(rows.item(0), plan.ntokens.item(0), tokens.item(0))
            else:
                chains.record_tokens(rows, plan.ntokens, tokens)
        return result

    # ---- sharing ------------------------------------------------------------------------
    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Make `child_id` a copy of `parent_id` that shares all its blocks (no copying).

        Whichever of the two writes first into the shared partial block copies it then.
        """
        self.fork_many([parent_id], [child_id])

    def fork_many(self, parent_ids: Sequence[Hashable], child_ids: Sequence[Hashable]) -> None:
        """`fork(p, c)` for each pair, with one array operation for all reference counts.

        Raises before changing anything if any parent is unknown or swapped out
        (WrongDeviceError: swap the group in first, a fork shares GPU blocks), any child
        exists or is listed twice, or the lists differ in length.
        """
        if len(parent_ids) != len(child_ids):
            raise ValueError(f"parent_ids has {len(parent_ids)} ids, child_ids "
                             f"{len(child_ids)}: they must pair up")
        seqs = self._seqs
        parents = seqs.rows(parent_ids)
        off = np.flatnonzero(seqs.where[parents] != ON_GPU)
        if off.size:
            raise WrongDeviceError(f"cannot fork sequence {parent_ids[int(off[0])]!r}: it is "
                                   "swapped out to the CPU (swap it in first)")
        for child in child_ids:
            seqs.check_new(child)
        if len(set(child_ids)) != len(child_ids):
            raise ValueError("child_ids lists a sequence twice")
        if parents.size == 0:
            return
        shared = seqs.gather_blocks(parents)
        if self.has_null_entries:
            shared = shared[shared != NULL_BLOCK]
        self.gpu.share_counted(shared)
        children = seqs.add_many(list(child_ids), seqs.where[parents])
        width = int(seqs.nblocks[parents].max())
        seqs.table[children, :width] = seqs.table[parents, :width]
        seqs.nblocks[children] = seqs.nblocks[parents]
        seqs.ntokens[children] = seqs.ntokens[parents]
        clear_room(seqs, parents)  # their last blocks are shared now (children start at 0)
        if self._chains is not None:
            self._chains.fork(parents, children)

    # ---- release ------------------------------------------------------------------------
    def free(self, seq_id: Hashable) -> int:
        """Drop a sequence and its references; return its token count (to recompute later).

        Blocks are released tail first, so under prefix caching a prompt's tail is evicted
        before its head, which more sequences share.
        """
        seqs = self._seqs
        row = seqs.row(seq_id)
        num_tokens = int(seqs.ntokens[row])
        held = seqs.blocks(row)[::-1]
        if self.has_null_entries:
            held = held[held != NULL_BLOCK]
        self._pool_at(int(seqs.where[row])).free_distinct(held)
        seqs.remove(row)  # its chain goes with the row (reset when the row is reused)
        return num_tokens

    #: Recompute preemption frees everything; the scheduler re-queues the tokens.
    preempt_recompute = free

    def free_many(self, seq_ids: Sequence[Hashable]) -> np.ndarray:
        """`free` each sequence, with one array operation per pool; returns int64 token counts.

        Raises before changing anything if any id is unknown or listed twice.
        """
        seqs = self._seqs
        rows = seqs.rows(seq_ids)
        if seqs.has_repeats(rows):
            raise ValueError("seq_ids lists a sequence twice")
        counts = seqs.ntokens[rows].copy()
        for where in (ON_GPU, ON_CPU):
            on = rows[seqs.where[rows] == where]
            if on.size:
                held = seqs.gather_blocks(on, tail_first=True)
                if self.has_null_entries:
                    held = held[held != NULL_BLOCK]
                self._pool_at(where).free(held)
        seqs.remove_many(rows)
        return counts

    def truncate(self, seq_id: Hashable, num_tokens: int) -> None:
        """Forget tokens past `num_tokens` (rejected speculative tokens), freeing whole blocks
        past the new end. Blocks kept are not written again unless appended to (a registered
        block is unregistered from the sequence's chain and copied before any write)."""
        seqs = self._seqs
        row = seqs.row(seq_id)
        current = int(seqs.ntokens[row])
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or (
                not 0 <= num_tokens <= current):
            raise ValueError(f"num_tokens must be an int in [0, {current}], got {num_tokens!r}")
        where = int(seqs.where[row])
        shrink(seqs, self._pool_at(where), row, num_tokens, self.block_size,
               self.max_model_len, where == ON_GPU)
        if self._chains is not None:
            self._chains.truncate(row, num_tokens)

    # ---- swapping -----------------------------------------------------------------------
    def can_swap_out(self, seq_ids: Iterable[Hashable]) -> bool:
        """Whether the CPU swap area has room for the group's distinct blocks."""
        rows = group_rows(self._seqs, seq_ids, ON_GPU)
        return self.cpu is not None and distinct_blocks(self._seqs, rows).size <= self.cpu.num_free

    def can_swap_in(self, seq_ids: Iterable[Hashable]) -> AllocStatus:
        """Whether the group's distinct blocks fit back on the GPU (keeping the watermark)."""
        rows = group_rows(self._seqs, seq_ids, ON_CPU)
        need = distinct_blocks(self._seqs, rows).size
        if self.gpu.num_blocks < need:
            return AllocStatus.NEVER
        if self.gpu.num_free - need >= self.config.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    def swap_out(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move a group of sequences to the CPU, all or nothing.

        Returns int64 `[num_blocks, 2]` (gpu_block, cpu_block) pairs to copy, one per distinct
        block: blocks shared inside the group stay shared on the CPU. A GPU block that others
        outside the group still use stays on the GPU for them.
        """
        if self.cpu is None:
            raise ValueError("swap_out: this manager has no CPU swap space (num_cpu_blocks=0)")
        rows = group_rows(self._seqs, seq_ids, ON_GPU)
        pairs = move_rows(self._seqs, rows, self.gpu, self.cpu, ON_CPU)
        self.num_blocks_swapped_out += pairs.shape[0]
        return pairs

    def swap_in(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move a swapped-out group back to the GPU, all or nothing.

        Returns int64 `[num_blocks, 2]` (cpu_block, gpu_block) pairs to copy.
        """
        if self.cpu is None:
            raise ValueError("swap_in: this manager has no CPU swap space (num_cpu_blocks=0)")
        rows = group_rows(self._seqs, seq_ids, ON_CPU)
        pairs = move_rows(self._seqs, rows, self.cpu, self.gpu, ON_GPU)
        refresh_room(self._seqs, self.gpu, rows, self.block_size, self.max_model_len)
        self.num_blocks_swapped_in += pairs.shape[0]
        return pairs

    # ---- helpers ------------------------------------------------------------------------
    def _pool(self, device: str) -> BlockPool:
        if device == "gpu":
            return self.gpu
        if device == "cpu":
            if self.cpu is None:
                raise ValueError("this manager has no CPU swap space (num_cpu_blocks=0)")
            return self.cpu
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")

    def _pool_at(self, where: int) -> BlockPool:
        if where == ON_GPU:
            return self.gpu
        if self.cpu is None:  # a CPU row exists only with swap space
            raise WrongDeviceError("no CPU swap space")
        return self.cpu


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be an int > 0, got {value!r}")
