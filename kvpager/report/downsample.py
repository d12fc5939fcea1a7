"""Thin long series before they are embedded in a report.

An hour of trace sampled every simulated second is 3,600 rows per strategy; a report holds
several strategies and figures, and every point travels inside the HTML file. Past
`max_points` the series are reduced in ways that keep what each figure is read for:

- memory shares: time-weighted means per bucket, so every bucket's shares still sum to 1
  and the time average of each share (the waste bars) is unchanged;
- queue lengths: the peak per bucket, because a planner looks for the spikes;
- CDFs: exact quantiles at evenly spaced ranks, always including the minimum and maximum.
"""

from __future__ import annotations

import numpy as np


def _check_max(max_points: int) -> None:
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2, got {max_points!r}")


def _buckets(n: int, max_points: int) -> np.ndarray:
    """int64 [P + 1] bucket boundaries over n samples (P <= max_points, none empty)."""
    edges = np.unique(np.linspace(0, n, max_points + 1).round().astype(np.int64))
    return edges


def sample_weights(time_s: np.ndarray) -> np.ndarray:
    """float64 [T]: how long each sample holds (until the next; the last one holds as long
    as the one before it, or 1 s when there is only one sample)."""
    time_s = np.asarray(time_s, dtype=np.float64)
    if time_s.size == 0:
        return time_s.copy()
    if time_s.size == 1:
        return np.ones(1)
    gaps = np.diff(time_s)
    return np.maximum(np.append(gaps, gaps[-1]), 0.0)


def bucket_mean(time_s: np.ndarray, values: np.ndarray, max_points: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted bucket means of a step series.

    time_s: float64 [T], non-decreasing; values: float64 [T, K] (each row holds from its
    time until the next). Returns (float64 [P], float64 [P, K]), P <= max_points, each
    bucket stamped with its first sample's time; unchanged when T <= max_points.
    """
    _check_max(max_points)
    time_s = np.asarray(time_s, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != time_s.shape[0]:
        raise ValueError(f"values must have shape [T, K] with T = {time_s.shape[0]}, got "
                         f"{values.shape}")
    n = time_s.shape[0]
    if n <= max_points:
        return time_s.copy(), values.copy()
    edges = _buckets(n, max_points)
    w = sample_weights(time_s)
    sums = np.add.reduceat(values * w[:, None], edges[:-1], axis=0)
    wsum = np.add.reduceat(w, edges[:-1])
    plain = np.add.reduceat(values, edges[:-1], axis=0) / np.diff(edges)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(wsum[:, None] > 0, sums / wsum[:, None], plain)
    return time_s[edges[:-1]], mean


def bucket_max(time_s: np.ndarray, values: np.ndarray, max_points: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Bucket peaks: (float64 [P], float64 [P, K]) from time_s [T] and values [T, K]."""
    _check_max(max_points)
    time_s = np.asarray(time_s, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != time_s.shape[0]:
        raise ValueError(f"values must have shape [T, K] with T = {time_s.shape[0]}, got "
                         f"{values.shape}")
    n = time_s.shape[0]
    if n <= max_points:
        return time_s.copy(), values.copy()
    edges = _buckets(n, max_points)
    return time_s[edges[:-1]], np.maximum.reduceat(values, edges[:-1], axis=0)


def cdf_points(values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF: (x float64 [P], F(x) float64 [P]) with F = rank / n.

    NaNs are dropped. With more than `max_points` values, the points are exact order
    statistics at evenly spaced ranks, first and last included.
    """
    _check_max(max_points)
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return x, x.copy()
    if n <= max_points:
        ranks = np.arange(n)
    else:
        ranks = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    return x[ranks], (ranks + 1) / n


def bin_events(time_s: np.ndarray, kind: np.ndarray, count: np.ndarray, max_points: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge events of one kind that fall in the same time bin, at most `max_points` bins
    over the events' span.

    Returns (time float64 [E'], kind str [E'], count float64 [E'], events int64 [E']),
    where `events` is how many raw events each merged one stands for and time is the
    first merged event's time. Counts are summed, so totals are kept.
    """
    _check_max(max_points)
    time_s = np.asarray(time_s, dtype=np.float64)
    kind = np.asarray(kind).astype(str)
    count = np.asarray(count, dtype=np.float64)
    if time_s.size <= max_points:
        return time_s.copy(), kind.copy(), count.copy(), np.ones(time_s.size, dtype=np.int64)
    lo, hi = float(time_s.min()), float(time_s.max())
    width = (hi - lo) / max_points or 1.0
    bins = np.minimum(((time_s - lo) / width).astype(np.int64), max_points - 1)
    kinds, kind_idx = np.unique(kind, return_inverse=True)
    key = kind_idx.astype(np.int64) * max_points + bins
    order = np.argsort(key, kind="stable")
    uniq, start = np.unique(key[order], return_index=True)
    return (np.minimum.reduceat(time_s[order], start), kinds[uniq // max_points],
            np.add.reduceat(count[order], start),
            np.diff(np.append(start, order.size)).astype(np.int64))
