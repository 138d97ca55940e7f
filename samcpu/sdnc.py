"""torch modules of the Sparse DNC (DESIGN.md section 5): SparseTemporalAccess (the memory
alone) and SDNC (LSTM controller + memory), on SAM's bridge and controller.

The controller is SAM's with three more interface values per head, the read-mode logits:
pi_h = softmax(logits) = (backward, content, forward). Gradients reach the mode logits and,
through the forward and backward weightings, the previous read weights; link values and
precedence carry none (as in the paper).
"""
import torch

from . import torch_bridge
from ._util import check_int
from .nn import SparseAccess, _MemoryNetwork
from .temporal import MAX_LINK_K, SparseTemporalMemory


class SparseTemporalAccess(SparseAccess):
    """The Sparse DNC's memory for any controller: :class:`samcpu.SparseAccess` plus sparse
    temporal links and read modes.

    ``state = access.initial_state(batch_size)``, then
    ``reads, state = access(query, strength, add, write_gate, interp_gate, read_modes, state)``
    with read_modes (B, H, 3) = (backward, content, forward) probabilities (e.g. a softmax of
    three logits). The state's weights are (B, H, R), R = k + 2 link_k. Everything else as
    :class:`samcpu.SparseAccess`.
    """

    def __init__(self, num_slots, word_size, num_heads=1, k=8, link_k=8, index="hnsw", dtype=torch.float32,
                 path=None, index_options=None):
        link_k = check_int("link_k", link_k, maximum=MAX_LINK_K)
        super().__init__(num_slots, word_size, num_heads, k, index, dtype, path, index_options)
        self.link_k = link_k

    def _make_memory(self, *args, **kwargs):
        return SparseTemporalMemory(*args, link_k=self.link_k, **kwargs)

    def forward(self, query, strength, add, write_gate, interp_gate, read_modes, state):
        return torch_bridge.step(state, query, strength, add, write_gate, interp_gate, read_modes)

    def step_interface(self, interface, state):
        raise TypeError("SparseTemporalAccess takes its inputs one by one: "
                        "access(query, strength, add, write_gate, interp_gate, read_modes, state)")


class SDNC(_MemoryNetwork):
    """Sparse DNC network: LSTM controller + :class:`SparseTemporalAccess`; used like
    :class:`samcpu.SAM` (``y, state = model(x, state)``)."""

    extra_interface = 3

    #: None, or a function applied to the read modes pi (B, H, 3) = (backward, content,
    #: forward) of every step before the memory sees them. ``model.modes_hook =
    #: samcpu.sdnc.content_only`` is the read-mode ablation (does the trained SDNC use its links?).
    modes_hook = None

    def __init__(self, input_size, output_size, hidden_size=100, num_slots=1024, word_size=32,
                 num_heads=4, k=4, link_k=8, index="hnsw", batch_first=False, dtype=torch.float32, path=None,
                 index_options=None):
        access = SparseTemporalAccess(num_slots, word_size, num_heads, k, link_k, index, dtype, path,
                                      index_options)
        super().__init__(access, input_size, output_size, hidden_size, word_size, num_heads,
                         batch_first, dtype)

    def _access_step(self, h, state):
        iface = self._interface(h)
        w = self.word_size
        parts = torch_bridge.split_interface(iface[..., : 2 * w + 3], w)
        modes = torch.softmax(iface[..., 2 * w + 3:], -1)
        if self.modes_hook is not None:
            modes = self.modes_hook(modes)
        r, state = self.access(*parts, modes, state)
        return r.reshape(r.shape[0], -1), state


def content_only(modes):
    """Read modes (0, 1, 0) of ``modes``' shape and dtype: reads by content alone, as SAM's."""
    out = torch.zeros_like(modes)
    out[..., 1] = 1
    return out


__all__ = ["SDNC", "SparseTemporalAccess", "content_only"]
