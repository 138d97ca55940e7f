"""SparseTemporalMemory: the NumPy-level Sparse DNC memory (DESIGN.md section 5) on SAM's core.

It is a :class:`~samcpu.memory.SparseMemory` whose heads also keep sparse temporal links
(N_h, P_h) and a precedence p_h, built from their write weights, and whose reads mix the
content weights with the forward and backward weightings of the previous read through the read
modes. Everything SAM's core does (input checks, the journal of rows, the usage ring, the
index, rewind and replay, reset, save and load, the lock) is SAM's; this class adds the link
state as one more part of the journaled state:

- per step the journal also holds each head's link records (the old link rows and the old
  precedence, :class:`samcpu.kernels.links.LinkStep`) and what the read mixed (content rows and
  weights, b_h and f_h), which the backward pass needs;
- rewind undoes the link writes newest first and replay redoes them, bit for bit;
- the read support is R = K + 2 K_L rows per head (unused: row -1, weight 0), and the next
  step writes to those rows plus the LRA row.

Per step and batch element the link work is O(H (R^2 + R K_L^2)), nothing grows with N; link
state is lazily mapped, so rows never written cost nothing.
"""
from typing import NamedTuple

import numpy as np

from . import kernels as K
from ._util import check_int
from .config import DELTA, EPS
from .kernels import links as L
from .kernels import temporal as KT
from .memory import SparseMemory, StepResult, _exclusive

#: the most link entries kept per row: a step costs O(H R K_L^2)
MAX_LINK_K = 256
#: read modes must sum to 1 within this (a float32 softmax sums to 1 within a few 1e-7)
MODES_TOLERANCE = 1e-4


class LinkEntries(NamedTuple):
    """One head's links as dicts (see :meth:`SparseTemporalMemory.link_entries`)."""

    before: dict  #: N_h: {row i: {row j: N_h(i, j)}}, stored entries only
    after: dict  #: P_h: {row j: {row i: P_h(j, i)}}
    precedence: dict  #: p_h: {row: value}


class TemporalStepGradients(NamedTuple):
    """Gradients of one SDNC step's inputs (float64), from
    :meth:`SparseTemporalMemory.backward_step`."""

    query: np.ndarray  #: (B, H, W)
    strength: np.ndarray  #: (B, H)
    add: np.ndarray  #: (B, H, W)
    write_gate: np.ndarray  #: (B, H)
    interp_gate: np.ndarray  #: (B, H)
    read_modes: np.ndarray  #: (B, H, 3)
    prev_weights: np.ndarray  #: (B, H, R): dL/dw^R_{t-1}, through the write and the links


