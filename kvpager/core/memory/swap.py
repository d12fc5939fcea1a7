"""Moving a group of sequences between the GPU pool and the CPU swap area.

A group (the beams of one beam search, the samples of one request) moves all or nothing:
running half a group is useless, and its members share blocks, which must stay shared on the
other side so that a swapped group takes no more room than it did. `KVCacheManager.swap_out`
and `swap_in` check and count; these functions do the moving, and `swap_groups` moves
every KV-cache group of a hybrid model (`HybridKVCacheManager`) together.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kvpager.core.errors import OutOfBlocksError, WrongDeviceError
from kvpager.core.groups import NULL_BLOCK
from kvpager.core.memory.append import clear_room
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.seq_store import DEVICE_NAMES, ON_GPU, SequenceStore

if TYPE_CHECKING:  # the manager imports this module
    from kvpager.core.memory.manager import KVCacheManager
    from kvpager.core.memory.state_pages import StatePages


def group_rows(seqs: SequenceStore, seq_ids: Iterable[Hashable], where: int) -> np.ndarray:
    """Rows of a group, checked: non-empty, distinct, all on `where`."""
    ids = list(seq_ids)
    if not ids:
        raise ValueError("seq_ids must name at least one sequence")
    rows = seqs.rows(ids)
    if np.unique(rows).size != rows.size:
        raise ValueError(f"seq_ids lists a sequence twice: {ids!r}")
    wrong = seqs.where[rows] != where
    if wrong.any():
        seq = ids[int(np.argmax(wrong))]
        raise WrongDeviceError(
            f"sequence {seq!r} is on the {DEVICE_NAMES[1 - where]}, not the {DEVICE_NAMES[where]}"
        )
    return rows


def distinct_blocks(seqs: SequenceStore, rows: np.ndarray) -> np.ndarray:
    """Sorted distinct block ids referenced by the rows (NULL_BLOCK entries are none)."""
    ids = np.unique(np.concatenate([seqs.blocks(r) for r in rows.tolist()]))
    return ids[ids != NULL_BLOCK]


def move_rows(
    seqs: SequenceStore, rows: np.ndarray, src: BlockPool, dst: BlockPool, where: int
) -> np.ndarray:
    """Give the rows blocks of `dst` in place of their `src` blocks.

    Returns int64 `[num_distinct, 2]` (src_block, dst_block) pairs whose data the executor
    must copy. Each destination block gets as many references as the group held on its source
    block; the source loses exactly those (others outside the group keep theirs).

    Raises:
        OutOfBlocksError: `dst` lacks room (nothing changed).
    """
    refs = np.concatenate([seqs.blocks(r) for r in rows.tolist()])
    refs = refs[refs != NULL_BLOCK]  # released window entries stay null on either side
    distinct, counts = np.unique(refs, return_counts=True)
    if distinct.size > dst.num_free:
        raise OutOfBlocksError(dst.device, int(distinct.size), dst.num_free)
    new = dst.allocate(distinct.size)
    if (counts > 1).any():
        dst.share(np.repeat(new, counts - 1))
    src.free(refs[::-1])
    for r in rows.tolist():
        nb = int(seqs.nblocks[r])
        held = seqs.table[r, :nb]
        live = held != NULL_BLOCK
        held[live] = new[np.searchsorted(distinct, held[live])]
        seqs.where[r] = where
    clear_room(seqs, rows)  # sharing changed; the next append plans the row again
    return np.stack([distinct.astype(np.int64), new.astype(np.int64)], axis=1)


def group_pages(managers: Sequence[KVCacheManager], state: StatePages | None,
                seq_ids: list[Hashable], where: int) -> int:
    """Pages a group of sequences on `where` holds in every KV-cache group (pages shared
    within the group counted once), its state pages included: what moving it takes."""
    total = sum(distinct_blocks(m.rows, group_rows(m.rows, seq_ids, where)).size
                for m in managers)
    if state is not None:
        total += state.distinct(group_rows(managers[0].rows, seq_ids, where))
    return total


def swap_groups(managers: Sequence[KVCacheManager], state: StatePages | None,
                seq_ids: list[Hashable], src: BlockPool, dst: BlockPool, where: int
                ) -> np.ndarray:
    """Move a group of sequences (on `where`, whose pool is `src`) to `dst` in every
    KV-cache group, all or nothing: int64 `[n, 2]` (src, dst) page pairs of all groups.

    Raises (nothing changed): OutOfBlocksError (`dst` lacks the pages), the errors of
    `group_rows`."""
    need = group_pages(managers, state, seq_ids, where)
    if need > dst.num_free:
        raise OutOfBlocksError(dst.device, need, dst.num_free)
    rows = group_rows(managers[0].rows, seq_ids, where)
    pairs = [m.swap_out(seq_ids) if where == ON_GPU else m.swap_in(seq_ids)
             for m in managers]
    if state is not None:
        pairs.append(state.move(rows, src, dst))
    return np.concatenate(pairs)
