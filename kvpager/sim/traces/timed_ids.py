"""The shared reader of JSON-Lines traces whose records carry a timestamp, prompt and output
lengths, and one list of ids per prompt (Mooncake's block hash ids, token-id traces' token
ids): the same checks, field names from a `TimedIdsSchema`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kvpager.sim.traces.build import ragged_ints
from kvpager.sim.traces.errors import MISSING, TOKENS_LIMIT, Locator, show
from kvpager.sim.traces.limits import MAX_REQUEST_TOKENS, finite_seconds, is_count


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
        seconds = finite_seconds(t, schema.per_second)
        if seconds is None:
            raise loc.bad(k, schema.time, t, f"a finite number of {schema.time_unit} >= 0")
        p = get(schema.prompt, MISSING)
        if not is_count(p, 1, MAX_REQUEST_TOKENS):
            raise loc.count(k, schema.prompt, p, MAX_REQUEST_TOKENS, TOKENS_LIMIT)
        o = get(schema.output, MISSING)
        if not is_count(o, 1, MAX_REQUEST_TOKENS):
            raise loc.count(k, schema.output, o, MAX_REQUEST_TOKENS, TOKENS_LIMIT)
        ids = get(schema.ids, MISSING)
        if type(ids) is not list:
            raise loc.bad(k, schema.ids, ids, f"a list of {schema.ids_kind}")
        problem = schema.ids_check(p, len(ids))
        if problem is not None:
            raise loc.error(k, schema.ids, problem)
        arrival[k], prompt[k], output[k], rows[k] = seconds, p, o, ids
    offsets, data = ragged_ints(rows, range(count), loc, schema.ids)
    return (np.array(arrival, dtype=np.float64),
            np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64), offsets, data)
