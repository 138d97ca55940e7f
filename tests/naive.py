"""Slow, obviously-correct reference implementation of Sparse Access Memory.

This module follows ``DESIGN.md`` section 1 ("The mathematics") literally, with
plain Python / NumPy loops in float64.  It is the oracle that the fast numba
kernels (``samcpu.kernels``) and ``samcpu.SparseMemory`` with the exact index
are tested against.  Floating-point operations are done in a fixed, documented
order so that a kernel that follows the same order agrees bit for bit.

Symbols (Rae et al. 2016): memory M (N x W), query q_h, strength beta_h, add
vector a_h, write gate alpha_h, interpolation gate gamma_h, previous read rows
s_{h,k} with weights w_{h,k}, least recently accessed rows l_h, last-access
times u(i), usage threshold delta, norm epsilon eps.
"""

import math
from collections import namedtuple

import numpy as np

__all__ = [
    "cosine_similarity",
    "cosine_topk",
    "softmax_read",
    "lra_rows",
    "StepResult",
    "NaiveMemory",
    "read_backward",
]

StepResult = namedtuple("StepResult", ["reads", "rows", "weights"])
StepResult.__doc__ = """Result of one memory step.

Fields
------
reads : ndarray (B, H, W) float64
    Read vectors r_h.
rows : ndarray (B, H, K) int64
    Read rows s_{h,k}, by descending similarity, ties to the lower index.
weights : ndarray (B, H, K) float64
    Read weights w_{h,k} = softmax_k(beta_h c(q_h, M(s_{h,k}))).
"""


def cosine_similarity(q, m, eps=1e-6):
    """Cosine similarity with epsilon-regularised norms, c(q, m).

    Parameters
    ----------
    q : array_like (W,)
        Query q.
    m : array_like (W,)
        Memory row M(i).
    eps : float
        Epsilon in ||x||_eps = sqrt(x.x + eps).

    Returns
    -------
    float
        ``dot / (sqrt(qq + eps) * sqrt(mm + eps))``, computed in float64 with
        three separate sequential loops over j = 0..W-1 (qq, then mm, then
        dot).  An all-zero ``m`` gives exactly 0.0.
    """
    qv = [float(x) for x in q]
    mv = [float(x) for x in m]
    if len(qv) != len(mv):
        raise ValueError(f"q and m must have the same length, got {len(qv)} and {len(mv)}")
    eps = float(eps)
    qq = 0.0
    for j in range(len(qv)):
        qq += qv[j] * qv[j]
    mm = 0.0
    for j in range(len(mv)):
        mm += mv[j] * mv[j]
    dot = 0.0
    for j in range(len(qv)):
        dot += qv[j] * mv[j]
    return dot / (math.sqrt(qq + eps) * math.sqrt(mm + eps))


