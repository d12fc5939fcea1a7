"""A cluster run's per-replica files in the run directory, for reports.

`replicas_<strategy>.csv`: each replica's memory and queue samples (the columns of
`memory_<strategy>.csv`, which holds replica 0's, with a leading `replica`);
`load_<strategy>.csv`: the requests in flight on every replica, sampled at each arrival (what
the load-imbalance figures are computed from). Written only when there are several replicas.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kvpager.core.memory.usage import FIELDS as MEMORY_FIELDS
from kvpager.sim.metrics import MemorySeries

REPLICA_SERIES_COLUMNS = ("replica", "time_s", *MEMORY_FIELDS, "running_seqs", "waiting",
                          "swapped", "prefix_hit_rate")


def write_replica_series(path: Path, memories: Sequence[MemorySeries]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REPLICA_SERIES_COLUMNS)
        for index, m in enumerate(memories):
            frac = m.fractions()
            for j, t in enumerate(m.time):
                w.writerow([index, f"{t:.6f}", *(f"{x:.6f}" for x in frac[j]), m.running[j],
                            m.waiting[j], m.swapped[j], f"{m.prefix_hit_rate[j]:.6f}"])


def write_load(path: Path, times: Sequence[float], in_flight: np.ndarray) -> None:
    """`in_flight`: int [samples, replicas], sampled at `times` (seconds)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", *(f"in_flight_{r}" for r in range(in_flight.shape[1]))])
        for t, row in zip(times, in_flight, strict=True):
            w.writerow([f"{t:.6f}", *(int(x) for x in row)])
