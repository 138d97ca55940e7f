"""torch.autograd over SparseMemory: forward writes in place and journals; backward rewinds.

Each step is one autograd node (:class:`SparseStep`). Its inputs are the five controller
outputs, the previous step's read weights w^R_{t-1} (so gradients reach the previous read
through the write) and a token: a 0-d tensor that chains the steps, so that step t's backward
runs after step t+1's. The memory's gradient does not travel through autograd: it lives in a
sparse accumulator (rows to vectors) held by the :class:`MemoryHandle`, and each step's
backward rewinds the memory *by position* to the state after that step, reads its rows, adds
the read's gradient, computes the write's, and leaves dL/dM_{t-1} behind. The graph's first
step replays the memory to its latest step when its backward is done.

Nothing is saved from the live memory (NumPy writes would not bump autograd's version
counters). A backward pass that stops short of the graph's first step (``autograd.grad`` of an
intermediate input) leaves the memory rewound; the next forward step replays it first. A step whose token receives no gradient is where a backward
pass starts (no later step contributed), so the accumulator is emptied there; this keeps
partial losses, unused steps and ``retain_graph=True`` passes right.
"""
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from . import kernels as K
from ._storage import lazy_zeros
from .config import EPS
from .memory import SparseMemory


class MemoryHandle:
    """A SparseMemory plus the memory-gradient accumulator of backprop through time."""

    def __init__(self, memory):
        self.mem = memory
        self.epoch = 0
        b, n, w = memory.batch_size, memory.num_slots, memory.word_size
        self.slot = lazy_zeros((b, n), np.int64)
        self.store = np.zeros((b, 64, w))
        self.owner = np.zeros((b, 64), np.int64)
        self.count = np.zeros((b, 1), np.int64)

    def sync(self):
        """Bring the memory back to its latest step (after a backward pass rewound it)."""
        if self.mem.position != self.mem.latest:
            self.mem.rewind(self.mem.latest)

    def clear_grad(self):
        for b in range(self.mem.batch_size):
            K.grad_clear(self.slot[b], self.owner[b], self.count[b])

    def reserve(self, rows):
        """Room for ``rows`` more accumulator slots per batch element."""
        need = int(self.count.max()) + rows
        b, cap, w = self.store.shape
        if need > cap:
            cap = max(need, 2 * cap)
            store = np.zeros((b, cap, w))
            store[:, : self.store.shape[1]] = self.store
            owner = np.zeros((b, cap), np.int64)
            owner[:, : self.owner.shape[1]] = self.owner
            self.store, self.owner = store, owner

    def grad_rows(self, b):
        """(rows, dL/dM rows) currently held for batch element ``b`` (copies)."""
        n = int(self.count[b, 0])
        return self.owner[b][:n].copy(), self.store[b][:n].copy()


class AccessState(NamedTuple):
    """Recurrent state of :class:`samcpu.SparseAccess`."""

    handle: MemoryHandle  #: the memory and its gradient accumulator
    weights: torch.Tensor  #: w^R_{t-1} (B, H, K), the last read weights
    token: torch.Tensor  #: 0-d tensor chaining the steps for autograd
    position: int  #: steps applied when this state was made
    epoch: int  #: the handle's episode when this state was made


def _forward(ctx, handle, position, token, query, strength, add, write_gate, interp_gate):
    """The memory step of both Functions: sync, check the state, step, fill ``ctx``."""
    mem = handle.mem
    handle.sync()
    if mem.position != position:
        raise RuntimeError(f"this state is stale: it was made at step {position} but the memory "
                           f"is at step {mem.position}; continue from the latest state")
    res = mem.step(*(x.detach().cpu().numpy() for x in (query, strength, add, write_gate, interp_gate)))
    ctx.handle = handle
    ctx.position = mem.position
    ctx.first = not token.requires_grad  # the first step of this graph: backward ends here
    ctx.epoch = handle.epoch
    ctx.set_materialize_grads(False)
    return res


