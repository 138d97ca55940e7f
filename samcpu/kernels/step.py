"""Batch-level kernels: one call applies one phase of a step, or rewinds/replays steps, for
every batch element. The phases cost microseconds, so they run serially (a parallel region
costs more than it saves, and OpenMP workers spinning after it slow the index threads); only
the exact scan, whose cost grows with the rows written, is parallel. They assemble the one-equation kernels of
``similarity``, ``read``, ``write``, ``ring`` and ``rowset``.
"""
import numba as nb
import numpy as np

from ..config import NJIT, NJIT_PARALLEL
from .read import softmax_read
from .ring import lra_rows, ring_touch, ring_untouch
from .rowset import unwritten_rows
from .similarity import norm_eps, scan_topk, topk_insert
from .write import accessed_rows, journal_save, journal_swap, sparse_write, write_rows


@nb.njit(**NJIT)
def write_phase(memory, usage, prev, nxt, ends, prev_rows, prev_weights, add, write_gate,
                interp_gate, lra, jrows, jold, jcount):
    """Steps 1-3 for every batch element b: pick the LRA rows ``lra[b]`` (H,), journal the
    distinct rows the write touches (``jrows[b, :jcount[b]]``, the rest set to -1; old
    contents ``jold[b]``), then erase and add. memory (B, N, W); usage, prev, nxt (B, N); ends (B, 4);
    prev_rows (B, H, K); prev_weights (B, H, K); add (B, H, W); gates (B, H).
    """
    for b in range(memory.shape[0]):
        lra_rows(usage[b], nxt[b], ends[b], lra.shape[1], lra[b])
        n = write_rows(lra[b], prev_rows[b], jrows[b])
        jrows[b, n:] = -1
        journal_save(memory[b], jrows[b], n, jold[b])
        sparse_write(memory[b], lra[b], prev_rows[b], prev_weights[b], add[b],
                     write_gate[b], interp_gate[b])
        jcount[b] = n


@nb.njit(**NJIT)
def read_phase(memory, rows, query, strength, eps, weights, reads, sims):
    """Step 4 for every batch element, given the chosen rows (B, H, K)."""
    for b in range(memory.shape[0]):
        softmax_read(memory[b], rows[b], query[b], strength[b], eps, weights[b], reads[b], sims[b])


@nb.njit(**NJIT)
def usage_phase(usage, prev, nxt, ends, lra, prev_rows, prev_weights, write_gate, interp_gate,
                rows, weights, delta, t, urec, ucount):
    """Step 5 for every batch element: u(i) <- t for the rows whose write + read weight
    exceeds delta, touched in ascending order; undo records into urec (B, U, 3)."""
    for b in range(usage.shape[0]):
        cand = np.empty(urec.shape[1], np.int64)
        total = np.empty(urec.shape[1], np.float64)
        n = accessed_rows(lra[b], prev_rows[b], prev_weights[b], write_gate[b], interp_gate[b],
                          rows[b], weights[b], delta, cand, total)
        for i in range(n):
            ring_touch(usage[b], prev[b], nxt[b], ends[b], cand[i], t, urec[b, i])
        ucount[b] = n


@nb.njit(**NJIT)
def undo_steps(memory, usage, prev, nxt, ends, jrows, jvals, jcount, urec, ucount, start, stop):
    """Undo the journal slots ``stop-1`` down to ``start`` (arrays indexed [slot, b, ...]):
    usage touches in reverse, then the memory rows swapped back. After this the journal
    values hold the rows' newer contents, ready for :func:`redo_steps`."""
    for b in range(memory.shape[0]):
        for s in range(stop - 1, start - 1, -1):
            for i in range(ucount[s, b] - 1, -1, -1):
                ring_untouch(usage[b], prev[b], nxt[b], ends[b], urec[s, b, i])
            journal_swap(memory[b], jrows[s, b], jcount[s, b], jvals[s, b])


@nb.njit(**NJIT)
def redo_steps(memory, usage, prev, nxt, ends, jrows, jvals, jcount, urec, ucount, start, stop,
               first_t):
    """Redo journal slots ``start..stop-1``; slot s is step number ``first_t + s - start``."""
    for b in range(memory.shape[0]):
        for s in range(start, stop):
            journal_swap(memory[b], jrows[s, b], jcount[s, b], jvals[s, b])
            t = first_t + s - start
            for i in range(ucount[s, b]):
                ring_touch(usage[b], prev[b], nxt[b], ends[b], urec[s, b, i, 0], t, urec[s, b, i])


@nb.njit(**NJIT_PARALLEL)
def exact_query(memory, flags, members, counts, hints, queries, k, eps, block):
    """Exact top-k over all N rows of each batch element, scanning only the written rows
    ``members[b, :counts[b]]`` and adding the lowest unwritten rows (all zero, similarity 0).

    memory (B, N, W); flags (B, N) uint8; members (B, cap) int64; counts (B,); hints (B, 1);
    queries (B, H, W). Returns rows (B, H, k) int64 and sims (B, H, k) float64, ordered by
    (-similarity, row). Parallel over blocks of ``block`` written rows.
    """
    n_batch = memory.shape[0]
    n_heads = queries.shape[1]
    qnorms = np.empty((n_batch, n_heads))
    first = np.zeros(n_batch + 1, np.int64)
    for b in range(n_batch):
        for h in range(n_heads):
            qnorms[b, h] = norm_eps(queries[b, h], eps)
        first[b + 1] = first[b] + (counts[b] + block - 1) // block
    n_blocks = first[n_batch]
    brows = np.empty((n_blocks, n_heads, k), np.int64)
    bsims = np.empty((n_blocks, n_heads, k), np.float64)
    bn = np.zeros((n_blocks, n_heads), np.int64)
    for c in nb.prange(n_blocks):
        b = 0
        while first[b + 1] <= c:
            b += 1
        start = (c - first[b]) * block
        stop = min(counts[b], start + block)
        scan_topk(memory[b], members[b], start, stop, queries[b], qnorms[b], eps,
                  brows[c], bsims[c], bn[c])
    out_rows = np.empty((n_batch, n_heads, k), np.int64)
    out_sims = np.empty((n_batch, n_heads, k), np.float64)
    for b in nb.prange(n_batch):
        n = np.zeros(n_heads, np.int64)
        for c in range(first[b], first[b + 1]):
            for h in range(n_heads):
                for j in range(bn[c, h]):
                    n[h] = topk_insert(out_rows[b, h], out_sims[b, h], n[h], brows[c, h, j], bsims[c, h, j])
        free = np.empty(k, np.int64)
        n_free = unwritten_rows(flags[b], hints[b], k, free)
        for h in range(n_heads):
            for j in range(n_free):
                n[h] = topk_insert(out_rows[b, h], out_sims[b, h], n[h], free[j], 0.0)
    return out_rows, out_sims
