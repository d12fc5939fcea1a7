"""`kvpager plan`: the fewest replicas per router that meet an SLO, with its evidence; an
SLO no count meets is an answer (exit 0); bad input exits 2 naming the option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app
from kvpager.plan.probe import probe
from kvpager.sim import SimConfig
from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.traces import load_trace

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mooncake_conv_sample.jsonl"
DEPLOY = ["--model", "llama-3.1-8b", "--gpu", "h100-80gb", "--num-gpu-blocks", "3000",
          "--cost-model", "roofline", "--limit", "60"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_the_answer_is_the_fewest_met_count_with_its_evidence(tmp_path):
    out = tmp_path / "plan.json"
    result = invoke("plan", SAMPLE, *DEPLOY, "--slo-ttft", "8", "--slo-tpot", "0.2",
                    "--routers", "round-robin,prefix-precise",
                    "--max-replicas", "4", "--workers", "1",
                    "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [a["router"] for a in doc["answers"]] == ["round-robin", "prefix-precise"]
    config = SimConfig(model="llama-3.1-8b", gpu="h100-80gb", num_gpu_blocks=3000,
                       cost_model="roofline", prefix_caching=True)
    trace = load_trace(SAMPLE, limit=60)
    assert all(a["met"] and a["replicas"] > 1 for a in doc["answers"])  # both paths below
    for answer in doc["answers"]:
        # every count, probed one by one, against the bisection's answer
        att = {n: probe(trace, config, ClusterConfig(
            replicas=n, router=answer["router"], slo_ttft_s=8, slo_tpot_s=0.2))["attainment"]
            for n in range(1, 5)}
        met = [n for n in att if att[n] >= 0.9]
        assert att[4] >= att[1]  # more replicas help this trace
        for p in answer["probes"]:
            assert p["attainment"] == att[p["replicas"]]  # probes are deterministic
        if not met:
            assert not answer["met"] and "not met up to 4" in result.output
            continue
        assert answer["met"] and answer["replicas"] == min(met)
        assert answer["attainment"] == att[min(met)] >= 0.9
        if min(met) > 1:
            assert answer["previous"]["attainment"] == att[min(met) - 1] < 0.9
        assert f"{min(met)} replica" in result.output


def test_an_slo_no_count_meets_is_an_answer(tmp_path):
    out = tmp_path / "p.json"
    result = invoke("plan", SAMPLE, *DEPLOY, "--slo-ttft", "0.001", "--routers",
                    "least-requests", "--max-replicas", "3", "--workers", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "not met up to 3" in result.output and "best" in result.output
    (answer,) = json.loads(out.read_text())["answers"]
    assert answer["met"] is False and answer["replicas"] is None
    assert [p["replicas"] for p in answer["probes"]] == [3]  # nothing smaller is tried
    assert answer["best"]["attainment"] == answer["probes"][0]["attainment"] < 0.9


def test_json_prints_the_plan_document(tmp_path):
    result = invoke("plan", SAMPLE, *DEPLOY, "--slo-tpot", "1", "--routers", "random",
                    "--max-replicas", "2", "--workers", "1", "--json",
                    "--out", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["kind"] == "kvpager-plan" and doc["spec"]["slo_tpot_s"] == 1
    assert doc["answers"][0]["replicas"] == 1  # a 1 s TPOT bound: one replica meets it


@pytest.mark.parametrize(("args", "needle"), [
    (["--slo-ttft", "-1"], "--slo-ttft"),
    (["--slo-tpot", "-0.5"], "--slo-tpot"),
    ([], "--slo-ttft / --slo-tpot"),
    (["--slo-ttft", "1", "--attainment", "0"], "--attainment"),
    (["--slo-ttft", "1", "--attainment", "1.5"], "--attainment"),
    (["--slo-ttft", "1", "--routers", "round-robin,bogus"], "unknown router 'bogus'"),
    (["--slo-ttft", "1", "--max-replicas", "0"], "--max-replicas"),
    (["--slo-ttft", "1", "--rate-scale", "0"], "--rate-scale"),
    (["--slo-ttft", "1", "--router-weights", "prefix=1"], "--router-weights"),
    (["--slo-ttft", "1", "--router-signal-delay", "-1"], "--router-signal-delay"),
    (["--slo-ttft", "1", "--workers", "0"], "--workers"),
    (["--slo-ttft", "1", "--out", "x.txt"], "--out"),
])
def test_bad_input_exits_2_naming_the_option(tmp_path, args, needle):
    result = invoke("plan", SAMPLE, "--limit", "5", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
