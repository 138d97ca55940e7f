"""Small helpers shared across samcpu's layers: argument checks, atomic files, process memory.

One copy of each, so every layer speaks the same error language (``ValueError`` naming the
argument) and every file a save writes appears by one atomic rename.
"""
import contextlib
import os
import tempfile

import numpy as np


def check_int(name, value, minimum=1, maximum=None):
    """``value`` as a Python int, or ``ValueError`` naming ``name``.

    Accepts Python and NumPy integers (not bools, not floats such as 2.0)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum:,d}, got {value:,d}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:,d}, got {value:,d}")
    return value


def parse_int(text, minimum=1, maximum=None):
    """An integer from command-line ``text`` ("1000", "1e6", "1_000"), or ``ValueError`` saying
    what was expected. Rejects fractions ("2.5"), "inf" and "nan"."""
    try:
        value = float(text)
        as_int = int(value)
    except (ValueError, OverflowError):
        raise ValueError(f"expected an integer, got {text!r}") from None
    if as_int != value:
        raise ValueError(f"expected an integer, got {text!r}")
    if as_int < minimum:
        raise ValueError(f"expected an integer >= {minimum:,d}, got {text!r}")
    if maximum is not None and as_int > maximum:
        raise ValueError(f"expected an integer <= {maximum:,d}, got {text!r}")
    return as_int


def fsync_dir(directory):
    """Flush a directory's entries (a rename in it) to disk, where the OS allows it."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Write ``path`` all or nothing: ``write(f)`` fills a temporary file (binary) in the same
    directory, which is fsynced and renamed over ``path``; on any failure (including
    KeyboardInterrupt) the temporary file is removed and ``path`` is left as it was. The file
    keeps the permissions of the one it replaces (a new file: 0o666 less the umask, as ``open``
    gives), not the 0o600 of a temporary file."""
    directory = os.path.dirname(os.fspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def _umask():
    """The process's umask (read from /proc where it can be, so no other thread sees it change)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field} line")


def rss_bytes():
    """This process's resident set size now, bytes (Linux /proc)."""
    return _status_bytes("VmRSS")


def peak_rss_bytes():
    """This process's peak resident set size since start or :func:`reset_peak_rss`, bytes."""
    return _status_bytes("VmHWM")


def reset_peak_rss():
    """Reset the peak RSS (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
