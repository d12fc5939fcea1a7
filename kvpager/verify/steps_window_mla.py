"""Correctness of kvpager's attention extensions on each kernel backend: the sliding window and
attention sinks of paged attention (`matrix.window_sink_matrix`, on Triton and CUDA) and the
paged MLA decode (`mla_matrix.mla_matrix`, on Triton; CUDA has no MLA kernel).

Every window case runs the backend on a cache whose blocks wholly before each window hold
NaN behind -1 table entries (and NaN in the slots before the window's first token), against
the reference on the clean cache: a kernel that reads outside the window makes NaN. MLA
cases put NaN in every slot no sequence wrote, and before each window the same way. Each
case is journaled as it finishes; the step stops taking new cases when its time is spent.
"""

from __future__ import annotations

import time
from typing import Any

from kvpager.verify.runner import FAIL, PASS, Context, StepSkipped, device_problem, error_line
from kvpager.verify.steps_setup import kernel_backends


def _cases(ctx: Context) -> list[tuple[str, str, Any]]:
    """(kind, backend, case) in run order: every window case on each backend, then MLA on
    Triton. The dry run keeps the cheapest few of each."""
    from kvpager.verify.matrix import case_cost, window_sink_matrix
    from kvpager.verify.mla_matrix import mla_matrix

    backends, excluded = kernel_backends(ctx)
    if not backends:
        raise StepSkipped(f"no kernel backend runs here: {excluded}")
    window = window_sink_matrix()
    mla = mla_matrix()
    if ctx.dry_run:
        window = sorted(window, key=case_cost)[: ctx.sizes.window_cases]
        mla = sorted(mla, key=lambda c: c.latent_dim * c.num_heads)[: ctx.sizes.mla_cases]
    groups = [[("window_sinks", backend, case) for case in window] for backend in backends]
    if "triton" in backends:
        groups.append([("mla", "triton", case) for case in mla])
    # The first case of every (kind, backend) first: they always run (see the step).
    return [g[0] for g in groups if g] + [item for g in groups for item in g[1:]]


def _check(kind: str, backend: str, case: Any, ctx: Context) -> str | None:
    from kvpager.verify.matrix import check_window_sinks_against_reference
    from kvpager.verify.mla_matrix import check_mla_against_reference

    try:
        if kind == "mla":
            check_mla_against_reference(case, backend, ctx.device,
                                        lengths=ctx.sizes.mla_lengths)
        else:
            check_window_sinks_against_reference(case, backend, ctx.device,
                                                 long_len=ctx.sizes.long_len)
    except Exception as exc:  # a mismatch or a kernel error is this case's finding
        return error_line(exc)
    return None


def window_sinks_mla_step(ctx: Context) -> dict:
    """Every case in `_cases` order until twice the step's estimate is spent (less when the
    later steps need the time); the first case of each (kind, backend) runs regardless,
    unless the whole budget is gone. Fails when a case fails or a (kind, backend) ran no
    case."""
    plan = _cases(ctx)
    groups = {(kind, backend) for kind, backend, _ in plan}
    deadline = time.monotonic() + ctx.time_for(2 * ctx.sizes.estimates["window_sinks_mla"])
    hard_stop = ctx.budget.start + ctx.budget.total_s
    counts: dict[str, dict[str, int]] = {}
    failures: list[dict] = []
    lost = None
    for index, (kind, backend, case) in enumerate(plan):
        now = time.monotonic()
        if now >= hard_stop or (index >= len(groups) and now >= deadline):
            break
        start = time.monotonic()
        error = _check(kind, backend, case, ctx)
        tally = counts.setdefault(f"{kind}/{backend}", {"cases": 0, "failures": 0})
        tally["cases"] += 1
        if error is not None:
            tally["failures"] += 1
            failures.append({"kind": kind, "backend": backend, "case": case.id,
                             "error": error})
        ctx.journal.write("case", step="window_sinks_mla", kind=kind, backend=backend,
                          index=index, case=case.id, seconds=round(time.monotonic() - start, 2),
                          status=PASS if error is None else FAIL, error=error)
        if error is not None and (lost := device_problem(ctx)) is not None:
            break
    ran = sum(t["cases"] for t in counts.values())
    notes = [f"{k} {t['cases']} cases, {t['failures']} failing" for k, t in counts.items()]
    if ran < len(plan):
        notes.append(f"{len(plan) - ran} of {len(plan)} cases not run (time)")
    missing = sorted(f"{k}/{b}" for k, b in groups if f"{k}/{b}" not in counts)
    if missing:
        notes.append(f"NOT RUN AT ALL: {', '.join(missing)}")
    return {"status": FAIL if failures or lost or missing else PASS, "counts": counts,
            "planned": len(plan), "first_failures": failures[:25], "context_lost": lost,
            "note": "; ".join(notes)}


__all__ = ["window_sinks_mla_step"]
