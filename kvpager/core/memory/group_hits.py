"""Prefix hits across KV-cache groups: the longest prefix every group can serve.

A hit of `h` blocks means the first `h * block_size` prompt tokens need no computing, so
each group must already hold what any later query reads of them:

- full attention and MLA read every earlier key: all of blocks `0 .. h - 1` cached;
- a sliding window (or chunked local) group reads only from `first_needed_blocks(h *
  block_size)` on (what `window.release` would keep after computing those tokens): those
  blocks cached, the earlier entries of its table stay `NULL_BLOCK`.

Each group registers its blocks in the one shared pool under its own tagged keys
(`PrefixCache.key_tag`), so a group may have kept blocks another evicted. The hit is the
largest `h` on which all groups agree (vLLM intersects its groups' hits the same way): the
groups that need a leading run cap it, and each windowed group's test of every candidate
`h` is one prefix-sum comparison over its cached flags. With a host prefix tier (one for
all groups, keys tagged per group), `extend_into_tier` continues the hit by the same rules,
a block counting as held when the GPU or the tier has it; the tier's blocks are loaded into
fresh pages.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from kvpager.core.groups import NULL_BLOCK, ChunkedLocalSpec, GroupSpec, SlidingWindowSpec
from kvpager.core.memory.prefix import PrefixCache
from kvpager.core.memory.window import first_needed_blocks


def hit_start(spec: GroupSpec, num_hits: int, block_size: int) -> int:
    """First logical block of a hit of `num_hits` blocks that the group must hold."""
    if isinstance(spec, (SlidingWindowSpec, ChunkedLocalSpec)) and num_hits:
        tokens = np.asarray([num_hits * block_size], dtype=np.int64)
        return int(first_needed_blocks(spec, tokens, block_size)[0])
    return 0


def match_groups(caches: Sequence[PrefixCache], specs: Sequence[GroupSpec],
                 keys: list[Hashable], num_tokens: int, block_size: int
                 ) -> tuple[int, list[np.ndarray]]:
    """(h, heads): the hit length in blocks (at most `(num_tokens - 1) // block_size`, so
    the last prompt token is always computed) and, per group, the int32 `[h]` head of its
    table (cached block ids, `NULL_BLOCK` before a window's start). No side effects."""
    cap = min(len(keys), (num_tokens - 1) // block_size)
    windowed = [isinstance(s, (SlidingWindowSpec, ChunkedLocalSpec)) for s in specs]
    for cache, win in zip(caches, windowed, strict=True):
        if cap <= 0:
            break
        if not win:
            cap = len(cache.match(keys, cap))
    empty = np.zeros(0, dtype=np.int32)
    if cap <= 0:
        return 0, [empty] * len(caches)
    found = [cache.lookup(keys[:cap]) if win else None
             for cache, win in zip(caches, windowed, strict=True)]
    h = cap
    if any(windowed):
        candidates = np.arange(cap + 1, dtype=np.int64)
        ok = np.ones(cap + 1, dtype=bool)
        for spec, have in zip(specs, found, strict=True):
            if have is None:
                continue
            held = np.concatenate([[0], np.cumsum(have >= 0)])
            start = np.minimum(first_needed_blocks(spec, candidates * block_size,  # type: ignore[arg-type]
                                                   block_size), candidates)
            ok &= held[candidates] - held[start] == candidates - start
        h = int(np.flatnonzero(ok)[-1])  # h = 0 always passes
    heads = []
    for cache, spec, have in zip(caches, specs, found, strict=True):
        if have is None:
            heads.append(np.asarray(cache.match(keys, h), dtype=np.int32))
        else:
            head = have[:h].copy()
            head[: hit_start(spec, h, block_size)] = NULL_BLOCK
            heads.append(head)
    return h, heads


def extend_into_tier(caches: Sequence[PrefixCache], specs: Sequence[GroupSpec],
                     keys: list[Hashable], num_tokens: int, block_size: int,
                     num_hits: int, heads: list[np.ndarray]
                     ) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
    """Continue a GPU hit of `num_hits` blocks (`match_groups`' answer, `heads`) into the
    host prefix tier (shared by the groups, keys tagged per group), by the same rules with
    "held" meaning cached on the GPU or in the tier: the largest `h >= num_hits` every group
    can serve. Returns (h, heads, loads): per group the int32 `[h]` head (GPU block ids,
    `NULL_BLOCK` before a window's start and where the tier's copy must be loaded) and the
    int64 logical indices to load into fresh pages. No side effects."""
    cap = min(len(keys), (num_tokens - 1) // block_size)
    none = [np.zeros(0, dtype=np.int64)] * len(caches)
    if cap <= num_hits:
        return num_hits, heads, none
    on_gpu = [cache.lookup(keys[:cap]) for cache in caches]
    candidates = np.arange(cap + 1, dtype=np.int64)
    ok = candidates >= num_hits
    for cache, spec, have in zip(caches, specs, on_gpu, strict=True):
        held = np.concatenate([[0], np.cumsum((have >= 0) | cache.in_tier(keys[:cap]))])
        start = np.zeros(cap + 1, dtype=np.int64)
        if isinstance(spec, (SlidingWindowSpec, ChunkedLocalSpec)):
            start = np.minimum(first_needed_blocks(spec, candidates * block_size, block_size),
                               candidates)
        ok &= held[candidates] - held[start] == candidates - start
    h = int(np.flatnonzero(ok)[-1])  # num_hits always passes: the GPU serves it
    if h == num_hits:
        return num_hits, heads, none
    out, loads = [], []
    for spec, have in zip(specs, on_gpu, strict=True):
        head = have[:h].copy()
        first = hit_start(spec, h, block_size)
        head[:first] = NULL_BLOCK
        loads.append(np.flatnonzero(head[first:] < 0) + first)
        out.append(head)
    return h, out, loads


@dataclass
class GroupHit:
    """A prompt's prefix hit across groups: `num_hits` blocks (`gpu_hits` of them served
    by the GPU alone, the rest continued into the host tier); per group the int32
    `[num_hits]` head of its table (`NULL_BLOCK` before a window's start and at loads) and
    the int64 logical indices its tier loads fill."""

    num_hits: int
    gpu_hits: int
    heads: list[np.ndarray]
    loads: list[np.ndarray]


def match_prompt(caches: Sequence[PrefixCache | None], specs: Sequence[GroupSpec],
                 keys: list[Hashable], num_tokens: int, block_size: int, tier: bool
                 ) -> GroupHit:
    """`match_groups`, continued into the host tier (`extend_into_tier`) when `tier`; no
    hit without keys or without prefix caching (`caches` None)."""
    if not keys or caches[0] is None:
        return GroupHit(0, 0, [np.zeros(0, dtype=np.int32)] * len(caches),
                        [np.zeros(0, dtype=np.int64)] * len(caches))
    h, heads = match_groups(caches, specs, keys, num_tokens, block_size)  # type: ignore[arg-type]
    if not tier:
        return GroupHit(h, h, heads, [np.zeros(0, dtype=np.int64)] * len(caches))
    total, heads, loads = extend_into_tier(caches, specs, keys, num_tokens,  # type: ignore[arg-type]
                                           block_size, h, heads)
    return GroupHit(total, h, heads, loads)
