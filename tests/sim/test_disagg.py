"""Prefill / decode disaggregation: conservation (every request ends, no block leaks on
either side), transfers timed from bytes over the link and seen in TTFT, decode-side prefix
hits shortening transfers, the deciders, and the scheduler's remote-prefill calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.plans import AllocStatus
from kvpager.core.sched.request import GroupStatus, Request
from kvpager.core.sched.scheduler import Scheduler
from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.disagg import DisaggSimulation
from kvpager.sim.cluster.disagg_config import DisaggConfig, parse_decider
from kvpager.sim.config import SimConfig
from kvpager.sim.metrics import FINISHED, REJECTED
from kvpager.sim.run import cost_model, resolve, simulate
from kvpager.sim.traces import Trace, load_trace

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mooncake_conv_sample.jsonl"


def _trace(n: int = 60) -> Trace:
    return load_trace(SAMPLE).take(np.arange(n))


def _config(**kw) -> SimConfig:
    base = dict(model="llama-3.1-8b", gpu="h100-80gb", prefix_caching=True,
                chunked_prefill=True, cost_model="roofline")
    return resolve(SimConfig(**(base | kw)))


def _run(trace: Trace, disagg: DisaggConfig, **kw) -> DisaggSimulation:
    config = _config(**kw)
    sim = DisaggSimulation(trace, config, "paged", cost_model(config), disagg,
                           cluster=ClusterConfig(router="round-robin"))
    sim.metrics = sim.run()  # type: ignore[attr-defined]
    return sim


def _assert_conserved(sim: DisaggSimulation) -> None:
    status = sim.requests.status
    assert np.isin(status, [FINISHED, REJECTED]).all()
    for i in np.flatnonzero(status == REJECTED).tolist():
        assert sim.requests.reasons.get(i)
    for replica in sim.replicas:
        m = replica.manager
        assert m.seq_ids() == []  # no sequence, no hold left
        total = replica.deploy.capacity_slots // replica.deploy.slots_per_block
        assert m.num_free_blocks() == total  # every block free or an evictable cached one
        assert not replica.scheduler.has_unfinished()


def test_conservation_with_decode_pressure_every_request_ends_and_no_block_leaks():
    # a decode replica of 3,000 blocks (48k tokens) holds about four 12k-token prompts:
    # requests must wait for room on the decode side, holding their blocks on the prefill one
    sim = _run(_trace(40), DisaggConfig(2, 1), num_gpu_blocks=3000)
    _assert_conserved(sim)
    d = sim.metrics["disaggregation"]  # type: ignore[attr-defined]
    assert d["decode_waits"]["requests"] > 0
    assert d["requests"]["disaggregated"] > 0
    finished = sim.requests.status == FINISHED
    assert finished.sum() > 30


def test_transfer_time_follows_the_bytes_and_shows_in_ttft():
    trace = _trace(30)
    fast = _run(trace, DisaggConfig(1, 2))
    slow = _run(trace, DisaggConfig(1, 2, link_gbps=10.0, link_latency_s=0.002))
    for sim in (fast, slow):
        _assert_conserved(sim)
    moved = slow.disaggregated & np.isfinite(slow.transfer_s)
    bytes_ = slow.moved_tokens[moved] * slow.cost.kv_bytes_per_token
    lower = bytes_ / (10e9 / 8) + 0.002  # a transfer takes at least its bytes / rate + latency
    assert (slow.transfer_s[moved] >= lower - 1e-9).all()
    ttft = lambda s: np.nanmean(s.requests.first_token - s.requests.arrival)  # noqa: E731
    # 12k-token prompts are 1.6 GB of KV: about 1.3 s each at 10 Gbit/s
    assert ttft(slow) > ttft(fast) + 0.5
    kinds = {kind for _, kind, _ in slow.events}
    assert {"kv-send", "kv-receive"} <= kinds


def test_layerwise_overlap_hides_part_of_the_transfer():
    trace = _trace(20)
    plain = _run(trace, DisaggConfig(1, 2, link_gbps=100.0))
    overlap = _run(trace, DisaggConfig(1, 2, link_gbps=100.0, layerwise=True))
    assert np.nanmean(overlap.transfer_s) < np.nanmean(plain.transfer_s)


def test_decode_side_prefix_hits_shorten_the_transfer():
    # the same 12k-token prompt twice, 30 s apart, on one decode replica
    one = _trace(1)
    sim = _run(_retime(one.take(np.array([0, 0])), [0.0, 30.0]), DisaggConfig(1, 1))
    _assert_conserved(sim)
    prompt = int(sim.requests.prompt_tokens[0])
    assert sim.moved_tokens[0] == prompt
    assert 0 < sim.moved_tokens[1] <= 16  # only the last block's tokens are not shared


def _retime(trace: Trace, times: list[float]) -> Trace:
    from dataclasses import replace

    return replace(trace, arrival=np.asarray(times, dtype=np.float64))


def test_threshold_decider_keeps_short_uncached_prompts_local():
    trace = _trace(40)
    none = _run(trace, DisaggConfig(1, 2, decider="threshold", threshold_tokens=10**9))
    assert not none.disaggregated.any()
    assert none.prefill_pool[0].steps.steps == 0  # the prefill pool never ran
    _assert_conserved(none)
    mid = _run(trace, DisaggConfig(1, 2, decider="threshold", threshold_tokens=8000))
    prompts = mid.requests.prompt_tokens
    assert not mid.disaggregated[prompts <= 8000].any()
    assert mid.disaggregated.any()
    _assert_conserved(mid)


def test_cost_decider_disaggregates_long_prompts_on_nvlink_not_on_a_crawling_link():
    trace = _trace(30)
    nvlink = _run(trace, DisaggConfig(1, 2, decider="cost"))
    crawl = _run(trace, DisaggConfig(1, 2, decider="cost", link_gbps=0.1))
    assert nvlink.disaggregated.sum() > crawl.disaggregated.sum()
    _assert_conserved(crawl)


def test_prefill_replicas_can_free_instead_of_caching():
    sim = _run(_trace(20), DisaggConfig(1, 1, keep_prefill_cache=False))
    assert sim.prefill_pool[0].manager.prefix_cache is None
    assert sim.decode_pool[0].manager.prefix_cache is not None
    _assert_conserved(sim)


def test_run_writes_the_disaggregation_section_and_refuses_other_strategies(tmp_path):
    trace = _trace(10)
    metrics = simulate(trace, _config(), ["paged"], out_dir=tmp_path / "r",
                       disagg=DisaggConfig(1, 1))
    paged = metrics["strategies"]["paged"]
    assert paged["requests"]["finished"] == 10
    assert [r["role"] for r in paged["cluster"]["replicas"]] == ["prefill", "decode"]
    assert paged["disaggregation"]["transfer"]["bytes"] > 0
    assert metrics["cluster"]["disaggregation"]["prefill_replicas"] == 1
    with pytest.raises(ValueError, match="--cache orca-oracle"):
        simulate(trace, _config(), ["paged", "orca-oracle"], disagg=DisaggConfig(1, 1))


@pytest.mark.parametrize(("text", "needle"), [
    ("bogus", "unknown decider"), ("threshold:", "threshold:N"),
    ("threshold:-3", "threshold:N"), ("threshold:1.5", "threshold:N")])
def test_bad_decider_text_names_the_option(text, needle):
    with pytest.raises(ValueError, match="--pd-decider") as info:
        parse_decider(text)
    assert needle in str(info.value)


def test_bad_pool_and_link_values_name_the_option():
    with pytest.raises(ValueError, match="--prefill-replicas"):
        DisaggConfig(0, 2)
    with pytest.raises(ValueError, match="--decode-replicas"):
        DisaggConfig(1, 0)
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--kv-link-gbps"):
            DisaggConfig(1, 1, link_gbps=bad)
    with pytest.raises(ValueError, match="--kv-link-latency-ms"):
        DisaggConfig(1, 1, link_latency_s=-1.0)


# ---- the scheduler's side: a request whose prompt KV arrives computed ------------------
def test_scheduler_reserves_waits_and_decodes_a_remote_prefill():
    m = KVCacheManager(num_gpu_blocks=8, block_size=16, enable_prefix_caching=True)
    s = Scheduler(m, max_num_seqs=4, kernel_inputs=False)
    keys = list(range(100, 104))
    group, status, cached = s.add_remote(Request("a", 64, 3, block_hashes=keys))
    assert status is AllocStatus.OK and cached == 0 and m.num_free_blocks() == 4
    assert s.has_unfinished() and not s.running
    _, later, _ = s.add_remote(Request("b", 80, 3))  # 5 blocks, 4 free: wait, nothing changed
    assert later is AllocStatus.LATER and m.num_free_blocks() == 4 and "b" not in s.receiving
    _, never, _ = s.add_remote(Request("c", 200, 3))  # 13 blocks > the cache
    assert never is AllocStatus.NEVER
    s.complete_remote("a")
    assert group.status is GroupStatus.RUNNING and m.num_tokens(("a", 0)) == 64
    finished = []
    while s.has_unfinished():
        out = s.schedule()
        assert not out.prefills  # the prompt is never computed here
        finished += s.complete_step(out).finished
    assert finished == [group]
    # the prompt's blocks were registered: the same keys now hit all but the last token
    _, ok, cached = s.add_remote(Request("d", 64, 3, block_hashes=keys))
    assert ok is AllocStatus.OK and cached == 48
    with pytest.raises(ValueError, match="one sequence"):
        s.add_remote(Request("e", 16, 3, n=2))


# ---- the planner's disaggregated search -------------------------------------------------
def _fake_run(table: dict):
    """A runner answering from a table {(P, D): (attainment, goodput)} (P = 0 aggregated):
    checks the search's logic apart from the simulations."""
    def run(trace, config, cluster, disagg):
        key = (0, cluster.replicas) if disagg is None else (disagg.prefill_replicas,
                                                           disagg.decode_replicas)
        att, good = table[key]
        return {"slo": {"attainment": att, "goodput_requests_per_s": good}, "latency_s": {}}
    return run


