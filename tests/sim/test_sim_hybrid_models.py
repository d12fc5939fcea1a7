"""Hybrid models in the simulator: the per-layer cost model (windows, chunks, MLA, state,
experts), the multi-group manager in a run, and capacity with and without groups."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kvpager.sim.capacity import capacity
from kvpager.sim.config import SimConfig
from kvpager.sim.cost_model import CostModel
from kvpager.sim.kv_groups import layout
from kvpager.sim.presets import get_model
from kvpager.sim.run import simulate
from kvpager.sim.traces import Trace


def all_full(name: str):
    """The same model with every layer full attention (what the cost model did before)."""
    return replace(get_model(name), name="dense", layer_types=None, sliding_window=None,
                   attention_chunk_size=None)


def test_a_window_caps_what_decode_reads():
    cost = CostModel("gpt-oss-120b", "h200")
    lens = np.array([100, 5000, 20000])
    # half the layers read everything, half at most 128 keys
    assert cost.decode_context(lens) == pytest.approx(0.5 * lens.sum() + 0.5 * (100 + 128 + 128))
    dense = CostModel(all_full("gpt-oss-120b"), "h200")
    assert dense.decode_context(lens) == lens.sum()
    long = cost.step_time(0, 0.0, 64, cost.decode_context(np.full(64, 32768)))
    assert long < dense.step_time(0, 0.0, 64, dense.decode_context(np.full(64, 32768)))


def test_prefill_pairs_of_a_window_and_a_chunk_match_brute_force():
    for name in ("gemma-3-27b", "Llama-4-Scout"):
        costs = CostModel(name, "h200", tp=2 if name == "Llama-4-Scout" else 1).layer_costs
        for n, c in ((1, 0), (300, 0), (5000, 1000), (9000, 8000)):
            q = np.arange(c, c + n)
            want = 0.0
            for share, reach in costs.reaches:
                if reach is None:
                    keys = q + 1
                elif reach > 0:
                    keys = np.minimum(q + 1, reach)
                else:
                    keys = q % -reach + 1
                want += share * keys.sum()
            assert costs.prefill_work(n, c) == pytest.approx(want)


def test_experts_touched_by_a_step_follow_the_expected_distinct_count():
    moe = get_model("gpt-oss-120b").moe
    assert moe.expected_distinct_experts(1) == pytest.approx(4)
    assert moe.expected_distinct_experts(10) == pytest.approx(128 * (1 - (1 - 4 / 128) ** 10))
    assert moe.expected_distinct_experts(4096) == pytest.approx(128)
    cost = CostModel("gpt-oss-120b", "h200")
    one, many = cost.breakdown(0, 0, 1, 1000), cost.breakdown(0, 0, 256, 256_000)
    # batch 1 streams 4 experts per layer, 256 sequences nearly all 128: far more bytes
    assert many.linear_s > 5 * one.linear_s
    # memory holds every expert: MXFP4 experts + bf16 rest, the published ~61 GiB checkpoint
    assert 58 < cost.weight_bytes_per_gpu / 2**30 < 64


def test_the_expected_distinct_count_matches_random_routing():
    moe = get_model("Qwen3-Next-80B-A3B").moe  # 512 experts, 10 per token
    rng = np.random.default_rng(0)
    for tokens in (1, 16, 100):
        seen = [np.unique(np.concatenate([rng.choice(512, 10, replace=False)
                                          for _ in range(tokens)])).size for _ in range(200)]
        assert np.mean(seen) == pytest.approx(moe.expected_distinct_experts(tokens), rel=0.02)


def test_mla_is_replicated_and_kv_heads_split_down_to_one():
    for tp in (1, 8):  # the latent is the same on every rank, not split
        cost = CostModel("DeepSeek-V3", "h200", tp=tp, kv_cache_bytes=2**34)
        assert cost.kv_bytes_per_token == 61 * 576 * 2
        assert layout(cost, 16).paged[0].kind == "mla"
    assert CostModel("gpt-oss-120b", "h200", tp=8).kv_bytes_per_token == 36 * 2 * 1 * 64 * 2
    assert CostModel("gpt-oss-120b", "h200", tp=16).kv_bytes_per_token == 36 * 2 * 1 * 64 * 2


def test_state_layers_cost_their_update():
    cost = CostModel("Qwen3-Next-80B-A3B", "h200", tp=2)
    assert cost.kv_bytes_per_token == 12 * 2 * 1 * 256 * 2  # full layers only
    kv = layout(cost, 16)
    assert kv.states[0].num_layers == 36 and kv.state_bytes_per_seq > 0
    a, b = cost.breakdown(0, 0, 1, 1000), cost.breakdown(0, 0, 101, 101_000)
    assert b.decode_attention_s - a.decode_attention_s > 100 * cost.layer_costs.state_seq / (
        4.8e12 * 0.8) * 0.99


def test_vllm_rfc_waste_figures_follow_from_the_layer_patterns():
    gemma = capacity("gemma-2-27b", "h100-80gb", max_model_len=8192)
    assert gemma["decode"]["no_hybrid_waste"] == pytest.approx(0.25, abs=0.005)
    ministral = capacity("Ministral-8B", "h100-80gb", max_model_len=131072)
    assert ministral["decode"]["no_hybrid_waste"] == pytest.approx(0.5625, abs=0.005)
    plain = capacity("Llama-3-8B", "h100-80gb", max_model_len=8192)
    assert plain["hybrid_gain"] == 1.0 and plain["max_concurrency"] == pytest.approx(
        plain["kv_cache_bytes"] / (8192 * 128 * 1024))


def conversation(n: int = 24) -> Trace:
    rng = np.random.default_rng(3)
    arrivals = np.sort(rng.uniform(0, 4, n))
    return Trace.from_columns(arrivals, rng.integers(2000, 6000, n), rng.integers(50, 300, n))


def test_a_hybrid_run_uses_the_group_manager_and_reports_memory_by_group():
    cfg = SimConfig(model="gpt-oss-120b", gpu="h200", max_model_len=16384, chunked_prefill=True,
                    kv_cache_memory_gib=2.0)
    hybrid = simulate(conversation(), cfg, strategies=("paged",))
    flat = simulate(conversation(), replace(cfg, hybrid=False), strategies=("paged",))
    groups = hybrid["strategies"]["paged"]["kv_by_group"]
    assert groups["groups"] == ["full", "sliding_window"]
    full, window = groups["peak_gib"]
    assert window < full / 5  # 128-token window
    assert "kv_by_group" not in flat["strategies"]["paged"]
    assert hybrid["capacity"]["kv_groups"][1]["window"] == 128
    assert len(flat["capacity"]["kv_groups"]) == 1
    # the same pages hold more requests when windows release: fewer preempted or waiting
    h, f = hybrid["strategies"]["paged"], flat["strategies"]["paged"]
    assert h["batch"]["mean_running"] > f["batch"]["mean_running"]


def test_a_dense_model_runs_the_plain_manager_as_before():
    cfg = SimConfig(model="llama-3-8b", gpu="h100-80gb", max_model_len=8192)
    a = simulate(conversation(), cfg, strategies=("paged",))
    b = simulate(conversation(), replace(cfg, hybrid=False), strategies=("paged",))
    for m in (a, b):
        m["strategies"]["paged"]["time"].pop("wall_s")
    assert a["strategies"] == b["strategies"]
    assert "kv_by_group" not in a["strategies"]["paged"]


def test_group_pages_and_the_breakdown_account_for_every_page():
    from kvpager.core.config import CacheConfig
    from kvpager.core.groups import FullAttentionSpec, SlidingWindowSpec
    from kvpager.sim.hybrid_manager import HybridSimManager, group_series

    groups = (FullAttentionSpec(num_layers=2), SlidingWindowSpec(num_layers=2, window=32))
    m = HybridSimManager(CacheConfig(num_gpu_blocks=200, block_size=16, groups=groups))
    for i, n in enumerate((40, 100, 7)):
        m.allocate(i, n)
        m.mark_computed(i, n)
    for _ in range(20):
        m.append_slots_batch(m.rows_of([0, 1, 2]))
    rows = m.rows_of([0, 1, 2])
    final = m.seq_lens(rows) + 5
    slots = m.memory_breakdown(rows, final)
    pages = m.group_pages(rows)
    assert sum(pages) == m.gpu.num_used
    assert pages[1] < pages[0]  # the window released its early blocks
    assert sum(slots.values()) == 200 * 16
    assert slots["token"] == int(m.seq_lens(rows).sum()) - sum(
        max(0, n - 32) // 16 * 16 for n in m.seq_lens(rows)) + int(m.seq_lens(rows).sum())
    series = group_series(m)
    series.add(0.0, pages)
    assert series.to_dict(1.0)["groups"] == ["full", "sliding_window"]
