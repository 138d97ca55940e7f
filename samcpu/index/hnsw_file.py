"""Validate an hnswlib graph file before hnswlib reads it.

hnswlib's ``loadIndex`` trusts the file: a count, an offset or a neighbour id out of range
makes it allocate without bound or read and write outside its arrays later (a segfault, not a
Python error). :func:`check_graph_file` parses the whole file in the layout of hnswlib 0.8.0's
``HierarchicalNSW::saveIndex`` (``hnswlib/hnswalg.h``) and checks every size, count, level, link
count and neighbour id against its bounds and the file's length, so that a damaged or crafted
file is refused with a ``ValueError`` before hnswlib sees it.

The layout (little-endian; ``tableint`` and ``linklistsizeint`` are 4-byte unsigned)::

    header (96 bytes): offsetLevel0_, max_elements_, cur_element_count, size_data_per_element_,
        label_offset_, offsetData_ (size_t each); maxlevel_ (int); enterpoint_node_ (tableint);
        maxM_, maxM0_, M_ (size_t); mult_ (double); ef_construction_ (size_t)
    level 0, cur_element_count blocks of size_data_per_element_ bytes:
        link count (uint16), deleted mark (uint8, bit 0), unused (uint8),
        maxM0_ neighbour ids (tableint), the vector (dim float32), the label (size_t)
    then per element: linkListSize (uint32, bytes) and that many bytes: element_levels[i] =
        linkListSize / size_links_per_element_ blocks of (link count (uint32, low 16 bits used),
        maxM_ neighbour ids) for levels 1 .. element_levels[i]
"""
import math
import mmap
import struct
from importlib import metadata
from typing import NamedTuple

import numpy as np

