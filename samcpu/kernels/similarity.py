"""Cosine similarity and exact top-k with the tie rule (DESIGN.md section 1, step 4).

c(q, m) = (q . m) / (||q||_eps ||m||_eps); an all-zero row scores exactly 0.
Top-k orders by (-c, row): largest similarity first, ties to the lower row index.
All sums run sequentially in float64 so that a plain loop gives the same bits.
"""
import numba as nb
import numpy as np

from ..config import NJIT, NJIT_PARALLEL


@nb.njit(**NJIT)
def norm_eps(x, eps):
    """||x||_eps = sqrt(x . x + eps) for a vector ``x`` (W,), accumulated in float64."""
    s = 0.0
    for j in range(x.shape[0]):
        v = np.float64(x[j])
        s += v * v
    return np.sqrt(s + eps)


@nb.njit(**NJIT)
def cosine_similarity(q, m, eps):
    """c(q, m) for vectors q (W,) and m (W,) of any float dtype; returns float64."""
    qq = 0.0
    mm = 0.0
    dot = 0.0
    for j in range(q.shape[0]):
        a = np.float64(q[j])
        b = np.float64(m[j])
        qq += a * a
        mm += b * b
        dot += a * b
    return dot / (np.sqrt(qq + eps) * np.sqrt(mm + eps))


@nb.njit(**NJIT)
def topk_insert(rows, sims, n, row, sim):
    """Insert (row, sim) into the sorted top list ``rows[:n]``/``sims[:n]`` of capacity k.

    The list is ordered by (-sim, row). Returns the new length (at most k = rows.shape[0]).
    """
    k = rows.shape[0]
    if n == k:
        last_s = sims[k - 1]
        if sim < last_s or (sim == last_s and row > rows[k - 1]):
            return n
        pos = k - 1
    else:
        pos = n
        n += 1
    while pos > 0 and (sims[pos - 1] < sim or (sims[pos - 1] == sim and rows[pos - 1] > row)):
        rows[pos] = rows[pos - 1]
        sims[pos] = sims[pos - 1]
        pos -= 1
    rows[pos] = row
    sims[pos] = sim
    return n


@nb.njit(**NJIT)
def scan_topk(memory, rows, start, stop, queries, qnorms, eps, out_rows, out_sims, out_n):
    """Score rows ``rows[start:stop]`` (or ``start..stop-1`` if ``rows`` is empty) against
    every query and merge them into the per-query sorted top lists.

    memory (N, W); rows (R,) int64; queries (H, W); qnorms (H,) float64;
    out_rows (H, k) int64, out_sims (H, k) float64, out_n (H,) int64 updated in place.
    Each dot product is summed over j in order (the bits of :func:`cosine_similarity`); the
    heads run side by side, which the compiler can vectorise.
    """
    n_heads, width = queries.shape
    qt = np.empty((width, n_heads))
    for h in range(n_heads):
        for j in range(width):
            qt[j, h] = queries[h, j]
    dots = np.empty(n_heads)
    use_list = rows.shape[0] > 0
    for i in range(start, stop):
        r = rows[i] if use_list else i
        m = memory[r]
        mm = 0.0
        dots[:] = 0.0
        for j in range(width):
            v = np.float64(m[j])
            mm += v * v
            for h in range(n_heads):
                dots[h] += qt[j, h] * v
        mnorm = np.sqrt(mm + eps)
        for h in range(n_heads):
            s = dots[h] / (qnorms[h] * mnorm)
            out_n[h] = topk_insert(out_rows[h], out_sims[h], out_n[h], r, s)


@nb.njit(fastmath=True, **NJIT)
def scan_topk_fast(memory, rows, start, stop, queries, qnorms, eps, out_rows, out_sims, out_n):
    """:func:`scan_topk` with the float64 sums reassociated so they vectorise (~5x faster).

    Similarities agree with :func:`cosine_similarity` to ~1e-15, not bit for bit; identical
    rows still score identically. Used to re-score ANN candidates, where the exact index's
    bit-for-bit contract does not apply.
    """
    n_heads, width = queries.shape
    k = out_rows.shape[1]
    q64 = np.empty((n_heads, width))
    for h in range(n_heads):
        for j in range(width):
            q64[h, j] = queries[h, j]
    m64 = np.empty(width)
    use_list = rows.shape[0] > 0
    for i in range(start, stop):
        r = rows[i] if use_list else i
        mm = 0.0
        for j in range(width):
            v = np.float64(memory[r, j])
            m64[j] = v
            mm += v * v
        mnorm = np.sqrt(mm + eps)
        for h in range(n_heads):
            dot = 0.0
            for j in range(width):
                dot += q64[h, j] * m64[j]
            s = dot / (qnorms[h] * mnorm)
            if out_n[h] == k and s < out_sims[h, k - 1]:
                continue
            out_n[h] = topk_insert(out_rows[h], out_sims[h], out_n[h], r, s)


@nb.njit(**NJIT_PARALLEL)
def cosine_topk(memory, queries, k, eps, block):
    """Exact top-k rows of ``memory`` (N, W) for each of ``queries`` (H, W) over all N rows.

    Parallel over blocks of ``block`` rows. Returns rows (H, k) int64 and sims (H, k) float64
    ordered by (-similarity, row). Requires k <= N.
    """
    n_rows = memory.shape[0]
    h_count = queries.shape[0]
    qnorms = np.empty(h_count)
    for h in range(h_count):
        qnorms[h] = norm_eps(queries[h], eps)
    n_blocks = (n_rows + block - 1) // block
    brows = np.empty((n_blocks, h_count, k), np.int64)
    bsims = np.empty((n_blocks, h_count, k), np.float64)
    bn = np.zeros((n_blocks, h_count), np.int64)
    none = np.empty(0, np.int64)
    for c in nb.prange(n_blocks):
        stop = min(n_rows, (c + 1) * block)
        scan_topk(memory, none, c * block, stop, queries, qnorms, eps, brows[c], bsims[c], bn[c])
    out_rows = np.empty((h_count, k), np.int64)
    out_sims = np.empty((h_count, k), np.float64)
    out_n = np.zeros(h_count, np.int64)
    for c in range(n_blocks):
        for h in range(h_count):
            for j in range(bn[c, h]):
                out_n[h] = topk_insert(out_rows[h], out_sims[h], out_n[h], brows[c, h, j], bsims[c, h, j])
    return out_rows, out_sims
