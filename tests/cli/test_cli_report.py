"""`kvpager simulate --report` and `kvpager report`: success and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app

pytest.importorskip("plotly")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvpager: error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = invoke("simulate", EXAMPLES / "azure_conv_sample.csv", "--cache", "paged",
                    "--limit", "50", "--out", out / "run", "--report", out / "sim.html")
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'sim.html'}" in result.stdout
    return out


def test_simulate_report_is_one_self_contained_file(run_dir):
    html = (run_dir / "sim.html").read_text()
    assert html.count("plotly.js v") == 1 and html.count('class="kv-figure"') == 4
    assert "azure_conv_sample.csv: 50 requests" in html


def test_simulate_json_with_report_keeps_stdout_json(tmp_path):
    result = invoke("simulate", EXAMPLES / "azure_conv_sample.csv", "--cache", "paged",
                    "--limit", "20", "--out", tmp_path / "run", "--report",
                    tmp_path / "r.html", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["strategies"] == ["paged"]
    assert (tmp_path / "r.html").is_file()


def test_simulate_bad_report_name_fails_before_simulating(tmp_path):
    result = invoke("simulate", EXAMPLES / "azure_conv_sample.csv", "--cache", "paged",
                    "--limit", "20", "--out", tmp_path / "run", "--report",
                    tmp_path / "r.txt")
    assert "must end in .html" in one_line_error(result, 2)
    assert not (tmp_path / "run").exists()


def test_report_defaults_to_report_html_in_the_run_directory(run_dir):
    result = invoke("report", run_dir / "run")
    assert result.exit_code == 0, result.output
    assert (run_dir / "run" / "report.html").is_file()
    assert result.stdout.startswith("wrote run report ")


def test_report_json_output(run_dir, tmp_path):
    result = invoke("report", run_dir / "run", "-o", tmp_path / "out" / "x.html", "--json",
                    "--max-points", "50")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "run" and info["report"] == str(tmp_path / "out" / "x.html")
    assert info["bytes"] == (tmp_path / "out" / "x.html").stat().st_size


def test_report_of_a_sweep(tmp_path):
    sweep = {"schema": 1, "kind": "kvpager-sweep",
             "spec": {"trace": "t.csv", "axis": "rate", "values": [1.0, 2.0],
                      "strategies": ["paged"], "metric": "normalized-mean",
                      "latency_bound": 0.2},
             "config": {"model": "m"}, "capacity": {}, "trace": {"requests": 5},
             "points": [{"value": v, "strategy": "paged", "rate_per_s": v,
                         "metrics": {"latency_s": {"normalized": {"mean": 0.1 * v}}}}
                        for v in (1.0, 2.0)],
             "sustained": {"paged": {"value": 2.0, "rate_per_s": 2.0, "latency": 0.2,
                                     "first_miss_rate_per_s": None}}}
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps(sweep))
    result = invoke("report", tmp_path / "sw", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "sweep" and info["report"] == str(tmp_path / "sw" / "sweep.html")
    html = (tmp_path / "sw" / "sweep.html").read_text()
    assert html.count('class="kv-figure"') == 2


def test_report_missing_source_exit_2(tmp_path):
    assert "nope" in one_line_error(invoke("report", tmp_path / "nope"), 2)


def test_report_directory_without_metrics_exit_2(tmp_path):
    assert "metrics.json" in one_line_error(invoke("report", tmp_path), 2)


def test_report_bad_output_and_max_points_exit_2(run_dir, tmp_path):
    line = one_line_error(invoke("report", run_dir / "run", "-o", tmp_path / "x.pdf"), 2)
    assert "must end in .html" in line
    line = one_line_error(invoke("report", run_dir / "run", "-o", tmp_path / "x.html",
                                 "--max-points", "1"), 2)
    assert "max_points" in line


def test_report_corrupt_run_file_exit_2(run_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "run", broken)
    text = (broken / "memory_paged.csv").read_text().splitlines()
    text[2] = "x" + text[2]
    (broken / "memory_paged.csv").write_text("\n".join(text) + "\n")
    line = one_line_error(invoke("report", broken), 2)
    assert "memory_paged.csv: line 3, column 'time_s'" in line


def test_report_of_a_json_that_is_not_a_sweep_exit_2(tmp_path):
    (tmp_path / "other.json").write_text('{"kind": "something"}')
    line = one_line_error(invoke("report", tmp_path / "other.json"), 2)
    assert "not a kvpager sweep document" in line
