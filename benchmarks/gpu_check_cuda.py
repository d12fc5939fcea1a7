"""Build and verify the CUDA backend on a GPU machine; every step logs to a directory.

    python benchmarks/gpu_check_cuda.py LOGDIR [--arch 9.0a] [--steps build,gpu-tests,...]
                                               [--fresh-build]

Steps (each writes LOGDIR/<step>.log; LOGDIR/summary.json collects the outcomes):
  env        nvidia-smi, nvcc, torch and CUDA versions
  build      the JIT build into LOGDIR/build-cache, timed (from scratch with --fresh-build;
             later runs with the same LOGDIR reuse it, so steps can run as separate commands
             that each fit a 10-minute limit)
  compile    tests/backends/test_cuda_compile.py (nvcc -c of every .cu for sm_80 + sm_90a)
  gpu-tests  pytest -m gpu on tests/backends/test_cuda_*.py (junit XML beside the log)
  sanitizer  compute-sanitizer memcheck, racecheck, synccheck and initcheck on a small case
             that runs every kernel once (torch's caching allocator off, so out-of-bounds
             accesses hit the end of a real allocation)
  timing     decode latency of v1 / v2 (cuda and reference) on two batch shapes, recorded in
             summary.json as measurements only

Exit status 0 when every step that ran passed; summary.json is merged across runs that share
LOGDIR, so running the steps one command at a time still leaves one summary. The small case
is this same file run with `--case`; it uses the extension already built in
LOGDIR/build-cache.

On a machine with a 10-minute limit per command, for example:
    python benchmarks/gpu_check_cuda.py /tmp/cuda-logs --fresh-build --steps env,build,compile
    python benchmarks/gpu_check_cuda.py /tmp/cuda-logs --steps gpu-tests
    python benchmarks/gpu_check_cuda.py /tmp/cuda-logs --steps sanitizer,timing
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from kvpager.verify.sanitizer import DONE

REPO = Path(__file__).resolve().parents[1]
STEPS = ("env", "build", "compile", "gpu-tests", "sanitizer", "timing")


def _run(cmd: list[str], log: Path, env: dict[str, str], timeout: float | None = None
         ) -> tuple[int, float]:
    start = time.monotonic()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                  timeout=timeout, check=False)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n!! timed out after {timeout}s\n")
            rc = 124
    return rc, time.monotonic() - start


def _junit_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def _sanitizer() -> str | None:
    for candidate in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        path = Path(candidate) / "bin" / "compute-sanitizer"
        if candidate and path.is_file():
            return str(path)
    return shutil.which("compute-sanitizer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--arch", default=os.environ.get("KVPAGER_CUDA_ARCH", ""),
                        help="KVPAGER_CUDA_ARCH for the build (default: the device's)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)} (build always runs)")
    parser.add_argument("--fresh-build", action="store_true",
                        help="delete LOGDIR/build-cache first so the build time is from scratch")
    parser.add_argument("--sanitizer-timeout", type=float, default=240.0,
                        help="seconds per compute-sanitizer tool")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return small_case()
    if args.timing:
        print(json.dumps(timing()))
        return 0

    steps = {x.strip() for x in args.steps.split(",") if x.strip()}
    unknown = steps - set(STEPS)
    if unknown:
        parser.error(f"--steps: unknown {sorted(unknown)}; choose from {','.join(STEPS)}")
    logdir: Path = args.logdir.resolve()
    logdir.mkdir(parents=True, exist_ok=True)
    cache = logdir / "build-cache"
    if args.fresh_build:
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "KVPAGER_CUDA_CACHE": str(cache), "PYTHONPATH": str(REPO),
           "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 4))}
    env.pop("KVPAGER_DISABLE_CUDA", None)
    if args.arch:
        env["KVPAGER_CUDA_ARCH"] = args.arch
    summary_path = logdir / "summary.json"
    summary: dict[str, object] = (
        json.loads(summary_path.read_text()) if summary_path.exists() else {}
    )
    summary["logdir"] = str(logdir)
    ok = True

    if "env" in steps:
        _env_report(logdir / "env.log", env)
    ok &= _steps(steps, args, logdir, env, summary)
    summary["ok"] = bool(ok) and all(
        not isinstance(v, dict) or v.get("rc", 0) == 0 for v in summary.values()
    )
    summary_path.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


def _env_report(log: Path, env: dict[str, str]) -> None:
    with log.open("w") as fh:
        for cmd in (["nvidia-smi"], ["nvcc", "--version"],
                    [sys.executable, "-c", "import torch, triton; print('torch', torch.__version__,"
                     " 'cuda', torch.version.cuda, 'triton', triton.__version__,"
                     " torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"]):
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            try:
                subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
            except OSError as exc:  # a missing tool is information, not a reason to stop
                fh.write(f"!! {exc}\n")


def _steps(steps: set[str], args: argparse.Namespace, logdir: Path, env: dict[str, str],
           summary: dict[str, object]) -> bool:
    ok = True
    build_cmd = [sys.executable, "-c",
                 "from kvpager.backends.cuda import build; m = build.load_extension(); "
                 "print('built', m.__name__, m.__file__)"]
    # Later steps need the extension: without "build" in --steps it is loaded (normally from
    # the cache) under another name, so the recorded build time stays the real one.
    name = "build" if "build" in steps else "build_reuse"
    rc, seconds = _run(build_cmd, logdir / f"{name}.log", {**env, "KVPAGER_CUDA_VERBOSE": "1"})
    summary[name] = {"rc": rc, "seconds": round(seconds, 1), "max_jobs": env["MAX_JOBS"]}
    if rc != 0:
        print(f"build failed: see {logdir / (name + '.log')}")
        return False

    if "compile" in steps:
        rc, seconds = _run([sys.executable, "-m", "pytest", "tests/backends/test_cuda_compile.py",
                            "-q", "-rs", "-p", "no:cacheprovider"], logdir / "compile.log", env)
        summary["compile"] = {"rc": rc, "seconds": round(seconds, 1)}
        ok &= rc == 0
    if "gpu-tests" in steps:
        xml = logdir / "gpu_tests.xml"
        tests = sorted(str(p.relative_to(REPO))
                       for p in (REPO / "tests" / "backends").glob("test_cuda_*.py"))
        rc, seconds = _run([sys.executable, "-m", "pytest", "-m", "gpu", *tests, "-q", "-rs",
                            "-p", "no:cacheprovider", f"--junitxml={xml}"],
                           logdir / "gpu_tests.log", env)
        summary["gpu_tests"] = {"rc": rc, "seconds": round(seconds, 1), **_junit_counts(xml)}
        ok &= rc == 0

    if "sanitizer" in steps:
        sanitizer = _sanitizer()
        results: dict[str, object] = {}
        if sanitizer is None:
            results["error"] = "compute-sanitizer not found"
            ok = False
        else:
            case_env = {**env, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
            for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
                log = logdir / f"sanitizer_{tool}.log"
                extra = ["--track-unused-memory", "no"] if tool == "initcheck" else []
                rc, seconds = _run([sanitizer, "--tool", tool, "--error-exitcode", "99", *extra,
                                    sys.executable, __file__, str(logdir), "--case"],
                                   log, case_env, timeout=args.sanitizer_timeout)
                text = log.read_text(errors="replace")
                m = re.search(r"ERROR SUMMARY: (\d+) error", text)
                results[tool] = {"rc": rc, "seconds": round(seconds, 1),
                                 "errors": int(m.group(1)) if m else None,
                                 "case_ok": DONE in text}
                ok &= rc == 0
        summary["sanitizer"] = results

    if "timing" in steps:
        rc, _ = _run([sys.executable, __file__, str(logdir), "--timing"], logdir / "timing.log",
                     env)
        if rc == 0:
            lines = (logdir / "timing.log").read_text().strip().splitlines()
            summary["timing"] = json.loads(lines[-1])
        else:
            summary["timing"] = {"rc": rc}
            ok = False
    return ok


# ---- the sanitizer case ----------------------------------------------------------------------

def small_case() -> int:
    """Every kernel family once on small shapes (kvpager.verify.sanitizer's workload)."""
    from kvpager.verify.sanitizer import small_case as run

    run("cuda", "cuda")
    print(DONE)
    return 0


# ---- timing ----------------------------------------------------------------------------------

def _decode_step(ops: object, backend: str, version: int, buffers: dict, common: tuple) -> None:
    if version == 1:
        ops.paged_attention_v1(buffers["out"], *common, backend=backend)
    else:
        ops.paged_attention_v2(buffers["out"], buffers["exp_sums"], buffers["max_logits"],
                               buffers["tmp_out"], *common, backend=backend)


def timing() -> dict[str, object]:
    """Median latency (CUDA events) of one decode step; numbers to record, not claims."""
    import torch

    import kvpager.ops as ops

    results: dict[str, object] = {"device": torch.cuda.get_device_name(0)}
    dev = torch.device("cuda")
    for num_seqs, seq_len in ((64, 2048), (16, 16384)):
        heads, kv_heads, head, bs, dtype = 32, 8, 128, 16, torch.float16
        per_seq = -(-seq_len // bs)
        blocks = num_seqs * per_seq
        parts = -(-seq_len // 512)
        q = torch.randn(num_seqs, heads, head, device=dev).to(dtype)
        common = (
            q,
            torch.randn(blocks, kv_heads, head // 8, bs, 8, device=dev).to(dtype),
            torch.randn(blocks, kv_heads, head, bs, device=dev).to(dtype),
            kv_heads, head ** -0.5,
            torch.randperm(blocks, device=dev).view(num_seqs, per_seq).to(torch.int32),
            torch.full((num_seqs,), seq_len, device=dev, dtype=torch.int32),
            bs, seq_len, None, "auto", 1.0, 1.0,
        )
        buffers = {
            "out": torch.empty_like(q),
            "exp_sums": torch.empty(num_seqs, heads, parts, device=dev),
            "max_logits": torch.empty(num_seqs, heads, parts, device=dev),
            "tmp_out": torch.empty(num_seqs, heads, parts, head, device=dev, dtype=dtype),
        }
        kv_bytes = 2 * num_seqs * seq_len * kv_heads * head * 2
        for backend in ("cuda", "reference"):
            for version in (1, 2):
                key = f"{backend}_v{version}_{num_seqs}x{seq_len}"
                try:
                    _decode_step(ops, backend, version, buffers, common)
                except (ValueError, RuntimeError) as exc:
                    results[key] = f"error: {exc}"
                    continue
                times = []
                for _ in range(30 if backend == "cuda" else 3):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    _decode_step(ops, backend, version, buffers, common)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                ms = sorted(times)[len(times) // 2]
                results[key] = {"median_ms": round(ms, 4), "kv_GBps": round(kv_bytes / ms / 1e6, 1)}
        del common, buffers
        torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    sys.exit(main())
