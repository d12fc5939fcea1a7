"""What a client asks the engine to generate: `SamplingParams`.

Plain data, checked on construction, so a bad request fails when it is submitted instead of
halfway through a batch. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EARLY_STOPPING = (False, True, "never")


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one request.

    Args:
        max_tokens: tokens to generate at most (>= 1); the engine's scheduler stops every
            sequence there (or at the scheduler's `max_model_len`, if lower).
        n: parallel samples of the prompt; they share the prompt's KV blocks.
        beam_width: beams of a beam search (> 1 turns it on; excludes n > 1 and temperature).
        temperature: 0 means greedy (argmax); > 0 samples from softmax(logits / temperature).
        top_k: keep the k most likely tokens before sampling (0 = all).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 = all).
        seed: makes sampling reproducible. Each sample j of the request draws from its own
            generator seeded by (seed, j), so its tokens do not depend on which other
            requests share its batches, nor on preemption.
        eos_token_id: ids that end a sequence (the id is kept in the output); None uses the
            engine's default (the model's), () disables stopping on a token.
        ignore_eos: never stop on `eos_token_id` (generate exactly max_tokens).
        length_penalty: beam search: a finished beam scores sum(logprobs) / len ** penalty,
            len counting the generated tokens (transformers' convention).
        early_stopping: beam search: True stops once `beam_width` beams have finished; False
            stops when the best running beam, scored at its current length, cannot beat the
            worst finished one; "never" scores it at the longest possible length instead
            (transformers' three modes).
    """

    max_tokens: int = 16
    n: int = 1
    beam_width: int = 1
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    eos_token_id: int | Sequence[int] | None = None
    ignore_eos: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def __post_init__(self) -> None:
        _int_at_least("max_tokens", self.max_tokens, 1)
        _int_at_least("n", self.n, 1)
        _int_at_least("beam_width", self.beam_width, 1)
        _int_at_least("top_k", self.top_k, 0)
        if self.seed is not None:
            _int_at_least("seed", self.seed, 0)
        for name in ("temperature", "top_p", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n > 1 and self.beam_width > 1:
            raise ValueError(f"n={self.n} and beam_width={self.beam_width}: choose parallel "
                             "sampling or beam search, not both")
        if self.beam_width > 1 and self.temperature > 0:
            raise ValueError(f"beam_width={self.beam_width} with temperature="
                             f"{self.temperature}: beam search here is deterministic; use "
                             "temperature=0")
        if not any(self.early_stopping is mode for mode in (False, True)) \
                and self.early_stopping != "never":
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got "
                             f"{self.early_stopping!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        ids = self.eos_ids()
        if ids is not None:
            for token in ids:
                _int_at_least("eos_token_id", token, 0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def width(self) -> int:
        """Sequences the request runs once its prompt is computed."""
        return max(self.n, self.beam_width)

    def eos_ids(self) -> tuple[int, ...] | None:
        """The stop ids as a tuple, or None to use the engine's default."""
        if self.eos_token_id is None:
            return None
        if isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool):
            return (self.eos_token_id,)
        if isinstance(self.eos_token_id, (str, bytes)) or not isinstance(
            self.eos_token_id, Sequence
        ):
            raise ValueError(f"eos_token_id must be an int, a sequence of ints or None, got "
                             f"{self.eos_token_id!r}")
        return tuple(self.eos_token_id)


__all__ = ["EARLY_STOPPING", "SamplingParams"]
