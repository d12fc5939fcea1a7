"""Reading run directories back: agreement with metrics.json, derived events, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvpager.report.rundata import derive_swap_events, load_run
from tests.report.synthetic import SHARES_A, write_run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    pytest.importorskip("simpy")
    from kvpager.sim import SimConfig, simulate
    from kvpager.sim.traces import load_trace

    out = tmp_path_factory.mktemp("run")
    trace = load_trace(EXAMPLES / "azure_conv_sample.csv", limit=120, rate_scale=3.0)
    simulate(trace, SimConfig(gpu="a100-40gb"), ["paged"], out_dir=out)
    return out


def test_columns_agree_with_the_simulators_summary(sim_run):
    run = load_run(sim_run)
    paged = run.metrics["strategies"]["paged"]
    req = run.requests["paged"]
    assert run.strategies == ("paged",)
    assert int(req.finished.sum()) == paged["requests"]["finished"]
    # latencies recomputed from the per-request file match the summary numbers
    assert req.normalized_latency().mean() == pytest.approx(
        paged["latency_s"]["normalized"]["mean"], rel=1e-4)
    assert req.tpot().mean() == pytest.approx(paged["latency_s"]["tpot"]["mean"], rel=1e-4)
    assert np.nanpercentile(req.ttft_s[req.finished], 99) == pytest.approx(
        paged["latency_s"]["ttft"]["p99"], rel=1e-4)
    mem = run.memory["paged"]
    assert np.allclose(mem.fractions.sum(axis=1), 1.0, atol=1e-5)
    assert mem.time_s.size > 3 and np.all(np.diff(mem.time_s) > 0)


def test_swap_events_derived_from_the_swapped_queue(tmp_path):
    write_run(tmp_path, {"paged": {"memory": SHARES_A}}, samples=6,
              swapped=[0, 2, 2, 1, 0, 3])
    ev = load_run(tmp_path).events["paged"]
    assert not ev.exact
    assert ev.time_s.tolist() == [1.0, 3.0, 4.0, 5.0]
    assert ev.kind.tolist() == ["swap-out", "swap-in", "swap-in", "swap-out"]
    assert ev.count.tolist() == [2.0, 1.0, 1.0, 3.0]


def test_an_events_file_takes_precedence(tmp_path):
    write_run(tmp_path, {"paged": {"memory": SHARES_A}}, swapped=[0] * 20)
    (tmp_path / "events_paged.csv").write_text(
        "time_s,kind,count\n1.5,preempt-recompute,1\n2.0,swap-out,4\n")
    ev = load_run(tmp_path).events["paged"]
    assert ev.exact and ev.kind.tolist() == ["preempt-recompute", "swap-out"]
    assert ev.count.tolist() == [1.0, 4.0]


def test_derived_events_of_a_flat_queue_are_empty(tmp_path):
    write_run(tmp_path, {"paged": {"memory": SHARES_A}}, swapped=[1] * 20)
    assert derive_swap_events(load_run(tmp_path).memory["paged"]).time_s.size == 0


def test_missing_run_directory_and_metrics(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_run(tmp_path / "nope")
    assert "nope" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        load_run(tmp_path)


def test_missing_strategy_file_is_named(tmp_path):
    write_run(tmp_path, {"paged": {"memory": SHARES_A}})
    (tmp_path / "memory_paged.csv").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_run(tmp_path)
    assert "memory_paged.csv" in str(err.value)


def test_bad_number_names_file_line_and_column(tmp_path):
    write_run(tmp_path, {"paged": {"memory": SHARES_A}})
    path = tmp_path / "requests_paged.csv"
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[8] = "soon"  # ttft_s
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"requests_paged.csv: line 4, column 'ttft_s'"):
        load_run(tmp_path)


def test_missing_column_and_bad_metrics_are_named(tmp_path):
    write_run(tmp_path, {"paged": {"memory": SHARES_A}})
    (tmp_path / "memory_paged.csv").write_text("time_s,token\n0,1\n")
    with pytest.raises(ValueError, match=r"memory_paged\.csv: header lacks column"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"strategies": {}}))
    with pytest.raises(ValueError, match="'strategies' must be a non-empty object"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(tmp_path)


def test_unknown_event_kind_is_refused(tmp_path):
    write_run(tmp_path, {"paged": {"memory": SHARES_A}})
    (tmp_path / "events_paged.csv").write_text("time_s,kind,count\n1,explode,1\n")
    with pytest.raises(ValueError, match=r"events_paged\.csv: column 'kind'"):
        load_run(tmp_path)


def test_a_memory_file_without_the_cached_column_reads_as_zero_cached(tmp_path):
    """Run directories written before "cached" was split out of "free" still load."""
    write_run(tmp_path, {"paged": {"memory": SHARES_A}}, samples=4)
    path = tmp_path / "memory_paged.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    j = header.index("cached")
    kept = [",".join(c for k, c in enumerate(line.split(",")) if k != j) for line in lines]
    path.write_text("\n".join(kept) + "\n")
    mem = load_run(tmp_path).memory["paged"]
    from kvpager.report.rundata import MEMORY_FIELDS

    assert mem.fractions.shape == (4, len(MEMORY_FIELDS))
    assert np.all(mem.fractions[:, MEMORY_FIELDS.index("cached")] == 0.0)
