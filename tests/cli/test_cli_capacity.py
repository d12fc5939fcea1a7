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
    roof = run(tmp_path / "r")
    cal = run(tmp_path / "c", "--calibration", str(SHIPPED / "a100-80gb.json"))
    assert roof["cost_model"] == {"step_time": "roofline"}
    assert cal["cost_model"]["linear"] == "fitted to profiles"
    # measured kernels are slower than 80% of HBM peak plus 1 ms (docs/cost_model.md)
    assert cal["strategies"]["paged"]["time"]["simulated_s"] >= \
        roof["strategies"]["paged"]["time"]["simulated_s"]


def test_bad_capacity_choices_exit_2(tmp_path):
    for args, message in [
        (["--num-gpu-blocks", "0"], "num_gpu_blocks must be an integer >= 1"),
        (["--kv-cache-memory", "-1"], "kv_cache_memory_gib must be a finite number > 0"),
        (["--num-gpu-blocks", "10", "--kv-cache-memory", "1"], "give one"),
        (["--long-prompts", "drop"], "long_prompts must be one of reject, truncate"),
    ]:
        result = CliRunner().invoke(app, ["simulate", str(SAMPLE), "--limit", "5", "--out",
                                          str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
