"""The `kvpager` Typer application: one sub-command per job, thin over library calls."""

from __future__ import annotations

from typing import Annotated

import typer

from kvpager import __version__
from kvpager.cli import simulate as simulate_cmd
from kvpager.cli import trace as trace_cmd

app = typer.Typer(
    name="kvpager",
    help="The KV cache of LLM serving managed like virtual memory: simulate what paging buys "
         "on a real request trace, and inspect traces.",
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
app.add_typer(trace_cmd.app, name="trace")
