"""The Differentiable Neural Computer (Graves et al. 2016), the SDNC's dense baseline.

:class:`DenseTemporalAccess` is the DNC's memory access (deepmind/dnc ``access.py`` and
``addressing.py``) vectorised in plain torch autograd: content weights, free gates and
retention, usage after write and read, the sort-based allocation weighting, write and
allocation gates, erase and write, a dense N x N temporal link matrix per write head,
precedence, forward and backward weightings, read modes. One function per equation,
assembled in :meth:`DenseTemporalAccess.step`. Every step costs O(B Wr N^2) in time and keeps
O(B Wr N^2) for autograd: this is the cost the SDNC removes (DESIGN.md section 5).
:class:`DNC` is the LSTM controller of :class:`samcpu.SAM` around it.

Conventions (those of deepmind/dnc unless said): cosine similarity with the norm epsilon of
DESIGN.md section 1 (an all-zero row scores exactly 0); strengths beta = 1 + softplus(beta^)
(the paper's oneplus; the access takes beta > 0); the gradient is that of the paper's
equations, through the usage too (deepmind/dnc stops it at the write weights in the usage, so
its gradient is not the function's and fails gradcheck); allocation sorts the usage ascending with ties to the
lower row; read modes per read head are (backward for each write head, content, forward for
each write head), so with one write head pi = (pi_b, pi_c, pi_f) as in the SDNC.
"""
from typing import NamedTuple

import torch
from torch import nn

from ._util import check_int
from .config import EPS
from .dense import cosine_similarity
from .nn import ControllerState, _MemoryNetwork

__all__ = ["DNC", "DNCInterface", "DNCState", "DenseTemporalAccess", "allocation", "content_weights",
           "directional_weights", "erase_and_write", "link", "precedence", "read_weights",
           "split_interface", "usage_after_read", "usage_after_write", "write_allocation_weights",
           "write_weights"]


class DNCState(NamedTuple):
    """Recurrent state of :class:`DenseTemporalAccess` (B batch, N slots, W word, R read heads,
    Wr write heads)."""

    memory: torch.Tensor  #: M_{t-1} (B, N, W)
    usage: torch.Tensor  #: u_{t-1} (B, N), in [0, 1]
    link: torch.Tensor  #: L_{t-1} (B, Wr, N, N), zero diagonal
    precedence: torch.Tensor  #: p_{t-1} (B, Wr, N)
    read_weights: torch.Tensor  #: w^r_{t-1} (B, R, N)
    write_weights: torch.Tensor  #: w^w_{t-1} (B, Wr, N)


class DNCInterface(NamedTuple):
    """One step's interface values, after their nonlinearities (see :func:`split_interface`)."""

    read_keys: torch.Tensor  #: k^r (B, R, W)
    read_strengths: torch.Tensor  #: beta^r (B, R) > 0
    write_keys: torch.Tensor  #: k^w (B, Wr, W)
    write_strengths: torch.Tensor  #: beta^w (B, Wr) > 0
    erase_vectors: torch.Tensor  #: e (B, Wr, W) in [0, 1]
    write_vectors: torch.Tensor  #: v (B, Wr, W)
    free_gates: torch.Tensor  #: f (B, R) in [0, 1]
    allocation_gates: torch.Tensor  #: g^a (B, Wr) in [0, 1]
    write_gates: torch.Tensor  #: g^w (B, Wr) in [0, 1]
    read_modes: torch.Tensor  #: pi (B, R, 1 + 2 Wr), >= 0, summing to 1 on the last axis


# --------------------------------------------------------------------------- the equations


def content_weights(keys, memory, strengths, eps=EPS):
    """C(M, k, beta): softmax over the N rows of beta c(k, M(i)) for every head.

    Parameters
    ----------
    keys : Tensor (B, H, W)
        k, one key per head.
    memory : Tensor (B, N, W)
        M.
    strengths : Tensor (B, H)
        beta > 0.
    eps : float
        Norm epsilon of c (DESIGN.md section 1).

    Returns
    -------
    Tensor (B, H, N)
    """
    return torch.softmax(strengths.unsqueeze(-1) * cosine_similarity(keys, memory, eps), dim=-1)


