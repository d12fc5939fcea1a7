"""Selecting sub-traces and writing kvpager files that read back to the same trace."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES, jsonl

from kvpager.sim.traces import load_trace, write_json, write_jsonl
from kvpager.sim.traces.summary import reusable_blocks

RECS = [{"arrival_time": float(t), "prompt_tokens": 10 + t, "output_tokens": 1,
         "prompt_token_ids": list(range(10 + t))} for t in range(5)]


def test_time_window_limit_and_rate_scale(write):
    name = write("t.jsonl", jsonl(RECS))
    t = load_trace(name, time_window=(1, 3))
    assert t.arrival.tolist() == [0.0, 1.0]  # re-based to the window start
    assert t.prompt_tokens.tolist() == [11, 12]
    assert t.prompt_token_ids(1).tolist() == list(range(12))
    assert load_trace(name, limit=2).prompt_tokens.tolist() == [10, 11]
    assert load_trace(name, rate_scale=2.0).arrival.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert load_trace(name, rate_scale=0.5).arrival.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    # order: window, then limit, then scale
    both = load_trace(name, time_window=(1.5, 10), limit=2, rate_scale=4.0)
    assert both.prompt_tokens.tolist() == [12, 13]
    assert both.arrival.tolist() == [0.125, 0.375]
    assert load_trace(name, limit=99).prompt_tokens.tolist() == [10, 11, 12, 13, 14]


def test_window_that_selects_nothing(write):
    name = write("t.jsonl", jsonl(RECS))
    with pytest.raises(ValueError, match=r"^time_window: \[10.0, 20.0\) selects no request"):
        load_trace(name, time_window=(10, 20))


def test_take_and_with_arrival_times_validate(write):
    t = load_trace(write("t.jsonl", jsonl(RECS)))
    with pytest.raises(ValueError, match=r"^arrival: must be sorted"):
        t.take([1, 0])
    with pytest.raises(ValueError, match=r"^arrival: every time must be finite"):
        t.with_arrival_times(np.array([0, 1, 2, np.nan, 4.0]))
    with pytest.raises(ValueError, match=r"^arrival: expected shape \(5,\)"):
        t.with_arrival_times(np.zeros(3))
    moved = t.with_arrival_times(np.array([4.0, 3, 2, 1, 0]))
    assert moved.prompt_tokens.tolist() == [14, 13, 12, 11, 10]
    assert moved.prompt_token_ids(0).tolist() == list(range(14))


def assert_same_trace(a, b) -> None:
    for col in ("arrival", "prompt_tokens", "output_tokens", "n", "beam_width", "ids"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    for col in ("kind", "shared_tokens", "hash_block_size", "offsets", "data"):
        assert np.array_equal(getattr(a.prefix, col), getattr(b.prefix, col)), col
    labels_a = [a.prefix.group_labels[g] if g >= 0 else None for g in a.prefix.group.tolist()]
    labels_b = [b.prefix.group_labels[g] if g >= 0 else None for g in b.prefix.group.tolist()]
    assert labels_a == labels_b
    assert reusable_blocks(a, 16) == reusable_blocks(b, 16)


MIXED = [
    {"arrival_time": 0.1 + 0.2, "prompt_tokens": 40, "output_tokens": 2, "id": "x", "n": 3,
     "prefix_group": "sys", "prefix_tokens": 32},
    {"arrival_time": 0.0, "prompt_tokens": 40, "output_tokens": 2, "beam_width": 2,
     "prefix_group": 5, "prefix_tokens": 17},
    {"arrival_time": 1e-9, "prompt_tokens": 20, "output_tokens": 1,
     "block_hashes": [3, 4], "hash_block_size": 16},
    {"arrival_time": 7, "prompt_tokens": 3, "output_tokens": 1, "prompt_token_ids": [1, 2, 3]},
    {"arrival_time": 7, "prompt_tokens": 3, "output_tokens": 9},
]


@pytest.mark.parametrize("writer", [write_json, write_jsonl])
@pytest.mark.parametrize("source", ["mixed", "azure", "mooncake"])
def test_round_trip(write, tmp_path, writer, source):
    if source == "mixed":
        original = load_trace(write("m.json", json.dumps(MIXED)))
    else:
        name = {"azure": "azure_conv_sample.csv", "mooncake": "mooncake_conv_sample.jsonl"}
        original = load_trace(EXAMPLES / name[source])
    out = tmp_path / f"out.{writer.__name__}"
    writer(original, out)
    again = load_trace(out)
    assert again.format == ("kvpager-json" if writer is write_json else "kvpager-jsonl")
    assert_same_trace(original, again)
    lines = out.read_text().splitlines()
    assert len(lines) == len(original) + (2 if writer is write_json else 0)  # one per request


def test_written_fields(tmp_path, write):
    t = load_trace(write("m.json", json.dumps(MIXED)))
    write_jsonl(t, tmp_path / "o.jsonl")
    recs = [json.loads(x) for x in (tmp_path / "o.jsonl").open()]
    assert recs[0] == {"id": "1", "arrival_time": 0.0, "prompt_tokens": 40, "output_tokens": 2,
                       "beam_width": 2, "prefix_group": 5, "prefix_tokens": 17}
    assert recs[2]["arrival_time"] == 0.30000000000000004  # repr precision, not rounded
    assert recs[2]["n"] == 3 and recs[2]["prefix_group"] == "sys"
    assert recs[1]["block_hashes"] == [3, 4] and recs[1]["hash_block_size"] == 16
    assert recs[3]["prompt_token_ids"] == [1, 2, 3]
    assert set(recs[4]) == {"id", "arrival_time", "prompt_tokens", "output_tokens"}
