"""LLMEngine: a real model driven by the library's `Scheduler` and `KVCacheManager`.

This is the "real executor" of docs/architecture.md: the simulator and this engine run the same
scheduler and manager; here the plans move real K/V tensors. One step:

1. `Scheduler.schedule()` picks prefill chunks and decodes and returns the manager's plans.
2. `KVCache.execute(out)` carries out swap-out, swap-in and copy-on-write, in that order.
3. The model runs the step; attention writes K/V at the planned slots with
   `reshape_and_cache` and decodes with `paged_attention` (see `kvpager.engine.attention`).
4. Next tokens are chosen: sampled per sample, or by a beam-search step per request.
5. `Scheduler.complete_step(out, finished)` reports sequences that hit an eos token (length
   limits are the scheduler's); it forks a finished prompt into its n samples / beams,
   which share the prompt's blocks.
6. Only then the step's decisions change sequences: new tokens go into
   `SequenceState.token_ids`, and beam search forks surviving beams with
   `Scheduler.fork_seq` (sharing every block; the partial last block is copied when first
   written) and frees pruned ones with `Scheduler.free_seq`. Doing this after step 5 keeps
   the rows of the step's batch valid while the scheduler reads them.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace

import torch

from kvpager import backends
from kvpager.backends.layout import BLOCK_SIZES, HEAD_SIZES, cache_dtype_for
from kvpager.cache import KVCache
from kvpager.core.config import CacheConfig, SchedulerConfig
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.sched.output import SchedulerOutput
from kvpager.core.sched.request import Request, SequenceState
from kvpager.core.sched.scheduler import Scheduler
from kvpager.engine.apply import apply_beam_step, apply_samples, decide_beam_step
from kvpager.engine.inputs import build_step_inputs
from kvpager.engine.model import PagedModel
from kvpager.engine.outputs import EngineStats, RequestOutput
from kvpager.engine.params import SamplingParams
from kvpager.engine.registry import load_model
from kvpager.engine.sampler import choose_tokens
from kvpager.engine.tracking import RequestState, SampleState


def _eos_of(hf_model: object) -> tuple[int, ...]:
    for holder in (getattr(hf_model, "generation_config", None), getattr(hf_model, "config", None)):
        eos = getattr(holder, "eos_token_id", None)
        if eos is not None:
            return (eos,) if isinstance(eos, int) else tuple(eos)
    return ()


def _with_model_groups(config: CacheConfig, model: PagedModel, kv_cache_dtype: str
                       ) -> CacheConfig:
    """The cache config with the model's KV-cache groups (None for one full-attention
    group), their bytes per element those of the cache's storage dtype."""
    layout = model.layout
    element = torch.empty((), dtype=cache_dtype_for(kv_cache_dtype, model.dtype)).element_size()
    groups = tuple(replace(g, dtype_bytes=element) for g in layout.groups) \
        if layout.hybrid else None
    if config.groups is not None and config.groups != groups:
        raise ValueError(f"cache_config.groups {config.groups!r} is not the model's KV-cache "
                         f"groups {groups!r}: leave it None and the engine sets it")
    return replace(config, groups=groups)


