"""Saving and loading a :class:`~samcpu.memory.SparseMemory`: all or nothing, checksummed,
never touching a file it did not write.

A save folder holds::

    meta.json          the settings, the name of the current data folder, the SHA-256 of every
                       file in it, and (key "sha256") the SHA-256 of meta.json's own content
    data-<16 hex>/     one complete save: the marker file .samcpu-data, state.npz, the index's
                       files
    .samcpu.lock       locked (flock) by a save, exclusively, and by a load, shared

A save writes everything into a new data folder, fsyncs it, and then replaces meta.json by one
atomic rename: until that rename the old save is what loads, after it the new one. Only then
does it delete the older data folders and the temporary files of earlier saves that were
killed. It deletes nothing else: a data folder is only removed if its name has the pattern above
and it holds the marker (or is empty), and it refuses a non-empty folder without a valid
samcpu meta.json, so another program's files are never touched.

A load verifies meta.json's own checksum, then every file's, then every size, range and id in
the contents before anything is built from them (``MemoryFileError`` otherwise).
"""
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import zipfile
from contextlib import contextmanager, suppress

import numpy as np

from . import kernels as K
from ._util import atomic_write, fsync_dir
from .memory import MAX_STEPS, MemoryFileError, check_index, check_settings

#: the format saves are written in; 3 can hold an HNSW rebuild in progress (a second graph and
#: its rows), which a reader of format 2 would silently drop
FORMAT_VERSION = 3
#: the formats this version reads (a format-2 save has no rebuild in progress)
READABLE_FORMATS = (2, 3)
META = "meta.json"
LOCK = ".samcpu.lock"
MARKER = ".samcpu-data"
STATE = "state.npz"
DATA_RE = re.compile(r"data-[0-9a-f]{16}")
FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
#: the temporary files samcpu._util.atomic_write makes (mkstemp: 8 of [a-z0-9_])
TMP_RE = re.compile(r"\.tmp-[a-z0-9_]{8}\.part")
MAX_META_BYTES = 1 << 20
SETTINGS = ("batch_size", "num_slots", "word_size", "num_heads", "k", "dtype", "delta", "seed")


def sha256(path, fsync=False):
    """The SHA-256 of the file at ``path`` (hex); ``fsync``: also flush it to disk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _canonical(body):
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(body):
    """``body`` (a meta dict) plus the SHA-256 of its canonical JSON under "sha256"."""
    return dict(body, sha256=hashlib.sha256(_canonical(body)).hexdigest())


@contextmanager
def _locked(directory, exclusive):
    """Hold the folder's lock file: exclusive for a save (created if missing), shared for a load
    (skipped if there is no lock file, e.g. on a read-only copy)."""
    path = os.path.join(directory, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if exclusive else os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_meta(directory):
    """meta.json of the save in ``directory``, checked against its own checksum, or
    ``MemoryFileError`` saying what is wrong."""
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
        raise MemoryFileError(f"directory {directory!r} holds no saved memory: {path} is missing")
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_META_BYTES + 1)
        if len(blob) > MAX_META_BYTES:
            raise ValueError(f"larger than {MAX_META_BYTES:,d} bytes")
        meta = json.loads(blob)
    except (OSError, ValueError) as e:
        raise MemoryFileError(f"cannot read the saved memory in {directory!r}: {e}") from None
    if not isinstance(meta, dict) or "format" not in meta:
        raise MemoryFileError(f"{path} is not a samcpu memory (no format)")
    if meta["format"] not in READABLE_FORMATS or isinstance(meta["format"], bool):
        raise MemoryFileError(f"{path} is a samcpu memory of format {meta['format']!r}; this version "
                              f"reads formats {', '.join(map(str, READABLE_FORMATS))}")
    body = {key: value for key, value in meta.items() if key != "sha256"}
    try:
        digest = hashlib.sha256(_canonical(body)).hexdigest()
    except ValueError as e:
        raise MemoryFileError(f"{path} holds values JSON cannot hold ({e})") from None
    if meta.get("sha256") != digest:
        raise MemoryFileError(f"{path} does not match its own checksum (corrupt or changed)")
    files, data = meta.get("files"), meta.get("data")
    if not (isinstance(data, str) and DATA_RE.fullmatch(data)):
        raise MemoryFileError(f"{path} names no valid data folder (got {data!r})")
    if not (isinstance(files, dict) and STATE in files
            and all(isinstance(n, str) and FILE_RE.fullmatch(n) and n != MARKER for n in files)):
        raise MemoryFileError(f"{path} lists no valid files")
    return meta


# ---------------------------------------------------------------------------------------- save
def _removable(directory, used_before):
    """The entries of ``directory`` an earlier save left (old data folders, temporary files),
    which this save may delete once it is complete; ``ValueError`` if the folder holds
    anything that is not provably samcpu's and has no valid samcpu meta.json."""
    try:
        read_meta(directory)
        is_save = True
    except MemoryFileError:
        is_save = False
    ours, foreign = [], []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name == LOCK and os.path.isfile(path):
            continue
        if name == META and is_save:
            continue
        plain = not os.path.islink(path)
        data_folder = DATA_RE.fullmatch(name) and plain and os.path.isdir(path) and (
            os.path.isfile(os.path.join(path, MARKER)) or not os.listdir(path))
        temporary = TMP_RE.fullmatch(name) and plain and os.path.isfile(path) and (is_save or used_before)
        if data_folder or temporary:
            ours.append(path)
        else:
            foreign.append(name)
    if foreign and not is_save:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(f"directory {directory!r} is not empty and holds no samcpu save (it holds "
                         f"{shown}); save into a new or empty folder, or one written by SparseMemory.save")
    return ours


