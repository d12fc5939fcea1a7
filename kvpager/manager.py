"""KVCacheManager: the policy layer over the block pools.

The manager decides which physical blocks each sequence uses and answers with *plans*, plain
data that an executor carries out: slot mappings for new tokens, copy-on-write pairs, swap
pairs. It never touches K/V memory, so the same object drives a real engine (through
`KVCache` and the kernels) and the simulator.

Sequences are identified by any hashable id. A sequence lives wholly on one device: on the
GPU while it runs, in the CPU swap area while it is swapped out.

Sharing: `fork` gives a child the parent's blocks by reference count (beam search, parallel
sampling); a write into a block that is shared first copies it (`AppendResult.copies`).
Prefix caching shares full prompt blocks between sequences by content (see `prefix.py`).

Every mutating call checks everything first and raises before changing any state, so a
caller (the scheduler) can catch `OutOfBlocksError`, preempt someone and try again.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kvpager.batch_ops import BatchMixin
from kvpager.block_table import BlockTable, num_blocks_for
from kvpager.blocks import BlockPool
from kvpager.config import EMPTY_PAIRS, Allocation, AllocStatus, AppendResult, CacheConfig
from kvpager.errors import OutOfBlocksError, WrongDeviceError
from kvpager.prefix import PrefixCache, hash_block_tokens
from kvpager.seq_store import DEVICE_NAMES, ON_GPU, SequenceQueries, SequenceStore
from kvpager.swap import SwapMixin
from kvpager.usage import paged_breakdown

if TYPE_CHECKING:
    import torch


class KVCacheManager(BatchMixin, SwapMixin, SequenceQueries):
    """Allocates, shares, copies on write, swaps and frees the KV blocks of sequences.

    Construct with a `CacheConfig` or its fields as keywords:
    `KVCacheManager(num_gpu_blocks=1024, block_size=16, num_cpu_blocks=256)`.
    """

    def __init__(self, config: CacheConfig | None = None, **fields: object) -> None:
        if config is None:
            config = CacheConfig(**fields)  # type: ignore[arg-type]
        elif fields:
            raise ValueError("pass either a CacheConfig or its fields, not both")
        self.config = config
        self.block_size = config.block_size
        self.gpu = BlockPool(config.num_gpu_blocks, "gpu")
        self.cpu = BlockPool(config.num_cpu_blocks, "cpu") if config.num_cpu_blocks else None
        self.prefix_cache = PrefixCache(self.gpu) if config.enable_prefix_caching else None
        self._seqs = SequenceStore()
        # Prefix keys of each row's prompt blocks, and how many of them are registered.
        self._keys: dict[int, list[Hashable]] = {}
        self._registered: dict[int, int] = {}
        self._scratch = np.zeros(0, dtype=np.int64)
        self.num_cow_copies = 0
        self.num_blocks_swapped_out = 0
        self.num_blocks_swapped_in = 0

    # ---- queries ------------------------------------------------------------------------
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

    def slot_mapping(self, seq_id: Hashable, start: int, end: int) -> np.ndarray:
        """int64 slots of positions `start..end-1`, inside the allocated blocks."""
        return self.block_table(seq_id).slot_mapping(start, end) if end > start else (
            np.zeros(0, dtype=np.int64))

    def block_tables_tensor(
        self, rows: np.ndarray, width: int | None = None, pad: int = 0
    ) -> torch.Tensor:
        """The kernels' int32 `[len(rows), width]` block tables of a batch, padded with `pad`.

        Built straight from the manager's table array (one gather, no per-sequence work).
        """
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        longest = int(self._seqs.nblocks[rows].max()) if rows.size else 0
        width = longest if width is None else width
        if width < longest:
            raise ValueError(f"width must be >= the longest table ({longest}), got {width}")
        self._seqs.ensure_width(width)
        out = self._seqs.table[rows, :width].copy()
        cols = np.arange(width)
        out[cols[None, :] >= self._seqs.nblocks[rows][:, None]] = pad
        return torch.from_numpy(out)

    def memory_breakdown(
        self, rows: np.ndarray, final_slots: np.ndarray, next_reservation: int | None = None,
        *, next_num_tokens: int | None = None,
    ) -> dict[str, int]:
        """GPU slots by kind (token, reserved, internal, external, free), summing to capacity;
        see `kvpager.usage`. `next_reservation` / `next_num_tokens` (the waiting head's final
        and current length, which contiguous managers need) are unused: paging has no
        external fragmentation."""
        return paged_breakdown(self, rows, final_slots)

    # ---- admission ----------------------------------------------------------------------
    @property
    def has_swap_space(self) -> bool:
        return self.cpu is not None

    def can_allocate(
        self,
        num_tokens: int,
        *,
        token_ids: Sequence[int] | np.ndarray | None = None,
        block_hashes: Sequence[Hashable] | None = None,
        max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> AllocStatus:
        """Whether a prompt of `num_tokens` can get its blocks, keeping the watermark free.

        Prefix hits reduce the need: a hit on a block in use costs nothing, a hit on an
        evictable cached block still takes one free block. `max_tokens` and `num_seqs`
        (reservation hints, see `kvpager.protocol`) are ignored: blocks come on demand and
        the samples of a request share its prompt.
        """
        _check_positive("num_tokens", num_tokens)
        total = num_blocks_for(num_tokens, self.block_size)
        hits = self._match(self._prompt_keys(num_tokens, token_ids, block_hashes), num_tokens)
        in_use = int((self.gpu.ref_counts[hits] > 0).sum()) if hits else 0
        return self._status(total, total - in_use)

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
        if self.gpu.num_blocks - total < self.config.watermark_blocks:
            return AllocStatus.NEVER
        if self.gpu.num_free - take >= self.config.watermark_blocks:
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
        """Give a new sequence GPU blocks for its `num_tokens` prompt tokens.

        With prefix caching, the longest cached prefix (by `token_ids`, or the caller's chained
        `block_hashes` of full blocks) is shared instead of allocated; at least the last prompt
        token is always left to compute, since its logits are needed. Full blocks computed
        later are registered for others by `mark_computed`. `max_tokens` / `num_seqs` are
        reservation hints that a paged manager ignores.

        Raises:
            DuplicateSequenceError, ValueError, OutOfBlocksError (nothing changed).
        """
        self._seqs.check_new(seq_id)
        if num_tokens is None:
            if token_ids is None:
                raise ValueError("allocate needs num_tokens or token_ids")
            num_tokens = len(token_ids)
        _check_positive("num_tokens", num_tokens)
        if token_ids is not None and len(token_ids) < num_tokens:
            raise ValueError(
                f"token_ids has {len(token_ids)} ids, fewer than num_tokens={num_tokens}"
            )
        if token_ids is not None and block_hashes is not None:
            raise ValueError("pass token_ids or block_hashes, not both")
        keys = self._prompt_keys(num_tokens, token_ids, block_hashes)
        hits = self._match(keys, num_tokens)
        total = num_blocks_for(num_tokens, self.block_size)
        revived = int((self.gpu.ref_counts[hits] == 0).sum()) if hits else 0
        if total - len(hits) + revived > self.gpu.num_free:
            raise OutOfBlocksError("gpu", total - len(hits) + revived, self.gpu.num_free)

        if hits:
            self.gpu.touch(hits)
        fresh = self.gpu.allocate(total - len(hits))
        if self.prefix_cache is not None:
            self.prefix_cache.record_query(min(len(keys), (num_tokens - 1) // self.block_size),
                                           len(hits))
        row = self._seqs.add(seq_id, ON_GPU)
        self._seqs.ensure_width(total)
        blocks = np.concatenate([np.asarray(hits, dtype=np.int32), fresh])
        self._seqs.table[row, :total] = blocks
        self._seqs.nblocks[row] = total
        self._seqs.ntokens[row] = num_tokens
        if keys:
            self._keys[row] = keys
            self._registered[row] = len(hits)
        return Allocation(seq_id, blocks, len(hits) * self.block_size)

    def mark_computed(self, seq_id: Hashable, num_computed_tokens: int) -> int:
        """Register the sequence's full prompt blocks whose KV is now computed; return how many.

        Registering only computed blocks keeps a sequence scheduled in the same step from
        hitting a block whose KV is still being written. No-op without prefix caching.
        """
        row = self._seqs.row(seq_id)
        keys = self._keys.get(row)
        if self.prefix_cache is None or not keys or self._seqs.where[row] != ON_GPU:
            return 0
        done = min(len(keys), num_computed_tokens // self.block_size,
                   int(self._seqs.nblocks[row]))
        start = self._registered[row]
        table = self._seqs.table[row]
        added = sum(self.prefix_cache.register(int(table[i]), keys[i]) for i in range(start, done))
        self._registered[row] = max(start, done)
        return added

    def _prompt_keys(self, num_tokens: int, token_ids, block_hashes) -> list[Hashable]:
        if self.prefix_cache is None:
            return []
        full = num_tokens // self.block_size
        if token_ids is not None:
            return hash_block_tokens(np.asarray(token_ids)[: full * self.block_size],
                                     self.block_size)
        if block_hashes is not None:
            return list(block_hashes[:full])
        return []

    def _match(self, keys: list[Hashable], num_tokens: int) -> list[int]:
        if not keys or self.prefix_cache is None:
            return []
        return self.prefix_cache.match(keys, (num_tokens - 1) // self.block_size)

    # ---- growth -------------------------------------------------------------------------
    def blocks_needed(
        self, seq_id: Hashable, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> int:
        """GPU blocks `append_slots` would take now (new blocks plus copy-on-write copies)."""
        row = self._gpu_row(seq_id)
        new, shared = self._growth(row, num_new_tokens, num_lookahead_slots)
        return new + len(shared)

    def append_slots(
        self, seq_id: Hashable, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> AppendResult:
        """Make room for `num_new_tokens` tokens (+ lookahead slots) and return their slots.

        Lookahead slots (speculative or multi-step decoding) are allocated but not counted as
        tokens. A block about to be written that is shared, or registered in the prefix cache
        (cached content is immutable), is first copied (copy-on-write), unless it holds no
        token yet, in which case a fresh block simply replaces it.

        Raises:
            OutOfBlocksError (nothing changed), UnknownSequenceError, WrongDeviceError.
        """
        row = self._gpu_row(seq_id)
        if num_new_tokens < 0 or num_lookahead_slots < 0:
            raise ValueError(f"num_new_tokens and num_lookahead_slots must be >= 0, got "
                             f"{num_new_tokens} and {num_lookahead_slots}")
        new, shared = self._growth(row, num_new_tokens, num_lookahead_slots)
        if new + len(shared) > self.gpu.num_free:
            raise OutOfBlocksError("gpu", new + len(shared), self.gpu.num_free)
        seqs, bs = self._seqs, self.block_size
        n, nb = int(seqs.ntokens[row]), int(seqs.nblocks[row])
        seqs.ensure_width(nb + new)
        ids = self.gpu.allocate(new + len(shared))
        seqs.table[row, nb : nb + new] = ids[:new]
        copies = []
        if shared:
            old = seqs.table[row, shared].copy()
            for logical, src, dst in zip(shared, old.tolist(), ids[new:].tolist(), strict=True):
                if n > logical * bs:  # the block already holds tokens: keep them
                    copies.append((src, dst))
            seqs.table[row, shared] = ids[new:]
            self.gpu.free(old)
        seqs.nblocks[row] = nb + new
        seqs.ntokens[row] = n + num_new_tokens
        self.num_cow_copies += len(copies)
        slots = seqs.table[row, (np.arange(n, n + num_new_tokens)) // bs].astype(np.int64) * bs
        slots += np.arange(n, n + num_new_tokens) % bs
        pairs = np.asarray(copies, dtype=np.int64).reshape(-1, 2) if copies else EMPTY_PAIRS
        return AppendResult(slots, pairs)

    def _growth(self, row: int, k: int, lookahead: int) -> tuple[int, list[int]]:
        """(new blocks, logical indices of shared blocks the write touches) for an append."""
        seqs, bs = self._seqs, self.block_size
        n, nb = int(seqs.ntokens[row]), int(seqs.nblocks[row])
        new = max(0, num_blocks_for(n + k + lookahead, bs) - nb)
        if k == 0:
            return new, []
        first, last = n // bs, min(nb - 1, (n + k - 1) // bs)
        blocks = seqs.table[row, first : last + 1]
        must = (self.gpu.ref_counts[blocks] > 1) | self.gpu.cached_flags[blocks]
        return new, (np.flatnonzero(must) + first).tolist()

    # ---- sharing ------------------------------------------------------------------------
    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Make `child_id` a copy of `parent_id` that shares all its blocks (no copying).

        Whichever of the two writes first into the shared partial block copies it then.
        """
        parent = self._seqs.row(parent_id)
        self._seqs.check_new(child_id)
        where = int(self._seqs.where[parent])
        blocks = self._seqs.blocks(parent)
        self._pool_at(where)._share_unique(blocks)
        child = self._seqs.add(child_id, where)
        self._seqs.table[child, : blocks.size] = self._seqs.table[parent, : blocks.size]
        self._seqs.nblocks[child] = blocks.size
        self._seqs.ntokens[child] = self._seqs.ntokens[parent]
        if parent in self._keys:
            self._keys[child] = self._keys[parent]
            self._registered[child] = self._registered[parent]

    def free(self, seq_id: Hashable) -> int:
        """Drop a sequence and its references; return its token count (to recompute later).

        Blocks are released tail first, so under prefix caching a prompt's tail is evicted
        before its head, which more sequences share.
        """
        row = self._seqs.row(seq_id)
        num_tokens = int(self._seqs.ntokens[row])
        self._pool_at(int(self._seqs.where[row]))._free_unique(self._seqs.blocks(row)[::-1])
        self._keys.pop(row, None)
        self._registered.pop(row, None)
        self._seqs.remove(row)
        return num_tokens

    #: Recompute preemption frees everything; the scheduler re-queues the tokens.
    preempt_recompute = free

    def truncate(self, seq_id: Hashable, num_tokens: int) -> None:
        """Forget tokens past `num_tokens` (rejected speculative tokens), freeing whole blocks
        past the new end. Blocks kept are not written again unless appended to."""
        row = self._seqs.row(seq_id)
        current = int(self._seqs.ntokens[row])
        if not 0 <= num_tokens <= current:
            raise ValueError(f"num_tokens must be in [0, {current}], got {num_tokens}")
        keep = num_blocks_for(num_tokens, self.block_size)
        nb = int(self._seqs.nblocks[row])
        pool = self._pool_at(int(self._seqs.where[row]))
        if keep < nb:
            pool.free(self._seqs.table[row, keep:nb][::-1])
            self._seqs.nblocks[row] = keep
        self._seqs.ntokens[row] = num_tokens
        if row in self._keys:  # a registered block must never be written again
            full = num_tokens // self.block_size
            self._keys[row] = self._keys[row][:full]
            self._registered[row] = min(self._registered[row], full)

    # ---- helpers ------------------------------------------------------------------------
    def _gpu_row(self, seq_id: Hashable) -> int:
        row = self._seqs.row(seq_id)
        if self._seqs.where[row] != ON_GPU:
            raise WrongDeviceError(f"sequence {seq_id!r} is swapped out to the CPU")
        return row

    def _pool(self, device: str) -> BlockPool:
        if device == "gpu":
            return self.gpu
        if device == "cpu":
            if self.cpu is None:
                raise ValueError("this manager has no CPU swap space (num_cpu_blocks=0)")
            return self.cpu
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")

    def _pool_at(self, where: int) -> BlockPool:
        return self.gpu if where == ON_GPU else self.cpu  # type: ignore[return-value]


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be an int > 0, got {value!r}")
