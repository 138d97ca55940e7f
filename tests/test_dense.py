"""samcpu.dense.DenseAccess: the dense top-K reference against tests/naive.py, the dense
softmax read (DAM) against a direct NumPy computation and by hand, gradients by gradcheck,
and finite values and gradients on degenerate memory."""
import math

import numpy as np
import pytest
import torch
from conftest import random_step_inputs
from naive import NaiveMemory

from samcpu.dense import DenseAccess, DenseState

torch.set_num_threads(2)
F64 = torch.float64
NAMES = ("query", "strength", "add", "write_gate", "interp_gate")


def as_torch(inputs):
    return tuple(torch.as_tensor(x, dtype=F64) for x in inputs)


def dense_rows(rows, weights, num_slots):
    """Scatter NaiveMemory's (rows (B, H, K), weights (B, H, K)) into (B, H, N)."""
    out = np.zeros(rows.shape[:2] + (num_slots,))
    np.put_along_axis(out, rows, weights, axis=-1)
    return out


@pytest.mark.parametrize("b,n,w,h,k", [(2, 6, 3, 2, 2), (1, 8, 2, 4, 2), (2, 12, 5, 3, 4),
                                       (1, 5, 3, 1, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_matches_naive(b, n, w, h, k, seed):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(3, w))
    naive = NaiveMemory(b, n, w, num_heads=h, k=k)
    access = DenseAccess(n, w, num_heads=h, k=k, dtype=F64)
    state = access.initial_state(b)
    recycled = False
    for _ in range(45):
        inputs = random_step_inputs(rng, b, h, w, pool)
        recycled |= bool((naive.usage > 0).all())
        expected = naive.step(*inputs)
        reads, state = access(*as_torch(inputs), state)
        np.testing.assert_allclose(state.read_weights.numpy(),
                                   dense_rows(expected.rows, expected.weights, n), rtol=0, atol=1e-10)
        np.testing.assert_allclose(reads.numpy(), expected.reads, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.memory.numpy(), naive.memory, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(state.usage.numpy(), naive.usage)
    assert state.step == 45
    assert recycled  # the memory filled, so later steps erased and rewrote used rows


def numpy_dense_step(memory, usage, prev_weights, inputs, t, delta=0.005, eps=1e-6):
    """One DAM step in vectorised NumPy: softmax over all N rows."""
    q, beta, a, alpha, gamma = inputs
    memory, usage = memory.copy(), usage.copy()
    b, n, _ = memory.shape
    h = q.shape[1]
    write = np.zeros((b, h, n))
    for i in range(b):
        lra = np.lexsort((np.arange(n), usage[i]))[:h]
        onehot = np.zeros((h, n))
        onehot[np.arange(h), lra] = 1.0
        write[i] = alpha[i, :, None] * (gamma[i, :, None] * prev_weights[i]
                                        + (1.0 - gamma[i, :, None]) * onehot)
        memory[i, lra] = 0.0
        memory[i] += write[i].T @ a[i]
    qn = np.sqrt((q * q).sum(-1) + eps)
    mn = np.sqrt((memory * memory).sum(-1) + eps)
    c = np.einsum("bhw,bnw->bhn", q, memory) / (qn[:, :, None] * mn[:, None, :])
    z = beta[:, :, None] * c
    e = np.exp(z - z.max(-1, keepdims=True))
    weights = e / e.sum(-1, keepdims=True)
    reads = np.einsum("bhn,bnw->bhw", weights, memory)
    usage[write.sum(1) + weights.sum(1) > delta] = t
    return reads, memory, usage, weights


def test_dense_softmax_matches_numpy():
    rng = np.random.default_rng(7)
    b, n, w, h = 2, 6, 4, 2
    access = DenseAccess(n, w, num_heads=h, k=None, dtype=F64)
    state = access.initial_state(b)
    memory, usage, weights = np.zeros((b, n, w)), np.zeros((b, n), np.int64), np.zeros((b, h, n))
    skipped = False
    for t in range(1, 9):  # 8 steps of 2 LRA rows each: the 6 rows are recycled
        # strong reads leave some rows below delta, so usage and the LRA rows vary
        inputs = (rng.normal(size=(b, h, w)), rng.uniform(20, 100, (b, h)),
                  rng.normal(size=(b, h, w)), rng.uniform(size=(b, h)), rng.uniform(size=(b, h)))
        reads, memory, usage, weights = numpy_dense_step(memory, usage, weights, inputs, t)
        got, state = access(*as_torch(inputs), state)
        np.testing.assert_allclose(got.numpy(), reads, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.memory.numpy(), memory, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.read_weights.numpy(), weights, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(state.usage.numpy(), usage)
        skipped |= bool(((usage > 0) & (usage < t)).any())
    assert skipped  # some written row was not accessed at a later step


def test_dense_softmax_by_hand():
    """N=3, W=2, H=1. Step 1 writes a1 = [1, 0] with alpha=1, gamma=0.5 to the LRA row 0 and
    reads with q = [1, 0], beta = 1. Step 2 (all rows used at t=1, so LRA = row 0 again)
    erases row 0 and, with gamma = 1, adds w^R_1(i) a2 to every row, a2 = [0, 1]."""
    eps = 1e-6
    access = DenseAccess(3, 2, k=None, dtype=F64)
    state = access.initial_state(1)
    t = lambda *x: torch.tensor(x, dtype=F64)
    reads, state = access(t([[1.0, 0.0]]), t([1.0]), t([[1.0, 0.0]]), t([1.0]), t([0.5]), state)
    c0 = 0.5 / (math.sqrt(1 + eps) * math.sqrt(0.25 + eps))
    w1 = np.array([math.exp(c0), 1.0, 1.0]) / (math.exp(c0) + 2.0)
    np.testing.assert_allclose(state.memory[0].numpy(), [[0.5, 0], [0, 0], [0, 0]], atol=1e-15)
    np.testing.assert_allclose(state.read_weights[0, 0].numpy(), w1, rtol=1e-14)
    np.testing.assert_allclose(reads[0, 0].numpy(), [0.5 * w1[0], 0.0], rtol=1e-14)
    assert state.usage.tolist() == [[1, 1, 1]]

    reads, state = access(t([[0.0, 1.0]]), t([2.0]), t([[0.0, 1.0]]), t([1.0]), t([1.0]), state)
    m2 = np.stack([np.zeros(3), w1], axis=1)
    np.testing.assert_allclose(state.memory[0].numpy(), m2, rtol=1e-14)
    c = w1 / (math.sqrt(1 + eps) * np.sqrt(w1 ** 2 + eps))
    w2 = np.exp(2 * c) / np.exp(2 * c).sum()
    np.testing.assert_allclose(state.read_weights[0, 0].numpy(), w2, rtol=1e-14)
    np.testing.assert_allclose(reads[0, 0].numpy(), [0.0, w2 @ w1], rtol=1e-14)
    assert state.usage.tolist() == [[2, 2, 2]]


def test_topk_with_k_equal_n_is_the_dense_softmax():
    rng = np.random.default_rng(3)
    b, n, w, h = 2, 5, 3, 2
    full, topk = DenseAccess(n, w, h, k=None, dtype=F64), DenseAccess(n, w, h, k=n, dtype=F64)
    s_full, s_topk = full.initial_state(b), topk.initial_state(b)
    for _ in range(10):
        inputs = as_torch(random_step_inputs(rng, b, h, w))
        r_full, s_full = full(*inputs, s_full)
        r_topk, s_topk = topk(*inputs, s_topk)
        for got, want in ((r_topk, r_full), (s_topk.memory, s_full.memory),
                          (s_topk.read_weights, s_full.read_weights)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)
        assert torch.equal(s_topk.usage, s_full.usage)


def unroll(access, state, query, strength, add, write_gate, interp_gate):
    """Run T steps (inputs with a leading time axis); return stacked reads and the state."""
    reads = []
    for step in zip(query, strength, add, write_gate, interp_gate):
        r, state = access(*step, state)
        reads.append(r)
    return torch.stack(reads), state


def gradcheck_inputs(rng, steps, b, h, w):
    return [torch.tensor(x, dtype=F64, requires_grad=True) for x in (
        rng.normal(size=(steps, b, h, w)), rng.uniform(1.0, 4.0, (steps, b, h)),
        rng.normal(size=(steps, b, h, w)), rng.uniform(0.2, 0.8, (steps, b, h)),
        rng.uniform(0.2, 0.8, (steps, b, h)))]


@pytest.mark.parametrize("k", [3, None])
@pytest.mark.parametrize("initial", ["zeros", "random"])
def test_gradcheck_through_four_steps(k, initial):
    """Gradients with respect to q, beta, a, alpha, gamma (and, from a random initial state,
    the initial memory and read weights) through 4 steps, away from top-K ties."""
    rng = np.random.default_rng(11)
    b, n, w, h = 1, 8, 3, 2
    access = DenseAccess(n, w, num_heads=h, k=k, dtype=F64)
    inputs = gradcheck_inputs(rng, 4, b, h, w)
    if initial == "zeros":
        def run(*xs):
            reads, state = unroll(access, access.initial_state(b), *xs)
            return reads, state.memory, state.read_weights
        assert torch.autograd.gradcheck(run, inputs)
    else:
        usage = torch.as_tensor(np.stack([rng.permutation(n) for _ in range(b)]))
        memory0 = torch.tensor(rng.normal(size=(b, n, w)), dtype=F64, requires_grad=True)
        weights0 = torch.tensor(rng.dirichlet(np.ones(n), size=(b, h)), dtype=F64, requires_grad=True)

        def run(memory, weights, *xs):
            reads, state = unroll(access, DenseState(memory, usage, weights, n), *xs)
            return reads, state.memory, state.read_weights
        assert torch.autograd.gradcheck(run, [memory0, weights0] + inputs)


@pytest.mark.parametrize("k", [3, None])
@pytest.mark.parametrize("case", ["zero_memory", "identical_rows"])
def test_finite_on_degenerate_memory(k, case):
    """All-zero memory with zero queries and adds, or identical rows with a query equal to
    them, and strength 1e-6: outputs and gradients are finite everywhere."""
    b, n, w, h, steps = 2, 6, 3, 2, 3
    access = DenseAccess(n, w, num_heads=h, k=k, dtype=F64)
    if case == "zero_memory":
        memory = torch.zeros(b, n, w, dtype=F64, requires_grad=True)
        query = torch.zeros(steps, b, h, w, dtype=F64, requires_grad=True)
        add = torch.zeros(steps, b, h, w, dtype=F64, requires_grad=True)
    else:
        row = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
        memory = row.expand(b, n, w).clone().requires_grad_(True)
        query = row.expand(steps, b, h, w).clone().requires_grad_(True)
        add = row.expand(steps, b, h, w).clone().requires_grad_(True)
    strength = torch.full((steps, b, h), 1e-6, dtype=F64, requires_grad=True)
    write_gate = torch.full((steps, b, h), 0.5, dtype=F64, requires_grad=True)
    interp_gate = torch.full((steps, b, h), 0.5, dtype=F64, requires_grad=True)
    weights = torch.zeros(b, h, n, dtype=F64, requires_grad=True)
    state = DenseState(memory, torch.zeros(b, n, dtype=torch.int64), weights, 0)
    reads, state = unroll(access, state, query, strength, add, write_gate, interp_gate)
    for out in (reads, state.memory, state.read_weights):
        assert torch.isfinite(out).all()
    (reads.sum() + state.memory.square().sum() + state.read_weights.square().sum()).backward()
    for name, x in zip(("memory", "read_weights") + NAMES,
                       (memory, weights, query, strength, add, write_gate, interp_gate)):
        assert x.grad is not None, name
        assert torch.isfinite(x.grad).all(), name
    assert add.grad.abs().sum() > 0  # the gradients are not all zero by accident


def test_float32_runs_in_float32():
    access = DenseAccess(10, 4, num_heads=2, k=3)
    state = access.initial_state(3)
    rng = np.random.default_rng(0)
    for _ in range(4):
        inputs = random_step_inputs(rng, 3, 2, 4, dtype=np.float32)
        reads, state = access(*(torch.as_tensor(x) for x in inputs), state)
    assert reads.dtype == state.memory.dtype == state.read_weights.dtype == torch.float32
    assert state.usage.dtype == torch.int64 and state.step == 4
    assert ((state.read_weights > 0).sum(-1) <= 3).all()


def test_bad_shapes_and_settings_raise():
    access = DenseAccess(6, 4, num_heads=2, k=2, dtype=F64)
    state = access.initial_state(3)
    good = {"query": torch.zeros(3, 2, 4), "strength": torch.ones(3, 2),
            "add": torch.zeros(3, 2, 4), "write_gate": torch.ones(3, 2),
            "interp_gate": torch.ones(3, 2)}
    for name in NAMES:
        bad = dict(good, **{name: good[name][..., :1]})
        with pytest.raises(ValueError, match=rf"^{name} has shape .* but expected \(3, 2"):
            access(**bad, state=state)
    with pytest.raises(ValueError, match="state.memory"):
        access(**good, state=state._replace(memory=torch.zeros(3, 5, 4, dtype=F64)))
    with pytest.raises(ValueError, match="state.read_weights"):
        access(**good, state=state._replace(read_weights=torch.zeros(3, 1, 6, dtype=F64)))
    for kwargs in ({"k": 7}, {"k": 0}, {"num_heads": 7}, {"num_slots": 0}):
        with pytest.raises(ValueError):
            DenseAccess(**dict({"num_slots": 6, "word_size": 4}, **kwargs))