def _backward(ctx, query, strength, add, write_gate, interp_gate, g_reads, g_weights, g_token):
    """Rewind to the step, add its read and write gradients to the accumulator; returns the
    gradients (query, strength, add, write_gate, interp_gate, prev_weights) as float64 arrays."""
    handle, t = ctx.handle, ctx.position
    mem = handle.mem
    if handle.epoch != ctx.epoch:
        raise RuntimeError("backward through a memory that has been reset since this step")
    if g_token is None:  # no later step contributed: a backward pass starts here
        handle.clear_grad()
    try:
        mem.rewind(t)
        rec = mem.step_record(t)
    except ValueError as e:
        raise RuntimeError(f"cannot rewind to step {t} for backward ({e}); was "
                           "samcpu.detach(state) called before backward?") from None
    b, h, w = query.shape
    k = rec["rows"].shape[2]
    g_reads = np.zeros((b, h, w)) if g_reads is None else g_reads.detach().cpu().numpy().reshape(b, h, w)
    g_weights = np.zeros((b, h, k)) if g_weights is None else g_weights.detach().cpu().numpy()
    out = [np.empty((b, h, w)), np.empty((b, h)), np.empty((b, h, w)), np.empty((b, h)),
           np.empty((b, h)), np.empty((b, h, k))]
    handle.reserve(h * (2 * k + 1))
    K.batch_step_backward(mem._memory, rec["rows"], rec["weights"], query, strength, g_reads,
                          g_weights, np.ascontiguousarray(rec["lra"]), rec["prev_rows"],
                          rec["prev_weights"], add, write_gate, interp_gate, EPS, handle.slot,
                          handle.store, handle.owner, handle.count, *out)
    if ctx.first:  # the pass is over: back to the latest step, ready to go on
        handle.sync()
    return out


class SparseStep(torch.autograd.Function):
    """One step of the sparse access; see the module docstring."""

    @staticmethod
    def forward(ctx, handle, position, query, strength, add, write_gate, interp_gate, prev_weights, token):
        res = _forward(ctx, handle, position, token, query, strength, add, write_gate, interp_gate)
        ctx.save_for_backward(query, strength, add, write_gate, interp_gate)
        return torch.from_numpy(res.reads), torch.from_numpy(res.weights.copy()), token.new_zeros(())

    @staticmethod
    def backward(ctx, g_reads, g_weights, g_token):
        saved = ctx.saved_tensors
        out = _backward(ctx, *(x.detach().cpu().numpy() for x in saved), g_reads, g_weights, g_token)
        grads = [torch.from_numpy(o).to(saved[0].dtype) for o in out]
        return (None, None, *grads, torch.zeros(()))


def split_interface(interface, word_size):
    """The controller's raw interface (B, H, 2W+3) = [q, a, beta^, alpha^, gamma^] per head as
    (query, strength = 1 + softplus(beta^), add, write_gate = sigmoid(alpha^),
    interp_gate = sigmoid(gamma^)) (DESIGN.md section 1, heads in the controller)."""
    w = word_size
    return (interface[..., :w], 1.0 + F.softplus(interface[..., 2 * w]), interface[..., w:2 * w],
            torch.sigmoid(interface[..., 2 * w + 1]), torch.sigmoid(interface[..., 2 * w + 2]))


