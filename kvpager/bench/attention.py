"""`kvpager bench attention`: decode paged attention per backend, against SDPA and a copy.

For every shape of the grid (batch x context x kv heads x dtype, see `attention_shapes`)
and every backend and version (v1, v2) asked for, one call of `kvpager.ops` is timed (see
`kvpager.bench.timing`: CUDA events, warm-up, median of repeats, L2 flushed, CUDA-graph
replay where the backend allows it) and reported as microseconds per call and GB/s of
(K + V read + query read + output written). In the same run, per shape:

- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` over the same keys and values
  stored contiguously as [batch, kv_heads, context, head_size] in the query dtype (FP8
  caches dequantized first, so it reads twice the bytes): the dense baseline;
- `copy`: a device-to-device copy of the K and V caches' bytes, the bandwidth ceiling;
  its GB/s counts bytes read + written, the most the memory system moves per second.

With `verify` (default) every backend's output is compared with SDPA's, so a figure is
never recorded for a kernel that computes something else. `--sweep` also times the Triton
kernels' tile / warps / stages alternatives (`kvpager.backends.triton.attention.tuned`) on a
few shapes. Results go to a JSON file with machine, GPU, versions and the command line;
`--calibration PATH` also writes the simulator's calibration file (`calibration`).

The CPU is supported for tiny shapes (tests, smoke runs); no CPU figure means anything
about GPU speed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kvpager.bench.attention_shapes import DTYPES, DecodeShape
from kvpager.bench.calibration import VERSION_RULES
from kvpager.bench.runner import measure_shape, summarize, sweep_triton

PRESETS: dict[str, dict] = {
    "full": {},
    "targets": {"batches": (8, 32, 128, 256), "contexts": (4096, 8192, 32768)},
    "quick": {"batches": (1, 32), "contexts": (512, 4096), "dtypes": ("float16",),
              "repeats": 10},
    "tiny": {"batches": (1, 3), "contexts": (16, 40), "num_heads": 4, "kv_heads": (2, 4),
             "head_size": 32, "dtypes": ("float32",), "warmup": 1, "repeats": 2},
}
VERSIONS = ("v1", "v2")


@dataclass(frozen=True)
class AttentionBenchConfig:
    """What to measure. `backends` None: the kernel backends available for `device`
    (triton and cuda on a GPU, the reference on the CPU)."""

    batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    contexts: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768)
    num_heads: int = 32
    kv_heads: tuple[int, ...] = (8, 32)
    head_size: int = 128
    block_size: int = 16
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "fp8")
    backends: tuple[str, ...] | None = None
    versions: tuple[str, ...] = VERSIONS
    device: str | None = None
    warmup: int = 3
    repeats: int = 20
    baselines: bool = True
    verify: bool = True
    max_memory_gb: float | None = None
    seed: int = 0
    sweep: bool = False
    sweep_shapes: tuple[tuple[int, int], ...] = ((1, 4096), (32, 4096), (8, 32768))

    def __post_init__(self) -> None:
        for name in ("batches", "contexts", "kv_heads"):
            values = getattr(self, name)
            if not values or any(type(v) is not int or v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got "
                                 f"{values!r}")
        for name in ("num_heads", "head_size", "block_size", "repeats"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if type(self.warmup) is not int or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        bad = [k for k in self.kv_heads if self.num_heads % k]
        if bad:
            raise ValueError(f"kv_heads {bad} do not divide num_heads {self.num_heads}")
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or not self.dtypes:
            raise ValueError(f"dtypes must be among {', '.join(DTYPES)}, got {unknown or '[]'}")
        if not self.versions or any(v not in VERSIONS for v in self.versions):
            raise ValueError(f"versions must be among {VERSIONS}, got {self.versions!r}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ValueError(f"max_memory_gb must be > 0, got {self.max_memory_gb!r}")

    def shapes(self) -> list[DecodeShape]:
        return [DecodeShape(b, c, self.num_heads, k, self.head_size, self.block_size, d)
                for d in self.dtypes for k in self.kv_heads for b in self.batches
                for c in self.contexts]


def _default_backends(device: str) -> tuple[str, ...]:
    from kvpager import backends as registry

    if device == "cpu":
        return ("reference",)
    return tuple(name for name in ("triton", "cuda") if name in registry.available())


def run_attention_benchmark(
    config: AttentionBenchConfig, progress: Callable[[str], None] | None = None
) -> dict:
    """Measure every shape of `config`; returns the `results` part of the record."""
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    backends = config.backends or _default_backends(device)
    from kvpager import backends as registry

    for name in backends:  # names an unknown or unusable backend before any work
        registry.resolve(name, torch.device(device))
    say = progress or (lambda line: None)
    points: list[dict] = []
    baselines: list[dict] = []
    skipped: list[dict] = []
    for shape in config.shapes():
        measured = measure_shape(shape, device, backends, config, say)
        if "skipped" in measured:
            skipped.append({**shape.as_dict(), "reason": measured["skipped"]})
            continue
        points += measured["points"]
        baselines += measured["baselines"]
    sweep = sweep_triton(config, device, say) if config.sweep and "triton" in backends else []
    return {
        "config": {**asdict(config), "device": device, "backends": list(backends)},
        "points": points,
        "baselines": baselines,
        "skipped": skipped,
        "sweep": sweep,
        "summary": summarize(points, baselines) if device == "cuda" else {},
    }


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvpager bench attention", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="a grid to start from (options below override it)")
    p.add_argument("--batches", type=_ints, help="e.g. 1,8,32,64,128,256")
    p.add_argument("--contexts", type=_ints, help="tokens per sequence, e.g. 512,4096,32768")
    p.add_argument("--num-heads", type=int, help="query heads (default 32)")
    p.add_argument("--kv-heads", type=_ints, help="kv heads, e.g. 8,32")
    p.add_argument("--head-size", type=int)
    p.add_argument("--block-size", type=int)
    p.add_argument("--dtypes", type=_names, help=f"among {', '.join(DTYPES)}; fp8 = float16 "
                                                 "queries over an fp8_e4m3 cache")
    p.add_argument("--backends", type=_names, help="reference,triton,cuda (default: the "
                                                   "kernel backends available here)")
    p.add_argument("--versions", type=_names, help="v1,v2")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--no-baselines", action="store_true", help="skip SDPA and the copy")
    p.add_argument("--no-verify", action="store_true", help="skip comparing with SDPA")
    p.add_argument("--max-memory-gb", type=float, help="skip shapes whose buffers would "
                                                       "need more (default: 45%% of free)")
    p.add_argument("--sweep", action="store_true", help="also time Triton tile/warps/stages")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, help="result file (default: "
                                            "benchmarks/results/attention_<device>.json)")
    p.add_argument("--no-record", action="store_true", help="print only, write no file")
    p.add_argument("--calibration", type=Path, help="also write a simulator calibration file")
    p.add_argument("--calibration-backend", help="backend to calibrate with (default: the "
                                                 "first measured)")
    p.add_argument("--calibration-dtype", help="default: the first of --dtypes")
    p.add_argument("--calibration-kv-heads", type=int, help="default: the first of --kv-heads")
    p.add_argument("--calibration-version", choices=VERSION_RULES, default="auto")
    p.add_argument("--calibration-gpu", help="simulator GPU preset (default: from the device "
                                             "name)")
    p.add_argument("--calibration-model", help="simulator model preset the heads belong to")
    return p


def config_from_args(args: argparse.Namespace) -> AttentionBenchConfig:
    values = dict(PRESETS[args.preset])
    for name in ("batches", "contexts", "num_heads", "kv_heads", "head_size", "block_size",
                 "dtypes", "backends", "versions", "device", "warmup", "repeats",
                 "max_memory_gb", "seed"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values["baselines"] = not args.no_baselines
    values["verify"] = not args.no_verify and not args.no_baselines
    values["sweep"] = args.sweep
    return AttentionBenchConfig(**values)


def default_out(results: dict, environment: dict) -> Path:
    name = environment.get("gpu") if results["config"]["device"] == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "device"
    return Path("benchmarks") / "results" / f"attention_{slug}.json"


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> int:
    """Command-line entry (`kvpager bench attention`, `benchmarks/bench_attention.py`).

    Exit status 0 on success, 2 on bad arguments (argparse's convention, with a message
    naming the option).
    """
    import shlex

    from kvpager.bench.calibration import calibration_document, gpu_preset, write_calibration
    from kvpager.bench.record import environment, write_record

    parser = build_parser()
    args = parser.parse_args(argv)
    command = None if argv is None else shlex.join(["kvpager", "bench", "attention", *argv])
    try:
        config = config_from_args(args)
        if args.calibration is not None:
            _check_calibration_args(args, config)
        results = run_attention_benchmark(config, lambda line: print(line, file=sys.stderr,
                                                                      flush=True))
    except ValueError as exc:  # bad options, or a backend that cannot run here
        parser.error(str(exc))
    env = environment()
    if not args.no_record:
        out = args.out or (results_dir / default_out(results, env).name if results_dir
                           else default_out(results, env))
        print(f"wrote {write_record(out, 'attention', results, command)}", file=sys.stderr)
    if args.calibration is not None:
        backend = args.calibration_backend or results["config"]["backends"][0]
        doc = calibration_document(
            results["points"], backend=backend,
            dtype=args.calibration_dtype or config.dtypes[0],
            num_kv_heads=args.calibration_kv_heads or config.kv_heads[0],
            version=args.calibration_version,
            gpu=args.calibration_gpu or gpu_preset(env.get("gpu"), env.get("gpu_memory_bytes")),
            model=args.calibration_model, tp=1 if args.calibration_model else None)
        print(f"wrote {write_calibration(args.calibration, doc)}", file=sys.stderr)
    for line in _summary_lines(results):
        print(line)
    return 0


def _check_calibration_args(args: argparse.Namespace, config: AttentionBenchConfig) -> None:
    """Fail before measuring when the calibration asks for something not measured."""
    if args.calibration_dtype is not None and args.calibration_dtype not in config.dtypes:
        raise ValueError(f"--calibration-dtype {args.calibration_dtype!r} is not among the "
                         f"measured --dtypes {', '.join(config.dtypes)}")
    kv = args.calibration_kv_heads
    if kv is not None and kv not in config.kv_heads:
        raise ValueError(f"--calibration-kv-heads {kv} is not among the measured --kv-heads "
                         f"{', '.join(map(str, config.kv_heads))}")
    if args.calibration_model is not None:
        from kvpager.sim.presets import get_model

        model = get_model(args.calibration_model)
        heads = (config.num_heads, kv or config.kv_heads[0], config.head_size)
        if (model.num_heads, model.num_kv_heads, model.head_size) != heads:
            raise ValueError(
                f"--calibration-model {model.name} has heads/kv heads/head size "
                f"{model.num_heads}/{model.num_kv_heads}/{model.head_size}, but the "
                f"calibration would measure {heads[0]}/{heads[1]}/{heads[2]} (tp 1)")


def _summary_lines(results: dict) -> list[str]:
    lines = []
    copies = {(b["batch"], b["context"], b["num_kv_heads"], b["dtype_name"]): b
              for b in results["baselines"] if b["kind"] == "copy"}
    for p in results["points"]:
        key = (p["batch"], p["context"], p["num_kv_heads"], p["dtype_name"])
        ceiling = copies.get(key, {}).get("gb_per_s")
        share = f" ({p['gb_per_s'] / ceiling:.0%} of copy)" if ceiling else ""
        lines.append(f"{p['backend']:>9} {p['version']} {p['dtype_name']:>8} "
                     f"kv{p['num_kv_heads']:<3} b{p['batch']:<4} ctx{p['context']:<6} "
                     f"{p['us_per_call']:>10.1f} us {p['gb_per_s']:>8.1f} GB/s{share}")
    return lines


__all__ = ["PRESETS", "AttentionBenchConfig", "build_parser", "main",
           "run_attention_benchmark"]
