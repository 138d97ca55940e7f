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


def check_new_file(path, size):
    """``ValueError`` naming ``path`` unless a file of up to ``size`` bytes can be made there:
    ``path`` must not exist, its folder must, and that folder's filesystem must have ``size``
    bytes free. A mapped file that cannot get a page when a row is first written kills the
    process with SIGBUS, with no Python error, so the whole size is checked up front."""
    path = os.fspath(path)
    if os.path.lexists(path):
        raise ValueError(f"path {path!r} already exists; give a new file name "
                         "(use SparseMemory.load to reopen a saved memory)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path {path!r} is in a folder that does not exist ({folder})")
    try:
        st = os.statvfs(folder)
    except OSError as e:
        raise ValueError(f"path {path!r}: cannot read its filesystem's free space ({e})") from None
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise ValueError(f"path {path!r}: the memory file can grow to {size:,d} bytes but its "
                         f"filesystem has {free:,d} bytes free; choose a place with room "
                         "(or path=None for an anonymous mapping)")


def file_zeros(path, shape, dtype):
    """A zero-filled array backed by a new sparse file at ``path`` (see :func:`check_new_file`)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    check_new_file(path, size)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise ValueError(f"path {os.fspath(path)!r}: cannot create the memory file ({e.strerror})") from None
    try:
        os.ftruncate(fd, max(size, 1))
    except OSError as e:
        os.remove(path)
        raise ValueError(f"path {os.fspath(path)!r}: cannot size the memory file to {size:,d} "
                         f"bytes ({e.strerror})") from None
    finally:
        os.close(fd)
    return np.memmap(path, dtype=dtype, mode="r+", shape=tuple(shape))
