"""Extreme values in trace files: every one a TraceError naming the file, the record and the
field, never an OverflowError, RecursionError or a message from Python's internals."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from conftest import jsonl

from kvpager.sim.traces import TraceError, load_trace
from kvpager.sim.traces.limits import MAX_REQUEST_TOKENS, MAX_WIDTH

GOOD = {"arrival_time": 0.0, "prompt_tokens": 8, "output_tokens": 2}
AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
MOON = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}


def error_of(name: str, **kwargs) -> str:
    with pytest.raises(TraceError) as info:
        load_trace(name, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("beam_width", 2**31, "field 'beam_width': 2147483648 is above the limit of 2,147,483,647"),
    ("n", 2**63, "field 'n': 9223372036854775808 is above the limit"),
    ("prompt_tokens", 2**63, "field 'prompt_tokens': 9223372036854775808 is above the limit "
                             "of 16,777,216 tokens per request"),
    ("output_tokens", 2**64, "field 'output_tokens': 18446744073709551616 is above"),
    ("arrival_time", 10**400, "field 'arrival_time': expected a finite number >= 0"),
])
def test_kvpager_integers_beyond_their_columns(write, field, value, message):
    text = json.dumps([GOOD, {**GOOD, field: value}])
    assert error_of(write("t.json", text)).startswith(f"t.json: record 2 (index 1): {message}")


def test_limits_are_inclusive(write):
    rec = {**GOOD, "prompt_tokens": MAX_REQUEST_TOKENS, "beam_width": MAX_WIDTH}
    trace = load_trace(write("t.json", json.dumps([rec])))
    assert int(trace.prompt_tokens[0]) == MAX_REQUEST_TOKENS
    assert int(trace.beam_width[0]) == MAX_WIDTH


def test_prompt_plus_output_cannot_overflow_int64(write):
    rec = {**GOOD, "prompt_tokens": 2**62, "output_tokens": 2**62}
    assert "field 'prompt_tokens'" in error_of(write("t.json", json.dumps([rec])))


@pytest.mark.parametrize(("field", "value"), [
    ("output_length", 2**63), ("input_length", 2**70), ("timestamp", 10**400),
])
def test_mooncake_integers_beyond_int64(write, field, value):
    text = jsonl([MOON, {**MOON, field: value}])
    assert error_of(write("m.jsonl", text)).startswith(f"m.jsonl: record 2 (line 2): field "
                                                       f"'{field}': ")


def test_a_huge_prompt_is_refused_early_with_little_memory(write):
    # a 10^9-token prompt keyed by 1-token hash blocks once took 21.7 s and 2.6 GB
    rec = {**GOOD, "prompt_tokens": 10**9, "block_hashes": [1], "hash_block_size": 1}
    name = write("t.json", json.dumps([rec]))
    tracemalloc.start()
    try:
        message = error_of(name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message.startswith("t.json: record 1 (index 0): field 'prompt_tokens': 1000000000 "
                              "is above the limit")
    assert peak < 5 * 2**20


def test_hash_block_size_beyond_int64(write):
    rec = {**GOOD, "block_hashes": [1], "hash_block_size": 2**64}
    assert "field 'hash_block_size'" in error_of(write("t.json", json.dumps([rec])))


def test_deeply_nested_json_document_and_line(write):
    deep = "[" * 100_000 + "]" * 100_000
    assert error_of(write("d.json", deep)) == ("d.json: cannot read the JSON document: arrays "
                                               "or objects nested too deeply")
    line = '{"a": ' * 5000 + "1" + "}" * 5000
    text = json.dumps(GOOD) + "\n" + line + "\n"
    assert error_of(write("d.jsonl", text)) == ("d.jsonl: record 2 (line 2): cannot read the "
                                                "JSON: arrays or objects nested too deeply")


def test_integers_of_more_than_4300_digits(write):
    digits = "9" * 5000
    text = json.dumps(GOOD) + "\n" + json.dumps(GOOD).replace("8", digits) + "\n"
    assert error_of(write("l.jsonl", text)) == ("l.jsonl: record 2 (line 2): cannot read the "
                                                "JSON: an integer of more than 4,300 digits")
    doc = "[" + json.dumps(GOOD) + ",\n" + json.dumps(GOOD).replace("8", digits) + "]"
    assert error_of(write("l.json", doc)) == ("l.json: cannot read the JSON document at line "
                                              "2: an integer of more than 4,300 digits")
    row = f"2023-11-16 18:15:46.6805900,{digits},3\n"
    assert error_of(write("l.csv", AZ_HEAD + row)).startswith(
        "l.csv: record 1 (line 2): field 'ContextTokens': an integer of 5000 digits is above")


@pytest.mark.parametrize(("cell", "message"), [
    ("9223372036854775808", "9223372036854775808 is above the limit"),
    ("99999999999999999999", "99999999999999999999 is above the limit"),
    ("²", "expected an integer > 0, got '²'"),
    ("١٢", "expected an integer > 0, got '١٢'"),  # Arabic-Indic digits: isdigit() is True
    ("1_000", "expected an integer > 0, got '1_000'"),
    ("+5", "expected an integer > 0, got '+5'"),
])
def test_csv_integer_cells_are_ascii_digits_within_limits(write, cell, message):
    row = f"2023-11-16 18:15:46.6805900,374,{cell}\n"
    assert error_of(write("a.csv", AZ_HEAD + row)) == (
        f"a.csv: record 1 (line 2): field 'GeneratedTokens': {message}" + (
            " of 16,777,216 tokens per request (kvpager.sim.traces.limits.MAX_REQUEST_TOKENS)"
            if "above" in message else ""))


@pytest.mark.parametrize("stamp", ["1677-09-21 00:00:00", "2262-04-12 00:00:00",
                                   "9999-12-31 23:59:59.9999999"])
def test_azure_timestamps_outside_int64_nanoseconds(write, stamp):
    text = AZ_HEAD + "2023-11-16 18:15:46.6805900,374,3\n" + f"{stamp},10,3\n"
    assert error_of(write("a.csv", text)).startswith(
        f"a.csv: record 2 (line 3): field 'TIMESTAMP': '{stamp}' is outside the range of int64 "
        "nanoseconds since 1970")


def test_azure_span_beyond_int64_nanoseconds(write):
    text = AZ_HEAD + "1700-01-01 00:00:00,5,3\n2200-01-01 00:00:00,10,3\n"
    assert "more than 2^63 ns" in error_of(write("a.csv", text))


@pytest.mark.parametrize(("header", "lacking"), [
    ("num_prefill_tokens,other", "lacks the column(s) num_decode_tokens"),
    ("TIMESTAMP,ContextTokens", "lacks the column(s) GeneratedTokens"),
    ("TIMESTAMP,GeneratedTokens,ContextTokens", "expected the first three columns "
                                                "TIMESTAMP,ContextTokens,GeneratedTokens in "
                                                "this order"),
])
def test_csv_missing_a_column_names_it(write, header, lacking):
    message = error_of(write("c.csv", f"{header}\n1,2,3\n"))
    assert message.startswith("c.csv: ") and lacking in message


def _reusable_by_sorting_keys(trace, block_size: int) -> int:
    """The definition: duplicates among all full-block keys of the trace."""
    import numpy as np

    from kvpager.sim.traces.keys import BlockKeyer

    keyer = BlockKeyer(trace, block_size)
    keys = [keyer.keys(i) for i in range(len(trace)) if trace.prefix.kind[i]]
    if not keys:
        return 0
    flat = np.sort(np.concatenate(keys))
    return int((flat[1:] == flat[:-1]).sum())


@pytest.mark.parametrize("block_size", [1, 7, 16, 512, 700])
def test_reuse_counted_per_node_equals_the_definition(write, block_size):
    import random

    from kvpager.sim.traces.summary import reusable_blocks

    rng = random.Random(block_size)
    records = []
    for k in range(60):
        p = rng.randint(1, 3000)
        rec = {"arrival_time": k * 0.1, "prompt_tokens": p, "output_tokens": 3}
        kind = rng.choice(["group", "hashes", "tokens", "none"])
        if kind == "group":
            rec |= {"prefix_group": rng.choice("ab"), "prefix_tokens": rng.randint(0, p)}
        elif kind == "hashes":
            size = rng.choice([64, 100, 512])
            most = -(-p // size)
            rec |= {"hash_block_size": size,
                    "block_hashes": [rng.choice([1, 2]) for _ in range(rng.randint(0, most))]}
        elif kind == "tokens":
            rec["prompt_token_ids"] = [rng.choice([5, 6]) if j > 8 else j for j in range(p)]
        records.append(rec)
    trace = load_trace(write("mix.json", json.dumps(records)))
    total, reusable = reusable_blocks(trace, block_size)
    assert reusable == _reusable_by_sorting_keys(trace, block_size)
    assert total == int((trace.prompt_tokens // block_size).sum())


def test_a_small_file_of_long_shared_prompts_summarizes_in_little_memory(write):
    # 60 records of 7 KB once built 63 M keys (1 GB, 8 s) to count reuse
    from kvpager.sim.traces import summarize

    records = [{"arrival_time": k * 0.1, "prompt_tokens": MAX_REQUEST_TOKENS,
                "output_tokens": 5, "prefix_group": "g", "prefix_tokens": 2**23}
               for k in range(60)]
    records += [{"arrival_time": 9.0, "prompt_tokens": MAX_REQUEST_TOKENS, "output_tokens": 5,
                 "block_hashes": [1], "hash_block_size": MAX_REQUEST_TOKENS}] * 2
    trace = load_trace(write("long.json", json.dumps(records)))
    tracemalloc.start()
    try:
        summary = summarize(trace, block_size=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per = 2**23 // 16
    assert summary.reusable_blocks == 59 * per + MAX_REQUEST_TOKENS // 16
    assert peak < 5 * 2**20
