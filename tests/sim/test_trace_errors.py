"""Bad trace files: one TraceError (a ValueError) whose message names file, record, field."""

from __future__ import annotations

import json
import os

import pytest
from conftest import jsonl

from kvpager.sim.traces import TraceError, load_trace

GOOD = {"arrival_time": 0.0, "prompt_tokens": 8, "output_tokens": 2}
AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZ_ROW = "2023-11-16 18:15:46.6805900,374,44\n"


def expect(name: str, message: str, **kwargs) -> TraceError:
    with pytest.raises(TraceError) as info:
        load_trace(name, **kwargs)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    return info.value


def test_the_example_message_of_the_spec(write):
    rows = AZ_ROW * 16 + "2023-11-16 18:15:50.9951690,396,abc\n"
    err = expect(write("conv.csv", AZ_HEAD + rows),
                 "conv.csv: record 17 (line 18): field 'GeneratedTokens': expected an integer "
                 "> 0, got 'abc'")
    assert (err.path, err.record, err.field) == ("conv.csv", 17, "GeneratedTokens")


def test_missing_file_and_directory(write, tmp_path):
    expect("nope.json", "nope.json: no such file")
    os.mkdir(tmp_path / "d")
    expect("d", "d: is a directory, not a trace file")


def test_empty_whitespace_and_binary_files(write):
    expect(write("e.json", ""), "e.json: empty file")
    expect(write("w.jsonl", "\n  \n\t\n"), "w.jsonl: empty file")
    with pytest.raises(TraceError, match=r"^b.bin: not UTF-8 text \(bad byte at offset 1\); "
                                          r"accepted formats: kvpager JSON"):
        load_trace(write("b.bin", b"\x00\xff\xfe"))


