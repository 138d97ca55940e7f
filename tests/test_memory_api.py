"""SparseMemory's public surface: bad input, persistence, huge lazy memories."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_same, random_step_inputs, reseal, saved_file, snapshot

import samcpu
from samcpu._util import rss_bytes

B, N, W, H, K = 2, 10, 4, 2, 3


@pytest.fixture
def mem(rng):
    m = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, index="exact", dtype=np.float64)
    for _ in range(6):
        m.step(*random_step_inputs(rng, B, H, W, None))
    return m


def good(rng):
    return dict(zip(["query", "strength", "add", "write_gate", "interp_gate"],
                    random_step_inputs(rng, B, H, W, None), strict=True))


@pytest.mark.parametrize("name,value,message", [
    ("query", np.zeros((B, H, W + 1)), r"query has shape \(2, 2, 5\) but expected \(2, 2, 4\)"),
    ("query", np.zeros((B, W)), r"query has shape \(2, 4\)"),
    ("add", np.zeros((B, H, W), complex), "add has dtype complex128"),
    ("add", np.array([["a"] * H] * B), "add has dtype <U1"),
    ("strength", np.zeros((B, H)), "strength must be > 0"),
    ("strength", -np.ones((B, H)), "strength must be > 0"),
    ("write_gate", np.full((B, H), 1.5), r"write_gate must lie in \[0, 1\]"),
    ("interp_gate", np.full((B, H), -0.1), r"interp_gate must lie in \[0, 1\]"),
    ("query", np.full((B, H, W), np.nan), "query contains NaN or Inf"),
    ("add", np.full((B, H, W), np.inf), "add contains NaN or Inf"),
    ("strength", np.full((B, H), np.nan), "strength contains NaN"),
])
def test_bad_step_input_raises_and_changes_nothing(mem, rng, name, value, message):
    before = snapshot(mem)
    journal = mem.journal_nbytes
    args = good(rng)
    args[name] = value
    with pytest.raises(ValueError, match=message):
        mem.step(**args)
    assert mem.position == 6 and mem.latest == 6 and mem.journal_nbytes == journal
    assert_same(snapshot(mem), before)
    mem.step(**good(rng))  # still usable


def test_float32_input_too_large_for_memory_dtype_is_refused(rng):
    m = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, dtype=np.float32)
    args = good(rng)
    args["add"] = np.full((B, H, W), 1e300)
    with pytest.raises(ValueError, match="add contains NaN or Inf"):
        m.step(**args)
    assert m.position == 0 and not m.memory.any()


@pytest.mark.parametrize("kwargs,message", [
    (dict(k=11), r"k is 11 but must be <= num_slots \(10\)"),
    (dict(num_heads=11), r"num_heads is 11 but must be <= num_slots"),
    (dict(k=0), "k must be >= 1"),
    (dict(dtype=np.int32), "dtype must be float32 or float64"),
    (dict(dtype="nonsense"), "dtype must be float32 or float64"),
    (dict(index="annoy"), "index must be one of"),
    (dict(delta=-1.0), "delta must be a finite number"),
    (dict(num_heads=2.5), "num_heads must be an integer"),
    (dict(num_slots=2**31 - 1), r"num_slots must be <= 2,147,483,646"),
])
def test_bad_constructor_arguments(kwargs, message):
    args = dict(batch_size=B, num_slots=N, word_size=W)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        samcpu.SparseMemory(**args)


def test_step_past_the_journal_limit_raises_and_changes_nothing(mem, rng, monkeypatch):
    before = snapshot(mem)
    monkeypatch.setattr(samcpu.memory, "MAX_STEPS", mem.position)
    with pytest.raises(ValueError, match="applied 6 steps since its last reset.*call reset"):
        mem.step(**good(rng))
    assert mem.position == 6
    assert_same(snapshot(mem), before)


def test_bad_rewind_position(mem):
    before = snapshot(mem)
    for p, message in [(7, r"position must be in \[0, 6\]"), (-1, "position must be in"),
                       (2.0, "position must be an integer")]:
        with pytest.raises(ValueError, match=message):
            mem.rewind(p)
    assert_same(snapshot(mem), before)


def test_memory_view_is_read_only(mem):
    with pytest.raises(ValueError):
        mem.memory[0, 0, 0] = 1.0


def test_save_load_round_trip(mem, rng, tmp_path):
    mem.save(tmp_path / "m")
    loaded = samcpu.SparseMemory.load(tmp_path / "m")
    assert loaded.position == mem.position and loaded.earliest == mem.position
    assert_same(snapshot(loaded), snapshot(mem))
    for _ in range(10):  # both go on identically
        inputs = random_step_inputs(rng, B, H, W, None)
        a, b = mem.step(*inputs), loaded.step(*inputs)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert_same(snapshot(loaded), snapshot(mem))


def test_save_load_file_backed(rng, tmp_path):
    m = samcpu.SparseMemory(1, 1000, W, num_heads=H, k=K, path=tmp_path / "a.f32")
    for _ in range(5):
        m.step(*random_step_inputs(rng, 1, H, W, None, np.float32))
    m.save(tmp_path / "saved")
    loaded = samcpu.SparseMemory.load(tmp_path / "saved", path=tmp_path / "b.f32")
    assert_same(snapshot(loaded), snapshot(m))
    with pytest.raises(ValueError, match="already exists"):
        samcpu.SparseMemory.load(tmp_path / "saved", path=tmp_path / "b.f32")


def test_load_missing_or_corrupt(mem, tmp_path):
    with pytest.raises(samcpu.MemoryFileError, match="holds no saved memory"):
        samcpu.SparseMemory.load(tmp_path / "nothing")
    mem.save(tmp_path / "m")
    state = saved_file(tmp_path / "m", "state.npz")
    blob = bytearray(state.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    state.write_bytes(bytes(blob))
    with pytest.raises(samcpu.MemoryFileError, match="checksum"):
        samcpu.SparseMemory.load(tmp_path / "m")
    (tmp_path / "m" / "meta.json").write_text("{not json")
    with pytest.raises(samcpu.MemoryFileError, match="cannot read"):
        samcpu.SparseMemory.load(tmp_path / "m")
    assert issubclass(samcpu.MemoryFileError, ValueError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(samcpu.MemoryFileError, match="holds no saved memory"):
        samcpu.SparseMemory.load(tmp_path / "empty")


def test_save_replaces_an_older_save_completely(mem, rng, tmp_path):
    h = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, index="hnsw")
    h.step(**good(rng))
    h.save(tmp_path / "m")
    assert saved_file(tmp_path / "m", "hnsw.npz").is_file()
    mem.save(tmp_path / "m")  # an exact-index memory over the same folder
    mem.step(*random_step_inputs(rng, B, H, W, None))
    mem.save(tmp_path / "m")
    assert samcpu.SparseMemory.load(tmp_path / "m").position == 7
    data = saved_file(tmp_path / "m", "state.npz").parent
    assert sorted(os.listdir(tmp_path / "m")) == sorted([".samcpu.lock", "meta.json", data.name])
    assert sorted(os.listdir(data)) == [".samcpu-data", "state.npz"]


def test_hundred_million_slots_stay_small(rng, tmp_path):
    """Resident memory grows with the rows touched, not with N (how fast creation is belongs to
    benchmarks/memory.py, not to a unit test)."""
    rss0 = rss_bytes()
    m = samcpu.SparseMemory(1, 100_000_000, 32, num_heads=4, k=4)
    for _ in range(50):
        m.step(*random_step_inputs(rng, 1, 4, 32, None, np.float32))
    grown = rss_bytes() - rss0
    assert grown < 200e6, f"resident memory grew by {grown / 1e6:.0f} MB"  # the dense memory is 12.8 GB
    f = samcpu.SparseMemory(1, 100_000_000, 32, num_heads=4, k=4, path=tmp_path / "big.f32")
    f.step(*random_step_inputs(rng, 1, 4, 32, None, np.float32))
    assert os.stat(tmp_path / "big.f32").st_size == 12_800_000_000
    assert os.stat(tmp_path / "big.f32").st_blocks * 512 < 10e6  # sparse on disk


def test_journal_costs_at_most_4_kib_per_step_and_batch_element():
    from samcpu.journal import Chunk

    chunk = Chunk(256, 1, 4, 4, 32, np.float32)  # H=4, K=4, W=32: the paper's setting
    assert chunk.nbytes / 256 <= 4096, chunk.nbytes / 256  # H(K+1)W floats alone are 2,560 B


def test_bad_input_with_the_hnsw_index_loses_nothing(rng):
    """Memory, usage, journal and index stay as they were: afterwards the memory steps exactly
    like a twin that never saw the bad input."""
    a = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, index="hnsw", index_options=dict(flush_rows=2))
    twin = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, index="hnsw", index_options=dict(flush_rows=2))
    for _ in range(8):
        args = good(rng)
        a.step(**args)
        twin.step(**args)
    before, stats, n_index, journal = snapshot(a), a.index.stats(), len(a.index), a.journal_nbytes
    for name, value in [("query", np.full((B, H, W), np.nan)), ("strength", np.zeros((B, H))),
                        ("write_gate", np.full((B, H), 2.0)), ("add", np.zeros((B, H, W + 1)))]:
        args = good(rng)
        args[name] = value
        with pytest.raises(ValueError, match=name):
            a.step(**args)
        assert a.index.stats() == stats and len(a.index) == n_index and a.journal_nbytes == journal
        assert a.position == 8
        assert_same(snapshot(a), before)
    for _ in range(5):
        args = good(rng)
        x, y = a.step(**args), twin.step(**args)
        np.testing.assert_array_equal(x.rows, y.rows)
        np.testing.assert_array_equal(x.reads, y.reads)


def test_load_refuses_usage_steps_the_journal_cannot_hold(mem, tmp_path):
    """A saved (checksum-valid) ring whose steps lie outside [1, position] is refused: the
    journal's int32 undo records could not hold them."""
    mem.save(tmp_path / "m")
    state = saved_file(tmp_path / "m", "state.npz")
    arrays = dict(np.load(state))
    for bad in (2**31 + 5, 0):
        arrays["ring_usage"] = arrays["ring_usage"].copy()
        arrays["ring_usage"][-1] = bad
        with open(state, "wb") as f:
            np.savez(f, **arrays)
        reseal(tmp_path / "m")
        with pytest.raises(samcpu.MemoryFileError, match="ring_usage"):
            samcpu.SparseMemory.load(tmp_path / "m")


