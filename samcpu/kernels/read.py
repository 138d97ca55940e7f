"""Sparse content read (DESIGN.md section 1, step 4) and its backward pass.

For one head: z_k = beta * c(q, M(s_k)), w = softmax_k(z), r = sum_k w_k M(s_k).
"""
import numba as nb
import numpy as np

from ..config import NJIT
from .similarity import cosine_similarity, norm_eps


@nb.njit(**NJIT)
def softmax_read(memory, rows, query, strength, eps, weights, reads, sims):
    """Read r_h = sum_k w_{h,k} M(s_{h,k}) for every head.

    memory (N, W); rows (H, K) int64 = s; query (H, W) = q; strength (H,) = beta.
    Writes weights (H, K) = w, reads (H, W) = r and sims (H, K) = c(q_h, M(s_{h,k})).
    """
    n_heads, k = rows.shape
    width = memory.shape[1]
    for h in range(n_heads):
        zmax = -np.inf
        for j in range(k):
            c = cosine_similarity(query[h], memory[rows[h, j]], eps)
            sims[h, j] = c
            z = strength[h] * c
            if z > zmax:
                zmax = z
        total = 0.0
        for j in range(k):
            e = np.exp(strength[h] * sims[h, j] - zmax)
            weights[h, j] = e
            total += e
        for j in range(k):
            weights[h, j] = weights[h, j] / total
        for d in range(width):
            acc = 0.0
            for j in range(k):
                acc += weights[h, j] * memory[rows[h, j], d]
            reads[h, d] = acc


@nb.njit(**NJIT)
def read_backward(row_values, query, strength, weights, sims, grad_reads, grad_weights, eps,
                  grad_query, grad_strength, grad_rows):
    """Gradients of a loss L through one step's sparse read, for every head.

    row_values (H, K, W): the rows M(s_{h,k}) as they were at the read; query (H, W);
    strength (H,); weights (H, K) and sims (H, K) from the forward pass; grad_reads (H, W)
    = dL/dr; grad_weights (H, K) = dL/dw from other uses of w (zeros if none).
    Writes grad_query (H, W) = dL/dq, grad_strength (H,) = dL/dbeta and
    grad_rows (H, K, W) = dL/dM(s_{h,k}) (overwritten, one entry per (h, k)).
    """
    n_heads, k, width = row_values.shape
    for h in range(n_heads):
        q = query[h]
        qn = norm_eps(q, eps)
        # dL/dw_k = g . m_k + external; dL/dz_k = w_k (dL/dw_k - sum_j w_j dL/dw_j)
        gw = np.empty(k)
        mean = 0.0
        for j in range(k):
            acc = grad_weights[h, j]
            for d in range(width):
                acc += grad_reads[h, d] * row_values[h, j, d]
            gw[j] = acc
            mean += weights[h, j] * acc
        gb = 0.0
        for d in range(width):
            grad_query[h, d] = 0.0
        for j in range(k):
            gz = weights[h, j] * (gw[j] - mean)
            gb += gz * sims[h, j]
            gc = strength[h] * gz
            m = row_values[h, j]
            mn = norm_eps(m, eps)
            c = sims[h, j]
            inv = 1.0 / (qn * mn)
            # dc/dq = m/(|q||m|) - c q/|q|^2 ; dc/dm = q/(|q||m|) - c m/|m|^2
            for d in range(width):
                grad_query[h, d] += gc * (m[d] * inv - c * q[d] / (qn * qn))
                grad_rows[h, j, d] = weights[h, j] * grad_reads[h, d] + gc * (
                    q[d] * inv - c * m[d] / (mn * mn))
        grad_strength[h] = gb
