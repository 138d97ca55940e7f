"""Sparse write with a journal (DESIGN.md section 1, steps 2, 3 and 5) and its rewind.

w^W_h = alpha_h (gamma_h w^R_{h,t-1} + (1 - gamma_h) I^U_h): erase the LRA rows, then add
alpha_h gamma_h w_{h,k} a_h to each previously read row and alpha_h (1 - gamma_h) a_h to the
LRA row, head by head. Before the write the old contents of the distinct touched rows are
appended to a journal; swapping journal and memory undoes the step, swapping again redoes it.
"""
import numba as nb
import numpy as np

from ..config import NJIT


@nb.njit(**NJIT)
def add_distinct(rows, n, row):
    """Append ``row`` to ``rows[:n]`` unless already there; returns the new length."""
    for i in range(n):
        if rows[i] == row:
            return n
    rows[n] = row
    return n + 1


@nb.njit(**NJIT)
def write_rows(lra, prev_rows, out):
    """The distinct rows a write touches (LRA rows, then valid previous read rows) into
    ``out`` (H(K+1),) int64; returns their count. lra (H,); prev_rows (H, K), -1 = none."""
    n = 0
    for h in range(lra.shape[0]):
        n = add_distinct(out, n, lra[h])
    for h in range(prev_rows.shape[0]):
        for j in range(prev_rows.shape[1]):
            if prev_rows[h, j] >= 0:
                n = add_distinct(out, n, prev_rows[h, j])
    return n


@nb.njit(**NJIT)
def journal_save(memory, rows, n, old):
    """Copy the contents of memory rows ``rows[:n]`` into ``old[:n]`` (the journal entry)."""
    for i in range(n):
        old[i, :] = memory[rows[i]]


@nb.njit(**NJIT)
def journal_swap(memory, rows, n, saved):
    """Swap memory rows ``rows[:n]`` with ``saved[:n]``: undoes a step if ``saved`` holds the
    old contents and redoes it if it holds the new ones (rows are distinct, so exact)."""
    for i in range(n):
        r = rows[i]
        for d in range(memory.shape[1]):
            tmp = memory[r, d]
            memory[r, d] = saved[i, d]
            saved[i, d] = tmp


@nb.njit(**NJIT)
def sparse_write(memory, lra, prev_rows, prev_weights, add, write_gate, interp_gate):
    """Steps 2-3: M(l_h) <- 0 for all h; then per head
    M(s_{h,k}) += alpha gamma w_{h,k} a_h for k = 1..K and M(l_h) += alpha (1-gamma) a_h.

    memory (N, W); lra (H,) = l; prev_rows (H, K) = s_{t-1} (-1 = none);
    prev_weights (H, K) = w_{t-1}; add (H, W) = a; write_gate (H,) = alpha;
    interp_gate (H,) = gamma.
    """
    n_heads = lra.shape[0]
    width = memory.shape[1]
    for h in range(n_heads):
        memory[lra[h], :] = 0
    for h in range(n_heads):
        alpha = np.float64(write_gate[h])
        gamma = np.float64(interp_gate[h])
        for j in range(prev_rows.shape[1]):
            r = prev_rows[h, j]
            if r >= 0:
                c = alpha * gamma * np.float64(prev_weights[h, j])
                for d in range(width):
                    memory[r, d] += c * add[h, d]
        c = alpha * (1.0 - gamma)
        for d in range(width):
            memory[lra[h], d] += c * add[h, d]


@nb.njit(**NJIT)
def accessed_rows(lra, prev_rows, prev_weights, write_gate, interp_gate, rows, weights,
                  delta, cand, total):
    """Step 5: rows whose total write plus read weight at this step exceeds delta.

    Sums w^W (previous read rows, then the LRA row, head by head) and then the read weights
    w^R (rows (H, K), weights (H, K)). Uses scratch ``cand`` (int64) and ``total`` (float64)
    of length >= H(2K+1). Returns n: ``cand[:n]`` holds the accessed rows, ascending.
    """
    n = 0
    n_heads, k = rows.shape
    for h in range(n_heads):
        alpha = np.float64(write_gate[h])
        gamma = np.float64(interp_gate[h])
        for j in range(prev_rows.shape[1]):
            if prev_rows[h, j] >= 0:
                n = _accumulate(cand, total, n, prev_rows[h, j],
                                alpha * gamma * np.float64(prev_weights[h, j]))
        n = _accumulate(cand, total, n, lra[h], alpha * (1.0 - gamma))
    for h in range(n_heads):
        for j in range(k):
            n = _accumulate(cand, total, n, rows[h, j], np.float64(weights[h, j]))
    m = 0
    for i in range(n):
        if total[i] > delta:
            cand[m] = cand[i]
            m += 1
    cand[:m].sort()
    return m


@nb.njit(**NJIT)
def _accumulate(cand, total, n, row, value):
    for i in range(n):
        if cand[i] == row:
            total[i] += value
            return n
    cand[n] = row
    total[n] = value
    return n + 1
