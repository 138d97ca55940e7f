"""Sparse temporal links of the SDNC (DESIGN.md section 5, steps 6-8) and their undo/redo.

Each head h of a batch element has two link tables, N_h ("came before": row i holds the rows
j written just before i) and P_h ("came after": row j holds the rows i written just after j),
and a precedence p_h. The 2H tables of a batch element (:class:`Links`) share one pool of
records, one per row that has entries in any of them, reached through one slot map indexed by
row; table N_h is part 2h of a record and P_h part 2h + 1:

slot (N,) int64           record + 1 of row i; 0 = none (so the zero pages of a lazily mapped
                          map mean "no entries", and rows never written cost nothing)
owner (S,) int64          the row that owns record s (s < used), for reset and rebuild
cols (S, 2H, K_L) int64   each part's entries by (-value, column), unused entries -1 at the end
vals (S, 2H, K_L) float   their values, 0 where unused
used (1,) int64           records in use, taken in order: the pool grows with the rows written
                          (all of a record's parts are emptied when it is taken), never with N

A row costs one record (2H K_L (8 + itemsize) bytes) however many heads write it. A pool needs
room for the rows a step writes for the first time; with S = N (a lazily mapped pool, as
:func:`empty_links` makes by default) it never fills. A :class:`LinkTable` is one part's view
(the arrays and its part number); :class:`LinkState` is one head's (its two parts and its
precedence).

The precedence is two arrays (K_L,) per head: rows by (-value, row), -1 at the end, and values
(0 where unused). Entries that are exactly 0 are never stored (a zero of a dense matrix is no
entry), in the tables and in the precedence. Every value is computed in float64 from the stored values
and rounded to the storage dtype before it is ranked, so the rules below pick what a dense
N x N implementation storing the same dtype picks, bit for bit (tests/naive.py).

A step's write records (:class:`LinkStep`) hold the old link rows of the rows it changed and
the old precedence; :func:`link_undo` restores the state bit for bit (slot map and pool
included) and :func:`link_redo` applies the step again. Records are taken in order and given
back in reverse, so steps are undone newest first and redone oldest first, like the memory
rows' journal, and within a step the heads are undone last first (:func:`batch_link_undo`).
The per-step cost of a head is O(R^2 + R K_L^2) for R read rows (R + 1 <= 21 and K_L = 8 by
default): nothing grows with N.
"""
from typing import NamedTuple

import numba as nb
import numpy as np

from ..config import NJIT
from .similarity import topk_insert


BEFORE, AFTER = 0, 1  #: part 2h + BEFORE of a record is N_h, part 2h + AFTER is P_h


class Links(NamedTuple):
    """The links of one batch element, all heads (leading batch dimensions allowed); see the
    module docstring for the layout."""

    slot: np.ndarray  #: (N,) int64, record + 1 per row, 0 = no entries
    owner: np.ndarray  #: (S,) int64, row of each record in use
    cols: np.ndarray  #: (S, 2H, K_L) int64, entry columns by (-value, column), -1 = unused
    vals: np.ndarray  #: (S, 2H, K_L) float32 or float64, entry values, 0 = unused
    used: np.ndarray  #: (1,) int64, records in use
    prec_rows: np.ndarray  #: (H, K_L) int64, rows of p_h by (-value, row), -1 = unused
    prec_vals: np.ndarray  #: (H, K_L) float, p_h at those rows, 0 = unused


class LinkTable(NamedTuple):
    """One link table (N_h or P_h): the shared arrays of :class:`Links` and a part number."""

    slot: np.ndarray  #: (N,) int64
    owner: np.ndarray  #: (S,) int64
    cols: np.ndarray  #: (S, 2H, K_L) int64
    vals: np.ndarray  #: (S, 2H, K_L) float
    used: np.ndarray  #: (1,) int64
    part: int  #: 2h + BEFORE or 2h + AFTER


class LinkState(NamedTuple):
    """One head's view of :class:`Links` (DESIGN.md section 5)."""

    before: LinkTable  #: N_h, row i -> entries (j, N_h(i, j)): j was written just before i
    after: LinkTable  #: P_h, row j -> entries (i, P_h(j, i)): i was written just after j
    prec_rows: np.ndarray  #: (K_L,) int64, rows of p_h by (-value, row), -1 = unused
    prec_vals: np.ndarray  #: (K_L,) float, p_h at those rows, 0 = unused


class LinkRecords(NamedTuple):
    """Old contents of the link rows one step changed in one table (capacity M rows)."""

    rows: np.ndarray  #: (M,) int64, the rows, in the order the step changed them
    fresh: np.ndarray  #: (M,) bool, True where the step took the row's record
    cols: np.ndarray  #: (M, K_L) int64, the rows' old columns (-1 = unused)
    vals: np.ndarray  #: (M, K_L) float, the rows' old values


