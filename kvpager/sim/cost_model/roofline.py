"""`CostModel`: KV capacity and the duration of one engine step, from a roofline.

Every quantity is per GPU of a tensor-parallel group of `tp` GPUs (they work in lock step).
Notation: L layers, h hidden size, H query heads, d head size, I intermediate size, V vocab,
P parameters, b_w / b_kv bytes per weight / KV element, F = fp16 FLOP/s x flops_efficiency,
B = HBM bytes/s x bandwidth_efficiency.

Capacity
    kv_bytes_per_token = 2 L max(1, kv_heads / tp) d b_kv      (K and V; GQA heads are
                                                                 replicated when tp > kv_heads)
    kv_capacity_bytes  = memory x gpu_memory_utilization - P b_w / tp - reserve
    reserve            = N (2 h + 3 I / tp) b_w + S V 8 + runtime_reserve_bytes
  with N = max_num_batched_tokens (the activations of the largest forward pass, as vLLM
  profiles them), S = max_num_seqs (fp32 logits, twice for sampling) and a fixed 1 GiB for
  the CUDA context, library workspaces and CUDA graphs. Not positive: ModelDoesNotFitError.

Step time of one iteration with T = prefill_tokens + decode_seqs new tokens:
    linear     = max(2 P_body T / tp / F + 2 V h R / tp / F,  W / tp / B)
    prefill    = 4 L H d  prefill_attention_work / tp / F
    decode     = max(4 L H d C / tp / F,  kv_bytes_per_token C / B)
    kv_write   = kv_bytes_per_token T / B
    allreduce  = 2 L (2 (tp - 1) / tp  T h b_w / (link x interconnect_efficiency)
                      + allreduce_latency_s)                        (0 when tp = 1)
    step_time  = linear + prefill + decode + kv_write + allreduce + step_overhead_s
  where P_body = parameters every token passes through (no embedding tables), R = rows whose
  logits are computed (decode_seqs + prefill_seqs), W = weight bytes streamed per step (all
  but the input embedding, which is only gathered), C = decode_context_tokens, and
    prefill_attention_work = sum over prefill chunks of  n (c + (n + 1) / 2)
  for a chunk of n new tokens after c cached ones: the (query, key) pairs of causal
  attention (query i of the chunk sees c + i + 1 keys), each costing 4 H d FLOPs per layer
  (QK^T and PV, 2 FLOPs per multiply-add).

Each term is its own roofline because the kernels run one after another: the GEMMs are
compute bound in prefill and bound by streaming the weights in small decode batches;
decode attention is bound by reading the KV cache (its FLOPs per byte are H / kv_heads);
prefill attention (FlashAttention) is compute bound. Summing separate rooflines, rather than
one max over the whole step, is what makes a small decode batch riding along a big prefill
cost its KV reads. Defaults: 60% of peak FLOP/s (large GEMMs reach 60-75%), 80% of HBM
bandwidth, 70% of NVLink, 10 us per all-reduce, 1 ms of scheduler/launch/sampling overhead
per step. A calibration file replaces the roofline where it has measurements
(`kvpager.sim.cost_model.calibration`).

Layers that are not dense full attention (`kvpager.sim.cost_model.layers`): the sums over L
run over each layer's own KV bytes (MLA: its latent, replicated on every rank; a
linear-attention layer: none); C and prefill_attention_work count what each layer reads
(`decode_context`, `prefill_work`: a window or chunk reads less), averaged over attention
layers; P_body counts a token's active experts only, W every dense weight plus each MoE
layer's E (1 - (1 - k/E)^T) expected distinct experts, P b_w every expert; decode adds each
sequence's linear-attention state, read and written once, and the linear term its update
FLOPs. Dense models: the formulas above, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kvpager.core.errors import KVPagerError
from kvpager.sim.cost_model.calibration import BoundCalibration, Calibration
from kvpager.sim.cost_model.fitted_terms import FittedTerms
from kvpager.sim.cost_model.layers import LayerCosts
from kvpager.sim.presets import GiB, GPUSpec, ModelSpec, get_gpu, get_model

#: Bytes per element of the dtype names (kv_cache_dtype names follow vLLM).
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
WEIGHT_DTYPES = ("fp16", "bf16")
KV_CACHE_DTYPES = ("auto", "fp16", "bf16", "fp32", "fp8", "fp8_e4m3", "fp8_e5m2")


class ModelDoesNotFitError(KVPagerError, ValueError):
    """The weights and the activation reserve leave no GPU memory for the KV cache."""


def prefill_attention_work(chunk_tokens: int, context_before: int) -> float:
    """(query, key) pairs of one causal prefill chunk: n (c + (n + 1) / 2) for n new tokens
    after c cached ones. Sum it over a step's chunks for `CostModel.step_time`."""
    return chunk_tokens * (context_before + (chunk_tokens + 1) / 2)


