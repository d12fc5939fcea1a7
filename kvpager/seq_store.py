"""Per-sequence state of the manager as rows of arrays.

Every sequence the manager holds owns one *row*: its block table is `table[row, :nblocks]`,
its token count `ntokens[row]`, and `where[row]` says which pool its blocks belong to. A
decode step touches hundreds of rows at once; keeping them in arrays lets the manager do
that with a handful of numpy operations instead of Python work per sequence. Rows are
reused after a sequence is freed, so a row number is only meaningful while its sequence is
alive (like a file descriptor).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

from kvpager.errors import DuplicateSequenceError, UnknownSequenceError

ON_GPU = 0
ON_CPU = 1
UNUSED = -1
DEVICE_NAMES = {ON_GPU: "gpu", ON_CPU: "cpu"}


class SequenceStore:
    """Rows of block tables, block counts, token counts and locations, growing on demand."""

    def __init__(self, rows: int = 64, width: int = 16) -> None:
        self.table = np.zeros((rows, width), dtype=np.int32)
        self.nblocks = np.zeros(rows, dtype=np.int32)
        self.ntokens = np.zeros(rows, dtype=np.int64)
        self.where = np.full(rows, UNUSED, dtype=np.int8)
        self.row_of: dict[Hashable, int] = {}
        self.seq_of: list[Hashable | None] = [None] * rows
        self._spare: list[int] = list(range(rows - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.row_of)

    def row(self, seq_id: Hashable) -> int:
        try:
            return self.row_of[seq_id]
        except (KeyError, TypeError):
            raise UnknownSequenceError(f"unknown sequence {seq_id!r}") from None

    def rows(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        try:
            return np.fromiter((self.row_of[s] for s in seq_ids), dtype=np.int64)
        except (KeyError, TypeError):
            missing = next(s for s in seq_ids if s not in self.row_of)
            raise UnknownSequenceError(f"unknown sequence {missing!r}") from None

    def check_new(self, seq_id: Hashable) -> None:
        try:
            present = seq_id in self.row_of
        except TypeError:
            raise ValueError(f"sequence id must be hashable, got {seq_id!r}") from None
        if present:
            raise DuplicateSequenceError(f"sequence {seq_id!r} already exists")

    def add(self, seq_id: Hashable, where: int) -> int:
        """Give `seq_id` an empty row on `where`; the caller checked `check_new`."""
        if not self._spare:
            self._grow_rows()
        row = self._spare.pop()
        self.row_of[seq_id] = row
        self.seq_of[row] = seq_id
        self.where[row] = where
        self.nblocks[row] = 0
        self.ntokens[row] = 0
        return row

    def add_many(self, seq_ids: list[Hashable], where: np.ndarray) -> np.ndarray:
        """`add` for many new ids at once (caller checked them); returns their rows, int64."""
        while len(self._spare) < len(seq_ids):
            self._grow_rows()
        rows = [self._spare.pop() for _ in seq_ids]
        for seq_id, row in zip(seq_ids, rows, strict=True):
            self.row_of[seq_id] = row
            self.seq_of[row] = seq_id
        out = np.asarray(rows, dtype=np.int64)
        self.where[out] = where
        self.nblocks[out] = 0
        self.ntokens[out] = 0
        return out

    def remove_many(self, rows: np.ndarray) -> None:
        """`remove` for many distinct rows at once."""
        for row in rows.tolist():
            del self.row_of[self.seq_of[row]]
            self.seq_of[row] = None
            self._spare.append(row)
        self.where[rows] = UNUSED
        self.nblocks[rows] = 0
        self.ntokens[rows] = 0

    def remove(self, row: int) -> None:
        del self.row_of[self.seq_of[row]]
        self.seq_of[row] = None
        self.where[row] = UNUSED
        self.nblocks[row] = 0
        self.ntokens[row] = 0
        self._spare.append(row)

    def blocks(self, row: int) -> np.ndarray:
        """View of the row's block ids, int32 `[nblocks]`."""
        return self.table[row, : self.nblocks[row]]

    def ensure_width(self, width: int) -> None:
        if width > self.table.shape[1]:
            new_width = max(width, 2 * self.table.shape[1])
            grown = np.zeros((self.table.shape[0], new_width), dtype=np.int32)
            grown[:, : self.table.shape[1]] = self.table
            self.table = grown

    def _grow_rows(self) -> None:
        old = self.table.shape[0]
        new = 2 * old
        table = np.zeros((new, self.table.shape[1]), dtype=np.int32)
        table[:old] = self.table
        self.table = table
        self.nblocks = np.concatenate([self.nblocks, np.zeros(old, dtype=np.int32)])
        self.ntokens = np.concatenate([self.ntokens, np.zeros(old, dtype=np.int64)])
        self.where = np.concatenate([self.where, np.full(old, UNUSED, dtype=np.int8)])
        self.seq_of.extend([None] * old)
        self._spare.extend(range(new - 1, old - 1, -1))


class SequenceQueries:
    """Read-only sequence queries shared by every manager that keeps a `SequenceStore` in
    `self._seqs` (the paged `KVCacheManager`, the simulator's contiguous managers)."""

    _seqs: SequenceStore

    def __contains__(self, seq_id: object) -> bool:
        try:
            return seq_id in self._seqs.row_of
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self._seqs)

    def seq_ids(self) -> list[Hashable]:
        return list(self._seqs.row_of)

    def num_tokens(self, seq_id: Hashable) -> int:
        return int(self._seqs.ntokens[self._seqs.row(seq_id)])

    def device_of(self, seq_id: Hashable) -> str:
        return DEVICE_NAMES[int(self._seqs.where[self._seqs.row(seq_id)])]

    def rows_of(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Row handles (int64) of sequences, for the batched calls; valid until freed."""
        return self._seqs.rows(seq_ids)

    def seq_lens(self, rows: np.ndarray) -> np.ndarray:
        """Token counts of rows, int64 (cast to int32 for kernels)."""
        return self._seqs.ntokens[np.asarray(rows, dtype=np.int64)].copy()
