"""torch modules: SparseAccess (the memory alone), SAM and DAM (LSTM controller + memory).

SAM and DAM are used like ``torch.nn.LSTM``: ``y, state = model(x, state)`` with x of shape
(T, B, input_size), or (B, T, input_size) with ``batch_first=True``.
"""
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import torch_bridge
from ._util import check_int
from .memory import SparseMemory


def _numpy_dtype(dtype, what):
    if dtype not in torch_bridge.DTYPES:
        raise ValueError(f"{what} must be torch.float32 or torch.float64, got {dtype}")
    return np.float64 if dtype == torch.float64 else np.float32


class SparseAccess(nn.Module):
    """Sparse Access Memory for any controller (DESIGN.md sections 1 and 4).

    ``state = access.initial_state(batch_size)``, then
    ``reads, state = access(query, strength, add, write_gate, interp_gate, state)`` with
    query (B, H, W), strength (B, H) > 0, add (B, H, W), gates (B, H) in [0, 1]; reads
    (B, H, W). Differentiable in all five inputs and, through the state, across time;
    inputs must be float32 or float64 tensors.

    The memory is reused between episodes: ``initial_state`` resets a memory in O(rows
    touched) once no state and no autograd graph of its episode is alive (each holds the
    episode's lease, :class:`samcpu.torch_bridge.Lease`); a state you hold is never reset
    under you. The memory's dtype follows the module's like a parameter's: ``.double()``,
    ``.float()`` or ``.to(dtype)`` apply from the next ``initial_state``.
    ``path``: a file name prefix for file-backed memories (scratch files ``path.0``,
    ``path.1``, ... in an existing folder, one per memory made, unlinked as soon as mapped so
    that none outlives the module; None: anonymous memory).
    """

    def __init__(self, num_slots, word_size, num_heads=1, k=8, index="hnsw", dtype=torch.float32,
                 path=None, index_options=None):
        super().__init__()
        _numpy_dtype(dtype, "dtype")
        if path is not None:
            try:
                path = os.fspath(path)
            except TypeError:
                raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise ValueError(f"path {path!r} is in {folder!r}, which is not an existing folder")
        self.num_slots, self.word_size, self.num_heads, self.k = num_slots, word_size, num_heads, k
        self.index, self.path, self.index_options = index, path, index_options
        # checks the arguments now rather than at the first initial_state
        SparseMemory(1, num_slots, word_size, num_heads, k, index="exact")
        # follows .double() / .to(dtype) as parameters do; not saved in state_dict
        self.register_buffer("_dtype_probe", torch.empty(0, dtype=dtype), persistent=False)
        self._pool = []  # memories of earlier episodes, reused once no lease on them is alive
        self._made = 0
        self._handle = None

    pool_size = 3

    @property
    def dtype(self):
        """The dtype of the memories (and states) made from now on."""
        return self._dtype_probe.dtype

    def initial_state(self, batch_size):
        """An empty memory for a new episode, independent of earlier states.

        A memory of an earlier episode is reset and reused (O(rows touched)) once no state and
        no autograd graph of that episode is alive; otherwise a new one is made, so an old
        state can still step and an old graph can still be backpropagated. In a training loop
        two memories alternate."""
        batch_size = check_int("batch_size", batch_size)
        dtype = _numpy_dtype(self.dtype, f"{type(self).__name__}'s dtype (after .to(), .half(), ...)")
        for h in self._pool:
            if h.mem.batch_size == batch_size and h.mem.dtype == dtype and not h.in_use:
                h.reset()
                break
        else:
            h = torch_bridge.MemoryHandle(self._new_memory(batch_size, dtype))
            self._pool = [h] + self._pool[: self.pool_size - 1]
        self._handle = h
        return torch_bridge.initial_state(h)

    def _new_memory(self, batch_size, dtype):
        args = (batch_size, self.num_slots, self.word_size, self.num_heads, self.k)
        kwargs = dict(index=self.index, index_options=self.index_options, dtype=dtype)
        if self.path is None:
            return self._make_memory(*args, **kwargs)
        while os.path.lexists(f"{self.path}.{self._made}"):  # not ours (a killed run's?): leave it
            self._made += 1
        path = f"{self.path}.{self._made}"
        self._made += 1
        try:
            return self._make_memory(*args, path=path, **kwargs)
        finally:  # the mapping keeps the file's pages; the name goes now, so no file outlives us
            if os.path.lexists(path):
                os.unlink(path)

    def _make_memory(self, *args, **kwargs):
        """A new memory of this module's kind (SparseMemory here)."""
        return SparseMemory(*args, **kwargs)

    @property
    def memory(self):
        """The :class:`SparseMemory` of the latest episode (None before ``initial_state``)."""
        return None if self._handle is None else self._handle.mem

    def forward(self, query, strength, add, write_gate, interp_gate, state):
        return torch_bridge.step(state, query, strength, add, write_gate, interp_gate)

    def step_interface(self, interface, state):
        """The same step from a controller's raw interface (B, H, 2W+3), per head
        [q, a, beta^, alpha^, gamma^] with strength 1 + softplus(beta^) and gates sigmoid(.),
        as one autograd node (see :func:`samcpu.torch_bridge.split_interface`).
        Returns (reads (B, H*W), state)."""
        return torch_bridge.step_interface(state, interface)


