"""SparseMemory: the NumPy-level Sparse Access Memory (DESIGN.md sections 1 and 4).

It owns, per batch element, the memory M (N, W), the least-recently-accessed ring, the set
of written rows and the index, plus one journal of sparse writes for the whole batch. Every
public method validates its input before it changes anything. Saving and loading live in
:mod:`samcpu.persistence`.

One memory serves one thread at a time: a method called while another thread is inside one
of its stepping, time-travel or persistence methods raises ``RuntimeError`` (it never waits,
and never runs two of them at once on the same arrays).
"""
import functools
import inspect
import os
import threading
from typing import NamedTuple

import numpy as np

from . import kernels as K
from ._storage import file_zeros, lazy_zeros
from ._util import check_int
from .config import DELTA, EPS
from .index import INDEXES, WrittenRows
from .journal import Journal

#: the journal's usage-undo records are int32 (row, old step, old link = row + 1), so rows and
#: steps since the last reset stay below 2**31
MAX_SLOTS = 2**31 - 2
MAX_STEPS = 2**31 - 1
#: the most rows a head reads per step. A step journals H(K+1) rows of W values and reads sort
#: K candidates per head, so its cost grows with K: k near N would make every step cost O(N)
#: (minutes at a million rows); the paper reads K = 4 to 8 rows.
MAX_K = 1024
MAX_SEED = 2**32 - 1


class MemoryFileError(ValueError):
    """A saved memory is missing, incomplete or corrupt."""


class StepResult(NamedTuple):
    """What one step read, per batch element and head (R = K for SAM, K + 2 K_L for the SDNC)."""

    reads: np.ndarray  #: r (B, H, W)
    rows: np.ndarray  #: s (B, H, R) int64; SAM: ordered by (-similarity, row); -1 = unused
    weights: np.ndarray  #: w (B, H, R); SAM: softmax over the K rows; 0 where unused


def check_settings(batch_size, num_slots, word_size, num_heads, k, dtype, delta, seed):
    """The scalar settings of :class:`SparseMemory`, checked and normalised (a dict), or
    ``ValueError`` naming the first bad one."""
    out = dict(batch_size=check_int("batch_size", batch_size),
               num_slots=check_int("num_slots", num_slots, maximum=MAX_SLOTS),
               word_size=check_int("word_size", word_size),
               num_heads=check_int("num_heads", num_heads), k=check_int("k", k, maximum=MAX_K))
    if out["k"] > out["num_slots"]:
        raise ValueError(f"k is {out['k']} but must be <= num_slots ({out['num_slots']})")
    if out["num_heads"] > out["num_slots"]:
        raise ValueError(f"num_heads is {out['num_heads']} but must be <= num_slots ({out['num_slots']})")
    try:
        out["dtype"] = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if out["dtype"] not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {out['dtype']}")
    if (isinstance(delta, (bool, np.bool_)) or not isinstance(delta, (int, float, np.integer, np.floating))
            or not np.isfinite(delta) or delta < 0):
        raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
    out["delta"] = float(delta)
    out["seed"] = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    return out


