"""ExactIndex: numba brute force over the written rows; the oracle for every other index."""
from ..config import EPS, SCAN_BLOCK
from ..kernels import exact_query
from .base import Index


class ExactIndex(Index):
    """Exact top-k by scanning every written row of the live memory (O(rows written) per
    query, parallel over blocks of rows) plus the lowest unwritten rows at similarity 0.

    It keeps no vectors of its own, so updates cost nothing and it is always fresh.
    """

    block = SCAN_BLOCK

    def __init__(self, memory, written, seed=0):
        """``seed`` is accepted for the common interface and unused (the scan is exact); any
        other option is a ``TypeError`` (SparseMemory reports it as a ``ValueError``)."""
        super().__init__(memory, written)

    def update(self, rows):
        pass

    def query(self, queries, k):
        w = self.written
        return exact_query(self.memory, w.flags, w.members, w.counts, w.hints, queries, k, EPS, self.block)

    def reset(self):
        pass
