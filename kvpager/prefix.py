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
it is full, and appends only ever write into the partial tail block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

import numpy as np

from kvpager.blocks import BlockPool

_ROOT = b"kvpager-prefix-v1"


def hash_block_tokens(
    token_ids: Sequence[int] | np.ndarray, block_size: int, parent: bytes | None = None
) -> list[bytes]:
    """Chained 16-byte keys of the *full* blocks of `token_ids` (a trailing partial block has
    none). `parent` continues a chain from an earlier block's key."""
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    tokens = np.asarray(token_ids, dtype="<i8").reshape(-1)
    keys: list[bytes] = []
    prev = _ROOT if parent is None else parent
    for start in range(0, tokens.size - block_size + 1, block_size):
        digest = hashlib.blake2b(prev, digest_size=16)
        digest.update(tokens[start : start + block_size].tobytes())
        prev = digest.digest()
        keys.append(prev)
    return keys


class PrefixCache:
    """Map from chained block keys to cached physical blocks of one `BlockPool`.

    The pool owns the blocks' lifetimes (reference counts, LRU eviction order); this class
    owns the key <-> block maps and the hit counters, and forgets a key when the pool evicts
    its block.
    """

    def __init__(self, pool: BlockPool) -> None:
        self._pool = pool
        self._block_of: dict[Hashable, int] = {}
        self._key_of: dict[int, Hashable] = {}
        pool.set_evict_callback(self._forget)
        self.queried_blocks = 0
        self.hit_blocks = 0

    def __len__(self) -> int:
        return len(self._block_of)

    @property
    def hit_rate(self) -> float:
        """Hit blocks / queried blocks over the cache's life (0.0 before any query)."""
        return self.hit_blocks / self.queried_blocks if self.queried_blocks else 0.0

    def key_of(self, block: int) -> Hashable | None:
        """The key a cached block is registered under, or None."""
        return self._key_of.get(block)

    def match(self, keys: Sequence[Hashable], max_blocks: int) -> list[int]:
        """Blocks of the longest cached prefix of `keys`, at most `max_blocks`; no side effects.

        Stops at the first miss: a later block's KV is only valid after the same prefix.
        """
        hits: list[int] = []
        for key in keys[:max_blocks]:
            block = self._block_of.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_query(self, queried: int, hit: int) -> None:
        """Count one lookup for the hit rate."""
        self.queried_blocks += queried
        self.hit_blocks += hit

    def register(self, block: int, key: Hashable) -> bool:
        """Cache an in-use full block under `key`.

        Returns False, and caches nothing, when `key` is already cached under another block
        (two sequences computed the same prefix at once): the duplicate stays private and is
        simply freed later.
        """
        if key in self._block_of:
            return False
        self._block_of[key] = block
        self._key_of[block] = key
        self._pool.mark_cached(block)
        return True

    def _forget(self, block: int) -> None:
        key = self._key_of.pop(block)
        del self._block_of[key]

    def reset_counters(self) -> None:
        self.queried_blocks = self.hit_blocks = 0