class LinkStep(NamedTuple):
    """What undoes (and then redoes) one step's :func:`link_write` of one head."""

    before: LinkRecords  #: N_h rows changed: the step's written rows, M >= R + 1
    after: LinkRecords  #: P_h rows changed: the old precedence rows, M >= K_L
    prec_rows: np.ndarray  #: (K_L,) int64, the old precedence rows
    prec_vals: np.ndarray  #: (K_L,) float, the old precedence values
    counts: np.ndarray  #: (2,) int64, rows recorded in ``before`` and in ``after``


# --------------------------------------------------------------------------- small helpers


@nb.njit(**NJIT)
def _rounded(scratch, value):
    """``value`` rounded to the dtype of ``scratch`` (1,), as a float64."""
    scratch[0] = value
    return np.float64(scratch[0])


@nb.njit(**NJIT)
def _full_below(rows, vals, n, value):
    """True if the sorted list is full and ``value`` is below its last entry: then no later
    candidate of a non-increasing sequence can enter either."""
    return n == rows.shape[0] and value < vals[n - 1]


@nb.njit(**NJIT)
def _by_weight(rows, weights, n):
    """Positions of ``rows[:n]`` ordered by (-weight, row) (insertion sort, n <= R + 1)."""
    order = np.empty(n, np.int64)
    for e in range(n):
        pos = e
        while pos > 0 and (weights[order[pos - 1]] < weights[e]
                           or (weights[order[pos - 1]] == weights[e] and rows[order[pos - 1]] > rows[e])):
            order[pos] = order[pos - 1]
            pos -= 1
        order[pos] = e
    return order


@nb.njit(**NJIT)
def _search(rows, n, row):
    """Position of ``row`` in the ascending ``rows[:n]``, or -1 (binary search)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if rows[mid] < row:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < n and rows[lo] == row else -1


@nb.njit(**NJIT)
def _find(rows, n, row):
    """Position of ``row`` in ``rows[:n]``, or -1."""
    for i in range(n):
        if rows[i] == row:
            return i
    return -1


@nb.njit(**NJIT)
def entry_count(rows):
    """Entries in use in a row sorted with -1 at the end (a link row or the precedence)."""
    n = 0
    while n < rows.shape[0] and rows[n] >= 0:
        n += 1
    return n


@nb.njit(**NJIT)
def _store(cols, vals, cand_rows, cand_vals, m):
    """Write the sorted candidates ``[:m]`` into a row of capacity K_L, -1/0 after them."""
    for c in range(m):
        cols[c] = cand_rows[c]
        vals[c] = cand_vals[c]
    for c in range(m, cols.shape[0]):
        cols[c] = -1
        vals[c] = 0


@nb.njit(**NJIT)
def _new_record(table, row):
    """Take the next free record for ``row``, all its parts emptied; returns it."""
    s = table.used[0]
    table.used[0] = s + 1
    table.slot[row] = s + 1
    table.owner[s] = row
    table.cols[s] = -1
    table.vals[s] = 0
    return s


@nb.njit(**NJIT)
def _take_slot(table, row):
    """The record of ``row``, taking the next free one if it has none."""
    s = table.slot[row] - 1
    return _new_record(table, row) if s < 0 else s


@nb.njit(**NJIT)
def head_state(links, h):
    """Head ``h``'s :class:`LinkState` of one batch element's :class:`Links` (views)."""
    return LinkState(LinkTable(links.slot, links.owner, links.cols, links.vals, links.used, 2 * h + BEFORE),
                     LinkTable(links.slot, links.owner, links.cols, links.vals, links.used, 2 * h + AFTER),
                     links.prec_rows[h], links.prec_vals[h])


@nb.njit(**NJIT)
def links_at(links, b):
    """Batch element ``b``'s :class:`Links` from links with a leading batch dimension (views)."""
    return Links(links.slot[b], links.owner[b], links.cols[b], links.vals[b], links.used[b],
                 links.prec_rows[b], links.prec_vals[b])


@nb.njit(**NJIT)
def link_row(table, row, out_cols, out_vals):
    """Row ``row``'s entries into ``out_cols`` (K_L,) int64 and ``out_vals`` (K_L,), sorted by
    (-value, column), -1/0 after them; returns their count (0 for a row without entries)."""
    s = table.slot[row] - 1
    if s < 0:
        out_cols[:] = -1
        out_vals[:] = 0
        return 0
    out_cols[:] = table.cols[s, table.part]
    out_vals[:] = table.vals[s, table.part]
    return entry_count(table.cols[s, table.part])


