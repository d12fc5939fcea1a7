"""`summarize` against hand-computed values and against the public traces' published facts
(`/work/shared/traces/README.md`, the Mooncake and Azure dataset descriptions)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import jsonl, shared_trace

from kvpager.sim.traces import load_trace, summarize


def test_small_trace_by_hand(write):
    recs = [
        {"arrival_time": 0, "prompt_tokens": 10, "output_tokens": 1, "prefix_group": "g",
         "prefix_tokens": 8},
        {"arrival_time": 1, "prompt_tokens": 20, "output_tokens": 3, "prefix_group": "g",
         "prefix_tokens": 8, "n": 2},
        {"arrival_time": 3, "prompt_tokens": 30, "output_tokens": 5, "beam_width": 4},
        {"arrival_time": 3, "prompt_tokens": 40, "output_tokens": 7},
    ]
    s = summarize(load_trace(write("s.jsonl", jsonl(recs))), block_size=4)
    assert s.requests == 4 and s.duration_s == 3.0
    assert s.rate_per_s == pytest.approx(4 / 3)
    # gaps 1, 2, 0: mean 1, population std sqrt(2/3)
    assert s.interarrival_mean_s == pytest.approx(1.0)
    assert s.interarrival_cv == pytest.approx(math.sqrt(2 / 3))
    # linear-interpolated percentiles of 10, 20, 30, 40: rank q * 3
    assert (s.prompt.p50, s.prompt.p90, s.prompt.p99) == pytest.approx((25, 37, 39.7))
    assert (s.prompt.min, s.prompt.max, s.prompt.total, s.prompt.mean) == (10, 40, 100, 25)
    assert s.output.total == 16
    assert (s.parallel_sampling_requests, s.beam_search_requests) == (1, 1)
    assert s.prefix_kinds == {"none": 2, "group": 2, "hashes": 0, "tokens": 0}
    # blocks of 4: 2 + 5 + 7 + 10 = 24; the second request reuses [0, 4) and [4, 8)
    assert (s.prompt_blocks, s.reusable_blocks) == (24, 2)
    assert s.reusable_fraction == pytest.approx(2 / 24)
    d = s.to_dict()
    assert json.loads(json.dumps(d))["prompt"]["p90"] == pytest.approx(37)
    assert "2 of 24 full 4-token prompt blocks reusable (8.3%)" in s.to_text()


def test_one_request_has_no_rate(write):
    s = summarize(load_trace(write("one.json", json.dumps(
        [{"arrival_time": 5, "prompt_tokens": 3, "output_tokens": 1}]))))
    assert (s.duration_s, s.rate_per_s, s.interarrival_mean_s, s.interarrival_cv) == (
        0.0, None, None, None)
    assert "n/a" in s.to_text()


def test_block_size_is_checked(write):
    t = load_trace(write("one.json", json.dumps(
        [{"arrival_time": 5, "prompt_tokens": 3, "output_tokens": 1}])))
    with pytest.raises(ValueError, match=r"^block_size: expected an integer > 0"):
        summarize(t, block_size=0)


def test_azure_conversation_matches_published_figures():
    s = summarize(load_trace(shared_trace("azure2023/AzureLLMInferenceTrace_conv.csv")))
    assert s.requests == 19_366
    assert s.prompt.mean == pytest.approx(1155, abs=1)  # "mean prompt 1,155 tokens"
    assert s.output.mean == pytest.approx(211, abs=1)  # "mean output 211"
    assert s.rate_per_s == pytest.approx(5.5, abs=0.05)  # "5.5 req/s"
    assert s.interarrival_cv == pytest.approx(1.1, abs=0.05)  # "inter-arrival CV about 1.1"
    assert s.duration_s < 3600  # "1 hour"


def test_azure_code_matches_published_figures():
    s = summarize(load_trace(shared_trace("azure2023/AzureLLMInferenceTrace_code.csv")))
    assert s.requests == 8_819
    assert s.prompt.mean == pytest.approx(2048, abs=1)
    assert s.output.mean == pytest.approx(28, abs=0.5)
    assert s.rate_per_s == pytest.approx(2.6, abs=0.05)


def test_mooncake_conversation_matches_published_figures():
    path = shared_trace("mooncake_fast25/conversation_trace.jsonl")
    s = summarize(load_trace(path), block_size=16)
    assert s.requests == 12_031
    assert s.prompt.mean == pytest.approx(12_035, abs=1)  # "Avg input length 12,035"
    assert s.output.mean == pytest.approx(343, abs=1)  # "Avg output length 343"
    # "about 37% of prompt blocks are reusable with an unbounded cache"
    assert s.reusable_fraction == pytest.approx(0.37, abs=0.01)