#: the hnswlib versions whose file layout this module knows; with another version the
#: graph is rebuilt from the saved rows instead of loaded (see ``HNSWIndex.load``)
KNOWN_VERSIONS = ("0.8.0",)
HEADER = np.dtype([
    ("offset_level0", "<u8"), ("max_elements", "<u8"), ("cur_element_count", "<u8"),
    ("size_data_per_element", "<u8"), ("label_offset", "<u8"), ("offset_data", "<u8"),
    ("maxlevel", "<i4"), ("enterpoint_node", "<u4"), ("maxM", "<u8"), ("maxM0", "<u8"),
    ("M", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8"),
])
assert HEADER.itemsize == 96
#: bounds for values hnswlib would accept but that no graph of ours has: the link count is a
#: uint16 (so maxM0_ < 2**16), and a beam wider than this would make every insert crawl
MAX_M0 = 2**16 - 1
MAX_EF_CONSTRUCTION = 2**16
MAX_ELEMENTS = 2**32 - 2  # internal ids are tableint (uint32); -1 marks "no entry point"
#: elements checked at a time (bounds the temporaries)
CHUNK = 1 << 16


class GraphInfo(NamedTuple):
    """What a valid graph file holds."""

    count: int  #: cur_element_count
    dim: int
    m: int  #: M_
    ef_construction: int
    max_level: int
    labels: np.ndarray  #: (count,) uint64, the label of each internal id
    deleted: np.ndarray  #: (count,) bool, marked deleted


def hnswlib_version():
    """The installed hnswlib's version string, or None if it cannot be told."""
    try:
        return metadata.version("hnswlib")
    except metadata.PackageNotFoundError:
        return None


def format_known():
    """True if the installed hnswlib writes the layout this module checks."""
    return hnswlib_version() in KNOWN_VERSIONS


def check_graph_file(path, dim, count=None):
    """Parse and check the hnswlib (0.8.0) graph file ``path`` of ``dim``-dimensional float32
    vectors; ``count``: the number of elements it must hold (None: any).

    Returns a :class:`GraphInfo`; raises ``ValueError`` naming the file and the first value out of
    bounds. Never trusts a size before checking it against the file's length.
    """
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < HEADER.itemsize:
            raise ValueError(f"{path}: {size} bytes, shorter than an hnswlib header ({HEADER.itemsize})")
        # not closed explicitly: views into it may outlive this call in a traceback
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _check(buf, size, path, dim, count)


def _fail(path, what):
    raise ValueError(f"{path}: {what} (not an hnswlib 0.8.0 graph of this memory)")


def _check(buf, size, path, dim, count):
    h = np.frombuffer(buf, HEADER, count=1)[0]
    cur = int(h["cur_element_count"])
    m, m_max, m0 = int(h["M"]), int(h["maxM"]), int(h["maxM0"])
    if int(h["offset_level0"]) != 0:
        _fail(path, f"offsetLevel0_ is {int(h['offset_level0'])}, not 0")
    if not (m >= 2 and m_max == m and m0 == 2 * m and m0 <= MAX_M0):
        _fail(path, f"M_ {m}, maxM_ {m_max}, maxM0_ {m0}: expected 2 <= M_, maxM_ = M_, "
                    f"maxM0_ = 2 M_ <= {MAX_M0}")
    mult = float(h["mult"])
    if not (math.isfinite(mult) and math.isclose(mult, 1 / math.log(m), rel_tol=1e-9)):
        _fail(path, f"mult_ is {mult!r}, not 1 / log(M_) = {1 / math.log(m)!r}")
    efc = int(h["ef_construction"])
    if not m <= efc <= MAX_EF_CONSTRUCTION:
        _fail(path, f"ef_construction_ is {efc}, outside [M_ = {m}, {MAX_EF_CONSTRUCTION}]")
    links0 = 4 + 4 * m0  # size_links_level0_
    per_element = links0 + 4 * dim + 8
    got = (int(h["size_data_per_element"]), int(h["offset_data"]), int(h["label_offset"]))
    if got != (per_element, links0, links0 + 4 * dim):
        _fail(path, f"element layout (size, data offset, label offset) is {got}, expected "
                    f"{(per_element, links0, links0 + 4 * dim)} for {dim}-dimensional vectors")
    if count is not None and cur != count:
        _fail(path, f"holds {cur} elements, expected {count}")
    if not cur <= min(int(h["max_elements"]), MAX_ELEMENTS):
        _fail(path, f"cur_element_count {cur} exceeds max_elements_ {int(h['max_elements'])} "
                    f"or {MAX_ELEMENTS}")
    level0_end = HEADER.itemsize + cur * per_element
    if level0_end + 4 * cur > size:
        _fail(path, f"{size} bytes cannot hold {cur} elements of {per_element} bytes plus their link sizes")

    # the per-element link lists of levels >= 1: walk the sizes (each depends on the last)
    links = 4 + 4 * m  # size_links_per_element_
    levels = np.zeros(cur, np.int64)
    starts = []  # (offset of the first upper block, level count) per element with levels
    pos = level0_end
    for i in range(cur):
        if pos + 4 > size:
            _fail(path, f"ends inside the link lists (element {i} of {cur})")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if n:
            if n % links:
                _fail(path, f"element {i} has link lists of {n} bytes, not a multiple of {links}")
            if pos + n > size:
                _fail(path, f"element {i}'s link lists ({n} bytes) run past the end of the file")
            levels[i] = n // links
            starts.append((pos, levels[i]))
            pos += n
    if pos != size:
        _fail(path, f"has {size - pos} bytes after the last link list")

    def field(offset, dtype, width):
        """Column ``offset`` of every level-0 block as a strided (cur, width) view (no copy)."""
        if cur == 0:
            return np.zeros((0, width), dtype)
        return np.ndarray((cur, width), dtype, buffer=buf, offset=HEADER.itemsize + offset,
                          strides=(per_element, np.dtype(dtype).itemsize))

    n0 = field(0, "<u2", 1)[:, 0]
    flags = field(2, "u1", 2)
    for lo in range(0, cur, CHUNK):  # in chunks: a million-element graph needs no big temporaries
        hi = min(cur, lo + CHUNK)
        if (n0[lo:hi] > m0).any():
            i = lo + int(np.argmax(n0[lo:hi] > m0))
            _fail(path, f"element {i} has {n0[i]} level-0 links, more than maxM0_ = {m0}")
        if (flags[lo:hi, 0] > 1).any() or flags[lo:hi, 1].any():
            _fail(path, "a level-0 link header has flag bits hnswlib never sets")
        _check_ids(path, field(4, "<u4", m0)[lo:hi], n0[lo:hi], cur, None, 0)
        if not np.isfinite(field(links0, "<f4", dim)[lo:hi]).all():
            _fail(path, "a stored vector holds NaN or Inf")

    max_level = int(levels.max(initial=-1))
    if cur == 0:
        if int(h["maxlevel"]) != -1 or int(h["enterpoint_node"]) != 2**32 - 1:
            _fail(path, "an empty graph with an entry point")
    else:
        ep = int(h["enterpoint_node"])
        if int(h["maxlevel"]) != max_level or ep >= cur or levels[ep] != max_level:
            _fail(path, f"maxlevel_ {int(h['maxlevel'])} / entry point {ep} do not match the "
                        f"highest element level {max_level}")
    if starts:
        first = np.array([s for s, _ in starts], np.int64)
        count_up = np.array([n for _, n in starts], np.int64)
        lvl = np.arange(1, count_up.sum() + 1) - np.repeat(np.cumsum(count_up) - count_up, count_up)
        offs = np.repeat(first, count_up) + (lvl - 1) * links
        raw = np.frombuffer(buf, np.uint8)
        for lo in range(0, len(offs), CHUNK):
            o, lv = offs[lo:lo + CHUNK], lvl[lo:lo + CHUNK]
            words = raw[o[:, None] + np.arange(links)].view("<u4")
            n_up = (words[:, 0] & 0xFFFF).astype(np.int64)
            if (n_up > m).any():
                _fail(path, f"an upper-level link list has {int(n_up.max())} links, more than maxM_ = {m}")
            _check_ids(path, words[:, 1:], n_up, cur, levels, lv)

    labels = field(links0 + 4 * dim, "<u8", 1)[:, 0].copy()
    return GraphInfo(cur, dim, m, efc, max_level, labels, flags[:, 0].astype(bool))


def _check_ids(path, ids, n, cur, levels, level):
    """Every used neighbour id ``ids[i, :n[i]]`` names an element that exists and, above level
    0, reaches ``level[i]`` (hnswlib reads the neighbour's own list at that level)."""
    used = np.arange(ids.shape[1]) < np.asarray(n, np.int64)[:, None]
    bad = used & (ids >= cur)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        _fail(path, f"neighbour id {int(ids[i, j])} is outside [0, {cur})")
    if levels is not None:
        reach = levels[np.where(used, ids, 0).astype(np.int64)]
        short = used & (reach < np.asarray(level)[:, None])
        if short.any():
            i, j = np.argwhere(short)[0]
            _fail(path, f"neighbour {int(ids[i, j])} is linked at level {int(level[i])}, above its own "
                        f"top level {int(reach[i, j])}")
