"""`kvpager sweep` and `kvpager bench`: success, machine-readable output and bad input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AZURE = EXAMPLES / "azure_conv_sample.csv"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvpager: error: "), result.output
    return lines[0]


# ---- sweep ----------------------------------------------------------------------------------
def test_sweep_writes_sweep_json_report_and_tables(tmp_path):
    pytest.importorskip("plotly")
    result = invoke("sweep", AZURE, "--rates", "8,2", "--cache", "paged", "--limit", "40",
                    "--workers", "1", "--out", tmp_path / "sw", "--report",
                    tmp_path / "sw.html")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert doc["spec"]["values"] == [2.0, 8.0] and doc["spec"]["axis"] == "rate"
    assert [p["strategy"] for p in doc["points"]] == ["paged", "paged"]
    assert "highest sustained request rate" in result.stdout
    assert "normalized latency" in result.stdout
    assert "S saturated" in result.stdout
    s = doc["sustained"]["paged"]
    if s["top_tested"]:  # the top rate held: the table says the true rate is at least that
        assert f">= {s['rate_per_s']:.3g}" in result.stdout and "none tested" in result.stdout
    elif s["first_miss_rate_per_s"] is not None:
        assert f"{s['first_miss_rate_per_s']:.3g} ({s['first_miss_reason']})" in result.stdout
    assert (tmp_path / "sw.html").read_text().count('class="kv-figure"') == 2


def test_sweep_json_prints_the_document(tmp_path):
    result = invoke("sweep", AZURE, "--rate-scale", "1,2", "--cache", "paged", "--limit",
                    "30", "--workers", "2", "--out", tmp_path / "sw", "--json",
                    "--metric", "ttft-p99", "--latency-bound", "5")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert doc["spec"]["axis"] == "rate_scale" and doc["spec"]["metric"] == "ttft-p99"
    assert doc["executor"] == {"kind": "processes", "workers": 2}
    assert set(doc["sustained"]) == {"paged"}


@pytest.mark.parametrize(("args", "expect"), [
    (["--rates", "1,x"], "--rates: 'x' is not a number"),
    (["--rates", "0"], "--rates: '0' must be a positive"),
    ([], "give exactly one of --rates"),
    (["--rates", "1", "--rate-scale", "2"], "give exactly one of --rates"),
    (["--rates", "1", "--metric", "p99"], "--metric: unknown 'p99'"),
    (["--rates", "1", "--metric", "ttft-p99"], "--latency-bound: give a bound"),
    (["--rates", "1", "--cache", "lru"], "unknown cache strategy 'lru'"),
    (["--rates", "1", "--workers", "0"], "--workers must be an integer >= 1"),
    (["--rates", "1", "--block-size", "0"], "--block-size must be"),
    (["--rates", "1", "--report", "x.pdf"], "must end in .html"),
])
def test_sweep_bad_input_exit_2(tmp_path, args, expect):
    cache = [] if "--cache" in args else ["--cache", "paged"]
    result = invoke("sweep", AZURE, *cache, "--limit", "5", "--out", tmp_path / "sw", *args)
    assert expect in one_line_error(result, 2)
    assert not (tmp_path / "sw").exists()


def test_sweep_missing_trace_exit_2(tmp_path):
    line = one_line_error(invoke("sweep", tmp_path / "none.csv", "--rates", "1"), 2)
    assert "none.csv" in line


def test_sweep_bad_trace_content_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"arrival_time": 0, "prompt_tokens": 0, "output_tokens": 2}]')
    line = one_line_error(invoke("sweep", bad, "--rates", "1", "--cache", "paged"), 2)
    assert "bad.json" in line and "prompt_tokens" in line


def test_sweep_on_ray_without_ray_exit_1(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    line = one_line_error(invoke("sweep", AZURE, "--rates", "1", "--cache", "paged",
                                 "--limit", "5", "--ray", "local", "--out", tmp_path), 1)
    assert "--ray needs Ray" in line


# ---- bench ----------------------------------------------------------------------------------
def test_bench_manager_json_and_record(tmp_path):
    result = invoke("bench", "manager", "--steps", "2", "--repeats", "1", "--scenario",
                    "decode-256", "--scenario", "pool-1M-blocks", "--json", "--out",
                    tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert set(results) == {"block_size", "decode-256", "pool-1M-blocks"}
    assert results["decode-256"]["steps"] == 2 and results["decode-256"]["repeats"] == 1
    assert results["pool-1M-blocks"]["num_blocks"] == 1_000_000
    recorded = json.loads((tmp_path / "m.json").read_text())
    assert recorded["benchmark"] == "manager" and recorded["results"] == results
    assert recorded["environment"]["python"] == sys.version.split()[0]


def test_bench_manager_table(tmp_path):
    result = invoke("bench", "manager", "--steps", "1", "--repeats", "1", "--scenario",
                    "decode-256")
    assert result.exit_code == 0, result.output
    assert "decode-256" in result.stdout and "us/step" in result.stdout


@pytest.mark.parametrize(("args", "expect"), [
    (["--scenario", "decode-9"], "scenario: unknown 'decode-9'"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--repeats", "0"], "repeats must be an integer >= 1"),
    (["--out", "x.txt"], "must end in .json"),
])
def test_bench_manager_bad_input_exit_2(args, expect):
    assert expect in one_line_error(invoke("bench", "manager", *args), 2)


def test_bench_attention_without_the_harness_exit_1(monkeypatch):
    monkeypatch.setitem(sys.modules, "kvpager.bench.attention", None)
    line = one_line_error(invoke("bench", "attention"), 1)
    assert "kvpager.bench.attention" in line and "not part of this installation" in line


def test_bench_attention_passes_every_argument_to_the_harness(monkeypatch):
    seen = []
    fake = types.ModuleType("kvpager.bench.attention")

    def main(argv):
        seen.append(argv)
        return 3 if "--fail" in argv else 0

    fake.main = main
    monkeypatch.setitem(sys.modules, "kvpager.bench.attention", fake)
    result = invoke("bench", "attention", "--backend", "triton", "--help")
    assert result.exit_code == 0, result.output
    assert seen == [["--backend", "triton", "--help"]]
    assert invoke("bench", "attention", "--fail").exit_code == 3
