"""Per-sequence state of the manager as rows of arrays.

Every sequence the manager holds owns one *row*: its block table is `table[row, :nblocks]`,
its token count `ntokens[row]`, and `where[row]` says which pool its blocks belong to. A
decode step touches hundreds of rows at once; keeping them in arrays lets the manager do
that with a handful of numpy operations instead of Python work per sequence. Rows are
reused after a sequence is freed, so a row number is only meaningful while its sequence is
alive (like a file descriptor).

The store is a plain container: the manager that holds it decides what goes in (see
`docs/architecture.md`). It also answers the read-only questions every manager is asked
(`num_tokens`, `device_of`, `rows_of`, `seq_lens`), so the managers delegate to it instead
of inheriting them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

from kvpager.core.errors import DuplicateSequenceError, UnknownSequenceError, WrongDeviceError

ON_GPU = 0
ON_CPU = 1
UNUSED = -1
DEVICE_NAMES = {ON_GPU: "gpu", ON_CPU: "cpu"}


class SequenceStore:
    """Rows of block tables, block counts, token counts and locations, growing on demand.

    Arrays, one entry per row:
        table: int32 `[rows, width]` physical block ids, logical order.
        nblocks: int32 blocks held. ntokens: int64 tokens held (slots written or being
        written). where: int8 ON_GPU / ON_CPU / UNUSED.
        room: int64 tokens the row can still append with no planning at all: the free
        slots of its last block when that block is its alone and not prefix-cached (0 when
        unknown). The paged manager keeps it; it is what makes a per-sequence decode
        append a few scalar operations.
    """

    def __init__(self, rows: int = 64, width: int = 16) -> None:
        self.table = np.zeros((rows, width), dtype=np.int32)
        self.nblocks = np.zeros(rows, dtype=np.int32)
        self.ntokens = np.zeros(rows, dtype=np.int64)
        self.room = np.zeros(rows, dtype=np.int64)
        self.where = np.full(rows, UNUSED, dtype=np.int8)
        self.row_of: dict[Hashable, int] = {}
        self.seq_of: list[Hashable | None] = [None] * rows
        self._spare: list[int] = list(range(rows - 1, -1, -1))
        self._scratch = np.zeros(rows, dtype=np.int64)

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
        self.room[row] = 0
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
        self.room[out] = 0
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
        self.room[rows] = 0

    def remove(self, row: int) -> None:
        """`remove_many` for one row, with scalar writes (a per-request free)."""
        del self.row_of[self.seq_of[row]]
        self.seq_of[row] = None
        self.where[row] = UNUSED
        self.nblocks[row] = 0
        self.ntokens[row] = 0
        self.room[row] = 0
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
        self.room = np.concatenate([self.room, np.zeros(old, dtype=np.int64)])
        self.where = np.concatenate([self.where, np.full(old, UNUSED, dtype=np.int8)])
        self.seq_of.extend([None] * old)
        self._spare.extend(range(new - 1, old - 1, -1))

    # ---- read-only queries every manager answers ----------------------------------------
    def __contains__(self, seq_id: object) -> bool:
        try:
            return seq_id in self.row_of
        except TypeError:
            return False

    def seq_ids(self) -> list[Hashable]:
        return list(self.row_of)

    def num_tokens(self, seq_id: Hashable) -> int:
        return int(self.ntokens[self.row(seq_id)])

    def device_of(self, seq_id: Hashable) -> str:
        return DEVICE_NAMES[int(self.where[self.row(seq_id)])]

    def seq_lens(self, rows: np.ndarray) -> np.ndarray:
        """Token counts of rows, int64 (cast to int32 for kernels)."""
        return self.ntokens[np.asarray(rows, dtype=np.int64)].copy()

    def check_rows(self, rows: np.ndarray, where: int = ON_GPU) -> None:
        """Rows of a batch must be alive, on `where` and distinct; raises before any change."""
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.size == 0:
            return
        if rows.min() < 0 or rows.max() >= self.where.size:
            bad = rows[(rows < 0) | (rows >= self.where.size)][0]
            raise UnknownSequenceError(f"row {int(bad)} holds no sequence")
        at = self.where[rows]
        if (at != where).any():
            i = int(np.argmax(at != where))
            if at[i] == UNUSED:
                raise UnknownSequenceError(f"row {int(rows[i])} holds no sequence")
            seq = self.seq_of[int(rows[i])]
            if at[i] == ON_CPU:
                raise WrongDeviceError(f"sequence {seq!r} is swapped out to the CPU")
            raise WrongDeviceError(f"sequence {seq!r} is on the GPU, not the CPU")
        if rows.size > 1 and self.has_repeats(rows):
            raise ValueError("rows lists a sequence twice")

    def has_repeats(self, rows: np.ndarray) -> bool:
        """Whether `rows` (valid rows) lists one twice, in O(len(rows)): write each position to
        its row's scratch cell; a repeated row keeps only its last position."""
        if self._scratch.size < self.where.size:
            self._scratch = np.zeros(self.where.size, dtype=np.int64)
        order = np.arange(rows.size)
        self._scratch[rows] = order
        return bool((self._scratch[rows] != order).any())

    def gather_blocks(self, rows: np.ndarray, tail_first: bool = False) -> np.ndarray:
        """All block ids the rows hold, int32, row by row (each row's tail first if asked)."""
        nblocks = self.nblocks[rows]
        width = int(nblocks.max()) if rows.size else 0
        sub = self.table[rows, :width]
        mask = np.arange(width)[None, :] < nblocks[:, None]
        if tail_first:
            return sub[:, ::-1][mask[:, ::-1]]
        return sub[mask]
