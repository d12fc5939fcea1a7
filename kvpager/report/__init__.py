"""Plotly figures and the self-contained HTML reports of simulation runs and sweeps.

    from kvpager.report import write_report, write_sweep_report
    write_report("runs/azure", "report.html")          # a `kvpager simulate` run directory
    write_sweep_report("runs/sweep", "sweep.html")     # a `kvpager sweep` directory

Importing this package needs only numpy; drawing needs Plotly (the `report` extra).
"""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir: str | Path, out: str | Path, max_points: int = 1000) -> Path:
    """`kvpager.report.run_report.write_report` (imported on first use)."""
    from kvpager.report.run_report import write_report as _write

    return _write(run_dir, out, max_points)


def write_sweep_report(sweep: str | Path | dict, out: str | Path) -> Path:
    """`kvpager.report.sweep_report.write_sweep_report` (imported on first use): `sweep` is
    a sweep document, a `sweep.json` file or the directory holding it."""
    from kvpager.report.sweep_report import write_sweep_report as _write

    return _write(sweep, out)


__all__ = ["write_report", "write_sweep_report"]