# ------------------------------------------------------------------ arguments (issues 11 and 16)
@pytest.mark.parametrize("kwargs,message", [
    (dict(index="hnsw", index_options=dict(ef_constrution=8)),
     r"index_options has unknown key 'ef_constrution' for index 'hnsw' \(known: m, ef_construction"),
    (dict(index="exact", index_options=dict(m=16)), r"unknown key 'm' for index 'exact' \(known: none\)"),
    (dict(index="hnsw", index_options=dict(seed=3)), "unknown key 'seed'.*set seed with the seed argument"),
    (dict(index_options=[("m", 4)]), "index_options must be a dict or None"),
    (dict(seed=2**64), r"seed must be <= 4,294,967,295, got 18,446,744,073,709,551,616"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(k=1025, num_slots=5000), r"k must be <= 1,024"),
    (dict(delta=True), "delta must be a finite number"),
])
def test_bad_settings_are_value_errors_naming_the_argument(kwargs, message):
    args = dict(batch_size=B, num_slots=N, word_size=W)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        samcpu.SparseMemory(**args)


def test_exact_index_refuses_unknown_options():
    m = samcpu.SparseMemory(1, N, W, index="exact")
    with pytest.raises(TypeError, match="ef"):
        samcpu.index.ExactIndex(m._memory, m._written, seed=0, ef=3)