def _remove(path):
    """Delete one of our entries; a data folder's marker goes last, so a folder whose deletion
    is cut short (kill -9) still proves to be ours (or is empty) at the next save."""
    if not os.path.isdir(path):
        with suppress(FileNotFoundError):
            os.remove(path)
        return
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name == MARKER:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with suppress(FileNotFoundError):
                    os.remove(entry.path)
    with suppress(FileNotFoundError):
        os.remove(os.path.join(path, MARKER))
    with suppress(OSError):
        os.rmdir(path)


def state_arrays(mem):
    """The arrays a save holds: written rows and their contents, the usage ring in access
    order with its steps, and the last reads (rows per batch element concatenated, with counts)."""
    written, counts, order, order_counts = [], [], [], []
    for b in range(mem.batch_size):
        rows = mem._written.rows(b)
        written.append(rows)
        counts.append(len(rows))
        ring = np.empty(mem._ends[b, 3], np.int64)
        K.ring_rows(mem._next[b], mem._ends[b], ring)
        order.append(ring)
        order_counts.append(len(ring))
    written = np.concatenate(written)
    order = np.concatenate(order)
    bw = np.repeat(np.arange(mem.batch_size), counts)
    bo = np.repeat(np.arange(mem.batch_size), order_counts)
    return dict(written=written, written_counts=np.array(counts, np.int64),
                contents=mem._memory[bw, written], ring=order,
                ring_counts=np.array(order_counts, np.int64), ring_usage=mem._usage[bo, order],
                prev_rows=mem._prev_rows, prev_weights=mem._prev_weights, **mem._extra_state())


