"""torch.autograd over SparseMemory: forward writes in place and journals; backward rewinds.

Each step is one autograd node (:class:`SparseStep`). Its inputs are the five controller
outputs, the previous step's read weights w^R_{t-1} (so gradients reach the previous read
through the write) and a token: a 0-d tensor that chains the steps, so that step t's backward
runs after step t+1's. The memory's gradient does not travel through autograd: it lives in a
:class:`samcpu.backprop.MemoryGradient` held by the :class:`MemoryHandle`, and each step's
backward is :meth:`samcpu.SparseMemory.backward_step` (rewind the memory to the state after
that step, add the read's gradient, compute the write's, leave dL/dM_{t-1} behind). This
module only converts tensors and decides when the accumulator starts empty. The graph's first
step replays the memory to its latest step when its backward is done.

Nothing is saved from the live memory (NumPy writes would not bump autograd's version
counters). A backward pass that stops short of the graph's first step (``autograd.grad`` of an
intermediate input) leaves the memory rewound; the next forward step replays it first. A step
whose token receives no gradient is where a backward pass starts (no later step contributed),
so the accumulator is emptied there; this keeps partial losses, unused steps and
``retain_graph=True`` passes right.

Ownership: every state and every graph node of an episode holds that episode's :class:`Lease`;
the handle keeps only a weak reference to it. A memory is free for a new episode exactly when
no state and no graph of its current episode is alive (:attr:`MemoryHandle.in_use`).
"""
import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from .backprop import MemoryGradient
from .memory import SparseMemory

#: the tensor dtypes the memory computes in
DTYPES = (torch.float32, torch.float64)


class Lease:
    """An episode's claim on a memory, held by its states and graph nodes (see the module
    docstring). ``epoch`` numbers the episodes of one memory, for messages."""

    __slots__ = ("epoch", "__weakref__")

    def __init__(self, epoch):
        self.epoch = epoch


class MemoryHandle:
    """A SparseMemory, its gradient accumulator (``grad``) and the lease of its episode."""

    def __init__(self, memory):
        self.mem = memory
        self.grad = MemoryGradient(memory)
        self.epoch = 0
        self._lease = None  # weakref.ref to the current episode's Lease

    @property
    def lease(self):
        """The current episode's :class:`Lease`, or None when nothing holds it any more."""
        return None if self._lease is None else self._lease()

    @property
    def in_use(self):
        """True while a state or an autograd graph of the current episode is alive."""
        return self.lease is not None

    def claim(self):
        """Start a new episode on the memory as it is: a new lease (older states and graphs
        are refused from now on) and an empty gradient."""
        self.epoch += 1
        lease = Lease(self.epoch)
        self._lease = weakref.ref(lease)
        self.grad.clear()
        return lease

    def reset(self):
        """Empty the memory for a new episode (O(rows touched)); refused while in use."""
        if self.in_use:
            raise RuntimeError("this memory is in use by a live state or autograd graph")
        self.mem.reset()

    def sync(self):
        """Bring the memory back to its latest step (after a backward pass rewound it)."""
        if self.mem.position != self.mem.latest:
            self.mem.rewind(self.mem.latest)

    def check(self, lease):
        if lease is not self.lease:
            raise RuntimeError(f"this state or graph belongs to episode {lease.epoch} of its memory, which "
                               f"has since started episode {self.epoch}; use a state of the current episode")


class AccessState(NamedTuple):
    """Recurrent state of :class:`samcpu.SparseAccess`."""

    handle: MemoryHandle  #: the memory and its gradient accumulator
    weights: torch.Tensor  #: w^R_{t-1} (B, H, R), the last read weights (R = K for SAM)
    token: torch.Tensor  #: 0-d tensor chaining the steps for autograd
    position: int  #: steps applied when this state was made
    lease: Lease  #: the episode this state belongs to (keeps its memory from being reused)


