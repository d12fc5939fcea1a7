"""The CPU prefix tier in the simulator: sizing, the load-or-recompute rule, the reuse
ceiling, and runs on a Mooncake sample that reach the ceiling with an unlimited tier.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from kvpager.sim import SimConfig
from kvpager.sim.config import parse_tier_size, tier_label
from kvpager.sim.cost_model import CostModel
from kvpager.sim.presets import GPUSpec, get_gpu
from kvpager.sim.reuse import reuse_ceiling
from kvpager.sim.run import simulate
from kvpager.sim.tier import load_policy, recompute_seconds, tier_blocks, tier_step_seconds
from kvpager.sim.traces import load_trace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MOONCAKE = EXAMPLES / "mooncake_conv_sample.jsonl"
GiB = 1 << 30


# Sample rows whose prompts continue an earlier row's (conversation turns): the first turns,
# then the later ones, so that a small GPU cache has evicted a turn before its next one.
FIRST_TURNS = (1, 7, 10, 15, 20, 21, 24, 66)
LATER_TURNS = (137, 323, 134, 201, 308, 218, 220, 133, 280)


def spaced_mooncake(tmp_path: Path, limit: int, gap_s: float = 1000.0) -> Path:
    """`limit` requests of the Mooncake sample, first and later conversation turns,
    `gap_s` apart: no two overlap, so every reusable prefix is computed before the next
    request looks for it."""
    lines = MOONCAKE.read_text().splitlines()
    records = [json.loads(lines[i]) for i in (*FIRST_TURNS, *LATER_TURNS)][:limit]
    for i, r in enumerate(records):
        r["timestamp"] = int(i * gap_s * 1000)
    path = tmp_path / "spaced.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def config(**kw) -> SimConfig:
    base = {"model": "llama-3.1-8b", "gpu": "h100-80gb", "prefix_caching": True,
            "max_model_len": 65536}
    return SimConfig(**(base | kw))


# ---- configuration ------------------------------------------------------------------------
def test_tier_size_parsing():
    assert parse_tier_size("64") == 64.0 and parse_tier_size(" 0.5 ") == 0.5
    assert math.isinf(parse_tier_size("unlimited")) and math.isinf(parse_tier_size("UNLIMITED"))
    for bad in ("-1", "abc", "nan", "inf", "", "1e400"):
        with pytest.raises(ValueError, match="--cpu-prefix-cache"):
            parse_tier_size(bad)
    assert tier_label(math.inf) == "unlimited" and tier_label(64.0) == "64"


@pytest.mark.parametrize(("kw", "expect"), [
    ({"cpu_prefix_cache_gib": -1.0}, "cpu_prefix_cache_gib must be a number"),
    ({"cpu_prefix_cache_gib": math.nan}, "cpu_prefix_cache_gib must be a number"),
    ({"cpu_prefix_cache_gib": True}, "cpu_prefix_cache_gib must be a number"),
    ({"cpu_prefix_cache_gib": "64"}, "cpu_prefix_cache_gib must be a number"),
    ({"cpu_prefix_cache_gib": 8.0, "prefix_caching": False}, "needs prefix_caching"),
])
def test_sim_config_refuses_bad_tiers(kw, expect):
    with pytest.raises(ValueError, match=expect):
        config(**kw)


def test_unlimited_tier_is_written_as_unlimited():
    assert config(cpu_prefix_cache_gib=math.inf).to_dict()["cpu_prefix_cache_gib"] == "unlimited"
    assert config(cpu_prefix_cache_gib=8.0).to_dict()["cpu_prefix_cache_gib"] == 8.0
    assert not config().has_prefix_tier and config(cpu_prefix_cache_gib=1.0).has_prefix_tier


def test_contiguous_strategies_refuse_a_tier_before_any_work():
    trace = load_trace(MOONCAKE, limit=2)
    with pytest.raises(ValueError, match="needs the paged strategy only; 'orca-max'"):
        simulate(trace, config(cpu_prefix_cache_gib=1.0), ["paged", "orca-max"])


def test_tier_blocks_follow_the_cost_models_bytes_per_block():
    trace = load_trace(MOONCAKE, limit=20)
    cfg = config(cpu_prefix_cache_gib=64.0)
    cost = CostModel("llama-3.1-8b", "h100-80gb")
    # 64 GiB / (16 tokens x 128 KiB) = 32768 blocks, as swap space becomes num_cpu_blocks
    assert tier_blocks(cfg, cost, trace) == cost.num_cpu_blocks(64 * GiB, 16) == 32768
    assert tier_blocks(config(), cost, trace) == 0
    everything = sum((int(p) + int(o)) // 16
                     for p, o in zip(trace.prompt_tokens, trace.output_tokens, strict=True))
    assert tier_blocks(config(cpu_prefix_cache_gib=math.inf), cost, trace) == everything


# ---- load or recompute --------------------------------------------------------------------
def test_recompute_cost_grows_with_the_cached_context():
    cost = CostModel("llama-3.1-8b", "h100-80gb")
    short, long = recompute_seconds(cost, 512, 0), recompute_seconds(cost, 512, 16384)
    assert 0 < short < long
    # a marginal cost: far below a step of its own, which pays overhead and the weight floor
    assert short < cost.step_time(512, 512 * 257, 0, 0, 1)


def _gpu_with_link(bytes_per_s: float) -> GPUSpec:
    h100 = get_gpu("h100-80gb")
    return replace(h100, name="h100-custom-link", host_bytes_per_s=bytes_per_s)


def test_load_policy_switches_where_the_link_matches_recomputation():
    bs, blocks, cached = 16, 4, 1024
    base = CostModel("llama-3.1-8b", "h100-80gb")
    recompute = recompute_seconds(base, blocks * bs, cached)
    # the link speed at which loading `blocks` takes exactly as long as recomputing them
    even = blocks * bs * base.kv_bytes_per_token / (recompute * base.host_link_efficiency)
    fast = CostModel("llama-3.1-8b", _gpu_with_link(even * 1.05))
    slow = CostModel("llama-3.1-8b", _gpu_with_link(even * 0.95))
    assert load_policy(fast, bs)(cached, blocks) == blocks
    assert load_policy(slow, bs)(cached, blocks) == 0
    assert load_policy(base, bs)(cached, 0) == 0
    # PCIe 5 against an 8B model's prefill: loading wins by an order of magnitude
    assert base.swap_time(blocks, bs) < recompute / 5
    assert load_policy(base, bs)(0, 1) == 1


# ---- the reuse ceiling --------------------------------------------------------------------
def test_reuse_ceiling_counts_leading_runs_seen_before(tmp_path):
    rows = [  # 512-token hash blocks
        {"timestamp": 0, "input_length": 1536, "output_length": 4, "hash_ids": [1, 2, 3]},
        {"timestamp": 1, "input_length": 2048, "output_length": 4, "hash_ids": [1, 2, 4, 5]},
        {"timestamp": 2, "input_length": 1024, "output_length": 4, "hash_ids": [9, 2]},
        {"timestamp": 3, "input_length": 1537, "output_length": 4, "hash_ids": [1, 2, 3, 7]},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = reuse_ceiling(load_trace(path), 512)
    # queried: min(full, (prompt - 1) // 512) = 2, 3, 1, 3; reusable: 0, 2, 0 (9 is new), 3
    assert (c.queried_blocks, c.reusable_blocks) == (9, 5)
    assert c.prompt_tokens == 1536 + 2048 + 1024 + 1537
    assert c.token_rate == pytest.approx(5 * 512 / c.prompt_tokens)
    assert c.to_dict()["block_rate"] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="block_size"):
        reuse_ceiling(load_trace(path), 0)


def test_an_unbounded_gpu_cache_hits_exactly_the_ceiling(tmp_path):
    trace = load_trace(spaced_mooncake(tmp_path, 17))
    ceiling = reuse_ceiling(trace, 16)
    assert 0.2 < ceiling.block_rate < 0.9
    m = simulate(trace, config(num_gpu_blocks=60_000), ["paged"])["strategies"]["paged"]
    assert m["prefix_cache"]["hit_blocks"] == ceiling.reusable_blocks
    assert m["prefix_cache"]["queried_blocks"] == ceiling.queried_blocks
    tier = m["prefix_tier"]  # GPU only: every hit from the GPU, nothing moved
    assert tier["hit_blocks"] == {"gpu": ceiling.reusable_blocks, "cpu": 0}
    assert tier["offloaded_bytes"] == tier["loaded_bytes"] == 0


# ---- runs with the tier -------------------------------------------------------------------
def test_an_unlimited_tier_behind_a_small_gpu_cache_reaches_the_ceiling(tmp_path):
    trace = load_trace(spaced_mooncake(tmp_path, 17))
    ceiling = reuse_ceiling(trace, 16)
    small = config(num_gpu_blocks=4_000)  # 64k tokens, a few prompts: reuse is evicted
    gpu_only = simulate(trace, small, ["paged"])["strategies"]["paged"]
    assert gpu_only["prefix_cache"]["hit_blocks"] < ceiling.reusable_blocks
    m = simulate(trace, replace(small, cpu_prefix_cache_gib=math.inf),
                 ["paged"])["strategies"]["paged"]
    tier = m["prefix_tier"]
    assert m["prefix_cache"]["hit_blocks"] == ceiling.reusable_blocks
    assert tier["hit_blocks"]["gpu"] + tier["hit_blocks"]["cpu"] == ceiling.reusable_blocks
    assert tier["hit_blocks"]["cpu"] > 0 and tier["loaded_blocks"] >= tier["hit_blocks"]["cpu"]
    block_bytes = 16 * CostModel("llama-3.1-8b", "h100-80gb").kv_bytes_per_token
    assert tier["loaded_bytes"] == tier["loaded_blocks"] * block_bytes
    assert tier["offloaded_blocks"] >= tier["loaded_blocks"] > 0
    assert tier["prompt_tokens"]["from_cpu"] == 16 * tier["hit_blocks"]["cpu"]
    # every offload and load pair is timed over the host link once, in its step
    cost = CostModel("llama-3.1-8b", "h100-80gb")
    assert tier["host_link_s"] == pytest.approx(
        cost.swap_time(tier["offloaded_blocks"] + tier["loaded_blocks"], 16))
    # the GPU-only baseline run beside it: the same as the run above, and slower to first token
    base = tier["gpu_only"]
    assert base["hit_rate"] == pytest.approx(gpu_only["prefix_cache"]["hit_rate"])
    assert base["ttft_s"]["mean"] == pytest.approx(gpu_only["latency_s"]["ttft"]["mean"])
    assert tier["ttft_saved_s"]["mean"] == pytest.approx(
        base["ttft_s"]["mean"] - m["latency_s"]["ttft"]["mean"])
    assert tier["ttft_saved_s"]["mean"] > 0


def test_a_tier_that_never_pays_off_is_never_loaded(tmp_path):
    trace = load_trace(spaced_mooncake(tmp_path, 17))
    slow = _gpu_with_link(1e6)  # 1 MB/s: recomputing always wins
    cfg = config(num_gpu_blocks=4_000, gpu=slow, cpu_prefix_cache_gib=math.inf)
    tier = simulate(trace, cfg, ["paged"], tier_baseline=False)["strategies"]["paged"][
        "prefix_tier"]
    assert tier["loaded_blocks"] == 0 and tier["hit_blocks"]["cpu"] == 0
    assert "gpu_only" not in tier


def test_tier_hit_rates_are_sampled_over_time(tmp_path):
    trace = load_trace(spaced_mooncake(tmp_path, 17))
    cfg = config(num_gpu_blocks=4_000, cpu_prefix_cache_gib=math.inf, sample_interval_s=50.0)
    simulate(trace, cfg, ["paged"], out_dir=tmp_path / "run", tier_baseline=False)
    lines = (tmp_path / "run" / "memory_paged.csv").read_text().splitlines()
    header = lines[0].split(",")
    last = dict(zip(header, lines[-1].split(","), strict=True))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    tier = metrics["strategies"]["paged"]["prefix_tier"]
    assert float(last["prefix_cpu_hit_rate"]) > 0
    assert float(last["prefix_gpu_hit_rate"]) + float(last["prefix_cpu_hit_rate"]) == \
        pytest.approx(float(last["prefix_hit_rate"]), abs=2e-6)
    assert float(last["prefix_cpu_hit_rate"]) <= tier["cpu_hit_rate"] + 1e-6
    assert metrics["config"]["cpu_prefix_cache_gib"] == "unlimited"
    assert metrics["capacity"]["cpu_prefix_blocks"] > 0


def test_offloads_overlap_the_step_and_loads_precede_it(tmp_path):
    """Issue 23: host-to-GPU loads add to their step; GPU-to-host offloads overlap it (the
    other direction of the link), stalling it only when they outlast its compute."""
    trace = load_trace(spaced_mooncake(tmp_path, 17, gap_s=1.0))  # overlapping turns
    cfg = config(num_gpu_blocks=4_000, cpu_prefix_cache_gib=math.inf, cost_model="roofline")
    m = simulate(trace, cfg, ["paged"], tier_baseline=False)["strategies"]["paged"]
    tier = m["prefix_tier"]
    cost = CostModel("llama-3.1-8b", "h100-80gb")
    offload_s = cost.swap_time(tier["offloaded_blocks"], 16)
    assert tier["offloaded_blocks"] > 0
    assert tier["host_link_s"] == pytest.approx(
        offload_s + cost.swap_time(tier["loaded_blocks"], 16))
    # stalls are the part of the offloads no compute covered: never more than all of them
    assert 0.0 <= tier["offload_stall_s"] < offload_s


def test_a_step_outlasts_its_compute_only_by_offloads_no_compute_covers():
    assert tier_step_seconds(1.0, 0.0, 0.5) == (1.0, 0.0)  # hidden behind the compute
    assert tier_step_seconds(1.0, 0.25, 0.5) == (1.25, 0.0)  # the load comes first
    assert tier_step_seconds(1.0, 0.25, 2.0) == (2.0, 0.75)  # the link is the bottleneck
    assert tier_step_seconds(0.0, 0.0, 0.0) == (0.0, 0.0)


def test_a_tier_that_raises_the_hit_rate_does_not_cost_first_token_time():
    """Issue 23's case: on the Mooncake sample behind a small GPU cache, a 64 GiB tier that
    raises the hit rate used to show a negative TTFT saving (offloads charged serially)."""
    trace = load_trace(MOONCAKE)
    cfg = config(gpu="h100-80gb", tp=4, chunked_prefill=True, kv_cache_memory_gib=2.0,
                 max_model_len=131072, cpu_prefix_cache_gib=64.0, cost_model="roofline")
    tier = simulate(trace, cfg, ["paged"])["strategies"]["paged"]["prefix_tier"]
    assert tier["hit_rate"] > tier["gpu_only"]["hit_rate"] + 0.03
    assert tier["ttft_saved_s"]["mean"] > 0 and tier["ttft_saved_s"]["p50"] > 0