def usage_after_write(usage, write_weights):
    """u <- u + (1 - u) (1 - prod_i (1 - w^w_i)): usage rises where the previous step wrote.

    Parameters
    ----------
    usage : Tensor (B, N)
        u_{t-1}.
    write_weights : Tensor (B, Wr, N)
        w^w_{t-1}.

    Returns
    -------
    Tensor (B, N)
    """
    written = 1 - torch.prod(1 - write_weights, dim=1)
    return usage + (1 - usage) * written


def usage_after_read(usage, free_gates, read_weights):
    """u <- u psi with the retention psi = prod_r (1 - f_r w^r_{t-1, r}): rows read with free
    gate 1 are freed.

    Parameters
    ----------
    usage : Tensor (B, N)
        Usage after :func:`usage_after_write`.
    free_gates : Tensor (B, R)
        f in [0, 1].
    read_weights : Tensor (B, R, N)
        w^r_{t-1}.

    Returns
    -------
    Tensor (B, N)
    """
    return usage * torch.prod(1 - free_gates.unsqueeze(-1) * read_weights, dim=1)


def allocation(usage, eps=EPS):
    """a: the allocation weighting, a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i] with phi the rows
    sorted by ascending usage (ties to the lower row).

    Parameters
    ----------
    usage : Tensor (B, N)
        u in [0, 1]; lifted to eps + (1 - eps) u first so that the products never vanish
        (deepmind/dnc).
    eps : float

    Returns
    -------
    Tensor (B, N)
        One stable sort, one cumulative product and one scatter per call; differentiable in u
        (the order is piecewise constant).
    """
    usage = eps + (1 - eps) * usage
    sorted_usage, phi = torch.sort(usage, dim=-1, stable=True)
    ones = torch.ones_like(sorted_usage[..., :1])
    before = torch.cumprod(torch.cat([ones, sorted_usage[..., :-1]], dim=-1), dim=-1)
    return torch.zeros_like(usage).scatter(-1, phi, (1 - sorted_usage) * before)


def write_allocation_weights(usage, gates, eps=EPS):
    """a_i for each write head i: head i allocates from the usage as the heads before it left it,
    u <- u + (1 - u) g_i a_i (deepmind/dnc's simulated usage).

    Parameters
    ----------
    usage : Tensor (B, N)
        u_t.
    gates : Tensor (B, Wr)
        g^a g^w, how much each head writes to its allocation.
    eps : float

    Returns
    -------
    Tensor (B, Wr, N)
    """
    weights = []
    for i in range(gates.shape[1]):
        a = allocation(usage, eps)
        weights.append(a)
        usage = usage + (1 - usage) * gates[:, i : i + 1] * a
    return torch.stack(weights, dim=1)


def write_weights(write_content, allocation_weights, allocation_gates, write_gates):
    """w^w = g^w (g^a a + (1 - g^a) c^w).

    Parameters
    ----------
    write_content : Tensor (B, Wr, N)
        c^w, the write content weights.
    allocation_weights : Tensor (B, Wr, N)
        a from :func:`write_allocation_weights`.
    allocation_gates, write_gates : Tensor (B, Wr)
        g^a and g^w.

    Returns
    -------
    Tensor (B, Wr, N)
    """
    ga = allocation_gates.unsqueeze(-1)
    return write_gates.unsqueeze(-1) * (ga * allocation_weights + (1 - ga) * write_content)