# --------------------------------------------------------------------------- step 6: links


@nb.njit(**NJIT)
def merge_weights(rows, weights, out_rows, out_weights):
    """w^W_h as a sparse vector: the distinct rows of a write with their summed weights.

    Parameters
    ----------
    rows : ndarray (M,) int64
        Rows written by one head at this step (its previous read rows and its LRA row), in any
        order, with repeats; rows < 0 are skipped.
    weights : ndarray (M,) float
        Their write weights w^W_h (>= 0).
    out_rows : ndarray (M,) int64
        Out: the distinct rows with w^W_h(i) > 0, ascending.
    out_weights : ndarray (M,) float64
        Out: w^W_h(i), each summed in the input order (as ``w[i] += weight`` over the input).

    Returns
    -------
    int
        n, the number of rows in ``out_rows[:n]``. Rows whose total is 0 are dropped: a zero
        write weight changes no link and no precedence.
    """
    n = 0
    for e in range(rows.shape[0]):  # insertion by row (M <= R + 1): repeats add in input order
        r = rows[e]
        if r < 0:
            continue
        pos = n
        while pos > 0 and out_rows[pos - 1] > r:
            pos -= 1
        if pos > 0 and out_rows[pos - 1] == r:
            out_weights[pos - 1] += np.float64(weights[e])
            continue
        for c in range(n, pos, -1):
            out_rows[c] = out_rows[c - 1]
            out_weights[c] = out_weights[c - 1]
        out_rows[pos] = r
        out_weights[pos] = np.float64(weights[e])
        n += 1
    m = 0
    for i in range(n):
        if out_weights[i] > 0:
            out_rows[m] = out_rows[i]
            out_weights[m] = out_weights[i]
            m += 1
    return m


@nb.njit(**NJIT)
def link_update_before(table, rows, weights, n, prec_rows, prec_vals):
    """Step 6, N_h: N_h(i, j) <- (1 - w^W_h(i)) N_h(i, j) + w^W_h(i) p_h(j) for j != i, for every
    written row i, then keep the K_L largest non-zero entries of row i (ties to the lower j).

    Parameters
    ----------
    table : LinkTable
        N_h, updated in place; its pool needs room for the rows without a record (<= n).
    rows : ndarray (>= n,) int64
        The written rows i (distinct, from :func:`merge_weights`).
    weights : ndarray (>= n,) float64
        w^W_h(i) > 0.
    n : int
        Number of written rows.
    prec_rows, prec_vals : ndarray (K_L,)
        p_h of the previous step (not changed).

    Notes
    -----
    Row i's candidates are its old entries and the precedence's rows: at most 2 K_L, each
    ``(1 - w) * old + w * p`` with a missing term 0 (the dense formula, bit for bit).
    """
    k = table.cols.shape[2]
    cand_rows = np.empty(k, np.int64)
    cand_vals = np.empty(k, np.float64)
    scratch = np.empty(1, table.vals.dtype)
    n_prec = entry_count(prec_rows)
    for e in range(n):
        i = rows[e]
        w = weights[e]
        s = _take_slot(table, i)
        n_old = entry_count(table.cols[s, table.part])
        m = 0
        for c in range(n_old):
            j = table.cols[s, table.part, c]
            at = _find(prec_rows, n_prec, j)
            pj = np.float64(prec_vals[at]) if at >= 0 else 0.0
            v = _rounded(scratch, (1.0 - w) * np.float64(table.vals[s, table.part, c]) + w * pj)
            if v != 0:
                m = topk_insert(cand_rows, cand_vals, m, j, v)
        # new entries w p(j) come in the precedence's order: non-increasing, so stop at the
        # first one that cannot enter
        for c in range(n_prec):
            j = prec_rows[c]
            if j == i or _find(table.cols[s, table.part], n_old, j) >= 0:
                continue
            v = _rounded(scratch, w * np.float64(prec_vals[c]))
            if v == 0 or _full_below(cand_rows, cand_vals, m, v):
                break
            m = topk_insert(cand_rows, cand_vals, m, j, v)
        _store(table.cols[s, table.part], table.vals[s, table.part], cand_rows, cand_vals, m)


