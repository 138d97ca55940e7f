"""Zero-filled arrays whose pages cost nothing until written.

Anonymous private mappings (MAP_NORESERVE on Linux) or a sparse file: a 100M-row memory
is created instantly and its resident size grows with the rows touched, not with N.
"""
import mmap
import os

import numpy as np

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if os.uname().sysname == "Linux" else 0)


def lazy_zeros(shape, dtype):
    """An anonymous, zero-filled, lazily committed array of ``shape`` and ``dtype``."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
    buf = mmap.mmap(-1, max(size, 1), flags=flags)
    return np.frombuffer(buf, dtype=dtype, count=size // dtype.itemsize).reshape(shape)


def file_zeros(path, shape, dtype):
    """A zero-filled array backed by a new sparse file at ``path`` (which must not exist)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    with open(path, "xb") as f:
        f.truncate(max(size, 1))
    return np.memmap(path, dtype=dtype, mode="r+", shape=tuple(shape))
