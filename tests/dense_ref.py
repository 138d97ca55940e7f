"""The dense test oracle: the step of DESIGN.md section 1 in plain torch autograd, written to
match samcpu's kernels' rounding bit for bit, not for speed.

:class:`DenseAccess` applies the step of Rae et al. (2016) to a dense memory tensor with
ordinary torch operations, so autograd differentiates it with respect to q, beta, a, alpha,
gamma, the initial memory M and the initial read weights w^R. With ``k=K`` it is the top-K
read, the dense reference that :class:`samcpu.SparseMemory` with the exact index and the torch
bridge are tested against (to 1e-10); with ``k=None`` the read is a softmax over all N rows,
the reference that the product's vectorised DAM (:mod:`samcpu.dense`) is tested against.

One function per equation, assembled in :meth:`DenseAccess.forward`. Sums over the word
dimension and over the K read rows run sequentially, in the order the kernels use, so that
identical rows get bit-identical similarities and ties break the same way (a Python loop over
W, a loop over heads, a full stable sort of usage per step: slow on purpose). Row choices
(LRA rows, top-K rows) and usage carry no gradient. Its cost grows with N and with T.
"""
from typing import NamedTuple

import torch

from samcpu.config import DELTA, EPS

__all__ = ["DenseAccess", "DenseState"]


class DenseState(NamedTuple):
    """Recurrent state of :class:`DenseAccess`."""

    memory: torch.Tensor  #: M (B, N, W)
    usage: torch.Tensor  #: u (B, N) int64: 0 = never accessed, t >= 1 = last access step
    read_weights: torch.Tensor  #: w^R_{t-1} (B, H, N), dense (zeros at start)
    step: int  #: steps applied so far (t of the next step is step + 1)


def _dot(x, y):
    """x . y over the last axis, summed sequentially: x_0 y_0 + x_1 y_1 + ... (broadcasts)."""
    total = x[..., 0] * y[..., 0]
    for j in range(1, x.shape[-1]):
        total = total + x[..., j] * y[..., j]
    return total


def _sequential_sum(x, dim=-1):
    """Sum over axis ``dim`` in index order, x_0 + x_1 + ..., as the kernels do."""
    total = x.select(dim, 0)
    for j in range(1, x.shape[dim]):
        total = total + x.select(dim, j)
    return total


def _softmax(z, total):
    """softmax over the last axis with max subtraction; ``total(e, dim=-1)`` sums e."""
    e = torch.exp(z - z.detach().amax(dim=-1, keepdim=True))
    return e / total(e, dim=-1).unsqueeze(-1)


def lra_weights(usage, num_heads):
    """I^U: one-hot least recently accessed rows l_1..l_H (step 1, no gradient).

    Parameters
    ----------
    usage : Tensor (B, N) int64
        Last-access times u(i), 0 = never accessed.
    num_heads : int
        H.

    Returns
    -------
    Tensor (B, H, N) int64
        Row l_h of head h is the h-th smallest by (u(i), i): a stable sort breaks ties to
        the lower row index.
    """
    rows = torch.sort(usage, dim=-1, stable=True).indices[:, :num_heads]
    return torch.nn.functional.one_hot(rows, usage.shape[-1])


def write_weights(prev_read_weights, lra, write_gate, interp_gate):
    """The two parts of w^W_h = alpha_h (gamma_h w^R_{h,t-1} + (1 - gamma_h) I^U_h).

    Parameters
    ----------
    prev_read_weights : Tensor (B, H, N)
        w^R_{t-1}.
    lra : Tensor (B, H, N)
        I^U from :func:`lra_weights`.
    write_gate, interp_gate : Tensor (B, H)
        alpha and gamma.

    Returns
    -------
    previous : Tensor (B, H, N)
        (alpha_h gamma_h) w^R_{h,t-1}.
    least_used : Tensor (B, H, N)
        alpha_h (1 - gamma_h) I^U_h.
    """
    previous = (write_gate * interp_gate).unsqueeze(-1) * prev_read_weights
    least_used = (write_gate * (1.0 - interp_gate)).unsqueeze(-1) * lra.to(prev_read_weights.dtype)
    return previous, least_used


