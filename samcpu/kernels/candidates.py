"""Exact re-scoring of approximate candidates (the read of an approximate index).

The candidates of a query are the rows an ANN index proposes, every row of a small exact
buffer (rows whose indexed vector may be stale, and written rows that are zero), and the
lowest unwritten rows at similarity 0. All are scored against the live memory, so the
answer is exact over the candidates, ordered by (-similarity, row). A zero query scores
every row 0, so its answer is rows 0..k-1 whatever the candidates.
"""
import numba as nb
import numpy as np

from ..config import NJIT_PARALLEL
from .rowset import unwritten_rows
from .similarity import norm_eps, scan_topk, topk_insert


@nb.njit(**NJIT_PARALLEL)
def rescore_candidates(memory, cand, buf_flags, buf_rows, buf_counts, flags, hints, queries, k, eps):
    """Top-k per query over the candidates, batch elements in parallel.

    memory (B, N, W); cand (B, H, C) int64 index proposals, -1 = none (rows in the buffer are
    skipped there: the buffer scores them); buf_flags (B, N) uint8 and buf_rows (B, cap) with
    buf_counts (B,): the exact buffer; flags (B, N) uint8 and hints (B, 1): the written rows;
    queries (B, H, W). Returns rows (B, H, k) int64 and sims (B, H, k) float64.
    """
    n_batch, n_heads = queries.shape[0], queries.shape[1]
    out_rows = np.empty((n_batch, n_heads, k), np.int64)
    out_sims = np.empty((n_batch, n_heads, k), np.float64)
    for b in nb.prange(n_batch):
        qnorms = np.empty(n_heads)
        for h in range(n_heads):
            qnorms[h] = norm_eps(queries[b, h], eps)
        n = np.zeros(n_heads, np.int64)
        scan_topk(memory[b], buf_rows[b], 0, buf_counts[b], queries[b], qnorms, eps,
                  out_rows[b], out_sims[b], n)
        for h in range(n_heads):
            qh = queries[b, h:h + 1]
            for j in range(cand.shape[2]):
                r = cand[b, h, j]
                if r >= 0 and buf_flags[b, r] == 0:
                    # one row, one head: reuse the scan kernel on a one-element range
                    scan_topk(memory[b], cand[b, h], j, j + 1, qh, qnorms[h:h + 1], eps,
                              out_rows[b, h:h + 1], out_sims[b, h:h + 1], n[h:h + 1])
        free = np.empty(k, np.int64)
        n_free = unwritten_rows(flags[b], hints[b], k, free)
        for h in range(n_heads):
            for j in range(n_free):
                n[h] = topk_insert(out_rows[b, h], out_sims[b, h], n[h], free[j], 0.0)
            if not queries[b, h].any():
                for j in range(k):
                    out_rows[b, h, j] = j
                    out_sims[b, h, j] = 0.0
    return out_rows, out_sims
