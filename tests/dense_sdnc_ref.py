"""The dense gradient oracle of the SDNC: one step of DESIGN.md section 5 in plain torch
autograd (float64), for checking the gradients of samcpu.SparseTemporalMemory /
SparseTemporalAccess, not for speed.

Per step, on a dense memory M (B, N, W) and dense previous read weights w^R_{t-1} (B, H, N):

1-3. LRA rows, erase, add (SAM's steps, :mod:`dense_ref`'s functions): the write
     w^W_h = alpha_h (gamma_h w^R_{h,t-1} + (1 - gamma_h) I^U_h), with gradient into the add
     vectors, the gates and w^R_{t-1}.
6-7. Links N_h, P_h and precedence p_h: dense N x N float64 arrays updated by the naive link
     functions of :mod:`naive` from w^W detached: constants, no gradient (as in the paper).
8.   Content weights c_h: the K rows of largest similarity chosen without gradient (a stable
     sort of -similarity: ties to the lower row), softmax over their similarities with
     gradient. Forward f_h(i) = sum_j w^R_{t-1}(j) P_h(j, i) and backward
     b_h(j) = sum_i w^R_{t-1}(i) N_h(i, j), each summed over the previous read support in its
     order (the bits of a dense loop), candidates the rows reached through a non-zero link
     entry of a previous support row (even when its weight is 0), truncated to the K_L largest
     by (-value, row) chosen without gradient; values with gradient.
     w^R_h = pi_b b_h + pi_c c_h + pi_f f_h (dense), read r_h = sum over the support of
     w^R_h(i) M(i), in the support's order (content rows, then the kept backward rows not
     among them, then the kept forward rows not among those).
9.   Usage (:func:`dense_ref.usage_after_step`, no gradient) with these read weights.

So autograd differentiates the reads with respect to q, beta, a, alpha, gamma, pi, the initial
memory and the previous read weights, with links and precedence held constant and every row
choice piecewise constant. ``forward(..., links=...)`` takes the links of a step from a
recorded run instead of computing them (so that torch.autograd.gradcheck sees a function whose
links do not move with the inputs, which is what the analytic gradient assumes).
"""
from typing import NamedTuple

import numpy as np
import torch

import naive
from dense_ref import _sequential_sum, _softmax, cosine_similarity, erase_and_add, lra_weights, \
    usage_after_step, write_weights
from samcpu.config import DELTA, EPS

__all__ = ["DenseSDNCState", "DenseSparseTemporalAccess", "LinkState"]


class LinkState(NamedTuple):
    """Dense link state of every (b, h): constants (float64 numpy arrays)."""

    before: np.ndarray  #: N_h (B, H, N, N): before[b, h, i, j] = N_h(i, j)
    after: np.ndarray  #: P_h (B, H, N, N): after[b, h, j, i] = P_h(j, i)
    precedence: np.ndarray  #: p_h (B, H, N)


class DenseSDNCState(NamedTuple):
    """Recurrent state of :class:`DenseSparseTemporalAccess`."""

    memory: torch.Tensor  #: M (B, N, W)
    usage: torch.Tensor  #: u (B, N) int64, 0 = never accessed
    read_weights: torch.Tensor  #: w^R_{t-1} (B, H, N), dense
    support: tuple  #: previous read support per (b, h): support[b][h] a tuple of rows
    links: LinkState  #: N_h, P_h, p_h after the previous step
    step: int  #: steps applied


class StepInfo(NamedTuple):
    """What a step chose and read, in the product's layout."""

    rows: np.ndarray  #: (B, H, R) int64 support, -1 after it
    weights: torch.Tensor  #: (B, H, R) w^R at the support (0 after it), with gradient
    links: LinkState  #: the links after this step's steps 6-7 (what the read used)


def _directional(links, prev_weights, support, link_k):
    """Step 8's b_h (links = N_h) or f_h (links = P_h) of one (b, h).

    links (N, N) numpy; prev_weights (N,) tensor with gradient; support: the previous read
    rows in order. Returns (x (N,) tensor, zero outside the kept rows; kept rows by
    (-x, row))."""
    n = links.shape[0]
    table = torch.from_numpy(links)
    x = torch.zeros(n, dtype=prev_weights.dtype)
    reached = np.zeros(n, dtype=bool)
    for j in support:
        x = x + prev_weights[j] * table[j]
        reached |= links[j] != 0.0
    values = x.detach().numpy()
    candidates = np.flatnonzero(reached)
    kept = sorted(candidates.tolist(), key=lambda i: (-values[i], i))[:link_k]
    mask = torch.zeros(n, dtype=x.dtype)
    mask[kept] = 1.0
    return x * mask, kept