@nb.njit(**NJIT)
def link_update_after(table, rows, weights, n, prec_rows, prec_vals):
    """Step 6, P_h: for every row j with p_h(j) > 0, P_h(j, i) <- (1 - w^W_h(i)) P_h(j, i) + w^W_h(i) p_h(j)
    for every written row i != j, then keep the K_L largest non-zero entries of row j (ties to
    the lower i). Entries of row j at rows not written are not decayed; other rows of P_h do
    not change (the paper's O(K_L^2) rule).

    Parameters
    ----------
    table : LinkTable
        P_h, updated in place (its rows j were written before, so they have records).
    rows, weights, n :
        The written rows and w^W_h, as for :func:`link_update_before`.
    prec_rows, prec_vals : ndarray (K_L,)
        p_h of the previous step (not changed): the rows j updated, in their order.
    """
    if n == 0:  # nothing written: no entry changes (and no slot is taken)
        return
    k = table.cols.shape[2]
    cand_rows = np.empty(k, np.int64)
    cand_vals = np.empty(k, np.float64)
    scratch = np.empty(1, table.vals.dtype)
    order = _by_weight(rows, weights, n)
    for c in range(entry_count(prec_rows)):
        j = prec_rows[c]
        pj = np.float64(prec_vals[c])
        s = _take_slot(table, j)  # taken (or found) for every row link_write journaled
        if not pj > 0:  # only rows j with p_h(j) > 0 change (p can go negative when sum w^W > 1)
            continue
        n_old = entry_count(table.cols[s, table.part])
        m = 0
        for a in range(n_old):
            i = table.cols[s, table.part, a]
            old = np.float64(table.vals[s, table.part, a])
            at = _search(rows, n, i)
            v = old if at < 0 else _rounded(scratch, (1.0 - weights[at]) * old + weights[at] * pj)
            if v != 0:
                m = topk_insert(cand_rows, cand_vals, m, i, v)
        # new entries w(i) p(j) by descending w(i): non-increasing, so stop early
        for o in range(n):
            e = order[o]
            i = rows[e]
            if i == j or _find(table.cols[s, table.part], n_old, i) >= 0:
                continue
            v = _rounded(scratch, weights[e] * pj)
            if v == 0 or _full_below(cand_rows, cand_vals, m, v):
                break
            m = topk_insert(cand_rows, cand_vals, m, i, v)
        _store(table.cols[s, table.part], table.vals[s, table.part], cand_rows, cand_vals, m)


# --------------------------------------------------------------------------- step 7: precedence


@nb.njit(**NJIT)
def precedence_update(prec_rows, prec_vals, rows, weights, n):
    """Step 7: p_h <- (1 - sum_i w^W_h(i)) p_h + w^W_h, then keep the K_L largest non-zero
    entries (ties to the lower row).

    Parameters
    ----------
    prec_rows, prec_vals : ndarray (K_L,)
        p_h, updated in place (rows by (-value, row), -1/0 unused).
    rows, weights, n :
        The written rows (ascending) and w^W_h from :func:`merge_weights`; the sum runs over
        them in that order.
    """
    k = prec_rows.shape[0]
    cand_rows = np.empty(k, np.int64)
    cand_vals = np.empty(k, np.float64)
    scratch = np.empty(1, prec_vals.dtype)
    total = 0.0
    for e in range(n):
        total += weights[e]
    decay = 1.0 - total
    n_prec = entry_count(prec_rows)
    m = 0
    for c in range(n_prec):
        j = prec_rows[c]
        at = _search(rows, n, j)
        w = weights[at] if at >= 0 else 0.0
        v = _rounded(scratch, decay * np.float64(prec_vals[c]) + w)
        if v != 0:
            m = topk_insert(cand_rows, cand_vals, m, j, v)
    order = _by_weight(rows, weights, n)
    for o in range(n):  # new entries by descending w: stop early
        e = order[o]
        i = rows[e]
        if _find(prec_rows, n_prec, i) >= 0:
            continue
        v = _rounded(scratch, weights[e])
        if v == 0 or _full_below(cand_rows, cand_vals, m, v):
            break
        m = topk_insert(cand_rows, cand_vals, m, i, v)
    _store(prec_rows, prec_vals, cand_rows, cand_vals, m)


# --------------------------------------------------------------------------- step 8: read


