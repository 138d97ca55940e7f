"""SparseMemory: the NumPy-level Sparse Access Memory (DESIGN.md sections 1 and 4).

It owns, per batch element, the memory M (N, W), the least-recently-accessed ring, the set
of written rows and the index, plus one journal of sparse writes for the whole batch. Every
public method validates its input before it changes anything.
"""
import hashlib
import json
import os
import tempfile
from typing import NamedTuple

import numpy as np

from . import kernels as K
from ._storage import file_zeros, lazy_zeros
from .config import DELTA, EPS
from .index import INDEXES, WrittenRows
from .journal import Journal

FORMAT_VERSION = 1
#: the journal's usage-undo records are int32 (row, old step, old link = row + 1), so rows and
#: steps since the last reset stay below 2**31
MAX_SLOTS = 2**31 - 2
MAX_STEPS = 2**31 - 1


class MemoryFileError(ValueError):
    """A saved memory is missing, incomplete or corrupt."""


class StepResult(NamedTuple):
    """What one step read, per batch element and head."""

    reads: np.ndarray  #: r (B, H, W)
    rows: np.ndarray  #: s (B, H, K) int64, ordered by (-similarity, row)
    weights: np.ndarray  #: w (B, H, K), softmax over the K rows


def _positive_int(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class SparseMemory:
    """A batch of sparse access memories of ``num_slots`` rows of ``word_size`` values.

    Parameters
    ----------
    batch_size, num_slots, word_size : int
        B, N, W.
    num_heads : int
        H read/write heads; each step writes to H least-recently-accessed rows.
    k : int
        K rows read per head.
    index : {"hnsw", "exact"}
        How reads find their K rows. ``"hnsw"``: hnswlib plus an exact buffer of fresh rows
        (:class:`samcpu.index.HNSWIndex`); ``"exact"``: a scan of the written rows (the oracle).
    dtype : np.float32 or np.float64
    path : str or None
        A new file to hold the memory (a sparse file: it can be larger than RAM). None: an
        anonymous mapping. Either way untouched rows cost no physical memory.
    delta : float
        Usage threshold delta of DESIGN.md section 1 step 5.
    seed : int
        Seed for the index's randomness (HNSW level generation).
    index_options : dict or None
        Keyword arguments for the index class (see :class:`samcpu.index.HNSWIndex`).
    """

    def __init__(self, batch_size, num_slots, word_size, num_heads=1, k=8, index="hnsw",
                 dtype=np.float32, path=None, delta=DELTA, seed=0, index_options=None):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.num_slots = _positive_int("num_slots", num_slots)
        if self.num_slots > MAX_SLOTS:
            raise ValueError(f"num_slots must be <= {MAX_SLOTS:,d} (2**31 - 2), got {self.num_slots:,d}")
        self.word_size = _positive_int("word_size", word_size)
        self.num_heads = _positive_int("num_heads", num_heads)
        self.k = _positive_int("k", k)
        if self.k > self.num_slots:
            raise ValueError(f"k is {self.k} but must be <= num_slots ({self.num_slots})")
        if self.num_heads > self.num_slots:
            raise ValueError(f"num_heads is {self.num_heads} but must be <= num_slots ({self.num_slots})")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if index not in INDEXES:
            raise ValueError(f"index must be one of {sorted(INDEXES)}, got {index!r}")
        if not (isinstance(delta, (int, float, np.floating)) and np.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
        self.index_kind = index
        self.delta = float(delta)
        self.seed = _positive_int("seed", seed, minimum=0)
        self.path = None if path is None else os.fspath(path)
        if self.path is not None and os.path.exists(self.path):
            raise ValueError(f"path {self.path!r} already exists; give a new file name "
                             "(use SparseMemory.load to reopen a saved memory)")

        b, n, w, h = self.batch_size, self.num_slots, self.word_size, self.num_heads
        shape = (b, n, w)
        if self.path is None:
            self._memory = lazy_zeros(shape, self.dtype)
        else:  # kernels get a plain ndarray view: numba dispatches np.memmap slowly
            self._memory = file_zeros(self.path, shape, self.dtype).view(np.ndarray)
        self._usage = lazy_zeros((b, n), np.int64)
        self._prev = lazy_zeros((b, n), np.int64)
        self._next = lazy_zeros((b, n), np.int64)
        self._ends = np.zeros((b, 4), np.int64)
        self._written = WrittenRows(b, n)
        self._index = INDEXES[index](self._memory, self._written, seed=self.seed, **(index_options or {}))
        self._journal = Journal(b, h, self.k, w, self.dtype)
        self._position = 0
        self._prev_rows = np.full((b, h, self.k), -1, np.int64)
        self._prev_weights = np.zeros((b, h, self.k), self.dtype)
        self._base_reads = (self._prev_rows.copy(), self._prev_weights.copy())

    # ------------------------------------------------------------------ properties
    @property
    def position(self):
        """Number of steps applied (since creation or the last :meth:`reset`)."""
        return self._position

    @property
    def latest(self):
        """The latest step reachable by :meth:`replay`."""
        return self._journal.latest

    @property
    def earliest(self):
        """The earliest position :meth:`rewind` can reach (journal start)."""
        return self._journal.base

    @property
    def memory(self):
        """M (B, N, W): a read-only view of the current contents."""
        view = self._memory.view(np.ndarray)
        view.flags.writeable = False
        return view

    @property
    def usage(self):
        """u (B, N) int64: step of last access, 0 for never (read-only view)."""
        view = self._usage.view()
        view.flags.writeable = False
        return view

    @property
    def index(self):
        return self._index

    @property
    def journal_nbytes(self):
        """Bytes held by the journal."""
        return self._journal.nbytes

    def written_rows(self, b):
        """Rows of batch element ``b`` written since the last reset (int64, a copy)."""
        return self._written.rows(b)

    def lra_rows(self):
        """The rows the next step will erase and write, I^U (B, H) int64."""
        out = np.empty((self.batch_size, self.num_heads), np.int64)
        for b in range(self.batch_size):
            K.lra_rows(self._usage[b], self._next[b], self._ends[b].copy(), self.num_heads, out[b])
        return out

    # ------------------------------------------------------------------ stepping
    def _check(self, name, value, shape, what):
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise ValueError(f"{name} has dtype {arr.dtype} but a real floating array is expected")
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape} but expected {shape} {what}")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf (in {self.dtype})")
        return arr

    def step(self, query, strength, add, write_gate, interp_gate):
        """Apply one step (write, then read, then usage) to every batch element.

        Parameters
        ----------
        query : (B, H, W)  q, the read keys
        strength : (B, H)  beta > 0
        add : (B, H, W)    a, the add vectors
        write_gate : (B, H)  alpha in [0, 1]
        interp_gate : (B, H) gamma in [0, 1]: previously read rows (1) or the LRA row (0)

        Returns
        -------
        StepResult(reads (B, H, W), rows (B, H, K) int64, weights (B, H, K))
        """
        b, h, w = self.batch_size, self.num_heads, self.word_size
        bhw, bh = (b, h, w), (b, h)
        q = self._check("query", query, bhw, "(batch_size, num_heads, word_size)")
        beta = self._check("strength", strength, bh, "(batch_size, num_heads)")
        a = self._check("add", add, bhw, "(batch_size, num_heads, word_size)")
        alpha = self._check("write_gate", write_gate, bh, "(batch_size, num_heads)")
        gamma = self._check("interp_gate", interp_gate, bh, "(batch_size, num_heads)")
        if not (beta > 0).all():
            raise ValueError(f"strength must be > 0, got minimum {beta.min()}")
        for name, g in (("write_gate", alpha), ("interp_gate", gamma)):
            if not ((g >= 0) & (g <= 1)).all():
                raise ValueError(f"{name} must lie in [0, 1], got values in [{g.min()}, {g.max()}]")

        if self._position >= MAX_STEPS:
            raise ValueError(f"this memory has applied {self._position:,d} steps since its last reset, "
                             f"the most it can journal (2**31 - 1); call reset() for a new episode")
        if self._position < self._journal.latest:
            self._journal.truncate(self._position)  # a new future replaces the old one
        t = self._position + 1
        chunk, s = self._journal.append()
        chunk.jcount[s] = 0  # nothing to undo until the write phase has journaled its rows
        chunk.ucount[s] = 0
        chunk.wcount[s] = self._written.counts
        lra = np.empty((b, h), np.int64)
        try:
            K.write_phase(self._memory, self._usage, self._prev, self._next, self._ends,
                          self._prev_rows, self._prev_weights, a, alpha, gamma, lra,
                          chunk.jrows[s], chunk.jvals[s], chunk.jcount[s])
            self._written.add(chunk.jrows[s])
            self._index.update(chunk.jrows[s])
            rows, _ = self._index.query(q, self.k)
            weights = np.empty((b, h, self.k), self.dtype)
            reads = np.empty((b, h, w), self.dtype)
            sims = np.empty((b, h, self.k), np.float64)
            K.read_phase(self._memory, rows, q, beta, EPS, weights, reads, sims)
            K.usage_phase(self._usage, self._prev, self._next, self._ends, lra, self._prev_rows,
                          self._prev_weights, alpha, gamma, rows, weights, self.delta, t,
                          chunk.urec[s], chunk.ucount[s])
        except BaseException:
            self._undo_partial(chunk, s)
            raise
        chunk.rows[s] = rows
        chunk.weights[s] = weights
        self._prev_rows, self._prev_weights = rows, weights
        self._position = t
        return StepResult(reads, rows, weights)

    def _undo_partial(self, chunk, s):
        """Roll back a step interrupted after its journal slot was taken."""
        K.undo_steps(self._memory, self._usage, self._prev, self._next, self._ends, chunk.jrows,
                     chunk.jvals, chunk.jcount, chunk.urec, chunk.ucount, s, s + 1)
        self._written.truncate(chunk.wcount[s])
        self._index.invalidate(chunk.jrows[s])
        self._journal.truncate(self._position)

    # ------------------------------------------------------------------ time travel
    def _check_position(self, position):
        if isinstance(position, (bool, np.bool_)) or not isinstance(position, (int, np.integer)):
            raise ValueError(f"position must be an integer, got {position!r}")
        lo, hi = self._journal.base, self._journal.latest
        if not lo <= position <= hi:
            raise ValueError(f"position must be in [{lo}, {hi}] (the journaled steps), got {position}")
        return int(position)

    def _arrays(self):
        return self._memory, self._usage, self._prev, self._next, self._ends

    def rewind(self, position):
        """Bring memory, usage and reads back to exactly their state after ``position``
        steps (bit for bit). Forward to a later journaled position replays instead.
        Costs O(rows touched by the steps crossed)."""
        position = self._check_position(position)
        if position > self._position:
            return self._redo(position)
        for chunk, start, stop in reversed(self._journal.spans(position, self._position)):
            K.undo_steps(*self._arrays(), chunk.jrows, chunk.jvals, chunk.jcount, chunk.urec,
                         chunk.ucount, start, stop)
            self._index.invalidate(_span_rows(chunk, start, stop))
        if position < self._position:
            chunk, s = self._journal.locate(position + 1)
            self._written.truncate(chunk.wcount[s])
        self._position = position
        self._restore_reads()

    def replay(self):
        """Redo every journaled step after the current position (bit for bit)."""
        self._redo(self._journal.latest)

    def _redo(self, position):
        first = self._position + 1
        for chunk, start, stop in self._journal.spans(self._position, position):
            K.redo_steps(*self._arrays(), chunk.jrows, chunk.jvals, chunk.jcount, chunk.urec,
                         chunk.ucount, start, stop, first)
            rows = _span_rows(chunk, start, stop)
            self._written.add(rows)
            self._index.invalidate(rows)
            first += stop - start
        self._position = position
        self._restore_reads()

    def _restore_reads(self):
        if self._position == self._journal.base:
            rows, weights = self._base_reads
        else:
            chunk, s = self._journal.locate(self._position)
            rows, weights = chunk.rows[s], chunk.weights[s]
        self._prev_rows, self._prev_weights = rows.copy(), weights.copy()

    def step_record(self, position):
        """What step ``position`` (1-based, journaled) used and read: a dict of arrays
        ``lra`` (B, H) = I^U, ``prev_rows``/``prev_weights`` (B, H, K) = s, w^R at t-1,
        ``rows``/``weights`` (B, H, K) = s, w^R at t. Views into the journal: do not modify."""
        position = self._check_position(position)
        if position == self._journal.base:
            raise ValueError(f"position must be a journaled step in [{position + 1}, {self.latest}]")
        chunk, s = self._journal.locate(position)
        if position - 1 == self._journal.base:
            prev_rows, prev_weights = self._base_reads
        else:
            c, p = self._journal.locate(position - 1)
            prev_rows, prev_weights = c.rows[p], c.weights[p]
        return dict(lra=chunk.jrows[s, :, : self.num_heads], prev_rows=prev_rows, prev_weights=prev_weights,
                    rows=chunk.rows[s], weights=chunk.weights[s])

    def backward_step(self, position, grad_reads, grad_weights, query, strength, add, write_gate,
                      interp_gate, grad):
        """Backpropagate through journaled step t = ``position``: rewind to the memory after
        step t, add the read's gradient to ``grad`` (dL/dM_t on entry), compute the gradients
        of the step's inputs, and leave dL/dM_{t-1} in ``grad``. Call it for t = T, T-1, ...
        (see :mod:`samcpu.backprop`), then :meth:`replay` to go on stepping. Costs the rewind
        plus O(H K W); the memory is left at position t.

        Parameters
        ----------
        position : int            t, in [earliest + 1, latest]
        grad_reads : (B, H, W)    dL/dr_t, or None for zero
        grad_weights : (B, H, K)  dL/dw^R_t from later steps (the ``prev_weights`` gradient
                                  of step t + 1), or None for zero
        query, strength, add, write_gate, interp_gate : the inputs step t was given (as in
                                  :meth:`step`; they are not journaled)
        grad : samcpu.backprop.MemoryGradient  made for this memory's (B, N, W)

        Returns
        -------
        samcpu.backprop.StepGradients(query, strength, add, write_gate, interp_gate,
        prev_weights), float64 arrays of the inputs' shapes and (B, H, K) for prev_weights.
        """
        from .backprop import MemoryGradient, StepGradients

        position = self._check_position(position)
        if position == self._journal.base:
            raise ValueError(f"position must be a journaled step in [{position + 1}, {self.latest}], "
                             f"got {position}")
        b, h, w, k = self.batch_size, self.num_heads, self.word_size, self.k
        bhw, bh = (b, h, w), (b, h)
        inputs = [self._check("query", query, bhw, "(batch_size, num_heads, word_size)"),
                  self._check("strength", strength, bh, "(batch_size, num_heads)"),
                  self._check("add", add, bhw, "(batch_size, num_heads, word_size)"),
                  self._check("write_gate", write_gate, bh, "(batch_size, num_heads)"),
                  self._check("interp_gate", interp_gate, bh, "(batch_size, num_heads)")]
        grads = []
        for name, value, shape, what in (
                ("grad_reads", grad_reads, bhw, "(batch_size, num_heads, word_size)"),
                ("grad_weights", grad_weights, (b, h, k), "(batch_size, num_heads, k)")):
            arr = np.zeros(shape) if value is None else np.asarray(value)
            if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
                raise ValueError(f"{name} has dtype {arr.dtype} but a real floating array is expected")
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape} but expected {shape} {what}")
            grads.append(np.ascontiguousarray(arr, dtype=np.float64))  # NaN propagates, as in autograd
        if not isinstance(grad, MemoryGradient) or grad.shape != (b, self.num_slots, w):
            raise ValueError(f"grad must be a samcpu.backprop.MemoryGradient of shape "
                             f"{(b, self.num_slots, w)}, got {getattr(grad, 'shape', type(grad).__name__)}")
        self.rewind(position)
        rec = self.step_record(position)
        out = StepGradients(np.empty(bhw), np.empty(bh), np.empty(bhw), np.empty(bh), np.empty(bh),
                            np.empty((b, h, k)))
        grad.reserve(h * (2 * k + 1))  # the rows one step can touch: K read, K + 1 written per head
        K.batch_step_backward(self._memory, rec["rows"], rec["weights"], inputs[0], inputs[1], grads[0],
                              grads[1], np.ascontiguousarray(rec["lra"]), rec["prev_rows"],
                              rec["prev_weights"], inputs[2], inputs[3], inputs[4], EPS, grad.slot,
                              grad.store, grad.owner, grad.count, *out)
        return out

    def clear_journal(self):
        """Drop the journal (keep the contents): later rewinds stop at the current position.
        Use it between truncated-BPTT segments to free the journal's memory."""
        self._journal.truncate(self._position)
        self._journal.clear(self._position)
        self._base_reads = (self._prev_rows.copy(), self._prev_weights.copy())

    def reset(self):
        """Empty the memory for a new episode: zero the written rows, forget usage, reads and
        journal. Costs O(rows touched since the last reset), never O(N)."""
        for b in range(self.batch_size):
            rows = self._written.rows(b)
            self._memory[b, rows] = 0
            order = np.empty(self._ends[b, 3], np.int64)
            K.ring_rows(self._next[b], self._ends[b], order)
            for arr in (self._usage, self._prev, self._next):
                arr[b, order] = 0
        self._ends[:] = 0
        self._written.truncate(np.zeros(self.batch_size, np.int64))
        self._index.reset()
        self._journal.clear(0)
        self._position = 0
        self._prev_rows = np.full_like(self._prev_rows, -1)
        self._prev_weights = np.zeros_like(self._prev_weights)
        self._base_reads = (self._prev_rows.copy(), self._prev_weights.copy())

    # ------------------------------------------------------------------ persistence
    def save(self, directory):
        """Write the memory to ``directory`` (created if needed): the written rows and their
        contents, the usage ring, the last reads and the settings, with a checksum. Costs
        O(rows touched). The journal is not saved: a loaded memory rewinds no further back."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        written, counts, order, order_counts = [], [], [], []
        for b in range(self.batch_size):
            rows = self._written.rows(b)
            written.append(rows)
            counts.append(len(rows))
            ring = np.empty(self._ends[b, 3], np.int64)
            K.ring_rows(self._next[b], self._ends[b], ring)
            order.append(ring)
            order_counts.append(len(ring))
        written = np.concatenate(written)
        order = np.concatenate(order)
        bw = np.repeat(np.arange(self.batch_size), counts)
        bo = np.repeat(np.arange(self.batch_size), order_counts)
        arrays = dict(
            written=written, written_counts=np.array(counts, np.int64),
            contents=self._memory[bw, written], ring=order,
            ring_counts=np.array(order_counts, np.int64), ring_usage=self._usage[bo, order],
            prev_rows=self._prev_rows, prev_weights=self._prev_weights,
        )
        _atomic_write(os.path.join(directory, "state.npz"), lambda f: np.savez(f, **arrays))
        names = ["state.npz"] + self._index.save(directory)
        files = {name: _sha256(os.path.join(directory, name)) for name in names}
        meta = dict(format=FORMAT_VERSION, batch_size=self.batch_size, num_slots=self.num_slots,
                    word_size=self.word_size, num_heads=self.num_heads, k=self.k,
                    index=self.index_kind, dtype=self.dtype.name, delta=self.delta,
                    seed=self.seed, position=self._position, files=files)
        meta_path = os.path.join(directory, "meta.json")
        try:
            with open(meta_path) as f:
                old = set(json.load(f).get("files", {}))
        except (OSError, ValueError, AttributeError):
            old = set()
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        for name in old - set(files):  # files of an older save that this one does not use
            try:
                os.remove(os.path.join(directory, os.path.basename(name)))
            except FileNotFoundError:
                pass

    @classmethod
    def load(cls, directory, path=None, index=None, index_options=None):
        """Open a memory written by :meth:`save`. ``path``: a new file to back the memory
        (None: anonymous). ``index`` overrides the saved index kind (the index is then built
        from the rows); ``index_options`` as in the constructor. Raises
        :class:`MemoryFileError` if the directory is missing, incomplete or corrupt."""
        directory = os.fspath(directory)
        meta_path = os.path.join(directory, "meta.json")
        state_path = os.path.join(directory, "state.npz")
        for p in (meta_path, state_path):
            if not os.path.isfile(p):
                raise MemoryFileError(f"directory {directory!r} holds no saved memory: {p} is missing")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise MemoryFileError(f"cannot read the saved memory in {directory!r}: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise MemoryFileError(f"{meta_path} is not a samcpu memory of format {FORMAT_VERSION}")
        files = meta.get("files")
        if not isinstance(files, dict) or "state.npz" not in files:
            raise MemoryFileError(f"{meta_path} lists no files")
        for name, digest in files.items():
            p = os.path.join(directory, os.path.basename(name))
            if not os.path.isfile(p):
                raise MemoryFileError(f"saved memory in {directory!r} is incomplete: {p} is missing")
            if _sha256(p) != digest:
                raise MemoryFileError(f"{p} does not match its checksum in meta.json (corrupt or changed)")
        try:
            kind = index or meta["index"]
            mem = cls(meta["batch_size"], meta["num_slots"], meta["word_size"], meta["num_heads"],
                      meta["k"], index=kind, dtype=meta["dtype"], path=path,
                      delta=meta["delta"], seed=meta["seed"], index_options=index_options)
            with np.load(state_path) as z:
                rows = mem._restore(meta, {name: z[name] for name in z.files})
            mem._index.load(directory if kind == meta["index"] else None, rows)
        except (KeyError, TypeError, ValueError, OSError, RuntimeError) as e:
            if path is not None and os.path.exists(path) and "mem" in locals():
                os.remove(path)
            raise MemoryFileError(f"saved memory in {directory!r} is inconsistent: {e}") from None
        return mem

    def _restore(self, meta, z):
        b, n = self.batch_size, self.num_slots
        counts, ring_counts = z["written_counts"], z["ring_counts"]
        written, ring = z["written"], z["ring"]
        checks = [
            (counts.shape == (b,) and counts.min() >= 0 and counts.sum() == len(written), "written_counts"),
            (ring_counts.shape == (b,) and ring_counts.min() >= 0 and ring_counts.sum() == len(ring), "ring_counts"),
            (z["contents"].shape == (len(written), self.word_size), "contents"),
            (len(written) == 0 or (written.min() >= 0 and written.max() < n), "written"),
            (len(ring) == 0 or (ring.min() >= 0 and ring.max() < n), "ring"),
            (z["ring_usage"].shape == ring.shape and (len(ring) == 0 or (
                z["ring_usage"].min() >= 1 and z["ring_usage"].max() <= meta["position"])), "ring_usage"),
            (z["prev_rows"].shape == self._prev_rows.shape and z["prev_rows"].max(initial=-1) < n, "prev_rows"),
            (z["prev_weights"].shape == self._prev_weights.shape, "prev_weights"),
            (isinstance(meta["position"], int) and 0 <= meta["position"] <= MAX_STEPS, "position"),
        ]
        for ok, name in checks:
            if not ok:
                raise ValueError(f"array {name!r} has the wrong shape or values")
        bw = np.repeat(np.arange(b), counts)
        bo = np.repeat(np.arange(b), ring_counts)
        self._memory[bw, written] = z["contents"]
        usage = z["ring_usage"]
        self._usage[bo, ring] = usage
        offsets = np.concatenate([[0], np.cumsum(ring_counts)])
        for i in range(b):
            r = ring[offsets[i]:offsets[i + 1]]
            if len(r):
                if len(np.unique(r)) != len(r) or (np.diff(usage[offsets[i]:offsets[i + 1]]) < 0).any():
                    raise ValueError("array 'ring' is not a valid access order")
                self._prev[i, r] = np.concatenate([[0], r[:-1] + 1])
                self._next[i, r] = np.concatenate([r[1:] + 1, [0]])
                self._ends[i] = (r[0] + 1, r[-1] + 1, 0, len(r))
        woff = np.concatenate([[0], np.cumsum(counts)])
        rows = np.full((b, max(1, int(counts.max(initial=0)))), -1, np.int64)
        for i in range(b):
            rows[i, : counts[i]] = written[woff[i]:woff[i + 1]]
        self._written.add(rows)
        self._prev_rows = z["prev_rows"].astype(np.int64)
        self._prev_weights = z["prev_weights"].astype(self.dtype)
        self._position = meta["position"]
        self._journal.clear(self._position)
        self._base_reads = (self._prev_rows.copy(), self._prev_weights.copy())
        return rows


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _span_rows(chunk, start, stop):
    """The rows journal slots start..stop-1 touched, (B, R) with -1 padding."""
    rows = chunk.jrows[start:stop]
    return np.ascontiguousarray(rows.transpose(1, 0, 2)).reshape(rows.shape[1], -1)


def _atomic_write(path, write):
    """Write a file via a temporary file in the same directory, fsync and rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
