"""samcpu: Sparse Access Memory (Rae et al., NeurIPS 2016) for huge memories on CPU."""
from . import index, kernels
from .memory import MemoryFileError, SparseMemory, StepResult

__version__ = "0.1.0"
__all__ = ["MemoryFileError", "SparseMemory", "StepResult", "index", "kernels"]
