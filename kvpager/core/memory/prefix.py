"""Content-hashed prefix caching of full KV blocks.

A full block's KV depends on its own tokens *and every token before it*, so its key chains:
`key_i = H(key_{i-1}, tokens of block i)`. Two sequences whose prompts agree on their first
`k * block_size` tokens get the same first k keys and can share those physical blocks.
The digest is BLAKE2b-128 over the parent digest and the token ids (little-endian int64):
Python's built-in `hash` would be faster but collides by construction for adversarial
inputs, and a collision here means serving one user another user's attention state.

Callers that know prefix identity without tokens (Mooncake traces give one id per 512-token
block; a router may have its own ids) pass their keys directly (`block_hashes=`): any
hashable values, trusted to be chained (equal key => equal prefix up to and including the
block).

Only full blocks are cached; a sequence's last, partially filled block is always private,
because appends write into it. Cached blocks are never written: a block is registered when
it is full and computed, and appends only ever write into the partial tail block (a write
into a cached block copies it first).

Generated blocks: when the tokens a sequence appends are known (a real engine knows what it
sampled; a simulator may replay a trace's output ids), the chain continues past the prompt,
and a block filled during decode is registered under the key that continues the prompt's
chain. The next turn of a conversation, whose prompt is the earlier prompt + the earlier
answer + new text, then hits the answer's blocks too. The chain continues only from
kvpager's own digests (bytes): caller keys of another kind end it at the prompt.

Who owns what: the `BlockPool` owns the cached-block index (key <-> block, cached and
evictable flags, eviction); `prefix_chains.PrefixChains` owns each sequence's chain cursor
(columns of the manager's rows); this module's `PrefixCache` ties them together (registering
committed blocks, the host tier, the hit counters) and makes the digests.

KV events: while its `events` sink listens, the cache tells the pool each registered key's
parent (the key before it in its chain), so the pool's reports chain; `reset` reports
`cleared`. Nothing of this runs while nobody listens.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.event_sink import KVEventSink
from kvpager.core.memory.prefix_chains import PrefixChains, chain_key
from kvpager.core.memory.prefix_tier import HostPrefixTier
from kvpager.core.plans import EMPTY_PAIRS


def hash_block_tokens(
    token_ids: Sequence[int] | np.ndarray, block_size: int, parent: bytes | None = None
) -> list[bytes]:
    """Chained 16-byte keys of the *full* blocks of `token_ids` (a trailing partial block has
    none). `parent` continues a chain from an earlier block's key."""
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    raw = np.asarray(token_ids, dtype="<i8").reshape(-1).tobytes()
    step = 8 * block_size
    keys: list[bytes] = []
    prev = parent
    for start in range(0, len(raw) - step + 1, step):
        prev = chain_key(prev, raw[start : start + step])
        keys.append(prev)
    return keys


