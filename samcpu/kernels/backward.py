"""Backward pass of one step (DESIGN.md section 1), for backprop through time by rewinding.

The memory gradient dL/dM is carried between steps as a sparse accumulator: per batch element
``slot`` (N,) int64 (slot + 1 of a row, 0 = no gradient; lazily mapped), ``store`` (cap, W)
the gradient rows and ``owner`` (cap,) their rows; ``count`` (1,) slots in use.
Called with the memory rewound to the state after step t and the accumulator holding
dL/dM_t from the later steps, :func:`step_backward` adds the read's gradient, computes the
gradients of the step's inputs, and leaves dL/dM_{t-1} in the accumulator.
"""
import numba as nb
import numpy as np

from ..config import NJIT
from .read import read_backward
from .similarity import cosine_similarity


@nb.njit(**NJIT)
def grad_slot(slot, store, owner, count, row):
    """The accumulator slot of ``row``, allocated (zeroed) if new; capacity is the caller's."""
    s = slot[row]
    if s == 0:
        s = count[0] + 1
        count[0] = s
        slot[row] = s
        owner[s - 1] = row
        store[s - 1, :] = 0.0
    return s - 1


@nb.njit(**NJIT)
def grad_clear(slot, owner, count):
    """Empty the accumulator (O(slots used))."""
    for i in range(count[0]):
        slot[owner[i]] = 0
    count[0] = 0


@nb.njit(**NJIT)
def step_backward(memory, rows, weights, query, strength, grad_reads, grad_weights, lra,
                  prev_rows, prev_weights, add, write_gate, interp_gate, eps,
                  slot, store, owner, count,
                  g_query, g_strength, g_add, g_write_gate, g_interp_gate, g_prev_weights):
    """Gradients of one step for one batch element.

    memory (N, W) after step t; rows, weights (H, K) = s_t, w^R_t; query (H, W); strength (H,);
    grad_reads (H, W) = dL/dr_t; grad_weights (H, K) = dL/dw^R_t from later uses;
    lra (H,) = I^U_t; prev_rows, prev_weights (H, K) = s_{t-1}, w^R_{t-1} (-1 = none);
    add (H, W); write_gate, interp_gate (H,). Accumulator as in the module docstring, with
    room for H(2K+1) more slots. Writes g_query (H, W), g_strength (H,), g_add (H, W),
    g_write_gate (H,), g_interp_gate (H,), g_prev_weights (H, K).
    """
    content_backward(memory, rows, weights, query, strength, grad_reads, grad_weights, eps,
                     slot, store, owner, count, g_query, g_strength)
    write_backward(lra, prev_rows, prev_weights, add, write_gate, interp_gate, slot, store,
                   g_add, g_write_gate, g_interp_gate, g_prev_weights)


@nb.njit(**NJIT)
def content_backward(memory, rows, weights, query, strength, grad_reads, grad_weights, eps,
                     slot, store, owner, count, g_query, g_strength):
    """Step 4 backward for one batch element: the content read r = sum_k w_k M_t(s_k) with
    w = softmax(beta c(q, M_t(s_k))): adds dL/dM_t(s_k) into the accumulator and writes
    g_query (H, W) and g_strength (H,). rows, weights (H, K); grad_reads (H, W);
    grad_weights (H, K) = dL/dw from other uses of w."""
    n_heads, k = rows.shape
    width = memory.shape[1]
    # read: r = sum_k w_k M_t(s_k)
    values = np.empty((n_heads, k, width))
    sims = np.empty((n_heads, k))
    for h in range(n_heads):
        for j in range(k):
            m = memory[rows[h, j]]
            for d in range(width):
                values[h, j, d] = m[d]
            sims[h, j] = cosine_similarity(query[h], m, eps)
    g_rows = np.empty((n_heads, k, width))
    read_backward(values, query, strength, weights, sims, grad_reads, grad_weights, eps,
                  g_query, g_strength, g_rows)
    for h in range(n_heads):
        for j in range(k):
            s = grad_slot(slot, store, owner, count, rows[h, j])
            for d in range(width):
                store[s, d] += g_rows[h, j, d]


@nb.njit(**NJIT)
def write_backward(lra, prev_rows, prev_weights, add, write_gate, interp_gate, slot, store,
                   g_add, g_write_gate, g_interp_gate, g_prev_weights):
    """Steps 2-3 backward for one batch element, with the accumulator holding dL/dM_t: writes
    g_add (H, W), g_write_gate (H,), g_interp_gate (H,), g_prev_weights (H, R) (overwritten),
    then zeroes the LRA rows' gradient (the erase), leaving dL/dM_{t-1}. prev_rows (H, R)."""
    n_heads = lra.shape[0]
    width = add.shape[1]
    # write: M_t(r) = keep(r) M_{t-1}(r) + sum_h w^W_h(r) a_h, now with g = dL/dM_t
    for h in range(n_heads):
        alpha = np.float64(write_gate[h])
        gamma = np.float64(interp_gate[h])
        g_alpha = 0.0
        g_gamma = 0.0
        for d in range(width):
            g_add[h, d] = 0.0
        for j in range(prev_rows.shape[1]):
            g_prev_weights[h, j] = 0.0
            r = prev_rows[h, j]
            if r < 0 or slot[r] == 0:
                continue
            g = store[slot[r] - 1]
            w = np.float64(prev_weights[h, j])
            dot = 0.0
            for d in range(width):
                dot += add[h, d] * g[d]
                g_add[h, d] += alpha * gamma * w * g[d]
            g_alpha += gamma * w * dot
            g_gamma += alpha * w * dot
            g_prev_weights[h, j] = alpha * gamma * dot
        r = lra[h]
        if slot[r] != 0:
            g = store[slot[r] - 1]
            dot = 0.0
            for d in range(width):
                dot += add[h, d] * g[d]
                g_add[h, d] += alpha * (1.0 - gamma) * g[d]
            g_alpha += (1.0 - gamma) * dot
            g_gamma -= alpha * dot
        g_write_gate[h] = g_alpha
        g_interp_gate[h] = g_gamma
    # erase: dL/dM_{t-1}(l_h) = 0
    for h in range(n_heads):
        r = lra[h]
        if slot[r] != 0:
            store[slot[r] - 1, :] = 0.0


@nb.njit(**NJIT)
def batch_step_backward(memory, rows, weights, query, strength, grad_reads, grad_weights, lra,
                        prev_rows, prev_weights, add, write_gate, interp_gate, eps,
                        slot, store, owner, count,
                        g_query, g_strength, g_add, g_write_gate, g_interp_gate, g_prev_weights):
    """:func:`step_backward` for every batch element: each argument gains a leading batch axis
    (memory (B, N, W), accumulator slot (B, N), store (B, cap, W), owner (B, cap), count (B, 1))."""
    for b in range(memory.shape[0]):
        step_backward(memory[b], rows[b], weights[b], query[b], strength[b], grad_reads[b],
                      grad_weights[b], lra[b], prev_rows[b], prev_weights[b], add[b],
                      write_gate[b], interp_gate[b], eps, slot[b], store[b], owner[b], count[b],
                      g_query[b], g_strength[b], g_add[b], g_write_gate[b], g_interp_gate[b],
                      g_prev_weights[b])
