"""benchmarks/gpu_verify.py --dry-run end to end: the GPU plan at CPU sizes (reference and
Triton's interpreter), so the script a GPU lease depends on is known to work before one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = ["environment", "build", "attention_sample", "cache_ops", "merge", "sparse_ops",
         "large_cache", "engine", "sanitizer", "speed"]


@pytest.mark.slow
def test_dry_run_runs_the_whole_plan_and_records_it(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    out = tmp_path / "verify"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVPAGER_", "TRITON_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "benchmarks/gpu_verify.py", "--out", str(out),
                           "--dry-run", "--budget-s", "240"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["ok"] is True
    assert list(summary["statuses"]) == STEPS
    assert summary["statuses"]["build"] == "skipped"
    assert summary["statuses"]["sanitizer"] == "skipped"
    ran = [s for s in STEPS if summary["statuses"][s] == "pass"]
    assert set(ran) >= {"environment", "attention_sample", "cache_ops", "merge", "sparse_ops",
                        "large_cache", "speed"}
    triton = summary["steps"]["attention_sample"]["backends"]["triton"]
    assert triton["every_value_covered"] and triton["cases"] >= triton["covering_prefix"] >= 8
    cases = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    cases = [c for c in cases if c["event"] == "case"]
    assert len(cases) == triton["cases"] and {c["nan_unused"] for c in cases} == {True, False}
    findings = summary["findings"]
    assert findings and all(f["met"] is None for f in findings)  # no target judged on a CPU
    assert any("v2 speedup" in f["name"] and f["value"] > 0 for f in findings)
    record = json.loads((out / "attention.json").read_text())
    assert record["environment"]["python"] and record["results"]["points"]
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["entries"] and calibration["backend"] == "triton"
    assert "DRY RUN" in proc.stdout and "attention_sample" in proc.stdout
