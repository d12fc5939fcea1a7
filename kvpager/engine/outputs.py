"""What the engine hands back: finished requests, and counters of what the memory did."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CompletionOutput:
    """One generated sequence.

    index: sample number (parallel sampling) or rank (beam search, 0 = best).
    token_ids: generated tokens, the eos token included when the sequence stopped on it.
    cumulative_logprob: sum of the model's log-probabilities of token_ids (unmodified
        distribution: log_softmax of the logits, whatever the temperature).
    score: beam search's length-normalised score (cumulative_logprob / len ** penalty);
        None for sampling.
    finish_reason: "stop" (eos), "length" (max_tokens or max_model_len), "beam" (beam
        search ended: the best hypotheses are final), or "rejected: ..." (the request could
        never run; token_ids is empty).
    """

    index: int
    token_ids: tuple[int, ...]
    cumulative_logprob: float
    finish_reason: str
    score: float | None = None


@dataclass(frozen=True)
class RequestOutput:
    """A finished request: its prompt and its completions (best first for beam search)."""

    request_id: Hashable
    prompt_token_ids: tuple[int, ...]
    outputs: tuple[CompletionOutput, ...]
    num_preemptions: int = 0


@dataclass
class EngineStats:
    """Counters over the engine's life, in KV blocks unless named otherwise.

    cow_copies: blocks copied on write (a shared block about to be written).
    fork_shared_blocks: blocks a fork shared instead of copying: what an engine that copies
        whole sequences on fork (as a contiguous cache must) would have copied.
    swapped_out / swapped_in: blocks moved to / from the CPU swap area.
    preemptions: by mode, "swap" and "recompute".
    peak_blocks_used: most GPU blocks in use during any step.
    prefix_hit_blocks / prefix_queried_blocks: prompt blocks found in / looked up in the
        prefix cache (0 without prefix caching).
    """

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    cow_copies: int = 0
    forks: int = 0
    fork_shared_blocks: int = 0
    swapped_out: int = 0
    swapped_in: int = 0
    preemptions: dict[str, int] = field(default_factory=lambda: {"swap": 0, "recompute": 0})
    peak_blocks_used: int = 0
    prefix_hit_blocks: int = 0
    prefix_queried_blocks: int = 0

    @property
    def blocks_saved_by_sharing(self) -> int:
        """Block copies avoided by forking with reference counts: shared minus copied later."""
        return self.fork_shared_blocks - self.cow_copies

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        out: dict[str, int | dict[str, int]] = {
            k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()
        }
        out["blocks_saved_by_sharing"] = self.blocks_saved_by_sharing
        return out


__all__ = ["CompletionOutput", "EngineStats", "RequestOutput"]
