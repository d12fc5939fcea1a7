"""Each importer against small files whose expected columns are written out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES, jsonl

from kvpager.sim.traces import (
    GammaArrivals,
    PoissonArrivals,
    PrefixKind,
    TraceError,
    detect_format,
    load_trace,
)

KV = [
    {"arrival_time": 2.5, "prompt_tokens": 10, "output_tokens": 3, "id": "b"},
    {"arrival_time": 0.5, "prompt_tokens": 20, "output_tokens": 4, "n": 2},
    {"arrival_time": 2.5, "prompt_tokens": 30, "output_tokens": 5, "beam_width": 4},
    {"arrival_time": 1, "prompt_tokens": 40, "output_tokens": 6, "id": 7},
]


def check_kv_columns(trace) -> None:
    # sorted by arrival; the two requests at 2.5 keep file order (record 0 before record 2)
    assert trace.arrival.tolist() == [0.5, 1.0, 2.5, 2.5]
    assert trace.record.tolist() == [1, 3, 0, 2]
    assert trace.prompt_tokens.tolist() == [20, 40, 10, 30]
    assert trace.output_tokens.tolist() == [4, 6, 3, 5]
    assert trace.n.tolist() == [2, 1, 1, 1]
    assert trace.beam_width.tolist() == [1, 1, 1, 4]
    assert trace.ids.tolist() == ["1", "7", "b", "2"]  # missing id -> 0-based record index
    assert trace.arrival.dtype == np.float64 and trace.prompt_tokens.dtype == np.int64


def test_kvpager_json_list_document_and_lines_agree(write):
    for name, text in [
        ("a.json", json.dumps(KV)),
        ("b.json", json.dumps({"requests": KV, "meta": "ignored"})),
        ("c.jsonl", jsonl(KV)),
        ("c_blank_lines.txt", "\n" + jsonl(KV).replace("\n", "\n\n")),
    ]:
        trace = load_trace(write(name, text))
        check_kv_columns(trace)
        assert trace.format == ("kvpager-jsonl" if "c" in name else "kvpager-json")
    lines = load_trace("c_blank_lines.txt").line.tolist()
    assert lines == [4, 8, 2, 6]  # 1-based physical lines, blank lines counted


def test_columns_are_read_only(write):
    trace = load_trace(write("a.json", json.dumps(KV)))
    with pytest.raises(ValueError):
        trace.arrival[0] = 9.0


def test_prefix_identity_fields(write):
    recs = [
        {"arrival_time": 0, "prompt_tokens": 100, "output_tokens": 1,
         "prefix_group": "sys", "prefix_tokens": 64},
        {"arrival_time": 1, "prompt_tokens": 1000, "output_tokens": 1,
         "block_hashes": ["x", "y"], "hash_block_size": 256},
        {"arrival_time": 2, "prompt_tokens": 3, "output_tokens": 1,
         "prompt_token_ids": [5, 6, 7]},
        {"arrival_time": 3, "prompt_tokens": 50, "output_tokens": 1, "prefix_group": 7,
         "prefix_tokens": 0},
        {"arrival_time": 4, "prompt_tokens": 600, "output_tokens": 1, "block_hashes": [11, 12]},
        {"arrival_time": 5, "prompt_tokens": 9, "output_tokens": 1},
    ]
    t = load_trace(write("p.jsonl", jsonl(recs)))
    pre = t.prefix
    assert pre.kind.tolist() == [1, 2, 3, 1, 2, 0]
    assert [pre.group_labels[g] if g >= 0 else None for g in pre.group.tolist()] == [
        "sys", None, None, 7, None, None]
    assert pre.shared_tokens.tolist() == [64, 0, 0, 0, 0, 0]
    assert pre.hash_block_size.tolist() == [0, 256, 0, 0, 512, 0]  # 512 is the default
    assert pre.row(1).tolist() == [0, 1]  # string labels interned in order of appearance
    assert pre.row(2).tolist() == [5, 6, 7]
    assert pre.row(4).tolist() == [2, 3]  # a file with string labels interns all labels
    assert t.prompt_token_ids(2).tolist() == [5, 6, 7] and t.prompt_token_ids(0) is None
    assert pre.row(5).tolist() == []


def test_prefix_rows_follow_the_sort(write):
    recs = [
        {"arrival_time": 3, "prompt_tokens": 2, "output_tokens": 1, "prompt_token_ids": [1, 2]},
        {"arrival_time": 1, "prompt_tokens": 3, "output_tokens": 1,
         "prompt_token_ids": [3, 4, 5]},
        {"arrival_time": 2, "prompt_tokens": 1, "output_tokens": 1, "prompt_token_ids": [6]},
    ]
    t = load_trace(write("s.json", json.dumps(recs)))
    assert [t.prefix.row(i).tolist() for i in range(3)] == [[3, 4, 5], [6], [1, 2]]


def test_azure_csv(write):
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 23:59:59.5000000,374,44\n"
            "2023-11-17 00:00:00.0000001,396,109\n"
            "2023-11-16 23:59:59.2500000,879,55\n")
    t = load_trace(write("az.log", text))  # extension says nothing; the header does
    assert t.format == "azure-csv"
    # seconds since the earliest row, across midnight, exact to 100 ns
    assert t.arrival.tolist() == [0.0, 0.25, 0.7500001]
    assert t.prompt_tokens.tolist() == [879, 374, 396]
    assert t.output_tokens.tolist() == [55, 44, 109]
    assert t.line.tolist() == [4, 2, 3]


def test_mooncake_jsonl(write):
    recs = [
        {"timestamp": 1500, "input_length": 600, "output_length": 7, "hash_ids": [0, 1]},
        {"timestamp": 0, "input_length": 512, "output_length": 3, "hash_ids": [0]},
    ]
    t = load_trace(write("m.data", jsonl(recs)))
    assert t.format == "mooncake-jsonl"
    assert t.arrival.tolist() == [0.0, 1.5]  # milliseconds -> seconds
    assert t.prompt_tokens.tolist() == [512, 600]
    assert t.prefix.kind.tolist() == [PrefixKind.HASHES] * 2
    assert t.prefix.hash_block_size.tolist() == [512, 512]
    assert [t.prefix.row(i).tolist() for i in range(2)] == [[0], [0, 1]]


def test_token_id_jsonl(write):
    recs = [
        {"input_toks": 3, "output_toks": 2, "arrival_time_ns": 2_500_000_000,
         "input_tok_ids": [1, 2, 3], "output_tok_ids": [9, 9]},
        {"input_toks": 2, "output_toks": 1, "arrival_time_ns": 46_926_808,
         "input_tok_ids": [1, 2], "output_tok_ids": [9]},
    ]
    t = load_trace(write("tok.jsonl", jsonl(recs)))
    assert t.format == "tokens-jsonl"
    assert t.arrival.tolist() == [0.046926808, 2.5]
    assert t.prompt_tokens.tolist() == [2, 3]
    assert t.prompt_token_ids(0).tolist() == [1, 2]
    assert t.prompt_token_ids(1).tolist() == [1, 2, 3]


def test_length_only_csv_needs_and_uses_an_arrival_process(write):
    text = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n5,2,7,2.5\n8,4,12,2\n"
    name = write("lengths.csv", text)
    with pytest.raises(TraceError, match="length-only CSV has no arrival times"):
        load_trace(name)
    proc = PoissonArrivals(rate=4.0, seed=3)
    t = load_trace(name, arrivals=proc)
    assert t.format == "lengths-csv"
    assert t.prompt_tokens.tolist() == [5, 8] and t.output_tokens.tolist() == [2, 4]
    assert t.arrival.tolist() == proc.times(2).tolist()
    # columns are found by name, in any order
    swapped = "num_decode_tokens,x,num_prefill_tokens\n2,0,5\n"
    t2 = load_trace(write("l2.csv", swapped), arrivals=proc)
    assert t2.prompt_tokens.tolist() == [5] and t2.output_tokens.tolist() == [2]


def test_arrival_processes_statistics():
    # Means and CVs of 200,000 gaps: the sampling error of the CV is ~1% here, so 4% bounds
    # hold with overwhelming probability for any seed; the seed only fixes the values.
    for proc, cv in [(PoissonArrivals(rate=5.0, seed=1), 1.0),
                     (GammaArrivals(rate=5.0, cv=2.0, seed=1), 2.0),
                     (GammaArrivals(rate=5.0, cv=0.5, seed=1), 0.5)]:
        times = proc.times(200_001)
        gaps = np.diff(times)
        assert times[0] == 0.0 and np.all(gaps >= 0)
        assert gaps.mean() == pytest.approx(0.2, rel=0.04)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.04)
        assert np.array_equal(times, proc.times(200_001))  # same seed, same trace
    assert not np.array_equal(PoissonArrivals(5.0, seed=1).times(10),
                              PoissonArrivals(5.0, seed=2).times(10))


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"rate": 0}, "rate"), ({"rate": float("nan")}, "rate"), ({"rate": 1, "seed": -1}, "seed"),
])
def test_poisson_arguments_are_checked(kwargs, arg):
    with pytest.raises(ValueError, match=f"^{arg}:"):
        PoissonArrivals(**kwargs)


def test_gamma_cv_is_checked():
    with pytest.raises(ValueError, match=r"^cv:"):
        GammaArrivals(rate=1.0, cv=0.0)


def test_arrivals_retime_a_timed_trace(write):
    t = load_trace(write("a.json", json.dumps(KV)), arrivals=PoissonArrivals(2.0, seed=0))
    # requests keep their order by original arrival, at the new times
    assert t.record.tolist() == [1, 3, 0, 2]
    assert t.arrival.tolist() == PoissonArrivals(2.0, seed=0).times(4).tolist()


def test_detect_format_by_content(write):
    assert detect_format(EXAMPLES / "azure_conv_sample.csv") == "azure-csv"
    assert detect_format(EXAMPLES / "mooncake_conv_sample.jsonl") == "mooncake-jsonl"
    assert detect_format(write("x.csv", json.dumps(KV))) == "kvpager-json"
    assert detect_format(write("y.json", "num_prefill_tokens,num_decode_tokens\n1,2\n")) == (
        "lengths-csv")


def test_forced_format(write):
    name = write("a.jsonl", jsonl(KV))
    assert len(load_trace(name, format="kvpager")) == 4
    with pytest.raises(TraceError,
                       match=r"^a.jsonl: record 1 \(line 1\): field 'timestamp': missing field$"):
        load_trace(name, format="mooncake")
    with pytest.raises(TraceError, match="format 'azure' is CSV, but the file holds JSON"):
        load_trace(name, format="azure")
    with pytest.raises(ValueError, match=r"^format: expected 'auto' or one of"):
        load_trace(name, format="parquet")


def test_example_slices_match_their_sources():
    az = load_trace(EXAMPLES / "azure_conv_sample.csv")
    lines = (EXAMPLES / "azure_conv_sample.csv").read_text().splitlines()[1:]
    assert len(az) == len(lines) == 841
    assert az.prompt_tokens.tolist() == [int(x.split(",")[1]) for x in lines]
    assert 179 < az.duration < 180  # 18:30:00 to 18:33:00
    mc = load_trace(EXAMPLES / "mooncake_conv_sample.jsonl")
    raw = [json.loads(x) for x in (EXAMPLES / "mooncake_conv_sample.jsonl").open()]
    assert len(mc) == len(raw) == 339
    assert mc.output_tokens.tolist() == [r["output_length"] for r in raw]
    assert all(mc.prefix.row(i).tolist() == raw[i]["hash_ids"] for i in range(len(raw)))
