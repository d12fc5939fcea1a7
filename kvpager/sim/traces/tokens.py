"""Token-id JSON Lines (LLMServingSim's ShareGPT export): `input_toks`, `output_toks`,
`arrival_time_ns`, `input_tok_ids`, `output_tok_ids`.

The prompt's real token ids are kept, so prefix sharing is decided by comparing tokens
rather than trusting ids. `output_tok_ids` is not needed to replay the request (a later turn
that repeats the answer carries it in its own `input_tok_ids`) and is ignored.
"""

from __future__ import annotations

import numpy as np

from kvpager.sim.traces.build import make_trace
from kvpager.sim.traces.errors import Locator
from kvpager.sim.traces.timed_ids import TimedIdsSchema, read_timed_ids
from kvpager.sim.traces.trace import PrefixKind, PrefixTable, Trace


def _check_ids(prompt: int, num_ids: int) -> str | None:
    return None if num_ids == prompt else f"{num_ids} token ids, but input_toks = {prompt}"


SCHEMA = TimedIdsSchema("arrival_time_ns", "nanoseconds", 1e9, "input_toks", "output_toks",
                        "input_tok_ids", "token ids", _check_ids)


def read_tokens(records: list, loc: Locator, container: str) -> Trace:
    arrival, prompt, output, offsets, data = read_timed_ids(records, loc, SCHEMA)
    count = len(records)
    prefix = PrefixTable(
        np.full(count, PrefixKind.TOKENS, dtype=np.int8), np.full(count, -1, dtype=np.int64),
        np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64), offsets, data,
    )
    return make_trace(loc, f"tokens-{container}", arrival, prompt, output, prefix=prefix)