def check_index(index, index_options):
    """``index_options`` as a dict for index kind ``index``, or ``ValueError`` naming the
    unknown kind or the first unknown option key (keys are the index class's keyword arguments,
    except ``seed``, which is the memory's)."""
    if not isinstance(index, str) or index not in INDEXES:
        raise ValueError(f"index must be one of {sorted(INDEXES)}, got {index!r}")
    if index_options is None:
        return {}
    if not isinstance(index_options, dict):
        raise ValueError(f"index_options must be a dict or None, got {type(index_options).__name__}")
    params = inspect.signature(INDEXES[index].__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(index_options)  # the index takes any keyword: it checks them itself
    known = [name for name, p in params.items() if name not in ("self", "memory", "written", "seed")
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in index_options:
        if key not in known:
            raise ValueError(f"index_options has unknown key {key!r} for index {index!r} "
                             f"(known: {', '.join(known) or 'none'}"
                             + ("; set seed with the seed argument" if key == "seed" else "") + ")")
    return dict(index_options)


def value_limit(dtype, word_size, index):
    """The largest |value| a query, an add vector or a memory row may hold: sqrt(f / (4 W)) for
    the largest float f of the arithmetic that sees the rows (float32 for a float32 memory, and
    for any memory whose index keeps float32 copies; float64 for a float64 memory with the exact
    index). Below it no squared norm, dot product or row sum of W terms can overflow."""
    fmax = np.finfo(np.float64 if (np.dtype(dtype) == np.float64 and index == "exact") else np.float32).max
    return float(np.sqrt(fmax / (4.0 * word_size)))


def _exclusive(method):
    """Run ``method`` holding the memory's lock; a call from a second thread while another runs
    raises ``RuntimeError`` instead of waiting (the same thread may re-enter)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"SparseMemory.{method.__name__}: this memory is in use by another thread; "
                               "a SparseMemory serves one thread at a time (use one memory per thread, "
                               "or a lock around its calls)")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._lock.release()
    return run


class SparseMemory:
    """A batch of sparse access memories of ``num_slots`` rows of ``word_size`` values.

    Parameters
    ----------
    batch_size, num_slots, word_size : int
        B, N, W.
    num_heads : int
        H read/write heads; each step writes to H least-recently-accessed rows.
    k : int
        K rows read per head, at most ``MAX_K`` (1024): a step costs at least O(K).
    index : {"hnsw", "exact"}
        How reads find their K rows. ``"hnsw"``: hnswlib plus an exact buffer of fresh rows
        (:class:`samcpu.index.HNSWIndex`); ``"exact"``: a scan of the written rows (the oracle).
    dtype : np.float32 or np.float64
    path : str or None
        A new file to hold the memory (a sparse file: it can be larger than RAM). None: an
        anonymous mapping. Either way untouched rows cost no physical memory. The file can grow
        to B N W itemsize bytes; that much must be free on its filesystem at creation (a full
        disk under a mapping would kill the process later).
    delta : float
        Usage threshold delta of DESIGN.md section 1 step 5.
    seed : int
        Seed for the index's randomness (HNSW level generation), in [0, 2**32 - 1].
    index_options : dict or None
        Keyword arguments for the index class (see :class:`samcpu.index.HNSWIndex`); an
        unknown key is a ``ValueError``.

    Values: every query and add value, and every memory value a write produces, must stay
    within ``value_limit`` (about 1.6e18 for W = 32 in float32) so that no norm or dot product
    overflows; a step that breaks this is refused and changes nothing.
    """

    def __init__(self, batch_size, num_slots, word_size, num_heads=1, k=8, index="hnsw",
                 dtype=np.float32, path=None, delta=DELTA, seed=0, index_options=None):
        settings = check_settings(batch_size, num_slots, word_size, num_heads, k, dtype, delta, seed)
        self.batch_size, self.num_slots = settings["batch_size"], settings["num_slots"]
        self.word_size, self.num_heads, self.k = settings["word_size"], settings["num_heads"], settings["k"]
        self.dtype, self.delta, self.seed = settings["dtype"], settings["delta"], settings["seed"]
        index_options = check_index(index, index_options)
        self.index_kind = index
        #: the largest |value| of a query, an add vector or a memory row (see the class docstring)
        self.value_limit = value_limit(self.dtype, self.word_size, index)
        self._peak = 0.0  # an upper bound of |M| over every row (grows by at most H max|a| a step)
        self._lock = threading.RLock()
        self.path = None if path is None else os.fspath(path)

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
        try:
            self._index = INDEXES[index](self._memory, self._written, seed=self.seed, **index_options)
        except BaseException:
            if self.path is not None:  # a bad option value: leave no file behind
                os.remove(self.path)
            raise
        self._journal = Journal(b, h, self.read_size, w, self.dtype, extras=self._journal_extras())
        self._position = 0
        self._prev_rows = np.full((b, h, self.read_size), -1, np.int64)
        self._prev_weights = np.zeros((b, h, self.read_size), self.dtype)
        self._base_reads = (self._prev_rows.copy(), self._prev_weights.copy())

    # ------------------------------------------------------------------ model hooks
    # A model on this core (SAM here, the SDNC in samcpu.temporal) says how wide its read is,
    # what more it journals per step, and what it does around SAM's write and instead of its read.
    @property
    def read_size(self):
        """R: the rows a head reads per step (K for SAM)."""
        return self.k

    def _journal_extras(self):
        """The schema of further per-step journal records (see :mod:`samcpu.journal`)."""
        return {}

    def _after_write(self, chunk, s, lra, alpha, gamma):
        """Called after steps 1-3 of step ``s`` of ``chunk`` (memory written, journaled)."""

    def _read(self, chunk, s, q, beta, extra):
        """Step 4: (rows, weights, reads) of the step, (B, H, R), (B, H, R), (B, H, W)."""
        rows, _ = self._index.query(q, self.k)
        weights = np.empty((self.batch_size, self.num_heads, self.k), self.dtype)
        reads = np.empty((self.batch_size, self.num_heads, self.word_size), self.dtype)
        sims = np.empty((self.batch_size, self.num_heads, self.k), np.float64)
        K.read_phase(self._memory, rows, q, beta, EPS, weights, reads, sims)
        return rows, weights, reads

    def _undo_extra(self, chunk, start, stop, partial=False):
        """Undo the further state of journal slots ``stop-1`` down to ``start`` (``partial``:
        the one step being applied, which may have stopped before :meth:`_after_write`)."""

    def _redo_extra(self, chunk, start, stop):
        """Redo the further state of journal slots ``start..stop-1``."""

    def _reset_extra(self):
        """Empty the further state (O(what was touched))."""

    #: the model a save holds (meta.json's "model"), and the settings it adds to SAM's
    model = "sam"
    _extra_settings_keys = ()

    def _extra_settings(self):
        """The settings of :attr:`_extra_settings_keys` for meta.json."""
        return {key: getattr(self, key) for key in self._extra_settings_keys}

    def _extra_state(self):
        """Further arrays a save holds (names must not clash with SAM's)."""
        return {}

    def _extra_state_bound(self):
        """The most bytes :meth:`_extra_state` can take (a crafted save is refused beyond)."""
        return 0

    def _restore_extra(self, arrays):
        """Check and restore the further state from a save's ``arrays`` (a dict; ValueError
        naming the first bad array)."""

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
        return self._written.rows(check_int("b", b, minimum=0, maximum=self.batch_size - 1))

    @_exclusive
    def lra_rows(self):
        """The rows the next step will erase and write, I^U (B, H) int64."""
        out = np.empty((self.batch_size, self.num_heads), np.int64)
        for b in range(self.batch_size):
            K.lra_rows(self._usage[b], self._next[b], self._ends[b].copy(), self.num_heads, out[b])
        return out

    # ------------------------------------------------------------------ stepping
    def _check(self, name, value, shape, what, finite=True):
        """``value`` as a C-contiguous array of the memory's dtype, or ValueError naming ``name``
        (dtype, shape, and with ``finite`` NaN or Inf)."""
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise ValueError(f"{name} has dtype {arr.dtype} but a real floating array is expected")
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape} but expected {shape} {what}")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if finite and not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf (in {self.dtype})")
        return arr

    def _check_magnitude(self, name, arr):
        """The largest |value| of ``arr``, or ValueError if it is NaN, Inf or beyond
        :attr:`value_limit` (one pass over ``arr``)."""
        peak = float(np.abs(arr).max(initial=0.0))
        if not np.isfinite(peak):
            raise ValueError(f"{name} contains NaN or Inf (in {self.dtype})")
        if peak > self.value_limit:
            raise ValueError(f"{name} holds |values| up to {peak:.3g}, above this memory's limit "
                             f"{self.value_limit:.3g} (sqrt(largest float / (4 word_size))): larger "
                             "values could overflow a norm or a dot product")
        return peak

    def _check_written(self, rows):
        """After a write: ValueError if a written row (``rows`` (B, R), -1 padded) now holds a
        value beyond :attr:`value_limit` (rows grow by adding to them step after step)."""
        bi, ri = np.nonzero(rows >= 0)
        peak = float(np.abs(self._memory[bi, rows[bi, ri]]).max(initial=0.0))
        if peak > self.value_limit:
            raise ValueError(f"add would make a memory row reach |value| {peak:.3g}, above this "
                             f"memory's limit {self.value_limit:.3g}; the step was not applied")
        return peak

    @_exclusive
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

        Raises ``ValueError`` (and changes nothing) for bad input, including |query| or |add|
        values, or written memory values, beyond :attr:`value_limit`.
        """
        return self._apply(*self._check_step(query, strength, add, write_gate, interp_gate))

    def _check_step(self, query, strength, add, write_gate, interp_gate):
        """The five step inputs checked (as arrays of the memory's dtype) and max |add|."""
        b, h, w = self.batch_size, self.num_heads, self.word_size
        bhw, bh = (b, h, w), (b, h)
        q = self._check("query", query, bhw, "(batch_size, num_heads, word_size)", finite=False)
        beta = self._check("strength", strength, bh, "(batch_size, num_heads)")
        a = self._check("add", add, bhw, "(batch_size, num_heads, word_size)", finite=False)
        alpha = self._check("write_gate", write_gate, bh, "(batch_size, num_heads)")
        gamma = self._check("interp_gate", interp_gate, bh, "(batch_size, num_heads)")
        if not (beta > 0).all():
            raise ValueError(f"strength must be > 0, got minimum {beta.min()}")
        for name, g in (("write_gate", alpha), ("interp_gate", gamma)):
            if not ((g >= 0) & (g <= 1)).all():
                raise ValueError(f"{name} must lie in [0, 1], got values in [{g.min()}, {g.max()}]")
        self._check_magnitude("query", q)
        add_peak = self._check_magnitude("add", a)
        return q, beta, a, alpha, gamma, add_peak

    def _apply(self, q, beta, a, alpha, gamma, add_peak, extra=None):
        """Apply one checked step; ``extra`` is what a model's :meth:`_read` needs beyond SAM's."""
        b, h = self.batch_size, self.num_heads
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
            # a row gains at most max|a| max(1, sum w) per head (alpha gamma w + alpha (1 - gamma);
            # SAM's read weights sum to 1, the SDNC's can exceed it), so while the bound says so no
            # written value can have passed the limit
            spread = max(1.0, float(self._prev_weights.sum(-1, dtype=np.float64).max(initial=0.0)))
            peak = self._peak + h * add_peak * spread * (1 + 1e-6)
            if peak > self.value_limit / 2:
                peak = max(self._peak, self._check_written(chunk.jrows[s]))
            self._written.add(chunk.jrows[s])
            self._after_write(chunk, s, lra, alpha, gamma)
            self._index.update(chunk.jrows[s])
            rows, weights, reads = self._read(chunk, s, q, beta, extra)
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
        self._peak = peak
        return StepResult(reads, rows, weights)

    def _undo_partial(self, chunk, s):
        """Roll back a step interrupted after its journal slot was taken."""
        K.undo_steps(self._memory, self._usage, self._prev, self._next, self._ends, chunk.jrows,
                     chunk.jvals, chunk.jcount, chunk.urec, chunk.ucount, s, s + 1)
        self._undo_extra(chunk, s, s + 1, partial=True)
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

    @_exclusive
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
            self._undo_extra(chunk, start, stop)
            self._index.invalidate(_span_rows(chunk, start, stop))
        if position < self._position:
            chunk, s = self._journal.locate(position + 1)
            self._written.truncate(chunk.wcount[s])
        self._position = position
        self._restore_reads()

    @_exclusive
    def replay(self):
        """Redo every journaled step after the current position (bit for bit)."""
        self._redo(self._journal.latest)

    def _redo(self, position):
        first = self._position + 1
        for chunk, start, stop in self._journal.spans(self._position, position):
            K.redo_steps(*self._arrays(), chunk.jrows, chunk.jvals, chunk.jcount, chunk.urec,
                         chunk.ucount, start, stop, first)
            self._redo_extra(chunk, start, stop)
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

    @_exclusive
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

    @_exclusive
    def backward_step(self, position, grad_reads, grad_weights, query, strength, add, write_gate,
                      interp_gate, grad, check_inputs=True):
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
        check_inputs : bool       False skips the value checks of the five inputs (shapes are
                                  still checked): only for arrays :meth:`step` accepted, as the
                                  torch bridge passes

        Returns
        -------
        samcpu.backprop.StepGradients(query, strength, add, write_gate, interp_gate,
        prev_weights), float64 arrays of the inputs' shapes and (B, H, K) for prev_weights.
        """
        b, h, w = self.batch_size, self.num_heads, self.word_size
        return self._backward_step(position, grad_reads, grad_weights, [
            ("query", query, (b, h, w)), ("strength", strength, (b, h)), ("add", add, (b, h, w)),
            ("write_gate", write_gate, (b, h)), ("interp_gate", interp_gate, (b, h))], grad, check_inputs)

    _SHAPE_NAMES = {1: "(batch_size,)", 2: "(batch_size, num_heads)", 3: "(batch_size, num_heads, word_size)"}

    def _backward_step(self, position, grad_reads, grad_weights, inputs, grad, check_inputs):
        """:meth:`backward_step` for any model on this core: ``inputs`` are the step's inputs as
        (name, value, shape); the model's :meth:`_step_backward` runs the kernels."""
        from .backprop import MemoryGradient

        position = self._check_position(position)
        if position == self._journal.base:
            raise ValueError(f"position must be a journaled step in [{position + 1}, {self.latest}], "
                             f"got {position}")
        b, h, w, r = self.batch_size, self.num_heads, self.word_size, self.read_size
        bhw = (b, h, w)
        arrays = []
        for name, value, shape in inputs:
            if check_inputs:
                what = "(batch_size, num_heads, 3)" if shape[-1:] == (3,) else self._SHAPE_NAMES[len(shape)]
                arrays.append(self._check(name, value, shape, what))
            else:
                arr = np.ascontiguousarray(value, dtype=self.dtype)
                if arr.shape != shape:
                    raise ValueError(f"{name} has shape {arr.shape} but expected {shape}")
                arrays.append(arr)
        grads = []
        for name, value, shape, what in (
                ("grad_reads", grad_reads, bhw, "(batch_size, num_heads, word_size)"),
                ("grad_weights", grad_weights, (b, h, r), "(batch_size, num_heads, read_size)")):
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
        grad.reserve(h * (2 * r + 1))  # the rows one step can touch: R read, R + 1 written per head
        return self._step_backward(position, self.step_record(position), arrays, *grads, grad)

    def _step_backward(self, position, rec, inputs, grad_reads, grad_weights, grad):
        """SAM's backward kernels for step ``position`` (memory rewound to it)."""
        from .backprop import StepGradients

        b, h, w, k = self.batch_size, self.num_heads, self.word_size, self.k
        out = StepGradients(np.empty((b, h, w)), np.empty((b, h)), np.empty((b, h, w)), np.empty((b, h)),
                            np.empty((b, h)), np.empty((b, h, k)))
        query, strength, add, write_gate, interp_gate = inputs
        K.batch_step_backward(self._memory, rec["rows"], rec["weights"], query, strength, grad_reads,
                              grad_weights, np.ascontiguousarray(rec["lra"]), rec["prev_rows"],
                              rec["prev_weights"], add, write_gate, interp_gate, EPS, grad.slot,
                              grad.store, grad.owner, grad.count, *out)
        return out

    @_exclusive
    def clear_journal(self):
        """Drop the journal (keep the contents): later rewinds stop at the current position.
        Use it between truncated-BPTT segments to free the journal's memory."""
        self._journal.truncate(self._position)
        self._journal.clear(self._position)
        self._base_reads = (self._prev_rows.copy(), self._prev_weights.copy())

    @_exclusive
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
        self._reset_extra()
        self._journal.clear(0)
        self._position = 0
        self._peak = 0.0
        self._prev_rows = np.full_like(self._prev_rows, -1)
        self._prev_weights = np.zeros_like(self._prev_weights)
        self._base_reads = (self._prev_rows.copy(), self._prev_weights.copy())

    # ------------------------------------------------------------------ persistence
    @_exclusive
    def save(self, directory):
        """Write the memory to the folder ``directory`` (created if needed): the written rows
        and their contents, the usage ring, the last reads, the index and the settings, with
        checksums. All or nothing: an earlier save there stays loadable until this one is
        complete. Refuses (``ValueError``) a non-empty folder that holds no samcpu save, and
        never deletes a file it did not write. Costs O(rows touched). The journal is not
        saved: a loaded memory rewinds no further back. See :mod:`samcpu.persistence`."""
        from .persistence import save

        save(self, directory)

    @classmethod
    def load(cls, directory, path=None, index=None, index_options=None):
        """Open a memory written by :meth:`save`. ``path``: a new file to back the memory
        (None: anonymous). ``index`` overrides the saved index kind (the index is then built
        from the rows); ``index_options`` as in the constructor. Raises
        :class:`MemoryFileError` if the folder is missing, incomplete, corrupt or crafted, and
        ``ValueError`` naming the argument for a bad ``path``, ``index`` or ``index_options``."""
        from .persistence import load

        return load(cls, directory, path=path, index=index, index_options=index_options)


def _span_rows(chunk, start, stop):
    """The rows journal slots start..stop-1 touched, (B, R) with -1 padding."""
    rows = chunk.jrows[start:stop]
    return np.ascontiguousarray(rows.transpose(1, 0, 2)).reshape(rows.shape[1], -1)
