"""Generated arrival processes, for traces that have lengths but no timestamps.

Both processes are renewal processes (independent inter-arrival gaps) seeded through numpy's
PCG64, so the same (rate, cv, seed) gives the same trace on every machine. The first request
arrives at t = 0 and request k at the sum of the first k gaps.

- `PoissonArrivals(rate)`: exponential gaps with mean 1 / rate (coefficient of variation 1),
  the textbook model of many independent users.
- `GammaArrivals(rate, cv)`: Gamma gaps with mean 1 / rate and coefficient of variation cv
  (shape k = 1 / cv^2, scale = 1 / (rate k)). cv > 1 gives bursty traffic like real services
  (the Azure traces measure about 1.1), cv < 1 smoother than Poisson, cv = 1 is Poisson.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


def _check_seed(seed: int) -> None:
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")


class ArrivalProcess(Protocol):
    """Anything that can draw `count` arrival times (float64 [count] seconds, from 0,
    non-decreasing): the two classes below, or a user's own."""

    def times(self, count: int) -> np.ndarray: ...


def _check_count(count: int) -> None:
    if type(count) is not int or count < 0:
        raise ValueError(f"count: expected an integer >= 0, got {count!r}")


def _cumulative(gaps: np.ndarray, count: int) -> np.ndarray:
    out = np.zeros(count, dtype=np.float64)
    np.cumsum(gaps, out=out[1:])
    return out


@dataclass(frozen=True)
class PoissonArrivals:
    """A Poisson process at `rate` requests per second (exponential gaps, CV 1)."""

    rate: float
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive("rate", self.rate)
        _check_seed(self.seed)

    def times(self, count: int) -> np.ndarray:
        _check_count(count)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        return _cumulative(rng.exponential(1.0 / self.rate, size=max(count - 1, 0)), count)


@dataclass(frozen=True)
class GammaArrivals:
    """Gamma-distributed gaps: `rate` requests per second on average, gap CV `cv`."""

    rate: float
    cv: float
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive("rate", self.rate)
        _check_positive("cv", self.cv)
        _check_seed(self.seed)

    def times(self, count: int) -> np.ndarray:
        _check_count(count)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        shape = 1.0 / (self.cv * self.cv)
        gaps = rng.gamma(shape, 1.0 / (self.rate * shape), size=max(count - 1, 0))
        return _cumulative(gaps, count)
