"""Error of the cost model against every shipped operator profile: roofline vs calibrated.

For each GPU and each model with a linear-operator profile (`mlp.csv`), over every profiled
(tokens, tp) row, the per-layer time of the linear and elementwise operators (QKV, output
projection, MLP up / activation / down, norms, rotary, residual add) is predicted by

- the roofline: max(2 P_layer T / (peak x 0.6), weight bytes / (HBM x 0.8)), per GPU;
- the calibration fitted to all models of the GPU (in-sample);
- the calibration fitted to the *other* models only (held out: the model's own profile is
  not used, as for a model that has none).

Errors are predicted / measured - 1; the table gives the mean absolute error, the median
(signed: the bias) and the share of rows within 10%. A second table composes a decode step
of Llama-2-70B at TP2 on A100 from the measurements (80 layers of linear operators and
decode attention, 160 all-reduces of batch x 8192 x 2 bytes, the engine's CPU work for
Llama-2-70B) and compares it with `CostModel(...).breakdown()`, without the LM head and the
KV write, which the measurements do not cover.

Usage: python benchmarks/calibration_error.py [--profiles ../shared/profiles] [--markdown]
       [--no-record]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

try:
    from benchmarks._common import record
except ImportError:  # run as a script from benchmarks/
    from _common import record  # type: ignore[no-redef]

from kvpager.sim.cost_model import CostModel, parse_calibration
from kvpager.sim.cost_model import profiles as prof
from kvpager.sim.cost_model.fit import dims_of, load_profiles
from kvpager.sim.cost_model.from_profiles import profile_calibration
from kvpager.sim.presets import get_gpu

GPUS = ("A100-80GB", "H100-80GB")
DEFAULTS = {f.name: f.default for f in fields(CostModel)}


def roofline_layer(row: prof.LinearRow, gpu: str) -> float:
    spec = get_gpu(gpu)
    weights = sum(k * n for k, n in dims_of(row.shape, row.tp).gemms())
    compute = 2 * weights * row.tokens / (spec.fp16_flops * DEFAULTS["flops_efficiency"])
    stream = 2 * weights / (spec.hbm_bytes_per_s * DEFAULTS["bandwidth_efficiency"])
    return max(compute, stream)


def fitted_layer(fit, row: prof.LinearRow) -> float:
    ops = [op for op in row.seconds if op in prof.ELEMENTWISE_OPS]
    return float(fit.layer_seconds(dims_of(row.shape, row.tp), np.array([row.tokens]),
                                   ops)[0])


def summary(errors: list[float]) -> dict:
    e = np.asarray(errors)
    return {"mean_abs_pct": round(float(np.mean(np.abs(e))) * 100, 1),
            "median_pct": round(float(np.median(e)) * 100, 1),
            "max_abs_pct": round(float(np.max(np.abs(e))) * 100, 1),
            "within_10pct": round(float(np.mean(np.abs(e) <= 0.10)), 3)}


def gpu_fit(profiles: Path, gpu: str, exclude: tuple[str, ...] = ()):
    doc = profile_calibration(profiles, gpu, exclude=exclude)
    return parse_calibration(doc, f"<{gpu} fit>")


def linear_errors(profiles: Path, gpu: str) -> dict:
    rows_by_model = load_profiles(profiles, gpu).linear
    full = gpu_fit(profiles, gpu).gpu_fit
    out = {}
    for model, rows in rows_by_model.items():
        held = gpu_fit(profiles, gpu, (model,)).gpu_fit
        out[model] = {
            "rows": len(rows),
            "roofline": summary([roofline_layer(r, gpu) / r.total - 1 for r in rows]),
            "in_sample": summary([fitted_layer(full, r) / r.total - 1 for r in rows]),
            "held_out": summary([fitted_layer(held, r) / r.total - 1 for r in rows]),
        }
    return out


def _interp_log(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    return float(np.exp(np.interp(np.log(x), np.log(xs), np.log(ys))))


def decode_composition(profiles: Path) -> dict:
    """Llama-2-70B, TP2, A100: measured composition vs the calibrated and roofline models."""
    root = prof.profile_root(profiles)
    model, gpu, tp, layers, hidden = "meta-llama/Llama-2-70b-hf", "A100-80GB", 2, 80, 8192
    ps = load_profiles(profiles, gpu)
    linear = {r.tokens: r.total for r in ps.linear[model] if r.tp == tp}
    attn = {(r.batch, r.context): r.seconds for r in ps.decode}
    ar = [(r.size_bytes, r.seconds) for r in ps.allreduce if r.workers == tp]
    sizes = np.array(sorted({s for s, _ in ar}), float)
    ar_med = np.array([np.median([t for s2, t in ar if s2 == s]) for s in sizes])
    cpu = sorted((r.batch, r.seconds) for r in prof.read_cpu(
        root / "legacy" / "a100" / "cpu_overheads.csv") if r.model == model)
    cpu_b, cpu_t = np.array([b for b, _ in cpu], float), np.array([t for _, t in cpu])
    fits = {"calibrated (in-sample)": gpu_fit(profiles, gpu),
            "calibrated (Llama-2-70B held out)": gpu_fit(profiles, gpu, (model,)),
            "roofline": None}
    points = []
    for batch in (1, 2, 4, 8, 16, 32, 64, 96, 128):
        for context in (512, 1024, 2048, 4032):
            measured = layers * (linear[batch] + attn[batch, context]) + 2 * layers * \
                _interp_log(sizes, ar_med, batch * hidden * 2) + float(
                    np.interp(batch, cpu_b, cpu_t))
            point = {"batch": batch, "context": context, "measured_s": measured}
            for name, cal in fits.items():
                cost = CostModel("Llama-2-70B", gpu, tp=tp, calibration=cal)
                b = cost.breakdown(0, 0, batch, batch * context)
                head = 0.0
                if cal is not None:
                    head = float(cal.gpu_fit.head_seconds(hidden, 32000 // tp, batch))
                point[name] = b.total_s - b.kv_write_s - head
            points.append(point)
    return {"points": points,
            "summary": {name: summary([p[name] / p["measured_s"] - 1 for p in points])
                        for name in fits}}


def markdown(results: dict) -> str:
    lines = ["| GPU | model | roofline mean abs. (median) | calibrated in-sample | "
             "calibrated held out |", "|---|---|---:|---:|---:|"]
    for gpu, models in results["linear"].items():
        for model, r in models.items():
            cells = [f"{r[k]['mean_abs_pct']:.1f}% ({r[k]['median_pct']:+.1f}%)"
                     for k in ("roofline", "in_sample", "held_out")]
            lines.append(f"| {gpu} | {model.split('/')[-1]} | " + " | ".join(cells) + " |")
    lines += ["", "| Llama-2-70B TP2 A100 decode step, batch 1-128, context 512-4032 | "
              "mean abs. | median | max abs. |", "|---|---:|---:|---:|"]
    for name, s in results["decode_composition"]["summary"].items():
        lines.append(f"| {name} | {s['mean_abs_pct']:.1f}% | {s['median_pct']:+.1f}% | "
                     f"{s['max_abs_pct']:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=Path("../shared/profiles"))
    parser.add_argument("--markdown", action="store_true", help="print the docs tables")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    results = {"linear": {gpu: linear_errors(args.profiles, gpu) for gpu in GPUS},
               "decode_composition": decode_composition(args.profiles)}
    print(markdown(results) if args.markdown else json.dumps(
        {k: v for k, v in results.items() if k != "decode_composition"}
        | {"decode_composition": results["decode_composition"]["summary"]}, indent=1))
    if not args.no_record:
        print("recorded", record("calibration_error", results))


if __name__ == "__main__":
    main()
