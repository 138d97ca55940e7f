"""Exact re-scoring of approximate candidates (the read of an approximate index).

The candidates of a query are the rows an ANN index proposes, every row of a small exact
buffer (rows whose indexed vector may be stale, and written rows that are zero), and the
lowest unwritten rows at similarity 0. All are scored against the live memory, so the
answer is exact over the candidates (to float64 round-off), ordered by (-similarity, row). A zero query scores
every row 0, so its answer is rows 0..k-1 whatever the candidates.
"""
import numba as nb
import numpy as np

from ..config import NJIT
from .rowset import unwritten_rows
from .similarity import norm_eps, scan_topk_fast, topk_insert


@nb.njit(**NJIT)
def rescore_candidates(memory, cand, buf_flags, buf_rows, buf_count, flags, hint, queries, k, eps,
                       out_rows, out_sims):
    """Top-k per query over the candidates of one batch element (releases the GIL, so the
    batch elements can run in threads beside their index searches).

    memory (N, W); cand (H, C) int64 index proposals, -1 = none (each is scored for every
    head; rows in the buffer are skipped there: the buffer scores them); buf_flags (N,) uint8
    and buf_rows[:buf_count]: the exact buffer; flags (N,) uint8 and hint (1,): the written
    rows; queries (H, W).
    Writes out_rows (H, k) int64 and out_sims (H, k) float64, ordered by (-sim, row).
    """
    n_heads = queries.shape[0]
    qnorms = np.empty(n_heads)
    for h in range(n_heads):
        qnorms[h] = norm_eps(queries[h], eps)
    n = np.zeros(n_heads, np.int64)
    scan_topk_fast(memory, buf_rows, 0, buf_count, queries, qnorms, eps, out_rows, out_sims, n)
    # the proposals of all heads, once each and not in the buffer, scored for every head
    extra = np.empty(cand.size, np.int64)
    n_extra = 0
    for h in range(n_heads):
        for j in range(cand.shape[1]):
            r = cand[h, j]
            if r >= 0 and buf_flags[r] == 0:
                buf_flags[r] = 2
                extra[n_extra] = r
                n_extra += 1
    for i in range(n_extra):
        buf_flags[extra[i]] = 0
    scan_topk_fast(memory, extra, 0, n_extra, queries, qnorms, eps, out_rows, out_sims, n)
    free = np.empty(k, np.int64)
    n_free = unwritten_rows(flags, hint, k, free)
    for h in range(n_heads):
        for j in range(n_free):
            n[h] = topk_insert(out_rows[h], out_sims[h], n[h], free[j], 0.0)
        if not queries[h].any():
            for j in range(k):
                out_rows[h, j] = j
                out_sims[h, j] = 0.0