class ControllerState(NamedTuple):
    lstm: tuple  #: (h, c), each (B, hidden_size)
    reads: torch.Tensor  #: r_{t-1} (B, H * W)
    access: object  #: the access module's state


class _MemoryNetwork(nn.Module):
    """LSTM controller reading [x_t, r_{t-1}]; interface q, beta, a, alpha, gamma per head;
    output y_t = Linear([h_t, r_t])."""

    #: interface values per head beyond SAM's 2W + 3 (the SDNC's three read-mode logits)
    extra_interface = 0

    def __init__(self, access, input_size, output_size, hidden_size, word_size, num_heads,
                 batch_first, dtype):
        super().__init__()
        self.access = access
        self.batch_first = batch_first
        self.word_size, self.num_heads = word_size, num_heads
        self.cell = nn.LSTMCell(input_size + num_heads * word_size, hidden_size, dtype=dtype)
        self.interface = nn.Linear(hidden_size, num_heads * (2 * word_size + 3 + self.extra_interface),
                                   dtype=dtype)
        self.output = nn.Linear(hidden_size + num_heads * word_size, output_size, dtype=dtype)
        self.hidden_size = hidden_size

    #: None, or a function applied to the reads r_t (B, H * W) of every step before the output
    #: layer and the next step's controller see them; the memory is read and written as usual.
    #: ``model.reads_hook = torch.zeros_like`` is the reads ablation (is the memory used?).
    reads_hook = None

    @property
    def dtype(self):
        """The parameters' dtype, which states and memories follow (after ``.double()`` too)."""
        return self.output.weight.dtype

    def initial_state(self, batch_size):
        batch_size = check_int("batch_size", batch_size)
        z = torch.zeros(batch_size, self.hidden_size, dtype=self.dtype)
        reads = torch.zeros(batch_size, self.num_heads * self.word_size, dtype=self.dtype)
        return ControllerState((z, z.clone()), reads, self.access.initial_state(batch_size))

    def _interface(self, h):
        """The raw interface (B, H, 2W+3 (+ extra)): per head [q, a, beta^, alpha^, gamma^, ...]."""
        per_head = 2 * self.word_size + 3 + self.extra_interface
        return self.interface(h).view(h.shape[0], self.num_heads, per_head)

    def _access_step(self, h, state):
        """Read the memory from the controller's output h: (reads (B, H*W), access state)."""
        parts = torch_bridge.split_interface(self._interface(h), self.word_size)
        r, state = self.access(*parts, state)
        return r.reshape(r.shape[0], -1), state

    def forward(self, x, state=None):
        if x.dim() != 3:
            raise ValueError(f"x must have 3 dimensions (time, batch, features), got shape {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        if state is None:
            state = self.initial_state(x.shape[1])
        (h, c), reads, access_state = state
        ys = []
        for x_t in x:
            h, c = self.cell(torch.cat([x_t, reads], 1), (h, c))
            reads, access_state = self._access_step(h, access_state)
            if self.reads_hook is not None:
                reads = self.reads_hook(reads)
            ys.append(self.output(torch.cat([h, reads], 1)))
        y = torch.stack(ys)
        if self.batch_first:
            y = y.transpose(0, 1)
        return y, ControllerState((h, c), reads, access_state)


class SAM(_MemoryNetwork):
    """Sparse Access Memory network: LSTM controller + :class:`SparseAccess`."""

    def __init__(self, input_size, output_size, hidden_size=100, num_slots=1024, word_size=32,
                 num_heads=4, k=4, index="hnsw", batch_first=False, dtype=torch.float32, path=None,
                 index_options=None):
        access = SparseAccess(num_slots, word_size, num_heads, k, index, dtype, path, index_options)
        super().__init__(access, input_size, output_size, hidden_size, word_size, num_heads,
                         batch_first, dtype)

    def _access_step(self, h, state):
        # fused: one autograd node per step for the interface nonlinearities and the access
        return self.access.step_interface(self._interface(h), state)


class DAM(_MemoryNetwork):
    """Dense Access Memory: the same network with softmax reads over all N rows and dense
    writes in plain torch autograd (the paper's dense baseline; cost grows with N and T)."""

    def __init__(self, input_size, output_size, hidden_size=100, num_slots=64, word_size=32,
                 num_heads=4, k=None, index=None, batch_first=False, dtype=torch.float32):
        from .dense import DenseAccess  # DenseAccess has SparseAccess's calls: no adapter needed

        if k is not None or index is not None:
            raise ValueError(f"DAM reads all N rows with a softmax: k and index must be None, "
                             f"got k={k!r}, index={index!r}")
        access = DenseAccess(num_slots, word_size, num_heads, dtype=dtype)
        super().__init__(access, input_size, output_size, hidden_size, word_size, num_heads,
                         batch_first, dtype)


def detach(state):
    """Truncated BPTT: the same state with its history cut (memory contents kept).

    Works on a :class:`ControllerState` (SAM, DAM) or an access state."""
    if isinstance(state, ControllerState):
        (h, c), reads, access = state
        return ControllerState((h.detach(), c.detach()), reads.detach(), detach(access))
    if isinstance(state, torch_bridge.AccessState):
        return torch_bridge.detach(state)
    return type(state)(*(x.detach() if isinstance(x, torch.Tensor) else x for x in state))
