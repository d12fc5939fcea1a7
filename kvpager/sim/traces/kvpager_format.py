"""kvpager's own request records (JSON list, `{"requests": [...]}` or JSON Lines).

One record:

    {"arrival_time": 0.25, "prompt_tokens": 812, "output_tokens": 64,
     "id": "r1", "n": 1, "beam_width": 1,
     "prefix_group": "sys-prompt-a", "prefix_tokens": 512}

`arrival_time` (seconds, >= 0, unsorted allowed), `prompt_tokens` and `output_tokens`
(integers > 0) are required. Optional: `id` (string or integer, unique; default the 0-based
record position), `n` (parallel samples) and `beam_width` (both integers >= 1, not both
> 1), and at most one prefix identity:

- `prefix_group` (string or integer) + `prefix_tokens` (0 <= prefix_tokens <=
  prompt_tokens): the first prefix_tokens tokens equal those of every request of the group;
- `block_hashes` (list of integers or strings, one per `hash_block_size`-token prompt block,
  default 512; at most ceil(prompt_tokens / hash_block_size) of them): equal lists up to a
  block = equal prompts up to the end of that block;
- `prompt_token_ids` (list of prompt_tokens integers): the real tokens.

JSON `null` in an optional field means "absent"; unknown fields are ignored so that files
can carry their own annotations.
"""

from __future__ import annotations

import numpy as np

from kvpager.sim.traces.build import check_unique_ids, make_trace, ragged_ints
from kvpager.sim.traces.errors import MISSING, TOKENS_LIMIT, WIDTH_LIMIT, Locator, show
from kvpager.sim.traces.limits import MAX_REQUEST_TOKENS, MAX_WIDTH, finite_seconds, is_count
from kvpager.sim.traces.trace import PrefixKind, PrefixTable, Trace

DEFAULT_HASH_BLOCK_SIZE = 512
_PREFIX_FIELDS = ("prefix_group", "block_hashes", "prompt_token_ids")


def read_kvpager(records: list, loc: Locator, container: str) -> Trace:
    """Validate and convert kvpager request records (in file order) to a Trace."""
    count = len(records)
    arrival = [0.0] * count
    prompt = [0] * count
    output = [0] * count
    ns = [1] * count
    beams = [1] * count
    ids = [""] * count
    explicit = [False] * count
    kind = [0] * count
    group = [-1] * count
    shared = [0] * count
    hbs = [0] * count
    labels: dict[str | int, int] = {}
    hash_rows: list[list] = []
    hash_recs: list[int] = []
    tok_rows: list[list] = []
    tok_recs: list[int] = []
    for k, rec in enumerate(records):
        if type(rec) is not dict:
            raise loc.error(k, None, f"expected a JSON object, got {show(rec)}")
        get = rec.get
        a = get("arrival_time", MISSING)
        seconds = finite_seconds(a)
        if seconds is None:
            if type(a) in (int, float):
                raise loc.error(k, "arrival_time",
                                "expected a finite number >= 0, got "
                                f"{repr(a) if type(a) is float else show(a)}")
            raise loc.bad(k, "arrival_time", a, "a number of seconds >= 0")
        p = get("prompt_tokens", MISSING)
        if not is_count(p, 1, MAX_REQUEST_TOKENS):
            raise loc.count(k, "prompt_tokens", p, MAX_REQUEST_TOKENS, TOKENS_LIMIT)
        o = get("output_tokens", MISSING)
        if not is_count(o, 1, MAX_REQUEST_TOKENS):
            raise loc.count(k, "output_tokens", o, MAX_REQUEST_TOKENS, TOKENS_LIMIT)
        arrival[k], prompt[k], output[k] = seconds, p, o
        if len(rec) > 3:
            _optional(rec, k, loc, ns, beams, ids, explicit)
            given = [f for f in _PREFIX_FIELDS if get(f) is not None]
            if given or get("prefix_tokens") is not None or get("hash_block_size") is not None:
                _prefix(rec, k, loc, p, given, kind, group, shared, hbs, labels,
                        hash_rows, hash_recs, tok_rows, tok_recs)
        if not explicit[k]:
            ids[k] = str(k)
    check_unique_ids(ids, explicit, loc)
    prefix = None
    if hash_rows or tok_rows or labels:
        offsets, data = _merge_rows(count, loc, hash_rows, hash_recs, tok_rows, tok_recs)
        prefix = PrefixTable(np.array(kind), np.array(group), np.array(shared), np.array(hbs),
                             offsets, data, tuple(labels))
    return make_trace(
        loc, f"kvpager-{container}", np.array(arrival, dtype=np.float64),
        np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64),
        n=np.array(ns, dtype=np.int32), beam=np.array(beams, dtype=np.int32), ids=ids,
        prefix=prefix,
    )


