"""Which step-time model a simulation runs: the best the package has for the chosen GPU
unless the user names one.

`docs/cost_model.md` measures the plain roofline's decode steps about a quarter too short;
the GPU fits shipped in `calibrations/` (A100-80GB, H100-80GB, fitted to public operator
profiles) correct that. So "auto" picks the shipped fit where one covers the GPU and the
roofline elsewhere, and the choice is recorded (`metrics.json` "cost_model") and printed,
never silent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvpager.sim.cost_model.calibration import (
    SHIPPED,
    Calibration,
    CalibrationError,
    load_calibration,
    shipped_calibration,
)
from kvpager.sim.presets import ModelSpec


def _outside_the_fits(model: ModelSpec | None) -> str:
    """What of `model` the profiled operators do not cover ("" when nothing)."""
    if model is None:
        return ""
    parts = [name for name, present in (("experts", model.moe is not None),
                                         ("MLA", model.mla is not None),
                                         ("linear attention", model.linear_attention
                                          is not None)) if present]
    return " and ".join(parts)


#: The names `SimConfig.cost_model` / `--cost-model` accept besides a calibration file.
COST_MODELS = ("auto", "roofline", "calibrated")


@dataclass(frozen=True)
class CostModelChoice:
    """kind: "calibrated" (a shipped GPU fit), "file" (a calibration the user gave) or
    "roofline"; source: where its figures come from; why: why it ran (for the summary)."""

    kind: str
    source: str
    why: str
    calibration: Calibration | None

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "source": self.source, "why": self.why}


def choose_cost_model(cost_model: str | os.PathLike, gpu: str,
                      model: ModelSpec | None = None) -> CostModelChoice:
    """The step-time model `cost_model` ("auto", "roofline", "calibrated" or a calibration
    file) gives on `gpu` (a preset name or a GPU spec file) for `model`. Raises
    CalibrationError naming `cost_model` when "calibrated" has no shipped fit for the GPU or
    the model, or the file is bad. The shipped fits know dense GEMMs and attention only: a
    model with experts, MLA or linear attention runs the roofline under "auto"."""
    name = os.fspath(cost_model)
    shipped = SHIPPED.get(str(gpu).lower())
    outside = _outside_the_fits(model)
    if outside and name in ("auto", "calibrated") and shipped is not None:
        if name == "calibrated":
            raise CalibrationError(f"cost_model: the shipped fits cover dense models only; "
                                   f"{model.name if model else ''} has {outside}: use "
                                   "roofline or a calibration file")
        return CostModelChoice("roofline", "roofline (peak FLOP/s and bandwidth x "
                               "efficiencies)", f"the shipped fit for {gpu} covers dense "
                               f"models only and this one has {outside}", None)
    if name == "roofline":
        return CostModelChoice("roofline", "roofline (peak FLOP/s and bandwidth x "
                               "efficiencies)", "asked for (--cost-model roofline)", None)
    if name in ("auto", "calibrated"):
        if shipped is not None:
            why = ("the best model shipped for this GPU (default; --cost-model roofline for "
                   "the plain roofline)" if name == "auto" else "asked for")
            return CostModelChoice("calibrated", f"shipped GPU fit calibrations/{shipped} "
                                   "(public operator profiles)", why,
                                   shipped_calibration(str(gpu)))
        if name == "calibrated":
            raise CalibrationError(f"cost_model: no calibration ships for GPU {gpu!r} (have "
                                   f"{', '.join(SHIPPED)}); give a calibration file "
                                   "(kvpager calibrate from-profiles) or roofline")
        return CostModelChoice("roofline", "roofline (peak FLOP/s and bandwidth x "
                               "efficiencies)", f"no calibration ships for GPU {gpu!r} (have "
                               f"{', '.join(SHIPPED)}); give one with --cost-model FILE",
                               None)
    try:
        calibration = load_calibration(name)
    except CalibrationError as exc:
        raise CalibrationError(f"cost_model: {exc}") from None
    return CostModelChoice("file", str(Path(name)), "asked for (--cost-model FILE)",
                           calibration)
