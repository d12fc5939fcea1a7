"""Each sequence's prefix chain: how far its hashing has got, as columns of the manager's rows.

A sequence's full blocks get chained keys (`prefix.chain_key`): its prompt's keys at
admission, then one more key each time a block it decodes fills, made from the tokens it
appended, when they are known. This module keeps that per-sequence cursor and nothing
global: which keys are cached, and where, is the block pool's index (`BlockPool.register`,
`match`); the `PrefixCache` ties the two together.

The cursor lives in columns of the manager's `RowTable` (so a reused row starts from an
empty chain whatever order its previous owner was cleaned up in), one entry per row:

    chain_keys: object, the list of the row's full-block keys (None: no chain).
    chain_num_keys: int64 `len(chain_keys[row])` (0 for None), for batched reads.
    chain_registered: int64 how many leading keys are registered (committed) for the row.
    chain_open: bool whether the chain can go on (its tokens so far are all known and its
        keys are kvpager's own digests).
    chain_pending: int64 `[rows, width]` tokens recorded past the last key, -1 unknown
        (widened when a multi-token append outruns it).

A decode step records the tokens of a whole batch with one array write; Python work is done
only for the rows whose block just filled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

import numpy as np

from kvpager.core.rows import RowTable

_ROOT = b"kvpager-prefix-v1"
_blake2b = hashlib.blake2b


def chain_key(parent: bytes | None, block_tokens: bytes) -> bytes:
    """The key of a block: BLAKE2b-128 of its parent's key (a root constant for the first
    block) and its token ids as little-endian int64 bytes (see `kvpager.core.memory.prefix`
    for why this digest)."""
    return _blake2b((_ROOT if parent is None else parent) + block_tokens,
                    digest_size=16).digest()


class PrefixChains:
    """The per-row chain cursors, registered as columns on `rows`.

    Args:
        rows: the manager's table (the same one its `SequenceStore` is).
        block_size: tokens per block.
    """

    def __init__(self, rows: RowTable, block_size: int) -> None:
        self._rows = rows
        self.block_size = block_size
        rows.add_column("chain_keys", object, None)
        rows.add_column("chain_num_keys", np.int64, 0)
        rows.add_column("chain_registered", np.int64, 0)
        rows.add_column("chain_open", np.bool_, False)
        rows.add_column("chain_pending", np.int64, -1, width=2 * block_size)

    # ---- reads --------------------------------------------------------------------------
    def keys(self, row: int) -> list[Hashable] | None:
        """The row's full-block keys so far (a copy), or None without a chain."""
        keys = self._rows.chain_keys[row]
        return None if keys is None else list(keys)

    def snapshot(self, row: int) -> tuple[tuple[Hashable, ...] | None, int, bool, list[int]]:
        """(keys, registered, open, pending tokens up to the last recorded one) of a row:
        for tests and tools."""
        t = self._rows
        keys = t.chain_keys[row]
        pending = t.chain_pending[row]
        known = np.flatnonzero(pending >= 0)
        end = int(known[-1]) + 1 if known.size else 0
        return (None if keys is None else tuple(keys), int(t.chain_registered[row]),
                bool(t.chain_open[row]), pending[:end].tolist())

    # ---- changes ------------------------------------------------------------------------
    def start(self, row: int, keys: list[Hashable], num_hits: int,
              tail_tokens: np.ndarray | None) -> None:
        """A new sequence at `row`: `keys` of its full prompt blocks, the first `num_hits`
        already cached (shared), and the int64 tokens of its partial last block, or None when
        its tokens are unknown (the chain then ends with the prompt)."""
        t = self._rows
        t.chain_keys[row] = keys
        t.chain_num_keys[row] = len(keys)
        t.chain_registered[row] = num_hits
        chained = tail_tokens is not None and (not keys or isinstance(keys[-1], bytes))
        t.chain_open[row] = chained
        t.chain_pending[row] = -1
        if chained and tail_tokens is not None and tail_tokens.size:
            t.chain_pending[row, : tail_tokens.size] = tail_tokens

    def fork(self, parents: np.ndarray, children: np.ndarray) -> None:
        """Children start with copies of their parents' chains (int64 rows, pairwise)."""
        t = self._rows
        keys = t.chain_keys
        for parent, child in zip(parents.tolist(), children.tolist(), strict=True):
            held = keys[parent]
            keys[child] = None if held is None else list(held)
        for name in ("chain_num_keys", "chain_registered", "chain_open", "chain_pending"):
            column = t.column(name)
            column[children] = column[parents]

    def truncate(self, row: int, num_tokens: int) -> None:
        """The row keeps only its first `num_tokens` tokens: keys and registrations past them
        go (a registered block is never written again). When a key that covered dropped
        tokens is cut, the tokens it was made of are gone and the chain ends here."""
        t = self._rows
        keys = t.chain_keys[row]
        if keys is None:
            return
        full = num_tokens // self.block_size
        if len(keys) > full:
            del keys[full:]
            t.chain_num_keys[row] = full
            t.chain_open[row] = False
        t.chain_registered[row] = min(int(t.chain_registered[row]), full)

    def record_tokens(self, rows: np.ndarray, positions: np.ndarray,
                      tokens: np.ndarray | None) -> None:
        """Tokens `[B, k]` (int64, -1 = unknown) appended at positions `positions[b] ..
        positions[b] + k - 1` of rows `[B]`; None ends the rows' chains (tokens unknown)."""
        t = self._rows
        if tokens is None:
            t.chain_open[rows] = False
            return
        chained = t.chain_open.take(rows)
        if not chained.any():
            return
        if not chained.all():
            rows, positions, tokens = rows[chained], positions[chained], tokens[chained]
        k = tokens.shape[1]
        offset = positions - t.chain_num_keys.take(rows) * self.block_size
        need = int(offset.max()) + k
        pending = t.chain_pending
        if need > pending.shape[1]:
            pending = t.widen("chain_pending", need)
        at = rows * pending.shape[1] + offset  # flat index: one scatter for the batch
        if k == 1:
            pending.ravel()[at] = tokens[:, 0]
        else:
            pending.ravel()[(at[:, None] + np.arange(k)).ravel()] = tokens.ravel()

    def record_token(self, row: int, position: int, token: int) -> None:
        """`record_tokens` for one token of one row, with scalar writes (a per-sequence
        append)."""
        t = self._rows
        if t.chain_open.item(row):
            offset = position - t.chain_num_keys.item(row) * self.block_size
            pending = t.chain_pending
            if offset >= pending.shape[1]:
                pending = t.widen("chain_pending", offset + 1)
            pending[row, offset] = token

    def end_chain(self, row: int) -> None:
        """The row appended tokens it did not name: no more keys for it."""
        self._rows.chain_open[row] = False

    # ---- commit support -----------------------------------------------------------------
    def commit_candidates(self, rows: np.ndarray, num_computed: np.ndarray) -> np.ndarray:
        """Indices into `rows` of the rows that have blocks to register now that their first
        `num_computed` tokens are computed: the few a decode step fills, found with array
        operations."""
        t = self._rows
        done = num_computed // self.block_size
        cap = np.where(t.chain_open[rows], done, np.minimum(done, t.chain_num_keys[rows]))
        return np.flatnonzero(cap > t.chain_registered[rows])

    def split_simple(self, rows: np.ndarray, num_computed: np.ndarray) -> np.ndarray:
        """bool `[len(rows)]` over candidate rows: which are the decode step's case, one block
        just filled whose key comes from the tokens recorded for it (`extend_filled` does
        them at once); the others go through `advance` one by one."""
        t = self._rows
        reg = t.chain_registered[rows]
        return ((num_computed // self.block_size == reg + 1)
                & (t.chain_num_keys[rows] == reg) & t.chain_open[rows])

    def extend_filled(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Make and register-count the next key of rows in the decode step's case (see
        `split_simple`). Rows whose recorded tokens are not all known end their chains.
        Returns (rows, int64 logical index of the filled block per row, their new keys)."""
        t, bs = self._rows, self.block_size
        reg = t.chain_registered[rows]
        tokens = t.chain_pending[rows, :bs]
        known = (tokens >= 0).all(axis=1)
        if not known.all():
            t.chain_open[rows[~known]] = False
            rows, reg, tokens = rows[known], reg[known], tokens[known]
        if not rows.size:
            return rows, reg, []
        raw = tokens.astype("<i8").tobytes()
        step = 8 * bs
        made: list[bytes] = []
        chain_keys = t.chain_keys
        for row, start in zip(rows.tolist(), range(0, len(raw), step), strict=True):
            keys = chain_keys[row]
            key = chain_key(keys[-1] if keys else None, raw[start : start + step])
            keys.append(key)
            made.append(key)
        t.chain_num_keys[rows] = reg + 1
        t.chain_registered[rows] = reg + 1
        pending = t.chain_pending
        pending[rows, :-bs] = pending[rows, bs:]
        pending[rows, -bs:] = -1
        return rows, reg, made

    def advance(self, row: int, num_blocks: int, num_computed: int
                ) -> tuple[int, list[Hashable]] | None:
        """Move the row's registered count over its full blocks among its first
        `num_computed` computed tokens (at most `num_blocks`, the blocks it holds), making
        keys from its recorded tokens as needed. Returns (first logical block, keys of the
        blocks from there) to register, or None when there is nothing to register."""
        t = self._rows
        keys = t.chain_keys[row]
        if keys is None:
            return None
        done = min(num_computed // self.block_size, num_blocks)
        start = t.chain_registered.item(row)
        if done <= start:
            return None
        if len(keys) < done and t.chain_open.item(row):
            while len(keys) < done and self._extend(row, keys):
                pass
        done = min(done, len(keys))
        if done <= start:
            return None
        t.chain_registered[row] = done
        return start, keys[start:done]

    def _extend(self, row: int, keys: list[Hashable]) -> bool:
        """Make the row's next key from its recorded tokens; False if any is unknown."""
        t, bs = self._rows, self.block_size
        pending = t.chain_pending[row]
        tokens = pending[:bs]
        if (tokens < 0).any():
            t.chain_open[row] = False
            return False
        last = keys[-1] if keys else None
        assert last is None or isinstance(last, bytes)  # an open chain's keys are digests
        keys.append(chain_key(last, tokens.astype("<i8").tobytes()))
        t.chain_num_keys[row] = len(keys)
        pending[:-bs] = pending[bs:].copy()
        pending[-bs:] = -1
        return True


__all__ = ["PrefixChains", "chain_key"]
