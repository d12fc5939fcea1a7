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
    model: Annotated[str | None, typer.Option(
        help="Also count the requests this model's context cannot hold (a preset or a model "
             "spec JSON file).")] = None,
    max_model_len: Annotated[int | None, typer.Option(
        help="Also count the requests longer than this (default: --model's context).")]
    = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
    = False,
) -> None:
    """Count, duration, rate, burstiness, length percentiles and prefix-sharing potential;
    with --model or --max-model-len, how many requests that context would reject."""
    from kvpager.sim.traces import context_fit, summarize

    with cli_errors():
        limit, owner = _context(model, max_model_len)
        data = load(trace, ArrivalOptions(arrival_rate, arrival_cv, seed))
        summary = summarize(data, block_size=block_size)
        fit = None if limit is None else context_fit(data, limit)
    if json_output:
        print(json.dumps(summary.to_dict() | ({} if fit is None else {"context": fit}),
                         indent=2))
        return
    print(f"{trace}:")
    print(summary.to_text())
    if fit is not None:
        print(f"  over max_model_len {limit:,} ({owner}): {fit['over_limit']:,} requests "
              f"({100 * fit['over_limit_fraction']:.1f}%) would be rejected; longest prompt "
              f"{fit['longest_prompt']:,}, longest prompt + output {fit['longest_total']:,}")


def _context(model: str | None, max_model_len: int | None) -> tuple[int | None, str]:
    """The limit `info` checks against and who sets it (raises ValueError naming the
    option)."""
    if max_model_len is not None:
        if max_model_len <= 0:
            raise ValueError(f"--max-model-len: expected an integer > 0, got {max_model_len}")
        return max_model_len, "--max-model-len"
    if model is None:
        return None, ""
    from kvpager.sim.presets import get_model

    try:
        spec = get_model(model)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"--model: {exc}") from None
    return spec.max_context, f"{spec.name}'s context"


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
