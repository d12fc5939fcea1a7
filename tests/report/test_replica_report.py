"""A cluster run's per-replica files, read back for the report: each replica's series, the
in-flight samples, the imbalance over time, and sections only for a cluster run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("simpy")
pytest.importorskip("plotly")

from kvpager.report.replica_report import replica_sections
from kvpager.report.rundata import load_run
from kvpager.sim import SimConfig, simulate
from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.traces import load_trace

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mooncake_conv_sample.jsonl"
CONFIG = SimConfig(model="llama-3.1-8b", gpu="h100-80gb", prefix_caching=True,
                   num_gpu_blocks=3000, cost_model="roofline")


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cluster") / "run"
    metrics = simulate(load_trace(SAMPLE, limit=80), CONFIG, ["paged"], out_dir=out,
                       cluster=ClusterConfig(replicas=3, router="least-requests"))
    return out, metrics


def test_each_replica_series_and_the_load_samples_are_read_back(cluster_run):
    out, metrics = cluster_run
    run = load_run(out)
    data = run.replicas["paged"]
    assert len(data.memory) == 3
    # replica 0's series is the one memory_paged.csv has always held
    np.testing.assert_allclose(data.memory[0].time_s, run.memory["paged"].time_s, atol=1e-6)
    np.testing.assert_allclose(data.memory[0].fractions, run.memory["paged"].fractions,
                               atol=1e-6)
    for m in data.memory:
        assert m.time_s.size > 0 and np.allclose(m.fractions.sum(axis=1), 1.0, atol=1e-4)
    # one sample per arrival; in flight before each arrival; the router spread the requests
    assert data.in_flight.shape == (80, 3)
    assert data.in_flight[0].sum() == 0 and data.in_flight.max() > 0
    summary = metrics["strategies"]["paged"]["cluster"]
    assert [r["requests"]["arrived"] > 0 for r in summary["replicas"]] == [True] * 3


def test_the_imbalance_series_averages_to_the_imbalance(cluster_run):
    _, metrics = cluster_run
    imbalance = metrics["strategies"]["paged"]["cluster"]["imbalance"]
    series = imbalance["series"]
    values = [v for v in series["max_over_mean"] if v is not None]
    assert len(series["t_s"]) == len(series["max_over_mean"]) == 100
    assert values and all(1.0 <= v <= 3.0 for v in values)
    assert min(values) <= imbalance["max_over_mean"] <= max(values)
    assert max(values) <= imbalance["peak"] + 1e-9


def test_sections_appear_only_for_a_cluster_run(cluster_run, tmp_path):
    out, _ = cluster_run
    sections = replica_sections(load_run(out))
    assert [s.anchor for s in sections] == ["replicas-0", "replica-hits"]
    assert "least-requests" in sections[0].intro and "cluster" in sections[0].body_html
    simulate(load_trace(SAMPLE, limit=10), CONFIG, ["paged"], out_dir=tmp_path / "one")
    assert not (tmp_path / "one" / "replicas_paged.csv").exists()
    assert replica_sections(load_run(tmp_path / "one")) == []
