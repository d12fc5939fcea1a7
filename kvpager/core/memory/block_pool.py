"""BlockPool: the physical KV blocks of one device, their reference counts and free lists.

Block ids are dense indices `0 <= id < num_blocks` of one device's cache tensors, so a kernel
can index the cache with them directly. Each device (the GPU cache, the CPU swap area) has its
own pool and its own id space; an id means nothing without its pool, and the manager never
lets a sequence hold blocks of two pools at once.

Why arrays and not a deque of block objects: a decode step of 1,024 sequences allocates,
shares and frees blocks for many sequences at once, and a serving loop cannot afford Python
object work per block there. Reference counts live in one int32 array and the clean free
blocks in an int32 stack, so `allocate(k)` and `free(ids)` are a few vectorized numpy
operations whatever k is, and a pool of 1,000,000 blocks costs about 9 MB.

Free blocks come in two kinds:

- *clean*: no reusable content. Kept in a stack: the most recently freed block is reused
  first, which keeps the set of block ids in use small and dense.
- *cached*: content registered in a prefix cache, kept for a later hit until the space is
  needed. Kept in LRU order (least recently released first) in an `OrderedDict`, which gives
  O(1) append, O(1) removal from the middle on a cache hit and O(1) eviction of the oldest.

`allocate` takes clean blocks first and evicts cached ones only when no clean block is left,
so cached prefixes live as long as memory allows. Blocks a sliding window releases
(`free(..., first=True)`) are reused before any other cached block: the clean ones go on
the stack, the cached ones to the *front* of the eviction order, since they serve only hits
that end within a window of them. With `one_queue=True` (vLLM's single free queue, kept to
measure what the order is worth) every freed block, cached or not, joins the back of one LRU
queue: a window's churn then evicts other requests' cached prefixes before its own blocks.

The pool is the one owner of "is this block cached": its key index (key <-> block, the
prefix cache's content keys) and the cached / evictable flags change together, here, and
eviction never leaves the class (as vLLM v1's block pool keeps its cached-block hash map).
The prefix cache asks it to `register` computed blocks and to `match` keys; a host prefix
tier learns which keys were evicted by `drain_evicted` (recorded only once
`record_evictions` is switched on, so a pool without a tier keeps no such list).

KV events: a pool given an `events` sink (`kvpager.core.memory.event_sink`) reports the keys
it registers and evicts, while the sink listens; without one, or while nobody listens, the
only cost is one test per `register` or eviction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

from kvpager.core.errors import DoubleFreeError, OutOfBlocksError, UnknownBlockError
from kvpager.core.memory.event_sink import MEDIUM_GPU, KVEventSink

BlockIds = Iterable[int] | np.ndarray


#: keys looked up per slice by `leading_hits`: a long prompt whose first blocks miss stops
#: after one slice instead of looking up every key
_HIT_SLICE = 32


def leading_hits(lookup: Callable[[Hashable], int | None],
                 keys: Sequence[Hashable]) -> list[int]:
    """`lookup(key)` for the leading `keys` up to the first one it answers None for (the
    longest cached run: a block after a miss is never valid). Looks keys up a slice at a
    time, so a miss early in a long prompt costs one slice, not the whole prompt."""
    hits: list[int] = []
    for start in range(0, len(keys), _HIT_SLICE):
        found = list(map(lookup, keys[start : start + _HIT_SLICE]))
        if None in found:
            hits += found[: found.index(None)]  # type: ignore[arg-type]  # no None before it
            return hits
        hits += found  # type: ignore[arg-type]  # no None in it
    return hits


class BlockPool:
    """Physical blocks of one device: ids, reference counts, clean and cached free blocks.

    Args:
        num_blocks: number of physical blocks, > 0.
        device: a name for messages and plans ("gpu", "cpu", "cuda:1", ...).
        events: where to report keys registered and evicted (None: nowhere).
        medium: the medium those reports name (vLLM's "GPU", "CPU").
        one_queue: every freed block joins one LRU queue (see above; default False).

    Every method either does all of its work or raises before changing anything.
    """

    def __init__(self, num_blocks: int, device: str = "gpu", *,
                 events: KVEventSink | None = None, medium: str = MEDIUM_GPU,
                 one_queue: bool = False) -> None:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, (int, np.integer)):
            raise ValueError(f"num_blocks must be an int, got {type(num_blocks).__name__}")
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        if num_blocks > np.iinfo(np.int32).max:
            raise ValueError(f"num_blocks must fit in int32, got {num_blocks}")
        self.device = device
        self.num_blocks = int(num_blocks)
        self._ref = np.zeros(self.num_blocks, dtype=np.int32)
        # Clean free blocks as a stack; the top is the end. Filled so that a fresh pool hands
        # out 0, 1, 2, ... in order.
        self._clean = np.arange(self.num_blocks - 1, -1, -1, dtype=np.int32)
        self._num_clean = self.num_blocks
        self._cached = np.zeros(self.num_blocks, dtype=bool)
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._one_queue = bool(one_queue)
        self._queued_clean = 0  # one_queue only: uncached blocks waiting in `_evictable`
        # The key index: a block is in it exactly when `_cached` says so.
        self._block_of: dict[Hashable, int] = {}
        self._key_of: dict[int, Hashable] = {}
        self._record_evictions = False
        self._evicted_keys: list[Hashable] = []
        self._evicted_blocks: list[int] = []
        self._events = events
        self.medium = medium

    # ---- queries ------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks `allocate` can hand out now: clean plus evictable cached blocks."""
        return self._num_clean + len(self._evictable)

    @property
    def num_used(self) -> int:
        """Blocks with a reference count above zero."""
        return self.num_blocks - self.num_free

    @property
    def num_evictable(self) -> int:
        """Free blocks that still hold cached content."""
        return len(self._evictable) - self._queued_clean

    @property
    def ref_counts(self) -> np.ndarray:
        """Read-only int32 view `[num_blocks]` of the reference counts."""
        view = self._ref.view()
        view.flags.writeable = False
        return view

    @property
    def cached_flags(self) -> np.ndarray:
        """Read-only bool view `[num_blocks]`: which blocks hold prefix-cached content."""
        view = self._cached.view()
        view.flags.writeable = False
        return view

    def ref_count(self, block: int) -> int:
        """Reference count of one block."""
        self._check_ids(np.asarray([block]))
        return int(self._ref[block])

    def is_cached(self, block: int) -> bool:
        """Whether the block's content is registered in a prefix cache."""
        self._check_ids(np.asarray([block]))
        return bool(self._cached[block])

    def count_free(self, ids: BlockIds) -> int:
        """How many of distinct in-use-or-cached `ids` are free now (a prefix hit on them
        revives them, which takes a free block)."""
        ids = np.asarray(ids)
        if not ids.size:
            return 0
        return int(np.count_nonzero(self._ref.take(ids) == 0))

    def free_blocks(self) -> tuple[np.ndarray, list[int]]:
        """(clean stack bottom to top, evictable blocks oldest first): for tests and tools."""
        return self._clean[: self._num_clean].copy(), list(self._evictable)

    # ---- allocation ---------------------------------------------------------------------
    def allocate(self, num: int = 1) -> np.ndarray:
        """Take `num` free blocks with reference count 1, as int32 `[num]`.

        Clean blocks come first (most recently freed first); cached blocks are evicted, oldest
        released first, only when no clean block is left.

        Raises:
            OutOfBlocksError: fewer than `num` blocks are free (nothing is taken).
        """
        if num < 0:
            raise ValueError(f"num must be >= 0, got {num}")
        if num > self.num_free:
            raise OutOfBlocksError(self.device, num, self.num_free)
        if num == 1 and self._num_clean:  # one block, the common growth of a sequence
            self._num_clean -= 1
            block = self._clean.item(self._num_clean)
            self._ref[block] = 1
            return np.array((block,), dtype=np.int32)
        take = min(num, self._num_clean)
        top = self._num_clean
        ids = self._clean[top - take : top][::-1].copy()
        self._num_clean = top - take
        if take < num:
            ids = np.concatenate([ids, self._evict(num - take)])
        self._ref[ids] = 1
        return ids

    def _evict(self, num: int) -> np.ndarray:
        """The `num` oldest evictable blocks, taken out of the eviction order and the key
        index (their keys recorded for `drain_evicted` when asked: a long prompt evicts
        hundreds per allocation)."""
        evictable = self._evictable
        if num == len(evictable):
            blocks = list(evictable)
            evictable.clear()
        else:
            pop = evictable.popitem
            blocks = [pop(last=False)[0] for _ in range(num)]
        evicted = np.asarray(blocks, dtype=np.int32)
        if self._queued_clean:  # one queue: some of them hold no cached content
            held = self._cached[evicted]
            self._queued_clean -= int(np.count_nonzero(~held))
            blocks = evicted[held].tolist()
            if not blocks:
                return evicted
        self._cached[evicted] = False
        keys = list(map(self._key_of.pop, blocks))
        block_of = self._block_of
        for key in keys:
            del block_of[key]
        if self._record_evictions:
            self._evicted_keys.extend(keys)
            self._evicted_blocks.extend(blocks)
        events = self._events
        if events is not None and events.active:
            events.removed(keys, self.medium)
        return evicted

    def share(self, blocks: BlockIds) -> None:
        """Add one reference to each listed block (repeats add more); each must be in use.

        Raises:
            UnknownBlockError: an id outside the pool.
            DoubleFreeError: a block that is free (sharing it would resurrect freed memory).
        """
        ids = self._as_ids(blocks)
        if ids.size == 0:
            return
        free = ids[self._ref[ids] <= 0]
        if free.size:
            raise DoubleFreeError(
                f"cannot share {self.device} block {int(free[0])}: it is free (ref count 0)"
            )
        np.add.at(self._ref, ids, 1)

    def free(self, blocks: BlockIds, *, first: bool = False) -> np.ndarray:
        """Drop one reference per listed id (repeats drop more); return the blocks released.

        A block whose count reaches zero becomes free: cached blocks join the eviction order
        in the order listed (list a sequence's blocks tail first so its tail is evicted first),
        the others go onto the clean stack. `first` (a window's release): cached blocks go
        to the front of the eviction order instead, the last listed frontmost. Returns int32
        ids that reached zero.

        Raises:
            UnknownBlockError: an id outside the pool.
            DoubleFreeError: more references dropped than a block has.
        """
        ids = self._as_ids(blocks)
        if ids.size == 0:
            return ids
        if ids.size == 1 or _all_distinct(ids):
            counts = self._ref[ids]
            bad = counts <= 0
            if bad.any():
                self._raise_double_free(ids[bad][0])
            self._ref[ids] = counts - 1
            released = ids[counts == 1]
        else:
            uniq, first_at, num = np.unique(ids, return_index=True, return_counts=True)
            bad = self._ref[uniq] < num
            if bad.any():
                self._raise_double_free(uniq[bad][0])
            self._ref[uniq] -= num.astype(np.int32)
            order = np.sort(first_at[self._ref[uniq] == 0])  # keep the caller's order
            released = ids[order]
        self._release(released, first)
        return released

    def _raise_double_free(self, block: np.integer) -> None:
        raise DoubleFreeError(
            f"double free of {self.device} block {int(block)}: "
            f"its reference count is {int(self._ref[block])}"
        )

    def _release(self, released: np.ndarray, first: bool = False) -> None:
        if released.size == 0:
            return
        if self._one_queue:  # one LRU queue of every free block, cached or not
            self._evictable.update(dict.fromkeys(released.tolist()))
            self._queued_clean += int(np.count_nonzero(~self._cached[released]))
            return
        cached = self._cached[released]
        if cached.any():
            evictable = self._evictable
            if first:
                for block in released[cached].tolist():
                    evictable[block] = None
                    evictable.move_to_end(block, last=False)
            else:
                evictable.update(dict.fromkeys(released[cached].tolist()))
            released = released[~cached]
        top = self._num_clean
        self._clean[top : top + released.size] = released
        self._num_clean = top + released.size

    # ---- operations for the manager's own tables ---------------------------------------
    # The manager passes ids read from its own tables: valid, distinct within one table and
    # in use. Skipping the checks there halves the cost of fork / free / prefix hits, which
    # a serving loop calls for many sequences per step. The stateful tests check that the
    # manager's calls keep every invariant the checks would.

    def share_distinct(self, ids: np.ndarray) -> None:
        """Add a reference to each of distinct in-use `ids` (int32 `[n]`; not checked)."""
        self._ref[ids] += 1

    def share_counted(self, ids: np.ndarray) -> None:
        """Add one reference per occurrence in `ids` (in-use ids, repeats allowed; not
        checked): a fork of many sequences that hold some blocks in common."""
        uniq, counts = np.unique(ids, return_counts=True)
        self._ref[uniq] += counts.astype(np.int32)

    def free_distinct(self, ids: np.ndarray) -> None:
        """Drop a reference from each of distinct in-use `ids` (not checked); cached blocks
        that reach zero join the eviction order in the order listed."""
        counts = self._ref[ids]
        self._ref[ids] = counts - 1
        self._release(ids[counts == 1])

    def free_released(self, ids: np.ndarray) -> None:
        """`free(ids, first=True)` for ids read from a manager's tables (valid and in use;
        not checked; repeats allowed: forked rows release a shared block together): what a
        window releases, reused before other cached blocks."""
        counts = self._ref[ids]
        if counts.max(initial=0) == 1:  # each held once, so distinct: all released
            self._ref[ids] = 0
            self._release(ids, True)
        elif ids.size == 1 or _all_distinct(ids):
            self._ref[ids] = counts - 1
            self._release(ids[counts == 1], True)
        else:
            self.free(ids, first=True)

    def free_released_one(self, block: int) -> None:
        """`free_released` of one block, with scalar reads and writes (a per-sequence
        step's window release)."""
        ref = self._ref.item(block)
        self._ref[block] = ref - 1
        if ref != 1:
            return
        if self._one_queue:
            self._evictable[block] = None
            if not self._cached.item(block):
                self._queued_clean += 1
        elif self._cached.item(block):
            self._evictable[block] = None
            self._evictable.move_to_end(block, last=False)
        else:
            self._clean[self._num_clean] = block
            self._num_clean += 1

    def writable(self, ids: np.ndarray) -> np.ndarray:
        """bool `[n]`: which blocks a holder may write in place (its only holder, and not
        prefix-cached content, which is immutable)."""
        return (self._ref.take(ids) == 1) & ~self._cached.take(ids)

    def writes_that_copy(self, ids: np.ndarray) -> np.ndarray:
        """bool `[n]` over writes into blocks `ids`, listed in the order they happen (one entry
        per writing sequence): which writes must first copy their block.

        A write copies when its block is shared or cached. When all `r` holders of a shared,
        uncached block write into it in the same step (every beam of a group), the first
        `r - 1` copy and the last keeps the original, as writes one by one would: no block is
        copied needlessly.
        """
        ref, cached = self._ref.take(ids), self._cached.take(ids)
        must = (ref > 1) | cached
        if not must.any():
            return must
        idx = np.flatnonzero(must)
        src = ids[idx]
        uniq, first_rev, writers = np.unique(src[::-1], return_index=True, return_counts=True)
        keeps = (self._ref[uniq] == writers) & ~self._cached[uniq]
        if keeps.any():
            must[idx[src.size - 1 - first_rev[keeps]]] = False
        return must

    # ---- the cached-block index --------------------------------------------------------
    @property
    def num_cached(self) -> int:
        """Blocks registered under a key (in use or evictable)."""
        return len(self._block_of)

    def block_of(self, key: Hashable) -> int | None:
        """The cached block registered under `key`, or None."""
        return self._block_of.get(key)

    def key_of(self, block: int) -> Hashable | None:
        """The key a cached block is registered under, or None."""
        return self._key_of.get(block)

    def cached_items(self) -> list[tuple[int, Hashable]]:
        """(block, key) of every cached block, by block id: for tests and tools."""
        return sorted(self._key_of.items(), key=lambda item: item[0])

    def match(self, keys: Sequence[Hashable], max_blocks: int) -> list[int]:
        """Blocks of the longest run of leading `keys` (at most `max_blocks`) that are
        cached; no side effects."""
        return leading_hits(self._block_of.get, keys[:max_blocks])

    def register(self, keys: Sequence[Hashable], blocks: Sequence[int],
                 parents: Sequence[Hashable | None] | None = None) -> list[int]:
        """Cache in-use `blocks` (ints) under `keys`, pairwise; returns the blocks cached now,
        in order. A key already cached (two sequences computed the same prefix at once) or
        listed twice caches only its first block, and a block already cached keeps its key:
        the others stay private and are simply freed later.

        `parents` (pairwise with `keys`, the key before each in its chain) only feeds the
        events sink: the keys cached now are reported with their parents.

        Raises:
            ValueError: a block is free (nothing changed).
        """
        block_of, key_of = self._block_of, self._key_of
        fresh: dict[Hashable, int] = {}
        for key, block in zip(keys, blocks, strict=True):
            if key not in block_of and key not in fresh and block not in key_of:
                fresh[key] = block
        if not fresh:
            return []
        ids = np.fromiter(fresh.values(), dtype=np.int64, count=len(fresh))
        if (self._ref.take(ids) <= 0).any():
            bad = int(ids[self._ref.take(ids) <= 0][0])
            raise ValueError(f"register: {self.device} block {bad} is free")
        block_of.update(fresh)
        key_of.update(zip(fresh.values(), fresh.keys(), strict=True))
        self._cached[ids] = True
        events = self._events
        if events is not None and events.active:
            stored = list(fresh)
            if parents is None:
                events.stored(stored, None, self.medium)
            else:
                parent_of = dict(zip(keys, parents, strict=True))
                events.stored(stored, [parent_of[k] for k in stored], self.medium)
        return list(fresh.values())

    def clear_cached(self) -> int:
        """Forget every cached key (a prefix-cache reset): evictable cached blocks become
        clean free blocks, and evictions not yet drained are dropped. Reports nothing (the
        prefix cache reports the reset as a whole). Returns how many keys were forgotten.

        Raises:
            ValueError: a cached block is in use (nothing changed).
        """
        if self.num_evictable != len(self._key_of):
            busy = next(b for b in self._key_of if b not in self._evictable)
            raise ValueError(f"clear_cached: cached {self.device} block {busy} is in use")
        forgotten = len(self._key_of)
        released = np.fromiter(self._key_of, dtype=np.int32, count=forgotten)
        self._block_of.clear()
        self._key_of.clear()
        self._cached[released] = False
        self._evicted_keys, self._evicted_blocks = [], []
        if self._one_queue:  # they stay where they are in the one queue, now clean
            self._queued_clean += forgotten
        else:
            self._evictable.clear()
            self._release(released)
        return forgotten

    def record_evictions(self, enabled: bool = True) -> None:
        """Keep the keys of evicted blocks for `drain_evicted` (a host tier wants them)."""
        self._record_evictions = enabled
        if not enabled:
            self._evicted_keys, self._evicted_blocks = [], []

    def drain_evicted(self) -> tuple[list[Hashable], list[int]]:
        """(keys, blocks) evicted since the last call, oldest first; the blocks' ids are
        being reused, so a copy of their content must happen before anything writes them."""
        keys, blocks = self._evicted_keys, self._evicted_blocks
        if keys:
            self._evicted_keys, self._evicted_blocks = [], []
        return keys, blocks

    def touch(self, blocks: BlockIds) -> None:
        """Take a reference on each of distinct cached blocks for a prefix hit, reviving the
        free ones (they leave the eviction order)."""
        ids = blocks if isinstance(blocks, np.ndarray) and blocks.dtype == np.int32 else (
            self._as_ids(blocks))
        if ids.size == 0:
            return
        self._check_ids(ids)
        if not self._cached.take(ids).all():
            bad = int(ids[~self._cached.take(ids)][0])
            raise ValueError(f"touch: {self.device} block {bad} holds no cached content")
        refs = self._ref.take(ids)
        revived = ids[refs == 0]
        evictable = self._evictable
        for block in revived.tolist():
            del evictable[block]
        self._ref[ids] = refs + 1

    # ---- validation ---------------------------------------------------------------------
    def _as_ids(self, blocks: BlockIds) -> np.ndarray:
        ids = np.asarray(blocks)
        if ids.ndim != 1:
            ids = ids.reshape(-1)
        if ids.size and ids.dtype.kind not in "iu":
            raise UnknownBlockError(f"{self.device} block ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int32, copy=False)
        self._check_ids(ids)
        return ids

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_blocks):
            bad = ids[(ids < 0) | (ids >= self.num_blocks)][0]
            raise UnknownBlockError(
                f"unknown {self.device} block {int(bad)}: ids are 0..{self.num_blocks - 1}"
            )

    def __repr__(self) -> str:
        return (f"BlockPool(device={self.device!r}, num_blocks={self.num_blocks}, "
                f"free={self.num_free}, evictable={self.num_evictable})")


def _all_distinct(ids: np.ndarray) -> bool:
    """Cheap duplicate test: sort a copy (ids are short: one sequence or one batch)."""
    s = np.sort(ids)
    return not bool((s[1:] == s[:-1]).any())
