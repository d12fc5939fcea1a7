"""The in-process subscriber API: a `KVEventBus` is one manager's event source.

    bus = KVEventBus()
    manager = KVCacheManager(config, events=bus)
    unsubscribe = bus.subscribe(print)   # called with each event, as it happens

The bus implements the memory layer's `KVEventSink` protocol: the GPU pool, the host tier and
the prefix cache call its hooks with the keys they store and drop, and it turns them into
`BlockStored` / `BlockRemoved` / `AllBlocksCleared` objects for its subscribers. The hooks
are called only while `active` (at least one subscriber), so a bus nobody listens to costs
the manager one attribute read per registration or eviction and builds no objects.

Delivery is synchronous, in the order the changes happen, inside the manager call that made
them: a subscriber must be quick and must not call back into the manager. One that wants
batches (a publisher) collects them with a `KVEventLog` and takes them once per step. A
subscriber that raises cannot abort the manager's call halfway (which would leave blocks
neither free nor held): its exception is logged and kept in `errors`, and the other
subscribers still get the event.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence

from kvpager.events.types import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEvent

Subscriber = Callable[[KVEvent], None]
_log = logging.getLogger(__name__)


class KVEventBus:
    """One manager's KV events, delivered to subscribers (see the module docstring).

    Args:
        block_size: tokens per block; None (default) takes the manager's when it binds.
    """

    def __init__(self, block_size: int | None = None) -> None:
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(
                block_size, int) or block_size <= 0):
            raise ValueError(f"block_size must be an int > 0, got {block_size!r}")
        self.block_size = block_size
        self._subscribers: list[Subscriber] = []
        self.active = False
        self.num_events = 0
        #: the latest exceptions subscribers raised (at most 100), oldest first
        self.errors: deque[Exception] = deque(maxlen=100)
        self.num_errors = 0

    # ---- the subscriber API -------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event)` for every event from now on; returns a function that
        unsubscribes it."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self._subscribers.append(callback)
        self.active = True
        return lambda: self.unsubscribe(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling `callback` (a callback never subscribed is ignored)."""
        if callback in self._subscribers:
            self._subscribers.remove(callback)
        self.active = bool(self._subscribers)

    @property
    def num_subscribers(self) -> int:
        return len(self._subscribers)

    def emit(self, event: KVEvent) -> None:
        """Deliver one event to every subscriber, in subscription order."""
        self.num_events += 1
        for callback in tuple(self._subscribers):
            try:
                callback(event)
            except Exception as err:  # must not abort the manager's call halfway
                self.num_errors += 1
                self.errors.append(err)
                _log.exception("KV event subscriber %r raised on %r", callback, event)

    # ---- the memory layer's hooks (KVEventSink) ----------------------------------------
    def bind(self, block_size: int) -> None:
        """A manager with `block_size` tokens per block reports here.

        Raises:
            ValueError: the bus already serves another block size.
        """
        if self.block_size is not None and self.block_size != block_size:
            raise ValueError(f"events: this KVEventBus has block_size {self.block_size}, "
                             f"the manager {block_size}")
        self.block_size = block_size

    def stored(self, keys: Sequence[Hashable], parents: Sequence[Hashable | None] | None,
               medium: str) -> None:
        """One `BlockStored` per run of `keys` that chain (each key's parent is the key
        before it); parents not known: one event per key, parent None."""
        if not keys:
            return
        size = self.block_size or 0
        if parents is None:
            for key in keys:
                self.emit(BlockStored([key], None, [], size, None, medium))
            return
        run: list[Hashable] = [keys[0]]
        first_parent = parents[0]
        for key, parent in zip(keys[1:], parents[1:], strict=True):
            if parent is not None and parent == run[-1]:
                run.append(key)
            else:
                self.emit(BlockStored(run, first_parent, [], size, None, medium))
                run, first_parent = [key], parent
        self.emit(BlockStored(run, first_parent, [], size, None, medium))

    def removed(self, keys: Sequence[Hashable], medium: str) -> None:
        if keys:
            self.emit(BlockRemoved(list(keys), medium))

    def cleared(self) -> None:
        self.emit(AllBlocksCleared())


class KVEventLog:
    """A subscriber that keeps the events it is given until they are taken: how a publisher
    turns a stream into one batch per step.

    Args:
        bus: subscribe to it now (or pass the log to `KVEventBus.subscribe` later).
    """

    def __init__(self, bus: KVEventBus | None = None) -> None:
        self._events: list[KVEvent] = []
        self._unsubscribe: Callable[[], None] | None = None
        if bus is not None:
            self._unsubscribe = bus.subscribe(self)

    def __call__(self, event: KVEvent) -> None:
        self._events.append(event)

    def __len__(self) -> int:
        return len(self._events)

    def take(self) -> list[KVEvent]:
        """The events since the last take, oldest first."""
        events, self._events = self._events, []
        return events

    def take_batch(self, ts: float | None = None,
                   data_parallel_rank: int | None = None) -> EventBatch | None:
        """The events since the last take as one `EventBatch` (`ts` default: now), or None
        when there are none."""
        if not self._events:
            return None
        return EventBatch(time.time() if ts is None else ts, self.take(), data_parallel_rank)

    def close(self) -> None:
        """Unsubscribe from the bus given at construction."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


__all__ = ["KVEventBus", "KVEventLog", "Subscriber"]
