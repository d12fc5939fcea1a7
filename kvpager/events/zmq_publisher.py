"""Publish a manager's KV events over ZMQ in vLLM's wire format.

    bus = KVEventBus()
    manager = KVCacheManager(config, events=bus)
    publisher = ZmqEventPublisher("tcp://*:5557", bus=bus)
    ...  # each engine step:
    publisher.flush()        # one EventBatch with the step's events, if there were any

Each message is `[topic, seq, payload]`: seq counts batches from 0 as 8 big-endian bytes,
payload is the msgpack `EventBatch` (`kvpager.events.wire`), so vLLM's consumers (llm-d's
KV-cache indexer, Dynamo's KV router, vLLM's own example subscriber) can read a kvpager
engine. The socket is XPUB, which sends like PUB and also sees subscriptions:
`wait_for_subscriber` lets a caller (a test, a short-lived tool) wait until someone listens
instead of losing its first messages to ZMQ's late joining.

Sending is synchronous in `flush` (ZMQ queues the message and its own thread writes it; a
full queue drops messages for slow subscribers, ZMQ's PUB behaviour, rather than blocking the
engine). There is no replay socket. pyzmq and msgpack are imported when a publisher is made:
`pip install 'kvpager[events]'`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from kvpager.events.bus import KVEventBus, KVEventLog
from kvpager.events.types import EventBatch
from kvpager.events.wire import HASH_FORMATS, encode_batch

_INSTALL = "pip install 'kvpager[events]'"


def _zmq() -> Any:
    try:
        import zmq
    except ImportError as err:
        raise ImportError(f"ZmqEventPublisher needs pyzmq: {_INSTALL}") from err
    return zmq


class ZmqEventPublisher:
    """A ZMQ publisher of KV event batches.

    Args:
        endpoint: where to publish, e.g. "tcp://*:5557" (bound) or "tcp://host:5557"
            (connected to a consumer that binds).
        bus: collect this bus's events for `flush` (or `attach` one later).
        topic: the first frame of every message ("" by default, as vLLM).
        data_parallel_rank: stamped on batches that carry none.
        hash_format: "raw" (digests as bytes) or "uint64" (`kvpager.events.wire`).
        bind: bind (True) or connect (False); None: bind when the endpoint has a wildcard
            ("*") or is ipc:// / inproc://, as vLLM decides.
        hwm: ZMQ's send high-water mark (messages queued per subscriber).
    """

    def __init__(self, endpoint: str = "tcp://*:5557", *, bus: KVEventBus | None = None,
                 topic: str = "", data_parallel_rank: int | None = None,
                 hash_format: str = "raw", bind: bool | None = None,
                 hwm: int = 100_000) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"endpoint must look like 'tcp://host:port', got {endpoint!r}")
        if hash_format not in HASH_FORMATS:
            raise ValueError(f"hash_format must be one of {', '.join(HASH_FORMATS)}, "
                             f"got {hash_format!r}")
        zmq = _zmq()
        encode_batch(EventBatch(0.0, []))  # fail now, not at the first flush, without msgpack
        self._zmq = zmq
        self._socket = zmq.Context.instance().socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if bind is None:
            bind = "*" in endpoint or endpoint.startswith(("ipc://", "inproc://"))
        if bind:
            self._socket.bind(endpoint)
        else:
            self._socket.connect(endpoint)
        self.topic = topic
        self._topic = topic.encode("utf-8")
        self.data_parallel_rank = data_parallel_rank
        self.hash_format = hash_format
        self.next_seq = 0
        self._log: KVEventLog | None = None
        if bus is not None:
            self.attach(bus)

    @property
    def endpoint(self) -> str:
        """The endpoint the socket is bound or connected to (the port chosen for "*")."""
        return self._socket.getsockopt(self._zmq.LAST_ENDPOINT).decode()

    def attach(self, bus: KVEventBus) -> None:
        """Collect `bus`'s events for `flush` (replacing any bus attached before)."""
        if self._log is not None:
            self._log.close()
        self._log = KVEventLog(bus)

    def wait_for_subscriber(self, timeout_s: float = 5.0) -> bool:
        """Wait until a subscriber's subscription arrives; False after `timeout_s`."""
        if self._socket.poll(int(timeout_s * 1000), self._zmq.POLLIN):
            self._socket.recv()  # b"\\x01" + the subscribed topic
            return True
        return False

    def flush(self, ts: float | None = None) -> int | None:
        """Publish the events collected since the last flush as one batch; returns its
        sequence number, or None when there was nothing to send."""
        if self._log is None:
            return None
        batch = self._log.take_batch(ts, self.data_parallel_rank)
        return None if batch is None else self.publish(batch)

    def publish(self, batch: EventBatch) -> int:
        """Send one batch; returns its sequence number."""
        if batch.data_parallel_rank is None and self.data_parallel_rank is not None:
            batch = EventBatch(batch.ts, batch.events, self.data_parallel_rank)
        payload = encode_batch(batch, self.hash_format)
        seq = self.next_seq
        self._socket.send_multipart([self._topic, seq.to_bytes(8, "big"), payload])
        self.next_seq = seq + 1
        return seq

    def close(self) -> None:
        """Stop collecting and close the socket (unsent messages are dropped)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        self._socket.close()

    def __enter__(self) -> ZmqEventPublisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["ZmqEventPublisher"]
