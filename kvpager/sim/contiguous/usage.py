"""Where the KV memory of a contiguous cache goes, in the same terms as `kvpager.core.memory.usage`.

The slot counts sum to the cache's capacity:

- token: slots holding a token's KV (the token counts of the sequences passed in);
- reserved: slots those sequences will still fill, up to their final length (capped at their
  region), plus what children will fill in spare regions reserved for forks that have not
  happened yet (up to the group's final length, when `allocate` got a `max_tokens` hint;
  without one the spares count as internal);
- internal fragmentation: allocated slots no token will ever use. For a contiguous cache this
  is the policy's over-reservation, the buddy allocator's rounding up to a power of two, and
  the slot of the final token, whose KV is never computed. GPU sequences left out of the
  rows count here too, as in the paged breakdown;
- external fragmentation: free slots that cannot be used. While a request waits, the free
  slots in free blocks smaller than the block its region would take (reservation by the
  policy, rounded by the allocator); 0 while none waits, or when the policy can never serve
  the waiting request;
- free: the other free slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kvpager.sim.contiguous.policy import check_int, reserve

if TYPE_CHECKING:
    from kvpager.sim.contiguous.manager import ContiguousManager


def contiguous_breakdown(
    m: ContiguousManager,
    rows: np.ndarray,
    final_slots: np.ndarray,
    next_reservation: int | None = None,
    next_num_tokens: int | None = None,
) -> dict[str, int]:
    """Slot counts by kind for the GPU cache; see the module docstring and
    `ContiguousManager.memory_breakdown` for the arguments."""
    rows = np.asarray(rows, dtype=np.int64)
    final = np.asarray(final_slots, dtype=np.int64)
    if final.shape != rows.shape:
        raise ValueError(f"final_slots has shape {final.shape}, rows {rows.shape}: they must "
                         "match")
    external_for = None
    if next_reservation is not None:
        check_int("next_reservation", next_reservation, 1)
        if next_num_tokens is None:
            if m.policy == "orca-pow2":
                raise ValueError("next_num_tokens is required under policy 'orca-pow2': its "
                                 "reservation depends on the waiting request's prompt length")
            next_num_tokens = 1  # orca-max and orca-oracle do not depend on it
        check_int("next_num_tokens", next_num_tokens, 1)
        external_for = reserve(m.policy, min(next_num_tokens, next_reservation),
                               next_reservation, m.max_model_len)
    if rows.size:
        m.check_rows(rows)
    table = m.rows
    n, size = table.ntokens[rows], table.region_size[rows]
    token = int(n.sum())
    reserved = int((np.minimum(np.maximum(final, n), size) - n).sum())
    reserved += sum(g.reserved_slots() for g in m.groups)
    external = 0 if external_for is None else m.gpu.free_slots_below(external_for)
    return {"token": token, "reserved": reserved,
            "internal": m.gpu.used_slots - token - reserved, "external": external,
            "cached": 0, "free": m.gpu.free_slots - external}
