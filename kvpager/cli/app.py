"""The `kvpager` Typer application: one sub-command per job, thin over library calls."""

from __future__ import annotations

from typing import Annotated

import typer

from kvpager import __version__
from kvpager.cli import bench as bench_cmd
from kvpager.cli import calibrate as calibrate_cmd
from kvpager.cli import capacity as capacity_cmd
from kvpager.cli import plan as plan_cmd
from kvpager.cli import report as report_cmd
from kvpager.cli import simulate as simulate_cmd
from kvpager.cli import sweep as sweep_cmd
from kvpager.cli import trace as trace_cmd

app = typer.Typer(
    name="kvpager",
    help="The KV cache of LLM serving managed like virtual memory: simulate what paging buys "
         "on a real request trace, sweep request rates, write HTML reports, inspect traces "
         "and benchmark the manager.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"kvpager {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """kvpager command line."""


app.command("simulate")(simulate_cmd.simulate)
app.command("sweep")(sweep_cmd.sweep)
app.command("plan")(plan_cmd.plan)
app.command("report")(report_cmd.report)
app.command("capacity")(capacity_cmd.capacity)
app.add_typer(trace_cmd.app, name="trace")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(calibrate_cmd.app, name="calibrate")