def erase_and_write(memory, write_weights, erase_vectors, write_vectors):
    """M <- M o prod_i (1 - w^w_i e_i^T) + sum_i w^w_i v_i^T.

    Parameters
    ----------
    memory : Tensor (B, N, W)
    write_weights : Tensor (B, Wr, N)
    erase_vectors : Tensor (B, Wr, W)
        e in [0, 1].
    write_vectors : Tensor (B, Wr, W)
        v.

    Returns
    -------
    Tensor (B, N, W)
        The erase as one product over the write heads of (B, N, W) gates, the add as one
        batched matrix product.
    """
    keep = torch.prod(1 - write_weights.unsqueeze(-1) * erase_vectors.unsqueeze(2), dim=1)
    return torch.baddbmm(memory * keep, write_weights.transpose(1, 2), write_vectors)


class _LinkUpdate(torch.autograd.Function):
    """The link update with its backward written out: a few in-place passes over the N x N
    matrices instead of autograd's graph of broadcast products, and only L_{t-1} (which the
    previous step's read keeps anyway) and vectors kept for the backward pass."""

    @staticmethod
    def forward(ctx, prev_link, prev_precedence, write_weights):
        wi = write_weights.unsqueeze(-1)
        wj = write_weights.unsqueeze(-2)
        new = prev_link * (1 - wi)
        new.addcmul_(prev_link, wj, value=-1)
        new.addcmul_(wi, prev_precedence.unsqueeze(-2))
        new.diagonal(dim1=-2, dim2=-1).zero_()
        ctx.save_for_backward(prev_link, prev_precedence, write_weights)
        return new

    @staticmethod
    def backward(ctx, grad):
        # new[i, j] = (1 - w[i] - w[j]) L[i, j] + w[i] p[j] for i != j, new[i, i] = 0: the sums
        # below run over all (i, j), then the diagonal's terms are taken out again (O(N)).
        prev_link, p, w = ctx.saved_tensors
        wi = w.unsqueeze(-1)
        g_diag = grad.diagonal(dim1=-2, dim2=-1)
        g_link = g_p = g_w = None
        buf = None  # one N x N buffer for g * L, then reused for the gradient of L
        if ctx.needs_input_grad[2]:
            buf = torch.mul(grad, prev_link)
            l_diag = prev_link.diagonal(dim1=-2, dim2=-1)
            g_w = (torch.matmul(grad, p.unsqueeze(-1)).squeeze(-1) - buf.sum(-1) - buf.sum(-2)
                   - g_diag * (p - 2 * l_diag))
        if ctx.needs_input_grad[1]:
            g_p = torch.matmul(w.unsqueeze(-2), grad).squeeze(-2) - g_diag * w
        if ctx.needs_input_grad[0]:
            g_link = torch.mul(grad, 1 - wi, out=buf) if buf is not None else grad * (1 - wi)
            g_link.addcmul_(grad, w.unsqueeze(-2), value=-1)
            g_link.diagonal(dim1=-2, dim2=-1).zero_()
        return g_link, g_p, g_w


def link(prev_link, prev_precedence, write_weights):
    """L[i, j] <- (1 - w[i] - w[j]) L[i, j] + w[i] p[j], L[i, i] = 0, for each write head.

    Parameters
    ----------
    prev_link : Tensor (B, Wr, N, N)
        L_{t-1}.
    prev_precedence : Tensor (B, Wr, N)
        p_{t-1}.
    write_weights : Tensor (B, Wr, N)
        w^w_t.

    Returns
    -------
    Tensor (B, Wr, N, N)
        Three passes over N x N forward, and a hand-written backward (the exact gradient,
        gradcheck-tested) that keeps only L_{t-1} and vectors: this equation is the DNC's
        O(N^2) cost, so it gets the cheapest exact form.
    """
    return _LinkUpdate.apply(prev_link, prev_precedence, write_weights)


def precedence(prev_precedence, write_weights):
    """p <- (1 - sum_i w^w(i)) p + w^w, for each write head.

    Parameters
    ----------
    prev_precedence : Tensor (B, Wr, N)
    write_weights : Tensor (B, Wr, N)

    Returns
    -------
    Tensor (B, Wr, N)
    """
    return (1 - write_weights.sum(-1, keepdim=True)) * prev_precedence + write_weights