def test_written_rows_checks_the_batch_element(mem):
    for b in (-1, B, 1.0, True):
        with pytest.raises(ValueError, match="b must be"):
            mem.written_rows(b)
    assert len(mem.written_rows(B - 1)) > 0


def test_path_in_a_missing_folder_or_taken(tmp_path):
    with pytest.raises(ValueError, match=r"path '.*missing/m.f32' is in a folder that does not exist"):
        samcpu.SparseMemory(1, N, W, path=tmp_path / "missing" / "m.f32")
    (tmp_path / "taken").write_bytes(b"x")
    with pytest.raises(ValueError, match="already exists"):
        samcpu.SparseMemory(1, N, W, path=tmp_path / "taken")
    with pytest.raises(ValueError, match="unknown key"):  # a bad option leaves no file behind
        samcpu.SparseMemory(1, N, W, path=tmp_path / "m.f32", index_options=dict(bogus=1))
    assert not (tmp_path / "m.f32").exists()


def test_path_without_room_is_refused_at_creation(tmp_path, monkeypatch):
    """The file can grow to B N W itemsize bytes: more than the filesystem has free is refused
    when the memory is made, not by SIGBUS at a later step."""
    real = os.statvfs

    def small(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, 10, 10) + tuple(st)[5:])

    monkeypatch.setattr(os, "statvfs", small)  # 40,960 bytes free
    with pytest.raises(ValueError, match=r"path '.*big.f32': the memory file can grow to 81,920 bytes "
                                         r"but its filesystem has 40,960 bytes free"):
        samcpu.SparseMemory(2, 1280, 8, dtype=np.float32, path=tmp_path / "big.f32")
    assert not (tmp_path / "big.f32").exists()
    samcpu.SparseMemory(1, 1280, 8, dtype=np.float32, path=tmp_path / "fits.f32")  # 40,960 bytes


