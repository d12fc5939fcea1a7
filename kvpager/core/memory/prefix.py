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
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

import numpy as np

from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.prefix_tier import HostPrefixTier
from kvpager.core.plans import EMPTY_PAIRS

_ROOT = b"kvpager-prefix-v1"
_blake2b = hashlib.blake2b


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
    prev = _ROOT if parent is None else parent
    for start in range(0, len(raw) - step + 1, step):
        prev = chain_key(prev, raw[start : start + step])
        keys.append(prev)
    return keys


def chain_key(parent: bytes | None, block_tokens: bytes) -> bytes:
    """The key of a block: BLAKE2b-128 of its parent's key (a root constant for the first
    block) and its token ids as little-endian int64 bytes."""
    return _blake2b((_ROOT if parent is None else parent) + block_tokens,
                    digest_size=16).digest()


class PrefixCache:
    """Chained block keys -> cached physical blocks of one `BlockPool`, and each sequence's
    chain.

    The pool owns the blocks' lifetimes (reference counts, LRU eviction order); this class
    owns the key <-> block maps, the hit counters, and per sequence (by the manager's row)
    the keys of its full blocks, how many of them are registered, and the tokens of its
    partial block that will make its next key. The manager calls the per-sequence hooks
    (`start`, `fork`, `drop`, `truncate`, `record_tokens`, `commit`) as sequences change.

    Per-row state lives in arrays so that a decode step of a whole batch records its tokens
    with one array write; Python work is done only for the rows whose block just filled.
    """

    def __init__(self, pool: BlockPool, block_size: int, tier: HostPrefixTier | None = None,
                 write_through: bool = False) -> None:
        self._pool = pool
        self.block_size = block_size
        self.tier = tier
        self.write_through = write_through and tier is not None
        self._block_of: dict[Hashable, int] = {}
        self._key_of: dict[int, Hashable] = {}
        pool.set_evict_callback(self._forget)
        self.queried_blocks = 0
        self.gpu_hit_blocks = 0
        self.cpu_hit_blocks = 0
        # Per row: the keys of its full blocks (prompt keys, then keys made from recorded
        # tokens), how many are registered, whether the chain can go on, and the tokens
        # recorded past its last key (int64, -1 where unknown).
        self._keys: dict[int, list[Hashable]] = {}
        self._num_keys = np.zeros(64, dtype=np.int64)
        self._registered = np.zeros(64, dtype=np.int64)
        self._chained = np.zeros(64, dtype=bool)
        self._pending = np.full((64, 2 * block_size), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._block_of)

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
        return 0 if self.tier is None else self.tier.offloaded_blocks

    @property
    def loaded_blocks(self) -> int:
        """Blocks copied back from the host tier (0 without one)."""
        return 0 if self.tier is None else self.tier.loaded_blocks

    def key_of(self, block: int) -> Hashable | None:
        """The key a cached block is registered under, or None."""
        return self._key_of.get(block)

    def block_of(self, key: Hashable) -> int | None:
        """The cached block registered under `key`, or None."""
        return self._block_of.get(key)

    # ---- lookups ------------------------------------------------------------------------
    def match(self, keys: Sequence[Hashable], max_blocks: int) -> list[int]:
        """Blocks of the longest cached prefix of `keys`, at most `max_blocks`; no side effects.

        Stops at the first miss: a later block's KV is only valid after the same prefix.
        """
        hits = list(map(self._block_of.get, keys[:max_blocks]))
        if None in hits:
            del hits[hits.index(None) :]
        return hits  # type: ignore[return-value]

    def match_tier(self, keys: Sequence[Hashable]) -> list[int]:
        """Host ids of the longest run of leading `keys` held by the host tier (the keys that
        follow a GPU match); empty without a tier."""
        return [] if self.tier is None or not keys else self.tier.match(keys)

    def pin_tier(self, keys: Sequence[Hashable]) -> None:
        """Keep the tier's blocks of `keys` until they are loaded (see `HostPrefixTier.pin`)."""
        if self.tier is not None and keys:
            self.tier.pin(keys)

    def load(self, keys: Sequence[Hashable], gpu_blocks: np.ndarray) -> None:
        """Plan loading the tier's (pinned) blocks of `keys` into fresh `gpu_blocks`. They are
        registered on the GPU, like computed blocks, once `commit` says the step ran."""
        if self.tier is not None and keys:
            self.tier.load(keys, gpu_blocks)

    def take_plans(self) -> tuple[np.ndarray, np.ndarray]:
        """The host tier's (offloads `[n, 2]` (gpu, host), loads `[m, 2]` (host, gpu))
        planned since the last call."""
        return (EMPTY_PAIRS, EMPTY_PAIRS) if self.tier is None else self.tier.take_plans()

    def record_query(self, queried: int, gpu_hits: int, cpu_hits: int = 0) -> None:
        """Count one lookup for the hit rates: blocks asked for, found on the GPU, loaded
        from the host tier."""
        self.queried_blocks += queried
        self.gpu_hit_blocks += gpu_hits
        self.cpu_hit_blocks += cpu_hits

    def reset_counters(self) -> None:
        self.queried_blocks = self.gpu_hit_blocks = self.cpu_hit_blocks = 0

    # ---- per-sequence chains ------------------------------------------------------------
    def start(self, row: int, keys: list[Hashable], num_hits: int,
              tail_tokens: np.ndarray | None) -> None:
        """A new sequence at `row`: `keys` of its full prompt blocks, the first `num_hits`
        already cached (shared), and the int64 tokens of its partial last block, or None when
        its tokens are unknown (the chain then ends with the prompt)."""
        self._ensure_rows(row + 1)
        self._keys[row] = keys
        self._num_keys[row] = len(keys)
        self._registered[row] = num_hits
        chained = tail_tokens is not None and (not keys or isinstance(keys[-1], bytes))
        self._chained[row] = chained
        self._pending[row] = -1
        if chained and tail_tokens.size:
            self._pending[row, : tail_tokens.size] = tail_tokens

    def fork(self, parents: np.ndarray, children: np.ndarray) -> None:
        """Children start with copies of their parents' chains (int64 rows, pairwise)."""
        self._ensure_rows(int(children.max()) + 1)
        for parent, child in zip(parents.tolist(), children.tolist(), strict=True):
            keys = self._keys.get(parent)
            if keys is None:
                self._keys.pop(child, None)
            else:
                self._keys[child] = list(keys)
        for name in ("_num_keys", "_registered", "_chained", "_pending"):
            arr = getattr(self, name)
            arr[children] = arr[parents]

    def drop(self, rows: np.ndarray | list[int]) -> None:
        """Forget the chains of freed rows."""
        for row in np.asarray(rows).tolist():
            self._keys.pop(row, None)
        rows = np.asarray(rows, dtype=np.int64)
        self._num_keys[rows] = 0
        self._registered[rows] = 0
        self._chained[rows] = False

    def drop_row(self, row: int) -> None:
        """`drop` for one row, with scalar writes (a per-request free)."""
        self._keys.pop(row, None)
        self._num_keys[row] = 0
        self._registered[row] = 0
        self._chained[row] = False

    def truncate(self, row: int, num_tokens: int) -> None:
        """The row keeps only its first `num_tokens` tokens: keys and registrations past them
        go (a registered block is never written again). When a key that covered dropped
        tokens is cut, the tokens it was made of are gone and the chain ends here."""
        keys = self._keys.get(row)
        if keys is None:
            return
        full = num_tokens // self.block_size
        if len(keys) > full:
            del keys[full:]
            self._num_keys[row] = full
            self._chained[row] = False
        self._registered[row] = min(int(self._registered[row]), full)

    def record_tokens(self, rows: np.ndarray, positions: np.ndarray,
                      tokens: np.ndarray | None) -> None:
        """Tokens `[B, k]` (int64, -1 = unknown) appended at positions `positions[b] ..
        positions[b] + k - 1` of rows `[B]`; None ends the rows' chains (tokens unknown)."""
        if tokens is None:
            self._chained[rows] = False
            return
        chained = self._chained.take(rows)
        if not chained.any():
            return
        if not chained.all():
            rows, positions, tokens = rows[chained], positions[chained], tokens[chained]
        k = tokens.shape[1]
        offset = positions - self._num_keys.take(rows) * self.block_size
        need = int(offset.max()) + k
        if need > self._pending.shape[1]:
            self._grow_pending(need)
        at = rows * self._pending.shape[1] + offset  # flat index: one scatter for the batch
        if k == 1:
            self._pending.ravel()[at] = tokens[:, 0]
        else:
            self._pending.ravel()[(at[:, None] + np.arange(k)).ravel()] = tokens.ravel()

    def record_token(self, row: int, position: int, token: int) -> None:
        """`record_tokens` for one token of one row, with scalar writes (a per-sequence
        append)."""
        if self._chained.item(row):
            offset = position - self._num_keys.item(row) * self.block_size
            if offset >= self._pending.shape[1]:
                self._grow_pending(offset + 1)
            self._pending[row, offset] = token

    def end_chain(self, row: int) -> None:
        """The row appended tokens it did not name: no more keys for it."""
        self._chained[row] = False

    def commit_candidates(self, rows: np.ndarray, num_computed: np.ndarray) -> np.ndarray:
        """Rows (of `rows`) that have blocks to register now that their first `num_computed`
        tokens are computed: the few a decode step fills, found with array operations."""
        done = num_computed // self.block_size
        cap = np.where(self._chained[rows], done, np.minimum(done, self._num_keys[rows]))
        return np.flatnonzero(cap > self._registered[rows])

    def commit_batch(self, rows: np.ndarray, num_computed: np.ndarray, table: np.ndarray) -> int:
        """`commit` for candidate rows (from `commit_candidates`); `table` is the int32
        `[rows, width]` table array the rows index. The decode step's case, one block just
        filled whose key comes from the tokens recorded for it, is done for all such rows
        with one gather of their tokens and one write of their cached flags; others go
        through `commit` one by one. Returns the blocks registered."""
        bs = self.block_size
        reg = self._registered[rows]
        simple = ((num_computed // bs == reg + 1) & (self._num_keys[rows] == reg)
                  & self._chained[rows])
        added = 0
        for i in np.flatnonzero(~simple).tolist():
            row = int(rows[i])
            added += self.commit(row, table[row], int(num_computed[i]))
        if not simple.any():
            return added
        rows, reg = rows[simple], reg[simple]
        tokens = self._pending[rows, :bs]
        known = (tokens >= 0).all(axis=1)
        if not known.all():
            self._chained[rows[~known]] = False
            rows, reg, tokens = rows[known], reg[known], tokens[known]
        blocks = table[rows, reg].tolist()
        raw = tokens.astype("<i8").tobytes()
        step = 8 * bs
        fresh: list[int] = []
        block_of, key_of, keys_of = self._block_of, self._key_of, self._keys
        for row, block, start in zip(rows.tolist(), blocks, range(0, len(raw), step),
                                     strict=True):
            keys = keys_of[row]
            key = chain_key(keys[-1] if keys else None, raw[start : start + step])
            keys.append(key)
            if key not in block_of:
                block_of[key] = block
                key_of[block] = key
                fresh.append(block)
        self._num_keys[rows] = reg + 1
        self._registered[rows] = reg + 1
        self._pending[rows, :-bs] = self._pending[rows, bs:]
        self._pending[rows, -bs:] = -1
        if fresh:
            self._pool.mark_cached_many(np.asarray(fresh, dtype=np.int64))
            if self.write_through:
                self.tier.offload_many(list(map(key_of.__getitem__, fresh)),  # type: ignore
                                       fresh)
        return added + len(fresh)

    def commit(self, row: int, blocks: np.ndarray, num_computed: int) -> int:
        """Register the row's full blocks among its first `num_computed` computed tokens;
        `blocks` is the row's table (int32). Returns how many blocks were registered."""
        keys = self._keys.get(row)
        if keys is None:
            return 0
        done = min(num_computed // self.block_size, blocks.size)
        start = self._registered.item(row)
        if done <= start:
            return 0
        if len(keys) < done and self._chained.item(row):
            while len(keys) < done and self._extend(row, keys):
                pass
        done = min(done, len(keys))
        start = self._registered.item(row)
        if done <= start:
            return 0
        self._registered[row] = done
        return self._register_many(blocks[start:done].tolist(), keys[start:done])

    def _extend(self, row: int, keys: list[Hashable]) -> bool:
        """Make the row's next key from its recorded tokens; False if any is unknown."""
        bs = self.block_size
        tokens = self._pending[row, :bs]
        if (tokens < 0).any():
            self._chained[row] = False
            return False
        keys.append(chain_key(keys[-1] if keys else None, tokens.astype("<i8").tobytes()))
        self._num_keys[row] = len(keys)
        pending = self._pending[row]
        pending[:-bs] = pending[bs:].copy()
        pending[-bs:] = -1
        return True

    def _register_many(self, blocks: list[int], keys: list[Hashable]) -> int:
        """Cache in-use full blocks under their keys; returns how many were cached. A key
        already cached under another block (two sequences computed the same prefix at once)
        caches nothing: the duplicate stays private and is simply freed later."""
        block_of = self._block_of
        fresh = [(k, b) for k, b in zip(keys, blocks, strict=True) if k not in block_of]
        if not fresh:
            return 0
        if len(fresh) > 1 and len({k for k, _ in fresh}) < len(fresh):
            fresh = list(dict(reversed(fresh)).items())[::-1]  # a key twice: its first block
        block_of.update(fresh)
        self._key_of.update((b, k) for k, b in fresh)
        ids = [b for _, b in fresh]
        self._pool.mark_cached_many(np.asarray(ids, dtype=np.int64))
        if self.write_through:
            self.tier.offload_many([k for k, _ in fresh], ids)  # type: ignore[union-attr]
        return len(fresh)

    def _forget(self, blocks: list[int]) -> None:
        """The pool evicts cached blocks for reuse: their keys go (to the host tier, with a
        copy of their content, when there is one)."""
        keys = list(map(self._key_of.pop, blocks))
        block_of = self._block_of
        for key in keys:
            del block_of[key]
        if self.tier is not None:
            self.tier.offload_many(keys, blocks)

    def _ensure_rows(self, rows: int) -> None:
        size = self._num_keys.size
        if rows <= size:
            return
        new = max(rows, 2 * size)
        self._num_keys = np.concatenate([self._num_keys, np.zeros(new - size, np.int64)])
        self._registered = np.concatenate([self._registered, np.zeros(new - size, np.int64)])
        self._chained = np.concatenate([self._chained, np.zeros(new - size, bool)])
        grown = np.full((new, self._pending.shape[1]), -1, dtype=np.int64)
        grown[:size] = self._pending
        self._pending = grown

    def _grow_pending(self, width: int) -> None:
        grown = np.full((self._pending.shape[0], max(width, 2 * self._pending.shape[1])), -1,
                        dtype=np.int64)
        grown[:, : self._pending.shape[1]] = self._pending
        self._pending = grown
