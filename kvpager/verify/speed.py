"""The speed targets, measured with the attention benchmark at the targets' shapes.

Shapes (fp16 queries, head 128, 32 query / 8 kv heads, block 16): batch 8 and 32 at
context 4096 and 8192 in fp16 and FP8 (e4m3), and batch 8 at 32768 in fp16. From them:

- bandwidth share: the kernel's GB/s over a device-to-device copy of the same cache's GB/s
  (`kvpager.bench.runner`'s convention), batch 32, context >= 4096, fp16, best version;
  targets CUDA >= 0.85, Triton >= 0.75;
- latency over SDPA on the same K/V stored contiguously, same shapes: CUDA <= 1.05;
- FP8 speedup over fp16 at context 8192, batch 32: CUDA >= 1.7;
- v2 speedup over v1 at context 32768, batch 8: >= 2 (both backends).

A missed target is a finding with its figure, never a failure; figures come only from
shapes the benchmark verified against SDPA (a kernel computing something else has no
speed). The full record (machine, versions, command) goes to DIR/attention.json and the
simulator calibration to DIR/calibration.json. In a dry run the same code runs at tiny
CPU shapes and no target is judged.
"""

from __future__ import annotations

from typing import Any

from kvpager.verify.runner import FAIL, PASS, Context, StepSkipped, error_line
from kvpager.verify.steps_setup import kernel_backends

SHARE_TARGETS = {"cuda": 0.85, "triton": 0.75}
SDPA_TARGET = {"cuda": 1.05}
FP8_TARGET = {"cuda": 1.7}
V2_TARGET = 2.0


def _finding(name: str, value: float | None, target: float, higher_is_better: bool,
             judged: bool, **where: object) -> dict:
    met = None
    if judged and value is not None:
        met = value >= target if higher_is_better else value <= target
    return {"name": name, "value": None if value is None else round(value, 3),
            "target": (">= " if higher_is_better else "<= ") + str(target), "met": met,
            **where}


def findings(points: list[dict], baselines: list[dict], judged: bool, big_batch: int,
             contexts: tuple[int, int, int], small_batch: int, dtype: str = "float16"
             ) -> list[dict]:
    """The target figures from the benchmark's records (see the module docstring); `dtype`
    is the benchmark's name of the non-FP8 runs (float16 on a GPU)."""
    base = {(b["kind"], b["dtype_name"], b["batch"], b["context"]): b for b in baselines}
    best: dict[tuple, dict] = {}
    for p in points:
        if p.get("matches_sdpa") is False:
            continue
        key = (p["backend"], p["dtype_name"], p["batch"], p["context"])
        if key not in best or p["us_per_call"] < best[key]["us_per_call"]:
            best[key] = p
    by_version = {(p["backend"], p["dtype_name"], p["batch"], p["context"], p["version"]): p
                  for p in points if p.get("matches_sdpa") is not False}
    short, mid, long_ = contexts
    out = []
    for backend in sorted({p["backend"] for p in points} - {"reference"}):
        for ctx_len in (short, mid):
            point = best.get((backend, dtype, big_batch, ctx_len))
            copy = base.get(("copy", dtype, big_batch, ctx_len))
            sdpa = base.get(("sdpa", dtype, big_batch, ctx_len))
            where = {"backend": backend, "batch": big_batch, "context": ctx_len}
            if backend in SHARE_TARGETS:
                share = point["gb_per_s"] / copy["gb_per_s"] if point and copy else None
                out.append(_finding(f"{backend} bandwidth / copy (b{big_batch} ctx{ctx_len})",
                                    share, SHARE_TARGETS[backend], True, judged, **where))
            if backend in SDPA_TARGET:
                ratio = point["us_per_call"] / sdpa["us_per_call"] if point and sdpa else None
                out.append(_finding(f"{backend} latency / SDPA (b{big_batch} ctx{ctx_len})",
                                    ratio, SDPA_TARGET[backend], False, judged, **where))
        if backend in FP8_TARGET:
            f16 = best.get((backend, dtype, big_batch, mid))
            f8 = best.get((backend, "fp8", big_batch, mid))
            out.append(_finding(f"{backend} fp8 speedup over fp16 (b{big_batch} ctx{mid})",
                                f16["us_per_call"] / f8["us_per_call"] if f16 and f8 else None,
                                FP8_TARGET[backend], True, judged, backend=backend))
        v1 = by_version.get((backend, dtype, small_batch, long_, "v1"))
        v2 = by_version.get((backend, dtype, small_batch, long_, "v2"))
        out.append(_finding(f"{backend} v2 speedup over v1 (b{small_batch} ctx{long_})",
                            v1["us_per_call"] / v2["us_per_call"] if v1 and v2 else None,
                            V2_TARGET, True, judged, backend=backend))
    return out


