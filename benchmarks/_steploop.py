"""One in-process run of the 70B TP2 step-loop scenario, in the checkout given as cwd.

Run by `bench_simulator.py --steploop` as `python _steploop.py TRACE` with cwd = a checkout's
root, so that the checkout's own `kvpager` is imported (old commits included: it uses only
`kvpager.sim.SimConfig`, `simulate` and `kvpager.sim.traces.load_trace`). Prints JSON.
"""

import json
import sys
import time

sys.path.insert(0, ".")
import kvpager
from kvpager.sim import SimConfig, simulate
from kvpager.sim.traces import load_trace

trace = load_trace(sys.argv[1])
options = dict(model="llama-2-70b", gpu="a100-80gb", tp=2, preemption="recompute",
               chunked_prefill=False, prefix_caching=False, max_num_batched_tokens=4096,
               max_num_seqs=128, gpu_memory_utilization=0.9)
if "cost_model" in SimConfig.__dataclass_fields__:
    # Since the first-look issue the default is the shipped calibration; old commits had only
    # the roofline. Compare like with like: the same step-time model on both sides.
    options["cost_model"] = "roofline"
if "max_model_len" in SimConfig.__dataclass_fields__:
    # Since the structure issue a request longer than the model's context (4,096) is refused;
    # old commits served it when its prompt fit max_num_batched_tokens. Raise the limit so that
    # both sides admit, run and reject exactly the same requests (the same steps, preemptions
    # and batches): a per-step comparison of the same work.
    options["max_model_len"] = 16384
cfg = SimConfig(**options)
start, cpu_start = time.perf_counter(), time.process_time()
metrics = simulate(trace, cfg, strategies=["paged"])
wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
s = metrics["strategies"]["paged"]
print(json.dumps({"kvpager": kvpager.__file__, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                  "simulation_wall_s": round(s["time"]["wall_s"], 3),
                  "steps": s["time"]["steps"],
                  "us_per_step": round(s["time"]["wall_s"] / s["time"]["steps"] * 1e6, 1),
                  "requests": s["requests"], "preemptions": s["preemptions"]}))
