"""`kvpager simulate --prefill-replicas P --decode-replicas D`: bad input is one line and
exit 2 naming the option, before anything is written; a run prints the transfer line and a
row per replica with its role."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app

runner = CliRunner()
SAMPLE = Path("examples/mooncake_conv_sample.jsonl")
POOLS = ["--prefill-replicas", "1", "--decode-replicas", "2"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(("args", "needle"), [
    (["--prefill-replicas", "2"], "--prefill-replicas: give --decode-replicas"),
    (["--decode-replicas", "2"], "--decode-replicas: give --prefill-replicas"),
    (["--prefill-replicas", "0", "--decode-replicas", "2"], "--prefill-replicas 0"),
    (["--prefill-replicas", "1", "--decode-replicas", "0"], "--decode-replicas 0"),
    ([*POOLS, "--kv-link-gbps", "0"], "--kv-link-gbps"),
    ([*POOLS, "--kv-link-gbps", "-3"], "--kv-link-gbps"),
    ([*POOLS, "--kv-link-gbps", "inf"], "--kv-link-gbps"),
    ([*POOLS, "--kv-link-gbps", "fast"], "--kv-link-gbps"),
    ([*POOLS, "--kv-link-latency-ms", "-1"], "--kv-link-latency-ms"),
    ([*POOLS, "--pd-decider", "sometimes"], "--pd-decider 'sometimes'"),
    ([*POOLS, "--pd-decider", "threshold:abc"], "--pd-decider 'threshold:abc'"),
    ([*POOLS, "--pd-decider", "threshold:-1"], "--pd-decider"),
    ([*POOLS, "--replicas", "4"], "--replicas"),
    ([*POOLS, "--cache", "orca-oracle"], "--cache orca-oracle"),
])
def test_bad_disaggregation_input_exits_2_naming_the_option(tmp_path, args, needle):
    result = invoke("simulate", SAMPLE, "--out", tmp_path / "r", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert needle in result.output, result.output
    if "fast" not in args:  # typer's own message for a non-number spans a box
        assert len(lines) == 1, result.output
    assert not (tmp_path / "r").exists()


def test_a_disaggregated_run_reports_transfers_and_roles(tmp_path):
    result = invoke("simulate", SAMPLE, "--limit", "12", "--model", "llama-3.1-8b", "--gpu",
                    "h100-80gb", "--prefix-caching", "--chunked-prefill", *POOLS,
                    "--kv-link-gbps", "200", "--out", tmp_path / "r", "--report",
                    tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert "1 prefill + 2 decode replicas, decider always" in result.output
    assert "0 prefill" in result.output and "2 decode" in result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    d = metrics["strategies"]["paged"]["disaggregation"]
    assert d["link"]["kind"] == "network" and d["requests"]["disaggregated"] == 12
    assert metrics["strategies"]["paged"]["requests"]["finished"] == 12
    events = (tmp_path / "r" / "events_paged.csv").read_text()
    assert "kv-send" in events and "kv-receive" in events
    assert "kv-receive" in (tmp_path / "report.html").read_text()  # the events row shows them


PLAN = ["plan", SAMPLE, "--limit", "12", "--model", "llama-3.1-8b", "--gpu", "h100-80gb",
        "--chunked-prefill", "--slo-ttft", "5", "--slo-tpot", "0.05", "--disaggregated"]


def test_plan_disaggregated_gives_the_best_split_beside_the_aggregated(tmp_path):
    out = tmp_path / "plan.json"
    result = invoke(*PLAN, "--gpus", "3", "--out", out)
    assert result.exit_code == 0, result.output
    assert "disaggregated" in result.output and "aggregated" in result.output
    doc = json.loads(out.read_text())
    assert doc["mode"] == "budget" and doc["gpus"] == 3
    assert {p["config"] for p in doc["probes"]} == {"3 aggregated", "1P+2D", "2P+1D"}
    assert doc["disaggregated"]["gpus"] == 3 and doc["aggregated"]["gpus"] == 3


def test_plan_disaggregated_fewest_gpus(tmp_path):
    out = tmp_path / "plan.json"
    result = invoke(*PLAN, "--max-replicas", "3", "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["mode"] == "fewest"
    for key in ("disaggregated", "aggregated"):
        if doc[key] is not None:
            assert doc[key]["attainment"] >= 0.9


@pytest.mark.parametrize(("args", "needle"), [
    (["--gpus", "1"], "--gpus 1"),
    (["--routers", "round-robin,random", "--gpus", "2"], "--routers"),
    (["--pd-decider", "threshold:x", "--gpus", "2"], "--pd-decider"),
    (["--kv-link-gbps", "0", "--gpus", "2"], "--kv-link-gbps"),
    (["--rate-scale", "1,2", "--gpus", "2"], "--rate-scale"),
])
def test_plan_disaggregated_bad_input_exits_2(tmp_path, args, needle):
    result = invoke(*PLAN, *args, "--out", tmp_path / "plan.json")
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "plan.json").exists()
