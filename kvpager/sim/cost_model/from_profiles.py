"""Build a version-2 calibration document (a GPU fit) from operator profiles.

    doc = profile_calibration(Path("../shared/profiles"), "A100-80GB")
    write_json(doc, "a100.json")

This is what `kvpager calibrate from-profiles` runs, and how the calibrations shipped in
`kvpager/sim/cost_model/calibrations/` were made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from kvpager.sim.cost_model.calibration import parse_calibration
from kvpager.sim.cost_model.fit import fit_gpu, load_profiles
from kvpager.sim.cost_model.profiles import PROFILE_GPUS
from kvpager.sim.presets import get_gpu

TOPOLOGIES = ("pairwise_nvlink", "dgx")


def profile_calibration(directory: Path, gpu: str, *, topology: str = "pairwise_nvlink",
                        exclude: Sequence[str] = ()) -> dict:
    """The calibration document of `gpu` fitted to the profiles under `directory`
    (models in `exclude` left out). Raises ProfileError / SpecError on bad input."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"--topology: expected one of {', '.join(TOPOLOGIES)}, got "
                         f"{topology!r}")
    spec = get_gpu(gpu)
    profiles = load_profiles(Path(directory), spec.name, topology)
    peaks = None
    if profiles.attention_gpu and profiles.attention_gpu != profiles.gpu:
        other = get_gpu(next(k for k, v in PROFILE_GPUS.items() if v == profiles.attention_gpu))
        peaks = (other.fp16_flops, other.hbm_bytes_per_s)
    fit = fit_gpu(profiles, spec.fp16_flops, spec.hbm_bytes_per_s, exclude, peaks)
    skip = {e.lower() for e in exclude}
    models = [m for m in profiles.linear
              if m.lower() not in skip and m.split("/")[-1].lower() not in skip]
    root = Path(directory)
    doc = {
        "version": 2,
        "gpu": spec.name,
        "source": "operator profiles (Vidur data/profiling, MIT licence)",
        "fitted_models": models,
        "topology": topology,
        "profile_files": [os.path.relpath(p, root) for p in profiles.sources],
        "gpu_fit": fit.to_doc(),
        "entries": [],
    }
    doc = json.loads(json.dumps(doc))  # plain JSON types, as a reader will see them
    parse_calibration(doc, "<generated>")  # what we write, we can read
    return doc


def write_json(doc: dict, path: str | os.PathLike) -> Path:
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise FileNotFoundError(f"{out.parent}: no such directory")
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return out
