"""ANN indexes behind one small interface (:class:`Index`)."""
from .base import Index, WrittenRows
from .exact import ExactIndex

INDEXES = {"exact": ExactIndex}

__all__ = ["ExactIndex", "Index", "INDEXES", "WrittenRows"]
