"""`kvpager simulate --cpu-prefix-cache` and `kvpager sweep --cpu-prefix-cache`: bad sizes
exit 2 naming the option before any work; runs with the tier report it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MOONCAKE = EXAMPLES / "mooncake_conv_sample.jsonl"
runner = CliRunner()
SMALL = ("--model", "llama-3.1-8b", "--gpu", "h100-80gb", "--num-gpu-blocks", "3000",
         "--max-model-len", "65536", "--limit", "24")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(("args", "expect"), [
    (("--prefix-caching", "--cpu-prefix-cache", "-3"), "'-3' must be a finite number"),
    (("--prefix-caching", "--cpu-prefix-cache", "lots"), "'lots' is not a size in GiB"),
    (("--prefix-caching", "--cpu-prefix-cache", "nan"), "'nan' must be a finite number"),
    (("--prefix-caching", "--cpu-prefix-cache", "inf"), "'inf' must be a finite number"),
    (("--cpu-prefix-cache", "8"), "add --prefix-caching"),
    (("--prefix-caching", "--cpu-prefix-cache", "8", "--cache", "orca-max"),
     "needs --cache paged only; 'orca-max'"),
    (("--prefix-caching", "--cpu-prefix-cache", "8", "--cache", "paged", "--cache", "static"),
     "needs --cache paged only; 'static'"),
])
def test_simulate_bad_tier_exits_2_naming_the_option(tmp_path, args, expect):
    result = invoke("simulate", MOONCAKE, *args, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "--cpu-prefix-cache" in result.output and expect in result.output
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize(("args", "expect"), [
    (("--prefix-caching", "--cpu-prefix-cache", "0,-1"), "'-1' must be a finite number"),
    (("--prefix-caching", "--cpu-prefix-cache", "0,,8"), "empty item"),
    (("--cpu-prefix-cache", "0,8"), "add --prefix-caching"),
    (("--prefix-caching", "--cpu-prefix-cache", "0,8", "--cache", "orca-oracle"),
     "'orca-oracle'"),
    (("--prefix-caching", "--cpu-prefix-cache", "0,8", "--rates", "1,2"), "one load"),
])
def test_sweep_bad_tiers_exit_2_naming_the_option(tmp_path, args, expect):
    result = invoke("sweep", MOONCAKE, *args, "--out", tmp_path / "sweep")
    assert result.exit_code == 2, result.output
    assert "--cpu-prefix-cache" in result.output and expect in result.output
    assert not (tmp_path / "sweep").exists()


def test_simulate_with_a_tier_reports_hits_by_tier_and_the_ttft_saved(tmp_path):
    report = tmp_path / "r.html"
    result = invoke("simulate", MOONCAKE, *SMALL, "--prefix-caching", "--cpu-prefix-cache",
                    "unlimited", "--out", tmp_path / "run", "--report", report)
    assert result.exit_code == 0, result.output
    for row in ("prefix hits from CPU tier", "GiB loaded from CPU tier",
                "TTFT p50 saved by the tier"):
        assert row in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["strategies"]) == ["paged"]  # the tier defaults to paged only
    tier = metrics["strategies"]["paged"]["prefix_tier"]
    finished = metrics["strategies"]["paged"]["requests"]["finished"]
    assert tier["size_gib"] == "unlimited" and tier["gpu_only"]["finished"] == finished > 20
    assert tier["hit_rate"] >= tier["gpu_only"]["hit_rate"]
    html = report.read_text()
    assert 'id="tier"' in html and "saved by the tier" in html


def test_sweep_over_tier_sizes(tmp_path):
    report = tmp_path / "s.html"
    result = invoke("sweep", MOONCAKE, *SMALL, "--prefix-caching", "--cpu-prefix-cache",
                    "unlimited,0,1", "--workers", "1", "--out", tmp_path / "sweep",
                    "--report", report)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert doc["spec"]["axis"] == "cpu_prefix_cache"
    assert [p["value"] for p in doc["points"]] == [0.0, 1.0, "unlimited"]
    rates = [p["metrics"]["prefix_tier"]["hit_rate"] for p in doc["points"]]
    assert rates[0] <= rates[1] <= rates[2]
    assert doc["points"][0]["metrics"]["prefix_tier"]["cpu_hit_rate"] == 0
    assert "unlimited" in result.stdout and "TTFT p99" in result.stdout
    assert "vs CPU prefix tier size" in report.read_text()
