"""The first two steps: what machine this is, and the CUDA extension built from scratch.

The build runs in a child process with a timeout taken from the budget, so a build that
cannot finish in time is stopped and recorded instead of eating the whole lease; the
parent then loads the finished build from the same cache directory. When the build fails
or is skipped, `KVPAGER_DISABLE_CUDA=1` is set for the rest of the run so no later step
starts a build of its own in-process (which no timeout could stop).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvpager.verify.runner import FAIL, PASS, Context, StepSkipped

#: Seconds kept back after the build for the steps that make it worth having (the covering
#: part of the attention sample, the cache ops, a first look at speed). The build comes
#: first in priority, so it does not wait for the whole plan's reserve.
BUILD_RESERVE_S = 120.0


def _command(cmd: list[str], timeout: float = 30.0) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    return (proc.stdout + proc.stderr).strip()


def run_group(cmd: list[str], log, env: dict[str, str], timeout: float) -> int | None:
    """Run `cmd` in its own process group, output to `log`; its exit status, or None after
    `timeout` seconds. On a timeout or an interruption the whole group is killed: nvcc and
    ninja below a killed build would otherwise go on using the cores."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sanitizer_path() -> str | None:
    """compute-sanitizer beside nvcc (CUDA_HOME, /usr/local/cuda) or on PATH."""
    for root in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "compute-sanitizer").is_file():
            return str(Path(root) / "bin" / "compute-sanitizer")
    return shutil.which("compute-sanitizer")


def environment_step(ctx: Context) -> dict:
    """GPU, driver, toolkit and library versions, recorded before anything can fail."""
    import importlib.util

    import torch

    from kvpager.bench.record import environment

    env = environment(gpu=torch.cuda.is_available())
    from kvpager.backends.cuda.build import find_nvcc

    nvcc = find_nvcc()
    env.update({
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "nvcc": nvcc,
        "nvcc_version": _command([nvcc, "--version"]).splitlines()[-1] if nvcc else None,
        "nvidia_smi": _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                "clocks.max.memory", "--format=csv,noheader"]),
        "compute_sanitizer": sanitizer_path(),
        "transformers": importlib.util.find_spec("transformers") is not None,
        "pytest": importlib.util.find_spec("pytest") is not None,
    })
    if not ctx.dry_run and not torch.cuda.is_available():
        return {"status": FAIL, "environment": env,
                "note": "torch sees no CUDA GPU: nothing on the GPU can be verified"}
    return {"status": PASS, "environment": env,
            "note": env.get("gpu") or f"CPU ({env.get('processor')})"}


def build_step(ctx: Context) -> dict:
    """Build the extension from scratch in a child process, timed, with MAX_JOBS = cores."""
    from kvpager.backends.cuda import build

    if ctx.dry_run:
        os.environ[build.ENV_DISABLE] = "1"
        raise StepSkipped("dry run: no CUDA build (the cuda backend is left out)")
    nvcc_problem = build.nvcc_problem()
    if nvcc_problem:
        os.environ[build.ENV_DISABLE] = "1"
        raise StepSkipped(nvcc_problem)
    cache = Path(ctx.state["build_dir"])
    os.environ[build.ENV_CACHE] = str(cache)  # the parent loads what the child built
    try:
        cached = build.prebuilt_library(build.resolve_arch_flags()) is not None
    except build.CudaBuildError:
        cached = None
    jobs = str(os.cpu_count() or 4)
    env = {**os.environ, build.ENV_CACHE: str(cache), "MAX_JOBS": jobs, build.ENV_VERBOSE: "1"}
    env.pop(build.ENV_DISABLE, None)
    timeout = max(30.0, ctx.budget.left() - BUILD_RESERVE_S)
    log = ctx.out / "build.log"
    code = ("from kvpager.backends.cuda import build; m = build.load_extension(); "
            "print('built', m.__file__)")
    start = time.monotonic()
    with log.open("w") as fh:
        rc = run_group([sys.executable, "-c", code], fh, env, timeout)
    seconds = round(time.monotonic() - start, 1)
    tail = log.read_text(errors="replace").strip().splitlines()[-8:]
    result = {"seconds_build": seconds, "max_jobs": jobs, "cache": str(cache),
              "built_before": cached,  # True: an earlier run's build was reused, not timed
              "log": str(log), "log_tail": tail}
    if rc != 0:
        os.environ[build.ENV_DISABLE] = "1"
        why = f"timed out after {timeout:.0f}s" if rc is None else f"exit status {rc}"
        return {"status": FAIL, **result, "note": f"build {why}; cuda backend left out"}
    os.environ.pop(build.ENV_DISABLE, None)
    module = build.load_extension()  # from the cache the child filled: no compile
    ctx.state["cuda_built"] = True
    return {"status": PASS, **result, "module": module.__file__,
            "note": f"{'loaded an earlier build' if cached else 'built'} in {seconds}s with "
                    f"{jobs} jobs"}


def kernel_backends(ctx: Context) -> tuple[list[str], dict[str, str]]:
    """(kernel backends the correctness steps check against the reference here, and why
    each other one is left out)."""
    import torch

    from kvpager import backends

    usable, excluded = [], {}
    for name in ("triton", "cuda"):
        reason = backends.status().get(name)
        if reason is None:
            reason = backends.get(name).device_reason(torch.device(ctx.device))
        if reason is None:
            usable.append(name)
        else:
            excluded[name] = reason
    return usable, excluded


__all__ = ["build_step", "environment_step", "kernel_backends", "sanitizer_path"]