def save(mem, directory):
    """Write ``mem`` into ``directory`` all or nothing (see the module docstring)."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} is a file, not a folder")
    used_before = os.path.exists(os.path.join(directory, LOCK))
    if os.path.isdir(directory):
        _removable(directory, used_before)  # refuse another program's folder before creating anything
    os.makedirs(directory, exist_ok=True)
    with _locked(directory, exclusive=True):
        stale = _removable(directory, used_before)
        name = f"data-{secrets.token_hex(8)}"
        data = os.path.join(directory, name)
        os.mkdir(data)
        try:
            with open(os.path.join(data, MARKER), "w") as f:  # first: proves the folder is ours
                f.write("samcpu save data: removed by the next save once meta.json does not name it\n")
            arrays = state_arrays(mem)
            with open(os.path.join(data, STATE), "wb") as f:
                np.savez(f, **arrays)
            names = [STATE] + list(mem._index.save(data))
            for n in names:
                if not (FILE_RE.fullmatch(n) and n != MARKER and os.path.isfile(os.path.join(data, n))):
                    raise RuntimeError(f"the index saved a file named {n!r}, which a save cannot hold")
            files = {n: sha256(os.path.join(data, n), fsync=True) for n in names}
            sha256(os.path.join(data, MARKER), fsync=True)
            fsync_dir(data)
            fsync_dir(directory)  # the data folder exists on disk before meta.json names it
            meta = seal(dict(
                format=FORMAT_VERSION, batch_size=mem.batch_size, num_slots=mem.num_slots,
                word_size=mem.word_size, num_heads=mem.num_heads, k=mem.k, index=mem.index_kind,
                dtype=mem.dtype.name, delta=mem.delta, seed=mem.seed, position=mem.position,
                data=name, files=files, model=mem.model, **mem._extra_settings()))
            atomic_write(os.path.join(directory, META),
                         lambda f: f.write(json.dumps(meta, indent=1).encode()))
        except BaseException:
            _remove(data)
            raise
        for path in stale:
            _remove(path)
        fsync_dir(directory)


# ---------------------------------------------------------------------------------------- load
def load(cls, directory, path=None, index=None, index_options=None):
    """A new ``cls`` (SparseMemory) from the save in ``directory``; see ``SparseMemory.load``."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise MemoryFileError(f"directory {directory!r} holds no saved memory: it is not a folder")
    with _locked(directory, exclusive=False):
        meta = read_meta(directory)
        data = os.path.join(directory, meta["data"])
        for name, digest in meta["files"].items():
            p = os.path.join(data, name)
            if not os.path.isfile(p):
                raise MemoryFileError(f"saved memory in {directory!r} is incomplete: {p} is missing")
            if sha256(p) != digest:
                raise MemoryFileError(f"{p} does not match its checksum in meta.json (corrupt or changed)")
        model = meta.get("model", "sam")  # format 2 saves before the SDNC hold SAM memories
        if model != cls.model:
            raise MemoryFileError(f"saved memory in {directory!r} is a {model!r} memory, which "
                                  f"{cls.__name__}.load cannot open (a {cls.model!r} memory is expected)")
        try:
            settings = check_settings(*(meta[key] for key in SETTINGS))
            settings.update({key: meta[key] for key in cls._extra_settings_keys})
            check_index(meta["index"], None)
            position = meta["position"]
            if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= MAX_STEPS:
                raise ValueError(f"position {position!r} is not an integer in [0, {MAX_STEPS}]")
        except (KeyError, ValueError) as e:
            raise MemoryFileError(f"{os.path.join(directory, META)} holds bad settings: {e}") from None
        kind = meta["index"] if index is None else index
        check_index(kind, index_options)  # the caller's arguments: a plain ValueError
        try:
            mem = cls(**settings, index=kind, path=path, index_options=index_options)
        except ValueError as e:
            if any(f"{key} " in str(e) for key in cls._extra_settings_keys):
                raise MemoryFileError(f"{os.path.join(directory, META)} holds bad settings: {e}") from None
            raise
        try:
            state = os.path.join(data, STATE)
            b, n, hk = mem.batch_size, mem.num_slots, mem.num_heads * mem.read_size
            _check_expanded_size(state, 8 * b * n * (mem.word_size + 3) + 16 * b * hk + 16 * b + (1 << 16)
                                 + mem._extra_state_bound())
            with np.load(state, allow_pickle=False) as z:
                rows = restore(mem, position, {name: z[name] for name in z.files})
            mem._index.load(data if kind == meta["index"] else None, rows)
        except (KeyError, TypeError, ValueError, IndexError, OSError, RuntimeError, EOFError,
                zipfile.BadZipFile) as e:
            if mem.path is not None:
                os.remove(mem.path)
            raise MemoryFileError(f"saved memory in {directory!r} is inconsistent: {e}") from None
    return mem


def _check_expanded_size(path, limit):
    """``ValueError`` if the .npz at ``path`` would expand to more than ``limit`` bytes (the
    most a save of this memory holds): a crafted archive cannot exhaust memory."""
    with zipfile.ZipFile(path) as zf:
        total = sum(info.file_size for info in zf.infolist())
    if total > limit:
        raise ValueError(f"{os.path.basename(path)} expands to {total:,d} bytes, more than a save of "
                         f"this memory can hold ({limit:,d})")


