"""Prefix-cache keys: equal keys must mean equal token prefixes, and vice versa.

The oracle materialises every request's prompt as explicit tokens that obey the trace's
promise (a group's shared tokens, content named by block ids, the real token ids, or tokens
of the request's own) and compares whole prefixes as tuples: no shared code with the keyer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpager.sim.traces import BlockKeyer, PrefixKind, load_trace
from kvpager.sim.traces.errors import Locator
from kvpager.sim.traces.kvpager_format import read_kvpager


def materialise(rec: dict, k: int) -> list[tuple]:
    p = rec["prompt_tokens"]
    own = [("own", k, t) for t in range(p)]
    if "prefix_group" in rec:
        s = rec["prefix_tokens"]
        return [("group", rec["prefix_group"], t) for t in range(s)] + own[s:]
    if "block_hashes" in rec:
        size = rec.get("hash_block_size", 512)
        toks = [("hash", size, h, t) for h in rec["block_hashes"] for t in range(size)][:p]
        return toks + own[len(toks):]
    if "prompt_token_ids" in rec:
        return [("tok", t) for t in rec["prompt_token_ids"]]
    return own


def assert_keys_match_prefixes(records: list[dict], block_size: int) -> int:
    """Checks key equality <=> prefix equality over every full block; returns #reused."""
    trace = read_kvpager(records, Locator("mem"), "json")
    keyer = BlockKeyer(trace, block_size)
    key_to_prefix: dict[int, tuple] = {}
    prefix_to_key: dict[tuple, int] = {}
    reused = 0
    for i in range(len(trace)):
        rec = records[int(trace.record[i])]
        tokens = materialise(rec, int(trace.record[i]))
        keys = keyer.keys(i)
        assert keys.dtype == np.int64 and len(keys) == len(tokens) // block_size
        for j, key in enumerate(keys.tolist()):
            prefix = tuple(tokens[: (j + 1) * block_size])
            reused += prefix in prefix_to_key
            assert key_to_prefix.setdefault(key, prefix) == prefix, "equal keys, unequal text"
            assert prefix_to_key.setdefault(prefix, key) == key, "equal text, unequal keys"
    return reused


def _record(draw, k: int) -> dict:
    p = draw(st.integers(1, 40))
    rec = {"arrival_time": float(draw(st.integers(0, 5))), "prompt_tokens": p,
           "output_tokens": 1}
    kind = draw(st.sampled_from(["none", "group", "hashes", "tokens"]))
    if kind == "group":
        rec["prefix_group"] = draw(st.sampled_from(["a", "b", 3]))
        rec["prefix_tokens"] = draw(st.integers(0, p))
    elif kind == "hashes":
        size = draw(st.sampled_from([4, 6, 8]))
        count = draw(st.integers(0, -(-p // size)))
        rec["block_hashes"] = draw(st.lists(st.sampled_from([0, 1, 2, "x"]),
                                            min_size=count, max_size=count))
        rec["hash_block_size"] = size
    elif kind == "tokens":
        rec["prompt_token_ids"] = draw(st.lists(st.integers(0, 1), min_size=p, max_size=p))
    return rec


@st.composite
def records_strategy(draw) -> list[dict]:
    return [_record(draw, k) for k in range(draw(st.integers(1, 12)))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy(), block_size=st.sampled_from([1, 2, 3, 4, 5, 8]))
def test_keys_equal_iff_prefixes_equal(records, block_size):
    assert_keys_match_prefixes(records, block_size)


def test_group_example_by_hand():
    recs = [
        {"arrival_time": 0, "prompt_tokens": 10, "output_tokens": 1, "prefix_group": "g",
         "prefix_tokens": 8},
        {"arrival_time": 1, "prompt_tokens": 12, "output_tokens": 1, "prefix_group": "g",
         "prefix_tokens": 8},
        {"arrival_time": 2, "prompt_tokens": 12, "output_tokens": 1, "prefix_group": "g",
         "prefix_tokens": 5},
    ]
    trace = read_kvpager(recs, Locator("mem"), "json")
    a, b, c = (trace.block_keys(i, 4).tolist() for i in range(3))
    assert len(a) == 2 and len(b) == 3 and len(c) == 3
    assert a == b[:2]  # tokens [0, 8) shared
    assert b[2] != a[1] and b[2] not in a  # [8, 12) is b's own
    assert c[0] == a[0] and c[1] not in a + b  # c shares only [0, 5): one full block of 4
    assert assert_keys_match_prefixes(recs, 4) == 3


def test_keys_are_stable_and_cached():
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv")
    first = trace.block_keys(5, 16)
    assert np.array_equal(first, trace.block_keys(5, 16))
    assert trace.keyer(16) is trace.keyer(16)
    assert len(first) == trace.prompt_tokens[5] // 16
    others = np.concatenate([trace.block_keys(i, 16) for i in range(len(trace)) if i != 5])
    assert not np.isin(first, others).any()  # no identity: nothing shared
    assert BlockKeyer(trace, 16).keys_list(5) == BlockKeyer(trace, 16).keys(5).tolist()


@pytest.mark.parametrize("bad", [0, -16, 16.0, True, None])
def test_block_size_is_checked(bad):
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv", limit=3)
    with pytest.raises(ValueError, match=r"^block_size: expected an integer > 0"):
        BlockKeyer(trace, bad)


def _mooncake_reuse_by_hand(block_size: int) -> tuple[int, int]:
    """Reusable full blocks of the Mooncake slice, straight from the JSON lines: a KV block
    ending at token e lies in 512-block h = (e - 1) // 512 and its prefix is named by the
    ids up to h plus the offset e - 512 h (Mooncake ids are chained by the trace authors)."""
    seen: set = set()
    total = reused = 0
    lines = [json.loads(x) for x in (EXAMPLES / "mooncake_conv_sample.jsonl").open()]
    for rec in sorted(lines, key=lambda r: r["timestamp"]):  # stable, like the loader
        ids = rec["hash_ids"]
        for e in range(block_size, rec["input_length"] + 1, block_size):
            h = (e - 1) // 512
            key = (tuple(ids[: h + 1]), e - 512 * h)
            total += 1
            reused += key in seen
            seen.add(key)
    return total, reused


@pytest.mark.parametrize("block_size", [16, 48, 512])
def test_mooncake_blocks_split_across_hash_blocks(block_size):
    from kvpager.sim.traces.summary import reusable_blocks

    trace = load_trace(EXAMPLES / "mooncake_conv_sample.jsonl")
    assert set(trace.prefix.kind.tolist()) == {PrefixKind.HASHES}
    assert reusable_blocks(trace, block_size) == _mooncake_reuse_by_hand(block_size)
