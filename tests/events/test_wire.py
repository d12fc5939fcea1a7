"""vLLM's wire format: msgpack arrays of tagged, array-like structs, fields in vLLM's
order, the data-parallel rank left out when None."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvpager.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch

msgpack = pytest.importorskip("msgpack", reason="the wire format needs msgpack "
                              "(pip install 'kvpager[events]')")

from kvpager.events.wire import (  # noqa: E402
    decode_batch,
    decode_message,
    encode_batch,
    event_from_wire,
)

DIGEST = bytes(range(16))
EVENTS = [BlockStored([DIGEST, 7], None, [], 16, None, "GPU"),
          BlockStored([9], 7, [1, 2], 16, None, "CPU"),
          BlockRemoved([DIGEST], "GPU"),
          AllBlocksCleared()]


def test_the_payload_is_vllms_array_layout():
    raw = msgpack.unpackb(encode_batch(EventBatch(1.5, EVENTS)), raw=False)
    assert raw == [1.5, [["BlockStored", [DIGEST, 7], None, [], 16, None, "GPU"],
                         ["BlockStored", [9], 7, [1, 2], 16, None, "CPU"],
                         ["BlockRemoved", [DIGEST], "GPU"],
                         ["AllBlocksCleared"]]]
    ranked = msgpack.unpackb(encode_batch(EventBatch(2.0, [], 3)), raw=False)
    assert ranked == [2.0, [], 3]


def test_batches_round_trip():
    for batch in (EventBatch(1.5, EVENTS), EventBatch(0.25, [], 2)):
        assert decode_batch(encode_batch(batch)) == batch


def test_digests_can_go_out_as_unsigned_64_bit_ints():
    raw = msgpack.unpackb(encode_batch(EventBatch(0.0, EVENTS[:1]), "uint64"), raw=False)
    assert raw[1][0][1] == [int.from_bytes(DIGEST[:8], "big"), 7]


def test_what_the_format_cannot_carry_is_named():
    with pytest.raises(TypeError, match="'seq-key'"):
        encode_batch(EventBatch(0.0, [BlockRemoved(["seq-key"], "GPU")]))
    with pytest.raises(TypeError, match="64 bits"):
        encode_batch(EventBatch(0.0, [BlockRemoved([2**70], "GPU")]))
    with pytest.raises(ValueError, match="hash_format"):
        encode_batch(EventBatch(0.0, []), "hex")
    with pytest.raises(ValueError, match="unknown KV event"):
        event_from_wire(["BlockMoved", 1])
    with pytest.raises(ValueError, match="batch"):
        decode_batch(msgpack.packb({"ts": 1.0}))
    with pytest.raises(ValueError, match="frames"):
        decode_message([b"", b"\x00"])


def test_importing_events_needs_neither_zmq_nor_msgpack():
    code = ("import sys, kvpager.events, kvpager.core.memory.manager\n"
            "print(sorted(m for m in ('zmq', 'msgpack', 'msgspec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_missing_pyzmq_is_explained(monkeypatch):
    from kvpager.events import ZmqEventPublisher
    monkeypatch.setitem(sys.modules, "zmq", None)
    with pytest.raises(ImportError, match=r"pip install 'kvpager\[events\]'"):
        ZmqEventPublisher("tcp://127.0.0.1:*")
