"""Which blocks an engine holds, and where, rebuilt from its KV events.

This is what a KV-aware router keeps per engine (llm-d's precise prefix index, Dynamo's
radix tree, kept flat here): replaying a manager's events from its start gives exactly the
keys its GPU pool has registered (medium "GPU") and its host tier holds ("CPU").
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from kvpager.events.types import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEvent


class KVEventIndex:
    """Keys held per medium, as the events say.

    Args:
        strict: raise `ValueError` on an event that contradicts the index (a key stored twice
            in one medium, or removed from a medium that does not hold it): for checking an
            event source; a consumer that joins a stream late wants False (ignore them).
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._held: dict[str, set[Hashable]] = {}
        self.parent_of: dict[Hashable, Hashable | None] = {}
        self.num_events = 0

    def __call__(self, event: KVEvent) -> None:
        """`apply`, so an index can subscribe to a `KVEventBus` directly."""
        self.apply(event)

    def apply(self, event: KVEvent) -> None:
        """Update the index with one event."""
        self.num_events += 1
        if isinstance(event, BlockStored):
            held = self._held.setdefault(event.medium or "", set())
            parent = event.parent_block_hash
            for key in event.block_hashes:
                if self.strict and key in held:
                    raise ValueError(f"BlockStored: {event.medium} already holds {key!r}")
                held.add(key)
                if parent is not None or key not in self.parent_of:
                    self.parent_of[key] = parent
                parent = key
        elif isinstance(event, BlockRemoved):
            held = self._held.setdefault(event.medium or "", set())
            for key in event.block_hashes:
                if self.strict and key not in held:
                    raise ValueError(f"BlockRemoved: {event.medium} does not hold {key!r}")
                held.discard(key)
                if not any(key in other for other in self._held.values()):
                    self.parent_of.pop(key, None)
        elif isinstance(event, AllBlocksCleared):
            self._held.clear()
            self.parent_of.clear()
        else:
            raise TypeError(f"not a KV event: {type(event).__name__}")

    def apply_all(self, events: Iterable[KVEvent] | EventBatch) -> None:
        """Apply events in order (a list or an `EventBatch`)."""
        for event in events.events if isinstance(events, EventBatch) else events:
            self.apply(event)

    def keys(self, medium: str) -> set[Hashable]:
        """The keys `medium` holds (a copy)."""
        return set(self._held.get(medium, ()))

    def media_of(self, key: Hashable) -> set[str]:
        """The media holding `key`."""
        return {medium for medium, held in self._held.items() if key in held}

    def prefix_length(self, keys: Sequence[Hashable], medium: str | None = None) -> int:
        """How many leading `keys` are held (in `medium`, or in any medium): the blocks a
        request with these chained keys would find cached."""
        media = list(self._held.values()) if medium is None else [
            self._held.get(medium, set())]
        for i, key in enumerate(keys):
            if not any(key in held for held in media):
                return i
        return len(keys)


__all__ = ["KVEventIndex"]
