"""KV events: which blocks a manager stores and drops, for KV-aware routers.

vLLM's event types and meaning (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`,
`EventBatch`), an in-process subscriber API (`KVEventBus`, passed to a `KVCacheManager` as
`events=`), an index rebuilt from events (`KVEventIndex`), and a ZMQ publisher in vLLM's wire
format (`ZmqEventPublisher`, needs `pip install 'kvpager[events]'`; imported only when
made). Importing this package needs only the standard library. See docs/architecture.md,
"KV events".
"""

from kvpager.events.bus import KVEventBus, KVEventLog
from kvpager.events.index import KVEventIndex
from kvpager.events.types import (
    MEDIUM_CPU,
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KVEvent,
)
from kvpager.events.zmq_publisher import ZmqEventPublisher

__all__ = [
    "MEDIUM_CPU",
    "MEDIUM_GPU",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "EventBatch",
    "KVEvent",
    "KVEventBus",
    "KVEventIndex",
    "KVEventLog",
    "ZmqEventPublisher",
]