@nb.njit(**NJIT)
def directional_weights(table, prev_rows, prev_weights, out_rows, out_vals):
    """Step 8, f_h or b_h: x(i) = sum_j w^R_{h,t-1}(j) L(j, i) over the link entries of the
    previous read rows, truncated to its K_L largest entries (ties to the lower row).

    With ``table`` = P_h this is the forward weighting f_h (rows written after what was read),
    with ``table`` = N_h the backward weighting b_h (rows written before it).

    Parameters
    ----------
    table : LinkTable
        P_h or N_h (not changed).
    prev_rows : ndarray (R,) int64
        Previous read rows (distinct; -1 = unused, skipped).
    prev_weights : ndarray (R,) float
        w^R_{h,t-1} at those rows.
    out_rows : ndarray (K_L,) int64
        Out: the kept rows by (-value, row), -1 after them.
    out_vals : ndarray (K_L,) float
        Out: x at those rows, rounded to this array's dtype; 0 after them.

    Returns
    -------
    int
        The number of kept rows. Candidates are the rows reached through a stored entry of a
        listed previous row, with their value even when it is 0 (a zero previous weight), so
        that gradients reach every listed weight. Each x(i) is summed over j in the order of
        ``prev_rows`` (the bits of a dense ``x += w(j) * L[j]`` loop).
    """
    k = table.cols.shape[2]
    n_prev = prev_rows.shape[0]
    size = 16
    while size < 2 * n_prev * k:
        size *= 2
    keys = np.full(size, -1, np.int64)  # open addressing: row -> its slot in ``reached``
    where = np.empty(size, np.int64)
    reached = np.empty(n_prev * k, np.int64)
    totals = np.empty(n_prev * k, np.float64)
    m = 0
    for a in range(n_prev):
        j = prev_rows[a]
        if j < 0:
            continue
        s = table.slot[j] - 1
        if s < 0:
            continue
        w = np.float64(prev_weights[a])
        for c in range(k):
            i = table.cols[s, table.part, c]
            if i < 0:
                break
            h = i * 40503  # rows < 2**31: no overflow
            h = (h ^ (h >> 15)) & (size - 1)
            while keys[h] != -1 and keys[h] != i:
                h = (h + 1) & (size - 1)
            term = w * np.float64(table.vals[s, table.part, c])
            if keys[h] == -1:
                keys[h] = i
                where[h] = m
                reached[m] = i
                totals[m] = 0.0 + term
                m += 1
            else:
                totals[where[h]] += term  # in prev_rows order, as a dense loop adds
    cand_vals = np.empty(out_rows.shape[0], np.float64)
    scratch = np.empty(1, out_vals.dtype)
    n = 0
    for a in range(m):
        n = topk_insert(out_rows, cand_vals, n, reached[a], _rounded(scratch, totals[a]))
    for c in range(n):
        out_vals[c] = cand_vals[c]
    for c in range(n, out_rows.shape[0]):
        out_rows[c] = -1
        out_vals[c] = 0
    return n


@nb.njit(**NJIT)
def mix_modes(content_rows, content_weights, back_rows, back_vals, fwd_rows, fwd_vals, modes,
              out_rows, out_weights):
    """Step 8, the read weights: w^R_h = pi_b b_h + pi_c c_h + pi_f f_h, same-row entries summed.

    Parameters
    ----------
    content_rows, content_weights : ndarray (K,)
        c_h: SAM's content rows and softmax weights (-1 = unused).
    back_rows, back_vals : ndarray (K_L,)
        b_h from :func:`directional_weights` with N_h (-1 = unused).
    fwd_rows, fwd_vals : ndarray (K_L,)
        f_h from :func:`directional_weights` with P_h (-1 = unused).
    modes : ndarray (3,)
        pi_h = (pi_b, pi_c, pi_f), the read modes.
    out_rows : ndarray (>= K + 2 K_L,) int64
        Out: the support: the content rows in their order, then the backward rows not among
        them, then the forward rows not among those; -1 after them.
    out_weights : ndarray (same,) float
        Out: ``pi_b * b(i) + pi_c * c(i) + pi_f * f(i)`` in float64 with 0 for a missing term,
        rounded to this array's dtype; 0 after the support.

    Returns
    -------
    int
        The support's size, at most K + 2 K_L.
    """
    pb = np.float64(modes[0])
    pc = np.float64(modes[1])
    pf = np.float64(modes[2])
    n_back = entry_count(back_rows)
    n_fwd = entry_count(fwd_rows)
    n = 0
    for a in range(content_rows.shape[0]):
        i = content_rows[a]
        if i >= 0:
            out_rows[n] = i
            n += 1
    n_content = n
    for a in range(n_back):
        if _find(out_rows, n_content, back_rows[a]) < 0:
            out_rows[n] = back_rows[a]
            n += 1
    for a in range(n_fwd):
        if _find(out_rows, n, fwd_rows[a]) < 0:
            out_rows[n] = fwd_rows[a]
            n += 1
    for a in range(n):
        i = out_rows[a]
        at = _find(content_rows, content_rows.shape[0], i)
        c = np.float64(content_weights[at]) if at >= 0 else 0.0
        at = _find(back_rows, n_back, i)
        b = np.float64(back_vals[at]) if at >= 0 else 0.0
        at = _find(fwd_rows, n_fwd, i)
        f = np.float64(fwd_vals[at]) if at >= 0 else 0.0
        out_weights[a] = pb * b + pc * c + pf * f
    for a in range(n, out_rows.shape[0]):
        out_rows[a] = -1
        out_weights[a] = 0
    return n


