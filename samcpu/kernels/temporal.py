"""Batch-level kernels of the SDNC's step (DESIGN.md section 5) on SAM's core: the heads' write
weights as the links see them, the read over the mixed support, journal spans of link records,
and the backward pass of one step.

Journal link records are :class:`samcpu.kernels.links.LinkStep` arrays with two more leading
axes (journal slot, batch element, head, ...): :func:`slot_step` takes one slot's view.
"""
import numba as nb
import numpy as np

from ..config import NJIT
from .backward import content_backward, grad_slot, write_backward
from .links import (LinkRecords, LinkStep, batch_link_redo, batch_link_undo, directional_weights_backward,
                    head_state, links_at, mix_modes_backward)


@nb.njit(**NJIT)
def link_write_weights(lra, prev_rows, prev_weights, write_gate, interp_gate, out_rows, out_weights):
    """w^W_h as the links take it, per (b, h): the previous read rows (R, -1 = none) with
    alpha gamma w^R_{t-1}, then the LRA row with alpha (1 - gamma), in float64 (the values
    :func:`samcpu.kernels.write.sparse_write` adds with). lra (B, H); prev_* (B, H, R);
    gates (B, H); out_rows (B, H, R + 1) int64, out_weights (B, H, R + 1) float64."""
    n_batch, n_heads, r = prev_rows.shape
    for b in range(n_batch):
        for h in range(n_heads):
            alpha = np.float64(write_gate[b, h])
            gamma = np.float64(interp_gate[b, h])
            for j in range(r):
                out_rows[b, h, j] = prev_rows[b, h, j]
                out_weights[b, h, j] = alpha * gamma * np.float64(prev_weights[b, h, j]) \
                    if prev_rows[b, h, j] >= 0 else 0.0
            out_rows[b, h, r] = lra[b, h]
            out_weights[b, h, r] = alpha * (1.0 - gamma)


@nb.njit(**NJIT)
def support_read(memory, rows, weights, reads):
    """r_h = sum_a w^R_h(a) M(rows_h(a)) over the support (rows -1 skipped), summed in the
    support's order as :func:`samcpu.kernels.read.softmax_read` sums. memory (B, N, W);
    rows, weights (B, H, R); reads (B, H, W)."""
    n_batch, n_heads, r = rows.shape
    for b in range(n_batch):
        for h in range(n_heads):
            for d in range(memory.shape[2]):
                acc = 0.0
                for j in range(r):
                    if rows[b, h, j] >= 0:
                        acc += weights[b, h, j] * memory[b, rows[b, h, j], d]
                reads[b, h, d] = acc


@nb.njit(**NJIT)
def slot_step(rec, s):
    """Journal slot ``s`` of link records with leading axes (slot, B, H) (views)."""
    before = LinkRecords(rec.before.rows[s], rec.before.fresh[s], rec.before.cols[s], rec.before.vals[s])
    after = LinkRecords(rec.after.rows[s], rec.after.fresh[s], rec.after.cols[s], rec.after.vals[s])
    return LinkStep(before, after, rec.prec_rows[s], rec.prec_vals[s], rec.counts[s])


@nb.njit(**NJIT)
def span_link_undo(links, rec, start, stop):
    """Undo the link writes of journal slots ``stop-1`` down to ``start``."""
    for s in range(stop - 1, start - 1, -1):
        batch_link_undo(links, slot_step(rec, s))


@nb.njit(**NJIT)
def span_link_redo(links, rec, start, stop):
    """Redo the link writes of journal slots ``start..stop-1``."""
    for s in range(start, stop):
        batch_link_redo(links, slot_step(rec, s))


