"""vLLM's KV-event wire format: msgpack arrays, as its msgspec structs encode them.

vLLM declares its events as msgspec structs with `array_like=True, tag=True,
omit_defaults=True`, so on the wire an event is a msgpack array whose first element is the
class name and whose others are the fields in declaration order, and a batch is an array
`[ts, [event, ...], data_parallel_rank]` (the rank left out when None):

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

A ZMQ message is three frames: topic, the batch's sequence number (8 bytes, big-endian,
from 0) and the msgpack payload (`kvpager.events.zmq_publisher`).

Hashes go out as msgpack bin (the 16-byte digests, vLLM's bytes form of a block hash) or
int (caller keys that are ints), `hash_format="raw"`; `hash_format="uint64"` turns digests
into their first 8 bytes read as a big-endian unsigned int, for consumers that take only
integer hashes. Other key types (str, tuples) have no place in the format: `encode_batch`
raises TypeError naming the key.

msgpack is imported on first use; without it the error says how to install it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from kvpager.events.types import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEvent

HASH_FORMATS = ("raw", "uint64")
_INSTALL = "pip install 'kvpager[events]'"


def _msgpack() -> Any:
    try:
        import msgpack
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"the KV-event wire format needs msgpack: {_INSTALL}") from err
    return msgpack


def _hash(key: Hashable | None, fmt: str) -> bytes | int | None:
    if key is None:
        return None
    if isinstance(key, bytes):
        return int.from_bytes(key[:8], "big") if fmt == "uint64" else key
    if isinstance(key, int) and not isinstance(key, bool):
        if not -(2**63) <= key < 2**64:
            raise TypeError(f"block hash {key} does not fit in 64 bits")
        return key
    raise TypeError(f"block hash {key!r} ({type(key).__name__}) is neither bytes nor int: "
                    "the wire format carries only those")


def event_to_wire(event: KVEvent, hash_format: str = "raw") -> list[Any]:
    """The msgpack-ready array of one event."""
    if isinstance(event, BlockStored):
        return ["BlockStored", [_hash(k, hash_format) for k in event.block_hashes],
                _hash(event.parent_block_hash, hash_format), list(event.token_ids),
                event.block_size, event.lora_id, event.medium]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", [_hash(k, hash_format) for k in event.block_hashes],
                event.medium]
    if isinstance(event, AllBlocksCleared):
        return ["AllBlocksCleared"]
    raise TypeError(f"not a KV event: {type(event).__name__}")


def encode_batch(batch: EventBatch, hash_format: str = "raw") -> bytes:
    """The msgpack payload of one batch.

    Raises:
        ValueError: an unknown `hash_format`.
        TypeError: a block hash the format cannot carry.
    """
    if hash_format not in HASH_FORMATS:
        raise ValueError(f"hash_format must be one of {', '.join(HASH_FORMATS)}, "
                         f"got {hash_format!r}")
    body: list[Any] = [float(batch.ts), [event_to_wire(e, hash_format) for e in batch.events]]
    if batch.data_parallel_rank is not None:
        body.append(int(batch.data_parallel_rank))
    return _msgpack().packb(body, use_bin_type=True)


def event_from_wire(item: list[Any]) -> KVEvent:
    """One event from its decoded array (the inverse of `event_to_wire`)."""
    if not isinstance(item, list) or not item:
        raise ValueError(f"a KV event is a tagged array, got {item!r}")
    tag, *fields = item
    if tag == "BlockStored" and len(fields) >= 5:
        hashes, parent, tokens, size, lora = fields[:5]
        medium = fields[5] if len(fields) > 5 else None
        return BlockStored(list(hashes), parent, list(tokens), int(size), lora, medium)
    if tag == "BlockRemoved" and len(fields) >= 1:
        return BlockRemoved(list(fields[0]), fields[1] if len(fields) > 1 else None)
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise ValueError(f"unknown KV event {tag!r} with {len(fields)} fields")


def decode_batch(payload: bytes) -> EventBatch:
    """An `EventBatch` from a msgpack payload (vLLM's or `encode_batch`'s).

    Raises:
        ValueError: the payload is not an event batch.
    """
    body = _msgpack().unpackb(payload, raw=False)
    if not isinstance(body, list) or len(body) not in (2, 3) or not isinstance(body[1], list):
        raise ValueError("a KV event batch is an array [ts, events, data_parallel_rank?]")
    rank = body[2] if len(body) == 3 else None
    return EventBatch(float(body[0]), [event_from_wire(e) for e in body[1]], rank)


def decode_message(frames: list[bytes]) -> tuple[str, int, EventBatch]:
    """(topic, sequence number, batch) of one three-frame ZMQ message."""
    if len(frames) != 3 or len(frames[1]) != 8:
        raise ValueError(f"a KV event message is [topic, 8-byte seq, payload], got "
                         f"{len(frames)} frames")
    topic, seq, payload = frames
    return topic.decode("utf-8"), int.from_bytes(seq, "big"), decode_batch(payload)


__all__ = ["HASH_FORMATS", "decode_batch", "decode_message", "encode_batch",
           "event_from_wire", "event_to_wire"]