def cosine_topk(memory, queries, k, eps=1e-6):
    """Exact top-k rows by cosine similarity (dense scan over all N rows).

    Parameters
    ----------
    memory : array_like (N, W)
        Memory M.
    queries : array_like (H, W)
        Queries q_h.
    k : int
        Number of rows K per query; must satisfy k <= N.
    eps : float
        Norm epsilon.

    Returns
    -------
    rows : ndarray (H, k) int64
        For each query the k rows with the largest c(q_h, M(i)), sorted by
        (-similarity, row index): descending similarity, ties to the lower row.
    sims : ndarray (H, k) float64
        The corresponding similarities.

    Raises
    ------
    ValueError
        If k > N.
    """
    memory = np.asarray(memory, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    n = memory.shape[0]
    h_count = queries.shape[0]
    k = int(k)
    if k > n:
        raise ValueError(f"k must be <= num_slots (N={n}), got k={k}")
    rows = np.zeros((h_count, k), dtype=np.int64)
    sims = np.zeros((h_count, k), dtype=np.float64)
    for h in range(h_count):
        scored = [(cosine_similarity(queries[h], memory[i], eps), i)
                  for i in range(n)]
        scored.sort(key=lambda si: (-si[0], si[1]))
        for kk in range(k):
            sims[h, kk] = scored[kk][0]
            rows[h, kk] = scored[kk][1]
    return rows, sims


def softmax_read(memory, rows, query, strength, eps=1e-6):
    """Sparse content read: softmax over the K chosen rows and weighted sum.

    Parameters
    ----------
    memory : array_like (N, W)
        Memory M.
    rows : array_like (H, K) int64
        Read rows s_{h,k}.
    query : array_like (H, W)
        Queries q_h.
    strength : array_like (H,)
        Strengths beta_h.
    eps : float
        Norm epsilon.

    Returns
    -------
    weights : ndarray (H, K) float64
        w_{h,k} = e_k / sum_k e_k with e_k = exp(z_k - max_k z_k) and
        z_k = beta_h * c(q_h, M(s_{h,k})); the sum is sequential over k.
    reads : ndarray (H, W) float64
        r_h = sum_k w_{h,k} M(s_{h,k}), accumulated sequentially over k
        starting from 0.0.
    """
    memory = np.asarray(memory, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    query = np.asarray(query, dtype=np.float64)
    strength = np.asarray(strength, dtype=np.float64).reshape(-1)
    h_count, k_count = rows.shape
    w_size = memory.shape[1]
    weights = np.zeros((h_count, k_count), dtype=np.float64)
    reads = np.zeros((h_count, w_size), dtype=np.float64)
    for h in range(h_count):
        beta = float(strength[h])
        z = [beta * cosine_similarity(query[h], memory[rows[h, kk]], eps)
             for kk in range(k_count)]
        zmax = z[0]
        for kk in range(1, k_count):
            if z[kk] > zmax:
                zmax = z[kk]
        e = [math.exp(z[kk] - zmax) for kk in range(k_count)]
        total = 0.0
        for kk in range(k_count):
            total += e[kk]
        w = [e[kk] / total for kk in range(k_count)]
        for j in range(w_size):
            acc = 0.0
            for kk in range(k_count):
                acc += w[kk] * float(memory[rows[h, kk], j])
            reads[h, j] = acc
        for kk in range(k_count):
            weights[h, kk] = w[kk]
    return weights, reads


def lra_rows(usage, num_heads):
    """Least recently accessed rows l_1..l_H.

    Parameters
    ----------
    usage : array_like (N,) int64
        Last-access times u(i); 0 means never accessed, t >= 1 means last
        accessed at step t.
    num_heads : int
        Number of heads H; must satisfy H <= N.

    Returns
    -------
    ndarray (H,) int64
        The H rows with the smallest (u(i), i), in that order (never-accessed
        rows first, ties to the lower row index).
    """
    usage = np.asarray(usage, dtype=np.int64)
    n = usage.shape[0]
    num_heads = int(num_heads)
    if num_heads > n:
        raise ValueError(f"num_heads must be <= num_slots (N={n}), got {num_heads}")
    order = sorted(range(n), key=lambda i: (int(usage[i]), i))
    return np.array(order[:num_heads], dtype=np.int64)


class NaiveMemory:
    """Reference SAM memory, DESIGN.md section 1 steps 1-5, per batch element.

    Parameters
    ----------
    batch_size : int
        B.
    num_slots : int
        N.
    word_size : int
        W.
    num_heads : int
        H.
    k : int
        K, reads per head.
    delta : float
        Usage threshold delta.
    eps : float
        Norm epsilon.

    Attributes
    ----------
    memory : ndarray (B, N, W) float64
        M, starts all zero.
    usage : ndarray (B, N) int64
        u(i); 0 = never accessed.
    prev_rows : ndarray (B, H, K) int64
        Previous read rows s_{h,k}; -1 = no previous read.
    prev_weights : ndarray (B, H, K) float64
        Previous read weights w_{h,k}.
    position : int
        Number of steps applied.
    """

    def __init__(self, batch_size, num_slots, word_size, num_heads=1, k=8,
                 delta=0.005, eps=1e-6):
        self.batch_size = int(batch_size)
        self.num_slots = int(num_slots)
        self.word_size = int(word_size)
        self.num_heads = int(num_heads)
        self.k = int(k)
        self.delta = float(delta)
        self.eps = float(eps)
        if self.k > self.num_slots:
            raise ValueError(f"k must be <= num_slots (N={self.num_slots}), got k={self.k}")
        if self.num_heads > self.num_slots:
            raise ValueError(f"num_heads must be <= num_slots (N={self.num_slots}), got {self.num_heads}")
        B, N, W, H, K = (self.batch_size, self.num_slots, self.word_size,
                         self.num_heads, self.k)
        self.memory = np.zeros((B, N, W), dtype=np.float64)
        self.usage = np.zeros((B, N), dtype=np.int64)
        self.prev_rows = np.full((B, H, K), -1, dtype=np.int64)
        self.prev_weights = np.zeros((B, H, K), dtype=np.float64)
        self.position = 0

    def step(self, query, strength, add, write_gate, interp_gate):
        """Apply one step: LRA, erase, add, read, usage.

        Parameters
        ----------
        query : array_like (B, H, W)
            q_h.
        strength : array_like (B, H)
            beta_h.
        add : array_like (B, H, W)
            a_h.
        write_gate : array_like (B, H)
            alpha_h.
        interp_gate : array_like (B, H)
            gamma_h.

        Returns
        -------
        StepResult
            reads (B, H, W) float64, rows (B, H, K) int64,
            weights (B, H, K) float64.
        """
        B, _N, W, H, K = (self.batch_size, self.num_slots, self.word_size,
                         self.num_heads, self.k)
        query = np.asarray(query, dtype=np.float64).reshape(B, H, W)
        strength = np.asarray(strength, dtype=np.float64).reshape(B, H)
        add = np.asarray(add, dtype=np.float64).reshape(B, H, W)
        write_gate = np.asarray(write_gate, dtype=np.float64).reshape(B, H)
        interp_gate = np.asarray(interp_gate, dtype=np.float64).reshape(B, H)

        t = self.position + 1
        out_reads = np.zeros((B, H, W), dtype=np.float64)
        out_rows = np.zeros((B, H, K), dtype=np.int64)
        out_weights = np.zeros((B, H, K), dtype=np.float64)

        for b in range(B):
            mem = self.memory[b]

            # 1. LRA rows l_h.
            lra = lra_rows(self.usage[b], H)

            # 2. Erase (not gated).
            for h in range(H):
                for j in range(W):
                    mem[lra[h], j] = 0.0

            # 3. Add: previous read rows (gamma), then the LRA row (1-gamma).
            for h in range(H):
                alpha = float(write_gate[b, h])
                gamma = float(interp_gate[b, h])
                for kk in range(K):
                    row = int(self.prev_rows[b, h, kk])
                    if row >= 0:
                        c = (alpha * gamma) * float(self.prev_weights[b, h, kk])
                        for j in range(W):
                            mem[row, j] += c * float(add[b, h, j])
                c2 = alpha * (1.0 - gamma)
                for j in range(W):
                    mem[lra[h], j] += c2 * float(add[b, h, j])

            # 4. Read from the memory after the write.
            rows, _sims = cosine_topk(mem, query[b], K, self.eps)
            weights, reads = softmax_read(mem, rows, query[b], strength[b],
                                          self.eps)

            # 5. Usage: total write weight plus total read weight > delta.
            total = {}
            for h in range(H):
                alpha = float(write_gate[b, h])
                gamma = float(interp_gate[b, h])
                for kk in range(K):
                    row = int(self.prev_rows[b, h, kk])
                    if row >= 0:
                        total[row] = total.get(row, 0.0) + (
                            (alpha * gamma) * float(self.prev_weights[b, h, kk]))
                row = int(lra[h])
                total[row] = total.get(row, 0.0) + alpha * (1.0 - gamma)
            for h in range(H):
                for kk in range(K):
                    row = int(rows[h, kk])
                    total[row] = total.get(row, 0.0) + float(weights[h, kk])
            for row, value in total.items():
                if value > self.delta:
                    self.usage[b, row] = t

            out_reads[b] = reads
            out_rows[b] = rows
            out_weights[b] = weights

        self.prev_rows = out_rows.copy()
        self.prev_weights = out_weights.copy()
        self.position += 1
        return StepResult(out_reads, out_rows, out_weights)


def read_backward(memory_rows, query, strength, grad_reads, eps=1e-6):
    """Finite-difference gradient of a sparse read for ONE head.

    Differentiates L = g . r(q, beta, M_s), where r is the read of
    ``softmax_read`` over the gathered rows M_s and g = dL/dr, by central
    differences with step 1e-6 in float64.  Row choices are held fixed.

    Parameters
    ----------
    memory_rows : array_like (K, W)
        Gathered rows M(s_{h,1..K}).
    query : array_like (W,)
        q_h.
    strength : float
        beta_h.
    grad_reads : array_like (W,)
        dL/dr_h.
    eps : float
        Norm epsilon.

    Returns
    -------
    grad_query : ndarray (W,) float64
        dL/dq_h.
    grad_strength : float
        dL/dbeta_h.
    grad_rows : ndarray (K, W) float64
        dL/dM(s_{h,k}).
    """
    step = 1e-6
    rows_v = np.array(memory_rows, dtype=np.float64)
    q_v = np.array(query, dtype=np.float64).reshape(-1)
    beta = float(strength)
    g = np.asarray(grad_reads, dtype=np.float64).reshape(-1)
    k_count, w_size = rows_v.shape
    idx = np.arange(k_count, dtype=np.int64).reshape(1, k_count)

    def loss(rows_x, q_x, beta_x):
        _w, r = softmax_read(rows_x, idx, q_x.reshape(1, -1),
                             np.array([beta_x]), eps)
        acc = 0.0
        for j in range(w_size):
            acc += float(g[j]) * float(r[0, j])
        return acc

    grad_query = np.zeros(w_size, dtype=np.float64)
    for j in range(w_size):
        qp = q_v.copy()
        qp[j] += step
        qm = q_v.copy()
        qm[j] -= step
        grad_query[j] = (loss(rows_v, qp, beta) - loss(rows_v, qm, beta)) / (2.0 * step)

    grad_strength = (loss(rows_v, q_v, beta + step)
                     - loss(rows_v, q_v, beta - step)) / (2.0 * step)

    grad_rows = np.zeros((k_count, w_size), dtype=np.float64)
    for kk in range(k_count):
        for j in range(w_size):
            rp = rows_v.copy()
            rp[kk, j] += step
            rm = rows_v.copy()
            rm[kk, j] -= step
            grad_rows[kk, j] = (loss(rp, q_v, beta) - loss(rm, q_v, beta)) / (2.0 * step)

    return grad_query, float(grad_strength), grad_rows


# ---------------------------------------------------------------------------
# DESIGN.md section 5: the SDNC's sparse temporal links, as dense N x N matrices
#
# Links are dense float64 matrices holding values of the storage dtype: N_h[i, j]
# ("row i was written just after row j") and P_h[j, i] (the same relation seen from
# j); precedence p_h is a dense vector. A zero is "no entry". Every value is
# computed in float64 and rounded to the storage dtype before it is ranked; a row
# keeps its K_L largest non-zero entries, ties to the lower index. These are the
# oracles of samcpu.kernels.links (same names).
# ---------------------------------------------------------------------------

__all__ += ["merge_weights", "link_update_before", "link_update_after", "precedence_update",
            "directional_weights", "mix_modes", "NaiveLinks"]


def _to_dtype(value, dtype):
    """``value`` rounded to ``dtype``, as a Python float."""
    return float(np.asarray(value, dtype=np.float64).astype(dtype))


def _keep_largest(values, k, candidates=None):
    """Indices of the ``k`` largest entries of ``values`` by (-value, index).

    ``candidates``: the indices that may be kept (default: the non-zero entries)."""
    if candidates is None:
        candidates = [i for i in range(len(values)) if values[i] != 0.0]
    return sorted(candidates, key=lambda i: (-values[i], i))[:k]


def _prune_row(row, k):
    """Zero all but the ``k`` largest non-zero entries of ``row`` (in place)."""
    keep = set(_keep_largest(row, k))
    for i in range(len(row)):
        if i not in keep:
            row[i] = 0.0


def merge_weights(rows, weights, num_slots):
    """w^W_h as a dense vector: ``w[i] += weight`` over the write in its order (rows < 0
    skipped). Returns (w (N,) float64, written rows ascending with w > 0)."""
    w = np.zeros(num_slots)
    for r, x in zip(rows, weights, strict=True):
        if r >= 0:
            w[r] += float(x)
    return w, [i for i in range(num_slots) if w[i] > 0]


def link_update_before(links, p, w, link_k, dtype=np.float64):
    """Step 6 on dense N_h: for every i with w[i] > 0 and every j != i,
    N[i, j] = (1 - w[i]) N[i, j] + w[i] p[j], then prune row i. Returns a new matrix."""
    n = len(w)
    out = np.array(links, dtype=np.float64)
    for i in range(n):
        if w[i] > 0:
            for j in range(n):
                if j != i:
                    out[i, j] = _to_dtype((1.0 - w[i]) * out[i, j] + w[i] * p[j], dtype)
            _prune_row(out[i], link_k)
    return out


def link_update_after(links, p, w, link_k, dtype=np.float64):
    """Step 6 on dense P_h: for every j with p[j] > 0 and every i != j with w[i] > 0,
    P[j, i] = (1 - w[i]) P[j, i] + w[i] p[j], then prune row j (only rows j with p[j] > 0,
    and only if something was written). Returns a new matrix."""
    n = len(w)
    out = np.array(links, dtype=np.float64)
    if not any(w[i] > 0 for i in range(n)):
        return out
    for j in range(n):
        if p[j] > 0:
            for i in range(n):
                if i != j and w[i] > 0:
                    out[j, i] = _to_dtype((1.0 - w[i]) * out[j, i] + w[i] * p[j], dtype)
            _prune_row(out[j], link_k)
    return out


def precedence_update(p, w, link_k, dtype=np.float64):
    """Step 7 on dense p_h: p = (1 - sum_i w[i]) p + w (the sum over i ascending), then keep
    the K_L largest non-zero entries. Returns a new vector."""
    total = 0.0
    for i in range(len(w)):
        total += w[i]
    out = np.array([_to_dtype((1.0 - total) * p[i] + w[i], dtype) for i in range(len(w))])
    _prune_row(out, link_k)
    return out


def directional_weights(links, prev_rows, prev_weights, link_k, dtype=np.float64):
    """Step 8's f_h (links = P_h) or b_h (links = N_h) on dense matrices.

    x = sum over the listed previous rows j (in their order) of w(j) links[j], rounded to
    ``dtype``; the candidates are the rows i with links[j, i] != 0 for a listed j (even when
    x(i) = 0); the K_L largest by (-x(i), i) are kept. Returns (x (N,) with zeros outside the
    kept rows, kept rows in order)."""
    links = np.asarray(links, dtype=np.float64)
    n = links.shape[0]
    x = np.zeros(n)
    reached = set()
    for j, wj in zip(prev_rows, prev_weights, strict=True):
        if j < 0:
            continue
        for i in range(n):
            x[i] += float(wj) * links[j, i]
            if links[j, i] != 0.0:
                reached.add(i)
    x = np.array([_to_dtype(v, dtype) for v in x])
    kept = _keep_largest(x, link_k, sorted(reached))
    out = np.zeros(n)
    out[kept] = x[kept]
    return out, kept


def mix_modes(content_rows, content_weights, back, back_kept, fwd, fwd_kept, modes, dtype=np.float64):
    """Step 8's read weights on dense vectors: w = pi_b b + pi_c c + pi_f f, rounded to ``dtype``.

    Returns (w (N,) dense, support): the support is the content rows in order, then the kept
    backward rows not among them, then the kept forward rows not among those."""
    n = len(back)
    c = np.zeros(n)
    for r, x in zip(content_rows, content_weights, strict=True):
        if r >= 0:
            c[r] = float(x)
    pb, pc, pf = (float(m) for m in modes)
    w = np.array([_to_dtype(pb * back[i] + pc * c[i] + pf * fwd[i], dtype) for i in range(n)])
    support = [r for r in content_rows if r >= 0]
    support += [r for r in back_kept if r not in support]
    support += [r for r in fwd_kept if r not in support]
    return w, support


class NaiveLinks:
    """The link state of one head (dense N_h, P_h, p_h) stepped by DESIGN.md section 5."""

    def __init__(self, num_slots, link_k, dtype=np.float64):
        self.num_slots, self.link_k, self.dtype = num_slots, link_k, dtype
        self.before = np.zeros((num_slots, num_slots))  # N_h
        self.after = np.zeros((num_slots, num_slots))  # P_h
        self.precedence = np.zeros(num_slots)  # p_h

    def write(self, rows, weights):
        """Steps 6-7 for a write of ``weights`` at ``rows`` (repeats summed, -1 skipped)."""
        w, _ = merge_weights(rows, weights, self.num_slots)
        p = self.precedence
        self.before = link_update_before(self.before, p, w, self.link_k, self.dtype)
        self.after = link_update_after(self.after, p, w, self.link_k, self.dtype)
        self.precedence = precedence_update(p, w, self.link_k, self.dtype)

    def read(self, prev_rows, prev_weights, content_rows, content_weights, modes):
        """Step 8: returns (w^R dense, support, (b, b kept), (f, f kept))."""
        k = self.link_k
        b, b_kept = directional_weights(self.before, prev_rows, prev_weights, k, self.dtype)
        f, f_kept = directional_weights(self.after, prev_rows, prev_weights, k, self.dtype)
        w, support = mix_modes(content_rows, content_weights, b, b_kept, f, f_kept, modes, self.dtype)
        return w, support, (b, b_kept), (f, f_kept)


# ---------------------------------------------------------------------------
# The DNC (Graves et al. 2016; deepmind/dnc addressing.py and access.py), one
# batch element, plain loops in float64: the oracle of samcpu.dnc (names dnc_*).
# Read modes per read head: (backward per write head, content, forward per write head).
# ---------------------------------------------------------------------------

__all__ += ["dnc_content_weights", "dnc_usage", "dnc_allocation", "dnc_write_allocation",
            "dnc_write_weights", "dnc_erase_and_write", "dnc_link", "dnc_precedence",
            "dnc_directional", "dnc_read_weights", "NaiveDNC"]


def dnc_content_weights(keys, memory, strengths, eps=1e-6):
    """C(M, k, beta) (H, N): per head, softmax over rows of beta c(k, M(i))."""
    keys, memory = np.asarray(keys, np.float64), np.asarray(memory, np.float64)
    out = np.zeros((keys.shape[0], memory.shape[0]))
    for h in range(keys.shape[0]):
        z = [float(strengths[h]) * cosine_similarity(keys[h], memory[i], eps) for i in range(memory.shape[0])]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        out[h] = [v / sum(e) for v in e]
    return out


def dnc_usage(prev_usage, prev_write_weights, free_gates, prev_read_weights):
    """u_t (N,) = (u + (1 - u) (1 - prod_i (1 - w^w_i))) * prod_r (1 - f_r w^r_r)."""
    n = len(prev_usage)
    out = np.zeros(n)
    for i in range(n):
        keep = 1.0
        for w in prev_write_weights:
            keep *= 1.0 - float(w[i])
        u = float(prev_usage[i]) + (1.0 - float(prev_usage[i])) * (1.0 - keep)
        for f, w in zip(free_gates, prev_read_weights, strict=True):
            u *= 1.0 - float(f) * float(w[i])
        out[i] = u
    return out


def dnc_allocation(usage, eps=1e-6):
    """a (N,): rows sorted by (eps + (1 - eps) u(i), i); a[phi_j] = (1 - u[phi_j]) prod_{k<j} u[phi_k]."""
    u = [eps + (1.0 - eps) * float(x) for x in usage]
    order = sorted(range(len(u)), key=lambda i: (u[i], i))
    out = np.zeros(len(u))
    prod = 1.0
    for i in order:
        out[i] = (1.0 - u[i]) * prod
        prod *= u[i]
    return out


def dnc_write_allocation(usage, gates, eps=1e-6):
    """a_i (Wr, N) for each write head, the usage updated by u + (1 - u) g_i a_i in between."""
    u = np.array(usage, np.float64)
    out = []
    for g in gates:
        a = dnc_allocation(u, eps)
        out.append(a)
        u = np.array([u[i] + (1.0 - u[i]) * float(g) * a[i] for i in range(len(u))])
    return np.array(out)


def dnc_write_weights(write_content, allocation, allocation_gates, write_gates):
    """w^w (Wr, N) = g^w (g^a a + (1 - g^a) c^w)."""
    out = np.zeros(np.shape(write_content))
    for h in range(out.shape[0]):
        ga, gw = float(allocation_gates[h]), float(write_gates[h])
        for i in range(out.shape[1]):
            out[h, i] = gw * (ga * float(allocation[h][i]) + (1.0 - ga) * float(write_content[h][i]))
    return out


def dnc_erase_and_write(memory, write_weights, erase_vectors, write_vectors):
    """M (N, W) o prod_h (1 - w_h e_h^T) + sum_h w_h v_h^T."""
    m = np.array(memory, np.float64)
    n, width = m.shape
    out = np.zeros((n, width))
    for i in range(n):
        for d in range(width):
            keep = 1.0
            for h in range(len(write_weights)):
                keep *= 1.0 - float(write_weights[h][i]) * float(erase_vectors[h][d])
            v = m[i, d] * keep
            for h in range(len(write_weights)):
                v += float(write_weights[h][i]) * float(write_vectors[h][d])
            out[i, d] = v
    return out


def dnc_link(prev_link, prev_precedence, write_weights):
    """L (Wr, N, N): L[i, j] = (1 - w[i] - w[j]) L[i, j] + w[i] p[j] off the diagonal, 0 on it."""
    wr, n = np.shape(write_weights)
    out = np.zeros((wr, n, n))
    for h in range(wr):
        w, p = write_weights[h], prev_precedence[h]
        for i in range(n):
            for j in range(n):
                if i != j:
                    out[h, i, j] = (1.0 - w[i] - w[j]) * prev_link[h][i][j] + w[i] * p[j]
    return out


def dnc_precedence(prev_precedence, write_weights):
    """p (Wr, N) = (1 - sum_i w[i]) p + w."""
    out = np.zeros(np.shape(write_weights))
    for h in range(out.shape[0]):
        total = sum(float(x) for x in write_weights[h])
        for i in range(out.shape[1]):
            out[h, i] = (1.0 - total) * float(prev_precedence[h][i]) + float(write_weights[h][i])
    return out


def dnc_directional(link, prev_read_weights, forward):
    """(R, Wr, N): forward f[i] = sum_j L[i, j] w^r[j]; backward b[j] = sum_i L[i, j] w^r[i]."""
    wr, n, _ = np.shape(link)
    r = len(prev_read_weights)
    out = np.zeros((r, wr, n))
    for a in range(r):
        for h in range(wr):
            for x in range(n):
                acc = 0.0
                for y in range(n):
                    acc += (link[h][x][y] if forward else link[h][y][x]) * prev_read_weights[a][y]
                out[a, h, x] = acc
    return out


def dnc_read_weights(content, forward, backward, read_modes):
    """w^r (R, N) = sum_h pi[h] b_h + pi[Wr] c + sum_h pi[Wr + 1 + h] f_h."""
    r, wr, n = np.shape(forward)
    out = np.zeros((r, n))
    for a in range(r):
        for i in range(n):
            v = float(read_modes[a][wr]) * float(content[a][i])
            for h in range(wr):
                v += float(read_modes[a][h]) * float(backward[a][h][i])
                v += float(read_modes[a][wr + 1 + h]) * float(forward[a][h][i])
            out[a, i] = v
    return out


class NaiveDNC:
    """One batch element of the DNC's memory access, stepped with the functions above."""

    def __init__(self, num_slots, word_size, num_reads, num_writes, eps=1e-6):
        n, w, r, wr = num_slots, word_size, num_reads, num_writes
        self.eps = eps
        self.memory = np.zeros((n, w))
        self.usage = np.zeros(n)
        self.link = np.zeros((wr, n, n))
        self.precedence = np.zeros((wr, n))
        self.read_weights = np.zeros((r, n))
        self.write_weights = np.zeros((wr, n))

    def step(self, read_keys, read_strengths, write_keys, write_strengths, erase_vectors, write_vectors,
             free_gates, allocation_gates, write_gates, read_modes):
        """One step; returns the reads (R, W)."""
        usage = dnc_usage(self.usage, self.write_weights, free_gates, self.read_weights)
        write_content = dnc_content_weights(write_keys, self.memory, write_strengths, self.eps)
        gates = [float(a) * float(g) for a, g in zip(allocation_gates, write_gates, strict=True)]
        alloc = dnc_write_allocation(usage, gates, self.eps)
        ww = dnc_write_weights(write_content, alloc, allocation_gates, write_gates)
        self.memory = dnc_erase_and_write(self.memory, ww, erase_vectors, write_vectors)
        self.link = dnc_link(self.link, self.precedence, ww)
        self.precedence = dnc_precedence(self.precedence, ww)
        content = dnc_content_weights(read_keys, self.memory, read_strengths, self.eps)
        forward = dnc_directional(self.link, self.read_weights, True)
        backward = dnc_directional(self.link, self.read_weights, False)
        self.read_weights = dnc_read_weights(content, forward, backward, read_modes)
        self.usage, self.write_weights = usage, ww
        return self.read_weights @ self.memory


# ---------------------------------------------------------------------------
# DESIGN.md section 5: a whole SDNC step on dense N x N links per (batch element,
# head): SAM's steps 1-3 (LRA, erase, add to the previous read support and the LRA
# row), steps 6-7 (links, precedence: NaiveLinks.write), step 8 (content read by
# cosine_topk/softmax_read, then NaiveLinks.read), step 9 (usage). The oracle of
# samcpu.SparseTemporalMemory(index="exact").
# ---------------------------------------------------------------------------

__all__ += ["NaiveSparseTemporalMemory"]


class NaiveSparseTemporalMemory(NaiveMemory):
    """Reference SDNC memory, DESIGN.md section 1 steps 1-3 and 5 plus section 5 steps 6-9.

    Parameters
    ----------
    batch_size, num_slots, word_size, num_heads, k :
        B, N, W, H, K as for :class:`NaiveMemory`.
    link_k : int
        K_L, entries kept per link row and in the precedence.
    dtype : numpy dtype
        Storage dtype of link values, precedence and read weights (every such value is
        computed in float64 and rounded to it, as in the naive link functions). The memory
        itself is float64, as in :class:`NaiveMemory`.
    delta, eps :
        As for :class:`NaiveMemory`.

    Attributes
    ----------
    read_size : int
        R = K + 2 K_L, the width of a step's rows and weights.
    prev_rows : ndarray (B, H, R) int64
        The previous step's read support (content rows by (-similarity, row), then the kept
        backward rows not among them, then the kept forward rows not among those), -1 after.
    prev_weights : ndarray (B, H, R) float64
        w^R_{t-1} at those rows (0 after the support).
    links : list of list of NaiveLinks
        ``links[b][h]``: dense N_h (``before``), P_h (``after``) and p_h (``precedence``).
    last_write : list of list of (rows, weights)
        The write of the latest step per (b, h), in the order it was applied (previous read
        rows, then the LRA row): what steps 6-7 were given.
    last_directional : list of list of ((b, b kept), (f, f kept))
        The backward and forward weightings of the latest step per (b, h).
    """

    def __init__(self, batch_size, num_slots, word_size, num_heads=1, k=8, link_k=8,
                 dtype=np.float64, delta=0.005, eps=1e-6):
        super().__init__(batch_size, num_slots, word_size, num_heads, k, delta, eps)
        self.link_k = int(link_k)
        self.dtype = np.dtype(dtype)
        self.read_size = self.k + 2 * self.link_k
        B, N, H, R = self.batch_size, self.num_slots, self.num_heads, self.read_size
        self.prev_rows = np.full((B, H, R), -1, dtype=np.int64)
        self.prev_weights = np.zeros((B, H, R), dtype=np.float64)
        self.links = [[NaiveLinks(N, self.link_k, self.dtype) for _ in range(H)] for _ in range(B)]
        self.last_write = [[None] * H for _ in range(B)]
        self.last_directional = [[None] * H for _ in range(B)]

    def step(self, query, strength, add, write_gate, interp_gate, read_modes):
        """Apply one SDNC step: LRA, erase, add, links, precedence, read, usage.

        Parameters
        ----------
        query, strength, add, write_gate, interp_gate :
            As for :meth:`NaiveMemory.step`.
        read_modes : array_like (B, H, 3)
            pi_h = (pi_b, pi_c, pi_f) (not checked).

        Returns
        -------
        StepResult
            reads (B, H, W) float64, rows (B, H, R) int64 (the support, -1 after it),
            weights (B, H, R) float64 (0 after the support).
        """
        B, W, H, K, R = (self.batch_size, self.word_size, self.num_heads, self.k, self.read_size)
        query = np.asarray(query, dtype=np.float64).reshape(B, H, W)
        strength = np.asarray(strength, dtype=np.float64).reshape(B, H)
        add = np.asarray(add, dtype=np.float64).reshape(B, H, W)
        write_gate = np.asarray(write_gate, dtype=np.float64).reshape(B, H)
        interp_gate = np.asarray(interp_gate, dtype=np.float64).reshape(B, H)
        read_modes = np.asarray(read_modes, dtype=np.float64).reshape(B, H, 3)

        t = self.position + 1
        out_reads = np.zeros((B, H, W), dtype=np.float64)
        out_rows = np.full((B, H, R), -1, dtype=np.int64)
        out_weights = np.zeros((B, H, R), dtype=np.float64)

        for b in range(B):
            mem = self.memory[b]

            # 1. LRA rows l_h.
            lra = lra_rows(self.usage[b], H)

            # 2. Erase (not gated).
            for h in range(H):
                for j in range(W):
                    mem[lra[h], j] = 0.0

            # 3. Add: the previous read support (gamma), then the LRA row (1 - gamma).
            writes = []
            for h in range(H):
                alpha = float(write_gate[b, h])
                gamma = float(interp_gate[b, h])
                rows_h, weights_h = [], []
                for a in range(R):
                    row = int(self.prev_rows[b, h, a])
                    if row >= 0:
                        c = (alpha * gamma) * float(self.prev_weights[b, h, a])
                        for j in range(W):
                            mem[row, j] += c * float(add[b, h, j])
                        rows_h.append(row)
                        weights_h.append(c)
                c2 = alpha * (1.0 - gamma)
                for j in range(W):
                    mem[lra[h], j] += c2 * float(add[b, h, j])
                rows_h.append(int(lra[h]))
                weights_h.append(c2)
                writes.append((rows_h, weights_h))

            # 6-7. Links and precedence of each head, from its own write weights.
            for h in range(H):
                self.links[b][h].write(*writes[h])
                self.last_write[b][h] = writes[h]

            # 8. Read: content weights c_h (SAM's step 4), then the mode mix with b_h, f_h.
            content_rows, _sims = cosine_topk(mem, query[b], K, self.eps)
            content_weights, _reads = softmax_read(mem, content_rows, query[b], strength[b], self.eps)
            for h in range(H):
                w, support, back, fwd = self.links[b][h].read(
                    self.prev_rows[b, h], self.prev_weights[b, h], content_rows[h],
                    content_weights[h], read_modes[b, h])
                self.last_directional[b][h] = (back, fwd)
                for a, row in enumerate(support):
                    out_rows[b, h, a] = row
                    out_weights[b, h, a] = w[row]
                for j in range(W):
                    acc = 0.0
                    for a in range(len(support)):
                        acc += float(out_weights[b, h, a]) * float(mem[out_rows[b, h, a], j])
                    out_reads[b, h, j] = acc

            # 9. Usage: total write weight plus total read weight > delta.
            total = {}
            for h in range(H):
                for row, x in zip(*writes[h], strict=True):
                    total[row] = total.get(row, 0.0) + x
            for h in range(H):
                for a in range(R):
                    row = int(out_rows[b, h, a])
                    if row >= 0:
                        total[row] = total.get(row, 0.0) + float(out_weights[b, h, a])
            for row, value in total.items():
                if value > self.delta:
                    self.usage[b, row] = t

        self.prev_rows = out_rows.copy()
        self.prev_weights = out_weights.copy()
        self.position += 1
        return StepResult(out_reads, out_rows, out_weights)