def check_tensor(name, value):
    """Refuse what the memory cannot take before anything runs: not a tensor, or a dtype other
    than float32/float64 (float16 would pass the forward and fail in the backward)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in DTYPES:
        raise ValueError(f"{name} has dtype {value.dtype} but torch.float32 or torch.float64 is expected")


def _forward(ctx, handle, lease, position, token, *inputs):
    """The memory step of every Function: sync, check the state, step with ``inputs`` (SAM's
    five, or the SDNC's six with the read modes), fill ``ctx``."""
    mem = handle.mem
    handle.check(lease)
    handle.sync()
    if mem.position != position:
        raise RuntimeError(f"this state is stale: it was made at step {position} but the memory "
                           f"is at step {mem.position}; continue from the latest state")
    res = mem.step(*(x.detach().cpu().numpy() for x in inputs))
    ctx.handle, ctx.lease = handle, lease
    ctx.position = mem.position
    ctx.first = not token.requires_grad  # the first step of this graph: backward ends here
    ctx.set_materialize_grads(False)
    return res


def _backward(ctx, inputs, g_reads, g_weights, g_token):
    """One step's backward (:meth:`SparseMemory.backward_step`) from autograd's gradients;
    ``inputs`` are the step's inputs as arrays. Returns the memory's step gradients."""
    handle, t = ctx.handle, ctx.position
    mem = handle.mem
    handle.check(ctx.lease)
    if g_token is None:  # no later step contributed: a backward pass starts here
        handle.grad.clear()
    if not mem.earliest < t <= mem.latest:
        raise RuntimeError(f"cannot rewind to step {t} for backward (the journal holds steps "
                           f"{mem.earliest + 1} to {mem.latest}); was samcpu.detach(state) called "
                           "before backward?")
    b, h, w = mem.batch_size, mem.num_heads, mem.word_size
    g_reads = None if g_reads is None else g_reads.detach().cpu().numpy().reshape(b, h, w)
    g_weights = None if g_weights is None else g_weights.detach().cpu().numpy()
    # the inputs are the arrays step() checked in the forward pass: their values need no check
    grads = mem.backward_step(t, g_reads, g_weights, *inputs, handle.grad, check_inputs=False)
    if ctx.first:  # the pass is over: back to the latest step, ready to go on
        handle.sync()
    return grads


class SparseStep(torch.autograd.Function):
    """One step of the sparse access; see the module docstring. ``inputs``: the memory's step
    inputs (SAM's five; the SDNC's six, the read modes last); their gradients come back in the
    same order, then the previous read weights'."""

    @staticmethod
    def forward(ctx, handle, lease, position, prev_weights, token, *inputs):
        res = _forward(ctx, handle, lease, position, token, *inputs)
        ctx.save_for_backward(*inputs)
        return torch.from_numpy(res.reads), torch.from_numpy(res.weights.copy()), token.new_zeros(())

    @staticmethod
    def backward(ctx, g_reads, g_weights, g_token):
        saved = ctx.saved_tensors
        out = _backward(ctx, [x.detach().cpu().numpy() for x in saved], g_reads, g_weights, g_token)
        grads = [torch.from_numpy(o).to(x.dtype) for o, x in zip(out[:len(saved)], saved, strict=True)]
        return (None, None, None, torch.from_numpy(out.prev_weights).to(saved[0].dtype), torch.zeros(()),
                *grads)


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
    def forward(ctx, handle, lease, position, interface, prev_weights, token):
        with torch.no_grad():
            parts = split_interface(interface, handle.mem.word_size)
        res = _forward(ctx, handle, lease, position, token, *parts)
        ctx.save_for_backward(interface)
        b, h, w = res.reads.shape
        reads = torch.from_numpy(res.reads).view(b, h * w)
        return reads, torch.from_numpy(res.weights.copy()), token.new_zeros(())

    @staticmethod
    def backward(ctx, g_reads, g_weights, g_token):
        (interface,) = ctx.saved_tensors
        w = ctx.handle.mem.word_size
        with torch.no_grad():
            query, strength, add, write_gate, interp_gate = split_interface(interface, w)
            grads = _backward(ctx, [x.cpu().numpy() for x in (query, strength, add, write_gate, interp_gate)],
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
        return None, None, None, g.to(dtype), g_prev.to(dtype), torch.zeros(())


def initial_state(memory):
    """A state for a new episode on ``memory`` (a SparseMemory or a :class:`MemoryHandle`) as
    it is now (fresh or just reset): earlier states and graphs on it are refused from now on."""
    handle = memory if isinstance(memory, MemoryHandle) else MemoryHandle(memory)
    m = handle.mem
    lease = handle.claim()
    dtype = torch.float64 if m.dtype == np.float64 else torch.float32
    weights = torch.zeros((m.batch_size, m.num_heads, m.read_size), dtype=dtype)
    return AccessState(handle, weights, torch.zeros((), dtype=dtype), m.position, lease)


def step(state, query, strength, add, write_gate, interp_gate, read_modes=None):
    """Apply one differentiable step; returns (reads (B, H, W), new state). ``read_modes``
    (B, H, 3): the SDNC's read modes (for a :class:`samcpu.SparseTemporalMemory`; None for SAM)."""
    inputs = [("query", query), ("strength", strength), ("add", add), ("write_gate", write_gate),
              ("interp_gate", interp_gate)]
    if read_modes is not None:
        inputs.append(("read_modes", read_modes))
    for name, x in inputs:
        check_tensor(name, x)
    handle = state.handle
    handle.check(state.lease)
    wants_modes = handle.mem.read_size != handle.mem.k
    if wants_modes != (read_modes is not None):
        raise ValueError("read_modes must be given for a SparseTemporalMemory (the SDNC) and only for it")
    reads, weights, token = SparseStep.apply(handle, state.lease, state.position, state.weights, state.token,
                                             *(x for _, x in inputs))
    return reads, AccessState(handle, weights, token, handle.mem.position, state.lease)


def step_interface(state, interface):
    """One differentiable step from the controller's raw interface (B, H, 2W+3) (see
    :func:`split_interface`); returns (reads (B, H*W), new state). One autograd node."""
    check_tensor("interface", interface)
    handle = state.handle
    handle.check(state.lease)
    m = handle.mem
    want = (m.batch_size, m.num_heads, 2 * m.word_size + 3)
    if tuple(interface.shape) != want:
        raise ValueError(f"interface has shape {tuple(interface.shape)} but expected {want} "
                         "(batch_size, num_heads, 2 * word_size + 3)")
    reads, weights, token = SparseInterfaceStep.apply(handle, state.lease, state.position, interface,
                                                      state.weights, state.token)
    return reads, AccessState(handle, weights, token, handle.mem.position, state.lease)


def detach(state):
    """Truncated BPTT: keep the memory contents, cut the history (and free the journal).

    Run backward on the graph that led to ``state`` before detaching it: backward needs the
    journal that this drops."""
    handle = state.handle
    handle.check(state.lease)
    handle.sync()
    if state.position != handle.mem.position:
        raise RuntimeError("detach needs the latest state of the memory")
    handle.mem.clear_journal()
    token = torch.zeros_like(state.token)
    return AccessState(handle, state.weights.detach(), token, state.position, state.lease)


__all__ = ["AccessState", "Lease", "MemoryHandle", "SparseInterfaceStep", "SparseMemory", "SparseStep",
           "check_tensor", "detach", "initial_state", "split_interface", "step", "step_interface"]
