"""Run steps in priority order under a time budget; keep every outcome, whatever happens.

Each step has an estimate (seconds). A step whose estimate does not fit in what is left of
the budget is not started and is recorded as skipped with the reason. A step that raises is
recorded as "error" with the exception and the run goes on: one broken kernel must not hide
the results of the others. SIGTERM / SIGINT interrupt the current step, which is recorded
as "interrupted"; the summary is still written before the process exits.

Statuses: pass (ran, every check held), fail (ran, a check did not hold), error (raised,
or the worker process died during it), skipped (not run: budget, a missing tool, or nothing
to run here), interrupted.

This module runs steps inside one worker process; `supervisor` runs the workers.
"""

from __future__ import annotations

import json
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvpager.verify.journal import Budget, Journal

PASS, FAIL, ERROR, SKIPPED, INTERRUPTED = "pass", "fail", "error", "skipped", "interrupted"
#: A worker's exit status when the GPU context is unusable and a fresh process must go on.
EXIT_CONTEXT_LOST = 3


class StepSkipped(Exception):
    """Raised by a step that cannot run here (a missing tool, no GPU); the message says why."""


class Terminated(BaseException):
    """A signal asked the run to stop; BaseException so that no step's `except Exception`
    swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass
class Context:
    """What steps share: where to write, the budget, the sizes, what earlier steps found."""

    out: Path
    journal: Journal
    budget: Budget
    dry_run: bool
    sizes: Any  # plan.Sizes
    state: dict[str, Any] = field(default_factory=dict)
    say: Callable[[str], None] = print
    #: Seconds the steps after the current one are estimated to need (set by run_steps):
    #: elastic steps stop early enough to leave it.
    reserve_after_s: float = 0.0

    def time_for(self, wanted_s: float, floor_s: float = 0.0) -> float:
        """Seconds an elastic step may take: `wanted_s`, less if the later steps' reserve
        needs it, never below `floor_s`, never past the end of the budget."""
        spare = self.budget.left() - self.reserve_after_s
        return max(0.0, min(max(min(wanted_s, spare), floor_s), self.budget.left()))

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


@dataclass(frozen=True)
class Step:
    """One unit of the plan. `run` returns a dict with at least "status" (PASS or FAIL);
    `estimate` gives seconds from the context (sizes differ between GPU and dry run)."""

    name: str
    what: str
    run: Callable[[Context], dict]
    estimate: Callable[[Context], float]


def error_line(exc: BaseException) -> str:
    """The exception's type and its first lines, short enough for a summary (a mismatch's
    assert_close message starts with the counts and the largest difference)."""
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: " + " | ".join(text.splitlines()[:4])[:600]


def _error_text(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[:2000]


def device_problem(ctx: Context) -> str | None:
    """None when the GPU still answers; else the error. After an illegal memory access the
    CUDA context is unusable for the rest of the process: every later call would fail the
    same way, so the supervisor restarts the worker instead (see `supervisor`)."""
    if ctx.dry_run:
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None  # no GPU at all (recorded by the environment step): nothing to lose
        torch.cuda.synchronize()
        if torch.zeros(1, device="cuda").add_(1).item() != 1.0:
            return "the GPU computed 0 + 1 != 1"
    except Exception as exc:  # any failure here means the context is gone
        return _error_text(exc)
    return None


def run_step(step: Step, ctx: Context) -> dict:
    """Run one step (or skip it) and journal its outcome; never raises but Terminated."""
    estimate = float(step.estimate(ctx))
    left = ctx.budget.left()
    if not ctx.budget.fits(estimate):
        return ctx.journal.write("step", step=step.name, status=SKIPPED, estimate_s=estimate,
                                 reason=f"estimated {estimate:.0f}s, {max(left, 0):.0f}s of "
                                        "the budget left")
    ctx.say(f"[{ctx.budget.elapsed():6.1f}s] {step.name}: {step.what} (~{estimate:.0f}s)")
    ctx.journal.write("begin", step=step.name, estimate_s=estimate)
    start = time.monotonic()
    fields: dict[str, Any]
    try:
        result = step.run(ctx)
        fields = {"status": result.pop("status", PASS), **result}
    except StepSkipped as exc:
        fields = {"status": SKIPPED, "reason": str(exc)}
    except Terminated as exc:
        ctx.journal.write("step", step=step.name, status=INTERRUPTED, estimate_s=estimate,
                          seconds=round(time.monotonic() - start, 2), reason=str(exc))
        raise
    except Exception as exc:  # a step that raises is a result, not the end of the run
        fields = {"status": ERROR, "error": _error_text(exc),
                  "traceback": traceback.format_exc()[-4000:]}
    return ctx.journal.write("step", step=step.name, estimate_s=estimate,
                             seconds=round(time.monotonic() - start, 2), **fields)


def _on_signal(signum: int, _frame: object) -> None:
    # A process-group signal reaches the worker twice (directly and forwarded by the
    # supervisor): the second must not interrupt the recording of the first.
    for other in (signal.SIGTERM, signal.SIGINT):
        signal.signal(other, signal.SIG_IGN)
    raise Terminated(signum)


def run_steps(steps: list[Step], ctx: Context, first: int = 0) -> int:
    """Run steps[first:] in order in this process; update summary.json after each.

    Returns 0 when the plan ran to its end, EXIT_CONTEXT_LOST when the GPU stopped
    answering after a step (the supervisor starts a fresh worker for the rest), or
    128 + N after signal N (the current step recorded as interrupted, the rest skipped).
    """
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    names = [s.name for s in steps]
    try:
        for index in range(first, len(steps)):
            step = steps[index]
            ctx.reserve_after_s = sum(float(s.estimate(ctx)) for s in steps[index + 1:])
            try:
                run_step(step, ctx)
            except Terminated as exc:
                for rest in steps[index + 1:]:
                    ctx.journal.write("step", step=rest.name, status=SKIPPED,
                                      reason=f"run interrupted by {exc}")
                write_summary(ctx.out, ctx.journal.path, ctx.journal.run_id, names)
                return 128 + exc.signum
            write_summary(ctx.out, ctx.journal.path, ctx.journal.run_id, names)
            problem = device_problem(ctx)
            if problem is not None:
                ctx.journal.write("context_lost", after=step.name, error=problem)
                return EXIT_CONTEXT_LOST
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def read_run(path: Path, run_id: str) -> list[dict]:
    """This run's events from the journal file (lines of other runs, or a torn last line
    from a killed process, are left out)."""
    events: list[dict] = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("run") == run_id:
            events.append(event)
    return events


def write_summary(out: Path, journal: Path, run_id: str, names: list[str]) -> dict:
    """summary.json from this run's journal lines (the journal is the source of truth, so
    the supervisor and a worker write the same summary)."""
    events = read_run(journal, run_id)
    first = next((e for e in events if e["event"] == "start"), {})
    steps = [e for e in events if e["event"] == "step"]
    by_step = {e["step"]: {k: v for k, v in e.items() if k not in ("run", "event", "step",
                                                                     "traceback")}
               for e in steps}
    statuses = {name: by_step.get(name, {}).get("status", "not reached") for name in names}
    env_step = by_step.get("environment", {})
    interrupted = [n for n, s in statuses.items() if s == INTERRUPTED]
    summary = {
        "run": run_id,
        "dry_run": first.get("dry_run"),
        "budget_s": first.get("budget_s"),
        "elapsed_s": round((events[-1]["t"] - first["t"]) if first and events else 0.0, 1),
        "ok": all(s in (PASS, SKIPPED) for s in statuses.values()),
        "interrupted": interrupted[0] if interrupted else None,
        "statuses": statuses,
        "failed": [n for n, s in statuses.items() if s in (FAIL, ERROR, INTERRUPTED)],
        "skipped": {n: by_step[n].get("reason") for n, s in statuses.items() if s == SKIPPED},
        "findings": [f for e in steps for f in e.get("findings", [])],
        "worker_restarts": [e for e in events if e["event"] in ("context_lost", "restart")],
        "environment": env_step.get("environment"),
        "steps": by_step,
        "results": str(journal),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def human_summary(summary: dict) -> list[str]:
    """A few lines for the terminal: one per step, then the speed findings."""
    head = "DRY RUN (CPU sizes; no figure means anything about a GPU)" if summary["dry_run"] \
        else "GPU verification"
    lines = [f"{head}: {'OK' if summary['ok'] else 'PROBLEMS'} in {summary['elapsed_s']}s "
             f"of a {summary['budget_s'] or 0:.0f}s budget"]
    for name, status in summary["statuses"].items():
        info = summary["steps"].get(name, {})
        note = info.get("note") or info.get("reason") or info.get("error") or ""
        note = note.splitlines()[0][:100] if note else ""
        seconds = info.get("seconds")
        took = f"{seconds:6.1f}s" if isinstance(seconds, (int, float)) else "       "
        lines.append(f"  {status:<11} {took}  {name}" + (f": {note}" if note else ""))
    for f in summary["findings"]:
        verdict = {True: "meets", False: "MISSES", None: "not judged"}[f.get("met")]
        lines.append(f"  speed: {f['name']} = {f.get('value')} (target {f.get('target')}, "
                     f"{verdict})")
    lines.append(f"  details: {summary['results']} and summary.json beside it")
    return lines


__all__ = ["ERROR", "EXIT_CONTEXT_LOST", "FAIL", "INTERRUPTED", "PASS", "SKIPPED", "Context",
           "Step", "StepSkipped", "Terminated", "device_problem", "error_line",
           "human_summary", "read_run", "run_step", "run_steps", "write_summary"]