def test_path_on_a_full_tmpfs(rng, small_tmpfs):
    """On a real 1 MiB tmpfs: a 4 MB memory is refused with a clear error (it used to be
    accepted and die of SIGBUS about 100 steps later); a 512 KB one works."""
    mnt = small_tmpfs("1m")
    with pytest.raises(ValueError, match="the memory file can grow to 4,096,000 bytes"):
        samcpu.SparseMemory(1, 32_000, 32, path=mnt / "big.f32")
    m = samcpu.SparseMemory(1, 4000, 32, num_heads=4, k=4, path=mnt / "fits.f32")
    for _ in range(1100):  # writes every row
        m.step(*random_step_inputs(rng, 1, 4, 32, None, np.float32))
    assert np.isfinite(m.memory).all() and (np.abs(m.memory).sum(axis=2) > 0).sum() > 3000


# ------------------------------------------------------------------ overflow (issue 16.10)
@pytest.mark.parametrize("index,dtype", [("exact", np.float32), ("hnsw", np.float32), ("exact", np.float64)])
def test_huge_inputs_are_refused_and_the_memory_stays_finite(rng, index, dtype):
    m = samcpu.SparseMemory(1, N, W, num_heads=1, k=1, index=index, dtype=dtype)
    limit = m.value_limit
    big = np.finfo(dtype).max / 2
    ones, half = np.ones((1, 1)), np.full((1, 1), 0.5)
    for name in ("add", "query"):
        args = dict(query=np.ones((1, 1, W)), strength=ones, add=np.ones((1, 1, W)), write_gate=ones,
                    interp_gate=half)
        args[name] = np.full((1, 1, W), big, dtype)
        with pytest.raises(ValueError, match=rf"{name} holds \|values\| up to .* above this memory's limit"):
            m.step(**args)
        assert m.position == 0 and not m.memory.any()
    # a row read again and again grows by 0.3 limit a step: the step that would pass the limit
    # is refused and changes nothing
    add = np.full((1, 1, W), 0.3 * limit)
    m.step(np.ones((1, 1, W)), ones, add, ones, np.zeros((1, 1)))
    for _ in range(2):
        m.step(np.ones((1, 1, W)), ones, add, ones, ones)
    before = snapshot(m)
    with pytest.raises(ValueError, match="add would make a memory row reach .* the step was not applied"):
        m.step(np.ones((1, 1, W)), ones, add, ones, ones)
    assert_same(snapshot(m), before)
    assert m.position == 3 and np.isfinite(m.memory).all() and np.abs(m.memory).max() <= limit
    for _ in range(5):  # and it goes on with ordinary values, reading finite values
        res = m.step(*random_step_inputs(rng, 1, 1, W, None, dtype))
        assert np.isfinite(res.reads).all() and np.isfinite(res.weights).all()


