"""The shared reader of JSON-Lines traces whose records carry a timestamp, prompt and output
lengths, and one list of ids per prompt (Mooncake's block hash ids, token-id traces' token
ids): the same checks, field names from a `TimedIdsSchema`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kvpager.sim.traces.build import ragged_ints
from kvpager.sim.traces.errors import MISSING, Locator, show


@dataclass(frozen=True)
class TimedIdsSchema:
    """Field names and rules of one such format.

    time_unit: the timestamp's unit in messages ("milliseconds"), per_second its count per
    second (1e3). ids_check(prompt_tokens, num_ids) returns an error message or None.
    """

    time: str
    time_unit: str
    per_second: float
    prompt: str
    output: str
    ids: str
    ids_kind: str
    ids_check: Callable[[int, int], str | None]


def read_timed_ids(records: list, loc: Locator, schema: TimedIdsSchema):
    """(arrival seconds float64, prompt int64, output int64, ids offsets, ids data)."""
    count = len(records)
    arrival = [0.0] * count
    prompt = [0] * count
    output = [0] * count
    rows: list[list] = [[]] * count
    for k, rec in enumerate(records):
        if type(rec) is not dict:
            raise loc.error(k, None, f"expected a JSON object, got {show(rec)}")
        get = rec.get
        t = get(schema.time, MISSING)
        if not ((type(t) is int or type(t) is float) and 0 <= t < math.inf):
            raise loc.bad(k, schema.time, t, f"a finite number of {schema.time_unit} >= 0")
        p = get(schema.prompt, MISSING)
        if type(p) is not int or p <= 0:
            raise loc.bad(k, schema.prompt, p, "an integer > 0")
        o = get(schema.output, MISSING)
        if type(o) is not int or o <= 0:
            raise loc.bad(k, schema.output, o, "an integer > 0")
        ids = get(schema.ids, MISSING)
        if type(ids) is not list:
            raise loc.bad(k, schema.ids, ids, f"a list of {schema.ids_kind}")
        problem = schema.ids_check(p, len(ids))
        if problem is not None:
            raise loc.error(k, schema.ids, problem)
        arrival[k], prompt[k], output[k], rows[k] = t, p, o, ids
    offsets, data = ragged_ints(rows, range(count), loc, schema.ids)
    return (np.array(arrival, dtype=np.float64) / schema.per_second,
            np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64), offsets, data)
