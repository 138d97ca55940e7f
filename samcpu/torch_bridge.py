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


class SparseStep(torch.autograd.Function):
    """One step of the sparse access; see the module docstring."""

    @staticmethod
    def forward(ctx, handle, position, query, strength, add, write_gate, interp_gate, prev_weights, token):
        mem = handle.mem
        handle.sync()
        if mem.position != position:
            raise RuntimeError(f"this state is stale: it was made at step {position} but the memory "
                               f"is at step {mem.position}; continue from the latest state")
        arrays = [x.detach().cpu().numpy() for x in (query, strength, add, write_gate, interp_gate)]
        res = mem.step(*arrays)
        ctx.handle = handle
        ctx.position = mem.position
        ctx.first = not token.requires_grad  # the first step of this graph: backward ends here
        ctx.epoch = handle.epoch
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(query, strength, add, write_gate, interp_gate)
        reads = torch.from_numpy(res.reads)
        weights = torch.from_numpy(res.weights.copy())
        return reads, weights, token.new_zeros(())

    @staticmethod
    def backward(ctx, g_reads, g_weights, g_token):
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
        query, strength, add, write_gate, interp_gate = (x.detach().cpu().numpy() for x in ctx.saved_tensors)
        b, h, w = query.shape
        k = rec["rows"].shape[2]
        g_reads = np.zeros((b, h, w)) if g_reads is None else g_reads.detach().cpu().numpy()
        g_weights = np.zeros((b, h, k)) if g_weights is None else g_weights.detach().cpu().numpy()
        out = [np.empty((b, h, w)), np.empty((b, h)), np.empty((b, h, w)), np.empty((b, h)),
               np.empty((b, h)), np.empty((b, h, k))]
        handle.reserve(h * (2 * k + 1))
        K.batch_step_backward(mem._memory, rec["rows"], rec["weights"], query, strength, g_reads,
                              g_weights, np.ascontiguousarray(rec["lra"]), rec["prev_rows"],
                              rec["prev_weights"], add, write_gate, interp_gate, EPS, handle.slot,
                              handle.store, handle.owner, handle.count, *out)
        dtype = ctx.saved_tensors[0].dtype
        grads = [torch.from_numpy(o).to(dtype) for o in out]
        if ctx.first:  # the pass is over: back to the latest step, ready to go on
            handle.sync()
        return (None, None, *grads, torch.zeros(()))


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


__all__ = ["AccessState", "MemoryHandle", "SparseMemory", "SparseStep", "detach", "initial_state", "step"]
