"""The ZMQ publisher with a real subscriber on 127.0.0.1: every message arrives in order,
decodes, equals what the in-process subscribers saw, and rebuilds the manager's state."""

from __future__ import annotations

import pytest

zmq = pytest.importorskip("zmq", reason="pyzmq is not installed (pip install 'kvpager[events]')")
pytest.importorskip("msgpack", reason="msgpack is not installed (pip install 'kvpager[events]')")

from kvpager.events import EventBatch, KVEventBus, KVEventIndex, ZmqEventPublisher  # noqa: E402
from kvpager.events.wire import decode_message  # noqa: E402

from .workload import Workload, held_keys, make_manager, subscribed  # noqa: E402

OPS = [("alloc", b, 24, [1, b], False) for b in (0, 1, 2)] + [
    ("batch", 3), ("free", 0), ("alloc", 0, 24, [2], True), ("transfers",), ("free", 1),
    ("alloc", 1, 20, [], False), ("batch", 2), ("append", 0, 1), ("free", 0), ("free", 0),
    ("transfers",), ("alloc", 2, 24, [1, 2], False), ("free", 0), ("free", 0), ("reset",),
    ("alloc", 0, 16, [3], False), ("transfers",)]


@pytest.fixture
def subscriber():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    yield sock
    sock.close()


def test_a_subscriber_decodes_every_message(subscriber):
    bus = KVEventBus()
    m = make_manager(gpu=10, bus=bus)
    local_index, local_events = subscribed(m)
    with ZmqEventPublisher("tcp://127.0.0.1:*", bus=bus, topic="kv@replica0") as pub:
        subscriber.setsockopt(zmq.SUBSCRIBE, b"kv@")
        subscriber.connect(pub.endpoint)
        assert pub.wait_for_subscriber(5.0)
        work, sent = Workload(m), []
        for op in OPS:  # one engine step per operation, one batch per step with events
            work.run(op)
            held_keys(m)  # the tier takes the step's evictions (as the scheduler's step does)
            seq = pub.flush()
            if seq is not None:
                sent.append(seq)
        assert pub.flush() is None  # nothing new: no empty batch
        received = [decode_message(subscriber.recv_multipart()) for _ in sent]

    assert len(sent) >= 5
    assert [seq for _, seq, _ in received] == sent == list(range(len(sent)))
    assert {topic for topic, _, _ in received} == {"kv@replica0"}
    decoded = [event for _, _, batch in received for event in batch.events]
    assert decoded == local_events  # bytes digests and int keys arrive unchanged
    kinds = {type(e).__name__ for e in decoded}
    assert kinds == {"BlockStored", "BlockRemoved", "AllBlocksCleared"}
    assert {getattr(e, "medium", None) for e in decoded} == {"GPU", "CPU", None}
    remote = KVEventIndex(strict=True)
    for _, _, batch in received:
        remote.apply_all(batch)
    gpu, cpu = held_keys(m)
    assert remote.keys("GPU") == local_index.keys("GPU") == gpu
    assert remote.keys("CPU") == local_index.keys("CPU") == cpu


def test_the_rank_is_stamped_and_other_topics_are_filtered(subscriber):
    with ZmqEventPublisher("tcp://127.0.0.1:*", topic="kv", data_parallel_rank=2,
                           hash_format="uint64") as pub:
        subscriber.setsockopt(zmq.SUBSCRIBE, b"kv")
        subscriber.connect(pub.endpoint)
        assert pub.wait_for_subscriber(5.0)
        assert pub.publish(EventBatch(3.0, [])) == 0
        topic, seq, batch = decode_message(subscriber.recv_multipart())
    assert (topic, seq, batch.ts, batch.data_parallel_rank) == ("kv", 0, 3.0, 2)
    with ZmqEventPublisher("tcp://127.0.0.1:*", topic="other") as pub:
        other = zmq.Context.instance().socket(zmq.SUB)
        other.setsockopt(zmq.SUBSCRIBE, b"kv")
        other.setsockopt(zmq.LINGER, 0)
        other.connect(pub.endpoint)
        assert pub.wait_for_subscriber(5.0)
        pub.publish(EventBatch(1.0, []))
        assert not other.poll(200)  # a topic nobody subscribed to is not delivered
        other.close()


def test_bad_publisher_arguments_are_named():
    with pytest.raises(ValueError, match="endpoint"):
        ZmqEventPublisher("127.0.0.1:5557")
    with pytest.raises(ValueError, match="hash_format"):
        ZmqEventPublisher("tcp://127.0.0.1:*", hash_format="hex")
