"""The SimPy engine: hand-computed timelines and memory with a constant-time cost model,
window fast-forwarding that changes nothing, conservation and determinism on real traces."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from kvpager.sim import SimConfig
from kvpager.sim.engine import Simulation
from kvpager.sim.run import cost_model, resolve, simulate
from kvpager.sim.traces import Trace, load_trace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class ConstantCost:
    """Every step takes `step` seconds; a cache of `blocks` blocks; no swap or copy cost."""

    def __init__(self, blocks: int, step: float = 1.0, cpu_blocks: int = 0) -> None:
        self.blocks, self.step, self.cpu_blocks = blocks, step, cpu_blocks

    def num_gpu_blocks(self, block_size: int) -> int:
        return self.blocks

    def num_cpu_blocks(self, swap_bytes: float, block_size: int) -> int:
        return self.cpu_blocks

    @property
    def kv_capacity_tokens(self) -> int:
        return self.blocks

    def step_time(self, prefill, attention, decode_seqs, context, prefill_seqs=0) -> float:
        return self.step if prefill or decode_seqs else 0.0

    def decode_context(self, seq_lens, steps: int = 1) -> float:
        return float(seq_lens.sum()) - seq_lens.size * (steps - 1) / 2

    def prefill_work(self, chunk_tokens: int, context_before: int) -> float:
        return chunk_tokens * (context_before + (chunk_tokens + 1) / 2)

    def swap_time(self, blocks: int, block_size: int) -> float:
        return 0.0

    def copy_time(self, blocks: int, block_size: int) -> float:
        return 0.0


def tiny_trace(rows: list[tuple[float, int, int]]) -> Trace:
    return Trace.from_columns(*zip(*rows, strict=True))


def run_tiny(rows, blocks=10, **cfg):
    tiny = tiny_trace(rows)
    config = resolve(SimConfig(block_size=4, **cfg))
    sim = Simulation(tiny, config, "paged", ConstantCost(blocks))
    return sim, sim.run()


def test_a_lone_request_timeline_and_memory_by_hand():
    sim, m = run_tiny([(0.0, 8, 5)], sample_interval_s=0.1, max_window_steps=1)
    r = sim.requests
    # prefill [0, 1] gives the first token; 4 decodes end at 5
    assert (r.first_token[0], r.finish[0], r.output_tokens[0]) == (1.0, 5.0, 5)
    lat = m["latency_s"]
    assert lat["ttft"]["mean"] == 1.0 and lat["e2e"]["mean"] == 5.0
    assert lat["tpot"]["mean"] == 1.0 and lat["normalized"]["mean"] == 1.0
    # samples after each step: 8, 9, 10, 11 token slots of 40 over [1, 5); reserved is what
    # the sequence will still fill of its blocks (12 slots in all): 0, 3, 2, 1
    mem = m["memory"]
    assert mem["token"] == pytest.approx((8 + 9 + 10 + 11) / 4 / 40)
    assert mem["reserved"] == pytest.approx((0 + 3 + 2 + 1) / 4 / 40)
    assert mem["internal"] == 0.0 and mem["external"] == 0.0
    assert sum(mem.values()) == pytest.approx(1.0)
    assert m["time"]["steps"] == 5 and m["time"]["simulated_s"] == 5.0


def test_a_request_arriving_mid_step_joins_at_the_next_step():
    sim, _ = run_tiny([(0.0, 4, 6), (2.5, 4, 2)])
    r = sim.requests
    # b arrives during the step [2, 3]; without chunked prefill its prefill is its own step
    # [3, 4], which also delays a's decode by one step
    assert r.admitted[1] == 3.0 and r.first_token[1] == 4.0 and r.finish[1] == 5.0
    assert r.finish[0] == 7.0


def test_windows_change_no_result(tmp_path):
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv", limit=150)
    runs = []
    for window in (1, 64):
        config = resolve(SimConfig(max_window_steps=window))
        sim = Simulation(trace, config, "paged", cost_model(config))
        sim.run()
        runs.append(sim.requests)
    one, many = runs
    for field in ("admitted", "first_token", "finish"):
        np.testing.assert_allclose(getattr(many, field), getattr(one, field), rtol=1e-9)


def test_conservation_and_one_block_of_slack_per_sequence(tmp_path):
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv", limit=300)
    cfg = SimConfig(gpu_memory_utilization=0.3, sample_interval_s=0.2)
    config = resolve(cfg)
    sim = Simulation(trace, config, "paged", cost_model(config))
    m = sim.run()
    req = m["requests"]
    assert req["arrived"] == req["finished"] + req["rejected"] == 300
    series = sim.memory
    slack = np.asarray(series.slots)[:, 1:3].sum(axis=1)  # reserved + internal
    assert (slack <= np.asarray(series.running) * config.block_size).all()
    assert m["preemptions"]["recompute"] > 0  # the small cache did force preemptions
    preempted = sum(c for _t, kind, c in sim.events if kind == "preempt-recompute")
    assert preempted == m["preemptions"]["recompute"]


def test_same_seed_same_metrics(tmp_path):
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv", limit=120)
    beams = dataclasses.replace(trace, beam_width=np.where(np.arange(120) % 5 == 0, 3, 1)
                                .astype(trace.beam_width.dtype))
    a = simulate(beams, SimConfig(seed=7), strategies=["paged"])
    b = simulate(beams, SimConfig(seed=7), strategies=["paged"])
    for m in (a, b):
        m.pop("wall_s")
        m["strategies"]["paged"]["time"].pop("wall_s")
    assert a == b
    assert a["strategies"]["paged"]["beams_replaced"] > 0
    assert a["strategies"]["paged"]["cow_copies"] > 0


def test_run_directory_has_metrics_requests_and_memory(tmp_path):
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv", limit=50)
    simulate(trace, SimConfig(), strategies=["paged"], out_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["events_paged.csv", "memory_paged.csv", "metrics.json",
                     "requests_paged.csv"]
    lines = (tmp_path / "requests_paged.csv").read_text().splitlines()
    assert len(lines) == 51 and lines[0].startswith("index,id,arrival_s")


@pytest.mark.parametrize(("field", "value"), [("block_size", 0), ("preemption", "later"),
                                              ("gpu_memory_utilization", 1.5),
                                              ("swap_space_gib", -1), ("max_model_len", 1)])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SimConfig(**{field: value})


def test_unknown_strategy_lists_the_choices():
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv", limit=5)
    with pytest.raises(ValueError, match="paged, orca-max"):
        simulate(trace, SimConfig(), strategies=["lru"])