@dataclass(frozen=True)
class StepBreakdown:
    """Seconds of each term of one step (see the module docstring); `total_s` is what
    `step_time` returns (after calibration), `roofline_s` the sum of the terms before a
    whole-step correction (`step` entries). `calibrated` names the terms that come from
    measurements ("linear", "decode_attention", ...) rather than the roofline."""

    linear_s: float
    prefill_attention_s: float
    decode_attention_s: float
    kv_write_s: float
    allreduce_s: float
    overhead_s: float
    roofline_s: float
    total_s: float
    calibrated: tuple[str, ...] = ()


def _fraction(name: str, value: float, *, upper: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value <= upper
    ):
        raise ValueError(f"{name}: expected a number in (0, {upper:g}], got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class CostModel:
    """Capacity and step time of `model` on `tp` GPUs of kind `gpu`.

    model, gpu: specs, preset names (any case) or JSON spec files.
    dtype: weights and activations, "fp16" or "bf16". kv_cache_dtype: "auto" (= dtype),
    "fp16", "bf16", "fp32", "fp8" (= "fp8_e4m3"), "fp8_e5m2".
    Construction fails with ModelDoesNotFitError when no memory is left for KV.
    """

    model: ModelSpec | str
    gpu: GPUSpec | str
    tp: int = 1
    dtype: str = "fp16"
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    runtime_reserve_bytes: float = float(GiB)
    activation_reserve_bytes: float | None = None
    flops_efficiency: float = 0.6
    bandwidth_efficiency: float = 0.8
    interconnect_efficiency: float = 0.7
    host_link_efficiency: float = 0.8
    allreduce_latency_s: float = 10e-6
    step_overhead_s: float = 1e-3
    calibration: Calibration | None = None
    kv_cache_bytes: float | None = None
    _k: dict[str, float] = field(init=False, repr=False, compare=False)
    _cal: BoundCalibration | None = field(init=False, repr=False, compare=False, default=None)
    _fit: FittedTerms | None = field(init=False, repr=False, compare=False, default=None)
    _layers: LayerCosts = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "model", get_model(self.model))
        put(self, "gpu", get_gpu(self.gpu))
        m, g = self.model_spec, self.gpu_spec
        self._check_arguments()
        wb = DTYPE_BYTES[self.dtype]
        kvb = wb if self.kv_cache_dtype == "auto" else DTYPE_BYTES[self.kv_cache_dtype]
        tp = self.tp
        flops = g.fp16_flops * self.flops_efficiency
        bw = g.hbm_bytes_per_s * self.bandwidth_efficiency
        layers = LayerCosts.of(m, tp, wb, kvb)
        kv_token = layers.kv_token
        k = {
            "weight_bytes": layers.weight_bytes,
            "kv_token": kv_token,
            "lin_token": 2 * layers.active_params / tp / flops + layers.state_flops / flops,
            "head_row": 2 * m.embedding_params / tp / flops,
            "weights_read": layers.streamed_bytes / tp / bw,
            "attn_pair": layers.attn_pair_flops / flops,
            "kv_per_token": kv_token / bw,
            "state_seq": layers.state_seq / bw,
            "allreduce_token": 0.0,
            "allreduce_fixed": 0.0,
        }
        if tp > 1 and g.interconnect_bytes_per_s is not None:  # _check_arguments: not None
            link = g.interconnect_bytes_per_s * self.interconnect_efficiency
            k["allreduce_token"] = (2 * m.num_layers * 2 * (tp - 1) / tp * m.hidden_size * wb
                                    / link)
            k["allreduce_fixed"] = 2 * m.num_layers * self.allreduce_latency_s
        put(self, "_k", k)
        put(self, "_layers", layers)
        self._check_fit()
        if self.calibration is not None and self.calibration.gpu_fit is not None:
            roof = {name: k[name] for name in ("attn_pair", "kv_per_token", "allreduce_token",
                                               "allreduce_fixed")}
            put(self, "_fit", FittedTerms(self.calibration.gpu_fit, self, kv_token, wb,
                                          roof | {"overhead": self.step_overhead_s}))
        if self.calibration is not None:
            bound = self.calibration.bind(self)
            put(self, "_cal", bound)  # decode attention first: the step fit uses it
            bound.fit_steps()

    @property
    def model_spec(self) -> ModelSpec:
        """`model` as the spec construction resolved it to (a name or file is looked up)."""
        if not isinstance(self.model, ModelSpec):
            raise TypeError(f"model: not resolved to a ModelSpec: {self.model!r}")
        return self.model

    @property
    def gpu_spec(self) -> GPUSpec:
        """`gpu` as the spec construction resolved it to (a name or file is looked up)."""
        if not isinstance(self.gpu, GPUSpec):
            raise TypeError(f"gpu: not resolved to a GPUSpec: {self.gpu!r}")
        return self.gpu

    def _check_arguments(self) -> None:
        m = self.model_spec
        if type(self.tp) is not int or self.tp < 1:
            raise ValueError(f"tp: expected an integer >= 1, got {self.tp!r}")
        if m.num_heads % self.tp:
            raise ValueError(f"tp: {self.tp} does not divide the {m.num_heads} attention heads "
                             f"of {m.name}")
        if m.num_kv_heads % self.tp and self.tp % m.num_kv_heads:
            raise ValueError(f"tp: {self.tp} neither divides nor is a multiple of the "
                             f"{m.num_kv_heads} KV heads of {m.name}")
        if self.tp > 1 and self.gpu_spec.interconnect_bytes_per_s is None:
            raise ValueError(f"tp: {self.tp} > 1 needs gpu.interconnect_bytes_per_s, which "
                             f"{self.gpu_spec.name} does not give")
        if self.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(WEIGHT_DTYPES)}, got "
                             f"{self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype: expected one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        _fraction("gpu_memory_utilization", self.gpu_memory_utilization)
        for name in ("flops_efficiency", "bandwidth_efficiency", "interconnect_efficiency",
                     "host_link_efficiency"):
            _fraction(name, getattr(self, name))
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        for name in ("runtime_reserve_bytes", "allreduce_latency_s", "step_overhead_s"):
            _non_negative(name, getattr(self, name))
        if self.activation_reserve_bytes is not None:
            _non_negative("activation_reserve_bytes", self.activation_reserve_bytes)
        if self.kv_cache_bytes is not None:
            _non_negative("kv_cache_bytes", self.kv_cache_bytes)
        if self.calibration is not None and not isinstance(self.calibration, Calibration):
            raise ValueError(f"calibration: expected a Calibration (see load_calibration), got "
                             f"{type(self.calibration).__name__}")

    # ---- memory ---------------------------------------------------------------------------

    @property
    def weight_element_bytes(self) -> int:
        """Bytes of one activation / dense weight element (`dtype`)."""
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_element_bytes(self) -> int:
        """Bytes of one KV-cache element (`kv_cache_dtype`, "auto" = `dtype`)."""
        auto = self.kv_cache_dtype == "auto"
        return DTYPE_BYTES[self.dtype if auto else self.kv_cache_dtype]

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one token occupies on each GPU of the group."""
        return int(self._k["kv_token"])

    @property
    def kv_bytes_per_token_total(self) -> int:
        """KV bytes of one token summed over the tp GPUs (replicated heads counted)."""
        return int(self._k["kv_token"]) * self.tp

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self._k["weight_bytes"] / self.tp

    @property
    def activation_reserve(self) -> float:
        """Bytes per GPU kept for activations, logits and the runtime (module docstring)."""
        if self.activation_reserve_bytes is not None:
            return float(self.activation_reserve_bytes)
        m, wb = self.model_spec, DTYPE_BYTES[self.dtype]
        act = self.max_num_batched_tokens * (2 * m.hidden_size + 3 * m.intermediate_size
                                             / self.tp) * wb
        return act + self.max_num_seqs * m.vocab_size * 8 + self.runtime_reserve_bytes

    @property
    def kv_capacity_bytes(self) -> float:
        """GPU memory left for the KV cache on each GPU (`kv_cache_bytes` when given: a
        deployment's measured cache size)."""
        if self.kv_cache_bytes is not None:
            return float(self.kv_cache_bytes)
        budget = self.gpu_spec.memory_bytes * self.gpu_memory_utilization
        return budget - self.weight_bytes_per_gpu - self.activation_reserve

    def _check_fit(self) -> None:
        if self.kv_capacity_bytes > 0:
            return
        budget = self.gpu_spec.memory_bytes * self.gpu_memory_utilization
        raise ModelDoesNotFitError(
            f"model does not fit: {self.model_spec.name} needs "
            f"{self.weight_bytes_per_gpu / GiB:.1f} GiB of weights per GPU at tp={self.tp} plus a "
            f"{self.activation_reserve / GiB:.1f} "
            f"GiB activation reserve, but {self.gpu_memory_utilization:g} x "
            f"{self.gpu_spec.memory_bytes / GiB:.1f} GiB = {budget / GiB:.1f} GiB is usable on "
            f"{self.gpu_spec.name}; raise tp or gpu_memory_utilization")

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV the group can hold (the same on every GPU)."""
        return int(self.kv_capacity_bytes // self._k["kv_token"])

    def num_gpu_blocks(self, block_size: int) -> int:
        """KV blocks of `block_size` tokens that fit in GPU memory."""
        _block_size(block_size)
        return int(self.kv_capacity_bytes // (self._k["kv_token"] * block_size))

    def num_cpu_blocks(self, swap_space_bytes: float, block_size: int) -> int:
        """KV blocks that fit in `swap_space_bytes` of host memory per GPU (vLLM's swap
        space; 4 GiB by default there)."""
        _non_negative("swap_space_bytes", swap_space_bytes)
        _block_size(block_size)
        return int(swap_space_bytes // (self._k["kv_token"] * block_size))

    def swap_time(self, num_blocks: int, block_size: int) -> float:
        """Seconds to move `num_blocks` KV blocks between GPU and host in one direction."""
        if self.gpu_spec.host_bytes_per_s is None:
            raise ValueError(f"gpu: {self.gpu_spec.name} gives no host_bytes_per_s to time swaps")
        link = self.gpu_spec.host_bytes_per_s * self.host_link_efficiency
        return num_blocks * block_size * self._k["kv_token"] / link

    def copy_time(self, num_blocks: int, block_size: int) -> float:
        """Seconds to copy `num_blocks` KV blocks within GPU memory (copy-on-write): each
        byte is read and written once."""
        return 2 * num_blocks * block_size * self._k["kv_per_token"]

    # ---- time -----------------------------------------------------------------------------

    def breakdown(
        self,
        prefill_tokens: int,
        prefill_attention_work: float,
        decode_seqs: int,
        decode_context_tokens: float,
        prefill_seqs: int = 0,
    ) -> StepBreakdown:
        """The terms of `step_time` (same arguments), for reports and tests."""
        if not (prefill_tokens >= 0 and decode_seqs >= 0 and prefill_seqs >= 0):
            raise ValueError(f"prefill_tokens, decode_seqs, prefill_seqs: expected >= 0, got "
                             f"{prefill_tokens!r}, {decode_seqs!r}, {prefill_seqs!r}")
        if not prefill_attention_work >= prefill_tokens:
            raise ValueError(f"prefill_attention_work: expected >= prefill_tokens = "
                             f"{prefill_tokens} (each query sees >= 1 key), got "
                             f"{prefill_attention_work!r}")
        if not decode_context_tokens >= decode_seqs:
            raise ValueError(f"decode_context_tokens: expected >= decode_seqs = {decode_seqs} "
                             f"(each sequence sees >= 1 token), got {decode_context_tokens!r}")
        k = self._k
        tokens = prefill_tokens + decode_seqs
        if tokens == 0:
            return StepBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        fit = self._fit
        dec = 0.0
        if decode_seqs:
            dec = (self._decode_attention(decode_seqs, decode_context_tokens)
                   + decode_seqs * k["state_seq"])
        write = tokens * k["kv_per_token"]
        if fit is None:
            lin = max(tokens * k["lin_token"] + (decode_seqs + prefill_seqs) * k["head_row"],
                      self._weights_read(tokens))
            pre = prefill_attention_work * k["attn_pair"]
            comm = tokens * k["allreduce_token"] + k["allreduce_fixed"]
            over = self.step_overhead_s
        else:
            lin = fit.linear(tokens, decode_seqs + prefill_seqs)
            pre = fit.prefill_attention(prefill_tokens, prefill_attention_work)
            comm = fit.allreduce_seconds(tokens)
            over = fit.overhead(_batch(decode_seqs, prefill_tokens, prefill_seqs))
        roof = lin + pre + dec + write + comm + over
        cal = self._cal
        total = roof if cal is None or not cal.has_steps else cal.step_seconds(roof)
        measured = fit.calibrated if fit is not None else ()
        if cal is not None and cal.has_decode_attention and "decode_attention" not in measured:
            measured = (*measured, "decode_attention")
        return StepBreakdown(lin, pre, dec, write, comm, over, roof, total, measured)

    def _weights_read(self, tokens: int) -> float:
        """Seconds to stream the weights a step of `tokens` tokens multiplies: every dense
        weight, and each MoE layer's experts that some token is routed to (expected)."""
        model = self.model_spec
        if model.moe is None:
            return self._k["weights_read"]
        read = self._layers.expert_bytes_read(model, tokens)
        return self._k["weights_read"] + read / self.tp / (self.gpu_spec.hbm_bytes_per_s
                                                           * self.bandwidth_efficiency)

    def decode_context(self, seq_lens: np.ndarray, steps: int = 1) -> float:
        """`decode_context_tokens` for a decode batch whose lengths after a window of
        `steps` steps are `seq_lens` (int64 array): the keys read at the window's middle
        step, per full-attention-equivalent layer (a window or chunk reads less;
        `kvpager.sim.cost_model.layers`)."""
        return self._layers.decode_context(seq_lens, steps)

    def prefill_work(self, chunk_tokens: int, context_before: int) -> float:
        """`prefill_attention_work` of one chunk for this model's layers (a window or chunk
        caps what each query reads; full attention: `prefill_attention_work(n, c)`)."""
        return self._layers.prefill_work(chunk_tokens, context_before)

    @property
    def layer_costs(self) -> LayerCosts:
        """The per-layer figures the step time and capacity come from."""
        return self._layers

    def roofline_decode_attention(self, decode_seqs: int,
                                  decode_context_tokens: float) -> float:
        """Decode attention seconds of a batch by the roofline alone (all layers)."""
        k = self._k
        return max(decode_context_tokens * k["attn_pair"],
                   decode_context_tokens * k["kv_per_token"])

    def _decode_attention(self, decode_seqs: int, decode_context_tokens: float) -> float:
        """A measured grid of this model first, then the GPU's fitted curve, then the
        roofline."""
        cal = self._cal
        if cal is not None and cal.has_decode_attention:
            return cal.decode_attention_seconds(decode_seqs, decode_context_tokens)
        if self._fit is not None:
            return self._fit.decode_attention(decode_seqs, decode_context_tokens)
        return self.roofline_decode_attention(decode_seqs, decode_context_tokens)

    @property
    def calibration_notes(self) -> dict[str, str]:
        """Where each step-time term comes from ("fitted to profiles" or why the roofline),
        for the configuration section of a run report; empty without a GPU fit."""
        return {} if self._fit is None else dict(self._fit.notes)

    def step_time(
        self,
        prefill_tokens: int,
        prefill_attention_work: float,
        decode_seqs: int,
        decode_context_tokens: float,
        prefill_seqs: int = 0,
    ) -> float:
        """Seconds of one engine step (the module docstring has the formula).

        prefill_tokens: new prompt tokens computed this step, summed over prefill chunks.
        prefill_attention_work: sum over those chunks of `prefill_attention_work(n, c)`.
        decode_seqs: sequences decoding one token (each sample of n > 1 / each beam counts).
        decode_context_tokens: sum over decode sequences of the tokens each attends to,
            including its new one (its length after this step).
        prefill_seqs: prefill chunks that end their prompt this step and so sample a first
            token (their logits are computed); 0 if unknown, a small under-estimate.
        Zero work returns 0.0. Same arithmetic as `breakdown`, without building it: the
        engine calls this once per step.
        """
        if not (prefill_tokens >= 0 and decode_seqs >= 0 and prefill_seqs >= 0
                and prefill_attention_work >= prefill_tokens
                and decode_context_tokens >= decode_seqs):
            return self.breakdown(prefill_tokens, prefill_attention_work, decode_seqs,
                                  decode_context_tokens, prefill_seqs).total_s  # raises
        if self._fit is not None:
            return self.breakdown(prefill_tokens, prefill_attention_work, decode_seqs,
                                  decode_context_tokens, prefill_seqs).total_s
        k = self._k
        tokens = prefill_tokens + decode_seqs
        if tokens == 0:
            return 0.0
        lin = tokens * k["lin_token"] + (decode_seqs + prefill_seqs) * k["head_row"]
        weights = self._weights_read(tokens)
        t = (lin if lin > weights else weights) + prefill_attention_work * k["attn_pair"]
        if decode_seqs:
            t += (self._decode_attention(decode_seqs, decode_context_tokens)
                  + decode_seqs * k["state_seq"])
        t += tokens * (k["kv_per_token"] + k["allreduce_token"])
        t += k["allreduce_fixed"] + self.step_overhead_s
        cal = self._cal
        return t if cal is None or not cal.has_steps else cal.step_seconds(t)


def _batch(decode_seqs: int, prefill_tokens: int, prefill_seqs: int) -> int:
    """Sequences in the batch for the per-step CPU cost (a prefill chunk counts once)."""
    return decode_seqs + (max(prefill_seqs, 1) if prefill_tokens else 0)


def _block_size(block_size: int) -> None:
    if type(block_size) is not int or block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, got {block_size!r}")
