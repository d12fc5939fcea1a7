"""Writers of kvpager's own trace format, for `kvpager trace convert`.

Any loaded trace (Azure, Mooncake, token ids, ...) is written as kvpager records in arrival
order, one request per line, so a converted file is both valid JSON Lines (`write_jsonl`)
or a JSON document whose requests can be diffed line by line (`write_json`). Arrival times
are written with `repr` precision, so reading the file back gives bit-identical times.

Prefix identity is kept: groups with their original labels, block hashes as integers (string
labels were interned to dense integers on load: identity is kept, spelling is not) with
their `hash_block_size`, and token ids as `prompt_token_ids`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from kvpager.sim.traces.trace import PrefixKind, Trace


def records(trace: Trace) -> Iterator[dict]:
    """kvpager request dicts of the trace, in arrival order."""
    pre = trace.prefix
    arrival = trace.arrival.tolist()
    prompt = trace.prompt_tokens.tolist()
    output = trace.output_tokens.tolist()
    ns = trace.n.tolist()
    beams = trace.beam_width.tolist()
    kinds = pre.kind.tolist()
    for i in range(len(trace)):
        rec: dict = {"id": str(trace.ids[i]), "arrival_time": arrival[i],
                     "prompt_tokens": prompt[i], "output_tokens": output[i]}
        if ns[i] != 1:
            rec["n"] = ns[i]
        if beams[i] != 1:
            rec["beam_width"] = beams[i]
        kind = kinds[i]
        if kind == PrefixKind.GROUP:
            rec["prefix_group"] = pre.group_labels[int(pre.group[i])]
            rec["prefix_tokens"] = int(pre.shared_tokens[i])
        elif kind == PrefixKind.HASHES:
            rec["block_hashes"] = pre.row(i).tolist()
            rec["hash_block_size"] = int(pre.hash_block_size[i])
        elif kind == PrefixKind.TOKENS:
            rec["prompt_token_ids"] = pre.row(i).tolist()
        yield rec


def write_jsonl(trace: Trace, path: str | os.PathLike) -> None:
    """Write the trace as kvpager JSON Lines (one request object per line)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for rec in records(trace):
            f.write(json.dumps(rec, allow_nan=False))
            f.write("\n")


def write_json(trace: Trace, path: str | os.PathLike) -> None:
    """Write the trace as a kvpager JSON document `{"requests": [...]}`, one request per
    line."""
    with Path(path).open("w", encoding="utf-8") as f:
        f.write('{"requests": [\n')
        for i, rec in enumerate(records(trace)):
            if i:
                f.write(",\n")
            f.write(json.dumps(rec, allow_nan=False))
        f.write("\n]}\n")
