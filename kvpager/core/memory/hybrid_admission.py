"""A prompt's admission into every KV-cache group of a hybrid model: the pages it takes and
where they go.

The hit (`group_hits.match_prompt`: GPU pages every group serves, continued into the host
tier) decides both. Pages taken from the one pool: each group's blocks past the hit, the
fresh pages its tier loads fill, the hit pages that are free (cached, evictable: a hit
revives them) and the state pages. Placement keeps a hit safe from the call's own
evictions: the tier keys to load are pinned and every group's hit pages referenced before
any fresh page is taken; then each group's table is its head (hit pages, `NULL_BLOCK`
before a window's start, loaded pages) and its fresh pages.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from kvpager.core.groups import NULL_BLOCK
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.block_table import num_blocks_for
from kvpager.core.memory.group_hits import GroupHit
from kvpager.core.memory.manager import KVCacheManager, TokenIds


def pages_needed(pool: BlockPool, num_groups: int, num_tokens: int, block_size: int,
                 hit: GroupHit, state_pages: int) -> int:
    """Free pages of `pool` a prompt of `num_tokens` with `hit` takes (see the module)."""
    fresh = num_blocks_for(num_tokens, block_size) - hit.num_hits
    loads = sum(load.size for load in hit.loads)
    revived = sum(pool.count_free(h[h != NULL_BLOCK]) for h in hit.heads)
    return num_groups * fresh + loads + revived + state_pages


def place_prompt(managers: Sequence[KVCacheManager], pool: BlockPool, seq_id: Hashable,
                 num_tokens: int, keys: list[Hashable], token_ids: TokenIds | None,
                 hit: GroupHit, block_size: int) -> None:
    """Give the new sequence its rows in every group (the caller checked the prompt and
    that `pool` has `pages_needed`): pin the tier loads, reference the hit pages, take the
    fresh ones, plan the loads into the first of them, fill each group's row."""
    caches = [m.prefix_cache for m in managers]
    for cache, load in zip(caches, hit.loads, strict=True):
        if load.size:
            cache.pin_tier([keys[i] for i in load.tolist()])  # type: ignore[union-attr]
    if hit.num_hits:
        pool.touch(np.concatenate([h[h != NULL_BLOCK] for h in hit.heads]))
    rest = num_blocks_for(num_tokens, block_size) - hit.num_hits
    sizes = [rest + load.size for load in hit.loads]
    parts = np.split(pool.allocate(sum(sizes)), np.cumsum(sizes)[:-1])
    for m, cache, head, load, part in zip(managers, caches, hit.heads, hit.loads, parts,
                                          strict=True):
        registered = None
        if load.size:  # the tier's copies fill the first fresh pages
            head = head.copy()
            head[load] = part[: load.size]
            cache.load([keys[i] for i in load.tolist()], part[: load.size])  # type: ignore[union-attr]
            part, registered = part[load.size :], int(load[0])
        m.allocate_group_prompt(seq_id, num_tokens, head, part, keys, token_ids, registered)