def _optional(rec: dict, k: int, loc: Locator, ns, beams, ids, explicit) -> None:
    get = rec.get
    nn = get("n")
    if nn is not None:
        if not is_count(nn, 1, MAX_WIDTH):
            raise loc.count(k, "n", nn, MAX_WIDTH, WIDTH_LIMIT, "an integer >= 1")
        ns[k] = nn
    bw = get("beam_width")
    if bw is not None:
        if not is_count(bw, 1, MAX_WIDTH):
            raise loc.count(k, "beam_width", bw, MAX_WIDTH, WIDTH_LIMIT, "an integer >= 1")
        beams[k] = bw
    if ns[k] > 1 and beams[k] > 1:
        raise loc.error(k, "beam_width", f"n = {ns[k]} and beam_width = {beams[k]} are both > 1:"
                        " a request samples n sequences or runs a beam search, not both")
    rid = get("id")
    if rid is not None:
        if type(rid) is not str and type(rid) is not int:
            raise loc.bad(k, "id", rid, "a string or an integer")
        ids[k], explicit[k] = str(rid), True


def _prefix(rec, k, loc, p, given, kind, group, shared, hbs, labels,
            hash_rows, hash_recs, tok_rows, tok_recs) -> None:
    get = rec.get
    if len(given) > 1:
        raise loc.error(k, given[1], f"'{given[0]}' and '{given[1]}' are alternative prefix "
                        "identities: give one")
    which = given[0] if given else None
    pt = get("prefix_tokens")
    if pt is not None and which != "prefix_group":
        raise loc.error(k, "prefix_group", "missing field (required with 'prefix_tokens')")
    if get("hash_block_size") is not None and which != "block_hashes":
        raise loc.error(k, "hash_block_size", "given without 'block_hashes'")
    if which == "prefix_group":
        g = get("prefix_group")
        if type(g) is not str and type(g) is not int:
            raise loc.bad(k, "prefix_group", g, "a string or an integer")
        if pt is None:
            raise loc.error(k, "prefix_tokens", "missing field (required with 'prefix_group')")
        if type(pt) is not int or pt < 0:
            raise loc.bad(k, "prefix_tokens", pt, "an integer >= 0")
        if pt > p:
            raise loc.error(k, "prefix_tokens", f"{pt} > prompt_tokens = {p}")
        kind[k], group[k], shared[k] = PrefixKind.GROUP, labels.setdefault(g, len(labels)), pt
    elif which == "block_hashes":
        bh = get("block_hashes")
        size = get("hash_block_size", DEFAULT_HASH_BLOCK_SIZE)
        if not is_count(size, 1, MAX_REQUEST_TOKENS):
            raise loc.count(k, "hash_block_size", size, MAX_REQUEST_TOKENS, TOKENS_LIMIT)
        if type(bh) is not list:
            raise loc.bad(k, "block_hashes", bh, "a list of block ids")
        most = -(-p // size)
        if len(bh) > most:
            raise loc.error(k, "block_hashes", f"{len(bh)} ids of {size}-token blocks, but "
                            f"prompt_tokens = {p} has at most ceil({p} / {size}) = {most}")
        kind[k], hbs[k] = PrefixKind.HASHES, size
        hash_rows.append(bh)
        hash_recs.append(k)
    elif which == "prompt_token_ids":
        ti = get("prompt_token_ids")
        if type(ti) is not list:
            raise loc.bad(k, "prompt_token_ids", ti, "a list of token ids")
        if len(ti) != p:
            raise loc.error(k, "prompt_token_ids", f"{len(ti)} token ids, but prompt_tokens = {p}")
        kind[k] = PrefixKind.TOKENS
        tok_rows.append(ti)
        tok_recs.append(k)


def _merge_rows(count, loc, hash_rows, hash_recs, tok_rows, tok_recs):
    """One CSR over all requests from the block-hash rows and the token-id rows."""
    h_off, h_data = ragged_ints(hash_rows, hash_recs, loc, "block_hashes", allow_str=True)
    t_off, t_data = ragged_ints(tok_rows, tok_recs, loc, "prompt_token_ids")
    lengths = np.zeros(count, dtype=np.int64)
    h_idx = np.array(hash_recs, dtype=np.int64)
    t_idx = np.array(tok_recs, dtype=np.int64)
    lengths[h_idx] = np.diff(h_off)
    lengths[t_idx] = np.diff(t_off)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.int64)
    for idx, sub_off, sub_data in ((h_idx, h_off, h_data), (t_idx, t_off, t_data)):
        if len(sub_data):
            dest = np.repeat(offsets[idx] - sub_off[:-1], np.diff(sub_off))
            data[dest + np.arange(len(sub_data))] = sub_data
    return offsets, data