class PrefixCache:
    """Prefix caching over one `BlockPool`: registers the computed blocks of sequences'
    chains in the pool's key index, matches prompts against it, keeps the hit counters and
    drives the host tier.

    The pool owns the blocks' lifetimes and the key index (reference counts, LRU eviction
    order, key <-> block); `chains` (the manager's `PrefixChains`) owns each sequence's keys
    and registration progress. Blocks the pool evicts reach the tier through
    `BlockPool.drain_evicted`, drained whenever the tier is used (`tier`), so the tier sees
    them in the order they happened, before anything else it is asked.

    `events` is the sink the pool and the tier report to (the same one), used here for the
    parents of registered keys and for `reset`.
    """

    def __init__(self, pool: BlockPool, block_size: int, chains: PrefixChains,
                 tier: HostPrefixTier | None = None, write_through: bool = False, *,
                 events: KVEventSink | None = None, key_tag: Hashable | None = None) -> None:
        self._pool = pool
        # A group of a HybridKVCacheManager other than group 0 registers its blocks in the
        # shared pool under `(key_tag, key)`: the same prefix has one block per group.
        self.key_tag = key_tag
        self._events = events
        self.block_size = block_size
        self.chains = chains
        self._tier = tier
        self.write_through = write_through and tier is not None
        if tier is not None:
            pool.record_evictions()
        self.queried_blocks = 0
        self.gpu_hit_blocks = 0
        self.cpu_hit_blocks = 0

    def __len__(self) -> int:
        return self._pool.num_cached

    @property
    def tier(self) -> HostPrefixTier | None:
        """The host tier (None without one), told first of the blocks evicted since."""
        tier = self._tier
        if tier is not None:
            keys, blocks = self._pool.drain_evicted()
            if keys:
                tier.offload_many(keys, blocks)
        return tier

    @property
    def hit_blocks(self) -> int:
        """Queried blocks served from either tier (GPU hits and blocks loaded from host)."""
        return self.gpu_hit_blocks + self.cpu_hit_blocks

    @property
    def hit_rate(self) -> float:
        """Hit blocks / queried blocks over the cache's life (0.0 before any query)."""
        return self.hit_blocks / self.queried_blocks if self.queried_blocks else 0.0

    @property
    def offloaded_blocks(self) -> int:
        """Blocks copied to the host tier (0 without one)."""
        tier = self.tier
        return 0 if tier is None else tier.offloaded_blocks

    @property
    def loaded_blocks(self) -> int:
        """Blocks copied back from the host tier (0 without one)."""
        tier = self.tier
        return 0 if tier is None else tier.loaded_blocks

    def key_of(self, block: int) -> Hashable | None:
        """The key a cached block is registered under, or None."""
        return self._pool.key_of(block)

    def block_of(self, key: Hashable) -> int | None:
        """The cached block registered under `key`, or None."""
        return self._pool.block_of(key)

    # ---- lookups ------------------------------------------------------------------------
    def match(self, keys: Sequence[Hashable], max_blocks: int) -> list[int]:
        """Blocks of the longest cached prefix of `keys`, at most `max_blocks`; no side effects.

        Stops at the first miss: a later block's KV is only valid after the same prefix.
        """
        return self._pool.match(self._tagged(keys), max_blocks)

    def lookup(self, keys: Sequence[Hashable]) -> np.ndarray:
        """int32 `[len(keys)]`: each key's cached block, or -1 (`NULL_BLOCK`) where none;
        no side effects. A window group's hit needs only some blocks, not a leading run."""
        get = self._pool.block_of
        return np.fromiter((-1 if b is None else b for b in map(get, self._tagged(keys))),
                           dtype=np.int32, count=len(keys))

    def _tagged(self, keys: Sequence[Hashable]) -> Sequence[Hashable]:
        tag = self.key_tag
        return keys if tag is None else [(tag, k) for k in keys]

    def match_tier(self, keys: Sequence[Hashable]) -> list[int]:
        """Host ids of the longest run of leading `keys` held by the host tier (the keys that
        follow a GPU match); empty without a tier."""
        tier = self.tier
        return [] if tier is None or not keys else tier.match(self._tagged(keys))

    def in_tier(self, keys: Sequence[Hashable]) -> np.ndarray:
        """bool `[len(keys)]`: which keys the host tier holds (a window group's hit needs
        only some blocks, not a leading run); all False without a tier."""
        tier = self.tier
        if tier is None:
            return np.zeros(len(keys), dtype=bool)
        return np.fromiter(map(tier.__contains__, self._tagged(keys)), dtype=bool,
                           count=len(keys))

    def pin_tier(self, keys: Sequence[Hashable]) -> None:
        """Keep the tier's blocks of `keys` until they are loaded (see `HostPrefixTier.pin`)."""
        tier = self.tier
        if tier is not None and keys:
            tier.pin(self._tagged(keys))

    def load(self, keys: Sequence[Hashable], gpu_blocks: np.ndarray) -> None:
        """Plan loading the tier's (pinned) blocks of `keys` into fresh `gpu_blocks`. They are
        registered on the GPU, like computed blocks, once `commit` says the step ran."""
        tier = self.tier
        if tier is not None and keys:
            tier.load(self._tagged(keys), gpu_blocks)

    def take_plans(self) -> tuple[np.ndarray, np.ndarray]:
        """The host tier's (offloads `[n, 2]` (gpu, host), loads `[m, 2]` (host, gpu))
        planned since the last call."""
        tier = self.tier
        return (EMPTY_PAIRS, EMPTY_PAIRS) if tier is None else tier.take_plans()

    def record_query(self, queried: int, gpu_hits: int, cpu_hits: int = 0) -> None:
        """Count one lookup for the hit rates: blocks asked for, found on the GPU, loaded
        from the host tier."""
        self.queried_blocks += queried
        self.gpu_hit_blocks += gpu_hits
        self.cpu_hit_blocks += cpu_hits

    def reset_counters(self) -> None:
        self.queried_blocks = self.gpu_hit_blocks = self.cpu_hit_blocks = 0

    def reset(self) -> bool:
        """Forget every cached key, on the GPU and in the host tier, and report `cleared`.
        Refused (False, nothing changed) while a cached block is in use or a load from the
        tier is pending: a sequence still reads them. Rows' chains keep their cursors; their
        registered blocks are simply no longer shared. Hit counters are kept."""
        pool, tier = self._pool, self.tier  # reading `tier` drains pending evictions into it
        if pool.num_cached != pool.num_evictable or (tier is not None and tier.pinned()):
            return False
        if tier is not None:
            tier.clear()
        pool.clear_cached()
        events = self._events
        if events is not None and events.active:
            events.cleared()
        return True

    # ---- registering computed blocks ----------------------------------------------------
    def commit_candidates(self, rows: np.ndarray, num_computed: np.ndarray) -> np.ndarray:
        """Indices into `rows` of rows with blocks to register (see `PrefixChains`)."""
        return self.chains.commit_candidates(rows, num_computed)

    def commit_batch(self, rows: np.ndarray, num_computed: np.ndarray, table: np.ndarray) -> int:
        """`commit` for candidate rows (from `commit_candidates`); `table` is the int32
        `[rows, width]` table array the rows index. The decode step's case, one block just
        filled whose key comes from the tokens recorded for it, is done for all such rows
        with one gather of their tokens and one write of their cached flags; others go
        through `commit` one by one. Returns the blocks registered."""
        simple = self.chains.split_simple(rows, num_computed)
        added = 0
        for i in np.flatnonzero(~simple).tolist():
            row = int(rows[i])
            added += self.commit(row, table[row], int(num_computed[i]))
        if not simple.any():
            return added
        filled, logical, keys = self.chains.extend_filled(rows[simple])
        if not keys:
            return added
        parents = None
        events = self._events
        if events is not None and events.active:
            parents = [self._parent(row, i) for row, i in zip(filled.tolist(),
                                                              logical.tolist(), strict=True)]
        return added + self._register(keys, table[filled, logical].tolist(), parents)

    def commit(self, row: int, blocks: np.ndarray, num_computed: int) -> int:
        """Register the row's full blocks among its first `num_computed` computed tokens;
        `blocks` is the row's table (int32). Returns how many blocks were registered."""
        todo = self.chains.advance(row, blocks.size, num_computed)
        if todo is None:
            return 0
        start, keys = todo
        parents = None
        events = self._events
        if events is not None and events.active:
            parents = [self._parent(row, start), *keys[:-1]]
        return self._register(keys, blocks[start : start + len(keys)].tolist(), parents)

    def _parent(self, row: int, index: int) -> Hashable | None:
        """The key before the row's `index`-th block key (None for the first block)."""
        if index == 0:
            return None
        keys = self.chains.keys(row)
        return None if keys is None else keys[index - 1]

    def _register(self, keys: Sequence[Hashable], blocks: list[int],
                  parents: Sequence[Hashable | None] | None = None) -> int:
        """Cache in-use full blocks under their keys in the pool (copying them to the tier
        too when it writes through); returns how many were cached. `parents` (pairwise, the
        key before each) is only for the events sink."""
        if self.key_tag is not None:  # a group's blocks: released window entries are null
            keep = [i for i, b in enumerate(blocks) if b >= 0]
            if len(keep) < len(blocks):
                keys, blocks = [keys[i] for i in keep], [blocks[i] for i in keep]
                parents = None if parents is None else [parents[i] for i in keep]
            keys = self._tagged(keys)
        fresh = self._pool.register(keys, blocks, parents)
        if fresh and self.write_through:
            pool = self._pool
            self.tier.offload_many([pool.key_of(b) for b in fresh], fresh)  # type: ignore[union-attr]  # write_through implies a tier
        return len(fresh)
