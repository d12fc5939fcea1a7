"""Thinning keeps what each figure is read for: time averages, peaks, exact quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from kvpager.report.downsample import (
    bin_events,
    bucket_max,
    bucket_mean,
    cdf_points,
    sample_weights,
)


def _integral(t: np.ndarray, v: np.ndarray, end: float) -> np.ndarray:
    """Integral of a step series (each row holds until the next, the last until `end`)."""
    edges = np.append(t, end)
    return (v * np.diff(edges)[:, None]).sum(axis=0)


def test_short_series_are_returned_unchanged():
    t = np.array([0.0, 1.0, 2.5])
    v = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    t2, v2 = bucket_mean(t, v, 10)
    assert np.array_equal(t2, t) and np.array_equal(v2, v)
    t3, v3 = bucket_max(t, v, 3)
    assert np.array_equal(t3, t) and np.array_equal(v3, v)


def test_bucket_mean_by_hand():
    # four samples, two buckets; gaps 1, 3, 1 and the last holds 1 (as long as the one before)
    t = np.array([0.0, 1.0, 4.0, 5.0])
    v = np.array([[2.0], [4.0], [10.0], [0.0]])
    t2, v2 = bucket_mean(t, v, 2)
    assert t2.tolist() == [0.0, 4.0]
    assert v2[:, 0].tolist() == pytest.approx([(2 * 1 + 4 * 3) / 4, (10 * 1 + 0 * 1) / 2])


def test_bucket_mean_keeps_shares_summing_to_one_and_the_time_average():
    rng = np.random.default_rng(3)
    n = 5003
    t = np.cumsum(rng.uniform(0.5, 1.5, n))
    v = rng.dirichlet(np.ones(5), size=n)
    w = sample_weights(t)
    end = t[-1] + w[-1]
    t2, v2 = bucket_mean(t, v, 400)
    assert t2.size <= 400 and t2[0] == t[0]
    assert np.allclose(v2.sum(axis=1), 1.0)
    # the thinned step series has the same integral as the dense one over the same span
    assert np.allclose(_integral(t2, v2, end), _integral(t, v, end), rtol=1e-9)


def test_bucket_max_keeps_every_peak():
    t = np.arange(10.0)
    v = np.array([0, 5, 1, 0, 0, 9, 0, 2, 3, 0], dtype=float)[:, None]
    t2, v2 = bucket_max(t, v, 5)
    assert t2.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert v2[:, 0].tolist() == [5.0, 1.0, 9.0, 2.0, 3.0]


def test_cdf_small_by_hand():
    x, f = cdf_points(np.array([3.0, 1.0, np.nan, 2.0]), 10)
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert f.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_cdf_thinned_points_are_exact_order_statistics():
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=10_001)
    x, f = cdf_points(values, 101)
    assert x.size == 101
    assert x[0] == values.min() and x[-1] == values.max() and f[-1] == 1.0
    dense = np.array([(values <= xi).mean() for xi in x])  # continuous: no ties
    assert np.allclose(f, dense)


def test_cdf_of_nothing_is_empty():
    x, f = cdf_points(np.array([np.nan]), 10)
    assert x.size == 0 and f.size == 0


def test_bin_events_keeps_totals_per_kind():
    rng = np.random.default_rng(1)
    n = 3000
    t = np.sort(rng.uniform(0, 100, n))
    kind = rng.choice(["swap-out", "swap-in", "preempt-recompute"], n)
    count = rng.integers(1, 5, n).astype(float)
    t2, k2, c2, merged = bin_events(t, kind, count, 50)
    for k in ("swap-out", "swap-in", "preempt-recompute"):
        assert c2[k2 == k].sum() == count[kind == k].sum()
        assert merged[k2 == k].sum() == (kind == k).sum()
        assert (k2 == k).sum() <= 50
    assert t2.min() == t.min()


@pytest.mark.parametrize("bad", [0, 1, 2.5, True, "10"])
def test_bad_max_points_names_the_argument(bad):
    with pytest.raises(ValueError, match="max_points"):
        bucket_mean(np.arange(3.0), np.ones((3, 1)), bad)
    with pytest.raises(ValueError, match="max_points"):
        cdf_points(np.arange(3.0), bad)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"shape \[T, K\]"):
        bucket_mean(np.arange(3.0), np.ones(3), 10)
