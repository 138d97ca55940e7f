"""The journal of sparse writes: per step, what is needed to undo and redo it exactly.

Per step and batch element (B) it holds the distinct rows the write touched and their old
contents (<= H(K+1) rows of W values), the usage-ring undo records (<= H(2K+1)), the rows
and weights read (the next step's w^R_{t-1}) and the written-row count before the step. The
first H journaled rows are the step's LRA rows I^U (distinct, journaled first).
Steps live in fixed-size chunks, so appending never copies and memory grows per step.
"""
import numpy as np


class Chunk:
    """Journal storage for ``size`` consecutive steps (arrays indexed [slot, b, ...])."""

    def __init__(self, size, batch_size, num_heads, k, word_size, dtype):
        d = num_heads * (k + 1)
        u = num_heads * (2 * k + 1)
        self.jrows = np.empty((size, batch_size, d), np.int64)
        self.jvals = np.empty((size, batch_size, d, word_size), dtype)
        self.jcount = np.zeros((size, batch_size), np.int64)
        self.urec = np.empty((size, batch_size, u, 3), np.int32)  # (row, old u, old prev)
        self.ucount = np.zeros((size, batch_size), np.int64)
        self.rows = np.empty((size, batch_size, num_heads, k), np.int64)
        self.weights = np.empty((size, batch_size, num_heads, k), dtype)
        self.wcount = np.empty((size, batch_size), np.int64)

    @property
    def nbytes(self):
        return sum(a.nbytes for a in vars(self).values())


class Journal:
    """Steps ``base+1 .. base+length`` (1-based step numbers) in chunks of ``chunk_size``."""

    def __init__(self, batch_size, num_heads, k, word_size, dtype, chunk_size=256):
        self._shape = (batch_size, num_heads, k, word_size, dtype)
        self.chunk_size = chunk_size
        self.chunks = []
        self.base = 0
        self.length = 0

    @property
    def latest(self):
        return self.base + self.length

    def locate(self, step):
        """(chunk, slot) of 1-based ``step`` in (base, latest]."""
        i = step - self.base - 1
        return self.chunks[i // self.chunk_size], i % self.chunk_size

    def append(self):
        """Make room for step ``latest + 1``; returns its (chunk, slot) and counts it."""
        i = self.length
        if i // self.chunk_size == len(self.chunks):
            self.chunks.append(Chunk(self.chunk_size, *self._shape))
        self.length += 1
        return self.chunks[i // self.chunk_size], i % self.chunk_size

    def truncate(self, latest):
        """Forget the steps after ``latest``."""
        self.length = latest - self.base
        del self.chunks[(self.length + self.chunk_size - 1) // self.chunk_size:]

    def clear(self, base):
        """Forget every step; the earliest reachable position becomes ``base``."""
        self.chunks = []
        self.base = base
        self.length = 0

    def spans(self, lo, hi):
        """(chunk, start, stop) slot ranges covering steps lo+1..hi, in forward order."""
        out = []
        i, end = lo - self.base, hi - self.base
        while i < end:
            c, s = divmod(i, self.chunk_size)
            stop = min(self.chunk_size, s + end - i)
            out.append((self.chunks[c], s, stop))
            i += stop - s
        return out

    @property
    def nbytes(self):
        return sum(c.nbytes for c in self.chunks)
