"""Dense Access Memory (DAM): the paper's dense baseline, vectorised in plain torch autograd.

:class:`DenseAccess` applies the step of DESIGN.md section 1 to a dense memory tensor with the
read a softmax over all N rows: the LRA rows by an O(N) selection on (u(i), i), the erase and
all heads' adds as one operation each, the similarities and the read as batched matrix
products. Autograd differentiates it with respect to q, beta, a, alpha, gamma, the initial
memory M and the initial read weights w^R; row choices (the LRA rows) and usage carry no
gradient. Its cost per step grows with N, and its autograd graph holds one (B, N, W) memory
per step, so training memory grows with N * T: this is the baseline SAM is measured against.

One function per equation, assembled in :meth:`DenseAccess.forward` (deepmind/dnc style). The
bit-matching reference with a top-K read (the oracle SparseMemory is tested against) lives in
``tests/dense_ref.py``; this module is tested against its ``k=None`` path to float64 round-off.
"""
from typing import NamedTuple

import torch

from ._util import check_int
from .config import DELTA, EPS

__all__ = ["DenseAccess", "DenseState"]


class DenseState(NamedTuple):
    """Recurrent state of :class:`DenseAccess`."""

    memory: torch.Tensor  #: M (B, N, W)
    usage: torch.Tensor  #: u (B, N) int64: 0 = never accessed, t >= 1 = last access step
    read_weights: torch.Tensor  #: w^R_{t-1} (B, H, N), dense (zeros at start)
    step: int  #: steps applied so far (t of the next step is step + 1)


def lra_rows(usage, num_heads):
    """Step 1, I^U: the H least recently accessed rows l_1..l_H (no gradient).

    Parameters
    ----------
    usage : Tensor (B, N) int64
        Last-access times u(i), 0 = never accessed.
    num_heads : int
        H <= N.

    Returns
    -------
    Tensor (B, H) int64
        l_h, the h-th smallest row by (u(i), i): ties to the lower row index. One O(N)
        selection (``topk`` of H on the key u(i) N + i, distinct for distinct rows), no sort.
    """
    n = usage.shape[-1]
    key = usage * n + torch.arange(n, device=usage.device)
    return torch.topk(key, num_heads, dim=-1, largest=False, sorted=True).indices


def write_weights(prev_read_weights, lra, write_gate, interp_gate):
    """w^W_h = alpha_h (gamma_h w^R_{h,t-1} + (1 - gamma_h) I^U_h), all heads at once.

    Parameters
    ----------
    prev_read_weights : Tensor (B, H, N)
        w^R_{t-1}.
    lra : Tensor (B, H) int64
        l_h from :func:`lra_rows`.
    write_gate, interp_gate : Tensor (B, H)
        alpha and gamma.

    Returns
    -------
    Tensor (B, H, N)
        w^W, dense.
    """
    previous = (write_gate * interp_gate).unsqueeze(-1) * prev_read_weights
    least_used = (write_gate * (1.0 - interp_gate)).unsqueeze(-1)
    return previous.scatter_add(-1, lra.unsqueeze(-1), least_used)


def erase_and_add(memory, lra, weights, add):
    """Steps 2-3: M(l_h) <- 0 for every h (R = I^U 1^T), then M += sum_h w^W_h a_h^T.

    Parameters
    ----------
    memory : Tensor (B, N, W)
        M before the write.
    lra : Tensor (B, H) int64
        l_h, the rows to erase (distinct).
    weights : Tensor (B, H, N)
        w^W from :func:`write_weights`.
    add : Tensor (B, H, W)
        a.

    Returns
    -------
    Tensor (B, N, W)
        M after the write: one scatter of zeros (the erase), then one batched matrix product
        for all heads' adds.
    """
    rows = lra.unsqueeze(-1).expand(-1, -1, memory.shape[-1])
    erased = memory.scatter(1, rows, 0.0)
    return torch.baddbmm(erased, weights.transpose(1, 2), add)


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
        One batched matrix product of the eps-normalised queries with M, divided by the rows'
        eps-norms (the same as normalising M first, without a second (B, N, W) tensor). An
        all-zero row scores exactly 0.
    """
    q = query / torch.sqrt((query * query).sum(-1, keepdim=True) + eps)
    row_norm = torch.sqrt(torch.einsum("bnw,bnw->bn", memory, memory) + eps)
    return torch.bmm(q, memory.transpose(1, 2)) / row_norm.unsqueeze(1)


def content_read(memory, similarity, strength):
    """Step 4: w^R_h = softmax over all N rows of beta_h c(q_h, M(i)); r_h = sum_i w^R_h(i) M(i).

    Parameters
    ----------
    memory : Tensor (B, N, W)
        M after the write.
    similarity : Tensor (B, H, N)
        c(q_h, M(i)).
    strength : Tensor (B, H)
        beta.

    Returns
    -------
    weights : Tensor (B, H, N)
        w^R_t.
    reads : Tensor (B, H, W)
        r, one batched matrix product.
    """
    weights = torch.softmax(strength.unsqueeze(-1) * similarity, dim=-1)
    return weights, torch.bmm(weights, memory)


def usage_after_step(usage, write_weights, read_weights, delta, t):
    """Step 5: u(i) <- t where the total write plus read weight of row i exceeds delta.

    Parameters
    ----------
    usage : Tensor (B, N) int64
        u before the step.
    write_weights, read_weights : Tensor (B, H, N)
        w^W_t and w^R_t.
    delta : float
        Threshold delta.
    t : int
        This step's time.

    Returns
    -------
    Tensor (B, N) int64
        New u (no gradient).
    """
    with torch.no_grad():
        total = write_weights.sum(1) + read_weights.sum(1)
        return torch.where(total > delta, torch.full_like(usage, t), usage)


def _check_input(name, value, shape, what, like):
    """``value`` as a tensor of ``like``'s dtype and device, or ValueError naming ``name``."""
    value = torch.as_tensor(value, device=like.device)
    if value.dtype == torch.bool or value.is_complex():
        raise ValueError(f"{name} has dtype {value.dtype} but a real floating tensor is expected")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)} but expected {shape} {what}")
    value = value.to(like.dtype)
    if not torch.isfinite(value.detach()).all():
        raise ValueError(f"{name} contains NaN or Inf (in {like.dtype})")
    return value