def test_best_split_picks_the_highest_goodput_and_reports_the_aggregated_beside_it():
    from kvpager.sim.cluster.disagg_plan import best_split

    table = {(0, 4): (0.8, 2.0), (1, 3): (0.9, 2.5), (2, 2): (0.95, 3.0), (3, 1): (0.5, 1.0)}
    cluster = ClusterConfig(slo_ttft_s=2.0)
    answer = best_split(_trace(2), _config(), cluster, 4, run=_fake_run(table))
    assert answer.disaggregated is not None and answer.disaggregated.label == "2P+2D"
    assert answer.aggregated is not None and answer.aggregated.goodput == 2.0
    assert answer.disaggregated.goodput_per_gpu == pytest.approx(0.75)
    assert len(answer.probes) == 4


def test_fewest_gpus_stops_at_the_first_count_that_meets_the_slo():
    from kvpager.sim.cluster.disagg_plan import fewest_gpus

    table = {(0, 1): (0.2, 1), (0, 2): (0.5, 1), (0, 3): (0.95, 3), (1, 1): (0.92, 2),
             (0, 4): (1, 4)}
    cluster = ClusterConfig(slo_ttft_s=2.0)
    answer = fewest_gpus(_trace(2), _config(), cluster, 0.9, 8, run=_fake_run(table))
    assert answer.disaggregated is not None and answer.disaggregated.gpus == 2
    assert answer.aggregated is not None and answer.aggregated.gpus == 3
    with pytest.raises(ValueError, match="--slo-ttft"):
        fewest_gpus(_trace(2), _config(), ClusterConfig(), 0.9, 4, run=_fake_run(table))


def test_a_real_probe_measures_attainment():
    from kvpager.sim.cluster.disagg_plan import probe

    result = probe(_trace(10), _config(), ClusterConfig(slo_ttft_s=100.0), 1, 1)
    assert result.attainment == 1.0 and result.goodput > 0 and result.gpus == 2
    assert result.transfer_mean_s is not None and result.transfer_mean_s > 0
    assert result.hit_rate is not None and result.decode_waits == 0
