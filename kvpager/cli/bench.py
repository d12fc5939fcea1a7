"""`kvpager bench manager` and `kvpager bench attention`: benchmarks from the installed package.

Results are timings of this machine; they are printed (a table, or JSON with `--json`) and,
with `--out`, recorded with the machine and library versions, as the repository's
`benchmarks/results/*.json` are.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from kvpager.cli.errors import INTERNAL, cli_errors, fail
from kvpager.cli.outputs import check_out_file
from kvpager.cli.progress import progress_bar

app = typer.Typer(help="Benchmarks: the memory manager's decode step, and the attention "
                       "kernels when their harness is installed.", no_args_is_help=True)

ATTENTION_MODULE = "kvpager.bench.attention"


@app.command()
def manager(
    steps: Annotated[int, typer.Option(help="Timed decode steps per repeat.")] = 200,
    repeats: Annotated[int, typer.Option(help="Repeats per scenario (best and median "
                                              "reported).")] = 3,
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", help="Scenario to run; repeat for several (decode-256, decode-1024, "
                           "beam-1024, prefix-1024, per-seq-1024, pool-1M-blocks). Default: "
                           "all.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Also record {benchmark, date, command, environment, results} to this JSON "
             "file.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")]
    = False,
) -> None:
    """Time the KV-cache manager's decode step and a large pool's memory.

    Scenarios: plain decode, beam search with copy-on-write, prefix-cache hits, the
    per-sequence API, and a pool of a million blocks.
    """
    from kvpager.bench.manager import run
    from kvpager.bench.record import record

    with cli_errors():
        if out is not None:
            check_out_file(out, "--out", (".json",))
        with progress_bar("manager scenarios", enabled=not json_output) as update:
            results = run(steps, repeats, scenario,
                          None if update is None else lambda _n, d, t: update(d, t))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record("manager", results,
                                             " ".join(["kvpager", *sys.argv[1:]])),
                                      indent=2) + "\n")
    if json_output:
        print(json.dumps(results, indent=2))
        return
    _print_table(results)
    if out is not None:
        print(f"recorded {out}")


def _print_table(results: dict) -> None:
    from rich.table import Table

    from kvpager.cli.console import make_console

    table = Table(title=f"KV-cache manager, block size {results['block_size']}",
                  title_justify="left")
    for col in ("scenario", "best (us/step)", "median (us/step)", "notes"):
        table.add_column(col, justify="left" if col in ("scenario", "notes") else "right")
    for name, r in results.items():
        if name == "block_size":
            continue
        if "us_per_step_best" in r:
            notes = ", ".join(f"{k}={v}" for k, v in r.items()
                              if k not in ("us_per_step_best", "us_per_step_median"))
            table.add_row(name, f"{r['us_per_step_best']:.1f}",
                          f"{r['us_per_step_median']:.1f}", notes)
        else:
            table.add_row(name, "-", "-", ", ".join(f"{k}={v}" for k, v in r.items()))
    make_console().print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def attention(ctx: typer.Context) -> None:
    """Benchmark the paged-attention kernels (when their harness is installed).

    Runs `kvpager.bench.attention.main(argv)` with every argument, `--help` included.
    """
    with cli_errors():
        try:
            module = importlib.import_module(ATTENTION_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name not in (ATTENTION_MODULE, "kvpager.bench"):
                raise  # the harness is there but one of its own imports is missing
            raise fail(f"kvpager bench attention: the kernel benchmark harness "
                       f"({ATTENTION_MODULE}) is not part of this installation; install a "
                       "kvpager that ships it, or time the manager with `kvpager bench "
                       "manager`", INTERNAL) from None
        entry = getattr(module, "main", None)
        if not callable(entry):
            raise fail(f"{ATTENTION_MODULE} has no main(argv) entry point", INTERNAL)
        code = entry(list(ctx.args))
    if code:
        raise typer.Exit(int(code))
