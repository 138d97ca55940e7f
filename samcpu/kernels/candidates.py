"""Exact re-scoring of approximate candidates (the read of an approximate index).

The candidates of a query are the rows an ANN index proposes, every row of a small exact
buffer (rows whose indexed vector may be stale, and written rows that are zero), and the
lowest unwritten rows at similarity 0. All are scored against the live memory, so the
answer is exact over the candidates (to float64 round-off), ordered by (-similarity, row). A zero query scores
every row 0, so its answer is rows 0..k-1 whatever the candidates.

The buffer can hold thousands of rows, so it keeps an int16 copy of each member (updated with
the row: :func:`hot_add`): the row scaled to u = row / ||row||_eps, quantised per row,
u ~ scale * codes with codes in [-32767, 32767], and ``slack`` >= ||u - scale * codes||. A query q
(scaled the same way, so ||q|| < 1) first scores the buffer from the copy (blocked SIMD,
:mod:`samcpu.kernels.simd`): the exact score q . u lies within slack + ``margin`` of the
copy's score (Cauchy-Schwarz, plus float32 rounding: :func:`hot_margin`). Only the members whose
upper bound reaches a head's k-th best lower bound T are re-scored exactly: every member of a
head's exact top k is among them (its true score is at least the true k-th best, which is at
least T, and its upper bound at least its true score).
"""
import numba as nb
import numpy as np

from ..config import NJIT
from .simd import GROUP, HEADS, LANES, prefetch_row, score_blocks
from .rowset import unwritten_rows
from .similarity import norm_eps, scan_topk_fast, topk_insert


#: buffers up to this size are scored exactly at once (the int16 pass does not pay)
HOT_EXACT = 64
#: rows of the int16 copy per kernel call: its capacity is a multiple
HOT_ALIGN = LANES * GROUP
#: members a query's pass keeps at most at once (then it re-scores the whole buffer exactly)
KEPT = 512
#: the largest code: a row's largest value |u_j| maps to it
CODE_MAX = 32767.0


def hot_margin(width):
    """A bound on the float32 rounding in a score from the int16 copy, for unit-bounded vectors of
    ``width`` values (the query's rounding to float32, the sums, the scale; with room)."""
    return 1e-6 + 4.0 * (width + 2) * 2.0 ** -24


