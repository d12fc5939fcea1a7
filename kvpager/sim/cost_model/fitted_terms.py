"""The step-time terms of one cost model from a GPU's fitted curves (`gpu_model.GpuFit`).

`CostModel` binds one `FittedTerms` when its calibration has a "gpu_fit" section. The
linear term of T tokens and R sampled rows is L x layer(T) + head(R), read from tables
filled lazily by numpy (a table lookup per step keeps the simulator's speed). Terms the fit
does not cover (an all-reduce over a GPU count that was not profiled, a fit without
attention or CPU profiles) stay the roofline's; `notes` says which, for the run report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kvpager.sim.cost_model.gpu_model import GpuFit, LayerDims

if TYPE_CHECKING:
    from kvpager.sim.cost_model.roofline import CostModel

MEASURED = "fitted to profiles"


class _Table:
    """f(n) for integers n >= 0, computed for 0..2^k at a time by a vectorised f."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.values: list[float] = []

    def __call__(self, n: int) -> float:
        values = self.values
        if n < len(values):
            return values[n]
        size = 1 << max(10, int(n).bit_length())
        self.values = values = [float(v) for v in self.fn(np.arange(size + 1, dtype=float))]
        return values[n]


def is_gated(cost: CostModel) -> bool:
    """Whether the model's MLP is gated (Llama) rather than two matrices (OPT): the
    parameter count it was published with is closer to the gated estimate."""
    m = cost.model_spec
    gated = m.estimated_params(gated_mlp=True)
    plain = m.estimated_params(gated_mlp=False, biases=True)
    return abs(gated - m.num_params) <= abs(plain - m.num_params)


class FittedTerms:
    """The terms of a step (seconds, all layers) from fitted curves, each falling back to
    the roofline coefficients in `roof` where the fit has nothing: "attn_pair",
    "kv_per_token", "allreduce_token", "allreduce_fixed" and "overhead" (see
    `kvpager.sim.cost_model.roofline`)."""

    def __init__(self, fit: GpuFit, cost: CostModel, kv_token_bytes: float,
                 weight_bytes: int, roof: dict[str, float]) -> None:
        m, tp = cost.model_spec, cost.tp
        layers = m.num_layers
        dims = LayerDims.of(m.hidden_size, m.num_heads, m.num_kv_heads, m.head_size,
                            m.intermediate_size, is_gated(cost), tp)
        vocab = -(-m.vocab_size // tp)
        self.layers = _Table(lambda t: np.where(t > 0, layers * fit.layer_seconds(
            dims, np.maximum(t, 1)), 0.0))
        self.head = _Table(lambda r: fit.head_seconds(m.hidden_size, vocab, r))
        self.notes: dict[str, str] = {"linear": MEASURED}
        attention = MEASURED if fit.attention_from is None else (
            f"{MEASURED} (attention measured on {fit.attention_from}, scaled by peak ratios)")
        dec = fit.decode_attention
        # layers x (launch + per sequence x b) + all KV bytes read / achieved bandwidth;
        # the roofline: (0, 0, max(FLOPs, bytes) per context token)
        self.decode = (0.0, 0.0, max(roof["attn_pair"], roof["kv_per_token"])) if dec is None \
            else (layers * dec.launch, layers * dec.per_item, kv_token_bytes / dec.bw)
        self.notes["decode_attention"] = attention if dec else "roofline (no decode profile)"
        pre = fit.prefill_attention
        self.prefill = (0.0, roof["attn_pair"]) if pre is None else (
            layers * pre.fixed, layers * pre.slope * 4 * (m.num_heads // tp) * m.head_size)
        self.notes["prefill_attention"] = attention if pre else "roofline (no prefill profile)"
        ar = fit.allreduce.get(tp) if tp > 1 else None
        token_bytes = m.hidden_size * weight_bytes
        self.allreduce = (
            _Table(lambda t: np.where(t > 0, roof["allreduce_fixed"]
                                      + roof["allreduce_token"] * t, 0.0)) if ar is None
            else _Table(lambda t: np.where(t > 0, 2 * layers * ar.seconds(t * token_bytes),
                                           0.0)))
        if tp > 1:
            self.notes["allreduce"] = MEASURED if ar else (
                f"roofline (no all-reduce profile over {tp} GPUs; have "
                f"{', '.join(map(str, sorted(fit.allreduce))) or 'none'})")
        cpu = fit.cpu_overhead
        self.cpu = (roof["overhead"], 0.0) if cpu is None else (cpu.fixed, cpu.slope)
        self.notes["overhead"] = MEASURED if cpu else "roofline (no CPU profile)"
        self.calibrated = tuple(k for k, v in self.notes.items() if v.startswith(MEASURED))

    def linear(self, tokens: int, rows: int) -> float:
        return self.layers(tokens) + self.head(rows)

    def decode_attention(self, seqs: int, context_tokens: float) -> float:
        d = self.decode
        return d[0] + d[1] * seqs + d[2] * context_tokens if seqs else 0.0

    def prefill_attention(self, prefill_tokens: int, work: float) -> float:
        p = self.prefill
        return p[0] + p[1] * work if prefill_tokens else 0.0

    def allreduce_seconds(self, tokens: int) -> float:
        return self.allreduce(tokens)

    def overhead(self, batch: int) -> float:
        c = self.cpu
        return c[0] + c[1] * batch