# --------------------------------------------------------------------------- step 8 backward


@nb.njit(**NJIT)
def mix_modes_backward(content_rows, content_weights, back_rows, back_vals, fwd_rows, fwd_vals,
                       modes, out_rows, grad_weights, grad_modes, grad_content, grad_back, grad_fwd):
    """Gradients of :func:`mix_modes` given dL/dw^R_h at its support ``out_rows``.

    grad_weights (R,) at ``out_rows`` (R,) (rows -1 ignored). Adds into grad_modes (3,)
    (dL/dpi = sum_i g(i) (b(i), c(i), f(i))) and sets grad_content (K,), grad_back (K_L,),
    grad_fwd (K_L,) (pi_c g, pi_b g, pi_f g at their rows; 0 at unused entries).
    """
    grad_content[:] = 0
    grad_back[:] = 0
    grad_fwd[:] = 0
    n_back = entry_count(back_rows)
    n_fwd = entry_count(fwd_rows)
    for a in range(out_rows.shape[0]):
        i = out_rows[a]
        if i < 0:
            continue
        g = np.float64(grad_weights[a])
        at = _find(content_rows, content_rows.shape[0], i)
        if at >= 0:
            grad_content[at] += modes[1] * g
            grad_modes[1] += g * np.float64(content_weights[at])
        at = _find(back_rows, n_back, i)
        if at >= 0:
            grad_back[at] += modes[0] * g
            grad_modes[0] += g * np.float64(back_vals[at])
        at = _find(fwd_rows, n_fwd, i)
        if at >= 0:
            grad_fwd[at] += modes[2] * g
            grad_modes[2] += g * np.float64(fwd_vals[at])


@nb.njit(**NJIT)
def directional_weights_backward(table, prev_rows, kept_rows, grad_kept, grad_prev):
    """Gradient of :func:`directional_weights` into the previous read weights:
    dL/dw^R_{t-1}(j) += sum over the kept rows i of dL/dx(i) L(j, i).

    table: the same table as the forward (the links at this step); prev_rows (R,);
    kept_rows (K_L,) and grad_kept (K_L,) from the forward's output (-1 = unused);
    grad_prev (R,) accumulated in place. Truncated rows carry no gradient (piecewise constant).
    """
    k = table.cols.shape[2]
    n_kept = entry_count(kept_rows)
    for a in range(prev_rows.shape[0]):
        j = prev_rows[a]
        if j < 0:
            continue
        s = table.slot[j] - 1
        if s < 0:
            continue
        acc = 0.0
        for c in range(k):
            i = table.cols[s, table.part, c]
            if i < 0:
                break
            at = _find(kept_rows, n_kept, i)
            if at >= 0:
                acc += np.float64(grad_kept[at]) * np.float64(table.vals[s, table.part, c])
        grad_prev[a] += acc


# --------------------------------------------------------------------------- journal


@nb.njit(**NJIT)
def link_rows_save(table, rows, n, rec):
    """Record the old contents of ``rows[:n]`` (distinct) of ``table`` into ``rec`` (a
    :class:`LinkRecords`) before a step changes them; a row without a record is recorded as
    ``fresh`` with empty contents."""
    for e in range(n):
        r = rows[e]
        s = table.slot[r] - 1
        rec.rows[e] = r
        rec.fresh[e] = s < 0
        if s < 0:
            rec.cols[e, :] = -1
            rec.vals[e, :] = 0
        else:
            rec.cols[e, :] = table.cols[s, table.part]
            rec.vals[e, :] = table.vals[s, table.part]


@nb.njit(**NJIT)
def _swap_row(table, s, rec, e):
    for c in range(table.cols.shape[2]):
        col = table.cols[s, table.part, c]
        table.cols[s, table.part, c] = rec.cols[e, c]
        rec.cols[e, c] = col
        val = table.vals[s, table.part, c]
        table.vals[s, table.part, c] = rec.vals[e, c]
        rec.vals[e, c] = val


@nb.njit(**NJIT)
def link_rows_undo(table, rec, n):
    """Undo a step's changes to ``table``: swap the recorded rows back, last first, and give
    back the slots the step took (``rec`` then holds the step's new contents, for redo)."""
    for e in range(n - 1, -1, -1):
        r = rec.rows[e]
        s = table.slot[r] - 1
        _swap_row(table, s, rec, e)
        if rec.fresh[e]:  # the last record taken (its other parts are empty again): give it back
            table.slot[r] = 0
            table.used[0] -= 1


