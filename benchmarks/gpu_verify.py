"""Verify the GPU code paths in one command that fits a short GPU lease.

    PYTHONPATH=. python3 benchmarks/gpu_verify.py --out DIR [--budget-s 480] [--dry-run]
                                                  [--steps a,b,...] [--build-dir PATH]

Runs, in priority order and within the budget: environment, CUDA build from scratch,
correctness of both kernel backends against the reference (a covering sample of the kernel
matrix with NaN in unused cache slots, cache ops, merge, sparse index ops, a cache of more
than 2^31 elements, the engine against transformers, compute-sanitizer), then the speed
targets and the simulator's calibration file. Every case and step is appended to
DIR/results.jsonl as it finishes; DIR/summary.json and a short summary on stdout come at
the end (also after SIGTERM). A step that errors is recorded and the run goes on; a step
whose estimate no longer fits in the budget is skipped with the reason.

--dry-run runs the same plan on the CPU at tiny sizes (reference and Triton's interpreter,
no build, no speed targets judged) so that CI checks this script. Exit status: 0 when no
step failed, 1 when one did, 2 for bad arguments, 128 + N after signal N.
See docs/gpu_checklist.md for how to read the results.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or not 10 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be between 10 and 86400 seconds, got {text!r}")
    return value


def _check_out(parser: argparse.ArgumentParser, out: Path) -> Path:
    """DIR must be a directory we can create and write; checked before any work."""
    if out.exists() and not out.is_dir():
        parser.error(f"--out: {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        parser.error(f"--out: cannot write to {out}: {exc.strerror or exc}")
    return out.resolve()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_verify.py", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="directory for results.jsonl, summary.json and logs")
    p.add_argument("--budget-s", type=_budget, default=None,
                   help="seconds the whole run may take (default 480; 150 with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="the same plan on the CPU at tiny sizes (checks the script)")
    p.add_argument("--steps", default=None,
                   help="comma-separated subset of the plan's steps, e.g. to finish a run "
                        "cut short (without 'build', an earlier build in --build-dir is "
                        "used, or the cuda backend is left out)")
    p.add_argument("--build-dir", type=Path, default=None,
                   help="CUDA build cache (default: $KVPAGER_CUDA_CACHE or a folder under "
                        "the temp dir; kept out of --out so logs stay small)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from kvpager.verify.plan import DEFAULT_BUDGET_S, DEFAULT_DRY_BUDGET_S
    from kvpager.verify.runner import human_summary
    from kvpager.verify.supervisor import load_plan, supervise

    only = None
    if args.steps is not None:
        names = [s.name for s in load_plan()]
        only = [n.strip() for n in args.steps.split(",") if n.strip()]
        unknown = [n for n in only if n not in names]
        if unknown or not only:
            parser.error(f"--steps: unknown {unknown or 'empty list'}; choose from "
                         f"{','.join(names)}")
    build_dir = args.build_dir or Path(os.environ.get("KVPAGER_CUDA_CACHE") or
                                       Path(tempfile.gettempdir()) / "kvpager-verify-cuda")
    if build_dir.exists() and not build_dir.is_dir():
        parser.error(f"--build-dir: {build_dir} exists and is not a directory")
    out = _check_out(parser, args.out)

    budget = args.budget_s or (DEFAULT_DRY_BUDGET_S if args.dry_run else DEFAULT_BUDGET_S)
    summary = supervise(out, budget, args.dry_run, build_dir.resolve(),
                        say=lambda line: print(line, flush=True), only=only)
    print("\n".join(human_summary(summary)), flush=True)
    return summary["exit"]


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
