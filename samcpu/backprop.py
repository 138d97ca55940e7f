"""Backpropagation through time over a :class:`samcpu.SparseMemory`, in NumPy.

Step t maps (M_{t-1}, w^R_{t-1}) and its inputs (q, beta, a, alpha, gamma) to (M_t, r_t, w^R_t)
(DESIGN.md section 1). Its backward needs dL/dM_t, which is sparse (only rows that later steps
wrote or read have a gradient): a :class:`MemoryGradient` holds it as rows -> vectors.
:meth:`samcpu.SparseMemory.backward_step` rewinds the memory to the state after step t (bit for
bit, from the journal), adds the read's gradient to the accumulator, returns the gradients of
the step's inputs (:class:`StepGradients`) and leaves dL/dM_{t-1} in the accumulator::

    grad = MemoryGradient(mem)                     # dL/dM_T = 0
    g_w = None                                     # dL/dw^R_T: nothing after the last step
    for t in range(mem.latest, mem.earliest, -1):  # T, T-1, ..., earliest + 1
        g = mem.backward_step(t, grad_reads[t - 1], g_w, *inputs[t - 1], grad)
        g_w = g.prev_weights                       # dL/dw^R_{t-1}, for step t - 1
    mem.replay()                                   # back to the latest step
    rows, dM = grad.rows(0)                        # dL/dM_{earliest} of batch element 0

The torch bridge (:mod:`samcpu.torch_bridge`) is this loop driven by autograd.
"""
from typing import NamedTuple

import numpy as np

from . import kernels as K
from ._storage import lazy_zeros


class StepGradients(NamedTuple):
    """Gradients of one step's inputs (float64), as returned by
    :meth:`samcpu.SparseMemory.backward_step`."""

    query: np.ndarray  #: dL/dq (B, H, W)
    strength: np.ndarray  #: dL/dbeta (B, H)
    add: np.ndarray  #: dL/da (B, H, W)
    write_gate: np.ndarray  #: dL/dalpha (B, H)
    interp_gate: np.ndarray  #: dL/dgamma (B, H)
    prev_weights: np.ndarray  #: dL/dw^R_{t-1} (B, H, K): the previous step's ``grad_weights``


class MemoryGradient:
    """dL/dM for a batch of memories of shape (B, N, W), held sparsely in float64.

    Per batch element b: ``slot[b]`` (N,) int64 is a row's slot + 1 (0: no gradient; lazily
    mapped, so it costs the rows touched, not N); ``store[b, :count[b, 0]]`` (cap, W) float64
    are the gradient vectors of the rows ``owner[b, :count[b, 0]]`` (cap,) int64. A row listed
    may hold a zero vector (an erased row). Pass it to
    :meth:`samcpu.SparseMemory.backward_step`; ``clear`` empties it for a new backward pass.

    Parameters
    ----------
    memory : SparseMemory, or a (batch_size, num_slots, word_size) tuple
    """

    def __init__(self, memory):
        b, n, w = memory if isinstance(memory, tuple) else (memory.batch_size, memory.num_slots,
                                                             memory.word_size)
        self.shape = (int(b), int(n), int(w))
        self.slot = lazy_zeros((b, n), np.int64)
        self.store = np.zeros((b, 64, w))
        self.owner = np.zeros((b, 64), np.int64)
        self.count = np.zeros((b, 1), np.int64)

    def clear(self):
        """Forget every gradient (O(rows held))."""
        for b in range(self.shape[0]):
            K.grad_clear(self.slot[b], self.owner[b], self.count[b])

    def reserve(self, rows):
        """Make room for ``rows`` more rows per batch element (grows geometrically)."""
        need = int(self.count.max()) + int(rows)
        b, cap, w = self.store.shape
        if need > cap:
            cap = max(need, 2 * cap)
            store = np.zeros((b, cap, w))
            store[:, : self.store.shape[1]] = self.store
            owner = np.zeros((b, cap), np.int64)
            owner[:, : self.owner.shape[1]] = self.owner
            self.store, self.owner = store, owner

    def rows(self, b):
        """(rows (R,) int64, dL/dM at those rows (R, W) float64) of batch element ``b``, in the
        order they got a gradient (copies). Rows not listed have gradient zero."""
        integer = isinstance(b, (int, np.integer)) and not isinstance(b, (bool, np.bool_))
        if not integer or not 0 <= b < self.shape[0]:
            raise ValueError(f"b must be an integer in [0, {self.shape[0] - 1}], got {b!r}")
        n = int(self.count[b, 0])
        return self.owner[b, :n].copy(), self.store[b, :n].copy()

    def dense(self):
        """dL/dM as a dense (B, N, W) float64 array: for small memories (tests, inspection)."""
        out = np.zeros(self.shape)
        for b in range(self.shape[0]):
            rows, grads = self.rows(b)
            out[b, rows] = grads
        return out


__all__ = ["MemoryGradient", "StepGradients"]
