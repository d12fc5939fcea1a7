"""`kvpager plan TRACE --slo-ttft S --slo-tpot S`: the fewest replicas per router that meet
an SLO at the trace's rate (or at several rate scales), by bisection over replica counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from kvpager.cli import options as opts
from kvpager.cli.errors import INTERNAL, cli_errors, fail
from kvpager.cli.loading import ArrivalOptions, load
from kvpager.cli.outputs import check_out_file
from kvpager.cli.progress import progress_bar


def plan(
    trace: Annotated[Path, typer.Argument(help="Trace file (any format `kvpager simulate` "
                                               "reads).")],
    slo_ttft: Annotated[float | None, typer.Option(
        help="TTFT bound of the SLO, seconds (give it, --slo-tpot, or both).")] = None,
    slo_tpot: Annotated[float | None, typer.Option(
        help="TPOT bound of the SLO, seconds per output token.")] = None,
    attainment: Annotated[float, typer.Option(
        help="Fraction of requests that must meet the SLO, in (0, 1].")] = 0.9,
    routers: Annotated[str | None, typer.Option(
        help="Comma-separated routers to plan (default round-robin,least-requests,"
             "prefix-precise); any of `simulate --router`.")] = None,
    max_replicas: Annotated[int, typer.Option(
        help="The largest fleet tried; an SLO no count up to it meets is reported as such."
    )] = 16,
    rate_scale: Annotated[str, typer.Option(
        help="Comma-separated factors on the trace's own arrival rate; one answer per "
             "router and factor.")] = "1",
    workers: Annotated[int | None, typer.Option(
        help="Local worker processes (default: one per CPU; 1 runs in this process).")]
    = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", help="Run the probes on Ray: 'local' or a cluster address ('auto', "
                      "'host:6379', 'ray://host:10001'). Needs the 'ray' extra.")] = None,
    model: opts.Model = "llama-2-7b",
    gpu: opts.Gpu = "a100-80gb",
    tp: opts.Tp = 1,
    block_size: opts.BlockSize = 16,
    swap_space: opts.SwapSpace = 4.0,
    preemption: opts.Preemption = "auto",
    prefix_caching: Annotated[bool, typer.Option(
        help="Share prompt blocks by content (on by default here, as in vLLM V1: the "
             "prefix routers need it).")] = True,
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
    router_weights: opts.RouterWeights = None,
    router_signal_delay: opts.RouterSignalDelay = 0.0,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N requests.")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of the random router and the beam "
                                           "model.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Plan file (JSON); default runs/<trace>-plan.json.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the plan document "
                                                             "instead of the table.")] = False,
    disaggregated: Annotated[bool, typer.Option(
        "--disaggregated", help="Search prefill / decode splits instead (one router, in "
                                "process), with the aggregated answer beside it.")] = False,
    gpus: Annotated[int | None, typer.Option(
        help="--disaggregated: the best split of this many GPUs (default: the fewest GPUs "
             "meeting the SLO, up to --max-replicas replicas).")] = None,
    kv_link_gbps: Annotated[float | None, typer.Option(
        help="--disaggregated: KV over a network at this rate, Gbit/s per GPU (default "
             "NVLink).")] = None,
    pd_decider: Annotated[str, typer.Option(
        "--pd-decider", help="--disaggregated: always, threshold:N or cost.")] = "always",
) -> None:
    """The fewest replicas per router that meet an SLO on TRACE.

    Each probe is a full simulation of the paged strategy on N replicas behind the router;
    a bisection over N (1..--max-replicas) per router and rate scale, the probes of a round
    run in parallel (local processes or Ray). Prints a table and writes the plan as JSON
    with its evidence (attainment at N and at N - 1, every probe's figures).
    """
    from kvpager.plan.planner import PlanSpec, parse_routers, plan_fleet
    from kvpager.sweep import parse_values
    from kvpager.sweep.parallel import Executor, RayUnavailableError

    with cli_errors():
        spec = PlanSpec(slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot, attainment=attainment,
                        routers=parse_routers(routers), max_replicas=max_replicas,
                        weights_text=router_weights, signal_delay_s=router_signal_delay)
        scales = parse_values(rate_scale, "--rate-scale")
        path = check_out_file(out if out is not None else Path("runs") / f"{trace.stem}-plan"
                              ".json", "--out", (".json",))
        tier_gib = opts.tier_size(cpu_prefix_cache, prefix_caching, None)
        config = opts.sim_config(
            model=model, gpu=gpu, tp=tp, block_size=block_size, swap_space=swap_space,
            preemption=preemption, prefix_caching=prefix_caching,
            chunked_prefill=chunked_prefill, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
            kv_cache_dtype=kv_cache_dtype, gpu_memory_utilization=gpu_memory_utilization,
            cost_model=cost_model, calibration=calibration, seed=seed,
            num_gpu_blocks=num_gpu_blocks, kv_cache_memory=kv_cache_memory,
            long_prompts=long_prompts, cpu_prefix_cache_gib=tier_gib)
        try:
            executor = Executor(workers, ray)
        except ValueError as exc:
            raise ValueError(opts.as_options(str(exc))) from None
        from kvpager.sim.run import cost_model as build_cost
        from kvpager.sim.run import resolve

        build_cost(resolve(config), config)  # a model that does not fit: fail now
        if disaggregated:
            chosen = spec.routers if routers is not None else ("round-robin",)
            _disaggregated(trace, config, spec, chosen, gpus, kv_link_gbps, pd_decider, limit,
                           seed, scales, path, json_output)
            return
        traces = {s: load(trace, ArrivalOptions(seed=seed), limit=limit, rate_scale=s)
                  for s in scales}
        try:
            with executor, progress_bar("probes", enabled=not json_output) as update:
                doc = plan_fleet(traces, config, spec, executor, update)
        except RayUnavailableError as exc:
            raise fail(str(exc), INTERNAL) from None
        first = traces[scales[0]]
        doc["trace"] = {"source": str(trace), "requests": len(first),
                        "duration_s": float(first.duration)}
        doc["config"] = config.to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_clean(doc), indent=2) + "\n", encoding="utf-8")
    if json_output:
        print(path.read_text(encoding="utf-8"), end="")
        return
    _print(doc, trace, path)


def _disaggregated(trace: Path, config, spec, routers: tuple[str, ...], gpus: int | None,
                   link_gbps: float | None,
                   decider: str, limit: int | None, seed: int, scales: Sequence[float],
                   path: Path, json_output: bool) -> None:
    """`--disaggregated`: `kvpager.cli.plan_disagg` (one router, one rate scale)."""
    from kvpager.cli.plan_disagg import check_disagg_plan, plan_disaggregated, print_plan
    from kvpager.sim.cluster.config import ClusterConfig
    from kvpager.sim.run import resolve

    if len(scales) != 1:
        raise ValueError("--rate-scale: --disaggregated plans one rate scale; give one")
    disagg = check_disagg_plan(gpus=gpus, tp=config.tp, routers=routers,
                               link_gbps=link_gbps, decider=decider)
    cluster = ClusterConfig(router=routers[0], slo_ttft_s=spec.slo_ttft_s,
                            slo_tpot_s=spec.slo_tpot_s, signal_delay_s=spec.signal_delay_s)
    data = load(trace, ArrivalOptions(seed=seed), limit=limit, rate_scale=scales[0])
    doc = plan_disaggregated(data, resolve(config), cluster, disagg, gpus, spec.attainment,
                             spec.max_replicas)
    doc["trace"] = {"source": str(trace), "requests": len(data),
                    "rate_scale": scales[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n", encoding="utf-8")
    if json_output:
        print(path.read_text(encoding="utf-8"), end="")
    else:
        print_plan(doc, trace.name, path)


def _clean(obj: object) -> object:
    from kvpager.sweep.results import _clean as clean

    return clean(obj)


def _print(doc: dict, trace: Path, path: Path) -> None:
    from rich.table import Table

    from kvpager.cli.console import make_console
    from kvpager.plan.planner import describe_answer

    spec = doc["spec"]
    bounds = [f"TTFT <= {spec['slo_ttft_s']:g} s" if spec["slo_ttft_s"] is not None else "",
              f"TPOT <= {spec['slo_tpot_s']:g} s" if spec["slo_tpot_s"] is not None else ""]
    console = make_console()
    console.print(f"{trace.name}: fewest replicas with {100 * spec['attainment']:g}% of "
                  f"requests meeting {' and '.join(b for b in bounds if b)}",
                  markup=False, highlight=False)
    table = Table()
    for label in ("router", "rate scale", "replicas", "TTFT p50 (s)", "TTFT p90 (s)",
                  "TPOT p90 (s)", "hit rate", "probes"):
        table.add_column(label, justify="left" if label == "router" else "right")
    for a in doc["answers"]:
        at: dict = a["at"] or next((p for p in a["probes"]
                                   if p["replicas"] == a["best"]["replicas"]), {})
        hit = at.get("hit_rate")
        table.add_row(a["router"], f"{a['rate_scale']:g}", describe_answer(a),
                      _num(at.get("ttft_s", {}).get("p50")),
                      _num(at.get("ttft_s", {}).get("p90")),
                      _num(at.get("tpot_s", {}).get("p90")),
                      "-" if hit is None else f"{100 * hit:.1f}%", str(len(a["probes"])))
    console.print(table)
    console.print(f"{doc['probes']} simulations in {doc['rounds']} rounds, "
                  f"{doc['wall_s']:.1f} s ({doc['executor']['kind']}); plan: {path}",
                  markup=False, highlight=False)


def _num(x: object) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:.3f}"
