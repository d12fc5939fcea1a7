"""prefix-precise: the router's index is what each replica's prefix cache holds, fed by
the replicas' own KV events."""

from __future__ import annotations

from pathlib import Path

from kvpager.sim import SimConfig
from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.engine import Simulation
from kvpager.sim.run import cost_model, resolve
from kvpager.sim.traces import load_trace

MOONCAKE = Path(__file__).resolve().parents[2] / "examples" / "mooncake_conv_sample.jsonl"


def run(delay: float, limit: int = 120) -> Simulation:
    config = resolve(SimConfig(model="llama-3.1-8b", gpu="h100-80gb", prefix_caching=True,
                               num_gpu_blocks=1500, cost_model="roofline"))
    sim = Simulation(load_trace(MOONCAKE, limit=limit), config, "paged", cost_model(config),
                     cluster=ClusterConfig(replicas=3, router="prefix-precise",
                                           signal_delay_s=delay))
    sim.run()
    return sim


def test_the_precise_index_equals_every_replicas_prefix_cache():
    sim = run(delay=0.0)
    router = sim.router
    assert router.name == "prefix-precise"
    held = [{key for _, key in r.manager.gpu.cached_items()} for r in sim.replicas]
    assert sum(map(len, held)) > 0  # the small caches registered and evicted blocks
    for i, keys in enumerate(held):
        assert router.index.holds(i) == keys
    assert len({i for i in sim.assigned.tolist() if i >= 0}) > 1  # the load guard spreads


def test_a_delayed_router_sees_the_caches_as_they_were():
    sim = run(delay=1e9)  # nothing is ever old enough: the router's index stays empty
    assert all(not sim.router.index.holds(i) for i in range(3))
    sim.router.catch_up(2e9)  # once the delay has passed, it is the caches' state again
    for i, r in enumerate(sim.replicas):
        assert sim.router.index.holds(i) == {key for _, key in r.manager.gpu.cached_items()}


def test_prefix_precise_is_a_router_option(tmp_path):
    from typer.testing import CliRunner

    from kvpager.cli.app import app

    result = CliRunner().invoke(app, [
        "simulate", str(MOONCAKE), "--limit", "40", "--cache", "paged", "--prefix-caching",
        "--model", "llama-3.1-8b", "--replicas", "2", "--router", "prefix-precise",
        "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "router prefix-precise" in result.output


def test_no_bus_is_made_when_no_router_listens():
    config = resolve(SimConfig(model="llama-3.1-8b", gpu="h100-80gb", prefix_caching=True,
                               num_gpu_blocks=1500, cost_model="roofline"))
    sim = Simulation(load_trace(MOONCAKE, limit=20), config, "paged", cost_model(config),
                     cluster=ClusterConfig(replicas=2, router="prefix-approx"))
    assert all(r.manager.events is None for r in sim.replicas)
