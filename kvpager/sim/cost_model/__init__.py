"""Cost model of the simulator: KV capacity and step time from a roofline, optionally
calibrated with measured times. The formulas are in `kvpager.sim.cost_model.roofline` and
`docs/cost_model.md`; the calibration schema in `kvpager.sim.cost_model.calibration`.

    from kvpager.sim.cost_model import CostModel, prefill_attention_work
    cost = CostModel("Llama-2-7B", "A100-80GB")
    cost.num_gpu_blocks(16)
    cost.step_time(prefill_tokens=512, prefill_attention_work=prefill_attention_work(512, 0),
                   decode_seqs=30, decode_context_tokens=30 * 900)
"""

from kvpager.sim.cost_model.calibration import (
    Calibration,
    CalibrationError,
    load_calibration,
    parse_calibration,
    shipped_calibration,
)
from kvpager.sim.cost_model.choice import COST_MODELS, CostModelChoice, choose_cost_model
from kvpager.sim.cost_model.roofline import (
    DTYPE_BYTES,
    KV_CACHE_DTYPES,
    WEIGHT_DTYPES,
    CostModel,
    ModelDoesNotFitError,
    StepBreakdown,
    prefill_attention_work,
)

__all__ = [
    "COST_MODELS",
    "DTYPE_BYTES",
    "KV_CACHE_DTYPES",
    "WEIGHT_DTYPES",
    "Calibration",
    "CalibrationError",
    "CostModel",
    "CostModelChoice",
    "ModelDoesNotFitError",
    "StepBreakdown",
    "choose_cost_model",
    "load_calibration",
    "parse_calibration",
    "prefill_attention_work",
    "shipped_calibration",
]