@nb.njit(**NJIT)
def link_rows_redo(table, rec, n):
    """Redo a step undone by :func:`link_rows_undo`: take the same slots again, first first,
    and swap the step's new contents in (``rec`` then holds the old contents again)."""
    for e in range(n):
        r = rec.rows[e]
        s = _new_record(table, r) if rec.fresh[e] else table.slot[r] - 1
        _swap_row(table, s, rec, e)


@nb.njit(**NJIT)
def precedence_swap(prec_rows, prec_vals, rec_rows, rec_vals):
    """Swap p_h with a recorded copy: undoes step 7 if the record holds the old precedence and
    redoes it if it holds the new one."""
    for c in range(prec_rows.shape[0]):
        r = prec_rows[c]
        prec_rows[c] = rec_rows[c]
        rec_rows[c] = r
        v = prec_vals[c]
        prec_vals[c] = rec_vals[c]
        rec_vals[c] = v


@nb.njit(**NJIT)
def links_reset(links):
    """Empty one batch element's :class:`Links` in O(rows with entries): clear their slot map
    entries, free the pool, empty every precedence."""
    for s in range(links.used[0]):
        links.slot[links.owner[s]] = 0
    links.used[0] = 0
    links.prec_rows[:] = -1
    links.prec_vals[:] = 0


@nb.njit(**NJIT)
def links_rebuild(links):
    """Rebuild the slot map from ``owner[:used]`` (after loading a saved pool into an empty
    map)."""
    for s in range(links.used[0]):
        links.slot[links.owner[s]] = s + 1


# --------------------------------------------------------------------------- one head, one step


@nb.njit(**NJIT)
def link_write(state, write_rows, write_weights, rec):
    """Steps 6-7 for one head, journaled: merge w^W_h, update N_h and P_h with the old p_h,
    then update p_h; the old contents go into ``rec`` (a :class:`LinkStep`).

    write_rows (M,) int64 and write_weights (M,): the head's write (repeats summed, -1
    skipped), M <= rec.before's capacity. ``state`` (a :class:`LinkState`) is updated in place
    and its pool needs room for M new records.
    """
    rows = np.empty(write_rows.shape[0], np.int64)
    weights = np.empty(write_rows.shape[0], np.float64)
    n = merge_weights(write_rows, write_weights, rows, weights)
    m = entry_count(state.prec_rows) if n > 0 else 0  # no write: P_h does not change
    link_rows_save(state.before, rows, n, rec.before)
    link_update_before(state.before, rows, weights, n, state.prec_rows, state.prec_vals)
    link_rows_save(state.after, state.prec_rows, m, rec.after)
    link_update_after(state.after, rows, weights, n, state.prec_rows, state.prec_vals)
    rec.prec_rows[:] = state.prec_rows
    rec.prec_vals[:] = state.prec_vals
    precedence_update(state.prec_rows, state.prec_vals, rows, weights, n)
    rec.counts[0] = n
    rec.counts[1] = m


@nb.njit(**NJIT)
def link_undo(state, rec):
    """Undo one :func:`link_write` bit for bit: the latest not yet undone of its batch element
    (heads share records, so a step's heads are undone last first)."""
    precedence_swap(state.prec_rows, state.prec_vals, rec.prec_rows, rec.prec_vals)
    link_rows_undo(state.after, rec.after, rec.counts[1])
    link_rows_undo(state.before, rec.before, rec.counts[0])


@nb.njit(**NJIT)
def link_redo(state, rec):
    """Redo one :func:`link_write` undone by :func:`link_undo` (the oldest undone first)."""
    link_rows_redo(state.before, rec.before, rec.counts[0])
    link_rows_redo(state.after, rec.after, rec.counts[1])
    precedence_swap(state.prec_rows, state.prec_vals, rec.prec_rows, rec.prec_vals)


@nb.njit(**NJIT)
def link_read(state, prev_rows, prev_weights, content_rows, content_weights, modes,
              back_rows, back_vals, fwd_rows, fwd_vals, out_rows, out_weights):
    """Step 8 for one head: b_h over N_h, f_h over P_h (each into its (K_L,) outputs
    ``back_*``/``fwd_*``, kept for the backward pass), then the mode mix into ``out_rows`` and
    ``out_weights`` (R >= K + 2 K_L,). Returns the support's size."""
    directional_weights(state.before, prev_rows, prev_weights, back_rows, back_vals)
    directional_weights(state.after, prev_rows, prev_weights, fwd_rows, fwd_vals)
    return mix_modes(content_rows, content_weights, back_rows, back_vals, fwd_rows, fwd_vals,
                     modes, out_rows, out_weights)


# --------------------------------------------------------------------------- batch (B, H)


@nb.njit(**NJIT)
def state_at(links, b, h):
    """Head ``h`` of batch element ``b`` of links with a leading batch dimension (views)."""
    return head_state(links_at(links, b), h)