@nb.njit(**NJIT)
def temporal_step_backward(memory, links, rows, weights, content_rows, content_weights, back_rows,
                           back_vals, fwd_rows, fwd_vals, modes, query, strength, grad_reads, grad_weights,
                           lra, prev_rows, prev_weights, add, write_gate, interp_gate, eps,
                           slot, store, owner, count,
                           g_query, g_strength, g_add, g_write_gate, g_interp_gate, g_modes, g_prev_weights):
    """Gradients of one SDNC step for one batch element (memory and links rewound to the state
    after step t; accumulator as in :mod:`samcpu.kernels.backward`, holding dL/dM_t).

    rows, weights (H, R): the support and w^R_t; content_rows, content_weights (H, K): c_h;
    back_*, fwd_* (H, K_L): b_h and f_h as the forward kept them; modes (H, 3); grad_weights
    (H, R) = dL/dw^R_t from later steps; prev_rows, prev_weights (H, R) = the support and
    w^R_{t-1}. Writes g_query, g_strength, g_add, g_write_gate, g_interp_gate, g_modes (H, 3)
    and g_prev_weights (H, R) (through the write and through f_h and b_h). Link values and
    precedence carry no gradient (DESIGN.md section 5).
    """
    n_heads, r = rows.shape
    k = content_rows.shape[1]
    k_l = back_rows.shape[1]
    width = memory.shape[1]
    g_w = np.zeros((n_heads, r))
    for h in range(n_heads):
        for a in range(r):
            i = rows[h, a]
            if i < 0:
                continue
            acc = np.float64(grad_weights[h, a])
            for d in range(width):
                acc += grad_reads[h, d] * memory[i, d]
            g_w[h, a] = acc
            s = grad_slot(slot, store, owner, count, i)
            w = np.float64(weights[h, a])
            for d in range(width):
                store[s, d] += w * grad_reads[h, d]
    g_content = np.zeros((n_heads, k))
    g_back = np.zeros((n_heads, k_l))
    g_fwd = np.zeros((n_heads, k_l))
    for h in range(n_heads):
        g_modes[h, :] = 0.0
        mix_modes_backward(content_rows[h], content_weights[h], back_rows[h], back_vals[h], fwd_rows[h],
                           fwd_vals[h], modes[h], rows[h], g_w[h], g_modes[h], g_content[h], g_back[h],
                           g_fwd[h])
    content_backward(memory, content_rows, content_weights, query, strength, np.zeros((n_heads, width)),
                     g_content, eps, slot, store, owner, count, g_query, g_strength)
    write_backward(lra, prev_rows, prev_weights, add, write_gate, interp_gate, slot, store,
                   g_add, g_write_gate, g_interp_gate, g_prev_weights)
    for h in range(n_heads):
        state = head_state(links, h)
        directional_weights_backward(state.before, prev_rows[h], back_rows[h], g_back[h], g_prev_weights[h])
        directional_weights_backward(state.after, prev_rows[h], fwd_rows[h], g_fwd[h], g_prev_weights[h])


@nb.njit(**NJIT)
def batch_temporal_step_backward(memory, links, rows, weights, content_rows, content_weights, back_rows,
                                 back_vals, fwd_rows, fwd_vals, modes, query, strength, grad_reads,
                                 grad_weights, lra, prev_rows, prev_weights, add, write_gate, interp_gate,
                                 eps, slot, store, owner, count, g_query, g_strength, g_add, g_write_gate,
                                 g_interp_gate, g_modes, g_prev_weights):
    """:func:`temporal_step_backward` for every batch element (a leading batch axis on each
    array; ``links`` with leading dimension B)."""
    for b in range(memory.shape[0]):
        temporal_step_backward(memory[b], links_at(links, b), rows[b], weights[b], content_rows[b],
                               content_weights[b], back_rows[b], back_vals[b], fwd_rows[b], fwd_vals[b],
                               modes[b], query[b], strength[b], grad_reads[b], grad_weights[b], lra[b],
                               prev_rows[b], prev_weights[b], add[b], write_gate[b], interp_gate[b], eps,
                               slot[b], store[b], owner[b], count[b], g_query[b], g_strength[b], g_add[b],
                               g_write_gate[b], g_interp_gate[b], g_modes[b], g_prev_weights[b])
