"""Contiguous KV caching: one region per sequence, reserved in full at admission.

This is the baseline that paging is measured against (the vLLM paper's Orca
re-implementations, and FasterTransformer). A sequence's KV lives in one contiguous region of
the token-addressed cache, so the region must be as long as the sequence may ever get, and it
is reserved before the prompt runs. The policies (``orca-max``, ``orca-pow2``,
``orca-oracle``, see `policy.py`) differ only in how long they guess. Regions are carved out
of a `BuddyAllocator`, as in the paper's baselines, so a region of r slots occupies a block of
`2**ceil(log2 r)` slots, and admission can fail for want of one large enough block while
enough slots are free in total: both effects are measured, not assumed.

Reservations count tokens, prompt plus output. The KV of the final token is never computed
(the scheduler stops a sequence when that token is sampled), so even an oracle reservation
leaves one slot per sequence unused; `memory_breakdown` (`usage.py`) counts it as internal
fragmentation, as the paged breakdown counts the unused tail of a last block.

Nothing is shared in a contiguous cache: the samples or beams of a request get one region
each, all reserved at admission (`num_seqs`), and forking copies the parent's tokens into the
child's region (`fork_many` returns the slot pairs; `take_copies` drains them for an executor
or a simulator that counts them). Prefix caching does not exist here: `token_ids` and
`block_hashes` are accepted for the protocol and ignored.

Sequences never grow out of their regions (the scheduler stops them at `max_tokens`), so
`blocks_needed_batch` is zero and the scheduler never preempts for growth; swap and
recompute still work for schedulers or engines that preempt for other reasons. Swapping
moves whole regions to a CPU buddy allocator of `num_cpu_tokens` slots (`swap.py`).

The allocation unit is one token slot (`block_size = 1`): `num_free_blocks()` is free slots
and a slot mapping is `region_offset + position`.
"""

from kvpager.sim.contiguous.manager import ContiguousManager, Region, ReservationExceededError
from kvpager.sim.contiguous.policy import POLICIES

__all__ = ["POLICIES", "ContiguousManager", "Region", "ReservationExceededError"]
