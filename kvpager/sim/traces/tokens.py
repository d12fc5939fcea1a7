"""Token-id JSON Lines (LLMServingSim's ShareGPT export): `input_toks`, `output_toks`,
`arrival_time_ns`, `input_tok_ids`, `output_tok_ids`.

The prompt's real token ids are kept, so prefix sharing is decided by comparing tokens
rather than trusting ids. `output_tok_ids` is not needed to replay the request (a later turn
that repeats the answer carries it in its own `input_tok_ids`) and is ignored.
"""

from __future__ import annotations

import math

import numpy as np

from kvpager.sim.traces.build import make_trace, ragged_ints
from kvpager.sim.traces.errors import MISSING, Locator, show
from kvpager.sim.traces.trace import PrefixKind, PrefixTable, Trace


def read_tokens(records: list, loc: Locator, container: str) -> Trace:
    count = len(records)
    arrival = [0.0] * count
    prompt = [0] * count
    output = [0] * count
    rows: list[list] = [[]] * count
    for k, rec in enumerate(records):
        if type(rec) is not dict:
            raise loc.error(k, None, f"expected a JSON object, got {show(rec)}")
        get = rec.get
        t = get("arrival_time_ns", MISSING)
        if not ((type(t) is int or type(t) is float) and 0 <= t < math.inf):
            raise loc.bad(k, "arrival_time_ns", t, "a finite number of nanoseconds >= 0")
        p = get("input_toks", MISSING)
        if type(p) is not int or p <= 0:
            raise loc.bad(k, "input_toks", p, "an integer > 0")
        o = get("output_toks", MISSING)
        if type(o) is not int or o <= 0:
            raise loc.bad(k, "output_toks", o, "an integer > 0")
        ti = get("input_tok_ids", MISSING)
        if type(ti) is not list:
            raise loc.bad(k, "input_tok_ids", ti, "a list of token ids")
        if len(ti) != p:
            raise loc.error(k, "input_tok_ids", f"{len(ti)} token ids, but input_toks = {p}")
        arrival[k], prompt[k], output[k], rows[k] = t, p, o, ti
    offsets, data = ragged_ints(rows, range(count), loc, "input_tok_ids")
    prefix = PrefixTable(
        np.full(count, PrefixKind.TOKENS, dtype=np.int8), np.full(count, -1, dtype=np.int64),
        np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64), offsets, data,
    )
    return make_trace(loc, f"tokens-{container}", np.array(arrival, dtype=np.float64) / 1e9,
                      np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64),
                      prefix=prefix)
