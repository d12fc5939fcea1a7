"""The reuse ceiling of a trace: the share of its prompt blocks that any prefix cache, however
large, could serve.

A request can reuse a prompt block only if an earlier request held the same prefix up to the
end of that block (keys are chained: equal keys imply equal prefixes, see
`kvpager.sim.traces.keys`). So, walking the requests in trace order, request i's reusable
blocks are the longest leading run of its keys that some earlier request also had. With an
unbounded cache that never evicts and requests that never overlap in time, that is exactly
what the manager's prefix cache would hit; any real run hits at most this (a request that
arrives while the earlier one is still computing its prompt cannot hit those blocks yet).

Counted like the manager counts its hit rate: per request, the queried blocks are its full
prompt blocks that stop before the last prompt token (`min(full, (prompt - 1) //
block_size)`: the last token is always computed, its logits are needed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvpager.sim.traces import Trace


@dataclass(frozen=True)
class ReuseCeiling:
    """What an unbounded prefix cache could serve of a trace, at one KV block size."""

    block_size: int
    queried_blocks: int
    reusable_blocks: int
    prompt_tokens: int

    @property
    def block_rate(self) -> float:
        """Reusable / queried blocks: the ceiling of the prefix cache's hit rate."""
        return self.reusable_blocks / self.queried_blocks if self.queried_blocks else 0.0

    @property
    def token_rate(self) -> float:
        """Reusable prompt tokens (whole blocks) / all prompt tokens."""
        tokens = self.reusable_blocks * self.block_size
        return tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"block_rate": self.block_rate, "token_rate": self.token_rate}


def reuse_ceiling(trace: Trace, block_size: int) -> ReuseCeiling:
    """The trace's reuse ceiling at `block_size` (see the module docstring)."""
    if type(block_size) is not int or block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, got {block_size!r}")
    seen: set[int] = set()
    queried = reusable = tokens = 0
    for i in range(len(trace)):
        prompt = int(trace.prompt_tokens[i])
        keys = trace.block_keys(i, block_size).tolist()
        asked = min(len(keys), (prompt - 1) // block_size)
        run = 0
        while run < asked and keys[run] in seen:
            run += 1
        queried += asked
        reusable += run
        tokens += prompt
        seen.update(keys)
    return ReuseCeiling(block_size, queried, reusable, tokens)
