import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def random_step_inputs(rng, batch_size, num_heads, word_size, pool=None, dtype=np.float64):
    """Step inputs with awkward cases mixed in: gates at exactly 0 and 1 (rows left zero,
    nothing written to the LRA row), zero queries, and add vectors drawn from a small pool so
    that identical rows (exact similarity ties) appear."""
    b, h, w = batch_size, num_heads, word_size
    query = rng.normal(size=(b, h, w))
    query[rng.random((b, h)) < 0.1] = 0.0
    strength = rng.uniform(0.5, 20.0, size=(b, h))
    add = rng.normal(size=(b, h, w)) if pool is None else pool[rng.integers(len(pool), size=(b, h))]
    write_gate = rng.uniform(size=(b, h))
    interp_gate = rng.uniform(size=(b, h))
    special = rng.random((b, h))
    write_gate[special < 0.1] = 0.0
    write_gate[(special >= 0.1) & (special < 0.3)] = 1.0
    interp_gate[(special >= 0.2) & (special < 0.4)] = 0.0
    interp_gate[(special >= 0.4) & (special < 0.5)] = 1.0
    # queries equal to a pool vector hit duplicate rows with identical similarity
    if pool is not None:
        hit = rng.random((b, h)) < 0.3
        query[hit] = pool[rng.integers(len(pool), size=int(hit.sum()))]
    return tuple(np.asarray(x, dtype) for x in (query, strength, add, write_gate, interp_gate))


def snapshot(mem):
    """Everything a rewind must restore: memory, usage, LRA rows, written rows, last reads."""
    return (mem.memory.copy(), mem.usage.copy(), mem.lra_rows(),
            [mem.written_rows(b) for b in range(mem.batch_size)],
            mem._prev_rows.copy(), mem._prev_weights.copy())


def assert_same(a, b):
    """Two snapshots equal bit for bit (written rows compared as sets)."""
    for x, y in zip(a[:3] + a[4:], b[:3] + b[4:], strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a[3], b[3], strict=True):
        np.testing.assert_array_equal(np.sort(x), np.sort(y))


def saved_file(folder, name):
    """The path of file ``name`` of the save in ``folder`` (it lives in the save's current
    data folder, named by meta.json)."""
    from pathlib import Path

    from samcpu.persistence import read_meta
    return Path(folder) / read_meta(str(folder))["data"] / name


def reseal(folder):
    """Recompute every checksum of the save in ``folder`` after a test changed its files or its
    meta.json's values, as a crafted save would, so that only the content checks stand."""
    import json
    from pathlib import Path

    from samcpu.persistence import seal, sha256
    meta_path = Path(folder) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("sha256", None)
    data = Path(folder) / meta["data"]
    meta["files"] = {name: sha256(data / name) if (data / name).is_file() else digest
                     for name, digest in meta["files"].items()}
    meta_path.write_text(json.dumps(seal(meta)))


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(size)``: a new folder on a tmpfs of ``size`` (e.g. "1m"), for full-disk tests;
    skips the test without root or mount. Unmounted (lazily, even if a mapping still holds a
    file there) after the test."""
    import gc
    import os
    import subprocess

    mounted = []

    def mount(size):
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                str(path)], capture_output=True).returncode != 0:
            pytest.skip("needs root and mount to make a small tmpfs")
        mounted.append(path)
        return path

    yield mount
    gc.collect()
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
