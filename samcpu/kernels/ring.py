"""The least-recently-accessed ring (DESIGN.md section 1, steps 1 and 5).

Per batch element the rows accessed so far form a doubly linked list ordered by
(u(i), i), oldest first; rows never accessed are not in it and cost nothing. Links are
stored as row + 1 so that the zero pages of a fresh array mean "no link":

usage (N,) int64   u(i): 0 = never accessed, t >= 1 = last accessed at step t
prev, nxt (N,)     list links, row + 1 or 0
ends (4,) int64    [head + 1, tail + 1, fresh, count]: ``fresh`` a row below which every
                   row has been accessed (a hint for finding never-accessed rows), ``count``
                   the number of rows in the list

Touching a row at step t unlinks it and appends it at the tail; touching the rows of one
step in ascending order keeps the list sorted by (u, i). Each touch returns an undo record
(row, old u, old prev); undoing the records in reverse order restores the list exactly
(dancing links): when a record is undone the list is as the touch left it, so the row's old
neighbours are adjacent and its old next is the old prev's current next. Records are int32 in
the journal (3 x 4 bytes a touch), so rows and steps stay below 2**31 (SparseMemory checks).
"""
import numba as nb

from ..config import NJIT

HEAD, TAIL, FRESH, COUNT = 0, 1, 2, 3


@nb.njit(**NJIT)
def lra_rows(usage, nxt, ends, count, out):
    """I^U: the ``count`` rows smallest by (u(i), i) into ``out`` (count,) int64.

    Never-accessed rows come first in row order, then the list from its head. O(count)
    plus the accessed rows skipped between never-accessed ones. Requires count <= N.
    """
    n_rows = usage.shape[0]
    c = 0
    i = ends[FRESH]
    while c < count and i < n_rows:
        if usage[i] == 0:
            if c == 0:
                ends[FRESH] = i
            out[c] = i
            c += 1
        i += 1
    if c == 0:
        ends[FRESH] = n_rows
    node = ends[HEAD]
    while c < count:
        out[c] = node - 1
        node = nxt[node - 1]
        c += 1


@nb.njit(**NJIT)
def ring_touch(usage, prev, nxt, ends, row, t, undo):
    """u(row) <- t: move ``row`` to the tail; record (row, old u, old prev) into ``undo`` (3,)."""
    undo[0] = row
    undo[1] = usage[row]
    undo[2] = prev[row]
    if usage[row] != 0:
        p = prev[row]
        n = nxt[row]
        if p:
            nxt[p - 1] = n
        else:
            ends[HEAD] = n
        if n:
            prev[n - 1] = p
        else:
            ends[TAIL] = p
    else:
        ends[COUNT] += 1
    tail = ends[TAIL]
    prev[row] = tail
    nxt[row] = 0
    if tail:
        nxt[tail - 1] = row + 1
    else:
        ends[HEAD] = row + 1
    ends[TAIL] = row + 1
    usage[row] = t


@nb.njit(**NJIT)
def ring_untouch(usage, prev, nxt, ends, undo):
    """Undo one :func:`ring_touch` given its record; the row must be at the tail."""
    row = undo[0]
    tail = prev[row]
    ends[TAIL] = tail
    if tail:
        nxt[tail - 1] = 0
    else:
        ends[HEAD] = 0
    if undo[1] != 0:
        p = undo[2]
        n = nxt[p - 1] if p else ends[HEAD]
        prev[row] = p
        nxt[row] = n
        if p:
            nxt[p - 1] = row + 1
        else:
            ends[HEAD] = row + 1
        if n:
            prev[n - 1] = row + 1
        else:
            ends[TAIL] = row + 1
    else:
        prev[row] = 0
        nxt[row] = 0
        ends[COUNT] -= 1
        if row < ends[FRESH]:
            ends[FRESH] = row
    usage[row] = undo[1]


@nb.njit(**NJIT)
def ring_rows(nxt, ends, out):
    """The accessed rows in list order (oldest first) into ``out``; returns their count."""
    node = ends[HEAD]
    c = 0
    while node:
        out[c] = node - 1
        node = nxt[node - 1]
        c += 1
    return c
