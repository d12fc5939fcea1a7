"""RowTable: the one owner of every per-sequence column.

A manager gives each live sequence a *row*: a small integer that indexes arrays, so that a
decode step over hundreds of sequences is a handful of numpy operations instead of Python
work per sequence. Several concepts keep state per row (the block table and token counts,
the prefix chain of each sequence, the scheduler's stop lengths, a contiguous manager's
regions). They all keep it here, as named *columns* of one table, so that

- a row is allocated, grown and reset in one place: a reused row starts with every column
  at its fill value, whatever order its previous owner's state was cleaned up in;
- no concept grows an array of its own beside the others, or reads another's private state:
  each registers the columns it owns (`add_column`) and reads them by name.

Columns are plain numpy arrays held as attributes of the table (`table.<name>`, the fastest
read Python has; typed subclasses declare theirs) and are also reachable by `column(name)`.
Growing the table replaces the arrays: read a column afresh after `add` / `add_many` rather
than holding on to an array across them. A 2-D column (`width=`) keeps a row of values per
sequence and can be widened (`widen`).

A column may hold Python objects (`dtype=object`, e.g. fill None): a reused row then starts
with the fill object, never with its previous owner's.

Rows are handles like file descriptors: meaningful only while their sequence lives.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kvpager.core.errors import DuplicateSequenceError, UnknownSequenceError


@dataclass(frozen=True)
class _Spec:
    dtype: np.dtype
    fill: object
    two_d: bool


class RowTable:
    """Rows of named per-sequence columns, growing on demand.

    Args:
        capacity: rows allocated up front (the table doubles when they run out).
    """

    def __init__(self, capacity: int = 64) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self._capacity = capacity
        self._specs: dict[str, _Spec] = {}
        self.row_of: dict[Hashable, int] = {}
        self.seq_of: list[Hashable | None] = [None] * capacity
        self._spare: list[int] = list(range(capacity - 1, -1, -1))

    if TYPE_CHECKING:
        # Columns registered at run time are instance attributes; to the type checker any
        # other attribute read is one (a typo still fails at run time: AttributeError).
        def __getattr__(self, name: str) -> np.ndarray: ...

    # ---- columns ------------------------------------------------------------------------
    def add_column(self, name: str, dtype: np.dtype | type, fill: object = 0,
                   width: int | None = None) -> np.ndarray:
        """Register a column (1-D, or 2-D of `width` values per row) filled with `fill`;
        returns its current array. Raises ValueError for a name already registered or one
        that would shadow the table's own attributes."""
        if not name.isidentifier() or name.startswith("_") or hasattr(type(self), name):
            raise ValueError(f"column name {name!r} must be a public identifier that is not "
                             "an attribute of the table")
        if name in self._specs:
            raise ValueError(f"column {name!r} is already registered")
        if width is not None and (not isinstance(width, int) or width < 1):
            raise ValueError(f"width must be an int >= 1 or None, got {width!r}")
        spec = _Spec(np.dtype(dtype), fill, width is not None)
        shape = (self._capacity,) if width is None else (self._capacity, width)
        array = np.full(shape, fill, dtype=spec.dtype)
        self._specs[name] = spec
        setattr(self, name, array)
        return array

    def has_column(self, name: str) -> bool:
        return name in self._specs

    def column(self, name: str) -> np.ndarray:
        """The column's current array (valid until the table next grows)."""
        if name not in self._specs:
            raise KeyError(f"no column {name!r}: registered are {sorted(self._specs)}")
        return getattr(self, name)

    def widen(self, name: str, width: int) -> np.ndarray:
        """Make a 2-D column at least `width` wide (doubling), keeping its values; returns it."""
        array = self.column(name)
        spec = self._specs[name]
        if not spec.two_d:
            raise ValueError(f"column {name!r} is 1-D: it has no width")
        if width <= array.shape[1]:
            return array
        grown = np.full((array.shape[0], max(width, 2 * array.shape[1])), spec.fill,
                        dtype=spec.dtype)
        grown[:, : array.shape[1]] = array
        setattr(self, name, grown)
        return grown

    # ---- rows ---------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Rows the columns hold now (live or spare)."""
        return self._capacity

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, seq_id: object) -> bool:
        try:
            return seq_id in self.row_of
        except TypeError:
            return False

    def seq_ids(self) -> list[Hashable]:
        return list(self.row_of)

    def row(self, seq_id: Hashable) -> int:
        try:
            return self.row_of[seq_id]
        except (KeyError, TypeError):
            raise UnknownSequenceError(f"unknown sequence {seq_id!r}") from None

    def rows(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """int64 rows of live sequences, in order."""
        ids = seq_ids if isinstance(seq_ids, (list, tuple)) else list(seq_ids)
        try:
            row_of = self.row_of
            return np.array([row_of[s] for s in ids], dtype=np.int64)
        except (KeyError, TypeError):
            missing = next(s for s in ids if s not in self)
            raise UnknownSequenceError(f"unknown sequence {missing!r}") from None

    def check_new(self, seq_id: Hashable) -> None:
        try:
            present = seq_id in self.row_of
        except TypeError:
            raise ValueError(f"sequence id must be hashable, got {seq_id!r}") from None
        if present:
            raise DuplicateSequenceError(f"sequence {seq_id!r} already exists")

    def add(self, seq_id: Hashable) -> int:
        """A row for `seq_id` (the caller checked `check_new`), every column at its fill."""
        if not self._spare:
            self._grow()
        row = self._spare.pop()
        self.row_of[seq_id] = row
        self.seq_of[row] = seq_id
        for name, spec in self._specs.items():
            getattr(self, name)[row] = spec.fill
        return row

    def add_many(self, seq_ids: list[Hashable]) -> np.ndarray:
        """`add` for many new ids at once; returns their int64 rows."""
        while len(self._spare) < len(seq_ids):
            self._grow()
        rows = [self._spare.pop() for _ in seq_ids]
        for seq_id, row in zip(seq_ids, rows, strict=True):
            self.row_of[seq_id] = row
            self.seq_of[row] = seq_id
        out = np.asarray(rows, dtype=np.int64)
        for name, spec in self._specs.items():
            getattr(self, name)[out] = spec.fill
        return out

    def remove(self, row: int) -> None:
        """Release one live row (its columns are reset when it is next allocated)."""
        del self.row_of[self.seq_of[row]]
        self.seq_of[row] = None
        self._spare.append(row)

    def remove_many(self, rows: np.ndarray) -> None:
        """`remove` for distinct live rows."""
        row_of, seq_of, spare = self.row_of, self.seq_of, self._spare
        for row in rows.tolist():
            del row_of[seq_of[row]]
            seq_of[row] = None
            spare.append(row)

    def _grow(self) -> None:
        old = self._capacity
        new = 2 * old
        for name, spec in self._specs.items():
            array = getattr(self, name)
            grown = np.full((new, *array.shape[1:]), spec.fill, dtype=spec.dtype)
            grown[:old] = array
            setattr(self, name, grown)
        self.seq_of.extend([None] * old)
        self._spare.extend(range(new - 1, old - 1, -1))
        self._capacity = new
