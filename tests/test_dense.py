"""The dense accesses.

samcpu.dense.DenseAccess (the product's DAM, vectorised): against the bit-matching oracle's
softmax path (tests/dense_ref.py, k=None) in outputs, state and gradients to float64
round-off, against a direct NumPy computation and by hand, by gradcheck, on degenerate memory,
in dtype handling and in its input checks.
tests/dense_ref.DenseAccess (the oracle): its top-K path against tests/naive.py, k=N against
its softmax path, gradcheck and degenerate memory.
"""
import math

import numpy as np
import pytest
import torch
from conftest import random_step_inputs
from dense_ref import DenseAccess as RefAccess
from dense_ref import DenseState as RefState
from naive import NaiveMemory
from naive import lra_rows as naive_lra_rows

import samcpu
from samcpu.dense import DenseAccess, DenseState, lra_rows

F64 = torch.float64
NAMES = ("query", "strength", "add", "write_gate", "interp_gate")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: these tensors are tiny, and on a loaded machine waking a second
    thread costs more than the work (torch.softmax of 12 numbers took 26 ms with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dam(n, w, h=1, dtype=F64):
    return DenseAccess(n, w, num_heads=h, dtype=dtype)


def oracle(n, w, h=1, dtype=F64):
    return RefAccess(n, w, num_heads=h, k=None, dtype=dtype)


def as_torch(inputs):
    return tuple(torch.as_tensor(x, dtype=F64) for x in inputs)


def unroll(access, state, query, strength, add, write_gate, interp_gate):
    """Run T steps (inputs with a leading time axis); return stacked reads and the state."""
    reads = []
    for step in zip(query, strength, add, write_gate, interp_gate, strict=True):
        r, state = access(*step, state)
        reads.append(r)
    return torch.stack(reads), state


def strong_inputs(rng, steps, b, h, w):
    """Step inputs with strengths up to 100, so that some rows stay below delta and usage
    and the LRA rows vary (leading time axis)."""
    return (rng.normal(size=(steps, b, h, w)), rng.uniform(1.0, 100.0, (steps, b, h)),
            rng.normal(size=(steps, b, h, w)), rng.uniform(size=(steps, b, h)),
            rng.uniform(size=(steps, b, h)))


# ---------------------------------------------------------------- the product's DAM
@pytest.mark.parametrize("b,n,w,h", [(2, 6, 4, 2), (1, 9, 3, 3), (3, 5, 2, 1), (2, 16, 5, 4)])
@pytest.mark.parametrize("awkward", [False, True])
def test_dam_matches_the_oracle(b, n, w, h, awkward):
    """Reads, memory, read weights and usage equal the oracle's softmax path to float64
    round-off over 20 steps (N filled and recycled); ``awkward`` mixes in gates at exactly
    0 and 1, zero queries and identical rows (tests/conftest.py)."""
    rng = np.random.default_rng(n + 100 * h)
    new, ref = dam(n, w, h), oracle(n, w, h)
    s_new, s_ref = new.initial_state(b), ref.initial_state(b)
    pool = rng.normal(size=(3, w))
    skipped = False
    for t in range(1, 21):
        if awkward:
            inputs = as_torch(random_step_inputs(rng, b, h, w, pool))
        else:
            inputs = as_torch(x[0] for x in strong_inputs(rng, 1, b, h, w))
        r_new, s_new = new(*inputs, s_new)
        r_ref, s_ref = ref(*inputs, s_ref)
        for got, want in ((r_new, r_ref), (s_new.memory, s_ref.memory),
                          (s_new.read_weights, s_ref.read_weights)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(s_new.usage.numpy(), s_ref.usage.numpy())
        assert s_new.step == s_ref.step == t
        skipped |= bool(((s_new.usage > 0) & (s_new.usage < t)).any())
    if not awkward:
        assert skipped  # some written row was not accessed at a later step: usage varies


@pytest.mark.parametrize("b,n,w,h,steps", [(2, 6, 3, 2, 5), (1, 5, 4, 3, 4)])
def test_dam_gradients_match_the_oracle(b, n, w, h, steps):
    """Autograd through several steps on both: gradients with respect to q, beta, a, alpha,
    gamma, the initial memory and the initial read weights agree to float64 round-off."""
    rng = np.random.default_rng(steps)
    raw = [torch.tensor(x) for x in strong_inputs(rng, steps, b, h, w)]
    raw[1] = raw[1] / 20  # strengths 0.05-5: softmax weights far from one-hot
    memory0 = torch.tensor(rng.normal(size=(b, n, w)))
    weights0 = torch.tensor(rng.dirichlet(np.ones(n), size=(b, h)))
    usage0 = torch.as_tensor(np.stack([rng.permutation(n) for _ in range(b)]))
    out_weights = [torch.tensor(rng.normal(size=s)) for s in ((steps, b, h, w), (b, n, w), (b, h, n))]

    def grads(access, state_type):
        leaves = [x.clone().requires_grad_() for x in [memory0, weights0, *raw]]
        state = state_type(leaves[0], usage0, leaves[1], n)
        reads, state = unroll(access, state, *leaves[2:])
        loss = sum((o * x).sum() for o, x in zip(out_weights, (reads, state.memory, state.read_weights),
                                                  strict=True))
        loss.backward()
        return [x.grad for x in leaves]

    got, want = grads(dam(n, w, h), DenseState), grads(oracle(n, w, h), RefState)
    for name, g, e in zip(("memory", "read_weights") + NAMES, got, want, strict=True):
        assert g is not None and e is not None, name
        assert e.abs().max() > 1e-3, name  # a real gradient, not zero by accident
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("initial", ["zeros", "random"])
def test_dam_gradcheck_through_four_steps(initial):
    """Finite differences against autograd through 4 steps (and the initial state)."""
    rng = np.random.default_rng(11)
    b, n, w, h = 1, 6, 3, 2
    access = dam(n, w, h)
    inputs = [torch.tensor(x, requires_grad=True) for x in strong_inputs(rng, 4, b, h, w)]
    inputs[1] = (inputs[1].detach() / 25).requires_grad_()
    if initial == "zeros":
        def run(*xs):
            reads, state = unroll(access, access.initial_state(b), *xs)
            return reads, state.memory, state.read_weights
        assert torch.autograd.gradcheck(run, inputs)
    else:
        usage = torch.as_tensor(np.stack([rng.permutation(n) for _ in range(b)]))
        memory0 = torch.tensor(rng.normal(size=(b, n, w)), requires_grad=True)
        weights0 = torch.tensor(rng.dirichlet(np.ones(n), size=(b, h)), requires_grad=True)

        def run(memory, weights, *xs):
            reads, state = unroll(access, DenseState(memory, usage, weights, n), *xs)
            return reads, state.memory, state.read_weights
        assert torch.autograd.gradcheck(run, [memory0, weights0] + inputs)


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


@pytest.mark.parametrize("make", [dam, oracle], ids=["dam", "oracle"])
def test_dense_softmax_matches_numpy(make):
    rng = np.random.default_rng(7)
    b, n, w, h = 2, 6, 4, 2
    access = make(n, w, h)
    state = access.initial_state(b)
    memory, usage, weights = np.zeros((b, n, w)), np.zeros((b, n), np.int64), np.zeros((b, h, n))
    skipped = False
    for t in range(1, 9):  # 8 steps of 2 LRA rows each: the 6 rows are recycled
        inputs = tuple(x[0] for x in strong_inputs(rng, 1, b, h, w))
        reads, memory, usage, weights = numpy_dense_step(memory, usage, weights, inputs, t)
        got, state = access(*as_torch(inputs), state)
        np.testing.assert_allclose(got.numpy(), reads, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.memory.numpy(), memory, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.read_weights.numpy(), weights, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(state.usage.numpy(), usage)
        skipped |= bool(((usage > 0) & (usage < t)).any())
    assert skipped  # some written row was not accessed at a later step


@pytest.mark.parametrize("make", [dam, oracle], ids=["dam", "oracle"])
def test_dense_softmax_by_hand(make):
    """N=3, W=2, H=1. Step 1 writes a1 = [1, 0] with alpha=1, gamma=0.5 to the LRA row 0 and
    reads with q = [1, 0], beta = 1. Step 2 (all rows used at t=1, so LRA = row 0 again)
    erases row 0 and, with gamma = 1, adds w^R_1(i) a2 to every row, a2 = [0, 1]."""
    eps = 1e-6
    access = make(3, 2)
    state = access.initial_state(1)

    def t(*x):
        return torch.tensor(x, dtype=F64)

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


@pytest.mark.parametrize("n,h", [(1, 1), (7, 3), (50, 4), (1000, 8)])
def test_lra_rows_are_the_smallest_by_usage_then_row(n, h):
    """The O(N) selection equals tests/naive.lra_rows (lexicographic (u, i)) on usage with
    many ties, never-used rows and large times."""
    rng = np.random.default_rng(n)
    for high in (3, 10**9):
        usage = rng.integers(0, high, size=(4, n))
        usage[0] = 0  # all never used: rows 0..H-1
        got = lra_rows(torch.as_tensor(usage), h).numpy()
        for b in range(4):
            np.testing.assert_array_equal(got[b], naive_lra_rows(usage[b], h))
        np.testing.assert_array_equal(got[0], np.arange(h))


@pytest.mark.parametrize("case", ["zero_memory", "identical_rows"])
@pytest.mark.parametrize("make", [dam, lambda n, w, h: RefAccess(n, w, h, k=3, dtype=F64)],
                         ids=["dam", "oracle_top3"])
def test_finite_on_degenerate_memory(make, case):
    """All-zero memory with zero queries and adds, or identical rows with a query equal to
    them, and strength 1e-6: outputs and gradients are finite everywhere."""
    b, n, w, h, steps = 2, 6, 3, 2, 3
    access = make(n, w, h)
    state_type = DenseState if isinstance(access, DenseAccess) else RefState
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
    state = state_type(memory, torch.zeros(b, n, dtype=torch.int64), weights, 0)
    reads, state = unroll(access, state, query, strength, add, write_gate, interp_gate)
    for out in (reads, state.memory, state.read_weights):
        assert torch.isfinite(out).all()
    (reads.sum() + state.memory.square().sum() + state.read_weights.square().sum()).backward()
    for name, x in zip(("memory", "read_weights") + NAMES,
                       (memory, weights, query, strength, add, write_gate, interp_gate), strict=True):
        assert x.grad is not None, name
        assert torch.isfinite(x.grad).all(), name
    assert add.grad.abs().sum() > 0  # the gradients are not all zero by accident


def test_float32_by_default_and_the_dtype_follows_the_module():
    rng = np.random.default_rng(0)
    access = DenseAccess(10, 4, num_heads=2)
    state = access.initial_state(3)
    assert state.memory.dtype == state.read_weights.dtype == torch.float32
    for _ in range(4):  # float64 inputs are converted to the state's dtype
        reads, state = access(*as_torch(random_step_inputs(rng, 3, 2, 4)), state)
    assert reads.dtype == state.memory.dtype == state.read_weights.dtype == torch.float32
    assert state.usage.dtype == torch.int64 and state.step == 4

    access.double()
    assert access.dtype == F64
    state = access.initial_state(3)
    inputs = random_step_inputs(rng, 3, 2, 4, dtype=np.float32)
    reads, state = access(*(torch.as_tensor(x) for x in inputs), state)
    assert reads.dtype == state.memory.dtype == state.read_weights.dtype == F64
    access.to(torch.float32)
    assert access.initial_state(1).memory.dtype == torch.float32


def test_dam_model_trains_and_doubles():
    """samcpu.DAM: forward and backward in float32; the same model after .double() in float64."""
    torch.manual_seed(0)
    model = samcpu.DAM(5, 3, hidden_size=16, num_slots=12, word_size=4, num_heads=2)
    x = torch.randn(6, 2, 5)
    y, _ = model(x)
    assert y.dtype == torch.float32 and y.shape == (6, 2, 3)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.double()
    y64, _ = model(x.double())
    assert y64.dtype == F64
    np.testing.assert_allclose(y64.detach().numpy(), y.detach().numpy(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="k and index must be None"):
        samcpu.DAM(5, 3, num_slots=12, k=4)


def good_inputs():
    return {"query": torch.zeros(3, 2, 4), "strength": torch.ones(3, 2), "add": torch.zeros(3, 2, 4),
            "write_gate": torch.ones(3, 2), "interp_gate": torch.ones(3, 2)}


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_naming_the_argument(name):
    access = dam(6, 4, 2)
    state = access.initial_state(3)
    good = good_inputs()
    reads, after = access(**good, state=state)  # the good inputs pass
    cases = [(good[name][..., :1], rf"^{name} has shape .* but expected \(3, 2"),
             (good[name].bool(), rf"^{name} has dtype torch.bool"),
             (torch.full_like(good[name], math.nan), rf"^{name} contains NaN or Inf"),
             (torch.full_like(good[name], math.inf), rf"^{name} contains NaN or Inf")]
    if name == "strength":
        cases += [(torch.zeros(3, 2), r"^strength must be > 0"),
                  (-torch.ones(3, 2), r"^strength must be > 0")]
    if name.endswith("gate"):
        cases += [(torch.full((3, 2), 1.5), rf"^{name} must lie in \[0, 1\]"),
                  (torch.full((3, 2), -0.1), rf"^{name} must lie in \[0, 1\]")]
    before = [x.clone() for x in state[:3]]
    for value, message in cases:
        with pytest.raises(ValueError, match=message):
            access(**dict(good, **{name: value}), state=state)
    for x, y in zip(before, state[:3], strict=True):  # the state is never modified
        assert torch.equal(x, y)
    again, _ = access(**good, state=state)
    assert torch.equal(again, reads)


def test_bad_state_and_settings_raise():
    access = dam(6, 4, 2)
    state = access.initial_state(3)
    good = good_inputs()
    with pytest.raises(ValueError, match="state.memory"):
        access(**good, state=state._replace(memory=torch.zeros(3, 5, 4, dtype=F64)))
    with pytest.raises(ValueError, match="state.usage"):
        access(**good, state=state._replace(usage=torch.zeros(3, 6)))
    with pytest.raises(ValueError, match="state.read_weights"):
        access(**good, state=state._replace(read_weights=torch.zeros(3, 1, 6, dtype=F64)))
    for kwargs, name in (({"num_heads": 7}, "num_heads"), ({"num_slots": 0}, "num_slots"),
                         ({"word_size": 2.0}, "word_size"), ({"dtype": torch.int64}, "dtype")):
        with pytest.raises(ValueError, match=name):
            DenseAccess(**dict({"num_slots": 6, "word_size": 4}, **kwargs))
    with pytest.raises(ValueError, match="batch_size"):
        access.initial_state(0)


# ---------------------------------------------------------------- the oracle (tests/dense_ref.py)
def dense_rows(rows, weights, num_slots):
    """Scatter NaiveMemory's (rows (B, H, K), weights (B, H, K)) into (B, H, N)."""
    out = np.zeros(rows.shape[:2] + (num_slots,))
    np.put_along_axis(out, rows, weights, axis=-1)
    return out


@pytest.mark.parametrize("b,n,w,h,k", [(2, 6, 3, 2, 2), (1, 8, 2, 4, 2), (2, 12, 5, 3, 4),
                                       (1, 5, 3, 1, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_topk_matches_naive(b, n, w, h, k, seed):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(3, w))
    naive = NaiveMemory(b, n, w, num_heads=h, k=k)
    access = RefAccess(n, w, num_heads=h, k=k, dtype=F64)
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


def test_oracle_topk_with_k_equal_n_is_its_softmax():
    rng = np.random.default_rng(3)
    b, n, w, h = 2, 5, 3, 2
    full, topk = RefAccess(n, w, h, k=None, dtype=F64), RefAccess(n, w, h, k=n, dtype=F64)
    s_full, s_topk = full.initial_state(b), topk.initial_state(b)
    for _ in range(10):
        inputs = as_torch(random_step_inputs(rng, b, h, w))
        r_full, s_full = full(*inputs, s_full)
        r_topk, s_topk = topk(*inputs, s_topk)
        for got, want in ((r_topk, r_full), (s_topk.memory, s_full.memory),
                          (s_topk.read_weights, s_full.read_weights)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)
        assert torch.equal(s_topk.usage, s_full.usage)


@pytest.mark.parametrize("initial", ["zeros", "random"])
def test_oracle_topk_gradcheck_through_four_steps(initial):
    """Gradients of the top-3 oracle with respect to q, beta, a, alpha, gamma (and, from a
    random initial state, the initial memory and read weights) through 4 steps, away from
    top-K ties."""
    rng = np.random.default_rng(11)
    b, n, w, h = 1, 8, 3, 2
    access = RefAccess(n, w, num_heads=h, k=3, dtype=F64)
    inputs = [torch.tensor(x, dtype=F64, requires_grad=True) for x in (
        rng.normal(size=(4, b, h, w)), rng.uniform(1.0, 4.0, (4, b, h)),
        rng.normal(size=(4, b, h, w)), rng.uniform(0.2, 0.8, (4, b, h)), rng.uniform(0.2, 0.8, (4, b, h)))]
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
            reads, state = unroll(access, RefState(memory, usage, weights, n), *xs)
            return reads, state.memory, state.read_weights
        assert torch.autograd.gradcheck(run, [memory0, weights0] + inputs)
