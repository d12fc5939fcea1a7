"""`kvpager simulate --replicas N --router R`: bad cluster input is one line and exit 2
naming the option; a one-replica cluster is the single-server run; N > 1 reports per
replica."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app

runner = CliRunner()
SAMPLE = Path("examples/mooncake_conv_sample.jsonl")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(("args", "needle"), [
    (["--replicas", "0"], "--replicas 0"),
    (["--router", "bogus"], "--router 'bogus'"),
    (["--router", "weighted", "--router-weights", "prefix=x"], "--router-weights"),
    (["--router", "weighted", "--router-weights", "foo=1"], "unknown scorer 'foo'"),
    (["--router", "weighted", "--router-weights", "prefix"], "is not NAME=WEIGHT"),
    (["--router", "weighted", "--router-weights", "prefix=-1"], "--router-weights"),
    (["--router", "round-robin", "--router-weights", "prefix=1"], "takes no weights"),
    (["--router-signal-delay", "-1"], "--router-signal-delay"),
    (["--slo-ttft", "-2"], "--slo-ttft"),
    (["--slo-tpot", "-0.1"], "--slo-tpot"),
])
def test_bad_cluster_input_exits_2_naming_the_option(tmp_path, args, needle):
    result = invoke("simulate", SAMPLE, "--cache", "paged", "--out", tmp_path / "r", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "r").exists()


def _strategies(path: Path) -> dict:
    metrics = json.loads((path / "metrics.json").read_text())
    for m in metrics["strategies"].values():
        m["time"].pop("wall_s")
    return metrics["strategies"]


def test_one_replica_behind_any_router_is_the_single_server_run(tmp_path):
    base = ["simulate", SAMPLE, "--cache", "paged", "--prefix-caching", "--limit", "60",
            "--num-gpu-blocks", "3000", "--model", "llama-3.1-8b", "--gpu", "h100-80gb"]
    assert invoke(*base, "--out", tmp_path / "plain").exit_code == 0
    want = _strategies(tmp_path / "plain")
    for i, extra in enumerate([["--router", "prefix-approx", "--router-signal-delay", "0.05"],
                               ["--router", "weighted", "--router-weights", "prefix=1,kv=1"],
                               ["--router", "random"]]):
        result = invoke(*base, "--replicas", "1", *extra, "--out", tmp_path / f"c{i}")
        assert result.exit_code == 0, result.output
        assert _strategies(tmp_path / f"c{i}") == want
    replica = want["paged"]["cluster"]["replicas"][0]
    for key in ("requests", "latency_s", "throughput", "prefix_cache", "memory"):
        assert replica[key] == want["paged"][key]


def test_several_replicas_report_each_and_the_cluster(tmp_path):
    result = invoke("simulate", SAMPLE, "--cache", "paged", "--prefix-caching", "--limit", "80",
                    "--replicas", "3", "--router", "least-requests", "--slo-ttft", "5",
                    "--slo-tpot", "0.2", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "router least-requests" in result.output and "cluster" in result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["cluster"]["replicas"] == 3 and metrics["cluster"]["router"] == \
        "least-requests"
    paged = metrics["strategies"]["paged"]
    replicas = paged["cluster"]["replicas"]
    assert len(replicas) == 3
    assert sum(r["requests"]["arrived"] for r in replicas) == paged["requests"]["arrived"] == 80
    assert sum(r["requests"]["finished"] for r in replicas) == paged["requests"]["finished"]
    assert all(r["requests"]["arrived"] > 0 for r in replicas)
    assert sum(r["slo"]["met"] for r in replicas) == paged["slo"]["met"]
    assert 0 <= paged["slo"]["attainment"] <= 1
    assert 1.0 <= paged["cluster"]["imbalance"]["max_over_mean"] <= 3.0
    hits = sum(r["prefix_cache"]["hit_blocks"] for r in replicas)
    assert paged["prefix_cache"]["hit_blocks"] == hits
