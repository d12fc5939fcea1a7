"""What `kvpager simulate` tells a capacity planner: offered vs served rate and a SATURATED
flag, the KV capacity, what each strategy means, why requests were rejected, the prefix-cache
hit rate, the files written and the next command; all uncut when piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app
from kvpager.sim.config import DESCRIPTIONS
from kvpager.sim.saturation import assess, queued_at_arrivals

REPO = Path(__file__).resolve().parents[2]
AZURE = REPO / "examples" / "azure_conv_sample.csv"
MOONCAKE = REPO / "examples" / "mooncake_conv_sample.jsonl"
runner = CliRunner()


def simulate(tmp_path: Path, *args: object) -> tuple[str, dict]:
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", *map(str, args), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result.stdout, json.loads((out / "metrics.json").read_text())


def test_queue_at_arrivals_counts_earlier_requests_not_started():
    arrival = np.array([0.0, 1.0, 2.0, 3.0])
    admitted = np.array([0.0, 2.5, np.nan, 3.0])  # request 2 rejected, never admitted
    rejected = np.array([False, False, True, False])
    # at 1.0: 0 waits; at 2.0: request 1 waits; at 3.0: request 1 started, 2 was rejected
    assert queued_at_arrivals(arrival, admitted, rejected).tolist() == [0, 0, 1, 0]


def test_a_growing_queue_is_saturated_and_a_bounded_one_is_not():
    arrival = np.arange(100, dtype=np.float64)  # 1 req/s
    rejected = np.zeros(100, dtype=bool)
    keeps_up = assess(arrival, arrival + 0.5, rejected, 100, 100.5)
    assert keeps_up["saturated"] is False and keeps_up["behind_since_s"] is None
    # serving one request every 2 s from t = 40 on: the queue grows by one every 2 s
    admitted = np.where(arrival < 40, arrival, 40 + 2 * (arrival - 40))
    behind = assess(arrival, admitted, rejected, 100, 160.0)
    assert behind["saturated"] is True
    assert behind["behind_since_s"] == 43.0  # the first arrival to find the queue non-empty
    assert behind["queued_at_last_arrival"] == 29
    assert behind["offered_rate_per_s"] == pytest.approx(100 / 99)
    assert behind["served_rate_per_s"] == pytest.approx(100 / 160)
    # a constant backlog that never empties but does not grow is not saturation
    steady = assess(arrival, arrival + 3.5, rejected, 100, 103.5)
    assert steady["saturated"] is False


def test_saturated_strategies_are_flagged_with_the_time_they_fell_behind(tmp_path):
    text, metrics = simulate(tmp_path, AZURE, "--cache", "paged", "--cache", "orca-max",
                             "--limit", "300", "--rate-scale", "8")
    for name in ("paged", "orca-max"):
        load = metrics["strategies"][name]["load"]
        assert load["saturated"] is True
        assert load["served_rate_per_s"] < load["offered_rate_per_s"]
        assert f"SATURATED: {name} fell behind at {load['behind_since_s']:.1f} s" in text
    assert "offered rate (req/s)" in text and "throughput (req/s)" in text
    rate = metrics["trace"]["rate_per_s"]
    assert f"= {rate:.3g} req/s" in text


def test_a_light_load_keeps_up(tmp_path):
    text, metrics = simulate(tmp_path, AZURE, "--cache", "paged", "--limit", "100",
                             "--rate-scale", "0.25")
    assert metrics["strategies"]["paged"]["load"]["saturated"] is False
    assert "keeps up" in text and "SATURATED" not in text


def test_capacity_strategies_rejections_files_and_next_step(tmp_path):
    text, metrics = simulate(tmp_path, AZURE, "--limit", "200")
    cap = metrics["capacity"]
    assert (f"KV capacity: {cap['kv_capacity_gib']:,.1f} GiB per GPU = {cap['gpu_blocks']:,} "
            f"blocks of 16 tokens = {cap['kv_tokens']:,} tokens") in text
    for name in metrics["strategies"]:  # one line each, uncut although wider than 80
        assert DESCRIPTIONS[name] in text
    assert max(map(len, text.splitlines())) > 80
    rejected = metrics["strategies"]["paged"]["requests"]["rejected_reasons"]
    assert rejected, "the slice holds requests longer than Llama-2-7B's 4,096 tokens"
    for reason, count in rejected.items():  # the same for all: the length limit
        assert f"every strategy: {count:,} x {reason}" in text
    run = tmp_path / "run"
    assert f"run directory: {run} (metrics.json, requests_{{paged," in text
    assert f"next: kvpager report {run} -o report.html" in text


def test_prefix_cache_hit_rate_is_shown_with_prefix_caching(tmp_path):
    text, metrics = simulate(tmp_path, MOONCAKE, "--cache", "paged", "--prefix-caching",
                             "--limit", "100")
    hit = metrics["strategies"]["paged"]["prefix_cache"]["hit_rate"]
    assert f"prefix-cache hit rate: paged {100 * hit:.1f}%" in text
    assert "prefix-cache hit rate" in text.split("offered load")[0]  # a row of the table
    plain, _ = simulate(tmp_path, MOONCAKE, "--cache", "paged", "--limit", "20")
    assert "prefix-cache hit rate" not in plain


def test_prefix_caching_with_contiguous_strategies_runs_and_says_what_applies(tmp_path):
    # the README's synopsis combines the two; contiguous strategies cannot share blocks
    text, metrics = simulate(tmp_path, MOONCAKE, "--cache", "paged", "--cache", "orca-oracle",
                             "--prefix-caching", "--limit", "60")
    assert metrics["strategies"]["orca-oracle"]["prefix_cache"] is None
    assert metrics["strategies"]["paged"]["prefix_cache"]["hit_rate"] > 0
    assert "orca-oracle: no prefix cache (one contiguous region per sequence" in text


def test_help_is_not_cut_at_80_columns_when_piped():
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "kvpager.cli", "simulate", "--help"],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "…" not in done.stdout
    for option in ("--max-num-batched-tokens", "--gpu-memory-utilization",
                   "--no-chunked-prefill", "--no-prefix-caching"):
        assert option in done.stdout


def test_rejections_that_differ_are_listed_per_strategy():
    from kvpager.cli.tables import rejection_lines

    metrics = {"strategies": {
        "paged": {"requests": {"rejected_reasons": {"too long": 2}}},
        "orca-max": {"requests": {"rejected_reasons": {"too long": 2, "no room": 1}}}}}
    assert rejection_lines(metrics) == ["  paged: 2 x too long", "  orca-max: 2 x too long",
                                        "  orca-max: 1 x no room"]


def test_a_mostly_rejected_run_says_so_loudly_with_the_fix(tmp_path):
    """Issue 23: the default Llama-2-7B (4,096 tokens) rejects most of the Mooncake sample."""
    text, metrics = simulate(tmp_path, MOONCAKE, "--cache", "paged", "--prefix-caching")
    req = metrics["strategies"]["paged"]["requests"]
    share = req["rejected"] / req["arrived"]
    assert share > 0.5
    [caveat] = metrics["caveats"]
    assert caveat["kind"] == "rejected" and caveat["share"] == pytest.approx(share)
    flat = " ".join(text.split())
    assert f"WARNING: paged rejected {req['rejected']:,} of {req['arrived']:,} requests" in flat
    assert "describe only the requests served" in flat
    assert "--model (llama-3.1-8b: 131,072 tokens" in flat and "--long-prompts truncate" in flat
    # a deployment that serves the trace carries no caveat
    served_text, served = simulate(tmp_path / "b", MOONCAKE, "--cache", "paged",
                                   "--model", "llama-3.1-8b", "--limit", "60")
    assert served["caveats"] == [] and "WARNING" not in served_text


def test_a_few_rejections_carry_no_caveat():
    from kvpager.sim.caveats import REJECTED_SHARE_WARN, run_caveats

    def metrics(rejected: int) -> dict:
        return {"config": {"strategies": ["paged"], "max_model_len": 4096},
                "strategies": {"paged": {"requests": {"arrived": 1000, "rejected": rejected}}}}

    assert run_caveats(metrics(int(1000 * REJECTED_SHARE_WARN))) == []
    assert [c["rejected"] for c in run_caveats(metrics(int(1000 * REJECTED_SHARE_WARN) + 1))] \
        == [21]


def test_a_caveat_names_the_fix_for_its_kind_of_rejection():
    from kvpager.sim.caveats import run_caveats

    kinds = {"needs more KV blocks than the cache has": {"count": 30, "limit_name": None}}
    metrics = {"config": {"strategies": ["paged"], "max_model_len": 4096},
               "strategies": {"paged": {"requests": {"arrived": 100, "rejected": 30,
                                                     "rejected_kinds": kinds}}}}
    [caveat] = run_caveats(metrics)
    assert "more KV memory (--tp" in caveat["message"] and "max_model_len" not in \
        caveat["message"]


def test_the_tier_says_it_runs_paged_only(tmp_path):
    text, metrics = simulate(tmp_path, MOONCAKE, "--model", "llama-3.1-8b", "--limit", "30",
                             "--prefix-caching", "--cpu-prefix-cache", "4",
                             "--no-tier-baseline")
    assert list(metrics["strategies"]) == ["paged"]
    assert "note: --cpu-prefix-cache runs the paged strategy only" in " ".join(text.split())
