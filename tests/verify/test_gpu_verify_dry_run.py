"""benchmarks/gpu_verify.py --dry-run end to end: the GPU plan at CPU sizes (reference and
Triton's interpreter), so the script a GPU lease depends on is known to work before one.

The run hides the packages a bare GPU machine lacks (pytest, transformers, the simulator's
and report's dependencies) behind a sitecustomize, so an import of one of them anywhere on
the script's path fails here first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Installed here, absent on the device machine (which has torch, triton, ninja and nvcc).
NOT_ON_THE_DEVICE = ("pytest", "hypothesis", "simpy", "plotly", "typer", "rich", "pydantic",
                     "ray", "transformers")
STEPS = ["environment", "build", "attention_sample", "window_sinks_mla", "cache_ops", "merge",
         "sparse_ops", "large_cache", "engine", "sanitizer", "speed"]


@pytest.mark.slow
def test_dry_run_runs_the_whole_plan_and_records_it(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    out = tmp_path / "verify"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVPAGER_", "TRITON_"))}
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in NOT_ON_THE_DEVICE))
    env["PYTHONPATH"] = f"{hide}{os.pathsep}{REPO}"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_verify.py", "--out", str(out),
                           "--dry-run", "--budget-s", "200"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["ok"] is True
    assert list(summary["statuses"]) == STEPS
    assert summary["statuses"]["build"] == "skipped"
    assert summary["statuses"]["sanitizer"] == "skipped"
    assert "transformers is not installed" in summary["skipped"]["engine"]
    ran = [s for s in STEPS if summary["statuses"][s] == "pass"]
    assert set(ran) >= {"environment", "attention_sample", "window_sinks_mla", "cache_ops",
                        "merge", "sparse_ops", "large_cache", "speed"}
    triton = summary["steps"]["attention_sample"]["backends"]["triton"]
    assert triton["every_value_covered"] and triton["cases"] >= triton["covering_prefix"] >= 8
    cases = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    window = [c for c in cases if c["event"] == "case" and c["step"] == "window_sinks_mla"]
    assert {(c["kind"], c["backend"]) for c in window} == {("window_sinks", "triton"),
                                                          ("mla", "triton")}
    cases = [c for c in cases if c["event"] == "case" and c["step"] == "attention_sample"]
    assert len(cases) == triton["cases"] and {c["nan_unused"] for c in cases} == {True, False}
    findings = summary["findings"]
    assert findings and all(f["met"] is None for f in findings)  # no target judged on a CPU
    assert any("v2 speedup" in f["name"] and f["value"] > 0 for f in findings)
    record = json.loads((out / "attention.json").read_text())
    assert record["environment"]["python"] and record["results"]["points"]
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["entries"] and calibration["backend"] == "triton"
    assert "DRY RUN" in proc.stdout and "attention_sample" in proc.stdout


def test_engine_step_on_the_cpu_matches_transformers(tmp_path: Path) -> None:
    """The engine step itself (skipped in the device-like run above)."""
    pytest.importorskip("transformers")
    from kvpager.verify.journal import Budget, Journal
    from kvpager.verify.plan import DRY
    from kvpager.verify.runner import Context
    from kvpager.verify.steps_engine import engine_step

    ctx = Context(out=tmp_path, journal=Journal(tmp_path / "r.jsonl"), budget=Budget(60),
                  dry_run=True, sizes=DRY, say=lambda line: None)
    result = engine_step(ctx)
    assert result["status"] == "pass", result
    for key in ("reference/float32", "gpt_oss/reference/float32", "gemma3/reference/float32"):
        reference = result["results"][key]
        assert reference["ok"] and reference["tokens_equal_to_generate"] == \
            reference["tokens"] > 0, key