@nb.njit(**NJIT)
def step_at(rec, b, h):
    """The :class:`LinkStep` record of ``b``, ``h`` from records with leading dimensions (B, H)."""
    before = LinkRecords(rec.before.rows[b, h], rec.before.fresh[b, h], rec.before.cols[b, h],
                         rec.before.vals[b, h])
    after = LinkRecords(rec.after.rows[b, h], rec.after.fresh[b, h], rec.after.cols[b, h],
                        rec.after.vals[b, h])
    return LinkStep(before, after, rec.prec_rows[b, h], rec.prec_vals[b, h], rec.counts[b, h])


@nb.njit(**NJIT)
def batch_link_write(links, write_rows, write_weights, rec):
    """:func:`link_write` for every (b, h), heads in order: write_rows and write_weights
    (B, H, M); links with a leading dimension B, rec with leading dimensions (B, H)."""
    for b in range(write_rows.shape[0]):
        for h in range(write_rows.shape[1]):
            link_write(state_at(links, b, h), write_rows[b, h], write_weights[b, h], step_at(rec, b, h))


@nb.njit(**NJIT)
def batch_link_undo(links, rec):
    """:func:`link_undo` for every (b, h), heads last first (they share the records)."""
    for b in range(rec.counts.shape[0]):
        for h in range(rec.counts.shape[1] - 1, -1, -1):
            link_undo(state_at(links, b, h), step_at(rec, b, h))


@nb.njit(**NJIT)
def batch_link_redo(links, rec):
    """:func:`link_redo` for every (b, h), heads in order."""
    for b in range(rec.counts.shape[0]):
        for h in range(rec.counts.shape[1]):
            link_redo(state_at(links, b, h), step_at(rec, b, h))


@nb.njit(**NJIT)
def batch_link_read(links, prev_rows, prev_weights, content_rows, content_weights, modes,
                    back_rows, back_vals, fwd_rows, fwd_vals, out_rows, out_weights, out_count):
    """:func:`link_read` for every (b, h) of ``links`` (leading dimension B): prev_* (B, H, R),
    content_* (B, H, K), modes (B, H, 3), back_*/fwd_* (B, H, K_L), out_rows/out_weights
    (B, H, R), out_count (B, H)."""
    for b in range(prev_rows.shape[0]):
        for h in range(prev_rows.shape[1]):
            out_count[b, h] = link_read(state_at(links, b, h), prev_rows[b, h], prev_weights[b, h],
                                        content_rows[b, h], content_weights[b, h], modes[b, h],
                                        back_rows[b, h], back_vals[b, h], fwd_rows[b, h], fwd_vals[b, h],
                                        out_rows[b, h], out_weights[b, h])


# --------------------------------------------------------------------------- allocation (Python)


def empty_links(num_slots, link_k, num_heads=1, dtype=np.float64, batch_shape=(), capacity=None):
    """Fresh :class:`Links` for ``num_heads`` heads, arrays with leading dimensions
    ``batch_shape`` (e.g. (B,); :func:`links_at`, :func:`head_state`, :func:`state_at` give
    views). Not jitted.

    The slot map is lazily mapped zeros (rows never written cost nothing). ``capacity``:
    records per pool; None = ``num_slots`` in a lazily mapped pool, which never fills and whose
    resident size grows with the rows written."""
    from .._storage import lazy_zeros

    shape = tuple(batch_shape)
    cap = num_slots if capacity is None else capacity
    alloc = lazy_zeros if capacity is None else np.zeros
    parts = shape + (cap, 2 * num_heads, link_k)
    heads = shape + (num_heads, link_k)
    return Links(lazy_zeros(shape + (num_slots,), np.int64), alloc(shape + (cap,), np.int64),
                 alloc(parts, np.int64), alloc(parts, dtype), np.zeros(shape + (1,), np.int64),
                 np.full(heads, -1, np.int64), np.zeros(heads, dtype))


def empty_step(write_capacity, link_k, dtype=np.float64, batch_shape=()):
    """Arrays for one :class:`LinkStep` record (leading dimensions ``batch_shape``):
    ``write_capacity`` >= the rows a head writes per step (R + 1). Not jitted."""
    shape = tuple(batch_shape)

    def records(m):
        return LinkRecords(np.empty(shape + (m,), np.int64), np.empty(shape + (m,), np.bool_),
                           np.empty(shape + (m, link_k), np.int64), np.empty(shape + (m, link_k), dtype))

    return LinkStep(records(write_capacity), records(link_k), np.empty(shape + (link_k,), np.int64),
                    np.empty(shape + (link_k,), dtype), np.zeros(shape + (2,), np.int64))
