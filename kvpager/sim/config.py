"""Configuration of one simulation run (all strategies share it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from kvpager.core.config import FREE_ORDERS, PREEMPTION_MODES

PAGED = "paged"
CONTIGUOUS = ("orca-max", "orca-pow2", "orca-oracle")
STATIC = "static"
STRATEGIES = (PAGED, *CONTIGUOUS, STATIC)
DEFAULT_STRATEGIES = (PAGED, *CONTIGUOUS)
LONG_PROMPTS = ("reject", "truncate")
UNLIMITED = "unlimited"
#: What each strategy means, in one line (printed under the comparison table).
DESCRIPTIONS = {
    PAGED: "kvpager's paged cache: blocks allocated on demand, shared by reference, "
           "swapped or recomputed under pressure (vLLM)",
    "orca-max": "contiguous region per request reserved for max_model_len tokens at "
                "admission (Orca, worst case)",
    "orca-pow2": "contiguous region reserved for the next power of two of the true length "
                 "(Orca, over-reserving up to 2x)",
    "orca-oracle": "contiguous region reserved for exactly the true length, known in advance "
                   "(Orca's unreachable best case)",
    STATIC: "max_model_len regions and request-level batching: a new batch starts when the "
            "last one ends (FasterTransformer)",
}
#: The default of `max_num_seqs` (vLLM's).
DEFAULT_MAX_NUM_SEQS = 256
#: vLLM's default tokens per step (with chunked prefill, and the floor without it).
DEFAULT_BATCHED_TOKENS = 8192


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class SimConfig:
    """A serving deployment and its scheduler, as the simulator models it.

    Args:
        model, gpu: preset names (see `kvpager.sim.presets`) or JSON spec files.
        tp: tensor-parallel degree.
        kv_cache_dtype: "auto" (= fp16) or "fp8" / "fp8_e5m2", which halves KV bytes.
        gpu_memory_utilization: fraction of GPU memory the server may use.
        block_size: tokens per KV block of the paged strategy.
        swap_space_gib: CPU swap space per GPU for preemption by swapping (0 disables it).
        preemption: "auto", "swap" or "recompute".
        prefix_caching: share prompt blocks by content (paged strategy only).
        max_num_seqs, max_num_batched_tokens, max_model_len, chunked_prefill: scheduler
            limits (`kvpager.core.config.SchedulerConfig`). `max_model_len` None means the
            model's context length (`ModelSpec.max_context`), as in vLLM; a request whose
            prompt + output exceeds it is rejected with a reason and the run goes on.
            `max_num_batched_tokens` None means vLLM's default: 8192 with chunked prefill,
            else max(8192, max_model_len) so that every prompt fits a step.
        max_window_steps: the most decode steps simulated in one go between events (steps
            are still timed one by one; a window never crosses an arrival or a finish).
        sample_interval_s: simulated seconds between samples of the memory time series;
            None: the trace's duration / 2000, at least 0.25 s.
        beam_replace_prob: per step and beam, the chance that beam search replaces it by a
            copy of another beam of its request (the fork/copy-on-write pattern of beam
            search without running a model).
        seed: seeds the beam model, the only random process of a run.
        cost_model: the step-time model: "auto" (default: the calibration shipped for the
            GPU where one covers it, A100-80GB and H100-80GB, else the roofline),
            "roofline", "calibrated" (the shipped fit; an error where none covers the GPU),
            or the path of a calibration file (`kvpager bench`, `kvpager calibrate
            from-profiles`). `kvpager.sim.cost_model.choice` says why.
        num_gpu_blocks: KV blocks of the GPU cache, overriding the computed capacity (as
            serving engines allow), to match a measured deployment.
        kv_cache_memory_gib: KV cache memory per GPU, GiB, overriding the computed budget
            (memory x utilisation - weights - activation reserve). At most one of the two.
        long_prompts: "reject" prompts longer than max_model_len (as vLLM does) or
            "truncate" them to max_model_len - 1 tokens (as some simulators do).
        cpu_prefix_cache_gib: host memory per GPU, GiB, of the CPU prefix tier: cached
            prompt blocks the GPU evicts are offloaded there and loaded back on a hit
            (`kvpager.sim.tier`). 0 disables it; `math.inf` is "unlimited": room for every
            block the trace can register. Needs prefix_caching and the paged strategy. It
            is host memory on top of `swap_space_gib` (the two are separate areas).
        hybrid: give each attention kind of a hybrid model its own KV-cache group
            (`kvpager.sim.kv_groups`, the library's HybridKVCacheManager); False allocates
            every layer as full attention, as a manager without groups does.
        free_order: which free pages a hybrid manager reuses first: "window_first" (blocks
            a window released, before other requests' cached blocks) or "lru" (one queue).
    """

    model: str = "llama-2-7b"
    gpu: str = "a100-80gb"
    tp: int = 1
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    swap_space_gib: float = 4.0
    preemption: str = "auto"
    prefix_caching: bool = False
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    chunked_prefill: bool = False
    max_window_steps: int = 64
    sample_interval_s: float | None = None
    beam_replace_prob: float = 0.25
    seed: int = 0
    cost_model: str = "auto"
    num_gpu_blocks: int | None = None
    kv_cache_memory_gib: float | None = None
    long_prompts: str = "reject"
    cpu_prefix_cache_gib: float = 0.0
    hybrid: bool = True
    free_order: str = "window_first"

    def __post_init__(self) -> None:
        if self.free_order not in FREE_ORDERS:
            raise ValueError(f"free_order must be one of {', '.join(FREE_ORDERS)}, got "
                             f"{self.free_order!r}")
        _positive_int("tp", self.tp)
        _positive_int("block_size", self.block_size)
        _positive_int("max_num_seqs", self.max_num_seqs)
        if self.max_num_batched_tokens is not None:
            _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        _positive_int("max_window_steps", self.max_window_steps)
        if self.max_model_len is not None:
            _positive_int("max_model_len", self.max_model_len, 2)
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(f"preemption must be one of {', '.join(PREEMPTION_MODES)}, got "
                             f"{self.preemption!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got "
                             f"{self.gpu_memory_utilization!r}")
        if not self.swap_space_gib >= 0:
            raise ValueError(f"swap_space_gib must be >= 0, got {self.swap_space_gib!r}")
        if self.sample_interval_s is not None and not self.sample_interval_s > 0:
            raise ValueError(f"sample_interval_s must be > 0, got {self.sample_interval_s!r}")
        if not 0.0 <= self.beam_replace_prob <= 1.0:
            raise ValueError(f"beam_replace_prob must be in [0, 1], got "
                             f"{self.beam_replace_prob!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.cost_model, str) or not self.cost_model:
            raise ValueError(f"cost_model must be auto, roofline, calibrated or a calibration "
                             f"file, got {self.cost_model!r}")
        self._check_capacity_choices()
        self._check_prefix_tier()

    def _check_capacity_choices(self) -> None:
        if self.num_gpu_blocks is not None:
            _positive_int("num_gpu_blocks", self.num_gpu_blocks)
        mem = self.kv_cache_memory_gib
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float))
                                or not 0 < mem < float("inf")):
            raise ValueError(f"kv_cache_memory_gib must be a finite number > 0, got {mem!r}")
        if self.num_gpu_blocks is not None and mem is not None:
            raise ValueError("num_gpu_blocks and kv_cache_memory_gib both set the KV capacity; "
                             "give one")
        if self.long_prompts not in LONG_PROMPTS:
            raise ValueError(f"long_prompts must be one of {', '.join(LONG_PROMPTS)}, got "
                             f"{self.long_prompts!r}")

    def _check_prefix_tier(self) -> None:
        size = self.cpu_prefix_cache_gib
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not size >= 0:
            raise ValueError(f"cpu_prefix_cache_gib must be a number of GiB >= 0 or inf "
                             f"(unlimited), got {size!r}")
        if size > 0 and not self.prefix_caching:
            raise ValueError("cpu_prefix_cache_gib: the CPU prefix tier holds prefix-cache "
                             "blocks; it needs prefix_caching")

    @property
    def has_prefix_tier(self) -> bool:
        return self.cpu_prefix_cache_gib > 0

    def to_dict(self) -> dict:
        """The fields as JSON values (an unlimited tier as the string "unlimited")."""
        out = asdict(self)
        if math.isinf(self.cpu_prefix_cache_gib):
            out["cpu_prefix_cache_gib"] = UNLIMITED
        return out

    def resolved(self, model_context: int) -> SimConfig:
        """This configuration with the defaults filled in: `max_model_len` from the model's
        context length `model_context`, then `max_num_batched_tokens` from it."""
        max_len = self.max_model_len if self.max_model_len is not None else max(2, model_context)
        budget = self.max_num_batched_tokens
        if budget is None:
            budget = (DEFAULT_BATCHED_TOKENS if self.chunked_prefill
                      else max(DEFAULT_BATCHED_TOKENS, max_len))
        return replace(self, max_model_len=max_len, max_num_batched_tokens=budget)

    def resolved_limits(self) -> tuple[int, int]:
        """(max_model_len, max_num_batched_tokens) of a configuration `resolved` filled in."""
        if self.max_model_len is None or self.max_num_batched_tokens is None:
            raise ValueError("max_model_len / max_num_batched_tokens: unset; use "
                             "SimConfig.resolved(model_context) first")
        return self.max_model_len, self.max_num_batched_tokens


def check_tier_strategies(config: SimConfig, names: tuple[str, ...]) -> None:
    """A CPU prefix tier runs only under the paged strategy: raise ValueError otherwise
    (before any simulation starts)."""
    others = [n for n in names if n != PAGED]
    if config.has_prefix_tier and others:
        raise ValueError(f"cpu_prefix_cache_gib: the CPU prefix tier needs the paged strategy "
                         f"only; {others[0]!r} keeps one contiguous region per sequence and "
                         "caches no prefix blocks")


def parse_tier_size(text: str, name: str = "--cpu-prefix-cache") -> float:
    """"64" -> 64.0 GiB, "unlimited" -> math.inf; ValueError naming `name` for anything
    else (negative, not a number, NaN or inf spelt as a number)."""
    item = str(text).strip()
    if item.lower() == UNLIMITED:
        return math.inf
    try:
        value = float(item)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a size in GiB or 'unlimited'") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {text!r} must be a finite number of GiB >= 0, or "
                         "'unlimited'")
    return value


def tier_label(gib: float) -> str:
    """64.0 -> "64", math.inf -> "unlimited"."""
    return UNLIMITED if math.isinf(gib) else f"{gib:g}"


def check_strategies(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validated, de-duplicated strategy names in the given order."""
    if not names:
        raise ValueError(f"choose at least one cache strategy from {', '.join(STRATEGIES)}")
    out: list[str] = []
    for name in names:
        if name not in STRATEGIES:
            raise ValueError(f"unknown cache strategy {name!r}: choose from "
                             f"{', '.join(STRATEGIES)}")
        if name not in out:
            out.append(name)
    return tuple(out)
