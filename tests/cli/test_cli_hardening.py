"""`kvpager simulate` and friends on hostile input: outliers are rejected and the run goes on,
outputs are checked before any work, and every bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app

runner = CliRunner()
GOOD = {"arrival_time": 0.0, "prompt_tokens": 100, "output_tokens": 10}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def outlier(tmp_path: Path) -> Path:
    """Two ordinary requests and one asking for a million output tokens."""
    path = tmp_path / "outlier.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "arrival_time": 0.5, "output_tokens": 10**6},
                                {**GOOD, "arrival_time": 1.0}]))
    return path


def test_one_outlier_is_rejected_with_a_reason_and_the_run_goes_on(outlier, tmp_path):
    result = invoke("simulate", outlier, "--cache", "paged", "--cache", "orca-max",
                    "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["max_model_len"] == 4096  # Llama-2-7B's context, not the trace's
    for name in ("paged", "orca-max"):
        requests = metrics["strategies"][name]["requests"]
        assert (requests["finished"], requests["rejected"]) == (2, 1)
        assert requests["rejected_reasons"] == {
            "prompt + output tokens exceeds max_model_len": 1}
        assert requests["rejected_kinds"] == {"prompt + output tokens exceeds max_model_len": {
            "count": 1, "limit_name": "max_model_len", "limit": 4096, "longest_prompt": 100,
            "longest_total": 1_000_100}}
    assert ("every strategy: 1 x prompt + output tokens exceeds max_model_len (limit 4,096; "
            "longest prompt 100; longest prompt + output 1,000,100)") in result.output
    rows = (tmp_path / "run" / "requests_paged.csv").read_text().splitlines()
    assert "rejected: prompt of 100 + output of 1000000 tokens exceeds max_model_len=4096" in \
        rows[2]


def test_a_prompt_longer_than_the_context_is_rejected_too(tmp_path):
    path = tmp_path / "long.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "prompt_tokens": 2_000_000}]))
    result = invoke("simulate", path, "--cache", "paged", "--json", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["strategies"]["paged"]["requests"]["rejected"] == 1


def test_a_user_max_model_len_that_does_not_fit_names_the_option(outlier, tmp_path):
    result = invoke("simulate", outlier, "--max-model-len", "2000000", "--out", tmp_path / "r")
    line = one_error_line(result, "model does not fit", "--max-model-len 2000000",
                          "lower --max-model-len")
    assert "--chunked-prefill" in line
    assert not (tmp_path / "r").exists()


def test_a_user_max_num_batched_tokens_that_does_not_fit_names_the_option(outlier, tmp_path):
    result = invoke("simulate", outlier, "--max-num-batched-tokens", "2000000",
                    "--out", tmp_path / "r")
    one_error_line(result, "model does not fit", "(--max-num-batched-tokens) reserves "
                   "activations for that many tokens per step: lower it")


def test_the_hint_blames_a_limit_only_when_its_default_would_fit(outlier, tmp_path):
    result = invoke("simulate", outlier, "--max-num-seqs", "10000000000000", "--out",
                    tmp_path / "r")
    one_error_line(result, "model does not fit", "(--max-num-seqs)", "lower it")
    # 70B weights do not fit one 80 GB GPU whatever max_num_seqs is: no hint about it
    result = invoke("simulate", outlier, "--model", "llama-2-70b", "--max-num-seqs", "512",
                    "--out", tmp_path / "r")
    line = one_error_line(result, "model does not fit", "raise tp")
    assert "--max-num-seqs" not in line


@pytest.mark.parametrize("option", ["--out", "--report"])
def test_outputs_are_checked_before_simulating(outlier, tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker if option == "--out" else blocker / "r.html"
    args = ["--out", tmp_path / "run", option, target] if option == "--report" else [
        option, target]
    result = invoke("simulate", outlier, *args)
    one_error_line(result, option, "a-file")
    assert not (tmp_path / "run").exists()


def test_report_must_be_html_and_not_a_directory(outlier, tmp_path):
    result = invoke("simulate", outlier, "--out", tmp_path / "r", "--report", tmp_path)
    one_error_line(result, "--report", "must end in .html")
    (tmp_path / "d.html").mkdir()
    result = invoke("simulate", outlier, "--out", tmp_path / "r", "--report", tmp_path / "d.html")
    one_error_line(result, "--report", "is a directory")


def test_sweep_and_convert_check_their_outputs_first(outlier, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke("sweep", outlier, "--rates", "1", "--out", blocker)
    one_error_line(result, "--out", "existing file")
    result = invoke("trace", "convert", outlier, blocker / "x.jsonl")
    one_error_line(result, "a-file", "is a file, not a directory")


def test_length_only_csv_without_a_rate_names_the_option(tmp_path):
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n100,20\n")
    result = invoke("simulate", path, "--out", tmp_path / "r")
    line = one_error_line(result, "lengths.csv", "--arrival-rate")
    assert "PoissonArrivals" not in line and "arrivals=" not in line


@pytest.mark.parametrize(("name", "content", "needles"), [
    ("deep.json", "[" * 50_000 + "]" * 50_000, ("deep.json", "nested too deeply")),
    ("bw.json", json.dumps([{**GOOD, "beam_width": 2**40}]), ("bw.json", "record 1",
                                                              "'beam_width'")),
    ("n.jsonl", json.dumps({**GOOD, "n": 2**63}) + "\n", ("n.jsonl", "record 1", "'n'")),
    ("p.json", json.dumps([{**GOOD, "prompt_tokens": 2**64}]), ("p.json", "'prompt_tokens'")),
    ("mc.jsonl", json.dumps({"timestamp": 0, "input_length": 5, "output_length": 2**63,
                             "hash_ids": [1]}) + "\n", ("mc.jsonl", "'output_length'")),
    ("az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n9999-12-31 00:00:00,5,2\n",
     ("az.csv", "record 1", "'TIMESTAMP'")),
    ("big.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,5,"
     "9223372036854775808\n", ("big.csv", "record 1", "'GeneratedTokens'")),
    ("sup.csv", "num_prefill_tokens,num_decode_tokens\n²,5\n",
     ("sup.csv", "record 1", "'num_prefill_tokens'")),
    ("col.csv", "num_prefill_tokens\n5\n", ("col.csv", "num_decode_tokens")),
])
def test_extreme_input_is_exit_2_naming_the_file(tmp_path, name, content, needles):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    result = invoke("simulate", path, "--arrival-rate", "1", "--out", tmp_path / "r")
    line = one_error_line(result, *needles)
    assert "internal error" not in line and "Errno" not in line


def test_report_of_a_directory_without_metrics(tmp_path):
    result = invoke("report", tmp_path)
    line = one_error_line(result, str(tmp_path), "no metrics.json", "kvpager simulate")
    assert "Errno" not in line


@pytest.mark.parametrize(("args", "message"), [
    (["--arrival-rate", "nan"], "--arrival-rate: expected a finite number > 0, got nan"),
    (["--limit", "0"], "--limit: expected an integer >= 1"),
    (["--rate-scale", "-1"], "--rate-scale: expected a finite number > 0, got -1.0"),
    (["--arrival-rate", "1", "--arrival-cv", "0"], "--arrival-cv: expected a finite number"),
    (["--arrival-rate", "1", "--seed", "-1"], "--seed: expected an integer >= 0"),
])
def test_bad_trace_options_name_the_option(outlier, tmp_path, args, message):
    result = invoke("simulate", outlier, *args, "--out", tmp_path / "r")
    one_error_line(result, f"kvpager: error: {message}")
