"""ANN indexes behind one small interface (:class:`Index`)."""
from .base import Index, WrittenRows
from .exact import ExactIndex
from .hnsw import HNSWIndex

INDEXES = {"exact": ExactIndex, "hnsw": HNSWIndex}

__all__ = ["ExactIndex", "HNSWIndex", "Index", "INDEXES", "WrittenRows"]
