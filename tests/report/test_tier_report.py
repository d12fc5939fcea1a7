"""The CPU prefix tier in reports: hit rate by tier over time and the TTFT saved in a run
report; hit rate, TTFT and throughput against tier size in a sweep report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("plotly")

from kvpager.report import write_report, write_sweep_report
from kvpager.report.rundata import load_run
from tests.report.synthetic import SHARES_A, write_run
from tests.report.test_report_html import figures, values

TIER = {"size_gib": 64.0, "capacity_blocks": 32768, "blocks_held": 900, "hit_rate": 0.3,
        "gpu_hit_rate": 0.2, "cpu_hit_rate": 0.1, "hit_blocks": {"gpu": 200, "cpu": 100},
        "prompt_tokens": {"queried": 16000, "from_gpu": 3200, "from_cpu": 1600,
                          "computed": 11200},
        "offloaded_blocks": 400, "loaded_blocks": 100, "offloaded_bytes": 400 << 21,
        "loaded_bytes": 100 << 21, "host_link_s": 0.5,
        "gpu_only": {"hit_rate": 0.2, "ttft_s": {"mean": 0.9, "p50": 0.7, "p90": 1.1,
                                                 "p99": 2.5},
                     "requests_per_s": 1.4, "output_tokens_per_s": 280.0, "finished": 12},
        "ttft_saved_s": {"mean": 0.85, "p50": 0.66, "p90": 1.02, "p99": 2.4}}


def add_tier_columns(path: Path, gpu: list[float], cpu: list[float]) -> None:
    """Append the per-tier hit-rate columns to a synthetic memory CSV."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    rows[0] += ["prefix_gpu_hit_rate", "prefix_cpu_hit_rate"]
    for j, row in enumerate(rows[1:]):
        row += [gpu[j], cpu[j]]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def tiered_run(tmp_path) -> Path:
    root = write_run(tmp_path / "run", {"paged": {"memory": SHARES_A}}, samples=20,
                     prefix_caching=True)
    metrics = json.loads((root / "metrics.json").read_text())
    metrics["strategies"]["paged"]["prefix_tier"] = TIER
    (root / "metrics.json").write_text(json.dumps(metrics))
    add_tier_columns(root / "memory_paged.csv", [0.01 * j for j in range(20)],
                     [0.005 * j for j in range(20)])
    return root


def test_run_report_draws_hits_by_tier_and_the_ttft_saved(tiered_run, tmp_path):
    html = write_report(tiered_run, tmp_path / "r.html").read_text()
    fig = figures(html)["fig-tier"]
    gpu, cpu = fig["data"]
    assert gpu["name"] == "paged: GPU" and cpu["name"] == "paged: CPU tier"
    assert gpu["stackgroup"] == cpu["stackgroup"]  # stacked: the top edge is the total
    assert values(gpu["y"]) == pytest.approx([0.01 * j for j in range(20)])
    assert values(cpu["y"]) == pytest.approx([0.005 * j for j in range(20)])
    for cell in ("0.700", "0.040", "0.660", "2.500", "2.400", "0.8 / 0.2"):
        assert f">{cell}<" in html
    assert "no GPU-only baseline" not in html


def test_run_report_without_a_tier_has_no_tier_section(tmp_path):
    root = write_run(tmp_path / "run", {"paged": {"memory": SHARES_A}}, prefix_caching=True)
    html = write_report(root, tmp_path / "r.html").read_text()
    assert 'id="tier"' not in html and "fig-tier" not in figures(html)
    assert load_run(root).memory["paged"].tier_hit_rates is None  # older run directories


def test_run_report_says_when_there_is_no_baseline(tiered_run, tmp_path):
    metrics = json.loads((tiered_run / "metrics.json").read_text())
    tier = metrics["strategies"]["paged"]["prefix_tier"]
    del tier["gpu_only"], tier["ttft_saved_s"]
    (tiered_run / "metrics.json").write_text(json.dumps(metrics))
    html = write_report(tiered_run, tmp_path / "r.html").read_text()
    assert "no GPU-only baseline" in html


def tier_point(value, hit, cpu, p50, p99, rps) -> dict:
    return {"value": value, "strategy": "paged", "rate_per_s": 3.4,
            "measured_rate_per_s": 3.4, "metrics": {
                "prefix_tier": {"hit_rate": hit, "gpu_hit_rate": hit - cpu,
                                "cpu_hit_rate": cpu, "loaded_bytes": 0},
                "latency_s": {"ttft": {"p50": p50, "p99": p99}},
                "throughput": {"requests_per_s": rps}}}


def test_tier_sweep_report_orders_sizes_with_unlimited_last(tmp_path):
    doc = {"schema": 1, "kind": "kvpager-sweep",
           "spec": {"trace": "t.jsonl", "axis": "cpu_prefix_cache",
                    "values": [0.0, 64.0, "unlimited"], "strategies": ["paged"],
                    "rates": None, "rate_scales": [1.0], "metric": "normalized-mean",
                    "latency_bound": 0.2},
           "config": {"model": "llama-3.1-8b", "gpu": "h100-80gb", "tp": 1},
           "capacity": {}, "trace": {"source": "t.jsonl", "requests": 9},
           "points": [tier_point("unlimited", 0.36, 0.2, 0.4, 3.0, 3.3),
                      tier_point(0.0, 0.16, 0.0, 1.5, 9.0, 3.1),
                      tier_point(64.0, 0.3, 0.14, 0.6, 4.0, 3.2)],
           "sustained": {}, "executor": {"kind": "inline"}, "wall_s": 1.0}
    html = write_sweep_report(doc, tmp_path / "s.html").read_text()
    data = figures(html)["fig-tiers"]["data"]
    assert list(data[0]["x"]) == ["0 GiB", "64 GiB", "unlimited"]
    by_name = {d["name"]: values(d["y"]) for d in data}
    assert by_name["hits from CPU tier"] == pytest.approx([0.0, 0.14, 0.2])
    assert by_name["TTFT p99"] == pytest.approx([9.0, 4.0, 3.0])
    assert by_name["throughput"] == pytest.approx([3.1, 3.2, 3.3])