def erase_and_add(memory, lra, previous, least_used, add):
    """Steps 2-3: M(l_h) <- 0 for every h, then M += w^W_h a_h^T head by head.

    Parameters
    ----------
    memory : Tensor (B, N, W)
        M before the write.
    lra : Tensor (B, H, N)
        I^U (the rows to erase).
    previous, least_used : Tensor (B, H, N)
        The parts of w^W from :func:`write_weights`.
    add : Tensor (B, H, W)
        a.

    Returns
    -------
    Tensor (B, N, W)
        M after the write. Head by head, the previously read rows' part is added before the
        LRA part, as in the kernels (same rounding).
    """
    keep = 1 - lra.amax(dim=1)
    memory = memory * keep.unsqueeze(-1).to(memory.dtype)
    for h in range(add.shape[1]):
        a = add[:, h, None, :]
        memory = memory + previous[:, h, :, None] * a
        memory = memory + least_used[:, h, :, None] * a
    return memory


def cosine_similarity(query, memory, eps):
    """c(q_h, M(i)) = (q_h . M(i)) / (||q_h||_eps ||M(i)||_eps) for every head and row.

    Parameters
    ----------
    query : Tensor (B, H, W)
        q.
    memory : Tensor (B, N, W)
        M.
    eps : float
        epsilon in ||x||_eps = sqrt(x . x + eps).

    Returns
    -------
    Tensor (B, H, N)
        An all-zero row scores exactly 0.
    """
    q = query.unsqueeze(2)
    m = memory.unsqueeze(1)
    dot, qq, mm = _dot(q, m), _dot(q, q), _dot(m, m)
    return dot / (torch.sqrt(qq + eps) * torch.sqrt(mm + eps))


def content_read(memory, similarity, strength, k):
    """Step 4: read weights w^R_h and reads r_h = sum_i w^R_h(i) M(i).

    Parameters
    ----------
    memory : Tensor (B, N, W)
        M after the write.
    similarity : Tensor (B, H, N)
        c(q_h, M(i)).
    strength : Tensor (B, H)
        beta.
    k : int or None
        None: w^R_h = softmax over all N rows of beta_h c. K: softmax over the K rows s_{h,k}
        with the largest c (ties to the lower row, no gradient through the choice), zero
        elsewhere; the softmax and the read sum run sequentially over k.

    Returns
    -------
    weights : Tensor (B, H, N)
        w^R_t, dense.
    reads : Tensor (B, H, W)
        r.
    """
    z = strength.unsqueeze(-1) * similarity
    if k is None:
        weights = _softmax(z, torch.sum)
        return weights, torch.matmul(weights, memory)
    rows = torch.sort(-similarity.detach(), dim=-1, stable=True).indices[..., :k]  # s (B, H, K)
    w = _softmax(z.gather(-1, rows), _sequential_sum)
    batch = torch.arange(memory.shape[0], device=memory.device)[:, None, None]
    reads = _sequential_sum(w.unsqueeze(-1) * memory[batch, rows], dim=-2)  # M(s) (B, H, K, W)
    return torch.zeros_like(similarity).scatter(-1, rows, w), reads


def usage_after_step(usage, previous, least_used, read_weights, delta, t):
    """Step 5: u(i) <- t where the total write plus read weight of row i exceeds delta.

    Parameters
    ----------
    usage : Tensor (B, N) int64
        u before the step.
    previous, least_used : Tensor (B, H, N)
        The parts of w^W from :func:`write_weights`.
    read_weights : Tensor (B, H, N)
        w^R_t.
    delta : float
        Threshold delta.
    t : int
        This step's time.

    Returns
    -------
    Tensor (B, N) int64
        New u (no gradient). Summed head by head, write parts before read weights.
    """
    with torch.no_grad():
        total = torch.zeros_like(read_weights[:, 0])
        for h in range(read_weights.shape[1]):
            total = total + previous[:, h] + least_used[:, h]
        for h in range(read_weights.shape[1]):
            total = total + read_weights[:, h]
        return torch.where(total > delta, torch.full_like(usage, t), usage)