class DenseAccess(torch.nn.Module):
    """Dense Access Memory: softmax reads over all N rows, dense writes, plain torch autograd.

    The same calls as :class:`samcpu.SparseAccess`: ``state = access.initial_state(batch_size)``,
    then ``reads, state = access(query, strength, add, write_gate, interp_gate, state)``.
    The state's dtype follows the module's (``.double()``, ``.to(torch.float64)``); inputs are
    converted to the dtype of the state's memory.

    Parameters
    ----------
    num_slots, word_size : int
        N, W.
    num_heads : int
        H read/write heads (<= N).
    delta : float
        Usage threshold delta.
    eps : float
        Norm epsilon.
    dtype : torch.dtype
        Dtype of the memory made by :meth:`initial_state` (float32 or float64).
    """

    def __init__(self, num_slots, word_size, num_heads=1, delta=DELTA, eps=EPS, dtype=torch.float32):
        super().__init__()
        self.num_slots = check_int("num_slots", num_slots)
        self.word_size = check_int("word_size", word_size)
        self.num_heads = check_int("num_heads", num_heads, 1, self.num_slots)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.delta, self.eps = float(delta), float(eps)
        # an empty buffer: .double(), .to(dtype) and .to(device) move it, and the state follows it
        self.register_buffer("_like", torch.empty(0, dtype=dtype), persistent=False)

    @property
    def dtype(self):
        return self._like.dtype

    def extra_repr(self):
        return (f"num_slots={self.num_slots}, word_size={self.word_size}, "
                f"num_heads={self.num_heads}, dtype={self.dtype}")

    def initial_state(self, batch_size):
        """All-zero memory, never-accessed usage, zero read weights, step 0."""
        b = check_int("batch_size", batch_size)
        n, w, h = self.num_slots, self.word_size, self.num_heads
        like = self._like
        return DenseState(like.new_zeros(b, n, w), torch.zeros(b, n, dtype=torch.int64, device=like.device),
                          like.new_zeros(b, h, n), 0)

    def _check_state(self, state):
        memory, usage, read_weights, _ = state
        n, w, h = self.num_slots, self.word_size, self.num_heads
        if not isinstance(memory, torch.Tensor) or memory.dim() != 3 or tuple(memory.shape[1:]) != (n, w):
            shape = tuple(memory.shape) if isinstance(memory, torch.Tensor) else type(memory).__name__
            raise ValueError(f"state.memory has shape {shape} but expected (batch_size, {n}, {w}) "
                             "(batch_size, num_slots, word_size)")
        if not memory.is_floating_point():
            raise ValueError(f"state.memory has dtype {memory.dtype} but a floating tensor is expected")
        b = memory.shape[0]
        if tuple(usage.shape) != (b, n) or usage.dtype != torch.int64:
            raise ValueError(f"state.usage has shape {tuple(usage.shape)} and dtype {usage.dtype} but "
                             f"expected {(b, n)} int64")
        if tuple(read_weights.shape) != (b, h, n):
            raise ValueError(f"state.read_weights has shape {tuple(read_weights.shape)} "
                             f"but expected {(b, h, n)} (batch_size, num_heads, num_slots)")
        return b

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
            From :meth:`initial_state` or the previous call (never modified).

        Returns
        -------
        reads : Tensor (B, H, W)
            r.
        state : DenseState
            The state after the step.
        """
        b = self._check_state(state)
        memory, usage, prev_read_weights, step = state
        h, w = self.num_heads, self.word_size
        bhw, bh = ((b, h, w), "(batch_size, num_heads, word_size)"), ((b, h), "(batch_size, num_heads)")
        query = _check_input("query", query, *bhw, memory)
        strength = _check_input("strength", strength, *bh, memory)
        add = _check_input("add", add, *bhw, memory)
        write_gate = _check_input("write_gate", write_gate, *bh, memory)
        interp_gate = _check_input("interp_gate", interp_gate, *bh, memory)
        if not (strength.detach() > 0).all():
            raise ValueError(f"strength must be > 0, got minimum {strength.detach().min().item()}")
        for name, g in (("write_gate", write_gate), ("interp_gate", interp_gate)):
            g = g.detach()
            if not ((g >= 0) & (g <= 1)).all():
                raise ValueError(f"{name} must lie in [0, 1], got values in "
                                 f"[{g.min().item()}, {g.max().item()}]")

        t = step + 1
        lra = lra_rows(usage, h)
        ww = write_weights(prev_read_weights.to(memory.dtype), lra, write_gate, interp_gate)
        memory = erase_and_add(memory, lra, ww, add)
        similarity = cosine_similarity(query, memory, self.eps)
        read_weights, reads = content_read(memory, similarity, strength)
        usage = usage_after_step(usage, ww, read_weights, self.delta, t)
        return reads, DenseState(memory, usage, read_weights, t)
