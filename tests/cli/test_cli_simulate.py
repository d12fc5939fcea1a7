"""The `kvpager` command line: simulate and trace, success and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("kvpager ")


def test_simulate_writes_the_run_directory_and_prints_a_table(tmp_path):
    result = invoke("simulate", EXAMPLES / "azure_conv_sample.csv", "--cache", "paged",
                    "--limit", "60", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "normalized latency" in result.stdout and "paged" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    paged = metrics["strategies"]["paged"]
    requests = paged["requests"]
    assert requests["arrived"] == 60 == requests["finished"] + requests["rejected"]
    assert requests["finished"] >= 55  # the slice's few > 4,096-token requests are rejected
    assert (tmp_path / "requests_paged.csv").exists()


def test_simulate_json_output_is_the_metrics_file(tmp_path):
    result = invoke("simulate", EXAMPLES / "azure_conv_sample.csv", "--cache", "paged",
                    "--limit", "20", "--rate-scale", "2", "--json", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "metrics.json").read_text())
    assert printed["config"]["strategies"] == ["paged"]


def test_length_only_trace_needs_and_takes_an_arrival_rate(tmp_path):
    lengths = tmp_path / "lengths.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens\n100,20\n300,40\n50,5\n")
    result = invoke("simulate", lengths, "--cache", "paged", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "arrival" in result.output
    result = invoke("simulate", lengths, "--cache", "paged", "--arrival-rate", "2",
                    "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("content", "expect"), [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,abc\n",
     "record 1 (line 2): field 'GeneratedTokens'"),
    ('[{"arrival_time": 0, "prompt_tokens": 5, "output_tokens": 2},'
     ' {"arrival_time": 1, "prompt_tokens": -5, "output_tokens": 2}]',
     "field 'prompt_tokens'"),
    ("", "empty"),
])
def test_bad_trace_is_one_line_naming_file_record_field(tmp_path, content, expect):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    result = invoke("simulate", bad, "--out", tmp_path / "r")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "bad.csv" in lines[0] and expect in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("option", "value", "expect"), [
    ("--model", "gpt-9", "unknown model"), ("--gpu", "tpu", "gpu"),
    ("--cache", "lru", "unknown cache strategy"), ("--preemption", "drop", "--preemption"),
    ("--block-size", "0", "--block-size must be"), ("--tp", "3", "tp"),
    ("--swap-space", "-1", "--swap-space must be >= 0"),
    ("--cost-model", "nope.json", "--cost-model: nope.json: no such file"),
])
def test_bad_options_exit_2(tmp_path, option, value, expect):
    result = invoke("simulate", EXAMPLES / "azure_conv_sample.csv", option, value,
                    "--limit", "5", "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert expect in result.output


def test_missing_trace_file_exit_2(tmp_path):
    result = invoke("simulate", tmp_path / "nope.json")
    assert result.exit_code == 2 and "nope.json" in result.output


def test_trace_info_and_convert_round_trip(tmp_path):
    src = EXAMPLES / "azure_conv_sample.csv"
    info = invoke("trace", "info", src, "--json")
    assert info.exit_code == 0
    summary = json.loads(info.stdout)
    out = tmp_path / "t.jsonl"
    converted = invoke("trace", "convert", src, out, "--limit", "100")
    assert converted.exit_code == 0 and "wrote 100 requests" in converted.stdout
    again = json.loads(invoke("trace", "info", out, "--json").stdout)
    assert again["requests"] == 100 and summary["requests"] > 100
    bad = invoke("trace", "convert", src, tmp_path / "t.txt")
    assert bad.exit_code == 2 and ".json or .jsonl" in bad.output