class DenseAccess(torch.nn.Module):
    """Dense SAM/DAM memory access, differentiable with plain torch autograd.

    Parameters
    ----------
    num_slots, word_size : int
        N, W.
    num_heads : int
        H read/write heads.
    k : int or None
        K rows read per head (the dense top-K reference of SAM), or None to read with a
        softmax over all N rows (DAM).
    delta : float
        Usage threshold delta.
    eps : float
        Norm epsilon.
    dtype : torch.dtype
        Dtype of memory, inputs and outputs.
    """

    def __init__(self, num_slots, word_size, num_heads=1, k=None, delta=DELTA, eps=EPS,
                 dtype=torch.float32):
        super().__init__()
        for name, value in (("num_slots", num_slots), ("word_size", word_size),
                            ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_heads > num_slots:
            raise ValueError(f"num_heads must be <= num_slots ({num_slots}), got {num_heads}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                              or not 1 <= k <= num_slots):
            raise ValueError(f"k must be None or an integer in [1, num_slots={num_slots}], got {k!r}")
        self.num_slots, self.word_size, self.num_heads, self.k = num_slots, word_size, num_heads, k
        self.delta, self.eps, self.dtype = float(delta), float(eps), dtype

    def extra_repr(self):
        return (f"num_slots={self.num_slots}, word_size={self.word_size}, "
                f"num_heads={self.num_heads}, k={self.k}, dtype={self.dtype}")

    def initial_state(self, batch_size, device=None):
        """All-zero memory, never-accessed usage, zero read weights, step 0."""
        b, n, w, h = batch_size, self.num_slots, self.word_size, self.num_heads
        return DenseState(torch.zeros(b, n, w, dtype=self.dtype, device=device),
                          torch.zeros(b, n, dtype=torch.int64, device=device),
                          torch.zeros(b, h, n, dtype=self.dtype, device=device), 0)

    def _check(self, name, value, shape, what, device):
        value = torch.as_tensor(value, dtype=self.dtype, device=device)
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)} but expected {shape} {what}")
        return value

    def forward(self, query, strength, add, write_gate, interp_gate, state):
        """Apply one step (LRA, erase, add, read, usage) to every batch element.

        Parameters
        ----------
        query : Tensor (B, H, W)
            q, the read keys.
        strength : Tensor (B, H)
            beta > 0.
        add : Tensor (B, H, W)
            a, the add vectors.
        write_gate : Tensor (B, H)
            alpha in [0, 1].
        interp_gate : Tensor (B, H)
            gamma in [0, 1]: previously read rows (1) or the LRA row (0).
        state : DenseState
            From :meth:`initial_state` or the previous call.

        Returns
        -------
        reads : Tensor (B, H, W)
            r.
        state : DenseState
            The state after the step.
        """
        memory, usage, prev_read_weights, step = state
        n, w, h = self.num_slots, self.word_size, self.num_heads
        if memory.dim() != 3 or tuple(memory.shape[1:]) != (n, w):
            raise ValueError(f"state.memory has shape {tuple(memory.shape)} but expected "
                             f"(batch_size, {n}, {w}) (batch_size, num_slots, word_size)")
        b, device = memory.shape[0], memory.device
        if tuple(usage.shape) != (b, n):
            raise ValueError(f"state.usage has shape {tuple(usage.shape)} but expected {(b, n)}")
        if tuple(prev_read_weights.shape) != (b, h, n):
            raise ValueError(f"state.read_weights has shape {tuple(prev_read_weights.shape)} "
                             f"but expected {(b, h, n)} (batch_size, num_heads, num_slots)")
        bhw, bh = ((b, h, w), "(batch_size, num_heads, word_size)"), ((b, h), "(batch_size, num_heads)")
        query = self._check("query", query, *bhw, device)
        strength = self._check("strength", strength, *bh, device)
        add = self._check("add", add, *bhw, device)
        write_gate = self._check("write_gate", write_gate, *bh, device)
        interp_gate = self._check("interp_gate", interp_gate, *bh, device)

        t = step + 1
        lra = lra_weights(usage, h)
        previous, least_used = write_weights(prev_read_weights, lra, write_gate, interp_gate)
        memory = erase_and_add(memory, lra, previous, least_used, add)
        similarity = cosine_similarity(query, memory, self.eps)
        read_weights, reads = content_read(memory, similarity, strength, self.k)
        usage = usage_after_step(usage, previous, least_used, read_weights, self.delta, t)
        return reads, DenseState(memory, usage, read_weights, t)
