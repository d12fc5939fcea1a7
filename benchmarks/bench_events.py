"""What KV events cost the decode step: 1,024 sequences, without and with a subscriber,
against the tree before events existed.

Scenarios (from `kvpager.bench.manager`, block size 16, prefix caching on):

- decode-1024: the plain batch decode step (`append_slots_batch`), tokens not named, so no
  block is registered and no event can fire;
- decode-named-1024: the decode step of an engine that names its tokens, committed with
  `mark_computed_batch`: about one row in 16 fills a block per step, which is hashed and
  registered (a `BlockStored` per filled block while someone subscribes);
- prefix-1024: bench_manager's prefix-heavy server (4 arrivals per step hitting shared
  system prompts, then the named decode step).

Modes: `none` (no events sink: the manager as before), `bus` (a `KVEventBus` nobody
subscribes to), `subscribed` (a bus with one subscriber that counts events). `--before
PATH` also times mode `none` on another checkout (the tree before this change). Each
(tree, scenario, mode) runs in its own process, rounds interleaved, so the machine's load
drifts over all of them alike; a figure is the best (and median) of per-step means.

Usage: python benchmarks/bench_events.py [--before PATH [--before-label TEXT]] [--rounds N]
       [--steps N] [--repeats R] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("decode-1024", "decode-named-1024", "prefix-1024")
MODES = ("none", "bus", "subscribed")


def worker(scenario: str, mode: str, steps: int, repeats: int) -> dict:
    """Time one scenario in this process (kvpager from PYTHONPATH)."""
    import numpy as np

    import kvpager.bench.manager as bm

    counted = [0]
    if mode != "none":
        from kvpager.events import KVEventBus

        bus = KVEventBus()
        if mode == "subscribed":
            bus.subscribe(lambda event: counted.__setitem__(0, counted[0] + 1))
        cls = bm.KVCacheManager
        bm.KVCacheManager = lambda **kw: cls(events=bus, **kw)  # type: ignore[assignment,misc]  # patch the scenarios' constructor
    timer = bm.time_steps

    def timed(step, steps: int, repeats: int) -> dict:  # count only the timed steps' events
        counted[0] = 0
        return timer(step, steps, repeats)

    bm.time_steps = timed

    if scenario == "decode-1024":
        result = bm.bench_decode(1024, steps, repeats)
    elif scenario == "prefix-1024":
        result = bm.bench_prefix(1024, steps, repeats)
    else:
        m = bm.make_manager(1024, steps * (repeats + 1))
        rng = np.random.default_rng(0)
        for i in range(1024):
            tokens = rng.integers(0, 32000, int(rng.integers(16, 512))).tolist()
            m.allocate(i, token_ids=tokens)
            m.mark_computed(i, len(tokens))
        rows = m.rows_of(range(1024))
        decoded = rng.integers(0, 32000, (steps * (repeats + 1), 1024))
        turn = [0]

        def step() -> None:
            m.append_slots_batch(rows, token_ids=decoded[turn[0]])
            m.mark_computed_batch(rows)
            turn[0] += 1

        for _ in range(steps // 5):  # warm up
            step()
        result = bm.time_steps(step, steps, repeats)
    result["events"] = counted[0]
    return result


def run_worker(tree: Path, scenario: str, mode: str, steps: int, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", scenario, mode, "--steps", str(steps),
         "--repeats", str(repeats)], cwd=tree, env=env, capture_output=True, text=True,
        check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=None,
                        help="a checkout without events, timed in mode none")
    parser.add_argument("--before-label", default=None,
                        help="what the --before checkout is (a commit), for the record")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("SCENARIO", "MODE"))
    args = parser.parse_args()
    if args.worker:
        scenario, mode = args.worker
        print(json.dumps(worker(scenario, mode, args.steps, args.repeats)))
        return
    for name in ("rounds", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.before is not None and not (args.before / "kvpager").is_dir():
        parser.error(f"--before: {args.before} has no kvpager package")
    runs = [("after", ROOT, mode) for mode in MODES]
    if args.before is not None:
        runs.insert(0, ("before", args.before.resolve(), "none"))
    samples: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for scenario in SCENARIOS:
            for label, tree, mode in runs:
                got = run_worker(tree, scenario, mode, args.steps, args.repeats)
                samples.setdefault(f"{scenario}/{label}/{mode}", []).append(got)
    results: dict = {"block_size": 16, "rounds": args.rounds, "steps": args.steps,
                     "repeats": args.repeats}
    if args.before is not None:
        results["before"] = args.before_label or str(args.before)
    for key, runs_of in samples.items():
        results[key] = {
            "us_per_step_best": min(g["us_per_step_best"] for g in runs_of),
            "us_per_step_median": round(statistics.median(g["us_per_step_median"]
                                                          for g in runs_of), 1),
            "events_per_step": round(runs_of[0]["events"] / (args.steps * args.repeats), 2),
        }
        print(f"{key:>36}: {results[key]}")
    if not args.no_record:
        sys.path.insert(0, str(ROOT))
        from benchmarks._common import record

        print("recorded", record("events", results))


if __name__ == "__main__":
    main()
