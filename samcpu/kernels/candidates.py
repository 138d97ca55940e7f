"""Exact re-scoring of approximate candidates (the read of an approximate index).

The candidates of a query are the rows an ANN index proposes, every row of a small exact
buffer (rows whose indexed vector may be stale, and written rows that are zero), and the
lowest unwritten rows at similarity 0. All are scored against the live memory, so the
answer is exact over the candidates (to float64 round-off), ordered by (-similarity, row). A zero query scores
every row 0, so its answer is rows 0..k-1 whatever the candidates.

The buffer can hold thousands of rows, so it keeps a float32 copy of each member scaled by
1 / ||row||_eps (``unit``, contiguous, updated with the row: :func:`hot_add`). A query first
scores the buffer in float32 against the query scaled the same way (|error| <= ``margin``: the
vectors have norms below 1), then re-scores exactly only the members within twice ``margin`` of
a head's k-th best float32 score: every member of a head's exact top k is among them (if a
member's true score s is at least the true k-th best, which is at least T - margin for the
k-th best float32 score T, its float32 score is at least s - margin >= T - 2 margin).
"""
import numba as nb
import numpy as np

from ..config import NJIT, NJIT_FAST
from .rowset import unwritten_rows
from .similarity import norm_eps, scan_topk_fast, topk_insert


#: buffers up to this size are scored exactly at once (the float32 pass does not pay)
HOT_EXACT = 64


def hot_margin(width):
    """A bound on |float32 score - exact score| for unit-bounded vectors of ``width`` values
    (rounding of each value and of the sums, with room for reassociation)."""
    return 1e-6 + 4.0 * (width + 2) * 2.0 ** -24


@nb.njit(**NJIT)
def hot_add(flags, members, count, slot, unit, memory, new_rows, eps):
    """Add ``new_rows`` (entries < 0 ignored) to a buffer and refresh the float32 copy of each
    (a member already there keeps its place); returns the new count (capacity is the caller's).

    flags (N,) uint8, members (cap,) int64, slot (N,) int64 (a member's place), unit (cap, W)
    float32: row / ||row||_eps of each member; memory (N, W).
    """
    width = memory.shape[1]
    for i in range(new_rows.shape[0]):
        r = new_rows[i]
        if r < 0:
            continue
        if flags[r] == 0:
            flags[r] = 1
            members[count] = r
            slot[r] = count
            count += 1
        s = slot[r]
        mm = 0.0
        for j in range(width):
            v = np.float64(memory[r, j])
            mm += v * v
        inv = 1.0 / np.sqrt(mm + eps)
        for j in range(width):
            unit[s, j] = np.float32(np.float64(memory[r, j]) * inv)
    return count


@nb.njit(**NJIT)
def hot_compact(flags, members, count, slot, unit, keep):
    """Keep the members ``i`` with ``keep[i]`` (in their order, with their float32 copies) and
    drop the others from the buffer; returns the new count."""
    c = 0
    for i in range(count):
        r = members[i]
        if keep[i]:
            members[c] = r
            slot[r] = c
            if c != i:
                unit[c] = unit[i]
            c += 1
        else:
            flags[r] = 0
    return c


@nb.njit(**NJIT)
def batch_hot_add(flags, members, counts, slot, unit, memory, new_rows, eps):
    """:func:`hot_add` for every batch element: flags, slot (B, N), members (B, cap), counts
    (B,) updated in place, unit (B, cap, W), memory (B, N, W), new_rows (B, R) -1 padded."""
    for b in range(flags.shape[0]):
        counts[b] = hot_add(flags[b], members[b], counts[b], slot[b], unit[b], memory[b], new_rows[b], eps)


@nb.njit(**NJIT_FAST)
def _hot_scores(unit, count, qunit, out):
    """out[h, i] = qunit[h] . unit[i] in float32 (the sums reassociated: SIMD)."""
    n_heads, width = qunit.shape
    for i in range(count):
        for h in range(n_heads):
            d = np.float32(0.0)
            for j in range(width):
                d += qunit[h, j] * unit[i, j]
            out[h, i] = d


@nb.njit(**NJIT)
def hot_candidates(unit, buf_rows, count, queries, k, eps, margin):
    """The buffer's members that may be in a head's exact top k (see the module's text):
    (rows (n,) int64, n)."""
    n_heads, width = queries.shape
    qunit = np.empty((n_heads, width), np.float32)
    for h in range(n_heads):
        inv = 1.0 / norm_eps(queries[h], eps)
        for j in range(width):
            qunit[h, j] = np.float32(np.float64(queries[h, j]) * inv)
    scores = np.empty((n_heads, count), np.float32)
    _hot_scores(unit, count, qunit, scores)
    kth = np.full(n_heads, -np.inf)
    best = np.full((n_heads, k), -np.inf)  # per head, the k best float32 scores, descending
    for h in range(n_heads):
        for i in range(count):
            s = np.float64(scores[h, i])
            if s > best[h, k - 1]:
                j = k - 1
                while j > 0 and best[h, j - 1] < s:
                    best[h, j] = best[h, j - 1]
                    j -= 1
                best[h, j] = s
        kth[h] = best[h, k - 1] - 2.0 * margin
    rows = np.empty(count, np.int64)
    n = 0
    for i in range(count):
        for h in range(n_heads):
            if np.float64(scores[h, i]) >= kth[h]:
                rows[n] = buf_rows[i]
                n += 1
                break
    return rows, n


@nb.njit(**NJIT)
def rescore_candidates(memory, cand, buf_flags, buf_rows, buf_count, flags, hint, queries, k, eps,
                       out_rows, out_sims, unit, margin):
    """Top-k per query over the candidates of one batch element (releases the GIL, so the
    batch elements can run in threads beside their index searches).

    memory (N, W); cand (H, C) int64 index proposals, -1 = none (each is scored for every
    head; rows in the buffer are skipped there: the buffer scores them); buf_flags (N,) uint8
    and buf_rows[:buf_count]: the exact buffer; flags (N,) uint8 and hint (1,): the written
    rows; queries (H, W); unit (cap, W) float32: the buffer's float32 copy (:func:`hot_add`;
    used above ``HOT_EXACT`` members) and margin: :func:`hot_margin` of W.
    Writes out_rows (H, k) int64 and out_sims (H, k) float64, ordered by (-sim, row).
    """
    n_heads = queries.shape[0]
    qnorms = np.empty(n_heads)
    for h in range(n_heads):
        qnorms[h] = norm_eps(queries[h], eps)
    n = np.zeros(n_heads, np.int64)
    if buf_count > HOT_EXACT:
        hot, n_hot = hot_candidates(unit, buf_rows, buf_count, queries, k, eps, margin)
        scan_topk_fast(memory, hot, 0, n_hot, queries, qnorms, eps, out_rows, out_sims, n)
    else:
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
