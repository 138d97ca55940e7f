"""Numba kernels on plain arrays: no torch, no Python objects, no input checks.

Each function implements one equation of DESIGN.md section 1; ``step`` assembles them into
batch-level phases. Call them directly from NumPy at your own risk: they trust their input.
"""
from . import links
from .backward import batch_step_backward, grad_clear, grad_slot, step_backward
from .candidates import rescore_candidates
from .read import read_backward, softmax_read
from .ring import lra_rows, ring_rows, ring_touch, ring_untouch
from .rowset import (batch_rowset_add, batch_rowset_truncate, rowset_add, rowset_clear, rowset_truncate,
                     unwritten_rows)
from .similarity import cosine_similarity, cosine_topk, norm_eps, scan_topk, scan_topk_fast, topk_insert
from .step import exact_query, read_phase, redo_steps, undo_steps, usage_phase, write_phase
from .write import accessed_rows, journal_save, journal_swap, sparse_write, write_rows

__all__ = [
    "accessed_rows", "links", "batch_rowset_add", "batch_rowset_truncate", "batch_step_backward",
    "grad_clear",
    "grad_slot", "step_backward", "cosine_similarity", "cosine_topk", "exact_query", "journal_save",
    "journal_swap", "lra_rows", "norm_eps", "read_backward", "read_phase", "redo_steps",
    "rescore_candidates", "ring_rows", "ring_touch", "ring_untouch", "rowset_add", "rowset_clear",
    "rowset_truncate", "scan_topk", "scan_topk_fast",
    "softmax_read", "sparse_write", "topk_insert", "undo_steps", "unwritten_rows",
    "usage_phase", "write_phase", "write_rows",
]