def speed_step(ctx: Context) -> dict:
    from kvpager.bench.attention import AttentionBenchConfig, run_attention_benchmark
    from kvpager.bench.calibration import calibration_document, gpu_preset, write_calibration
    from kvpager.bench.record import environment, write_record

    s = ctx.sizes
    backends, excluded = kernel_backends(ctx)
    if not backends:
        raise StepSkipped(f"no kernel backend runs here: {excluded}")
    small, big = s.speed_batches
    short, mid, long_ = s.speed_contexts
    common = dict(num_heads=s.speed_heads[0], kv_heads=(s.speed_heads[1],),
                  head_size=s.speed_head_size, block_size=16, device=ctx.device,
                  warmup=s.speed_warmup, repeats=s.speed_repeats)
    grids: list[dict[str, Any]] = [
        dict(batches=(small, big), contexts=(short, mid), dtypes=(s.speed_dtype, "fp8")),
        dict(batches=(small,), contexts=(long_,), dtypes=(s.speed_dtype,))]
    points: list[dict] = []
    baselines: list[dict] = []
    skipped: list[dict] = []
    errors: dict[str, str] = {}
    for backend in backends:  # one backend at a time: an error keeps the other's figures
        for grid in grids:
            try:
                part = run_attention_benchmark(
                    AttentionBenchConfig(backends=(backend,), **grid, **common),
                    lambda line: None)
            except Exception as exc:  # recorded; the other grids and backends go on
                errors[f"{backend} {grid['contexts']}"] = error_line(exc)
                continue
            points += part["points"]
            if not any(b["batch"] in grid["batches"] and b["context"] in grid["contexts"]
                       and b["dtype_name"] in grid["dtypes"] for b in baselines):
                baselines += part["baselines"]  # SDPA and the copy do not depend on backend
            skipped += part["skipped"]
    results = {"points": points, "baselines": baselines, "skipped": skipped,
               "errors": errors, "dry_run": ctx.dry_run}
    record = write_record(ctx.out / "attention.json", "attention", results)
    env = environment(gpu=not ctx.dry_run)
    calibration = None
    measured = [b for b in backends if any(p["backend"] == b for p in points)]
    try:
        if not measured:
            raise ValueError("no backend was measured")
        doc = calibration_document(points, backend=measured[-1], dtype=s.speed_dtype,
                                   num_kv_heads=s.speed_heads[1],
                                   gpu=gpu_preset(env.get("gpu"), env.get("gpu_memory_bytes")))
        calibration = str(write_calibration(ctx.out / "calibration.json", doc))
    except ValueError as exc:
        calibration = f"not written: {exc}"
    found = findings(points, baselines, judged=not ctx.dry_run, big_batch=big,
                     contexts=(short, mid, long_), small_batch=small, dtype=s.speed_dtype)
    wrong = [f"{p['backend']} {p['version']} {p['dtype_name']} b{p['batch']} ctx{p['context']}"
             for p in points if p.get("matches_sdpa") is False]
    return {"status": FAIL if wrong or errors else PASS, "findings": found,
            "record": str(record), "calibration": calibration, "points": len(points),
            "skipped_shapes": skipped, "disagree_with_sdpa": wrong, "errors": errors,
            "note": f"{len(points)} timings"
                    + (f"; {len(wrong)} disagree with SDPA" if wrong else "")
                    + (f"; {len(errors)} grids raised" if errors else "")
                    + ("" if ctx.dry_run else
                       f"; {sum(f['met'] is False for f in found)} targets missed")}


__all__ = ["findings", "speed_step"]
