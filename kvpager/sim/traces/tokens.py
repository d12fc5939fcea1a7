"""Token-id JSON Lines (LLMServingSim's ShareGPT export): `input_toks`, `output_toks`,
`arrival_time_ns`, `input_tok_ids`, `output_tok_ids`.

The prompt's real token ids are kept, so prefix sharing is decided by comparing tokens
rather than trusting ids. `output_tok_ids`, when present, are kept too: the simulator
replays them as the tokens each request generates, so the blocks its answer fills are
prefix-cached by content and a later turn that repeats the answer hits them, as in a real
engine.
"""

from __future__ import annotations

import numpy as np

from kvpager.sim.traces.build import make_trace, ragged_ints
from kvpager.sim.traces.errors import MISSING, Locator
from kvpager.sim.traces.timed_ids import TimedIdsSchema, read_timed_ids
from kvpager.sim.traces.trace import PrefixKind, PrefixTable, Trace


def _check_ids(prompt: int, num_ids: int) -> str | None:
    return None if num_ids == prompt else f"{num_ids} token ids, but input_toks = {prompt}"


SCHEMA = TimedIdsSchema("arrival_time_ns", "nanoseconds", 1e9, "input_toks", "output_toks",
                        "input_tok_ids", "token ids", _check_ids)


def read_tokens(records: list, loc: Locator, container: str) -> Trace:
    arrival, prompt, output, offsets, data = read_timed_ids(records, loc, SCHEMA)
    count = len(records)
    outputs: list[list] = [[]] * count
    for k, rec in enumerate(records):
        ids = rec.get("output_tok_ids", MISSING)
        if ids is MISSING or ids is None:
            continue
        if type(ids) is not list:
            raise loc.bad(k, "output_tok_ids", ids, "a list of token ids")
        if len(ids) != int(output[k]):
            raise loc.error(k, "output_tok_ids",
                            f"{len(ids)} token ids, but output_toks = {int(output[k])}")
        outputs[k] = ids
    out_offsets, out_data = ragged_ints(outputs, range(count), loc, "output_tok_ids")
    if out_data.size and (out_data.min() < 0 or out_data.max() > np.iinfo(np.int32).max):
        k = int(np.searchsorted(out_offsets, int(np.argmax(
            (out_data < 0) | (out_data > np.iinfo(np.int32).max))), side="right")) - 1
        raise loc.error(k, "output_tok_ids", "token ids must be integers in [0, 2^31)")
    prefix = PrefixTable(
        np.full(count, PrefixKind.TOKENS, dtype=np.int8), np.full(count, -1, dtype=np.int64),
        np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64), offsets, data,
        out_offsets=out_offsets, out_data=out_data,
    )
    return make_trace(loc, f"tokens-{container}", arrival, prompt, output, prefix=prefix)
