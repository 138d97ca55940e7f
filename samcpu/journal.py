"""The journal of sparse writes: per step, what is needed to undo and redo it exactly.

Per step and batch element (B) it holds the distinct rows the write touched and their old
contents (<= H(R+1) rows of W values), the usage-ring undo records (<= H(2R+1)), the rows
and weights read (the next step's w^R_{t-1}) and the written-row count before the step. R is
the read support per head: K for SAM, K + 2 K_L for the SDNC. The first H journaled rows are
the step's LRA rows I^U (distinct, journaled first). A model with more state per step (the
SDNC's link records) names its records in a schema: ``extras`` maps a record's name to its
per-step, per-batch-element shape and dtype, and every chunk holds one array
(size, B, *shape) per name, as an attribute of that name.
Steps live in chunks (16, 32, ... up to 256 steps), so appending never copies and memory grows
with the steps taken.
"""
import numpy as np


class Chunk:
    """Journal storage for ``size`` consecutive steps (arrays indexed [slot, b, ...]); ``reads``
    is R, the rows read per head; ``extras`` the schema of further records (module docstring)."""

    CORE = ("jrows", "jvals", "jcount", "urec", "ucount", "rows", "weights", "wcount")

    def __init__(self, size, batch_size, num_heads, reads, word_size, dtype, extras=None):
        k = reads
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
        for name, (shape, dt) in (extras or {}).items():
            if name in self.CORE or not name.isidentifier():
                raise ValueError(f"journal record name {name!r} is taken or not an identifier")
            setattr(self, name, np.zeros((size, batch_size, *shape), dt))

    @property
    def nbytes(self):
        return sum(a.nbytes for a in vars(self).values())


class Journal:
    """Steps ``base+1 .. base+length`` (1-based step numbers) in chunks that double from
    ``first_chunk`` steps up to ``chunk_size`` steps, so a short episode allocates about what it
    uses (at most twice) and a long one grows by ``chunk_size`` steps at a time."""

    def __init__(self, batch_size, num_heads, reads, word_size, dtype, chunk_size=256, first_chunk=16,
                 extras=None):
        if first_chunk < 1 or chunk_size < 1:
            raise ValueError(f"first_chunk and chunk_size must be >= 1, got {first_chunk} and {chunk_size}")
        self._shape = (batch_size, num_heads, reads, word_size, dtype, dict(extras or {}))
        self.chunk_size = chunk_size
        # chunk j holds min(first_chunk * 2**j, chunk_size) steps; _starts[j] is its first slot
        sizes = [min(first_chunk, chunk_size)]
        while sizes[-1] < chunk_size:
            sizes.append(min(2 * sizes[-1], chunk_size))
        self._sizes = sizes
        self._starts = [sum(sizes[:j]) for j in range(len(sizes))]
        self.chunks = []
        self.base = 0
        self.length = 0

    @property
    def latest(self):
        return self.base + self.length

    def _size(self, j):
        return self._sizes[min(j, len(self._sizes) - 1)]

    def _where(self, i):
        """(chunk number, slot) of the 0-based journal entry ``i``."""
        grown = len(self._sizes) - 1  # chunks before the first full-size one
        edge = self._starts[grown]
        if i >= edge:
            j, s = divmod(i - edge, self.chunk_size)
            return grown + j, s
        j = 0
        while self._starts[j + 1] <= i:
            j += 1
        return j, i - self._starts[j]

    def _chunks_for(self, length):
        """Number of chunks that hold ``length`` entries."""
        return 0 if length == 0 else self._where(length - 1)[0] + 1

    def locate(self, step):
        """(chunk, slot) of 1-based ``step`` in (base, latest]."""
        j, s = self._where(step - self.base - 1)
        return self.chunks[j], s

    def append(self):
        """Make room for step ``latest + 1``; returns its (chunk, slot) and counts it."""
        j, s = self._where(self.length)
        if j == len(self.chunks):
            self.chunks.append(Chunk(self._size(j), *self._shape))
        self.length += 1
        return self.chunks[j], s

    def truncate(self, latest):
        """Forget the steps after ``latest``."""
        self.length = latest - self.base
        del self.chunks[self._chunks_for(self.length):]

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
            j, s = self._where(i)
            stop = min(self._size(j), s + end - i)
            out.append((self.chunks[j], s, stop))
            i += stop - s
        return out

    @property
    def allocated_steps(self):
        """Steps the allocated chunks can hold."""
        return sum(self._size(j) for j in range(len(self.chunks)))

    @property
    def nbytes(self):
        return sum(c.nbytes for c in self.chunks)