def test_value_limit():
    assert samcpu.SparseMemory(1, N, 32).value_limit == pytest.approx(np.sqrt(np.finfo(np.float32).max / 128))
    m64 = samcpu.SparseMemory(1, N, 32, dtype=np.float64, index="exact")
    assert m64.value_limit == pytest.approx(np.sqrt(np.finfo(np.float64).max / 128))
    # a float64 memory with HNSW hands float32 copies to hnswlib: the float32 limit
    assert samcpu.SparseMemory(1, N, 32, dtype=np.float64, index="hnsw").value_limit < 1e19


# ------------------------------------------------------------------ threads (issue 16.9)
@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_a_memory_used_by_a_second_thread_raises(rng, index, tmp_path):
    """While one thread is inside step, every other call from another thread raises
    RuntimeError at once and changes nothing; the first step completes as if alone."""
    import threading

    m = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, index=index)
    twin = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, index=index)
    inputs = [random_step_inputs(rng, B, H, W, None, np.float32) for _ in range(4)]
    for x in inputs[:3]:
        m.step(*x)
        twin.step(*x)
    entered, release = threading.Event(), threading.Event()
    query = m._index.query

    def slow_query(*args):
        entered.set()
        release.wait(30)
        return query(*args)

    m._index.query = slow_query
    results = []
    worker = threading.Thread(target=lambda: results.append(m.step(*inputs[3])))
    worker.start()
    assert entered.wait(30)
    calls = [lambda: m.step(*inputs[3]), lambda: m.rewind(1), m.replay, m.reset, m.clear_journal,
             lambda: m.save(tmp_path / "s"), m.lra_rows, lambda: m.step_record(2)]
    for call in calls:
        with pytest.raises(RuntimeError, match="in use by another thread"):
            call()
    release.set()
    worker.join(30)
    del m._index.query
    expected = twin.step(*inputs[3])
    for x, y in zip(results[0], expected, strict=True):
        np.testing.assert_array_equal(x, y)
    assert_same(snapshot(m), snapshot(twin))
    m.rewind(1)  # usable again from this thread
    assert m.position == 1


HAMMER = r'''
import sys, threading
import numpy as np
import samcpu
sys.path.insert(0, sys.argv[1])
from conftest import random_step_inputs
m = samcpu.SparseMemory(2, 2000, 8, num_heads=2, k=3, index=sys.argv[2], index_options=None)
done, refused = [], []
def run(seed):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        try:
            m.step(*random_step_inputs(rng, 2, 2, 8, None, np.float32))
            done.append(1)
        except RuntimeError:
            refused.append(1)
threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert m.position == len(done) and len(done) + len(refused) == 600, (m.position, len(done), len(refused))
assert np.isfinite(m.memory).all()
print(len(done), len(refused))
'''


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_two_threads_stepping_one_memory_never_crash_it(index, tmp_path):
    """Two threads step one memory as fast as they can (in a subprocess: a crash fails the
    test): every call either completes or raises RuntimeError, and the position counts exactly
    the completed steps."""
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, str(script), tests, index], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=os.path.dirname(tests)))
    assert proc.returncode == 0, proc.stderr[-3000:]
