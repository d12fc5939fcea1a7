"""Prefix-cache keys of a request's full KV blocks, from whatever prefix identity the trace
gives.

The memory manager's prefix cache needs one key per full prompt block such that **equal keys
imply equal token prefixes** (up to the end of that block): the KV of a block depends on
every token before it. Traces state identity in three ways, all reduced here to one key
space of Python-friendly int64s:

    key = (node << 32) | end

`node` is a dense id interned by this keyer for an exact *prefix path*, and `end` a token
offset measured from the start of that node's span:

- GROUP (`prefix_group` + `prefix_tokens` = s): a block ending at token e <= s gets
  node = the group's node, end = e; the group promises equal tokens [0, s), hence [0, e).
- HASHES (one id per hash block of H tokens, e.g. Mooncake's 512): hash block h gets the
  node of the chain (id_0, ..., id_h), interned as (node of chain up to h-1, id_h), so two
  requests get the same node only if all their ids up to h agree; a KV block ending at e
  lies in hash block h = (e - 1) // H and gets end = e - h H. Any KV block size works,
  including ones that do not divide H. (Mooncake ids are already chained; chaining again
  changes nothing for them and makes arbitrary, unchained ids safe.)
- TOKENS: KV block j gets the node interned from (node of block j-1, its token ids as
  bytes), end = 0: exact token comparison, no hash collisions.
- Everything else (NONE, blocks past a group's shared part or past the hashed blocks) gets
  a node private to the request, end = e: it can only ever match the request itself, which
  is what a recompute after preemption should find in the cache.

Interning (dicts, not hashes) makes equality exact; the price is that keys are only
comparable within one keyer, i.e. one trace at one block size. Node ids depend on the order
requests are first keyed; equality does not.

Only blocks entirely inside the prompt are keyed (prompt_tokens // block_size of them): the
block holding the last prompt token is still written by decoding when the prompt does not
end on a block boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kvpager.sim.traces.trace import PrefixKind

if TYPE_CHECKING:
    from kvpager.sim.traces.trace import Trace

_GROUP, _HASHES, _TOKENS = int(PrefixKind.GROUP), int(PrefixKind.HASHES), int(PrefixKind.TOKENS)
_SHIFT = 32
_MAX_END = 1 << _SHIFT
_MAX_NODE = 1 << 31


class BlockKeyer:
    """Keys of the full prompt blocks of one trace's requests at one KV block size."""

    def __init__(self, trace: Trace, block_size: int) -> None:
        if type(block_size) is not int or block_size <= 0:
            raise ValueError(f"block_size: expected an integer > 0, got {block_size!r}")
        self.trace = trace
        self.block_size = block_size
        self._chain: dict[tuple[int, object], int] = {}
        self._groups: dict[int, int] = {}
        self._own: dict[int, int] = {}
        self._next = 1

    def _new(self) -> int:
        node = self._next
        if node >= _MAX_NODE:
            raise OverflowError("more than 2**31 distinct prefix nodes in one trace")
        self._next += 1
        return node

    def _own_node(self, i: int) -> int:
        node = self._own.get(i)
        if node is None:
            node = self._own[i] = self._new()
        return node

    def _intern(self, key: tuple[int, object]) -> int:
        node = self._chain.get(key)
        if node is None:
            node = self._chain[key] = self._new()
        return node

    def num_blocks(self, i: int) -> int:
        """How many full prompt blocks request i has (= len(keys(i)))."""
        return int(self.trace.prompt_tokens[i]) // self.block_size

    def keys(self, i: int) -> np.ndarray:
        """int64 [prompt_tokens // block_size] keys of request i's full prompt blocks."""
        trace, bs = self.trace, self.block_size
        prompt = int(trace.prompt_tokens[i])
        count = prompt // bs
        if prompt >= _MAX_END:
            raise ValueError(f"request {i}: prompt_tokens {prompt} >= 2**32 cannot be keyed")
        ends = np.arange(1, count + 1, dtype=np.int64) * bs
        pre = trace.prefix
        kind = int(pre.kind[i])
        if kind == _GROUP:
            shared = int(pre.shared_tokens[i]) // bs
            group = int(pre.group[i])
            node = self._groups.get(group)
            if node is None:
                node = self._groups[group] = self._new()
            nodes = np.full(count, node, dtype=np.int64)
            nodes[shared:] = self._own_node(i) if shared < count else 0
            return (nodes << _SHIFT) | ends
        if kind == _HASHES:
            return self._hash_keys(i, ends, int(pre.hash_block_size[i]))
        if kind == _TOKENS:
            tokens = pre.row(i)
            parent, nodes = 0, np.empty(count, dtype=np.int64)
            for j in range(count):
                parent = self._intern((parent, tokens[j * bs : (j + 1) * bs].tobytes()))
                nodes[j] = parent
            return nodes << _SHIFT
        return (np.int64(self._own_node(i)) << _SHIFT) | ends

    def _hash_keys(self, i: int, ends: np.ndarray, size: int) -> np.ndarray:
        ids = self.trace.prefix.row(i).tolist()
        # The root names the hash block size: equal ids over different spans are not equal.
        parent, chain = self._intern((0, ("hash_block_size", size))), []
        for label in ids:
            parent = self._intern((parent, label))
            chain.append(parent)
        h = (ends - 1) // size
        covered = h < len(chain)
        nodes = np.full(len(ends), 0, dtype=np.int64)
        if len(chain):
            nodes[covered] = np.asarray(chain, dtype=np.int64)[h[covered]]
        offsets = ends - h * size
        if not bool(covered.all()):
            nodes[~covered] = self._own_node(i)
            offsets[~covered] = ends[~covered]
        return (nodes << _SHIFT) | offsets

    def coverage(self, i: int) -> list[tuple[int, int]]:
        """(node, blocks) pairs of request i's shareable prompt blocks, without building them:
        request i has the keys of that node's first `blocks` KV blocks (the blocks keyed
        by a node always form the same sequence, so a longer prompt covers a longer prefix
        of it). Private blocks, which no other request can have, are left out.

        Work and memory are O(hash ids or prompt blocks of token ids in the file), not
        O(prompt tokens / block size): a few bytes of `prefix_tokens` cannot cost
        gigabytes (`kvpager.sim.traces.summary` counts reuse with this).
        """
        trace, bs = self.trace, self.block_size
        prompt = int(trace.prompt_tokens[i])
        count = prompt // bs
        pre = trace.prefix
        kind = int(pre.kind[i])
        if kind == _GROUP:
            shared = min(int(pre.shared_tokens[i]) // bs, count)
            group = int(pre.group[i])
            node = self._groups.get(group)
            if node is None:
                node = self._groups[group] = self._new()
            return [(node, shared)] if shared else []
        if kind == _HASHES:
            size = int(pre.hash_block_size[i])
            parent, out = self._intern((0, ("hash_block_size", size))), []
            for h, label in enumerate(pre.row(i).tolist()):
                parent = self._intern((parent, label))
                # KV blocks ending in (h * size, (h + 1) * size], within the prompt
                blocks = min((h + 1) * size, prompt) // bs - (h * size) // bs
                if blocks > 0:
                    out.append((parent, blocks))
            return out
        if kind == _TOKENS:
            return [(int(node), 1) for node in self.keys(i) >> _SHIFT]
        return []

    def keys_list(self, i: int) -> list[int]:
        """`keys(i)` as Python ints, the form dict-based prefix caches hash fastest."""
        return self.keys(i).tolist()
