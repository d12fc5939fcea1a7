"""`kvpager simulate TRACE`: replay a trace through each cache strategy and compare them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kvpager.cli import disagg_options as dopts
from kvpager.cli import options as opts
from kvpager.cli.console import make_console
from kvpager.cli.errors import cli_errors
from kvpager.cli.loading import ArrivalOptions, load
from kvpager.cli.outputs import check_out_dir, check_out_file
from kvpager.cli.tables import comparison_table, print_caveats, replica_tables, run_summary
from kvpager.sim.config import DEFAULT_STRATEGIES, PAGED
from kvpager.sim.kv_groups import has_groups_to_merge


def simulate(
    trace: Annotated[Path, typer.Argument(help="Trace file: kvpager JSON/JSONL, Azure CSV, "
                                               "Mooncake JSONL, length-only CSV or token-id "
                                               "JSONL (detected by content).")],
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
    long_prompts: opts.LongPrompts = "reject",
    cpu_prefix_cache: opts.CpuPrefixCache = None,
    tier_baseline: opts.TierBaseline = True,
    hybrid: opts.Hybrid = True,
    free_order: opts.FreeOrder = "window_first",
    replicas: opts.Replicas = 1,
    router: opts.RouterName = "round-robin",
    router_weights: opts.RouterWeights = None,
    router_signal_delay: opts.RouterSignalDelay = 0.0,
    slo_ttft: opts.SloTtft = None,
    slo_tpot: opts.SloTpot = None,
    prefill_replicas: dopts.PrefillReplicas = None,
    decode_replicas: dopts.DecodeReplicas = None,
    pd_decider: dopts.PdDecider = "always",
    kv_link_gbps: dopts.KvLinkGbps = None,
    kv_link_latency_ms: dopts.KvLinkLatencyMs = 0.0,
    kv_layerwise: dopts.KvLayerwise = False,
    prefill_keep_cache: dopts.PrefillKeepCache = True,
    rate_scale: Annotated[float, typer.Option(help="Multiply the request rate (compress "
                                                   "arrival times by this factor).")] = 1.0,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N requests.")]
    = None,
    arrival_rate: Annotated[float | None, typer.Option(
        help="Requests per second of a generated arrival process (needed for length-only "
             "traces; re-times any trace).")] = None,
    arrival_cv: Annotated[float | None, typer.Option(
        help="Coefficient of variation of generated gaps (Gamma; default 1 = Poisson).")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of generated arrivals and the beam model.")]
    = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory (metrics.json, per-request "
                                                  "and memory CSVs); default runs/<trace>.")]
    = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout "
                                                             "instead of the table.")] = False,
    report: Annotated[Path | None, typer.Option(
        help="Also write the run's self-contained HTML report (plotly.js inside, opens "
             "offline) to this file.")] = None,
) -> None:
    """Replay TRACE through paged and contiguous KV caching and compare them."""
    from kvpager.sim.run import simulate as run_simulation

    with cli_errors():
        run_dir = check_out_dir(out if out is not None else Path("runs") / trace.stem)
        if report is not None:
            check_out_file(report, "--report", (".html", ".htm"))
        cluster = opts.cluster_config(
            replicas=replicas, router=router, router_weights=router_weights,
            signal_delay=router_signal_delay, slo_ttft=slo_ttft, slo_tpot=slo_tpot)
        disagg = dopts.disagg_config(
            prefill_replicas=prefill_replicas, decode_replicas=decode_replicas,
            replicas=replicas, decider=pd_decider, link_gbps=kv_link_gbps,
            latency_ms=kv_link_latency_ms, layerwise=kv_layerwise, keep_cache=prefill_keep_cache)
        tier_gib = opts.tier_size(cpu_prefix_cache, prefix_caching, cache)
        strategies = tuple(cache) if cache else (
            (PAGED,) if tier_gib or disagg else DEFAULT_STRATEGIES)
        config = opts.sim_config(
            model=model, gpu=gpu, tp=tp, block_size=block_size, swap_space=swap_space,
            preemption=preemption, prefix_caching=prefix_caching,
            chunked_prefill=chunked_prefill, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
            kv_cache_dtype=kv_cache_dtype, gpu_memory_utilization=gpu_memory_utilization,
            cost_model=cost_model, calibration=calibration, seed=seed,
            num_gpu_blocks=num_gpu_blocks,
            kv_cache_memory=kv_cache_memory, long_prompts=long_prompts,
            cpu_prefix_cache_gib=tier_gib, hybrid=hybrid, free_order=free_order)
        data = load(trace, ArrivalOptions(arrival_rate, arrival_cv, seed), limit=limit,
                    rate_scale=rate_scale)
        with _progress(enabled=not json_output) as report_progress:
            metrics = run_simulation(data, config, strategies, out_dir=run_dir,
                                     progress=report_progress, tier_baseline=tier_baseline,
                                     cluster=cluster, disagg=disagg)
        if report is not None:
            from kvpager.cli.progress import spinner
            from kvpager.report import write_report

            with spinner(f"writing {report}", enabled=not json_output):
                write_report(run_dir, report)
    if json_output:
        print(json.dumps(json.loads((run_dir / "metrics.json").read_text()), indent=2))
        print_caveats(make_console(stderr=True), metrics)
        return
    console = make_console()
    console.print(f"{trace.name}: {len(data)} requests, {config.model} on {tp} x {config.gpu}",
                  markup=False, highlight=False)
    console.print(comparison_table(metrics))
    if replicas > 1 or disagg is not None:
        for table in replica_tables(metrics):
            console.print(table)
    for line in dopts.disagg_lines(metrics):
        console.print(line, markup=False, highlight=False)
    print_caveats(console, metrics)
    if tier_gib and not cache:
        console.print("note: --cpu-prefix-cache runs the paged strategy only (the contiguous "
                      "strategies cache no prefix blocks); add --cache to name strategies",
                      markup=False, highlight=False)
    if not hybrid and not has_groups_to_merge(config.model):
        console.print(f"note: --no-hybrid: {config.model} has no KV-cache groups to merge "
                      "(no window or chunked layers); the run is the same either way",
                      markup=False, highlight=False)
    for line in run_summary(metrics, run_dir, report):
        console.print(line, markup=False, highlight=False)


class _progress:
    """A Rich progress bar per strategy on stderr, when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        console = make_console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self.console = console
        self.bars: dict[str, int] = {}

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.progress.__enter__()
        return self.report

    def report(self, strategy: str, done: int, total: int) -> None:
        if strategy not in self.bars:
            self.bars[strategy] = self.progress.add_task(strategy, total=total)
        if done == total or done % 64 == 0:
            self.progress.update(self.bars[strategy], completed=done)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)