def restore(mem, position, z):
    """Fill the new memory ``mem`` from the saved arrays ``z`` (a dict), after checking every
    shape, dtype, range and order; returns the written rows (B, R) int64, -1 padded.
    ``ValueError`` naming the first bad array."""
    b, n, w = mem.batch_size, mem.num_slots, mem.word_size
    need = ("written", "written_counts", "contents", "ring", "ring_counts", "ring_usage",
            "prev_rows", "prev_weights")
    missing = [name for name in need if name not in z]
    if missing:
        raise ValueError(f"state.npz lacks the arrays {missing}")
    for name in ("written", "written_counts", "ring", "ring_counts", "ring_usage", "prev_rows"):
        if z[name].dtype.kind not in "iu":
            raise ValueError(f"array {name!r} has dtype {z[name].dtype}, not an integer type")
    for name in ("contents", "prev_weights"):
        if z[name].dtype.kind != "f":
            raise ValueError(f"array {name!r} has dtype {z[name].dtype}, not a float type")
    counts, ring_counts = z["written_counts"].astype(np.int64), z["ring_counts"].astype(np.int64)
    written, ring = z["written"].astype(np.int64), z["ring"].astype(np.int64)
    usage, contents = z["ring_usage"].astype(np.int64), z["contents"]
    prev_rows, prev_weights = z["prev_rows"].astype(np.int64), z["prev_weights"]
    checks = [
        (written.ndim == 1 and counts.shape == (b,) and counts.min() >= 0
         and counts.sum() == len(written), "written_counts"),
        (ring.ndim == 1 and ring_counts.shape == (b,) and ring_counts.min() >= 0
         and ring_counts.sum() == len(ring), "ring_counts"),
        (contents.shape == (len(written), w), "contents"),
        (len(written) == 0 or (written.min() >= 0 and written.max() < n), "written"),
        (len(ring) == 0 or (ring.min() >= 0 and ring.max() < n), "ring"),
        (usage.shape == ring.shape and (len(ring) == 0 or (usage.min() >= 1 and usage.max() <= position)),
         "ring_usage"),
        (prev_rows.shape == mem._prev_rows.shape and prev_rows.min(initial=-1) >= -1
         and prev_rows.max(initial=-1) < n, "prev_rows"),
        (prev_weights.shape == mem._prev_weights.shape and np.isfinite(prev_weights).all()
         and ((prev_weights >= 0) & (prev_weights <= 1)).all(), "prev_weights"),
    ]
    for ok, name in checks:
        if not ok:
            raise ValueError(f"array {name!r} has the wrong shape or values")
    peak = float(np.abs(contents).max(initial=0.0)) if np.isfinite(contents).all() else np.inf
    if peak > mem.value_limit:
        raise ValueError(f"array 'contents' holds |values| up to {peak:.3g}, beyond the memory's "
                         f"limit {mem.value_limit:.3g} (or NaN/Inf)")
    woff = np.concatenate([[0], np.cumsum(counts)])
    offsets = np.concatenate([[0], np.cumsum(ring_counts)])
    for i in range(b):
        r = ring[offsets[i]:offsets[i + 1]]
        if len(np.unique(r)) != len(r) or (np.diff(usage[offsets[i]:offsets[i + 1]]) < 0).any():
            raise ValueError("array 'ring' is not a valid access order")
        rw = written[woff[i]:woff[i + 1]]
        if len(np.unique(rw)) != len(rw):
            raise ValueError("array 'written' repeats a row")
    bw = np.repeat(np.arange(b), counts)
    bo = np.repeat(np.arange(b), ring_counts)
    mem._memory[bw, written] = contents
    mem._usage[bo, ring] = usage
    for i in range(b):
        r = ring[offsets[i]:offsets[i + 1]]
        if len(r):
            mem._prev[i, r] = np.concatenate([[0], r[:-1] + 1])
            mem._next[i, r] = np.concatenate([r[1:] + 1, [0]])
            mem._ends[i] = (r[0] + 1, r[-1] + 1, 0, len(r))
    rows = np.full((b, max(1, int(counts.max(initial=0)))), -1, np.int64)
    for i in range(b):
        rows[i, : counts[i]] = written[woff[i]:woff[i + 1]]
    mem._written.add(rows)
    mem._prev_rows = prev_rows
    mem._prev_weights = prev_weights.astype(mem.dtype)
    mem._position = position
    mem._peak = peak
    mem._restore_extra(z)
    mem._journal.clear(position)
    mem._base_reads = (mem._prev_rows.copy(), mem._prev_weights.copy())
    return rows


__all__ = ["FORMAT_VERSION", "MemoryFileError", "load", "read_meta", "restore", "save", "seal", "sha256",
           "state_arrays"]