class LLMEngine:
    """Continuous-batching generation over a paged KV cache.

    Args:
        model: the network (`PagedLlama` / `PagedGptOss` / `PagedGemma3`, usually through
            `LLMEngine.from_hf`), on the device the cache goes to.
        cache_config: blocks of the device cache and of the CPU swap area, block size
            (8, 16 or 32), prefix caching. Its `groups` is the model's: left None, the engine
            fills it in for a hybrid model (window and full layers) and builds a
            `HybridKVCacheManager`, whose window groups release blocks; one attention
            kind over full attention keeps the plain `KVCacheManager`.
        scheduler_config: batching limits and preemption policy (default `SchedulerConfig()`).
            `max_model_len` has one owner, the cache: set it in either config (a value given
            only to the scheduler is handed to the cache); two different values raise
            ValueError.
        backend: kernel backend of the cache ops and decode attention ("auto", "reference",
            "triton", "cuda"); resolved now, so an unusable one fails here.
        kv_cache_dtype, k_scale, v_scale: cache storage ("auto" = the model dtype, or FP8).
        eos_token_id: default stop ids of requests that do not set their own.
        check_indices: let the ops re-validate every plan's indices (one host sync per op
            on a GPU); the manager's plans are trusted, so a server can turn it off.
        layers_per_group: KV-cache groups of at most this many layers of one kind (None:
            one group per kind). Equal groups make the common page the block of that many
            layers, so a kind with fewer layers (Gemma 3's global ones) pads less; more
            groups cost more tables per step (docs/architecture.md).
    """

    def __init__(
        self, model: PagedModel, cache_config: CacheConfig,
        scheduler_config: SchedulerConfig | None = None, *, backend: str = "auto",
        kv_cache_dtype: str = "auto", k_scale: float | torch.Tensor = 1.0,
        v_scale: float | torch.Tensor = 1.0, eos_token_id: int | Sequence[int] | None = None,
        check_indices: bool = True, layers_per_group: int | None = None,
    ) -> None:
        if not isinstance(model, PagedModel):
            raise ValueError(f"model must be a PagedLlama, PagedGptOss or PagedGemma3 (a "
                             f"PagedModel), got {type(model).__name__}")
        if layers_per_group is not None and (
                isinstance(layers_per_group, bool) or not isinstance(layers_per_group, int)
                or layers_per_group < 1):
            raise ValueError(f"layers_per_group must be a positive int or None, got "
                             f"{layers_per_group!r}")
        if not isinstance(cache_config, CacheConfig):
            raise ValueError(f"cache_config must be a CacheConfig, got "
                             f"{type(cache_config).__name__}")
        if cache_config.block_size not in BLOCK_SIZES:
            raise ValueError(f"cache_config.block_size must be one of {BLOCK_SIZES} (the "
                             f"paged-attention kernels' block sizes), got "
                             f"{cache_config.block_size}")
        shape = model.shape
        if shape.head_size not in HEAD_SIZES:
            raise ValueError(f"model head size {shape.head_size} is not one the paged-attention "
                             f"kernels support {HEAD_SIZES}")
        self.backend = backends.resolve(backend, model.device, head_size=shape.head_size,
                                        block_size=cache_config.block_size, dtype=model.dtype,
                                        kv_cache_dtype=kv_cache_dtype).name
        if layers_per_group is not None:
            model.regroup(layers_per_group)
        self.model = model
        scheduler_config = scheduler_config or SchedulerConfig()
        if cache_config.max_model_len is None and scheduler_config.max_model_len is not None:
            cache_config = replace(cache_config, max_model_len=scheduler_config.max_model_len)
        cache_config = _with_model_groups(cache_config, model, kv_cache_dtype)
        self.manager: KVCacheManager | HybridKVCacheManager = (
            KVCacheManager(cache_config) if cache_config.groups is None
            else HybridKVCacheManager(cache_config))
        self.scheduler = Scheduler(self.manager, scheduler_config)  # checks they agree
        # One K/V tensor pair per slot: the j-th layer of every group shares slot j.
        self.cache = KVCache(
            model.layout.num_slots, cache_config.num_gpu_blocks, shape.num_kv_heads,
            shape.head_size, cache_config.block_size,
            num_cpu_blocks=cache_config.num_cpu_blocks + cache_config.num_cpu_prefix_blocks,
            dtype=model.dtype, kv_cache_dtype=kv_cache_dtype, device=model.device,
            k_scale=k_scale, v_scale=v_scale, backend=self.backend)
        self.eos_token_ids = SamplingParams(eos_token_id=eos_token_id).eos_ids() or ()
        self.check_indices = check_indices
        self.stats = EngineStats()
        self._requests: dict[Hashable, RequestState] = {}
        self._done: list[RequestOutput] = []
        self._arrivals = itertools.count()

    @classmethod
    def from_hf(
        cls, hf_model: object, cache_config: CacheConfig,
        scheduler_config: SchedulerConfig | None = None, *, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None, **kwargs: object,
    ) -> LLMEngine:
        """An engine over a copy of a `transformers` model's weights (Llama, gpt-oss, Gemma 3
        text: `kvpager.engine.registry.MODELS`); eos ids default to the model's generation
        config. An architecture or attention type the engine cannot serve raises
        `UnsupportedModelError` (a ValueError) before anything is built."""
        model = load_model(hf_model, dtype=dtype, device=device)
        kwargs.setdefault("eos_token_id", _eos_of(hf_model))
        return cls(model, cache_config, scheduler_config, **kwargs)  # type: ignore[arg-type]

    # ---- requests -----------------------------------------------------------------------
    def add_request(self, request_id: Hashable, prompt_token_ids: Sequence[int],
                    params: SamplingParams | None = None) -> None:
        """Queue a request. A request that can never run (too long for the cache or the
        limits) comes back from the next `step()` with a "rejected: ..." finish reason."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        try:
            prompt = tuple(operator.index(t) for t in prompt_token_ids)
        except TypeError:
            raise ValueError(f"prompt_token_ids must be a sequence of ints, got "
                             f"{prompt_token_ids!r}") from None
        vocab = self.model.shape.vocab_size
        if not prompt or min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt_token_ids must be non-empty ids in [0, {vocab}), got "
                             f"{list(prompt)[:8]}{'...' if len(prompt) > 8 else ''}")
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already running")
        cfg = self.scheduler.config
        if params.beam_width > 1 and cfg.chunked_prefill and (
                cfg.preemption == "recompute" or not self.manager.has_swap_space):
            raise ValueError("beam search with chunked prefill needs preemption by swap: a "
                             "recomputed group's beams may finish their prefills in different "
                             "steps, and a beam step needs all of them")
        own = params.eos_ids()
        eos = frozenset(() if params.ignore_eos else self.eos_token_ids if own is None else own)
        max_new = params.max_tokens
        limit = self.scheduler.max_model_len  # the one limit: the manager's, or the config's
        if limit is not None:
            max_new = max(1, min(max_new, limit - len(prompt)))
        request = Request(request_id, len(prompt), params.max_tokens,
                          arrival_time=float(next(self._arrivals)), n=params.n,
                          beam_width=params.beam_width, prompt_token_ids=prompt)
        group = self.scheduler.add_request(request)
        state = RequestState(request_id, prompt, params, eos, max_new, group)
        if state.finished:
            self._done.append(state.output())
        else:
            self._requests[request_id] = state

    def has_unfinished(self) -> bool:
        return bool(self._requests or self._done)

    def memory_usage(self) -> dict[str, int]:
        """Blocks in use now (GPU and CPU swap area), capacities, and bytes per block."""
        m, c = self.manager, self.cache
        return {
            "gpu_blocks_used": m.num_used_blocks(),
            "gpu_blocks": m.config.num_gpu_blocks,
            "cpu_blocks_used": m.num_used_blocks("cpu") if m.has_swap_space else 0,
            "cpu_blocks": m.config.num_cpu_blocks,
            "bytes_per_block": KVCache.bytes_per_block(
                c.num_layers, c.num_kv_heads, c.head_size, c.block_size, c.dtype,
                c.kv_cache_dtype),
        }

    # ---- the loop -----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return the requests that finished in it."""
        finished, self._done = self._done, []
        if not self._requests:
            return finished
        out = self.scheduler.schedule()
        if out.is_empty:  # the scheduler guarantees progress; never spin silently
            raise RuntimeError(f"the scheduler made no progress with {len(self._requests)} "
                               "requests unfinished")
        self.cache.execute(out)
        self._count_memory(out)
        batch, logit_seqs = build_step_inputs(out, self.manager.block_size, self.model.device,
                                              self.manager.config.groups)
        self.stats.prefill_tokens += batch.num_prefill_tokens
        self.stats.decode_tokens += batch.num_decodes
        logits = self.model.forward(batch, self.cache, backend=self.backend,
                                    check_indices=self.check_indices) \
            if batch.num_tokens else None
        chosen = self._choose(logits, logit_seqs)
        self.scheduler.complete_step(out, chosen.finished_ids)
        for state in chosen.states:
            if state.beam is not None:
                apply_beam_step(self.scheduler, self._held_blocks, self.stats, state)
            else:
                apply_samples(self.scheduler, state)
        for rid in [rid for rid, s in self._requests.items() if s.finished]:
            finished.append(self._requests.pop(rid).output())
        self.stats.steps += 1
        prefix = self.manager.prefix_cache
        if prefix is not None:
            self.stats.prefix_hit_blocks = prefix.hit_blocks
            self.stats.prefix_queried_blocks = prefix.queried_blocks
        return finished

    def run(self, max_steps: int | None = None) -> list[RequestOutput]:
        """Step until every request has finished; outputs in finishing order."""
        outputs: list[RequestOutput] = []
        steps = 0
        while self.has_unfinished():
            outputs += self.step()
            steps += 1
            if max_steps is not None and steps >= max_steps and self.has_unfinished():
                raise RuntimeError(f"requests still unfinished after {max_steps} steps")
        return outputs

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Run `prompts` to completion together, as requests 0..len-1 of an idle engine
        (use `add_request` / `step` to mix in other traffic); outputs in prompt order."""
        if self.has_unfinished():
            raise ValueError("generate() needs an idle engine: requests added with "
                             "add_request() are still unfinished; drive them with step()")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"params has {len(params)} entries for {len(prompts)} prompts")
        for rid, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            self.add_request(rid, prompt, p)
        by_id = {o.request_id: o for o in self.run()}
        return [by_id[rid] for rid in range(len(prompts))]

    # ---- one step, in parts -------------------------------------------------------------
    def _count_memory(self, out: SchedulerOutput) -> None:
        s = self.stats
        s.cow_copies += len(out.copies)
        s.swapped_out += len(out.swap_out)
        s.swapped_in += len(out.swap_in)
        s.preemptions = dict(self.scheduler.num_preempted)
        s.peak_blocks_used = max(s.peak_blocks_used, self.manager.num_used_blocks())

    def _choose(self, logits: torch.Tensor | None, seqs: list[SequenceState]) -> _Choices:
        """Decide next tokens without applying them: sampled tokens go to each sample's
        `pending`, beam decisions to `state.beam_step`."""
        choices = _Choices()
        if logits is None:  # a step that computed no token (only moved memory)
            return choices
        by_state: dict[int, list[tuple[int, SequenceState]]] = {}
        for row, seq in enumerate(seqs):
            state = self._requests[seq.group.request_id]
            if id(state) not in by_state:
                choices.states.append(state)
                by_state[id(state)] = []
            by_state[id(state)].append((row, seq))
        picks: list[tuple[int, RequestState, SampleState]] = []
        for state in choices.states:
            items = by_state[id(state)]
            if state.params.beam_width > 1:
                choices.finished_ids += decide_beam_step(state, items, logits)
                if state.beam is not None and state.beam.generated == 1:
                    self._count_fork_of_prompt(state)
                continue
            for row, seq in items:
                if not state.started:
                    state.start_samples(seq, self.model.device)
                    self._count_fork_of_prompt(state)
                    picks += [(row, state, s) for s in state.samples]
                else:
                    picks.append((row, state, state.sample_of(seq)))
        if picks:
            index = torch.tensor([row for row, _, _ in picks], device=logits.device)
            tokens, logprobs = choose_tokens(logits[index], [st.params for _, st, _ in picks],
                                             [s.generator for _, _, s in picks])
            for (_, state, sample), token, logprob in zip(picks, tokens, logprobs,
                                                          strict=True):
                sample.pending = (token, logprob)
                if token in state.eos and sample.seq is not None:
                    choices.finished_ids.append(sample.seq.seq_id)
        return choices

    def _count_fork_of_prompt(self, state: RequestState) -> None:
        """The scheduler forks a finished prompt into its samples / beams: each child shares
        all the prompt's blocks instead of copying them."""
        children = state.params.width - 1
        if children:
            prompt_seq = state.group.seqs[0]
            self.stats.forks += children
            self.stats.fork_shared_blocks += children * self._held_blocks(prompt_seq.seq_id)

    def _held_blocks(self, seq_id: Hashable) -> int:
        """GPU blocks the sequence holds in every group (released window entries not
        counted): what a fork of it shares."""
        m = self.manager
        if isinstance(m, HybridKVCacheManager):
            return sum(int((m.group(g).block_ids(seq_id) >= 0).sum())
                       for g in range(m.num_groups))
        return len(m.block_ids(seq_id))


@dataclass
class _Choices:
    states: list[RequestState] = field(default_factory=list)
    finished_ids: list[Hashable] = field(default_factory=list)