def test_unknown_formats_list_the_accepted_ones(write):
    with pytest.raises(TraceError) as info:
        load_trace(write("u.jsonl", jsonl([{"time": 1, "tokens": 3}])))
    msg = str(info.value)
    assert msg.startswith("u.jsonl: unknown trace format: first record has fields time, tokens;")
    for fmt in ("kvpager JSON", "Mooncake JSON Lines", "token-id JSON Lines", "Azure CSV",
                "length-only CSV"):
        assert fmt in msg
    with pytest.raises(TraceError, match=r"^u.csv: unknown trace format: not JSON, and the "
                                          r"first line 'a,b,c' is no known CSV header"):
        load_trace(write("u.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(TraceError, match=r"^l.json: unknown trace format: first record is 3"):
        load_trace(write("l.json", "[3, 4]"))


def expect_prefix(name: str, prefix: str) -> None:
    """For messages that end in the json module's own wording, which varies by Python."""
    with pytest.raises(TraceError) as info:
        load_trace(name)
    assert str(info.value).startswith(prefix), str(info.value)


def test_bad_json_document_names_line_and_column(write):
    text = '{"requests": [\n  {"arrival_time": 0, "prompt_tokens": 8 "output_tokens": 2}\n]}'
    expect(write("d.json", text),
           "d.json: invalid JSON at line 2, column 42: Expecting ',' delimiter")
    expect_prefix(write("l.json", "\n\n[1, 2,]"), "l.json: invalid JSON at line 3, column 7: ")


def test_bad_json_line_names_record_and_line(write):
    text = jsonl([GOOD]) + "\n" + '{"arrival_time": 1, "prompt_tokens": 8,}\n'
    expect_prefix(write("b.jsonl", text), "b.jsonl: record 2 (line 3): invalid JSON at column 40: ")


def test_pretty_printed_object_without_requests(write):
    text = json.dumps({"version": 1, "entries": []}, indent=2)
    expect(write("cal.json", text), "cal.json: a JSON document must be a list of requests or an "
           "object with 'requests'; this object has fields version, entries")


def test_byte_order_mark_and_crlf_are_tolerated(write):
    text = "\ufeff" + jsonl([GOOD, GOOD]).replace("\n", "\r\n")
    assert len(load_trace(write("bom.jsonl", text))) == 2
    csv = "\ufeff" + (AZ_HEAD + AZ_ROW + AZ_ROW).replace("\n", "\r\n")
    assert load_trace(write("bom.csv", csv)).prompt_tokens.tolist() == [374, 374]


def test_empty_containers(write):
    expect(write("a.json", "[]"), "a.json: the JSON list holds no requests")
    expect(write("b.json", '{"requests": []}'), "b.json: field 'requests': the list holds no "
           "requests")
    expect(write("c.json", '{"requests": {"a": 1}}'),
           "c.json: field 'requests': expected a list of request objects, got dict")
    expect(write("h.csv", AZ_HEAD), "h.csv: no requests: the CSV has a header but no data rows")


@pytest.mark.parametrize(("change", "message"), [
    ({"prompt_tokens": None}, "field 'prompt_tokens': expected an integer > 0, got null"),
    ({"prompt_tokens": "8"}, "field 'prompt_tokens': expected an integer > 0, got \"8\""),
    ({"prompt_tokens": 8.5}, "field 'prompt_tokens': expected an integer > 0, got 8.5"),
    ({"prompt_tokens": True}, "field 'prompt_tokens': expected an integer > 0, got true"),
    ({"output_tokens": 0}, "field 'output_tokens': expected an integer > 0, got 0"),
    ({"output_tokens": -4}, "field 'output_tokens': expected an integer > 0, got -4"),
    ({"arrival_time": -0.5}, "field 'arrival_time': expected a finite number >= 0, got -0.5"),
    ({"arrival_time": float("nan")}, "field 'arrival_time': expected a finite number >= 0, "
                                     "got nan"),
    ({"arrival_time": float("inf")}, "field 'arrival_time': expected a finite number >= 0, "
                                     "got inf"),
    ({"arrival_time": "0"}, "field 'arrival_time': expected a number of seconds >= 0, got "
                            "\"0\""),
    ({"n": 0}, "field 'n': expected an integer >= 1, got 0"),
    ({"beam_width": 1.0}, "field 'beam_width': expected an integer >= 1, got 1.0"),
    ({"n": 2, "beam_width": 3}, "field 'beam_width': n = 2 and beam_width = 3 are both > 1: "
                                "a request samples n sequences or runs a beam search, not both"),
    ({"id": [1]}, "field 'id': expected a string or an integer, got [1]"),
    ({"prefix_group": "g", "prefix_tokens": 9},
     "field 'prefix_tokens': 9 > prompt_tokens = 8"),
    ({"prefix_group": "g"}, "field 'prefix_tokens': missing field (required with "
                            "'prefix_group')"),
    ({"prefix_tokens": 4}, "field 'prefix_group': missing field (required with "
                           "'prefix_tokens')"),
    ({"prefix_group": 1.5, "prefix_tokens": 4},
     "field 'prefix_group': expected a string or an integer, got 1.5"),
    ({"prefix_group": "g", "prefix_tokens": 4, "block_hashes": [1]},
     "field 'block_hashes': 'prefix_group' and 'block_hashes' are alternative prefix "
     "identities: give one"),
    ({"block_hashes": [1, 2, 3], "hash_block_size": 4},
     "field 'block_hashes': 3 ids of 4-token blocks, but prompt_tokens = 8 has at most "
     "ceil(8 / 4) = 2"),
    ({"block_hashes": [1, [2]], "hash_block_size": 4},
     "field 'block_hashes': expected a list of integers or strings, got [2] at position 1"),
    ({"block_hashes": "abc"}, "field 'block_hashes': expected a list of block ids, got \"abc\""),
    ({"block_hashes": [1], "hash_block_size": 0},
     "field 'hash_block_size': expected an integer > 0, got 0"),
    ({"hash_block_size": 16}, "field 'hash_block_size': given without 'block_hashes'"),
    ({"prompt_token_ids": [1, 2]}, "field 'prompt_token_ids': 2 token ids, but "
                                   "prompt_tokens = 8"),
    ({"prompt_token_ids": [1, 2, 3, 4, 5, 6, 7, 8.0]},
     "field 'prompt_token_ids': expected a list of integers, got 8.0 at position 7"),
    ({"prompt_token_ids": [1, 2, 3, 4, 5, 6, 7, 2**64]},
     "field 'prompt_token_ids': expected a list of integers, got 18446744073709551616 at "
     "position 7"),
])
def test_kvpager_field_errors(write, change, message):
    rec = {**GOOD, **change}
    for k in [k for k, v in change.items() if v is None]:
        rec[k] = None
    records = [GOOD, GOOD, rec]
    expect(write("t.json", json.dumps(records)), f"t.json: record 3 (index 2): {message}")
    expect(write("t.jsonl", jsonl(records)), f"t.jsonl: record 3 (line 3): {message}")
    expect(write("r.json", json.dumps({"requests": records})),
           f"r.json: record 3 (requests[2]): {message}")


def test_block_hashes_may_cover_the_whole_prompt_exactly(write):
    rec = {**GOOD, "block_hashes": [1, 2], "hash_block_size": 4}
    assert load_trace(write("t.json", json.dumps([rec]))).prefix.row(0).tolist() == [1, 2]


def test_missing_required_field_and_non_object(write):
    rec = {"arrival_time": 1.0, "output_tokens": 2}
    expect(write("m.jsonl", jsonl([GOOD, rec])),
           "m.jsonl: record 2 (line 2): field 'prompt_tokens': missing field")
    expect(write("o.json", json.dumps([GOOD, [1, 2]])),
           "o.json: record 2 (index 1): expected a JSON object, got [1, 2]")


def test_duplicate_ids(write):
    recs = [{**GOOD, "id": "a"}, {**GOOD, "id": "b"}, {**GOOD, "id": "a"}]
    expect(write("d.jsonl", jsonl(recs)),
           "d.jsonl: record 3 (line 3): field 'id': duplicate id 'a', first used by record 1")
    recs = [GOOD, {**GOOD, "id": 0}]
    expect(write("e.jsonl", jsonl(recs)),
           "e.jsonl: record 2 (line 2): field 'id': duplicate id '0', first used by record 1")


@pytest.mark.parametrize(("stamp", "ok"), [
    ("2023-11-16 18:15:46", True),
    ("2023-11-16T18:15:46.5", True),
    ("2023-11-16 18:15", False),
    ("16/11/2023 18:15:46", False),
    ("2023-02-30 18:15:46.1", False),
    ("2023-11-16 24:00:00.0", False),
    ("", False),
])
def test_azure_timestamps(write, stamp, ok):
    text = AZ_HEAD + AZ_ROW + f"{stamp},10,3\n"
    if ok:
        assert len(load_trace(write("a.csv", text))) == 2
        return
    expect(write("a.csv", text),
           f"a.csv: record 2 (line 3): field 'TIMESTAMP': expected a time like "
           f"'2023-11-16 18:15:46.6805900', got {stamp!r}")


def test_azure_short_row_and_bad_context(write):
    expect(write("s.csv", AZ_HEAD + AZ_ROW + "\n2023-11-16 18:15:47.0,12\n"),
           "s.csv: record 2 (line 4): field 'GeneratedTokens': missing field: the line has "
           "2 of 3 columns")
    expect(write("c.csv", AZ_HEAD + "2023-11-16 18:15:47.0,-3,4\n"),
           "c.csv: record 1 (line 2): field 'ContextTokens': expected an integer > 0, got '-3'")


def test_mooncake_errors(write):
    good = {"timestamp": 0, "input_length": 513, "output_length": 1, "hash_ids": [1, 2]}
    expect(write("m.jsonl", jsonl([good, {**good, "hash_ids": [1]}])),
           "m.jsonl: record 2 (line 2): field 'hash_ids': expected ceil(input_length / 512) = "
           "2 ids, got 1")
    expect(write("n.jsonl", jsonl([good, {**good, "timestamp": -1}])),
           "n.jsonl: record 2 (line 2): field 'timestamp': expected a finite number of "
           "milliseconds >= 0, got -1")
    expect(write("o.jsonl", jsonl([good, {**good, "hash_ids": [1, "x"]}])),
           "o.jsonl: record 2 (line 2): field 'hash_ids': expected a list of integers, got "
           "\"x\" at position 1")


def test_token_trace_errors(write):
    good = {"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1, 2]}
    expect(write("t.jsonl", jsonl([{**good, "input_tok_ids": [1]}])),
           "t.jsonl: record 1 (line 1): field 'input_tok_ids': 1 token ids, but input_toks = 2")
    expect(write("u.jsonl", jsonl([{**good, "output_toks": 0}])),
           "u.jsonl: record 1 (line 1): field 'output_toks': expected an integer > 0, got 0")


def test_length_csv_errors(write):
    from kvpager.sim.traces import PoissonArrivals

    expect(write("l.csv", "num_prefill_tokens,num_decode_tokens\n5,2\n0,3\n"),
           "l.csv: record 2 (line 3): field 'num_prefill_tokens': expected an integer > 0, "
           "got '0'", arrivals=PoissonArrivals(1.0))
    with pytest.raises(ValueError, match=r"^arrivals: expected an arrival process"):
        load_trace(write("m.csv", "num_prefill_tokens,num_decode_tokens\n5,2\n"), arrivals=5.0)


def test_argument_errors_come_before_reading(write):
    # the file does not exist: the argument error must win, since nothing is read first
    for kwargs, arg in [({"rate_scale": 0}, "rate_scale"), ({"limit": 0}, "limit"),
                        ({"time_window": (5, 1)}, "time_window"),
                        ({"time_window": "ab"}, "time_window")]:
        with pytest.raises(ValueError, match=f"^{arg}: ") as info:
            load_trace("missing.json", **kwargs)
        assert not isinstance(info.value, TraceError)