class DenseSparseTemporalAccess(torch.nn.Module):
    """Dense SDNC memory access (DESIGN.md section 5), differentiable with torch autograd.

    Parameters
    ----------
    num_slots, word_size, num_heads, k, link_k : int
        N, W, H, K, K_L.
    delta, eps : float
        Usage threshold and norm epsilon.
    dtype : torch.dtype
        Of memory, inputs and outputs (float64 for the tests).
    """

    def __init__(self, num_slots, word_size, num_heads=1, k=8, link_k=8, delta=DELTA, eps=EPS,
                 dtype=torch.float64):
        super().__init__()
        if not 1 <= k <= num_slots or num_heads > num_slots:
            raise ValueError("need 1 <= k <= num_slots and num_heads <= num_slots")
        self.num_slots, self.word_size, self.num_heads = num_slots, word_size, num_heads
        self.k, self.link_k, self.read_size = k, link_k, k + 2 * link_k
        self.delta, self.eps, self.dtype = float(delta), float(eps), dtype

    def initial_state(self, batch_size, memory=None, read_weights=None):
        """Zero memory (or ``memory``), never-accessed usage, no previous reads (or dense
        ``read_weights`` (B, H, N), whose support is then its non-zero rows ascending), no
        links."""
        b, n, w, h = batch_size, self.num_slots, self.word_size, self.num_heads
        if memory is None:
            memory = torch.zeros(b, n, w, dtype=self.dtype)
        if read_weights is None:
            read_weights = torch.zeros(b, h, n, dtype=self.dtype)
        support = tuple(tuple(tuple(np.flatnonzero(read_weights[i, j].detach().numpy()).tolist())
                              for j in range(h)) for i in range(b))
        links = LinkState(np.zeros((b, h, n, n)), np.zeros((b, h, n, n)), np.zeros((b, h, n)))
        return DenseSDNCState(memory, torch.zeros(b, n, dtype=torch.int64), read_weights, support, links, 0)

    def forward(self, query, strength, add, write_gate, interp_gate, read_modes, state, links=None):
        """One step. Inputs as samcpu.SparseTemporalMemory.step (tensors); ``links``: a
        :class:`LinkState` to use as this step's links after steps 6-7 instead of computing
        them (from a recorded :class:`StepInfo`). Returns (reads (B, H, W), new state,
        :class:`StepInfo`)."""
        memory, usage, prev_weights, support, old_links, step = state
        n, h, k, kl = self.num_slots, self.num_heads, self.k, self.link_k
        b = memory.shape[0]
        t = step + 1

        # 1-3: LRA rows, erase, add
        lra = lra_weights(usage, h)
        previous, least_used = write_weights(prev_weights, lra, write_gate, interp_gate)
        memory = erase_and_add(memory, lra, previous, least_used, add)

        # 6-7: links and precedence from the write weights, without gradient
        if links is None:
            written = (previous + least_used).detach().numpy()
            before, after = old_links.before.copy(), old_links.after.copy()
            precedence = old_links.precedence.copy()
            for i in range(b):
                for j in range(h):
                    w, p = written[i, j], old_links.precedence[i, j]
                    before[i, j] = naive.link_update_before(before[i, j], p, w, kl)
                    after[i, j] = naive.link_update_after(after[i, j], p, w, kl)
                    precedence[i, j] = naive.precedence_update(p, w, kl)
            links = LinkState(before, after, precedence)

        # 8: content weights, directional weights, mode mix, read
        similarity = cosine_similarity(query, memory, self.eps)
        rows = torch.sort(-similarity.detach(), dim=-1, stable=True).indices[..., :k]  # (B, H, K)
        z = strength.unsqueeze(-1) * similarity
        content = _softmax(z.gather(-1, rows), _sequential_sum)  # (B, H, K)
        read_weights = []
        reads = []
        out_rows = np.full((b, h, self.read_size), -1, np.int64)
        out_weights = []
        new_support = []
        for i in range(b):
            weights_i, reads_i, weights_out_i, support_i = [], [], [], []
            for j in range(h):
                back, back_kept = _directional(links.before[i, j], prev_weights[i, j], support[i][j], kl)
                fwd, fwd_kept = _directional(links.after[i, j], prev_weights[i, j], support[i][j], kl)
                crow = rows[i, j].tolist()
                c = torch.zeros(n, dtype=memory.dtype).index_put((rows[i, j],), content[i, j])
                pi = read_modes[i, j]
                w = pi[0] * back + pi[1] * c + pi[2] * fwd
                sup = list(crow)
                sup += [r for r in back_kept if r not in sup]
                sup += [r for r in fwd_kept if r not in sup]
                out_rows[i, j, :len(sup)] = sup
                r = torch.zeros(self.word_size, dtype=memory.dtype)
                for row in sup:
                    r = r + w[row] * memory[i, row]
                pad = torch.zeros(self.read_size - len(sup), dtype=memory.dtype)
                weights_out_i.append(torch.cat([w[sup], pad]))
                weights_i.append(w)
                reads_i.append(r)
                support_i.append(tuple(sup))
            read_weights.append(torch.stack(weights_i))
            reads.append(torch.stack(reads_i))
            out_weights.append(torch.stack(weights_out_i))
            new_support.append(tuple(support_i))
        read_weights = torch.stack(read_weights)
        reads = torch.stack(reads)

        # 9: usage
        usage = usage_after_step(usage, previous, least_used, read_weights, self.delta, t)
        state = DenseSDNCState(memory, usage, read_weights, tuple(new_support), links, t)
        return reads, state, StepInfo(out_rows, torch.stack(out_weights), links)
