"""The verification runner without kernels: budget skips, errors kept per step, SIGTERM,
argument checks, and the covering order and NaN poisoning the attention sample relies on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kvpager.verify.journal import Budget, Journal
from kvpager.verify.runner import Context, Step, StepSkipped, human_summary, run_steps

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_verify.py"


def _ctx(tmp_path: Path, budget_s: float = 60.0) -> Context:
    return Context(out=tmp_path, journal=Journal(tmp_path / "results.jsonl"),
                   budget=Budget(budget_s), dry_run=True, sizes=None, say=lambda line: None)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _step(name: str, run, estimate: float = 0.0) -> Step:
    return Step(name, name, run, lambda ctx: estimate)


def _boom(ctx):
    raise ValueError("kernel exploded")


def _missing(ctx):
    raise StepSkipped("no such tool here")


def test_an_error_is_recorded_and_the_next_steps_still_run(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    steps = [_step("first", lambda c: {"status": "pass", "value": 3}),
             _step("broken", _boom),
             _step("absent", _missing),
             _step("too_big", lambda c: {"status": "pass"}, estimate=1e6),
             _step("last", lambda c: {"status": "fail", "note": "mismatch"})]
    ctx.journal.write("start", dry_run=True, budget_s=60.0)
    assert run_steps(steps, ctx) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["statuses"] == {"first": "pass", "broken": "error", "absent": "skipped",
                                   "too_big": "skipped", "last": "fail"}
    assert summary["ok"] is False and summary["failed"] == ["broken", "last"]
    assert summary["skipped"]["absent"] == "no such tool here"
    assert "estimated 1000000s" in summary["skipped"]["too_big"]
    assert "ValueError: kernel exploded" in summary["steps"]["broken"]["error"]
    steps_seen = [e for e in _lines(tmp_path / "results.jsonl") if e["event"] == "step"]
    assert [e["step"] for e in steps_seen] == ["first", "broken", "absent", "too_big", "last"]
    assert steps_seen[0]["value"] == 3 and {e["run"] for e in steps_seen} == {summary["run"]}
    text = "\n".join(human_summary(summary))
    assert "PROBLEMS" in text and "error" in text and "kernel exploded" in text


def test_lines_are_on_disk_before_the_journal_closes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "results.jsonl")
    journal.write("case", value=float("nan"), shape=(1, 2))
    assert _lines(tmp_path / "results.jsonl")[0]["value"] == "nan"
    assert _lines(tmp_path / "results.jsonl")[0]["shape"] == [1, 2]
    journal.close()


def test_elastic_time_leaves_the_later_steps_their_reserve(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, budget_s=100.0)
    ctx.reserve_after_s = 70.0
    assert 29.0 < ctx.time_for(50.0) <= 30.0
    assert ctx.time_for(50.0, floor_s=45.0) == 45.0
    ctx.reserve_after_s = 0.0
    assert ctx.time_for(20.0) == 20.0


#: A plan for the supervisor tests: a pass, a worker that dies by SIGSEGV mid-step, an
#: error, and a slow step to interrupt.
FAKE_PLAN = textwrap.dedent("""
    import os, signal, sys, time
    from kvpager.verify.runner import Step

    def crash(ctx):
        ctx.journal.write("case", step="crash", index=0)
        os.kill(os.getpid(), signal.SIGSEGV)

    def boom(ctx):
        raise RuntimeError("boom")

    def slow(ctx):
        print("sleeping", flush=True)
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        return {"status": "pass"}

    def steps():
        marker = os.environ.get("FAKE_DIE_ONCE")
        if marker and sys.argv[0].endswith("supervisor.py") and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(7)  # the first worker dies before running anything
        table = [("first", lambda c: {"status": "pass"}), ("crash", crash), ("boom", boom),
                 ("slow", slow), ("last", lambda c: {"status": "pass", "note": "ran"})]
        return [Step(n, n, run, lambda c: 0.0) for n, run in table]
""")


def _supervise(tmp_path: Path, sleep: float, die_once: bool = False) -> subprocess.Popen:
    (tmp_path / "fake_plan.py").write_text(FAKE_PLAN)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from kvpager.verify.supervisor import supervise
        out = Path({str(tmp_path / "out")!r}); out.mkdir()
        summary = supervise(out, 60.0, True, out / "build", plan="fake_plan:steps")
        sys.exit(summary["exit"])
    """)
    env = {"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin",
           "FAKE_SLEEP": str(sleep)}
    if die_once:
        env["FAKE_DIE_ONCE"] = str(tmp_path / "died")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)


def test_a_worker_that_dies_is_recorded_and_a_fresh_one_goes_on(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, sleep=0)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["statuses"] == {"first": "pass", "crash": "error", "boom": "error",
                                   "slow": "pass", "last": "pass"}
    assert "died during this step (killed by SIGSEGV)" in summary["steps"]["crash"]["error"]
    assert [e["event"] for e in summary["worker_restarts"]] == ["restart"]
    assert "a fresh worker resumes at boom" in output


