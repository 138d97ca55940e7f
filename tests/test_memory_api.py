"""SparseMemory's public surface: bad input, persistence, huge lazy memories."""
import os
import time

import numpy as np
import pytest
from conftest import assert_same, random_step_inputs, reseal, saved_file, snapshot

import samcpu

B, N, W, H, K = 2, 10, 4, 2, 3


@pytest.fixture
def mem(rng):
    m = samcpu.SparseMemory(B, N, W, num_heads=H, k=K, index="exact", dtype=np.float64)
    for _ in range(6):
        m.step(*random_step_inputs(rng, B, H, W, None))
    return m


def good(rng):
    return dict(zip(["query", "strength", "add", "write_gate", "interp_gate"],
                    random_step_inputs(rng, B, H, W, None)))


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
    for x, y in zip(snapshot(mem), before):
        np.testing.assert_array_equal(x, y)


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
        for x, y in zip(a, b):
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


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_hundred_million_slots_start_instantly_and_stay_small(rng, tmp_path):
    rss0 = _rss()
    start = time.perf_counter()
    m = samcpu.SparseMemory(1, 100_000_000, 32, num_heads=4, k=4)
    created = time.perf_counter() - start
    assert created < 1.0, f"creating took {created:.2f} s"
    for _ in range(50):
        m.step(*random_step_inputs(rng, 1, 4, 32, None, np.float32))
    grown = _rss() - rss0
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
