"""How long a region each contiguous policy reserves for a sequence.

A contiguous cache must reserve a sequence's region before its prompt runs, so it has to guess
the final length. The policies of the vLLM paper's baselines differ only in that guess:

- ``orca-max``: `max_model_len` slots for every sequence (FasterTransformer, "Orca (Max)");
- ``orca-pow2``: the tokens it has now plus the next power of two of the tokens it will add,
  at most twice the true output ("if the true output length is 25, it reserves 32 slots");
- ``orca-oracle``: exactly its final length (the scheduler's `max_tokens` hint).

Every guess is capped at `max_model_len` when one is given; a sequence longer than that can
never be served. Reservations count tokens, prompt plus output; the buddy allocator then
rounds them up to a power of two.
"""

from __future__ import annotations

import numpy as np

POLICIES = ("orca-max", "orca-pow2", "orca-oracle")


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n, or 0 for n <= 0."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def reserve(policy: str, num_tokens: int, max_tokens: int | None,
            max_model_len: int | None) -> int | None:
    """Slots `policy` reserves for a sequence of `num_tokens` known tokens that may reach
    `max_tokens` tokens; None when the policy can never serve it (longer than
    `max_model_len`).

    `num_tokens` is the prompt at admission, or prompt + generated tokens when a preempted
    sequence is recomputed (orca-pow2 then rounds up what is left to generate).

    Raises:
        ValueError: `max_tokens` below `num_tokens`, or missing where the policy needs it.
    """
    if max_tokens is not None and max_tokens < num_tokens:
        raise ValueError(f"max_tokens={max_tokens} is below num_tokens={num_tokens}")
    if policy == "orca-max":
        r = max_model_len
    elif max_tokens is None:
        raise ValueError(f"max_tokens is required by policy {policy!r}: it reserves from the "
                         "sequence's final length")
    elif policy == "orca-oracle":
        r = max_tokens
    elif policy == "orca-pow2":
        r = num_tokens + pow2_at_least(max_tokens - num_tokens)
    else:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if max_model_len is not None:
        if num_tokens > max_model_len or (max_tokens is not None and max_tokens > max_model_len):
            return None
        r = min(r, max_model_len)  # type: ignore[type-var]
    return r
