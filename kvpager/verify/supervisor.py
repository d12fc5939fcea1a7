"""Run the plan in a worker process and carry on after the worker dies.

A kernel that reads out of bounds leaves the CUDA context unusable (every later call fails)
or kills the process outright. Either way the rest of the plan still deserves to run, so
the steps run in a child process (`python -m kvpager.verify.supervisor WORKER-JSON`) and
this process, which never touches the GPU, watches it: when the worker exits because the
context was lost, or dies during a step (the step is recorded as an error with the exit
status), a fresh worker resumes at the next step, under the same budget and run id. The
journal is the only state shared between them. SIGTERM / SIGINT are forwarded to the
worker, which records the interrupted step; summary.json is rewritten after every step and
once more at the end, so even a kill -9 of both leaves a summary as of the last step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvpager.verify.journal import Budget, Journal
from kvpager.verify.runner import (
    ERROR,
    EXIT_CONTEXT_LOST,
    PASS,
    SKIPPED,
    Context,
    Step,
    read_run,
    run_steps,
    write_summary,
)

#: Fresh workers started after deaths, at most; each costs a torch import and a load.
MAX_RESTARTS = 4
#: Seconds a worker gets to record an interrupted step after SIGTERM before it is killed.
GRACE_S = 10.0
REPO = Path(__file__).resolve().parents[2]
DEFAULT_PLAN = "kvpager.verify.plan:steps"


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    if rc == EXIT_CONTEXT_LOST:
        return "stopped: the GPU context was lost"
    return f"exit status {rc}"


def load_plan(plan: str = DEFAULT_PLAN, only: list[str] | None = None) -> list[Step]:
    """The steps of "module:function" (the tests give their own plan; the script the
    default), keeping only the names in `only` when given, in the plan's order."""
    import importlib

    module, _, function = plan.partition(":")
    steps = getattr(importlib.import_module(module), function)()
    return [s for s in steps if only is None or s.name in only]


def supervise(out: Path, budget_s: float, dry_run: bool, build_dir: Path,
              say=print, plan: str = DEFAULT_PLAN, only: list[str] | None = None) -> dict:
    """Run the plan's steps (those in `only`, when given) in workers; return the final
    summary (with "exit")."""
    steps = load_plan(plan, only)
    names = [s.name for s in steps]
    journal = Journal(out / "results.jsonl")
    run_id = journal.run_id
    t0 = time.time()
    journal.write("start", dry_run=dry_run, budget_s=budget_s, argv=sys.argv,
                  plan=[{"step": s.name, "what": s.what} for s in steps])
    stop: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stop.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    child: subprocess.Popen | None = None
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    first, restarts, code = 0, 0, 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    try:
        while first < len(names) and not stop:
            spec = {"out": str(out), "run_id": run_id, "first": first, "t0": t0,
                    "budget_s": budget_s, "dry_run": dry_run, "build_dir": str(build_dir),
                    "plan": plan, "only": only}
            before = {e["step"] for e in read_run(journal.path, run_id) if e["event"] == "step"}
            child = subprocess.Popen([sys.executable, "-m", "kvpager.verify.supervisor",
                                      json.dumps(spec)], env=env)
            while True:
                try:
                    rc = child.wait(timeout=GRACE_S if stop else None)
                    break
                except subprocess.TimeoutExpired:
                    child.kill()  # it did not stop after the forwarded signal
            events = read_run(journal.path, run_id)
            done = {e["step"] for e in events if e["event"] == "step"}
            if stop:
                break
            if rc in (0, 1) and all(n in done for n in names):
                break
            began = [e["step"] for e in events if e["event"] == "begin"]
            if began and began[-1] not in done:  # the worker died inside this step
                died_in = began[-1]
                error = f"the worker process died during this step ({_exit_text(rc)})"
            elif not done - before:  # it died before finishing anything: skip a step anyway
                died_in = names[first]
                error = f"the worker process ended before this step ran ({_exit_text(rc)})"
            else:
                died_in, error = None, ""
            if died_in is not None:
                journal.write("step", step=died_in, status=ERROR, error=error)
                done.add(died_in)
            first = max(names.index(n) + 1 for n in done if n in names)
            restarts += 1
            if first >= len(names):
                break
            if restarts > MAX_RESTARTS:
                _close_unfinished(journal, done, names, f"{MAX_RESTARTS} worker restarts "
                                                        "already")
                break
            journal.write("restart", exit=_exit_text(rc), resume_at=names[first])
            say(f"worker {_exit_text(rc)}; a fresh worker resumes at {names[first]}")
        if stop:
            code = 128 + stop[0]
            done = {e["step"] for e in read_run(journal.path, run_id) if e["event"] == "step"}
            _close_unfinished(journal, done, names, f"run interrupted by signal {stop[0]}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        journal.close()
    summary = write_summary(out, journal.path, run_id, names)
    summary["exit"] = code or (0 if summary["ok"] else 1)
    return summary


def _close_unfinished(journal: Journal, done: set[str], names: list[str],
                      reason: str) -> None:
    """Record every step without an outcome as skipped, so the summary accounts for all."""
    for name in names:
        if name not in done:
            journal.write("step", step=name, status=SKIPPED, reason=reason)


def worker_main(spec: dict) -> int:
    """One worker: rebuild the context from the spec and the journal, run the steps."""
    out = Path(spec["out"])
    if spec["dry_run"]:
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel module is imported
        os.environ["KVPAGER_DISABLE_CUDA"] = "1"
    os.environ["KVPAGER_CUDA_CACHE"] = spec["build_dir"]
    journal_path = out / "results.jsonl"
    steps = load_plan(spec["plan"], spec["only"])
    names = [s.name for s in steps]
    build_outcome = next((e["status"] for e in read_run(journal_path, spec["run_id"])
                          if e["event"] == "step" and e["step"] == "build"), None)
    built = build_outcome == PASS
    if not spec["dry_run"] and "build" not in names:
        built = _earlier_build()  # this run builds nothing: use the cache, or no cuda
    if spec["dry_run"] or (build_outcome not in (None, PASS)) or \
            ("build" not in names and not built):
        os.environ["KVPAGER_DISABLE_CUDA"] = "1"  # never an unbudgeted in-process build
    from kvpager.verify.plan import DRY, GPU

    if spec["dry_run"]:
        import torch

        torch.set_num_threads(1)  # tiny tensors: worker threads only contend for cores
    elapsed = time.time() - spec["t0"]
    ctx = Context(out=out, journal=Journal(journal_path, spec["run_id"]),
                  budget=Budget(spec["budget_s"], start=time.monotonic() - elapsed),
                  dry_run=spec["dry_run"], sizes=DRY if spec["dry_run"] else GPU,
                  state={"build_dir": spec["build_dir"], "cuda_built": built},
                  say=lambda line: print(line, flush=True))
    try:
        return run_steps(steps, ctx, spec["first"])
    finally:
        ctx.journal.close()


def _earlier_build() -> bool:
    """Whether the build cache already holds the extension for this GPU."""
    from kvpager.backends.cuda import build

    try:
        return build.prebuilt_library(build.resolve_arch_flags()) is not None
    except build.CudaBuildError:
        return False


__all__ = ["DEFAULT_PLAN", "MAX_RESTARTS", "load_plan", "supervise", "worker_main"]

if __name__ == "__main__":
    sys.exit(worker_main(json.loads(sys.argv[1])))
