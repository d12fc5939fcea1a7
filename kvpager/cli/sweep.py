"""`kvpager sweep TRACE --rates 0.5,1,2,4`: latency against request rate per strategy, and
the highest rate each sustains under a latency bound."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvpager.cli import options as opts
from kvpager.cli.errors import INTERNAL, cli_errors, fail
from kvpager.cli.outputs import check_out_dir, check_out_file
from kvpager.cli.progress import progress_bar, spinner
from kvpager.sim.config import DEFAULT_STRATEGIES
from kvpager.sweep.spec import DEFAULT_NORMALIZED_BOUND, METRICS


def sweep(
    trace: Annotated[Path, typer.Argument(help="Trace file (any format `kvpager simulate` "
                                               "reads).")],
    rates: Annotated[str | None, typer.Option(
        help="Comma-separated request rates (req/s), e.g. 0.5,1,2,4: each point re-times the "
             "trace's requests with generated arrivals at that rate (Poisson, or Gamma with "
             "--arrival-cv).")] = None,
    rate_scale: Annotated[str | None, typer.Option(
        help="Comma-separated factors on the trace's own arrival rate, e.g. 0.5,1,2 (keeps "
             "its burstiness). Give this or --rates.")] = None,
    metric: Annotated[str, typer.Option(
        help=f"Latency compared with the bound: {', '.join(METRICS)}.")] = "normalized-mean",
    latency_bound: Annotated[float | None, typer.Option(
        help="Most the metric may be at a sustained rate (seconds, or s/token for "
             f"normalized and TPOT metrics); default {DEFAULT_NORMALIZED_BOUND} s/token for "
             "normalized latency, required for the others.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Local worker processes (default: one per CPU; 1 runs in this process). With "
             "--ray local: the CPUs of the local Ray instance.")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Run the points on Ray: 'local' starts a private instance; otherwise "
                      "a cluster address ('auto', 'host:6379', 'ray://host:10001'). Needs "
                      "the 'ray' extra.")] = None,
    model: opts.Model = "llama-2-7b",
    gpu: opts.Gpu = "a100-80gb",
    tp: opts.Tp = 1,
    cache: opts.Cache = None,
    block_size: opts.BlockSize = 16,
    swap_space: opts.SwapSpace = 4.0,
    preemption: opts.Preemption = "auto",
    prefix_caching: opts.PrefixCaching = False,
    chunked_prefill: opts.ChunkedPrefill = False,
    max_num_seqs: opts.MaxNumSeqs = 256,
    max_num_batched_tokens: opts.MaxNumBatchedTokens = None,
    max_model_len: opts.MaxModelLen = None,
    kv_cache_dtype: opts.KvCacheDtype = "auto",
    gpu_memory_utilization: opts.GpuMemoryUtilization = 0.9,
    calibration: opts.Calibration = None,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N requests at "
                                                   "each point.")] = None,
    arrival_cv: Annotated[float | None, typer.Option(
        help="Coefficient of variation of generated gaps with --rates (default 1 = "
             "Poisson).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of generated arrivals (the same at every "
                                           "rate).")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Directory for sweep.json; default runs/<trace>-sweep.")] = None,
    report: Annotated[Path | None, typer.Option(
        help="Also write the sweep's self-contained HTML report to this file.")] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the sweep document (sweep.json) instead of the tables.")]
    = False,
) -> None:
    """Latency vs request rate per strategy, and the highest rate each sustains.

    Simulates TRACE at every rate (or rate scale) and cache strategy, in parallel local
    processes or on Ray; writes sweep.json and, with --report, an HTML report.
    """
    from kvpager.sweep import RayUnavailableError, SweepSpec, parse_values, run_sweep
    from kvpager.sweep.results import write_sweep

    with cli_errors():
        if (rates is None) == (rate_scale is None):
            raise ValueError("give exactly one of --rates (req/s) and --rate-scale (factors "
                             "on the trace's own rate)")
        out_dir = check_out_dir(out if out is not None
                                else Path("runs") / f"{trace.stem}-sweep")
        if report is not None:
            check_out_file(report, "--report", (".html", ".htm"))
        config = opts.sim_config(
            model=model, gpu=gpu, tp=tp, block_size=block_size, swap_space=swap_space,
            preemption=preemption, prefix_caching=prefix_caching,
            chunked_prefill=chunked_prefill, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
            kv_cache_dtype=kv_cache_dtype, gpu_memory_utilization=gpu_memory_utilization,
            calibration=calibration, seed=seed)
        if not trace.is_file():
            raise FileNotFoundError(2, "no such trace file", str(trace))
        spec = SweepSpec(
            str(trace), config, tuple(cache) if cache else DEFAULT_STRATEGIES,
            rates=None if rates is None else parse_values(rates, "--rates"),
            rate_scales=None if rate_scale is None else parse_values(rate_scale,
                                                                     "--rate-scale"),
            arrival_cv=arrival_cv, seed=seed, limit=limit, metric=metric,
            latency_bound=latency_bound)
        points = len(spec.values) * len(spec.strategies)
        try:
            with progress_bar(f"{points} points", enabled=not json_output) as update:
                doc = run_sweep(spec, workers=workers, ray_address=ray, progress=update)
        except RayUnavailableError as exc:
            raise fail(str(exc), INTERNAL) from None
        path = write_sweep(doc, out_dir)
        if report is not None:
            from kvpager.report.sweep_report import write_sweep_report

            with spinner(f"writing {report}", enabled=not json_output):
                write_sweep_report(doc, report)
    if json_output:
        print(path.read_text(encoding="utf-8"), end="")
        return
    _print_tables(doc, trace, path, report)


def _print_tables(doc: dict, trace: Path, path: Path, report: Path | None) -> None:
    from rich.table import Table

    from kvpager.cli.console import make_console
    from kvpager.sweep import metric_label, metric_value

    spec = doc["spec"]
    names = list(spec["strategies"])
    console = make_console()
    axis = "rate (req/s)" if spec["axis"] == "rate" else "rate scale"
    console.print(f"{trace.name}: {metric_label(spec['metric'])} per strategy")
    table = Table()
    table.add_column(axis, justify="right")
    for n in names:
        table.add_column(n, justify="right")
    by_key = {(p["value"], p["strategy"]): p for p in doc["points"]}
    for v in spec["values"]:
        cells = []
        for n in names:
            value = metric_value(by_key[(v, n)]["metrics"], spec["metric"])
            mark = "" if value is not None and value <= spec["latency_bound"] else " *"
            cells.append("-" if value is None else f"{value:.4g}{mark}")
        table.add_row(f"{v:g}", *cells)
    console.print(table)
    console.print(f"* over the bound {spec['latency_bound']:g}")
    sustained = Table(title="highest sustained request rate", title_justify="left")
    sustained.add_column("strategy")
    sustained.add_column("req/s", justify="right")
    sustained.add_column("first miss (req/s)", justify="right")
    for n in names:
        s = doc["sustained"][n]
        rate, miss = s["rate_per_s"], s["first_miss_rate_per_s"]
        sustained.add_row(n, "none" if rate is None else f"{rate:.3g}",
                          "-" if miss is None else f"{miss:.3g}")
    console.print(sustained)
    console.print(f"sweep: {path}" + (f"\nreport: {report}" if report is not None else ""))
