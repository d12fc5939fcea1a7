"""`kvpager capacity`, `simulate --no-hybrid` and hybrid-model spec files at the command
line: JSON fields, and exit 2 with one line naming the option or the file and field."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kvpager.cli.app import app

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "azure_conv_sample.csv"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_capacity_json_has_groups_and_concurrency_with_and_without_hybrid():
    r = run("capacity", "--model", "gpt-oss-120b", "--gpu", "h200", "--max-model-len",
            "131072", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert [g["type"] for g in plan["groups"]] == ["full", "sliding_window"]
    assert plan["groups"][1]["tokens_held_per_request"] == 128 - 1 + 8192
    assert plan["kv_cache_bytes"] > 60 * 2**30
    flat = plan["no_hybrid"]
    assert flat["groups"][0]["layers"] == 36
    assert plan["max_concurrency"] > 1.8 * flat["max_concurrency"]
    r = run("capacity", "--model", "gpt-oss-120b", "--gpu", "h200", "--no-hybrid", "--json")
    assert json.loads(r.output)["max_concurrency"] == flat["max_concurrency"]


def test_capacity_table_and_state_groups():
    r = run("capacity", "--model", "qwen3-next-80b-a3b", "--gpu", "h200", "--tp", "2")
    assert r.exit_code == 0, r.output
    assert "state" in r.output and "per seq" in r.output and "max_concurrency" in r.output


def test_a_model_that_does_not_fit_names_the_option():
    r = run("capacity", "--model", "deepseek-v3", "--gpu", "h200")
    assert r.exit_code == 2
    assert "--tp 1" in r.output and "does not fit" in r.output and len(
        r.output.strip().splitlines()) == 1


def test_bad_spec_files_name_the_file_and_field(tmp_path):
    base = {"num_layers": 4, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2,
            "head_size": 16, "intermediate_size": 128, "vocab_size": 100,
            "num_params": 200000, "max_context": 4096}
    cases = {
        "kind.json": ({"layer_types": ["full_attention", "banana", "full_attention",
                                       "full_attention"]}, "layer_types[1]"),
        "count.json": ({"layer_types": ["full_attention"] * 3}, "layer_types"),
        "experts.json": ({"moe": {"num_experts": 4, "experts_per_token": 5,
                                  "expert_intermediate_size": 32}}, "moe.experts_per_token"),
        "window.json": ({"layer_types": ["sliding_attention"] * 4}, "sliding_window"),
        "unknown.json": ({"moe": {"num_experts": 4, "experts_per_token": 2,
                                  "expert_intermediate_size": 32, "colour": 1}}, "moe.colour"),
    }
    for name, (extra, field) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(base | extra))
        r = run("capacity", "--model", str(path), "--gpu", "h100-80gb")
        assert r.exit_code == 2, (name, r.output)
        assert name in r.output and f"field '{field}'" in r.output, r.output


def test_a_good_spec_file_takes_the_same_fields(tmp_path):
    spec = {"num_layers": 4, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2,
            "head_size": 16, "intermediate_size": 128, "vocab_size": 100,
            "num_params": 200000, "max_context": 4096, "sliding_window": 256,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            "moe": {"num_experts": 4, "experts_per_token": 2, "expert_intermediate_size": 32}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    r = run("capacity", "--model", str(path), "--gpu", "h100-80gb", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["groups"][1]["window"] == 256


def test_what_the_hybrid_manager_cannot_do_yet_is_refused_naming_the_option(tmp_path):
    r = run("simulate", str(SAMPLE), "--model", "gemma-2-27b", "--gpu", "h100-80gb",
            "--cache", "paged", "--prefix-caching", "--cpu-prefix-cache", "4", "--limit", "5",
            "--out", str(tmp_path))
    assert r.exit_code == 2
    assert "--cpu-prefix-cache" in r.output and "--no-hybrid" in r.output
    r = run("simulate", str(SAMPLE), "--model", "qwen3-next-80b-a3b", "--gpu", "h200",
            "--tp", "2", "--cache", "paged", "--prefix-caching", "--limit", "5",
            "--out", str(tmp_path))
    assert r.exit_code == 2 and "--prefix-caching" in r.output and "state" in r.output


def test_prefix_caching_across_groups_runs(tmp_path):
    r = run("simulate", str(SAMPLE), "--model", "gpt-oss-20b", "--gpu", "h100-80gb",
            "--cache", "paged", "--prefix-caching", "--max-model-len", "16384",
            "--chunked-prefill", "--limit", "40", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["strategies"]["paged"]["prefix_cache"] is not None


def test_no_hybrid_on_a_model_without_groups_is_a_note(tmp_path):
    r = run("simulate", str(SAMPLE), "--model", "llama-3-8b", "--gpu", "h100-80gb",
            "--cache", "paged", "--no-hybrid", "--limit", "10", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "note: --no-hybrid" in r.output


def test_simulate_shows_kv_by_group(tmp_path):
    r = run("simulate", str(SAMPLE), "--model", "gpt-oss-20b", "--gpu", "h100-80gb",
            "--cache", "paged", "--max-model-len", "16384", "--chunked-prefill", "--limit",
            "30", "--out", str(tmp_path / "run"), "--report", str(tmp_path / "r.html"))
    assert r.exit_code == 0, r.output
    assert "KV by group, mean GiB" in r.output and "sliding_window" in r.output
    assert "KV memory by group" in (tmp_path / "r.html").read_text()
    tmp_path = tmp_path / "run"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["strategies"]["paged"]["kv_by_group"]["groups"] == ["full", "sliding_window"]
    assert metrics["capacity"]["hybrid"] is True


def test_state_groups_and_free_order_at_the_command_line(tmp_path):
    r = run("simulate", str(SAMPLE), "--model", "qwen3-next-80b-a3b", "--gpu", "h200", "--tp",
            "2", "--cache", "paged", "--max-model-len", "16384", "--chunked-prefill",
            "--limit", "20", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    groups = json.loads((tmp_path / "metrics.json").read_text())["strategies"]["paged"][
        "kv_by_group"]
    assert groups["groups"] == ["full", "state"] and max(groups["peak_gib"]) > 0
    r = run("simulate", str(SAMPLE), "--model", "gpt-oss-20b", "--gpu", "h100-80gb",
            "--cache", "paged", "--free-order", "fifo", "--limit", "5", "--out", str(tmp_path))
    assert r.exit_code == 2 and "--free-order" in r.output
    r = run("simulate", str(SAMPLE), "--model", "gpt-oss-20b", "--gpu", "h100-80gb",
            "--cache", "paged", "--prefix-caching", "--free-order", "lru", "--max-model-len",
            "16384", "--chunked-prefill", "--limit", "20", "--out", str(tmp_path / "lru"))
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "lru" / "metrics.json").read_text())["config"]
    assert config["free_order"] == "lru"


def test_prefix_precise_routing_needs_events_the_hybrid_manager_lacks(tmp_path):
    r = run("simulate", str(SAMPLE), "--model", "gpt-oss-20b", "--gpu", "h100-80gb",
            "--cache", "paged", "--replicas", "2", "--router", "prefix-precise",
            "--prefix-caching", "--limit", "10", "--out", str(tmp_path))
    assert r.exit_code == 2 and "--router" in r.output and "--no-hybrid" in r.output
