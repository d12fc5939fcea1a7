"""Rich tables of simulation results: strategies side by side."""

from __future__ import annotations

from rich.table import Table

from kvpager.sim.summary import brief_rows, get_path


def comparison_table(metrics: dict, title: str = "") -> Table:
    """One column per strategy, one row per headline metric of `metrics.json`."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    strategies = metrics["strategies"]
    for name in strategies:
        table.add_column(name, justify="right")
    for label, path, fmt in brief_rows(strategies):
        table.add_row(label, *(fmt(get_path(strategies[n], path)) for n in strategies))
    return table
