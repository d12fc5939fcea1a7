"""A few seconds of the trace fuzzer (tools/fuzz_traces.py; run it for minutes by hand), and
the problems it found beyond the issue's list, each pinned by a test."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from kvpager.sim.traces import load_trace, summarize  # noqa: E402
from tools.fuzz_traces import SEEDS, check_load, fuzz, make_case  # noqa: E402


def test_cases_are_reproducible_from_seed_and_index():
    assert make_case(7, 123) == make_case(7, 123)
    assert make_case(7, 123) != make_case(8, 123)


def test_every_seed_file_is_a_valid_trace(tmp_path):
    for name, text in SEEDS.items():
        path = tmp_path / name
        path.write_text(text)
        assert check_load(path) == [], name


def test_a_few_seconds_of_fuzzing_find_nothing(tmp_path):
    cases, findings = fuzz(seed=0, seconds=3.0, cli_every=10, workdir=tmp_path)
    assert cases >= 20
    assert findings == [], json.dumps(findings[:5], indent=1)


def test_the_fuzzer_reports_a_reader_that_breaks_the_contract(tmp_path, monkeypatch):
    import kvpager.sim.traces as traces

    def broken(*args, **kwargs):
        raise OverflowError("Python int too large to convert to C long")

    monkeypatch.setattr(traces, "load_trace", broken)
    _, findings = fuzz(seed=0, seconds=5.0, cli_every=10**9, max_cases=3, workdir=tmp_path)
    assert findings and "OverflowError" in findings[0]["problem"]


def test_found_summary_of_arrivals_near_the_largest_float_does_not_overflow(tmp_path):
    records = [{"arrival_time": t, "prompt_tokens": 8, "output_tokens": 2}
               for t in (0.0, 1e308, 1.5e308)]
    path = tmp_path / "far.json"
    path.write_text(json.dumps(records))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = summarize(load_trace(path))
    assert summary.interarrival_mean_s == pytest.approx(0.75e308)
    assert summary.interarrival_cv == pytest.approx(1 / 3)


def test_found_rate_scale_past_the_largest_float_names_the_argument(tmp_path):
    path = tmp_path / "far.json"
    path.write_text(json.dumps([{"arrival_time": 1e308, "prompt_tokens": 8,
                                 "output_tokens": 2}, {"arrival_time": 0, "prompt_tokens": 8,
                                                       "output_tokens": 2}]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"rate_scale: 0.5 stretches the arrival times "
                                             r"of .*far.json"):
            load_trace(path, rate_scale=0.5)