def directional_weights(link, prev_read_weights, forward):
    """f = L w^r_{t-1} (forward: rows written after what was read) or b = L^T w^r_{t-1}
    (backward), for every pair of read head and write head.

    Parameters
    ----------
    link : Tensor (B, Wr, N, N)
        L_t.
    prev_read_weights : Tensor (B, R, N)
        w^r_{t-1}.
    forward : bool

    Returns
    -------
    Tensor (B, R, Wr, N)
        One batched matrix product with L as it is stored (never a transposed view of it, whose
        gradient would then be added into L's with strided N x N passes).
    """
    if forward:  # f^T = L w^T
        return torch.matmul(link, prev_read_weights.transpose(1, 2).unsqueeze(1)).permute(0, 3, 1, 2)
    return torch.matmul(prev_read_weights.unsqueeze(1), link).transpose(1, 2)


def read_weights(content, forward, backward, read_modes):
    """w^r = sum_i pi_b,i b_i + pi_c c + sum_i pi_f,i f_i.

    Parameters
    ----------
    content : Tensor (B, R, N)
        c^r, the read content weights.
    forward, backward : Tensor (B, R, Wr, N)
        From :func:`directional_weights`.
    read_modes : Tensor (B, R, 1 + 2 Wr)
        pi = (backward per write head, content, forward per write head).

    Returns
    -------
    Tensor (B, R, N)
    """
    wr = forward.shape[2]
    back_mode = read_modes[..., :wr].unsqueeze(-1)
    content_mode = read_modes[..., wr : wr + 1]
    fwd_mode = read_modes[..., wr + 1 :].unsqueeze(-1)
    return content_mode * content + (back_mode * backward).sum(2) + (fwd_mode * forward).sum(2)


def interface_sizes(word_size, num_reads, num_writes):
    """The widths of the raw interface's parts, in :class:`DNCInterface` order."""
    w, r, wr = word_size, num_reads, num_writes
    return (r * w, r, wr * w, wr, wr * w, wr * w, r, wr, wr, r * (1 + 2 * wr))


def split_interface(raw, word_size, num_reads, num_writes):
    """A :class:`DNCInterface` from the controller's raw output (B, sum of
    :func:`interface_sizes`): keys and write vectors as they are, strengths 1 + softplus,
    erase vectors and gates sigmoid, read modes a softmax per read head."""
    b = raw.shape[0]
    w, r, wr = word_size, num_reads, num_writes
    parts = torch.split(raw, interface_sizes(w, r, wr), dim=-1)
    rk, rs, wk, ws, erase, vectors, free, alloc, gate, modes = parts
    oneplus = nn.functional.softplus
    return DNCInterface(rk.reshape(b, r, w), 1 + oneplus(rs), wk.reshape(b, wr, w), 1 + oneplus(ws),
                        torch.sigmoid(erase).reshape(b, wr, w), vectors.reshape(b, wr, w),
                        torch.sigmoid(free), torch.sigmoid(alloc), torch.sigmoid(gate),
                        torch.softmax(modes.reshape(b, r, 1 + 2 * wr), dim=-1))


# --------------------------------------------------------------------------- the access module


