"""Sweeps: one trace at several request rates through several cache strategies, run in
parallel (local processes or a Ray cluster), with the rate each strategy sustains.

    from kvpager.sim import SimConfig
    from kvpager.sweep import SweepSpec, run_sweep, write_sweep
    spec = SweepSpec("trace.csv", SimConfig(), ("paged", "orca-max"), rates=(1, 2, 4))
    doc = run_sweep(spec)                  # one local process per CPU
    write_sweep(doc, "runs/sweep")         # runs/sweep/sweep.json

Importing this package needs only numpy; running points needs SimPy (the `sim` extra) and,
for `ray_address`, Ray (the `ray` extra).
"""

from kvpager.sweep.analysis import metric_value, sustained
from kvpager.sweep.execute import RayUnavailableError, run_point, run_sweep
from kvpager.sweep.results import SWEEP_FILE, read_sweep, write_sweep
from kvpager.sweep.spec import (
    DEFAULT_METRIC,
    DEFAULT_NORMALIZED_BOUND,
    METRICS,
    SweepSpec,
    metric_label,
    parse_values,
)

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_NORMALIZED_BOUND",
    "METRICS",
    "SWEEP_FILE",
    "RayUnavailableError",
    "SweepSpec",
    "metric_label",
    "metric_value",
    "parse_values",
    "read_sweep",
    "run_point",
    "run_sweep",
    "sustained",
    "write_sweep",
]
