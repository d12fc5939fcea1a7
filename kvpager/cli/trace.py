"""`kvpager trace info` and `kvpager trace convert`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kvpager.cli.errors import cli_errors
from kvpager.cli.loading import ArrivalOptions, load
from kvpager.cli.outputs import check_out_file

app = typer.Typer(help="Inspect and convert request traces.", no_args_is_help=True)

ArrivalRate = Annotated[float | None, typer.Option(
    help="Requests per second of a generated arrival process (length-only traces).")]
ArrivalCv = Annotated[float | None, typer.Option(
    help="Coefficient of variation of generated gaps (default 1 = Poisson).")]


@app.command()
def info(
    trace: Annotated[Path, typer.Argument(help="Trace file (any supported format).")],
    block_size: Annotated[int, typer.Option(help="KV block size for the prefix-sharing "
                                                 "estimate.")] = 16,
    arrival_rate: ArrivalRate = None,
    arrival_cv: ArrivalCv = None,
    seed: Annotated[int, typer.Option(help="Seed of generated arrivals.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
    = False,
) -> None:
    """Count, duration, rate, burstiness, length percentiles and prefix-sharing potential."""
    from kvpager.sim.traces import summarize

    with cli_errors():
        data = load(trace, ArrivalOptions(arrival_rate, arrival_cv, seed))
        summary = summarize(data, block_size=block_size)
    if json_output:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(f"{trace}:")
        print(summary.to_text())


@app.command()
def convert(
    trace: Annotated[Path, typer.Argument(help="Trace file to read (any supported format).")],
    output: Annotated[Path, typer.Argument(help="File to write (.json or .jsonl).")],
    limit: Annotated[int | None, typer.Option(help="Keep the first N requests.")] = None,
    rate_scale: Annotated[float, typer.Option(help="Multiply the request rate.")] = 1.0,
    arrival_rate: ArrivalRate = None,
    arrival_cv: ArrivalCv = None,
    seed: Annotated[int, typer.Option(help="Seed of generated arrivals.")] = 0,
) -> None:
    """Rewrite a trace as kvpager JSON (.json) or JSON Lines (.jsonl)."""
    from kvpager.sim.traces import write_json, write_jsonl

    with cli_errors():
        check_out_file(output, "OUTPUT", (".json", ".jsonl"))
        data = load(trace, ArrivalOptions(arrival_rate, arrival_cv, seed), limit=limit,
                    rate_scale=rate_scale)
        (write_jsonl if output.suffix == ".jsonl" else write_json)(data, output)
    print(f"wrote {len(data)} requests to {output}")