class SparseInterfaceStep(torch.autograd.Function):
    """:class:`SparseStep` fused with the interface nonlinearities, for SAM: one autograd node
    per step instead of a dozen (slices, softplus, sigmoids, reshape), which is most of the
    memory a step keeps for backward beyond the LSTM's own. Input: the raw interface
    (B, H, 2W+3) (see :func:`split_interface`); output: reads as (B, H*W), weights, token."""

    @staticmethod
    def forward(ctx, handle, position, interface, prev_weights, token):
        with torch.no_grad():
            parts = split_interface(interface, handle.mem.word_size)
        res = _forward(ctx, handle, position, token, *parts)
        ctx.save_for_backward(interface)
        b, h, w = res.reads.shape
        return torch.from_numpy(res.reads).view(b, h * w), torch.from_numpy(res.weights.copy()), token.new_zeros(())

    @staticmethod
    def backward(ctx, g_reads, g_weights, g_token):
        (interface,) = ctx.saved_tensors
        w = ctx.handle.mem.word_size
        with torch.no_grad():
            query, strength, add, write_gate, interp_gate = split_interface(interface, w)
            grads = _backward(ctx, *(x.cpu().numpy() for x in (query, strength, add, write_gate, interp_gate)),
                              g_reads, g_weights, g_token)
            g_q, g_beta, g_a, g_alpha, g_gamma, g_prev = (torch.from_numpy(x) for x in grads)
            # the derivatives autograd would take: torch's softplus is the identity above 20, and
            # sigmoid's derivative comes from its output y as y (1 - y)
            x = interface[..., 2 * w]
            d_beta = torch.where(x > 20, torch.ones_like(x), torch.sigmoid(x))
            g = torch.cat([g_q, g_a, (g_beta * d_beta)[..., None],
                           (g_alpha * write_gate * (1 - write_gate))[..., None],
                           (g_gamma * interp_gate * (1 - interp_gate))[..., None]], -1)
        dtype = interface.dtype
        return None, None, g.to(dtype), g_prev.to(dtype), torch.zeros(())


def initial_state(memory):
    """The state of a fresh (or just reset) SparseMemory wrapped for autograd."""
    handle = memory if isinstance(memory, MemoryHandle) else MemoryHandle(memory)
    m = handle.mem
    dtype = torch.float64 if m.dtype == np.float64 else torch.float32
    weights = torch.zeros((m.batch_size, m.num_heads, m.k), dtype=dtype)
    return AccessState(handle, weights, torch.zeros((), dtype=dtype), m.position, handle.epoch)


def step(state, query, strength, add, write_gate, interp_gate):
    """Apply one differentiable step; returns (reads (B, H, W), new state)."""
    handle = state.handle
    if state.epoch != handle.epoch:
        raise RuntimeError("this state belongs to an episode before the memory was reset")
    reads, weights, token = SparseStep.apply(handle, state.position, query, strength, add, write_gate,
                                             interp_gate, state.weights, state.token)
    return reads, AccessState(handle, weights, token, handle.mem.position, handle.epoch)


def step_interface(state, interface):
    """One differentiable step from the controller's raw interface (B, H, 2W+3) (see
    :func:`split_interface`); returns (reads (B, H*W), new state). One autograd node."""
    handle = state.handle
    if state.epoch != handle.epoch:
        raise RuntimeError("this state belongs to an episode before the memory was reset")
    m = handle.mem
    want = (m.batch_size, m.num_heads, 2 * m.word_size + 3)
    if not isinstance(interface, torch.Tensor) or tuple(interface.shape) != want:
        got = tuple(interface.shape) if isinstance(interface, torch.Tensor) else type(interface).__name__
        raise ValueError(f"interface has shape {got} but expected {want} "
                         "(batch_size, num_heads, 2 * word_size + 3)")
    reads, weights, token = SparseInterfaceStep.apply(handle, state.position, interface, state.weights, state.token)
    return reads, AccessState(handle, weights, token, handle.mem.position, handle.epoch)


def detach(state):
    """Truncated BPTT: keep the memory contents, cut the history (and free the journal).

    Run backward on the graph that led to ``state`` before detaching it: backward needs the
    journal that this drops."""
    handle = state.handle
    handle.sync()
    if state.position != handle.mem.position:
        raise RuntimeError("detach needs the latest state of the memory")
    handle.mem.clear_journal()
    return AccessState(handle, state.weights.detach(), torch.zeros_like(state.token), state.position, state.epoch)


__all__ = ["AccessState", "MemoryHandle", "SparseInterfaceStep", "SparseMemory", "SparseStep", "detach",
           "initial_state", "split_interface", "step", "step_interface"]
