"""Run steps in priority order under a time budget; keep every outcome, whatever happens.

Each step has an estimate (seconds). A step whose estimate does not fit in what is left of
the budget is not started and is recorded as skipped with the reason. A step that raises is
recorded as "error" with the exception and the run goes on: one broken kernel must not hide
the results of the others. SIGTERM / SIGINT interrupt the current step, which is recorded
as "interrupted"; the summary is still written before the process exits.

Statuses: pass (ran, every check held), fail (ran, a check did not hold), error (raised),
skipped (not run: budget, a missing tool, or nothing to run here), interrupted.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvpager.verify.journal import Budget, Journal

PASS, FAIL, ERROR, SKIPPED, INTERRUPTED = "pass", "fail", "error", "skipped", "interrupted"


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
    #: Seconds the steps after the current one are estimated to need (set by run_plan):
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


def _error_text(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[:2000]


def run_step(step: Step, ctx: Context) -> dict:
    """Run one step (or skip it) and journal its outcome; never raises but Terminated."""
    estimate = float(step.estimate(ctx))
    left = ctx.budget.left()
    if not ctx.budget.fits(estimate):
        return ctx.journal.write("step", step=step.name, status=SKIPPED, estimate_s=estimate,
                                 reason=f"estimated {estimate:.0f}s, {max(left, 0):.0f}s of "
                                        "the budget left")
    ctx.say(f"[{ctx.budget.elapsed():6.1f}s] {step.name}: {step.what} (~{estimate:.0f}s)")
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
    raise Terminated(signum)


def run_plan(steps: list[Step], ctx: Context) -> dict:
    """Run `steps` in order; write summary.json; return the summary."""
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    outcomes: list[dict] = []
    interrupted: Terminated | None = None
    try:
        ctx.journal.write("start", dry_run=ctx.dry_run, budget_s=ctx.budget.total_s,
                          argv=sys.argv, plan=[{"step": s.name, "what": s.what}
                                               for s in steps])
        for index, step in enumerate(steps):
            ctx.reserve_after_s = sum(float(s.estimate(ctx)) for s in steps[index + 1:])
            try:
                outcomes.append(run_step(step, ctx))
            except Terminated as exc:
                interrupted = exc
                for rest in steps[index + 1:]:
                    outcomes.append(ctx.journal.write(
                        "step", step=rest.name, status=SKIPPED,
                        reason=f"run interrupted by {exc}"))
                break
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    summary = write_summary(ctx, steps, interrupted)
    if interrupted is not None:
        summary["exit_signal"] = interrupted.signum
    return summary


def write_summary(ctx: Context, steps: list[Step], interrupted: Terminated | None) -> dict:
    """summary.json from this run's journal lines (the journal is the source of truth)."""
    import json

    mine = [e for e in ctx.journal.events if e["event"] == "step"]
    by_step = {e["step"]: {k: v for k, v in e.items() if k not in ("run", "event", "step",
                                                                     "traceback")}
               for e in mine}
    statuses = {name: by_step.get(name, {}).get("status", "not reached")
                for name in (s.name for s in steps)}
    findings = [f for e in mine for f in e.get("findings", [])]
    summary = {
        "run": ctx.journal.run_id,
        "dry_run": ctx.dry_run,
        "budget_s": ctx.budget.total_s,
        "elapsed_s": round(ctx.budget.elapsed(), 1),
        "ok": all(s in (PASS, SKIPPED) for s in statuses.values()) and interrupted is None,
        "interrupted": None if interrupted is None else str(interrupted),
        "statuses": statuses,
        "failed": [n for n, s in statuses.items() if s in (FAIL, ERROR, INTERRUPTED)],
        "skipped": {n: by_step[n].get("reason") for n, s in statuses.items() if s == SKIPPED},
        "findings": findings,
        "environment": ctx.state.get("environment"),
        "steps": by_step,
        "results": str(ctx.journal.path),
    }
    path = ctx.out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def human_summary(summary: dict) -> list[str]:
    """A few lines for the terminal: one per step, then the speed findings."""
    head = "DRY RUN (CPU sizes; no figure means anything about a GPU)" if summary["dry_run"] \
        else "GPU verification"
    lines = [f"{head}: {'OK' if summary['ok'] else 'PROBLEMS'} in {summary['elapsed_s']}s "
             f"of a {summary['budget_s']:.0f}s budget"]
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


__all__ = ["ERROR", "FAIL", "INTERRUPTED", "PASS", "SKIPPED", "Context", "Step",
           "StepSkipped", "Terminated", "human_summary", "run_plan", "run_step",
           "write_summary"]
