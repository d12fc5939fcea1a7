"""`kvpager capacity`: KV memory per GPU, bytes per KV-cache group, and how many requests
of the maximum length fit at once, with and without hybrid allocation."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from kvpager.cli import options as opts
from kvpager.cli.console import make_console
from kvpager.cli.errors import cli_errors
from kvpager.sim.capacity import capacity as plan_capacity
from kvpager.sim.cost_model import ModelDoesNotFitError

GiB = 1 << 30


def capacity(
    model: opts.Model = "llama-3-8b",
    gpu: opts.Gpu = "h100-80gb",
    tp: opts.Tp = 1,
    max_model_len: Annotated[int | None, typer.Option(
        help="Tokens per request (prompt + output); default the model's context length.")]
    = None,
    kv_cache_dtype: opts.KvCacheDtype = "auto",
    block_size: opts.BlockSize = 16,
    max_num_batched_tokens: Annotated[int, typer.Option(
        help="Tokens one step adds (what a window group holds beyond its window).")] = 8192,
    gpu_memory_utilization: opts.GpuMemoryUtilization = 0.9,
    hybrid: opts.Hybrid = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """KV memory per GPU, bytes per KV-cache group and max_concurrency (requests of
    max-model-len tokens at once), with and without hybrid allocation."""
    with cli_errors():
        try:
            plan = plan_capacity(model, gpu, tp=tp, max_model_len=max_model_len,
                                 kv_cache_dtype=kv_cache_dtype, block_size=block_size,
                                 max_num_batched_tokens=max_num_batched_tokens,
                                 gpu_memory_utilization=gpu_memory_utilization,
                                 hybrid=hybrid)
        except ModelDoesNotFitError as exc:
            text = str(exc).replace("raise tp or gpu_memory_utilization",
                                    "raise --tp or --gpu-memory-utilization")
            raise ModelDoesNotFitError(f"--tp {tp}: {text}") from None
        except ValueError as exc:
            raise ValueError(opts.as_options(str(exc))) from None
    if json_output:
        print(json.dumps(plan, indent=2))
        return
    console = make_console()
    other = plan.get("no_hybrid") or plan["hybrid_allocation"]
    console.print(f"{plan['model']} on {tp} x {plan['gpu']}: weights "
                  f"{plan['weight_bytes_per_gpu'] / GiB:.1f} GiB, KV cache "
                  f"{plan['kv_cache_bytes'] / GiB:.2f} GiB per GPU; requests of "
                  f"{plan['max_model_len']:,} tokens", markup=False, highlight=False)
    for title, part in ((("hybrid allocation" if plan["hybrid"] else "no hybrid"), plan),
                        (("no hybrid" if plan["hybrid"] else "hybrid allocation"), other)):
        table = Table(title=f"{title}: max_concurrency {part['max_concurrency']:.2f}x, "
                            f"{part['bytes_per_request'] / GiB:.3f} GiB per request")
        for col in ("group", "layers", "bytes per token", "held per request"):
            table.add_column(col, justify="right" if col != "group" else "left")
        for g in part["groups"]:
            per = (f"{g['bytes_per_token']:,}" if "bytes_per_token" in g
                   else f"{g['bytes_per_seq']:,} per seq")
            held = g.get("tokens_held_per_request")
            table.add_row(g["type"], str(g["layers"]), per,
                          "-" if held is None else f"{held:,} tokens")
        console.print(table)
    console.print(f"hybrid allocation fits {plan['hybrid_gain']:.2f}x the requests; without it "
                  f"{plan['no_hybrid_waste']:.1%} of each request's KV memory is waste (while "
                  f"decoding, the window holding no prefill chunk: "
                  f"{plan['decode']['hybrid_gain']:.2f}x, "
                  f"{plan['decode']['no_hybrid_waste']:.1%})", markup=False, highlight=False)
