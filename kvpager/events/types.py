"""KV events as plain data, with vLLM's names and meaning (`vllm/distributed/kv_events.py`).

A consumer (a KV-aware router, a cache index) keeps, per engine, which blocks it holds and
where; these events are its feed:

- `BlockStored`: a medium now holds `block_hashes`, a run of consecutive blocks of one
  prefix chain (`block_hashes[i]` follows `block_hashes[i - 1]`), the first following
  `parent_block_hash` (None: the chain's first block, or not known);
- `BlockRemoved`: a medium no longer holds `block_hashes`;
- `AllBlocksCleared`: the engine dropped every block (a prefix-cache reset);
- `EventBatch`: the events of one publication, with its wall-clock time and data-parallel
  rank.

Hashes: kvpager emits the manager's own block keys unchanged, so an index built from the
events compares equal to `BlockPool.block_of` / the host tier: 16-byte BLAKE2b digests
(`bytes`) for blocks keyed from token ids, or the caller's `block_hashes` (e.g. a trace's int
ids). The ZMQ wire format can send digests as bytes or as unsigned 64-bit ints
(`kvpager.events.wire`). `token_ids` is empty: the manager hashes a prompt's tokens when it
arrives and keeps only the keys, so the tokens are not known when a block is registered.
`lora_id` is None (kvpager has no adapters). Media are "GPU" (the device pool) and "CPU"
(the host prefix tier).

These are dataclasses, not msgspec structs: `import kvpager.events` needs nothing beyond the
standard library, and only the wire format needs msgpack.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from kvpager.core.memory.event_sink import MEDIUM_CPU, MEDIUM_GPU


@dataclass(frozen=True, slots=True)
class BlockStored:
    """`medium` now holds the consecutive blocks `block_hashes` of one chain."""

    block_hashes: list[Hashable]
    parent_block_hash: Hashable | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM_GPU


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """`medium` no longer holds `block_hashes`."""

    block_hashes: list[Hashable]
    medium: str | None = MEDIUM_GPU


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """Every block the engine held, in every medium, is gone."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(slots=True)
class EventBatch:
    """The events of one publication, oldest first; `ts` is seconds since the epoch."""

    ts: float
    events: list[KVEvent] = field(default_factory=list)
    data_parallel_rank: int | None = None


__all__ = ["MEDIUM_CPU", "MEDIUM_GPU", "AllBlocksCleared", "BlockRemoved", "BlockStored",
           "EventBatch", "KVEvent"]
