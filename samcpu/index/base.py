"""The index interface and the written-row set every index relies on.

An index answers the read of DESIGN.md section 1 step 4: for each query, the K rows of
largest cosine similarity over all N rows, ties to the lower row. It sees the memory array
itself (B, N, W) and the :class:`WrittenRows` of the memory; rows outside that set are zero
and take part as similarity-0 candidates.
"""
import abc

import numpy as np

from .._storage import lazy_zeros
from ..kernels import batch_rowset_add, batch_rowset_truncate


class RowSet:
    """Per batch element, a set of rows: flags (B, N) uint8 lazily mapped, members (B, cap)
    int64 in insertion order, counts (B,) int64, hints (B, 1) int64 (a row below which all
    rows are members, for finding non-members). Adding and truncating cost O(rows involved)."""

    def __init__(self, batch_size, num_slots, capacity=64):
        self.flags = lazy_zeros((batch_size, num_slots), np.uint8)
        self.members = np.zeros((batch_size, capacity), np.int64)
        self.counts = np.zeros(batch_size, np.int64)
        self.hints = np.zeros((batch_size, 1), np.int64)

    def reserve(self, extra):
        """Make room for ``extra`` more members in every batch element (capacity doubles);
        returns True if ``members`` was reallocated."""
        need = int(self.counts.max(initial=0)) + extra
        if need <= self.members.shape[1]:
            return False
        grown = np.zeros((self.members.shape[0], max(need, 2 * self.members.shape[1])), np.int64)
        grown[:, : self.members.shape[1]] = self.members
        self.members = grown
        return True

    def add(self, rows):
        """Add ``rows[b]`` (B, R) int64 to the set of each batch element; -1 entries are
        ignored."""
        self.reserve(rows.shape[1])
        batch_rowset_add(self.flags, self.members, self.counts, rows)

    def truncate(self, counts):
        """Forget the members added after the first ``counts[b]`` (B,)."""
        batch_rowset_truncate(self.flags, self.members, self.counts, np.asarray(counts, np.int64), self.hints)

    def rows(self, b):
        """The members of batch element ``b`` (a copy), in insertion order."""
        return self.members[b, : self.counts[b]].copy()

    def __len__(self):
        return int(self.counts.sum())


class WrittenRows(RowSet):
    """Per batch element, the rows that may be non-zero (written since the last reset). It
    only grows between resets, so rewinding truncates it to an earlier count."""


class Index(abc.ABC):
    """What :class:`samcpu.SparseMemory` needs of an index over its rows.

    ``memory`` (B, N, W) is the live memory array and ``written`` its :class:`WrittenRows`.
    Subclasses take their options as named keyword arguments (no ``**kwargs``), so that
    SparseMemory can refuse an unknown option by name, and accept ``seed``.

    A row that a write or a rewind leaves zero is reported by :meth:`update` or
    :meth:`invalidate` like any other change; :meth:`reset` forgets every row at once.
    """

    def __init__(self, memory, written):
        self.memory = memory
        self.written = written

    @abc.abstractmethod
    def update(self, rows):
        """Rows ``rows[b]`` (B, R) int64 changed content (written, erased, rewound or
        replayed; -1 entries are padding); their new contents are in ``memory``."""

    def invalidate(self, rows):
        """Like :meth:`update`, for rows changed by rewind or replay: the index may defer the
        work until the next query (a backward pass rewinds many steps and queries none)."""
        self.update(rows)

    @abc.abstractmethod
    def query(self, queries, k):
        """Top-k rows for queries (B, H, W): rows (B, H, k) int64, sims (B, H, k) float64,
        ordered by (-similarity, row)."""

    @abc.abstractmethod
    def reset(self):
        """Forget every row (the memory has been zeroed)."""

    def save(self, directory):
        """Write the index's own state into ``directory``, a new empty folder that the caller
        fsyncs and makes visible atomically; returns the names of the files written (plain
        names, no sub-folders)."""
        return []

    def load(self, directory, rows):
        """Restore the state :meth:`save` wrote in ``directory``, or, if ``directory`` is None,
        build the index over the written rows ``rows`` (B, R) (-1 padded). The files' checksums
        have been verified, but their contents may still be crafted: check every size and id
        before trusting it, and raise ``ValueError`` for anything out of bounds."""
        self.update(rows)

    def __len__(self):
        """Rows held, summed over the batch."""
        return len(self.written)