class DenseTemporalAccess(nn.Module):
    """The DNC's memory access: ``state = access.initial_state(batch_size)``, then
    ``reads, state = access(interface, state)`` with a :class:`DNCInterface` (values after their
    nonlinearities, checked) and reads (B, R, W). :meth:`step` is the same without checks.

    The state's dtype follows the module's (``.double()``, ``.to(torch.float64)``); the
    interface is converted to the dtype of the state's memory.

    Parameters
    ----------
    num_slots, word_size : int
        N, W.
    num_reads, num_writes : int
        R read heads, Wr write heads (the DNC's defaults 4 and 1 in :class:`DNC`).
    eps : float
        Norm and allocation epsilon.
    dtype : torch.dtype
        float32 or float64.
    """

    def __init__(self, num_slots, word_size, num_reads=1, num_writes=1, eps=EPS, dtype=torch.float32):
        super().__init__()
        self.num_slots = check_int("num_slots", num_slots)
        self.word_size = check_int("word_size", word_size)
        self.num_reads = check_int("num_reads", num_reads)
        self.num_writes = check_int("num_writes", num_writes)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.eps = float(eps)
        # an empty buffer: .double(), .to(dtype) and .to(device) move it, and the state follows it
        self.register_buffer("_like", torch.empty(0, dtype=dtype), persistent=False)

    @property
    def dtype(self):
        return self._like.dtype

    def extra_repr(self):
        return (f"num_slots={self.num_slots}, word_size={self.word_size}, num_reads={self.num_reads}, "
                f"num_writes={self.num_writes}, dtype={self.dtype}")

    def initial_state(self, batch_size):
        """All-zero memory, usage, links, precedence and weights."""
        b = check_int("batch_size", batch_size)
        n, w, r, wr = self.num_slots, self.word_size, self.num_reads, self.num_writes
        z = self._like.new_zeros
        return DNCState(z(b, n, w), z(b, n), z(b, wr, n, n), z(b, wr, n), z(b, r, n), z(b, wr, n))

    def step(self, interface, state):
        """One step, unchecked: usage, write weights, erase and write, links, read.

        Returns (reads (B, R, W), new :class:`DNCState`)."""
        i = interface
        usage = usage_after_write(state.usage, state.write_weights)
        usage = usage_after_read(usage, i.free_gates, state.read_weights)
        write_content = content_weights(i.write_keys, state.memory, i.write_strengths, self.eps)
        alloc = write_allocation_weights(usage, i.allocation_gates * i.write_gates, self.eps)
        ww = write_weights(write_content, alloc, i.allocation_gates, i.write_gates)
        memory = erase_and_write(state.memory, ww, i.erase_vectors, i.write_vectors)
        links = link(state.link, state.precedence, ww)
        prec = precedence(state.precedence, ww)
        read_content = content_weights(i.read_keys, memory, i.read_strengths, self.eps)
        forward = directional_weights(links, state.read_weights, forward=True)
        backward = directional_weights(links, state.read_weights, forward=False)
        rw = read_weights(read_content, forward, backward, i.read_modes)
        return torch.bmm(rw, memory), DNCState(memory, usage, links, prec, rw, ww)

    def forward(self, interface, state):
        """:meth:`step` after checking ``interface`` and ``state`` (ValueError naming the part)."""
        b = self._check_state(state)
        return self.step(self._check_interface(interface, b, state.memory), state)

    def _check_state(self, state):
        if not isinstance(state, DNCState):
            raise ValueError(f"state must be a DNCState (from initial_state), got {type(state).__name__}")
        n, w, r, wr = self.num_slots, self.word_size, self.num_reads, self.num_writes
        memory = state.memory
        if not isinstance(memory, torch.Tensor) or memory.dim() != 3 or tuple(memory.shape[1:]) != (n, w):
            shape = tuple(memory.shape) if isinstance(memory, torch.Tensor) else type(memory).__name__
            raise ValueError(f"state.memory has shape {shape} but expected (batch_size, {n}, {w})")
        if memory.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"state.memory has dtype {memory.dtype} but float32 or float64 is expected")
        b = memory.shape[0]
        for name, shape in (("usage", (b, n)), ("link", (b, wr, n, n)), ("precedence", (b, wr, n)),
                            ("read_weights", (b, r, n)), ("write_weights", (b, wr, n))):
            value = getattr(state, name)
            ok = isinstance(value, torch.Tensor)
            if not ok or tuple(value.shape) != shape or value.dtype != memory.dtype:
                got = (tuple(value.shape), value.dtype) if ok else type(value).__name__
                raise ValueError(f"state.{name} is {got} but expected shape {shape} and dtype {memory.dtype}")
        return b

    def _check_interface(self, interface, b, like):
        if not isinstance(interface, DNCInterface):
            raise ValueError(f"interface must be a DNCInterface, got {type(interface).__name__}")
        w, r, wr = self.word_size, self.num_reads, self.num_writes
        shapes = dict(read_keys=(b, r, w), read_strengths=(b, r), write_keys=(b, wr, w),
                      write_strengths=(b, wr), erase_vectors=(b, wr, w), write_vectors=(b, wr, w),
                      free_gates=(b, r), allocation_gates=(b, wr), write_gates=(b, wr),
                      read_modes=(b, r, 1 + 2 * wr))
        values = {}
        for name, shape in shapes.items():
            value = torch.as_tensor(getattr(interface, name), device=like.device)
            if not value.is_floating_point():
                raise ValueError(f"{name} has dtype {value.dtype} but a floating tensor is expected")
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)} but expected {shape}")
            value = value.to(like.dtype)
            if not torch.isfinite(value.detach()).all():
                raise ValueError(f"{name} contains NaN or Inf (in {like.dtype})")
            values[name] = value
        for name in ("read_strengths", "write_strengths"):
            if not (values[name].detach() > 0).all():
                raise ValueError(f"{name} must be > 0, got minimum {values[name].detach().min().item()}")
        for name in ("erase_vectors", "free_gates", "allocation_gates", "write_gates", "read_modes"):
            v = values[name].detach()
            if not ((v >= 0) & (v <= 1)).all():
                raise ValueError(f"{name} must lie in [0, 1], got values in "
                                 f"[{v.min().item()}, {v.max().item()}]")
        total = values["read_modes"].detach().sum(-1)
        tol = 1e-5 if like.dtype == torch.float32 else 1e-12
        if not ((total - 1).abs() <= tol).all():
            raise ValueError(f"read_modes must sum to 1 over the last axis, got sums in "
                             f"[{total.min().item()}, {total.max().item()}]")
        return DNCInterface(**values)


