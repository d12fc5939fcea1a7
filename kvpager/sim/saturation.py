"""Is a strategy keeping up with the offered load? The verdict a capacity planner reads first.

A finite trace always ends with a drained queue, so "served rate < offered rate" alone
cannot tell a strategy that keeps up (it finishes a little after the last arrival) from one
that falls further behind with every request. What tells them apart is the queue of requests
that arrived and have not started (not yet admitted): a strategy that keeps up empties it
again and again; a saturated one, from some moment on, never does, and it keeps growing.

For request i, `queued[i]` = earlier requests still waiting to start when i arrives (rejected
requests do not wait). The strategy is SATURATED when, over the last stretch of arrivals in
which `queued` never returned to 0,

- the stretch holds at least `MIN_REQUESTS` arrivals and `MIN_SHARE` of the arrival window,
- the queue at the last arrival is at least `MIN_QUEUE` and `GROWTH` times its mean over
  the stretch (it grew, rather than hovering at a constant depth), and
- fewer requests per second were served than offered.

`behind_since_s` is the arrival time at which that stretch began: when it fell behind.
"""

from __future__ import annotations

import numpy as np

MIN_REQUESTS = 10
MIN_SHARE = 0.2
MIN_QUEUE = 5
GROWTH = 1.5


def queued_at_arrivals(arrival: np.ndarray, admitted: np.ndarray,
                       rejected: np.ndarray) -> np.ndarray:
    """int64 [N]: requests that arrived before request i and had not started when it arrived.

    arrival: float64 [N], sorted; admitted: float64 [N], NaN for never admitted;
    rejected: bool [N] (a rejected request never waits).
    """
    started = np.sort(np.where(np.isnan(admitted), np.inf, admitted))
    # admitted at exactly the arrival instant counts as started (the step began then)
    started_by = np.searchsorted(started, arrival, side="right")
    rejected_by = np.cumsum(rejected) - rejected  # rejected among the earlier requests
    earlier = np.arange(arrival.size)
    return np.maximum(earlier - started_by - rejected_by, 0).astype(np.int64)


def assess(arrival: np.ndarray, admitted: np.ndarray, rejected: np.ndarray,
           finished: int, makespan_s: float) -> dict:
    """The load verdict of one strategy's run (see the module docstring).

    Returns {"offered_rate_per_s", "served_rate_per_s", "saturated", "behind_since_s",
    "queued_at_last_arrival"}; rates are None when undefined (all requests at one instant,
    or nothing finished).
    """
    n = int(arrival.size)
    span = float(arrival[-1] - arrival[0]) if n > 1 else 0.0
    offered = n / span if span > 0 else None
    served = finished / makespan_s if makespan_s > 0 else None
    verdict = {"offered_rate_per_s": offered, "served_rate_per_s": served, "saturated": False,
               "behind_since_s": None, "queued_at_last_arrival": 0}
    if n == 0:
        return verdict
    queued = queued_at_arrivals(arrival, admitted, rejected)
    verdict["queued_at_last_arrival"] = int(queued[-1])
    empty = np.flatnonzero(queued == 0)
    start = int(empty[-1]) + 1 if empty.size else 0
    if start >= n or offered is None:
        return verdict
    stretch = queued[start:]
    long_enough = (stretch.size >= MIN_REQUESTS
                   and arrival[-1] - arrival[start] >= MIN_SHARE * span)
    grew = queued[-1] >= max(MIN_QUEUE, GROWTH * float(stretch.mean()))
    slower = served is None or served < offered
    if long_enough and grew and slower:
        verdict["saturated"] = True
        verdict["behind_since_s"] = float(arrival[start] - arrival[0])
    return verdict
