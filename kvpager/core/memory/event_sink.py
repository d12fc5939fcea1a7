"""What the memory layer tells a KV-event sink: keys a medium starts or stops holding.

A router that routes by cache contents (llm-d's precise prefix scorer, Dynamo's KV router)
keeps an index of which blocks each engine holds, fed by the engine's KV events. The memory
layer is where those changes happen, so it reports them, through this small protocol:

- the GPU `BlockPool` reports keys it registers (`stored`) and keys it evicts (`removed`);
- the `HostPrefixTier` reports keys it starts holding and keys it drops, medium CPU;
- the `PrefixCache` reports a reset of both (`cleared`).

The protocol has no event objects in it: those, the subscriber API and the ZMQ publisher
live in `kvpager.events` (`KVEventBus` is the implementation), which this layer must not
import (`kvpager.core` depends on nothing outside it). Every hook is called only when the
sink says it is `active` (someone subscribed), so a manager without subscribers pays one
attribute read per registration or eviction and builds nothing.

Keys are the pool's own keys, unchanged: 16-byte BLAKE2b digests (`bytes`) for blocks hashed
from token ids, or the caller's `block_hashes` (Mooncake's int ids, ...). A consumer that
replays the events therefore holds exactly the keys `BlockPool.block_of` and the tier answer.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

#: The medium names of vLLM's KV events.
MEDIUM_GPU = "GPU"
MEDIUM_CPU = "CPU"


class KVEventSink(Protocol):
    """Receives the memory layer's changes of held keys (see the module docstring)."""

    @property
    def active(self) -> bool:
        """Whether anyone listens; the hooks below are called only while this is True."""
        ...

    def bind(self, block_size: int) -> None:
        """The manager's tokens per block, told once when the manager is built."""
        ...

    def stored(self, keys: Sequence[Hashable], parents: Sequence[Hashable | None] | None,
               medium: str) -> None:
        """`medium` now holds `keys` (in the order they were stored). `parents[i]` is the key
        of the block before `keys[i]` in its prefix chain (None: the first block, or not
        known); `parents=None`: none known."""
        ...

    def removed(self, keys: Sequence[Hashable], medium: str) -> None:
        """`medium` no longer holds `keys`."""
        ...

    def cleared(self) -> None:
        """Every medium dropped every key (a prefix-cache reset)."""
        ...


def sink_active(sink: KVEventSink | None) -> bool:
    """Whether `sink` exists and listens (the one test every hook makes)."""
    return sink is not None and sink.active


__all__ = ["MEDIUM_CPU", "MEDIUM_GPU", "KVEventSink", "sink_active"]
