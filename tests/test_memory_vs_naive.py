"""SparseMemory(index="exact", float64) against the plain-loop reference of DESIGN.md s.1."""
import numpy as np
import pytest
from conftest import random_step_inputs
from naive import NaiveMemory

import samcpu

CASES = [
    # (B, N, W, H, K, steps, pooled adds)
    (1, 5, 3, 1, 1, 30, False),
    (2, 6, 3, 2, 2, 40, True),
    (3, 9, 4, 4, 2, 40, True),
    (2, 12, 5, 3, 4, 50, False),
    (1, 8, 2, 4, 8, 30, True),
    (2, 40, 6, 4, 8, 60, True),
    (1, 3, 2, 3, 3, 20, True),
    (2, 300, 4, 2, 3, 15, True),  # too few steps to fill the memory: the LRA never recycles
]


def run_pair(rng, b, n, w, h, k, steps, pooled, dtype=np.float64):
    mem = samcpu.SparseMemory(b, n, w, num_heads=h, k=k, index="exact", dtype=dtype)
    ref = NaiveMemory(b, n, w, num_heads=h, k=k)
    pool = rng.normal(size=(3, w)) if pooled else None
    for t in range(steps):
        inputs = random_step_inputs(rng, b, h, w, pool, dtype)
        got = mem.step(*inputs)
        want = ref.step(*inputs)
        yield t, mem, ref, got, want


@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}N{c[1]}W{c[2]}H{c[3]}K{c[4]}" for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_equals_naive(case, seed):
    rng = np.random.default_rng(seed)
    b, n, _, h, k, steps, _ = case
    before = np.zeros((b, n), np.int64)  # the reference's usage before each step
    recycled = False
    for t, mem, ref, got, want in run_pair(rng, *case):
        np.testing.assert_array_equal(got.rows, want.rows, err_msg=f"rows differ at step {t + 1}")
        np.testing.assert_allclose(got.weights, want.weights, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.reads, want.reads, rtol=0, atol=1e-10)
        np.testing.assert_allclose(mem.memory, ref.memory, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(mem.usage, ref.usage, err_msg=f"usage differs at step {t + 1}")
        # the LRA takes a row used before iff fewer than H rows were never used
        recycled |= bool(((before == 0).sum(axis=1) < h).any())
        before = ref.usage.copy()
    assert mem.position == steps
    # a step accesses at most H LRA rows and H*K read rows, so a memory with more than that many
    # rows never recycles; every smaller case here fills up, so its LRA recycles rows
    assert recycled == (steps * h * (k + 1) > n - h)


def test_duplicate_rows_and_ties_resolve_to_lower_row():
    mem = samcpu.SparseMemory(1, 7, 2, num_heads=3, k=3, index="exact", dtype=np.float64)
    a = np.tile([1.0, 2.0], (1, 3, 1))
    one, zero = np.ones((1, 3)), np.zeros((1, 3))
    res = mem.step(a, one, a, one, zero)  # gamma = 0: each head writes a to its LRA row
    np.testing.assert_array_equal(mem.memory[0, :3], a[0])
    np.testing.assert_array_equal(res.rows[0], [[0, 1, 2]] * 3)  # identical rows: lower first
    res = mem.step(-a, one, a, zero, zero)  # nothing written; the written rows score -1
    np.testing.assert_array_equal(res.rows[0], [[3, 4, 5]] * 3)  # zero rows (sim 0) first


def test_float32_matches_naive_closely():
    rng = np.random.default_rng(7)
    for t, mem, ref, got, want in run_pair(rng, 2, 10, 4, 2, 3, 30, False, np.float32):
        np.testing.assert_array_equal(got.rows, want.rows, err_msg=f"rows differ at step {t + 1}")
        np.testing.assert_allclose(got.reads, want.reads, rtol=0, atol=1e-4)
        np.testing.assert_allclose(mem.memory, ref.memory, rtol=0, atol=1e-4)
    assert mem.memory.dtype == np.float32


def test_parallel_blocks_of_the_exact_index_equal_naive(monkeypatch):
    monkeypatch.setattr(samcpu.index.ExactIndex, "block", 3)  # many blocks, split mid-batch
    rng = np.random.default_rng(9)
    for t, mem, ref, got, want in run_pair(rng, 3, 30, 4, 3, 4, 40, True):
        np.testing.assert_array_equal(got.rows, want.rows, err_msg=f"rows differ at step {t + 1}")
        np.testing.assert_allclose(got.reads, want.reads, rtol=0, atol=1e-10)
        np.testing.assert_allclose(mem.memory, ref.memory, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(mem.usage, ref.usage, err_msg=f"usage differs at step {t + 1}")
