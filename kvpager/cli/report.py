"""`kvpager report RUN_DIR -o report.html`: the self-contained HTML report of a run or sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kvpager.cli.errors import cli_errors, fail
from kvpager.cli.outputs import check_out_file
from kvpager.cli.progress import spinner


def is_sweep(path: Path) -> bool:
    """A sweep directory (holding sweep.json) or a sweep.json file, rather than a run."""
    return (path.is_dir() and (path / "sweep.json").is_file()
            and not (path / "metrics.json").is_file()) or (
        path.is_file() and path.name.endswith(".json") and path.name != "metrics.json")


def write_any(source: Path, output: Path, max_points: int) -> tuple[str, Path]:
    """Write the report of a run directory or a sweep; returns (kind, path)."""
    if is_sweep(source):
        from kvpager.report.sweep_report import write_sweep_report

        return "sweep", write_sweep_report(source, output)
    from kvpager.report.run_report import write_report

    return "run", write_report(source, output, max_points)


def report(
    source: Annotated[Path, typer.Argument(
        help="Run directory written by `kvpager simulate` (metrics.json and CSVs), or a "
             "sweep directory / sweep.json written by `kvpager sweep`.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="HTML file to write; default report.html inside SOURCE "
                               "(sweep.html for a sweep).")] = None,
    max_points: Annotated[int, typer.Option(
        help="Most points per strategy and time series embedded; longer series are "
             "thinned (memory shares averaged, queue peaks kept).")] = 1000,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print {kind, report, bytes} as JSON instead of a sentence.")] = False,
) -> None:
    """Write the self-contained HTML report of a run or sweep (opens offline).

    One file with plotly.js inside: memory over time, waste breakdown, batch and queues,
    latency CDFs, prefix hits, summary and configuration (or the sweep's latency-vs-rate
    view).
    """
    with cli_errors():
        if not source.exists():
            raise fail(f"{source}: no such run directory or sweep file")
        if source.is_dir() and not any((source / name).is_file()
                                       for name in ("metrics.json", "sweep.json")):
            raise fail(f"{source}: not a run or sweep directory: it holds no metrics.json "
                       f"(write a run with `kvpager simulate TRACE --out {source}`) and no "
                       "sweep.json (`kvpager sweep TRACE --out DIR`)")
        if output is None:
            base = source if source.is_dir() else source.parent
            output = base / ("sweep.html" if is_sweep(source) else "report.html")
        check_out_file(output, "--output", (".html", ".htm"))
        with spinner(f"writing {output}", enabled=not json_output):
            kind, path = write_any(source, output, max_points)
    size = path.stat().st_size
    if json_output:
        print(json.dumps({"kind": kind, "report": str(path), "bytes": size}))
    else:
        print(f"wrote {kind} report {path} ({size / 1e6:.1f} MB)")
