"""Per-sequence state of the manager: the memory layer's columns of the manager's RowTable.

Every sequence the manager holds owns one *row* (`kvpager.core.rows.RowTable`): its block
table is `table[row, :nblocks]`, its token count `ntokens[row]`, and `where[row]` says which
pool its blocks belong to. A decode step touches hundreds of rows at once; keeping them in
arrays lets the manager do that with a handful of numpy operations instead of Python work
per sequence. Rows are reused after a sequence is freed, so a row number is only meaningful
while its sequence is alive (like a file descriptor).

`SequenceStore` *is* the table: other concepts (the prefix chains, later the scheduler's
stop lengths) register their own per-row columns on it, so a reused row starts with all of
them at their fill values. The store is a plain container: the manager that holds it
decides what goes in (see `docs/architecture.md`); only `append.py` writes `room`. It also
answers the read-only questions every manager is asked (`num_tokens`, `device_of`,
`rows`, `seq_lens`), so the managers delegate to it instead of inheriting them.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from kvpager.core.errors import UnknownSequenceError, WrongDeviceError
from kvpager.core.rows import RowTable

ON_GPU = 0
ON_CPU = 1
UNUSED = -1
DEVICE_NAMES = {ON_GPU: "gpu", ON_CPU: "cpu"}


class SequenceStore(RowTable):
    """A RowTable with the memory layer's columns, one entry per row:

        table: int32 `[rows, width]` physical block ids, logical order (`widen`s on demand).
        nblocks: int32 blocks held. ntokens: int64 tokens held (slots written or being
        written). where: int8 ON_GPU / ON_CPU / UNUSED (a dead row reads UNUSED: the
        batched calls' liveness check).
        room: int64 tokens the row can still append with no planning at all: the free
        slots of its last block when that block is its alone and not prefix-cached (0 when
        unknown). Kept by `kvpager.core.memory.append`; it is what makes a per-sequence
        decode append a few scalar operations.
    """

    table: np.ndarray
    nblocks: np.ndarray
    ntokens: np.ndarray
    room: np.ndarray
    where: np.ndarray

    def __init__(self, rows: int = 64, width: int = 16) -> None:
        super().__init__(rows)
        self.add_column("table", np.int32, 0, width=width)
        self.add_column("nblocks", np.int32, 0)
        self.add_column("ntokens", np.int64, 0)
        self.add_column("room", np.int64, 0)
        self.add_column("where", np.int8, UNUSED)
        self._scratch = np.zeros(rows, dtype=np.int64)

    def add(self, seq_id: Hashable, where: int = ON_GPU) -> int:
        """Give `seq_id` an empty row on `where` (every column at its fill); the caller
        checked `check_new`."""
        row = super().add(seq_id)
        self.where[row] = where
        return row

    def add_many(self, seq_ids: list[Hashable], where: np.ndarray | int = ON_GPU
                 ) -> np.ndarray:
        """`add` for many new ids at once (caller checked them); returns their rows, int64."""
        rows = super().add_many(seq_ids)
        self.where[rows] = where
        return rows

    def remove(self, row: int) -> None:
        """Release one row; it reads UNUSED until reused."""
        super().remove(row)
        self.where[row] = UNUSED

    def remove_many(self, rows: np.ndarray) -> None:
        """`remove` for many distinct rows at once."""
        super().remove_many(rows)
        self.where[rows] = UNUSED

    def blocks(self, row: int) -> np.ndarray:
        """View of the row's block ids, int32 `[nblocks]`."""
        return self.table[row, : self.nblocks[row]]

    def ensure_width(self, width: int) -> None:
        """Make the block tables at least `width` wide (doubling)."""
        if width > self.table.shape[1]:
            self.widen("table", width)

    # ---- read-only queries every manager answers ----------------------------------------
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
