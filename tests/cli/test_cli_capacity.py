"""Capacity and long prompts as choices: --num-gpu-blocks, --kv-cache-memory,
--long-prompts reject|truncate, and the cost model's calibration shown in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kvpager.cli.app import app

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "azure_conv_sample.csv"
SHIPPED = Path(__file__).resolve().parents[2] / "kvpager/sim/cost_model/calibrations"


def run(tmp_path: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["simulate", str(SAMPLE), "--cache", "paged", "--limit",
                                      "40", "--out", str(tmp_path), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "metrics.json").read_text())


def test_num_gpu_blocks_sets_the_capacity_and_is_reported(tmp_path):
    m = run(tmp_path, "--num-gpu-blocks", "3328")
    assert m["capacity"]["gpu_blocks"] == 3328
    assert m["capacity"]["source"] == "--num-gpu-blocks 3328"
    computed = run(tmp_path / "c")
    assert computed["capacity"]["gpu_blocks"] != 3328
    assert computed["capacity"]["source"].startswith("computed")


def test_kv_cache_memory_sets_the_bytes(tmp_path):
    m = run(tmp_path, "--kv-cache-memory", "2")
    # Llama-2-7B: 512 KiB of KV per token, 16-token blocks: 2 GiB hold 256 blocks
    assert m["capacity"]["gpu_blocks"] == 2 * 1024 * 1024 // (512 * 16)
    assert m["capacity"]["kv_capacity_gib"] == 2


def test_long_prompts_reject_or_truncate(tmp_path):
    rejected = run(tmp_path / "r", "--max-model-len", "300")
    truncated = run(tmp_path / "t", "--max-model-len", "300", "--long-prompts", "truncate")
    r, t = rejected["strategies"]["paged"], truncated["strategies"]["paged"]
    assert r["requests"]["rejected"] > 0
    assert t["requests"]["rejected"] == 0 and t["requests"]["finished"] == 40
    assert t["truncated_prompts"] == r["requests"]["rejected"] and r["truncated_prompts"] == 0
    assert truncated["capacity"]["long_prompts"] == "truncate"


def test_calibrated_run_reports_its_terms_and_is_slower_than_the_roofline(tmp_path):
    roof = run(tmp_path / "r", "--cost-model", "roofline")
    cal = run(tmp_path / "c", "--cost-model", str(SHIPPED / "a100-80gb.json"))
    assert roof["cost_model"]["kind"] == "roofline" and "terms" not in roof["cost_model"]
    assert cal["cost_model"]["kind"] == "file"
    assert cal["cost_model"]["terms"]["linear"] == "fitted to profiles"
    # measured kernels are slower than 80% of HBM peak plus 1 ms (docs/cost_model.md)
    assert cal["strategies"]["paged"]["time"]["simulated_s"] >= \
        roof["strategies"]["paged"]["time"]["simulated_s"]


def test_bad_capacity_choices_exit_2(tmp_path):
    for args, message in [
        (["--num-gpu-blocks", "0"], "--num-gpu-blocks must be an integer >= 1"),
        (["--kv-cache-memory", "-1"], "--kv-cache-memory must be a finite number > 0"),
        (["--num-gpu-blocks", "10", "--kv-cache-memory", "1"], "give one"),
        (["--long-prompts", "drop"], "--long-prompts must be one of reject, truncate"),
        (["--gpu", "h200", "--cost-model", "calibrated"],
         "--cost-model: no calibration ships for GPU 'h200'"),
        (["--cost-model", "roofline", "--calibration", str(SHIPPED / "a100-80gb.json")],
         "--calibration: give the calibration file as --cost-model FILE, not both"),
    ]:
        result = CliRunner().invoke(app, ["simulate", str(SAMPLE), "--limit", "5", "--out",
                                          str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output


def test_the_default_cost_model_is_the_shipped_calibration_where_one_covers_the_gpu(tmp_path):
    """Issue 23: the best model the package has for the GPU, named in metrics and the table."""
    a100 = run(tmp_path / "a")
    assert a100["cost_model"]["kind"] == "calibrated"
    assert "a100-80gb.json" in a100["cost_model"]["source"]
    assert a100["cost_model"]["terms"]["linear"] == "fitted to profiles"
    explicit = run(tmp_path / "e", "--cost-model", "calibrated")
    assert explicit["strategies"]["paged"]["latency_s"] == a100["strategies"]["paged"][
        "latency_s"]
    h200 = run(tmp_path / "h", "--gpu", "h200")
    assert h200["cost_model"]["kind"] == "roofline"
    assert "no calibration ships for GPU 'h200'" in h200["cost_model"]["why"]
    table = CliRunner().invoke(app, ["simulate", str(SAMPLE), "--cache", "paged", "--limit",
                                     "40", "--out", str(tmp_path / "t")])
    assert table.exit_code == 0, table.output
    assert "cost model: calibrated, shipped GPU fit calibrations/a100-80gb.json" in table.output


def test_the_old_calibration_option_still_means_a_file(tmp_path):
    old = run(tmp_path / "o", "--gpu", "h100-80gb", "--calibration",
              str(SHIPPED / "h100-80gb.json"))
    assert old["cost_model"]["kind"] == "file"
    assert old["cost_model"]["source"].endswith("h100-80gb.json")
