"""Mooncake (FAST'25) JSON Lines: `timestamp` (ms), `input_length`, `output_length`,
`hash_ids`.

`hash_ids[i]` names the KV of prompt tokens [512 i, 512 (i + 1)): equal ids mean shareable
KV, and the ids are already prefix-chained by the trace authors (an id is only reused when
everything before it is equal too). The published traces satisfy
`len(hash_ids) == ceil(input_length / 512)`; a file that breaks it is rejected rather than
guessed at, because a short list would silently under-count sharing.
"""

from __future__ import annotations

import math

import numpy as np

from kvpager.sim.traces.build import make_trace, ragged_ints
from kvpager.sim.traces.errors import MISSING, Locator, show
from kvpager.sim.traces.trace import PrefixKind, PrefixTable, Trace

MOONCAKE_BLOCK = 512


def read_mooncake(records: list, loc: Locator, container: str) -> Trace:
    count = len(records)
    arrival = [0.0] * count
    prompt = [0] * count
    output = [0] * count
    rows: list[list] = [[]] * count
    for k, rec in enumerate(records):
        if type(rec) is not dict:
            raise loc.error(k, None, f"expected a JSON object, got {show(rec)}")
        get = rec.get
        t = get("timestamp", MISSING)
        if not ((type(t) is int or type(t) is float) and 0 <= t < math.inf):
            raise loc.bad(k, "timestamp", t, "a finite number of milliseconds >= 0")
        p = get("input_length", MISSING)
        if type(p) is not int or p <= 0:
            raise loc.bad(k, "input_length", p, "an integer > 0")
        o = get("output_length", MISSING)
        if type(o) is not int or o <= 0:
            raise loc.bad(k, "output_length", o, "an integer > 0")
        h = get("hash_ids", MISSING)
        if type(h) is not list:
            raise loc.bad(k, "hash_ids", h, "a list of integer block ids")
        want = -(-p // MOONCAKE_BLOCK)
        if len(h) != want:
            raise loc.error(k, "hash_ids", f"expected ceil(input_length / {MOONCAKE_BLOCK}) = "
                            f"{want} ids, got {len(h)}")
        arrival[k], prompt[k], output[k], rows[k] = t, p, o, h
    offsets, data = ragged_ints(rows, range(count), loc, "hash_ids")
    prefix = PrefixTable(
        np.full(count, PrefixKind.HASHES, dtype=np.int8), np.full(count, -1, dtype=np.int64),
        np.zeros(count, dtype=np.int64), np.full(count, MOONCAKE_BLOCK, dtype=np.int64),
        offsets, data,
    )
    return make_trace(loc, f"mooncake-{container}", np.array(arrival, dtype=np.float64) / 1e3,
                      np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64),
                      prefix=prefix)
