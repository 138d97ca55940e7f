"""The set of written rows of one batch element: the rows that may be non-zero.

flags (N,) uint8   1 if the row is in the set (a fresh zero page means "not written")
rows (cap,) int64  the members in insertion order; the set only grows between resets, so
                   rewinding truncates it
hint (1,) int64    a row below which every row is a member (for finding unwritten rows)
"""
import numba as nb

from ..config import NJIT


@nb.njit(**NJIT)
def rowset_add(flags, rows, count, new_rows):
    """Add ``new_rows`` (entries < 0 are ignored) to the set; returns the new count
    (capacity is the caller's)."""
    for i in range(new_rows.shape[0]):
        r = new_rows[i]
        if r >= 0 and flags[r] == 0:
            flags[r] = 1
            rows[count] = r
            count += 1
    return count


@nb.njit(**NJIT)
def rowset_truncate(flags, rows, count, new_count, hint):
    """Remove the members added after the first ``new_count``; lowers ``hint[0]``."""
    for i in range(new_count, count):
        r = rows[i]
        flags[r] = 0
        if r < hint[0]:
            hint[0] = r
    return new_count


@nb.njit(**NJIT)
def unwritten_rows(flags, hint, k, out):
    """The (up to) ``k`` lowest rows not in the set into ``out``; returns how many.

    Advances ``hint[0]`` past the members at the bottom, so the cost is amortised
    O(k + members skipped between non-members).
    """
    n_rows = flags.shape[0]
    i = hint[0]
    while i < n_rows and flags[i]:
        i += 1
    hint[0] = i
    c = 0
    while c < k and i < n_rows:
        if flags[i] == 0:
            out[c] = i
            c += 1
        i += 1
    return c


@nb.njit(**NJIT)
def rowset_clear(flags, rows, count):
    """Empty a set whose flags were set by :func:`rowset_add` (O(count))."""
    for i in range(count):
        flags[rows[i]] = 0
    return 0


@nb.njit(**NJIT)
def batch_rowset_add(flags, members, counts, new_rows):
    """:func:`rowset_add` for every batch element: flags (B, N), members (B, cap),
    counts (B,) updated in place, new_rows (B, R) with -1 padding."""
    for b in range(flags.shape[0]):
        counts[b] = rowset_add(flags[b], members[b], counts[b], new_rows[b])


@nb.njit(**NJIT)
def batch_rowset_truncate(flags, members, counts, new_counts, hints):
    """:func:`rowset_truncate` for every batch element (hints (B, 1))."""
    for b in range(flags.shape[0]):
        counts[b] = rowset_truncate(flags[b], members[b], counts[b], new_counts[b], hints[b])
