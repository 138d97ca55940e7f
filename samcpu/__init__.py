"""samcpu: Sparse Access Memory (Rae et al., NeurIPS 2016) for huge memories on CPU.

``import samcpu`` loads only the NumPy layer (:class:`SparseMemory`, the indexes, the
kernels, and the Sparse DNC's :class:`SparseTemporalMemory`). The torch modules (``SAM``,
``DAM``, ``SparseAccess``, ``detach``, ``SDNC``, ``SparseTemporalAccess``, the dense
baseline ``DNC`` and its ``DenseTemporalAccess``) and the submodules ``nn``, ``torch_bridge``,
``sdnc`` and ``dnc`` load torch on first use (PEP 562), so NumPy users pay
neither torch's import time nor its install.
"""
import importlib as _importlib
import typing as _typing

from . import index, kernels
from .memory import MemoryFileError, SparseMemory, StepResult
from .temporal import SparseTemporalMemory

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use
    from .dnc import DNC, DenseTemporalAccess
    from .nn import DAM, SAM, SparseAccess, detach
    from .sdnc import SDNC, SparseTemporalAccess

__version__ = "0.1.0"

#: public names loaded on first use, and the submodule that defines each
_LAZY = {"SAM": "nn", "DAM": "nn", "SparseAccess": "nn", "detach": "nn", "DNC": "dnc",
         "DenseTemporalAccess": "dnc", "SDNC": "sdnc", "SparseTemporalAccess": "sdnc"}
_LAZY_MODULES = ("nn", "torch_bridge", "dnc", "sdnc")

__all__ = ["DAM", "DNC", "DenseTemporalAccess", "MemoryFileError", "SAM", "SDNC", "SparseAccess",
           "SparseMemory", "SparseTemporalAccess", "SparseTemporalMemory", "StepResult", "detach", "index",
           "kernels"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _LAZY_MODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES))