def hot_arrays(batch, rows, width):
    """Zeroed (codes (batch, cap / LANES, width, LANES) int16, scale (batch, cap) float32, slack
    (batch, cap) float32) with room for ``rows`` members per batch element (cap: ``rows``
    rounded up to a multiple of ``HOT_ALIGN``)."""
    cap = max(HOT_ALIGN, -(-rows // HOT_ALIGN) * HOT_ALIGN)
    return (np.zeros((batch, cap // LANES, width, LANES), np.int16), np.zeros((batch, cap), np.float32),
            np.zeros((batch, cap), np.float32))


@nb.njit(**NJIT)
def _quantise(codes, scale, slack, s, row, eps):
    """Store row / ||row||_eps in place ``s`` of the int16 copy (see the module's text)."""
    width = row.shape[0]
    blk, lane = s // LANES, s % LANES
    mm = 0.0
    for j in range(width):
        v = np.float64(row[j])
        mm += v * v
    inv = 1.0 / np.sqrt(mm + eps)
    top = 0.0
    for j in range(width):
        top = max(top, abs(np.float64(row[j]) * inv))
    if top == 0.0:
        for j in range(width):
            codes[blk, j, lane] = 0
        scale[s] = 0.0
        slack[s] = 0.0
        return
    # at least the smallest normal float32: a row of values below 1e-40 gets codes 0 and a slack
    # of its whole norm instead of a zero scale
    sc = max(np.float64(np.float32(top / CODE_MAX)), 2.0 ** -126)
    to_code = 1.0 / sc  # any codes will do: the slack below is measured on the ones chosen
    err = 0.0
    for j in range(width):
        u = np.float64(row[j]) * inv
        c = min(CODE_MAX, max(-CODE_MAX, np.floor(u * to_code + 0.5)))
        codes[blk, j, lane] = np.int16(c)
        d = u - c * sc
        err += d * d
    scale[s] = sc
    # rounded up: float32 rounding to nearest loses at most 2**-24 of it
    slack[s] = np.float32(np.sqrt(err) * (1.0 + 2.0 ** -20) + 1e-30)


@nb.njit(**NJIT)
def hot_add(flags, members, count, slot, codes, scale, slack, memory, new_rows, eps):
    """Add ``new_rows`` (entries < 0 ignored) to a buffer and refresh the int16 copy of each (a
    member already there keeps its place); returns the new count (capacity is the caller's).

    flags (N,) uint8, members (cap,) int64, slot (N,) int64 (a member's place), codes, scale,
    slack: one batch element's :func:`hot_arrays`; memory (N, W).
    """
    for i in range(new_rows.shape[0]):
        r = new_rows[i]
        if r < 0:
            continue
        if flags[r] == 0:
            flags[r] = 1
            members[count] = r
            slot[r] = count
            count += 1
        _quantise(codes, scale, slack, slot[r], memory[r], eps)
    return count


@nb.njit(**NJIT)
def hot_compact(flags, members, count, slot, codes, scale, slack, keep):
    """Keep the members ``i`` with ``keep[i]`` (in their order, with their int16 copies) and
    drop the others from the buffer; returns the new count."""
    c = 0
    width = codes.shape[1]
    for i in range(count):
        r = members[i]
        if keep[i]:
            members[c] = r
            slot[r] = c
            if c != i:
                for j in range(width):
                    codes[c // LANES, j, c % LANES] = codes[i // LANES, j, i % LANES]
                scale[c] = scale[i]
                slack[c] = slack[i]
            c += 1
        else:
            flags[r] = 0
    return c


@nb.njit(**NJIT)
def batch_hot_add(flags, members, counts, slot, codes, scale, slack, memory, new_rows, eps):
    """:func:`hot_add` for every batch element: flags, slot (B, N), members (B, cap), counts
    (B,) updated in place, codes, scale, slack: :func:`hot_arrays`, memory (B, N, W),
    new_rows (B, R) -1 padded."""
    for b in range(flags.shape[0]):
        counts[b] = hot_add(flags[b], members[b], counts[b], slot[b], codes[b], scale[b], slack[b], memory[b],
                            new_rows[b], eps)


@nb.njit(**NJIT)
def hot_candidates(codes, scale, slack, buf_rows, count, queries, k, eps, margin):
    """The buffer's members that may be in a head's exact top k (see the module's text):
    (rows (n,) int64, n).

    One pass, 32 rows at a time: a head's k-th best lower bound so far only rises, so a
    member kept because its upper bound reached it then is a superset of those that reach the
    final one, which a last pass over the (few) kept members applies. A block whose upper
    bounds all fall short of every head's bound so far is skipped whole."""
    n_heads, width = queries.shape
    padded = -(-n_heads // HEADS) * HEADS
    qunit = np.zeros((padded, width), np.float32)  # zero rows pad to whole kernel calls
    for h in range(n_heads):
        inv = 1.0 / norm_eps(queries[h], eps)
        for j in range(width):
            qunit[h, j] = np.float32(np.float64(queries[h, j]) * inv)
    scores = np.empty((padded, GROUP * LANES), np.float32)
    top = np.empty((padded, GROUP), np.float32)  # per block, the largest upper bound (float32)
    # float32 rounding of top: |score + slack| < 2, so within 2**-22 of the float64 sum
    loose = margin + 2.0 ** -22
    best = np.full((n_heads, k), -np.inf)  # per head, the k best lower bounds so far, descending
    for h in range(n_heads):
        if not queries[h].any():  # a zero query ties every row at 0 (the caller answers it): no
            best[h] = np.inf  # member is kept for it
    kept = np.empty(KEPT, np.int64)  # places kept so far, with their upper bounds
    upper = np.empty((KEPT, n_heads))
    n_kept = 0
    for blk0 in range(0, -(-count // LANES), GROUP):
        for h0 in range(0, padded, HEADS):
            score_blocks(codes, blk0, scale, slack, qunit, h0, scores, top)
        for g in range(GROUP):
            first = (blk0 + g) * LANES
            stop = min(count, first + LANES)
            mark = 0  # bit l: lane l reached some head's k-th best lower bound
            for h in range(n_heads):
                if np.float64(top[h, g]) + loose < best[h, k - 1]:
                    continue  # no upper bound of the block reaches this head's bound
                for i in range(first, stop):
                    s = np.float64(scores[h, i - blk0 * LANES])
                    r = np.float64(slack[i]) + margin
                    lo = s - r
                    if lo > best[h, k - 1]:
                        j = k - 1
                        while j > 0 and best[h, j - 1] < lo:
                            best[h, j] = best[h, j - 1]
                            j -= 1
                        best[h, j] = lo
                    if s + r >= best[h, k - 1]:
                        mark |= 1 << (i - first)
            for i in range(first, stop):
                if not (mark >> (i - first)) & 1:
                    continue
                if n_kept == KEPT:  # drop those that no longer reach any head's bound
                    n_kept = _prune(kept, upper, n_kept, best)
                    if n_kept == KEPT:  # thousands of near-ties: every member is a candidate
                        return buf_rows[:count].copy(), count
                kept[n_kept] = i
                for h in range(n_heads):
                    upper[n_kept, h] = np.float64(scores[h, i - blk0 * LANES]) + np.float64(slack[i]) + margin
                n_kept += 1
    n = _prune(kept, upper, n_kept, best)
    rows = np.empty(n, np.int64)
    for j in range(n):
        rows[j] = buf_rows[kept[j]]
    return rows, n


@nb.njit(**NJIT)
def _prune(kept, upper, n_kept, best):
    """Keep (in place, in order) the kept members whose upper bound reaches some head's k-th best
    lower bound ``best[h, -1]``; returns their count."""
    n = 0
    for j in range(n_kept):
        for h in range(upper.shape[1]):
            if upper[j, h] >= best[h, best.shape[1] - 1]:
                kept[n] = kept[j]
                upper[n] = upper[j]
                n += 1
                break
    return n


@nb.njit(**NJIT)
def rescore_candidates(memory, cand, buf_flags, buf_rows, buf_count, flags, hint, queries, k, eps,
                       out_rows, out_sims, codes, scale, slack, margin):
    """Top-k per query over the candidates of one batch element (releases the GIL, so the
    batch elements can run in threads beside their index searches).

    memory (N, W); cand (H, C) int64 index proposals, -1 = none (each is scored for every
    head; rows in the buffer are skipped there: the buffer scores them); buf_flags (N,) uint8
    and buf_rows[:buf_count]: the exact buffer; flags (N,) uint8 and hint (1,): the written
    rows; queries (H, W); codes, scale, slack: the buffer's int16 copy (:func:`hot_add`; used
    above ``HOT_EXACT`` members) and margin: :func:`hot_margin` of W. Past ``KEPT`` near-ties
    in the buffer (rows scoring within their slack of the k-th best) every member is re-scored.
    Writes out_rows (H, k) int64 and out_sims (H, k) float64, ordered by (-sim, row).
    """
    n_heads = queries.shape[0]
    qnorms = np.empty(n_heads)
    for h in range(n_heads):
        qnorms[h] = norm_eps(queries[h], eps)
    n = np.zeros(n_heads, np.int64)
    # the proposals of all heads, once each and not in the buffer, scored for every head; their
    # rows are scattered over the memory: fetched now, they arrive while the buffer is scored
    extra = np.empty(cand.size, np.int64)
    n_extra = 0
    for h in range(n_heads):
        for j in range(cand.shape[1]):
            r = cand[h, j]
            if r >= 0 and buf_flags[r] == 0:
                buf_flags[r] = 2
                extra[n_extra] = r
                n_extra += 1
                prefetch_row(memory, r)
    for i in range(n_extra):
        buf_flags[extra[i]] = 0
    if buf_count > HOT_EXACT:
        hot, n_hot = hot_candidates(codes, scale, slack, buf_rows, buf_count, queries, k, eps, margin)
        for i in range(n_hot):
            prefetch_row(memory, hot[i])
    else:
        hot, n_hot = buf_rows, buf_count
    scan_topk_fast(memory, extra, 0, n_extra, queries, qnorms, eps, out_rows, out_sims, n)
    scan_topk_fast(memory, hot, 0, n_hot, queries, qnorms, eps, out_rows, out_sims, n)
    free = np.empty(k, np.int64)
    n_free = unwritten_rows(flags, hint, k, free)
    for h in range(n_heads):
        for j in range(n_free):
            n[h] = topk_insert(out_rows[h], out_sims[h], n[h], free[j], 0.0)
        if not queries[h].any():
            for j in range(k):
                out_rows[h, j] = j
                out_sims[h, j] = 0.0