def test_a_worker_that_dies_before_any_step_still_lets_the_run_advance(
        tmp_path: Path) -> None:
    proc = _supervise(tmp_path, sleep=0, die_once=True)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["statuses"]["first"] == "error"
    assert "ended before this step ran (exit status 7)" in summary["steps"]["first"]["error"]
    assert summary["statuses"]["slow"] == summary["statuses"]["last"] == "pass"


def test_sigterm_mid_step_still_leaves_the_journal_and_the_summary(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, sleep=60)
    for line in proc.stdout:
        if line.startswith("sleeping"):
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    proc.stdout.close()
    events = _lines(tmp_path / "out" / "results.jsonl")
    outcomes = [(e["step"], e["status"]) for e in events if e["event"] == "step"]
    assert outcomes[-2:] == [("slow", "interrupted"), ("last", "skipped")]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ok"] is False and summary["interrupted"] == "slow"
    assert summary["statuses"]["first"] == "pass"


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "OUT", "--budget-s", "soon"], "argument --budget-s: expected seconds"),
    (["--out", "OUT", "--budget-s", "0"], "argument --budget-s: must be between"),
    (["--out", "OUT", "--budget-s", "nan"], "argument --budget-s: must be between"),
    (["--out", "FILE"], "--out: "),
    (["--out", "OUT", "--build-dir", "FILE"], "--build-dir: "),
    (["--budget-s", "100"], "the following arguments are required: --out"),
    (["--out", "OUT", "--steps", "merge,speeed"], "--steps: unknown ['speeed']; choose from"),
])
def test_bad_arguments_exit_2_naming_the_argument(tmp_path: Path, args, message) -> None:
    (tmp_path / "FILE").write_text("not a directory")
    args = [a.replace("OUT", str(tmp_path / "out")).replace("FILE", str(tmp_path / "FILE"))
            for a in args]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, cwd=REPO, env={"PYTHONPATH": str(REPO),
                                                    "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_covering_order_covers_values_first_then_pairs() -> None:
    from kvpager.verify.matrix import case_values, covering_order, full_matrix

    pool = full_matrix()
    everything = set().union(*map(case_values, pool))
    order = covering_order(pool)
    seen: set = set()
    prefix = 0
    while everything - seen:
        seen |= case_values(next(order))
        prefix += 1
    assert prefix <= 12  # every value of every dimension in a dozen cases, not 2,000

    def pairs(case):
        values = sorted(case_values(case), key=repr)
        return {(a, b) for i, a in enumerate(values) for b in values[i + 1:]}

    all_pairs = set().union(*map(pairs, pool))
    seen_pairs: set = set()
    ran = []
    for case in covering_order(pool):
        seen_pairs |= pairs(case)
        ran.append(case)
        if seen_pairs == all_pairs:
            break
    assert seen_pairs == all_pairs and len(ran) < len(pool) // 4
    assert len({c.id for c in ran}) == len(ran)  # no case twice


def test_poisoning_touches_only_slots_no_sequence_reads() -> None:
    import math

    import torch

    from kvpager.verify.matrix import AttentionCase, make_inputs, poison_unused_slots

    for kv in ("auto", "fp8_e5m2"):
        case = AttentionCase((8, 1), 32, 8, "float32", False, kv, None, seed=4)
        clean = make_inputs(case, lengths=[1, 16, 21])
        poisoned = poison_unused_slots(clean)
        read = torch.zeros(clean.key_cache.shape[0], 8, dtype=torch.bool)
        for row, n in enumerate(clean.seq_lens.tolist()):
            for t in range(n):
                read[clean.block_tables[row, t // 8], t % 8] = True
        assert read.sum() == 38
        key_slots = poisoned.key_cache.permute(0, 3, 1, 2, 4)  # [N, bs, ...]
        value_slots = poisoned.value_cache.permute(0, 3, 1, 2)
        for slots, original in ((key_slots, clean.key_cache.permute(0, 3, 1, 2, 4)),
                                (value_slots, clean.value_cache.permute(0, 3, 1, 2))):
            assert torch.equal(slots[read], original[read])
            bad = slots[~read]
            if kv == "auto":
                assert bad.isnan().all()
            else:
                assert bad.eq(0xFF).all() and math.isnan(
                    torch.tensor([0xFF], dtype=torch.uint8).view(torch.float8_e5m2).item())
        untouched = clean.key_cache.isnan() if kv == "auto" else clean.key_cache.eq(0xFF)
        assert not untouched.any()  # the poisoned caches are copies


def test_speed_findings_report_figures_and_judge_only_on_a_gpu() -> None:
    from kvpager.verify.speed import findings

    def point(backend, dtype, batch, ctx, version, us, gb):
        return {"backend": backend, "dtype_name": dtype, "batch": batch, "context": ctx,
                "version": version, "us_per_call": us, "gb_per_s": gb, "matches_sdpa": True}

    points = [point("cuda", "float16", 32, 4096, "v1", 100.0, 800.0),
              point("cuda", "float16", 32, 4096, "v2", 110.0, 700.0),
              point("cuda", "float16", 32, 8192, "v1", 200.0, 950.0),
              point("cuda", "fp8", 32, 8192, "v1", 100.0, 950.0),
              point("cuda", "float16", 8, 32768, "v1", 300.0, 0.0),
              point("cuda", "float16", 8, 32768, "v2", 100.0, 0.0)]
    baselines = [{"kind": k, "dtype_name": "float16", "batch": 32, "context": c,
                  "gb_per_s": 1000.0, "us_per_call": us}
                 for c in (4096, 8192) for k, us in (("copy", 1.0), ("sdpa", 100.0))]
    got = {f["name"]: f for f in findings(points, baselines, True, 32, (4096, 8192, 32768), 8)}
    share = got["cuda bandwidth / copy (b32 ctx4096)"]
    assert share["value"] == 0.8 and share["met"] is False  # the best version: v1
    assert got["cuda bandwidth / copy (b32 ctx8192)"]["met"] is True
    assert got["cuda latency / SDPA (b32 ctx4096)"]["value"] == 1.0
    assert got["cuda latency / SDPA (b32 ctx8192)"]["met"] is False
    assert got["cuda fp8 speedup over fp16 (b32 ctx8192)"]["value"] == 2.0
    assert got["cuda v2 speedup over v1 (b8 ctx32768)"]["value"] == 3.0
    unjudged = findings(points, baselines, False, 32, (4096, 8192, 32768), 8)
    assert {f["met"] for f in unjudged} == {None}
    points[0]["matches_sdpa"] = points[1]["matches_sdpa"] = False  # no speed when wrong
    wrong = {f["name"]: f for f in findings(points, baselines, True, 32, (4096, 8192, 32768),
                                            8)}
    assert wrong["cuda bandwidth / copy (b32 ctx4096)"]["value"] is None


def test_a_timed_out_child_group_is_killed_with_its_children(tmp_path: Path) -> None:
    """A build or sanitizer run past its time must not leave nvcc or ninja running."""
    from kvpager.verify.steps_setup import run_group

    pid_file = tmp_path / "grandchild"
    cmd = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    with (tmp_path / "log").open("w") as log:
        start = time.monotonic()
        assert run_group(cmd, log, {"PATH": "/usr/bin:/bin"}, timeout=1.0) is None
    assert time.monotonic() - start < 10
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    status = Path(f"/proc/{grandchild}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()  # gone, or a zombie
    with (tmp_path / "log").open("w") as log:
        assert run_group(["sh", "-c", "exit 3"], log, {"PATH": "/usr/bin:/bin"}, 10.0) == 3


def test_a_subset_of_steps_runs_alone(tmp_path: Path) -> None:
    """--steps finishes a run that was cut short without repeating what already ran."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--dry-run",
                           "--steps", "merge,environment"], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["statuses"] == {"environment": "pass", "merge": "pass"}  # plan order


def test_the_attention_sample_records_each_case_and_what_failures_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample's bookkeeping with a stand-in check that fails every e5m2 case."""
    import kvpager.verify.steps_attention as steps
    from kvpager.verify.plan import DRY

    monkeypatch.setattr(steps, "check_case", lambda case, *args: (
        "AssertionError: wrong" if case.kv_cache_dtype == "fp8_e5m2" else None))
    ctx = _ctx(tmp_path)
    ctx.sizes = DRY
    result = steps._sample_one_backend(ctx, "triton", 0.0)  # no time: the covering prefix
    assert result["every_value_covered"] and result["cases"] == result["covering_prefix"]
    assert result["failures"] == 3 and "kv_cache_dtype=fp8_e5m2" in \
        result["common_to_all_failures"]
    cases = [e for e in _lines(tmp_path / "results.jsonl") if e["event"] == "case"]
    assert len(cases) == result["cases"]
    assert [c["status"] for c in cases].count("fail") == 3
    assert {c["nan_unused"] for c in cases} == {True, False}


@pytest.mark.parametrize(("rc", "log", "status"), [
    (0, "small case: all kernels ran\n========= ERROR SUMMARY: 0 errors\n", "pass"),
    (99, "========= Invalid __global__ read of size 16 bytes\n"
         "small case: all kernels ran\n========= ERROR SUMMARY: 1 error\n", "fail"),
    (0, "========= ERROR SUMMARY: 0 errors\n", "fail"),  # the case never got to its end
    (None, "========= Invalid __global__ write of size 4 bytes\n", "fail"),
    (None, "========= COMPUTE-SANITIZER\n", "skipped"),  # out of time, nothing found
])
def test_memcheck_logs_are_read_as_pass_fail_or_out_of_time(rc, log, status) -> None:
    from kvpager.verify.sanitizer import memcheck_outcome

    outcome = memcheck_outcome(rc, log, 60.0)
    assert outcome["status"] == status
    if status == "skipped":
        assert "did not finish in 60s" in outcome["reason"]
