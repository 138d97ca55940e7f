"""Rewind, replay and reset: incremental equals rebuild, bit for bit."""
import numpy as np
import pytest
from conftest import assert_same, random_step_inputs, snapshot

import samcpu


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rewind_to_every_position_is_bit_exact(dtype):
    rng = np.random.default_rng(3)
    mem = samcpu.SparseMemory(2, 12, 4, num_heads=2, k=3, dtype=dtype)
    pool = rng.normal(size=(3, 4))
    snaps = [snapshot(mem)]
    steps = [random_step_inputs(rng, 2, 2, 4, pool, dtype) for _ in range(40)]
    for inputs in steps:
        mem.step(*inputs)
        snaps.append(snapshot(mem))
    for p in [39, 33, 20, 20, 7, 1, 0]:  # backwards, with a no-op rewind in between
        mem.rewind(p)
        assert mem.position == p
        assert_same(snapshot(mem), snaps[p])
    mem.replay()
    assert mem.position == 40
    assert_same(snapshot(mem), snaps[40])
    for p in rng.permutation(41):  # arbitrary order: forward moves replay
        mem.rewind(int(p))
        assert_same(snapshot(mem), snaps[p])


def test_steps_after_rewind_equal_a_fresh_run():
    rng = np.random.default_rng(4)
    steps = [random_step_inputs(rng, 1, 3, 5, None) for _ in range(30)]
    other = [random_step_inputs(rng, 1, 3, 5, None) for _ in range(10)]
    mem = samcpu.SparseMemory(1, 10, 5, num_heads=3, k=2, dtype=np.float64)
    for inputs in steps:
        mem.step(*inputs)
    mem.rewind(20)
    out = [mem.step(*inputs) for inputs in other]  # a new future replaces steps 21..30
    assert mem.latest == 30 and mem.position == 30
    fresh = samcpu.SparseMemory(1, 10, 5, num_heads=3, k=2, dtype=np.float64)
    for inputs in steps[:20]:
        fresh.step(*inputs)
    ref = [fresh.step(*inputs) for inputs in other]
    for a, b in zip(out, ref, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert_same(snapshot(mem), snapshot(fresh))


def test_clear_journal_limits_rewind_and_keeps_contents():
    rng = np.random.default_rng(5)
    mem = samcpu.SparseMemory(1, 8, 3, num_heads=2, k=2)
    for _ in range(10):
        mem.step(*random_step_inputs(rng, 1, 2, 3, None, np.float32))
    before = snapshot(mem)
    mem.clear_journal()
    assert mem.earliest == 10 and mem.journal_nbytes == 0
    assert_same(snapshot(mem), before)
    with pytest.raises(ValueError, match="position must be in \\[10, 10\\]"):
        mem.rewind(5)
    mem.step(*random_step_inputs(rng, 1, 2, 3, None, np.float32))
    mem.rewind(10)
    assert_same(snapshot(mem), before)


def test_reset_equals_a_new_memory():
    rng = np.random.default_rng(6)
    steps = [random_step_inputs(rng, 2, 2, 4, None) for _ in range(15)]
    mem = samcpu.SparseMemory(2, 16, 4, num_heads=2, k=3, dtype=np.float64)
    for inputs in steps:
        mem.step(*inputs)
    mem.clear_journal()  # reset must not need the journal
    mem.step(*steps[0])
    mem.reset()
    assert mem.position == 0 and not mem.memory.any() and not mem.usage.any()
    assert all(len(mem.written_rows(b)) == 0 for b in range(2))
    fresh = samcpu.SparseMemory(2, 16, 4, num_heads=2, k=3, dtype=np.float64)
    for inputs in steps:
        a, b = mem.step(*inputs), fresh.step(*inputs)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_reset_of_a_huge_memory_zeroes_the_rows_touched():
    """Correctness only: reset's cost (O(rows touched), not O(N)) is measured by
    benchmarks/kernels.py, not asserted here (a unit test never asserts on time)."""
    mem = samcpu.SparseMemory(1, 50_000_000, 32, num_heads=4, k=4)
    rng = np.random.default_rng(0)
    for _ in range(300):
        mem.step(rng.normal(size=(1, 4, 32)), rng.uniform(1, 5, (1, 4)), rng.normal(size=(1, 4, 32)),
                 rng.uniform(size=(1, 4)), rng.uniform(size=(1, 4)))
    touched = mem.written_rows(0)
    assert 0 < len(touched) < 10_000 and mem.memory[0, touched].any()
    mem.reset()
    assert not mem.memory[0, touched].any() and mem.usage[0, touched].max() == 0
    assert len(mem.written_rows(0)) == 0 and mem.position == 0
    mem.step(np.ones((1, 4, 32)), np.ones((1, 4)), np.ones((1, 4, 32)), np.ones((1, 4)), np.zeros((1, 4)))
    np.testing.assert_array_equal(np.sort(mem.written_rows(0)), np.arange(4))  # rows 0..3 first again


def test_interrupted_step_leaves_memory_unchanged(monkeypatch):
    rng = np.random.default_rng(8)
    mem = samcpu.SparseMemory(1, 8, 3, num_heads=2, k=2, dtype=np.float64)
    for _ in range(5):
        mem.step(*random_step_inputs(rng, 1, 2, 3, None))
    before = snapshot(mem)

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(mem.index, "query", boom)
    with pytest.raises(KeyboardInterrupt):
        mem.step(*random_step_inputs(rng, 1, 2, 3, None))
    assert mem.position == 5 and mem.latest == 5
    assert_same(snapshot(mem), before)
