"""Kernels against tests/naive.py, with hypothesis for awkward inputs."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from samcpu import kernels as K
from samcpu.config import EPS

settings.register_profile("samcpu", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("samcpu")


@st.composite
def memories(draw, max_rows=24, max_width=6):
    """A memory with zero rows, duplicate rows and exact ties mixed in, plus queries."""
    n = draw(st.integers(1, max_rows))
    w = draw(st.integers(1, max_width))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mem = rng.normal(size=(n, w))
    kind = rng.integers(4, size=n)
    mem[kind == 0] = 0.0                                          # zero rows
    dup = np.flatnonzero(kind == 1)
    if len(dup):
        mem[dup] = mem[rng.integers(n)]                           # duplicate rows
    mem[kind == 2] = np.round(mem[kind == 2])                     # coarse values: more ties
    h = draw(st.integers(1, 4))
    q = rng.normal(size=(h, w))
    q[rng.random(h) < 0.2] = 0.0
    pick = rng.random(h) < 0.3
    q[pick] = mem[rng.integers(n, size=int(pick.sum()))]
    k = draw(st.integers(1, min(n, 8)))
    return mem.astype(dtype), q.astype(dtype), k


@given(memories(), st.integers(1, 7))
def test_cosine_topk_equals_naive(case, block):
    mem, q, k = case
    rows, sims = K.cosine_topk(mem, q, k, EPS, block)
    want_rows, want_sims = naive.cosine_topk(mem, q, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(sims, want_sims)  # same operation order: same bits


@given(memories())
def test_cosine_similarity_is_exactly_zero_for_zero_rows(case):
    mem, q, _ = case
    for h in range(len(q)):
        assert K.cosine_similarity(q[h], np.zeros_like(mem[0]), EPS) == 0.0
        for r in range(len(mem)):
            assert K.cosine_similarity(q[h], mem[r], EPS) == naive.cosine_similarity(q[h], mem[r])


@given(memories(), st.integers(0, 2**32 - 1))
def test_softmax_read_equals_naive(case, seed):
    mem, q, k = case
    rng = np.random.default_rng(seed)
    h = len(q)
    rows = rng.integers(len(mem), size=(h, k))
    strength = rng.uniform(0.01, 50.0, size=h)
    weights, reads, sims = np.empty((h, k)), np.empty((h, mem.shape[1])), np.empty((h, k))
    K.softmax_read(mem, rows, q, strength, EPS, weights, reads, sims)
    want_w, want_r = naive.softmax_read(mem, rows, q, strength)
    np.testing.assert_allclose(weights, want_w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(reads, want_r, rtol=0, atol=1e-12)
    assert np.isfinite(weights).all() and np.isfinite(reads).all()


@given(st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_ring_matches_naive_lra_and_undoes_exactly(n, h, seed):
    h = min(h, n)
    rng = np.random.default_rng(seed)
    usage, prev, nxt = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    ends = np.zeros(4, np.int64)
    history = []
    for t in range(1, 25):
        lra = np.empty(h, np.int64)
        K.lra_rows(usage, nxt, ends, h, lra)
        np.testing.assert_array_equal(lra, naive.lra_rows(usage, h))
        touched = np.unique(rng.integers(n, size=rng.integers(0, 6)))
        before = (usage.copy(), prev.copy(), nxt.copy(), ends[[0, 1, 3]].copy())
        records = np.empty((len(touched), 3), np.int32)  # as in the journal
        for i, r in enumerate(touched):
            K.ring_touch(usage, prev, nxt, ends, r, t, records[i])
        history.append((before, records))
        order = np.empty(ends[3], np.int64)
        K.ring_rows(nxt, ends, order)
        accessed = np.flatnonzero(usage)
        np.testing.assert_array_equal(order, accessed[np.lexsort((accessed, usage[accessed]))])
    for before, records in reversed(history):
        for rec in records[::-1]:
            K.ring_untouch(usage, prev, nxt, ends, rec)
        for x, y in zip((usage, prev, nxt, ends[[0, 1, 3]]), before, strict=True):
            np.testing.assert_array_equal(x, y)


@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_sparse_write_journal_swap_round_trip(seed, dtype):
    rng = np.random.default_rng(seed)
    n, w, h, k = 12, 3, 3, 2
    mem = rng.normal(size=(n, w)).astype(dtype)
    lra = rng.choice(n, size=h, replace=False)
    prev_rows = rng.integers(-1, n, size=(h, k))  # -1: no previous read; duplicates allowed
    prev_w = rng.uniform(size=(h, k)).astype(dtype)
    add = rng.normal(size=(h, w)).astype(dtype)
    alpha, gamma = rng.uniform(size=h).astype(dtype), rng.uniform(size=h).astype(dtype)
    jrows = np.empty(h * (k + 1), np.int64)
    jold = np.empty((h * (k + 1), w), dtype)
    original = mem.copy()
    cnt = K.write_rows(lra, prev_rows, jrows)
    assert sorted(jrows[:cnt]) == sorted(set(lra) | set(prev_rows[prev_rows >= 0]))
    K.journal_save(mem, jrows, cnt, jold)
    K.sparse_write(mem, lra, prev_rows, prev_w, add, alpha, gamma)
    # the same write as plain loops (DESIGN.md s.1 steps 2-3)
    want = original.astype(np.float64)
    want[lra] = 0.0
    for i in range(h):
        for j in range(k):
            if prev_rows[i, j] >= 0:
                want[prev_rows[i, j]] += (float(alpha[i]) * float(gamma[i]) * float(prev_w[i, j])
                                          * add[i].astype(np.float64))
        want[lra[i]] += float(alpha[i]) * (1.0 - float(gamma[i])) * add[i].astype(np.float64)
    single = dtype == np.float32
    np.testing.assert_allclose(mem, want, rtol=1e-5 if single else 1e-12, atol=1e-6 if single else 1e-12)
    written = mem.copy()
    K.journal_swap(mem, jrows, cnt, jold)
    np.testing.assert_array_equal(mem, original)
    K.journal_swap(mem, jrows, cnt, jold)
    np.testing.assert_array_equal(mem, written)


def torch_read(rows, q, beta, eps=EPS):
    """r = sum_k softmax(beta c(q, m_k)) m_k for one head, in torch (float64)."""
    qn = torch.sqrt((q * q).sum() + eps)
    mn = torch.sqrt((rows * rows).sum(-1) + eps)
    c = (rows @ q) / (qn * mn)
    w = torch.softmax(beta * c, 0)
    return w @ rows, w


@pytest.mark.parametrize("case", ["random", "zero rows", "identical rows", "weak strength", "zero query"])
def test_read_backward_equals_torch_autograd(case):
    rng = np.random.default_rng(11)
    h, k, w = 3, 5, 7
    rows = rng.normal(size=(h, k, w))
    q = rng.normal(size=(h, w))
    beta = rng.uniform(0.5, 10.0, size=h)
    if case == "zero rows":
        rows[:, 1:3] = 0.0
    elif case == "identical rows":
        rows[:, :] = rows[:, :1]
    elif case == "weak strength":
        beta[:] = 1e-8
    elif case == "zero query":
        q[0] = 0.0
    g_r = rng.normal(size=(h, w))
    g_w = rng.normal(size=(h, k))
    # forward through the kernel
    mem = rows.reshape(h * k, w)
    idx = np.arange(h * k).reshape(h, k)
    weights, reads, sims = np.empty((h, k)), np.empty((h, w)), np.empty((h, k))
    K.softmax_read(mem, idx, q, beta, EPS, weights, reads, sims)
    gq, gb, grows = np.empty((h, w)), np.empty(h), np.empty((h, k, w))
    K.read_backward(rows, q, beta, weights, sims, g_r, g_w, EPS, gq, gb, grows)
    for i in range(h):
        tr = torch.tensor(rows[i], requires_grad=True)
        tq = torch.tensor(q[i], requires_grad=True)
        tb = torch.tensor(beta[i], requires_grad=True)
        r, wt = torch_read(tr, tq, tb)
        np.testing.assert_allclose(reads[i], r.detach().numpy(), rtol=0, atol=1e-12)
        ((r * torch.tensor(g_r[i])).sum() + (wt * torch.tensor(g_w[i])).sum()).backward()
        np.testing.assert_allclose(gq[i], tq.grad.numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gb[i], tb.grad.item(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(grows[i], tr.grad.numpy(), rtol=1e-9, atol=1e-9)
    assert np.isfinite(gq).all() and np.isfinite(grows).all() and np.isfinite(gb).all()


def test_read_backward_equals_finite_differences():
    rng = np.random.default_rng(12)
    rows, q, beta, g = rng.normal(size=(4, 5)), rng.normal(size=5), 3.0, rng.normal(size=5)
    weights, reads, sims = np.empty((1, 4)), np.empty((1, 5)), np.empty((1, 4))
    K.softmax_read(rows, np.arange(4)[None], q[None], np.array([beta]), EPS, weights, reads, sims)
    gq, gb, grows = np.empty((1, 5)), np.empty(1), np.empty((1, 4, 5))
    K.read_backward(rows[None], q[None], np.array([beta]), weights, sims, g[None], np.zeros((1, 4)),
                    EPS, gq, gb, grows)
    fd_q, fd_b, fd_rows = naive.read_backward(rows, q, beta, g)
    np.testing.assert_allclose(gq[0], fd_q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb[0], fd_b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grows[0], fd_rows, rtol=1e-5, atol=1e-7)


@given(st.integers(1, 200), st.integers(0, 2**32 - 1))
def test_unwritten_rows_are_the_lowest_non_members(n, seed):
    rng = np.random.default_rng(seed)
    flags = (rng.random(n) < rng.random()).astype(np.uint8)
    hint = np.zeros(1, np.int64)
    k = int(rng.integers(1, 10))
    out = np.empty(k, np.int64)
    for _ in range(2):  # the second call starts from the advanced hint
        c = K.unwritten_rows(flags, hint, k, out)
        np.testing.assert_array_equal(out[:c], np.flatnonzero(flags == 0)[:k])
