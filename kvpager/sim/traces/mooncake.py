"""Mooncake (FAST'25) JSON Lines: `timestamp` (ms), `input_length`, `output_length`,
`hash_ids`.

`hash_ids[i]` names the KV of prompt tokens [512 i, 512 (i + 1)): equal ids mean shareable
KV, and the ids are already prefix-chained by the trace authors (an id is only reused when
everything before it is equal too). The published traces satisfy
`len(hash_ids) == ceil(input_length / 512)`; a file that breaks it is rejected rather than
guessed at, because a short list would silently under-count sharing.
"""

from __future__ import annotations

import numpy as np

from kvpager.sim.traces.build import make_trace
from kvpager.sim.traces.errors import Locator
from kvpager.sim.traces.timed_ids import TimedIdsSchema, read_timed_ids
from kvpager.sim.traces.trace import PrefixKind, PrefixTable, Trace

MOONCAKE_BLOCK = 512


def _check_ids(prompt: int, num_ids: int) -> str | None:
    want = -(-prompt // MOONCAKE_BLOCK)
    if num_ids != want:
        return f"expected ceil(input_length / {MOONCAKE_BLOCK}) = {want} ids, got {num_ids}"
    return None


SCHEMA = TimedIdsSchema("timestamp", "milliseconds", 1e3, "input_length", "output_length",
                        "hash_ids", "integer block ids", _check_ids)


def read_mooncake(records: list, loc: Locator, container: str) -> Trace:
    arrival, prompt, output, offsets, data = read_timed_ids(records, loc, SCHEMA)
    count = len(records)
    prefix = PrefixTable(
        np.full(count, PrefixKind.HASHES, dtype=np.int8), np.full(count, -1, dtype=np.int64),
        np.zeros(count, dtype=np.int64), np.full(count, MOONCAKE_BLOCK, dtype=np.int64),
        offsets, data,
    )
    return make_trace(loc, f"mooncake-{container}", arrival, prompt, output, prefix=prefix)
