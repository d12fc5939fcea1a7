"""Sweeps: values and specs, the sustained-rate rule, and parallel runs that agree with
plain serial simulations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvpager.sim import SimConfig
from kvpager.sweep import (
    SweepSpec,
    metric_value,
    parse_values,
    read_sweep,
    sustained,
    write_sweep,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AZURE = str(EXAMPLES / "azure_conv_sample.csv")


# ---- values and specs ---------------------------------------------------------------------
def test_parse_values_sorts_and_dedupes():
    assert parse_values("4, 0.5,1,2,1", "--rates") == (0.5, 1.0, 2.0, 4.0)


@pytest.mark.parametrize(("text", "expect"), [
    ("1,x", "'x' is not a number"), ("1,,2", "empty item"), ("0", "positive"),
    ("-1", "positive"), ("inf", "positive"), ("", "expected comma-separated")])
def test_parse_values_names_the_option_and_item(text, expect):
    with pytest.raises(ValueError, match="--rates") as err:
        parse_values(text, "--rates")
    assert expect in str(err.value)


@pytest.mark.parametrize(("kwargs", "expect"), [
    ({}, "exactly one of rates"),
    ({"rates": (1,), "rate_scales": (1,)}, "exactly one of rates"),
    ({"rates": (1,), "metric": "ttft-p42"}, "metric: unknown 'ttft-p42'"),
    ({"rates": (1,), "metric": "ttft-p99"}, "latency_bound: give a bound"),
    ({"rates": (1,), "latency_bound": -1.0}, "latency_bound must be a positive"),
    ({"rate_scales": (1,), "arrival_cv": 2.0}, "arrival_cv applies to generated"),
    ({"rates": (1,), "strategies": ("lru",)}, "unknown cache strategy 'lru'"),
    ({"rates": (1,), "limit": 0}, "limit must be an integer >= 1"),
    ({"rates": (1,), "seed": -3}, "seed must be an integer >= 0"),
    ({"rates": (0,)}, "rates: '0' must be a positive"),
])
def test_spec_refuses_bad_values(kwargs, expect):
    with pytest.raises(ValueError) as err:
        SweepSpec(AZURE, **kwargs)
    assert expect in str(err.value)


def test_default_bound_only_for_normalized_latency():
    assert SweepSpec(AZURE, rates=(1,)).latency_bound == 0.2
    assert SweepSpec(AZURE, rates=(1,), metric="ttft-p99", latency_bound=2).latency_bound == 2


# ---- the sustained-rate rule --------------------------------------------------------------
def point(strategy: str, rate: float, latency: float | None) -> dict:
    return {"strategy": strategy, "value": rate, "rate_per_s": rate,
            "metrics": {"latency_s": {"normalized": {"mean": latency}}}}


def test_sustained_stops_at_the_first_miss():
    # a: dips back under the bound at 8 req/s after missing at 4: 8 must not count
    pts = [point("a", r, v) for r, v in ((1, 0.1), (2, 0.15), (4, 0.3), (8, 0.12))]
    pts += [point("b", r, v) for r, v in ((1, 0.25), (2, 0.1))]
    pts += [point("c", r, v) for r, v in ((2, 0.05), (1, 0.01))]  # unsorted input
    pts += [point("d", r, v) for r, v in ((1, 0.1), (2, None))]  # nothing finished at 2
    s = sustained(pts, ["a", "b", "c", "d"], "normalized-mean", 0.2)
    assert s["a"] == {"value": 2, "rate_per_s": 2, "latency": 0.15,
                      "first_miss_rate_per_s": 4, "first_miss_reason": "over the bound",
                      "top_tested": False}
    assert s["b"]["rate_per_s"] is None and s["b"]["first_miss_rate_per_s"] == 1
    assert s["c"]["rate_per_s"] == 2 and s["c"]["first_miss_rate_per_s"] is None
    assert s["c"]["top_tested"] and not s["b"]["top_tested"]
    assert s["d"]["rate_per_s"] == 1 and s["d"]["first_miss_rate_per_s"] == 2


def test_a_saturated_point_is_not_sustained_whatever_its_latency():
    pts = [point("a", 1, 0.1), point("a", 2, 0.12)]
    pts[1]["metrics"]["load"] = {"saturated": True}  # finished requests looked fine
    s = sustained(pts, ["a"], "normalized-mean", 0.2)
    assert s["a"]["rate_per_s"] == 1 and s["a"]["first_miss_rate_per_s"] == 2
    assert s["a"]["first_miss_reason"] == "saturated" and not s["a"]["top_tested"]


def test_bound_is_inclusive_and_metric_paths_are_followed():
    m = {"latency_s": {"ttft": {"p99": 2.0}}}
    assert metric_value(m, "ttft-p99") == 2.0 and metric_value(m, "tpot-p50") is None
    s = sustained([{"strategy": "x", "value": 1, "rate_per_s": 1, "metrics": m}], ["x"],
                  "ttft-p99", 2.0)
    assert s["x"]["rate_per_s"] == 1


# ---- running ------------------------------------------------------------------------------
def strip_wall(metrics: dict) -> dict:
    out = json.loads(json.dumps(metrics))
    out["time"].pop("wall_s", None)
    return out


@pytest.fixture(scope="module")
def small_spec() -> SweepSpec:
    pytest.importorskip("simpy")
    return SweepSpec(AZURE, SimConfig(), ("paged",), rates=(2.0, 6.0), limit=60)


@pytest.fixture(scope="module")
def inline_doc(small_spec) -> dict:
    from kvpager.sweep import run_sweep

    return run_sweep(small_spec, workers=1)


def test_points_equal_plain_simulations_at_each_rate(small_spec, inline_doc):
    from kvpager.sim.run import simulate
    from kvpager.sim.traces import PoissonArrivals, load_trace

    assert inline_doc["executor"] == {"kind": "inline", "workers": 1}
    for p in inline_doc["points"]:
        trace = load_trace(AZURE, arrivals=PoissonArrivals(p["value"], seed=0), limit=60)
        direct = simulate(trace, SimConfig(), ["paged"])["strategies"]["paged"]
        assert strip_wall(p["metrics"]) == strip_wall(direct)
        span = trace.arrival[-1] - trace.arrival[0]
        assert p["measured_rate_per_s"] == pytest.approx(len(trace) / span)
    # more load, more latency: the point at 6 req/s waits longer than the one at 2
    lat = [metric_value(p["metrics"], "normalized-mean") for p in inline_doc["points"]]
    assert lat[1] > lat[0]


def test_local_processes_agree_with_inline(small_spec, inline_doc):
    from kvpager.sweep import run_sweep

    doc = run_sweep(small_spec, workers=2)
    assert doc["executor"] == {"kind": "processes", "workers": 2}
    assert [strip_wall(p["metrics"]) for p in doc["points"]] == \
        [strip_wall(p["metrics"]) for p in inline_doc["points"]]
    assert doc["sustained"] == inline_doc["sustained"]


def test_rate_scales_multiply_the_traces_own_rate():
    pytest.importorskip("simpy")
    from kvpager.sim.traces import load_trace
    from kvpager.sweep import run_sweep

    spec = SweepSpec(AZURE, SimConfig(), ("paged",), rate_scales=(1.0, 3.0), limit=40)
    doc = run_sweep(spec, workers=1)
    trace = load_trace(AZURE, limit=40)
    native = len(trace) / (trace.arrival[-1] - trace.arrival[0])
    assert doc["trace"]["native_rate_per_s"] == pytest.approx(native)
    assert [p["rate_per_s"] for p in doc["points"]] == pytest.approx([native, 3 * native])
    assert [p["measured_rate_per_s"] for p in doc["points"]] == \
        pytest.approx([native, 3 * native])


def test_ray_local_agrees_with_inline(small_spec, inline_doc):
    pytest.importorskip("ray", reason="Ray is not installed (the optional 'ray' extra)")
    from kvpager.sweep import run_sweep

    doc = run_sweep(small_spec, workers=2, ray_address="local")
    assert doc["executor"] == {"kind": "ray", "address": "local", "workers": 2}
    assert [strip_wall(p["metrics"]) for p in doc["points"]] == \
        [strip_wall(p["metrics"]) for p in inline_doc["points"]]


def test_ray_missing_is_a_clear_error(small_spec, monkeypatch):
    import sys

    from kvpager.sweep import RayUnavailableError, run_sweep

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayUnavailableError, match=r"pip install 'kvpager\[ray\]'"):
        run_sweep(small_spec, workers=1, ray_address="local")


def test_bad_workers_and_address_fail_before_any_work(small_spec):
    from kvpager.sweep import run_sweep

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            run_sweep(small_spec, workers=bad)
    with pytest.raises(ValueError, match="ray_address"):
        run_sweep(small_spec, ray_address="")


def test_a_bad_trace_fails_before_any_point_runs(tmp_path):
    pytest.importorskip("simpy")
    from kvpager.sweep import run_sweep

    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,374,x\n")
    with pytest.raises(ValueError, match=r"bad\.csv: record 1"):
        run_sweep(SweepSpec(str(bad), rates=(1.0,)), workers=2)


# ---- sweep.json ---------------------------------------------------------------------------
def test_sweep_document_round_trips(inline_doc, tmp_path):
    path = write_sweep(inline_doc, tmp_path / "sw")
    assert path.name == "sweep.json"
    again = read_sweep(tmp_path / "sw")
    assert again["points"] == json.loads(json.dumps(inline_doc["points"]))
    assert again["spec"]["values"] == [2.0, 6.0]


@pytest.mark.parametrize(("content", "expect"), [
    ("[]", "not a kvpager sweep document"),
    ('{"kind": "kvpager-sweep", "spec": {}, "points": {}, "sustained": {}}',
     "field 'points' must be a JSON array"),
    ('{"kind": "kvpager-sweep", "spec": {}, "points": [{"value": 1}], "sustained": {}}',
     r"points\[0\] must be an object"),
    ("{", "not valid JSON"),
])
def test_bad_sweep_documents_are_named(tmp_path, content, expect):
    path = tmp_path / "sweep.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=expect):
        read_sweep(path)


def test_a_bad_model_fails_in_the_driver(monkeypatch):
    pytest.importorskip("simpy")
    from kvpager.sweep import parallel, run_sweep

    def no_pool(*args, **kwargs):
        raise AssertionError("points were started")

    monkeypatch.setattr(parallel.Executor, "map", no_pool)
    spec = SweepSpec(AZURE, SimConfig(model="gpt-9"), ("paged",), rates=(1.0, 2.0), limit=5)
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        run_sweep(spec, workers=2)