class SparseTemporalMemory(SparseMemory):
    """A batch of Sparse DNC memories: :class:`~samcpu.SparseMemory` plus sparse temporal links
    and read modes (DESIGN.md section 5).

    Parameters as :class:`~samcpu.SparseMemory`, plus

    link_k : int
        K_L, the entries kept per link row and in the precedence (at most ``MAX_LINK_K``).

    :meth:`step` takes one more input, ``read_modes``; results and records have R = K + 2 K_L
    rows per head (:attr:`read_size`).
    """

    model = "sdnc"

    def __init__(self, batch_size, num_slots, word_size, num_heads=1, k=8, link_k=8, index="hnsw",
                 dtype=np.float32, path=None, delta=DELTA, seed=0, index_options=None):
        self.link_k = check_int("link_k", link_k, maximum=MAX_LINK_K)
        super().__init__(batch_size, num_slots, word_size, num_heads, k, index=index, dtype=dtype, path=path,
                         delta=delta, seed=seed, index_options=index_options)
        self._links = L.empty_links(self.num_slots, self.link_k, self.num_heads, self.dtype,
                                    batch_shape=(self.batch_size,))
        self._linked = None  # (chunk, slot) whose link write is done while a step is applied

    # ------------------------------------------------------------------ model hooks
    @property
    def read_size(self):
        """R = K + 2 K_L: the rows a head reads per step (content, backward, forward)."""
        return self.k + 2 * self.link_k

    def _journal_extras(self):
        h, k, kl, m = self.num_heads, self.k, self.link_k, self.k + 2 * self.link_k + 1
        i8, f = np.int64, self.dtype
        return dict(
            lb_rows=((h, m), i8), lb_fresh=((h, m), np.bool_), lb_cols=((h, m, kl), i8),
            lb_vals=((h, m, kl), f),
            la_rows=((h, kl), i8), la_fresh=((h, kl), np.bool_), la_cols=((h, kl, kl), i8),
            la_vals=((h, kl, kl), f), lp_rows=((h, kl), i8), lp_vals=((h, kl), f), l_counts=((h, 2), i8),
            content_rows=((h, k), i8), content_weights=((h, k), f),
            back_rows=((h, kl), i8), back_vals=((h, kl), f), fwd_rows=((h, kl), i8), fwd_vals=((h, kl), f))

    @staticmethod
    def _link_records(chunk):
        """The chunk's link records as a LinkStep with leading axes (slot, B, H)."""
        return L.LinkStep(L.LinkRecords(chunk.lb_rows, chunk.lb_fresh, chunk.lb_cols, chunk.lb_vals),
                          L.LinkRecords(chunk.la_rows, chunk.la_fresh, chunk.la_cols, chunk.la_vals),
                          chunk.lp_rows, chunk.lp_vals, chunk.l_counts)

    def _after_write(self, chunk, s, lra, alpha, gamma):
        """Steps 6-7: links and precedence from this step's write weights, journaled."""
        b, h, r = self.batch_size, self.num_heads, self.read_size
        rows = np.empty((b, h, r + 1), np.int64)
        weights = np.empty((b, h, r + 1), np.float64)
        KT.link_write_weights(lra, self._prev_rows, self._prev_weights, alpha, gamma, rows, weights)
        L.batch_link_write(self._links, rows, weights, KT.slot_step(self._link_records(chunk), s))
        self._linked = (chunk, s)

    def _read(self, chunk, s, q, beta, modes):
        """Step 8: SAM's content weights, then b_h, f_h and the mode mix; the read over the mix."""
        b, h, k, r = self.batch_size, self.num_heads, self.k, self.read_size
        content_rows, _ = self._index.query(q, k)
        content_weights = np.empty((b, h, k), self.dtype)
        scratch = np.empty((b, h, self.word_size), self.dtype)
        sims = np.empty((b, h, k), np.float64)
        K.read_phase(self._memory, content_rows, q, beta, EPS, content_weights, scratch, sims)
        rows = np.empty((b, h, r), np.int64)
        weights = np.empty((b, h, r), self.dtype)
        count = np.empty((b, h), np.int64)
        L.batch_link_read(self._links, self._prev_rows, self._prev_weights, content_rows, content_weights,
                          modes, chunk.back_rows[s], chunk.back_vals[s], chunk.fwd_rows[s], chunk.fwd_vals[s],
                          rows, weights, count)
        chunk.content_rows[s] = content_rows
        chunk.content_weights[s] = content_weights
        reads = np.empty((b, h, self.word_size), self.dtype)
        KT.support_read(self._memory, rows, weights, reads)
        return rows, weights, reads

    def _apply(self, *inputs, extra=None):
        self._linked = None  # set by _after_write: a failing step undoes its links only then
        try:
            return super()._apply(*inputs, extra=extra)
        finally:
            self._linked = None

    def _undo_extra(self, chunk, start, stop, partial=False):
        if partial:
            if self._linked == (chunk, start):
                KT.span_link_undo(self._links, self._link_records(chunk), start, stop)
            return
        KT.span_link_undo(self._links, self._link_records(chunk), start, stop)

    def _redo_extra(self, chunk, start, stop):
        KT.span_link_redo(self._links, self._link_records(chunk), start, stop)

    def _reset_extra(self):
        for b in range(self.batch_size):
            L.links_reset(L.links_at(self._links, b))

    # ------------------------------------------------------------------ persistence
    _extra_settings_keys = ("link_k",)

    def _extra_state(self):
        """The links: per batch element the records in use (owner rows, columns, values),
        concatenated with their counts, and the precedence."""
        links, used = self._links, self._links.used[:, 0]
        return dict(link_counts=used.copy(),
                    link_owner=np.concatenate([links.owner[b, :u] for b, u in enumerate(used)]),
                    link_cols=np.concatenate([links.cols[b, :u] for b, u in enumerate(used)]),
                    link_vals=np.concatenate([links.vals[b, :u] for b, u in enumerate(used)]),
                    prec_rows=links.prec_rows.copy(), prec_vals=links.prec_vals.copy())

    def _extra_state_bound(self):
        return self.batch_size * self.num_slots * (8 + 2 * self.num_heads * self.link_k * 16) + 4096

    def _restore_extra(self, z):
        b, n, h, kl = self.batch_size, self.num_slots, self.num_heads, self.link_k
        names = ("link_counts", "link_owner", "link_cols", "link_vals", "prec_rows", "prec_vals")
        missing = [name for name in names if name not in z]
        if missing:
            raise ValueError(f"state.npz lacks the arrays {missing}")
        for name in names:
            if z[name].dtype.kind not in ("f" if name.endswith("vals") else "iu"):
                raise ValueError(f"array {name!r} has dtype {z[name].dtype}")
        counts, owner = z["link_counts"].astype(np.int64), z["link_owner"].astype(np.int64)
        cols, vals = z["link_cols"].astype(np.int64), z["link_vals"]
        prec_rows, prec_vals = z["prec_rows"].astype(np.int64), z["prec_vals"]
        total = len(owner)
        checks = [
            (counts.shape == (b,) and counts.min(initial=0) >= 0 and owner.ndim == 1
             and counts.sum() == total, "link_counts"),
            (total == 0 or (owner.min() >= 0 and owner.max() < n), "link_owner"),
            (cols.shape == (total, 2 * h, kl) and cols.min(initial=-1) >= -1 and cols.max(initial=-1) < n,
             "link_cols"),
            (vals.shape == cols.shape and np.isfinite(vals).all() and (vals >= 0).all(), "link_vals"),
            (prec_rows.shape == (b, h, kl) and prec_rows.min(initial=-1) >= -1
             and prec_rows.max(initial=-1) < n, "prec_rows"),
            (prec_vals.shape == (b, h, kl) and np.isfinite(prec_vals).all() and (prec_vals >= 0).all(),
             "prec_vals"),
        ]
        for ok, name in checks:
            if not ok:
                raise ValueError(f"array {name!r} has the wrong shape or values")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for i in range(b):
            rows = owner[offsets[i]:offsets[i + 1]]
            if len(np.unique(rows)) != len(rows):
                raise ValueError("array 'link_owner' repeats a row")
        links = self._links
        for i in range(b):
            u = counts[i]
            links.owner[i, :u] = owner[offsets[i]:offsets[i + 1]]
            links.cols[i, :u] = cols[offsets[i]:offsets[i + 1]]
            links.vals[i, :u] = vals[offsets[i]:offsets[i + 1]]
            links.used[i, 0] = u
            L.links_rebuild(L.links_at(links, i))
        links.prec_rows[:] = prec_rows
        links.prec_vals[:] = prec_vals

    # ------------------------------------------------------------------ stepping
    def _check_modes(self, read_modes):
        b, h = self.batch_size, self.num_heads
        pi = self._check("read_modes", read_modes, (b, h, 3), "(batch_size, num_heads, 3)")
        if not (pi >= 0).all():
            raise ValueError(f"read_modes must be >= 0, got minimum {pi.min()}")
        total = pi.astype(np.float64).sum(-1)
        if not (np.abs(total - 1.0) <= MODES_TOLERANCE).all():
            worst = total.flat[np.argmax(np.abs(total - 1.0))]
            raise ValueError(f"read_modes must sum to 1 over the last axis (backward, content, forward), "
                             f"got a sum of {worst}")
        return pi

    @_exclusive
    def step(self, query, strength, add, write_gate, interp_gate, read_modes):
        """Apply one SDNC step (write, links, precedence, read, usage) to every batch element.

        Parameters as :meth:`samcpu.SparseMemory.step`, plus
        read_modes : (B, H, 3)  pi = (backward, content, forward), >= 0, summing to 1 on the
                                last axis (the probabilities, after the softmax)

        Returns StepResult(reads (B, H, W), rows (B, H, R) int64, weights (B, H, R)): the
        support is the content rows by (-similarity, row), then the backward rows not among
        them, then the forward rows not among those; unused entries are row -1, weight 0.
        Raises ``ValueError`` (and changes nothing) for bad input.
        """
        inputs = self._check_step(query, strength, add, write_gate, interp_gate)
        return self._apply(*inputs, extra=self._check_modes(read_modes))

    @_exclusive
    def step_record(self, position):
        """As :meth:`samcpu.SparseMemory.step_record`, plus what step ``position`` mixed:
        ``content_rows``/``content_weights`` (B, H, K) = c_h and ``back_rows``, ``back_vals``,
        ``fwd_rows``, ``fwd_vals`` (B, H, K_L) = b_h and f_h as kept. Views: do not modify."""
        rec = super().step_record(position)
        chunk, s = self._journal.locate(position)
        for name in ("content_rows", "content_weights", "back_rows", "back_vals", "fwd_rows", "fwd_vals"):
            rec[name] = getattr(chunk, name)[s]
        return rec

    @_exclusive
    def backward_step(self, position, grad_reads, grad_weights, query, strength, add, write_gate,
                      interp_gate, read_modes, grad, check_inputs=True):
        """Backpropagate through journaled step t = ``position`` as
        :meth:`samcpu.SparseMemory.backward_step` does, with ``read_modes`` the step's sixth
        input and ``grad_weights`` (B, H, R). Returns :class:`TemporalStepGradients`; its
        ``prev_weights`` gradient (B, H, R) includes the path through f_h and b_h."""
        b, h, w = self.batch_size, self.num_heads, self.word_size
        return self._backward_step(position, grad_reads, grad_weights, [
            ("query", query, (b, h, w)), ("strength", strength, (b, h)), ("add", add, (b, h, w)),
            ("write_gate", write_gate, (b, h)), ("interp_gate", interp_gate, (b, h)),
            ("read_modes", read_modes, (b, h, 3))], grad, check_inputs)

    def _step_backward(self, position, rec, inputs, grad_reads, grad_weights, grad):
        b, h, w, r = self.batch_size, self.num_heads, self.word_size, self.read_size
        out = TemporalStepGradients(np.empty((b, h, w)), np.empty((b, h)), np.empty((b, h, w)),
                                    np.empty((b, h)), np.empty((b, h)), np.empty((b, h, 3)),
                                    np.empty((b, h, r)))
        query, strength, add, write_gate, interp_gate, modes = inputs
        KT.batch_temporal_step_backward(
            self._memory, self._links, rec["rows"], rec["weights"], rec["content_rows"],
            rec["content_weights"],
            rec["back_rows"], rec["back_vals"], rec["fwd_rows"], rec["fwd_vals"], modes, query, strength,
            grad_reads, grad_weights, np.ascontiguousarray(rec["lra"]), rec["prev_rows"], rec["prev_weights"],
            add, write_gate, interp_gate, EPS, grad.slot, grad.store, grad.owner, grad.count, *out)
        return out

    # ------------------------------------------------------------------ inspection
    def link_entries(self, b, h):
        """Head ``h`` of batch element ``b``: its links and precedence as dicts
        (:class:`LinkEntries`), stored entries only. O(rows with link entries)."""
        b = check_int("b", b, minimum=0, maximum=self.batch_size - 1)
        h = check_int("h", h, minimum=0, maximum=self.num_heads - 1)
        links = L.links_at(self._links, b)
        before, after = {}, {}
        for s in range(int(links.used[0])):
            row = int(links.owner[s])
            for part, out in ((2 * h + L.BEFORE, before), (2 * h + L.AFTER, after)):
                cols, vals = links.cols[s, part], links.vals[s, part]
                entries = {int(c): float(v) for c, v in zip(cols, vals, strict=True) if c >= 0}
                if entries:
                    out[row] = entries
        prec = {int(r): float(v) for r, v in zip(links.prec_rows[h], links.prec_vals[h], strict=True)
                if r >= 0}
        return LinkEntries(before, after, prec)

    @property
    def link_records(self):
        """Link records in use per batch element, (B,) int64 (one per row with link entries)."""
        return self._links.used[:, 0].copy()


__all__ = ["LinkEntries", "MAX_LINK_K", "SparseTemporalMemory", "TemporalStepGradients", "StepResult"]
