"""samcpu: Sparse Access Memory (Rae et al., NeurIPS 2016) for huge memories on CPU."""
from . import index, kernels
from .memory import MemoryFileError, SparseMemory, StepResult
from .nn import DAM, SAM, SparseAccess, detach

__version__ = "0.1.0"
__all__ = ["DAM", "MemoryFileError", "SAM", "SparseAccess", "SparseMemory", "StepResult", "detach",
           "index", "kernels"]
