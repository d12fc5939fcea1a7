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
from kvpager.sim.config import DEFAULT_STRATEGIES, PAGED
from kvpager.sweep.spec import DEFAULT_NORMALIZED_BOUND, METRICS, TIER_AXIS


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
    cost_model: opts.CostModelOption = "auto",
    calibration: opts.Calibration = None,
    num_gpu_blocks: opts.NumGpuBlocks = None,
    kv_cache_memory: opts.KvCacheMemory = None,
    hybrid: opts.Hybrid = True,
    cpu_prefix_cache: Annotated[str | None, typer.Option(
        "--cpu-prefix-cache", metavar="SIZES",
        help="CPU prefix tier sizes, GiB per GPU or 'unlimited', e.g. 0,64,256,unlimited: "
             "sweeps the tier size at one load (one --rates value or one --rate-scale, "
             "default the trace's own arrivals) and plots hit rate, TTFT and throughput "
             "against it. One size: every rate point runs with that tier. Needs "
             "--prefix-caching and --cache paged.")] = None,
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
    from kvpager.sweep.execute import check_workers
    from kvpager.sweep.results import write_sweep

    with cli_errors():
        tiers = _tier_sizes(cpu_prefix_cache, prefix_caching, cache)
        if tiers is not None and len(tiers) > 1 and rates is None and rate_scale is None:
            rate_scale = "1"
        if tiers is not None and len(tiers) > 1 and "," in (rates or rate_scale or ""):
            raise ValueError("--cpu-prefix-cache: a sweep of several tier sizes runs at one "
                             "load; give one --rates value or one --rate-scale")
        if tiers is not None and not cache:
            cache = [PAGED]
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
            cost_model=cost_model, calibration=calibration, seed=seed,
            num_gpu_blocks=num_gpu_blocks,
            kv_cache_memory=kv_cache_memory,
            cpu_prefix_cache_gib=tiers[0] if tiers is not None and len(tiers) == 1 else 0.0,
            hybrid=hybrid)
        if not trace.is_file():
            raise FileNotFoundError(2, "no such trace file", str(trace))
        try:
            spec = SweepSpec(
                str(trace), config, tuple(cache) if cache else DEFAULT_STRATEGIES,
                rates=None if rates is None else parse_values(rates, "--rates"),
                rate_scales=None if rate_scale is None else parse_values(rate_scale,
                                                                         "--rate-scale"),
                arrival_cv=arrival_cv, seed=seed, limit=limit, metric=metric,
                latency_bound=latency_bound,
                cpu_prefix_caches=tiers if tiers is not None and len(tiers) > 1 else None)
            check_workers(workers)
        except ValueError as exc:
            raise ValueError(opts.as_options(str(exc))) from None
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
    if doc["spec"]["axis"] == TIER_AXIS:
        _print_tier_table(doc, trace, path, report)
        return
    _print_tables(doc, trace, path, report)


def _tier_sizes(text: str | None, prefix_caching: bool,
                cache: list[str] | None) -> tuple[float, ...] | None:
    """The sizes of --cpu-prefix-cache (None when not given), each checked as `simulate`
    checks one; ValueError naming the option."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ValueError(f"--cpu-prefix-cache: empty item in {text!r}")
    sizes = [opts.tier_size(item, prefix_caching, cache) for item in items]
    return tuple(sorted(set(sizes)))


def _print_tier_table(doc: dict, trace: Path, path: Path, report: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from kvpager.sim.summary import get_path

    console = Console()
    table = Table(title=f"{trace.name}: CPU prefix tier size (GiB per GPU)",
                  title_justify="left")
    columns = (("tier", None, "{}"), ("hit rate", ("prefix_tier", "hit_rate"), "{:.1%}"),
               ("from CPU", ("prefix_tier", "cpu_hit_rate"), "{:.1%}"),
               ("TTFT p50 (s)", ("latency_s", "ttft", "p50"), "{:.3f}"),
               ("TTFT p99 (s)", ("latency_s", "ttft", "p99"), "{:.3f}"),
               ("req/s", ("throughput", "requests_per_s"), "{:.3f}"),
               ("output tok/s", ("throughput", "output_tokens_per_s"), "{:.0f}"))
    for label, _, _ in columns:
        table.add_column(label, justify="right")
    for p in doc["points"]:
        cells = [str(p["value"])]
        for _, key, fmt in columns[1:]:
            v = get_path(p["metrics"], key)
            cells.append("-" if not isinstance(v, (int, float)) else fmt.format(v))
        table.add_row(*cells)
    console.print(table)
    console.print(f"sweep: {path}" + (f"\nreport: {report}" if report is not None else ""))


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
            metrics = by_key[(v, n)]["metrics"]
            value = metric_value(metrics, spec["metric"])
            mark = "" if value is not None and value <= spec["latency_bound"] else " *"
            if (metrics.get("load") or {}).get("saturated"):
                mark += " S"
            cells.append("-" if value is None else f"{value:.4g}{mark}")
        table.add_row(f"{v:g}", *cells)
    console.print(table)
    console.print(f"* over the bound {spec['latency_bound']:g};  S saturated (the queue of "
                  "waiting requests grew and never emptied again: not sustained)")
    sustained = Table(title="highest sustained request rate", title_justify="left")
    sustained.add_column("strategy")
    sustained.add_column("req/s", justify="right")
    sustained.add_column("first miss (req/s)", justify="right")
    for n in names:
        s = doc["sustained"][n]
        rate, miss = s["rate_per_s"], s["first_miss_rate_per_s"]
        top = ">= " if s.get("top_tested") else ""  # the highest rate tested still held
        sustained.add_row(n, "none" if rate is None else f"{top}{rate:.3g}",
                          "none tested" if miss is None else
                          f"{miss:.3g} ({s.get('first_miss_reason') or 'over the bound'})")
    console.print(sustained)
    console.print(f"sweep: {path}" + (f"\nreport: {report}" if report is not None else ""))