class DNC(_MemoryNetwork):
    """The DNC: the LSTM controller of :class:`samcpu.SAM` (it reads [x_t, r_{t-1}], its output
    y_t = Linear([h_t, r_t])) around :class:`DenseTemporalAccess`; ``y, state = model(x, state)``
    like ``torch.nn.LSTM`` (x (T, B, input_size), or (B, T, input_size) with batch_first).

    The interface per step is one linear layer of the hidden state, split by
    :func:`split_interface`. The parameters' dtype is float32 unless ``dtype`` says otherwise,
    and ``.double()`` moves the model and the states it makes to float64.
    """

    def __init__(self, input_size, output_size, hidden_size=100, num_slots=64, word_size=32,
                 num_read_heads=4, num_write_heads=1, batch_first=False, dtype=torch.float32):
        input_size = check_int("input_size", input_size)
        output_size = check_int("output_size", output_size)
        hidden_size = check_int("hidden_size", hidden_size)
        access = DenseTemporalAccess(num_slots, word_size, num_read_heads, num_write_heads, dtype=dtype)
        super().__init__(access, input_size, output_size, hidden_size, access.word_size,
                         access.num_reads, bool(batch_first), dtype)
        self.num_write_heads = access.num_writes
        width = sum(interface_sizes(access.word_size, access.num_reads, access.num_writes))
        self.interface = nn.Linear(hidden_size, width, dtype=dtype)

    def _access_step(self, h, state):
        a = self.access
        interface = split_interface(self.interface(h), a.word_size, a.num_reads, a.num_writes)
        reads, state = a.step(interface, state)
        return reads.reshape(reads.shape[0], -1), state

    def forward(self, x, state=None):
        """``y, state = model(x, state)``; ``x`` must have ``input_size`` features."""
        features = self.cell.input_size - self.num_heads * self.word_size
        if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] != features:
            raise ValueError(f"x has {x.shape[-1]} features but input_size is {features}")
        if state is not None and not isinstance(state, ControllerState):
            raise ValueError(f"state must be None or the state a DNC returned, got {type(state).__name__}")
        return super().forward(x, state)
