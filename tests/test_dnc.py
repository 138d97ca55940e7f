"""samcpu.dnc (the DNC, the SDNC's dense baseline): each equation against the loops of
tests/naive.py (dnc_*), whole steps against NaiveDNC, a tiny case worked out by hand
(allocation order, link matrix, read modes), gradcheck through several steps in float64,
all-zero memory (no NaN, deepmind/dnc's testDivideByZero), dtype handling and input checks."""
import numpy as np
import pytest
import torch

import naive
import samcpu
from samcpu import dnc as D

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t(x):
    return torch.as_tensor(np.asarray(x), dtype=F64)


def random_interface(rng, b, n, w, r, wr, special=True):
    """A DNCInterface in float64 with gates at exactly 0 and 1 mixed in when ``special``."""
    def gates(*shape):
        g = rng.uniform(size=shape)
        if special:
            g[rng.random(shape) < 0.15] = 0.0
            g[rng.random(shape) < 0.15] = 1.0
        return g

    modes = rng.dirichlet(np.ones(1 + 2 * wr), size=(b, r))
    return D.DNCInterface(t(rng.normal(size=(b, r, w))), t(rng.uniform(0.5, 10, size=(b, r))),
                          t(rng.normal(size=(b, wr, w))), t(rng.uniform(0.5, 10, size=(b, wr))),
                          t(gates(b, wr, w)), t(rng.normal(size=(b, wr, w))), t(gates(b, r)),
                          t(gates(b, wr)), t(gates(b, wr)), t(modes))


def random_state(rng, b, n, w, r, wr):
    """A state as the DNC could hold it: usage in (0, 1), weights summing to <= 1, link with a
    zero diagonal and rows summing to <= 1."""
    link = rng.uniform(size=(b, wr, n, n)) / n
    for i in range(n):
        link[:, :, i, i] = 0
    simplex = lambda heads: rng.dirichlet(np.ones(n), size=(b, heads))  # noqa: E731
    return D.DNCState(t(rng.normal(size=(b, n, w))), t(rng.uniform(0.05, 0.95, size=(b, n))), t(link),
                      t(simplex(wr) * 0.9), t(simplex(r)), t(simplex(wr) * 0.8))


def close(a, b, tol=1e-12):
    def plain(x):
        return np.asarray(x.detach() if isinstance(x, torch.Tensor) else x)

    np.testing.assert_allclose(plain(a), plain(b), rtol=tol, atol=tol)


# --------------------------------------------------------------------------- each equation


def test_content_weights(rng):
    b, h, n, w = 2, 3, 7, 4
    keys, memory = rng.normal(size=(b, h, w)), rng.normal(size=(b, n, w))
    memory[:, 2] = 0  # an all-zero row: similarity exactly 0
    strengths = rng.uniform(0.5, 20, size=(b, h))
    out = D.content_weights(t(keys), t(memory), t(strengths))
    for i in range(b):
        close(out[i], naive.dnc_content_weights(keys[i], memory[i], strengths[i]))


def test_usage(rng):
    for _ in range(20):
        n, r, wr = 6, 3, 2
        u, ww = rng.uniform(size=n), rng.uniform(size=(wr, n)) / 2
        free, rw = rng.uniform(size=r), rng.dirichlet(np.ones(n), size=r)
        free[0], ww[0, 1], u[2] = 1.0, 1.0, 1.0
        out = D.usage_after_read(D.usage_after_write(t(u)[None], t(ww)[None]), t(free)[None], t(rw)[None])
        close(out[0], naive.dnc_usage(u, ww, free, rw))


def test_allocation_with_ties(rng):
    usage = np.array([[0.5, 0.2, 0.5, 0.2, 1.0, 0.0, 0.2], [0.3] * 7, [0.0] * 7, [1.0] * 7])
    out = D.allocation(t(usage))
    for i in range(len(usage)):
        close(out[i], naive.dnc_allocation(usage[i]))
    eps = 1e-6
    # equal usage: the lower row is allocated first, each next row gets (1 - u) u^k
    expected = [(1 - (eps + (1 - eps) * 0.3)) * (eps + (1 - eps) * 0.3) ** j for j in range(7)]
    close(out[1], expected)
    assert out[2].argmax() == 0 and out[2, 0] == pytest.approx(1 - eps)
    for _ in range(20):  # many ties drawn from a small set
        u = rng.choice([0.0, 0.25, 0.5, 1.0], size=(3, 9))
        close(D.allocation(t(u)), np.array([naive.dnc_allocation(x) for x in u]))


def test_write_allocation_and_weights(rng):
    n, wr = 8, 3
    u = rng.choice([0.1, 0.4, 0.4, 0.9], size=n)
    gates = rng.uniform(size=wr)
    alloc = D.write_allocation_weights(t(u)[None], t(gates)[None])
    close(alloc[0], naive.dnc_write_allocation(u, gates))
    content = rng.dirichlet(np.ones(n), size=wr)
    ga, gw = rng.uniform(size=wr), rng.uniform(size=wr)
    ww = D.write_weights(t(content)[None], alloc, t(ga)[None], t(gw)[None])
    close(ww[0], naive.dnc_write_weights(content, alloc[0].numpy(), ga, gw))


def test_erase_and_write(rng):
    n, w, wr = 5, 4, 2
    memory, ww = rng.normal(size=(n, w)), rng.dirichlet(np.ones(n), size=wr)
    erase, vectors = rng.uniform(size=(wr, w)), rng.normal(size=(wr, w))
    out = D.erase_and_write(t(memory)[None], t(ww)[None], t(erase)[None], t(vectors)[None])
    close(out[0], naive.dnc_erase_and_write(memory, ww, erase, vectors))


def test_link_and_precedence(rng):
    n, wr = 6, 2
    state = random_state(rng, 1, n, 2, 1, wr)
    ww = rng.dirichlet(np.ones(n), size=wr) * 0.7
    ww[1, 3] = 0.0
    prev_link = state.link[0].numpy()
    new = D.link(state.link, state.precedence, t(ww)[None])
    close(new[0], naive.dnc_link(prev_link, state.precedence[0].numpy(), ww))
    assert (torch.diagonal(new, dim1=-2, dim2=-1) == 0).all()
    expected = naive.dnc_precedence(state.precedence[0].numpy(), ww)
    close(D.precedence(state.precedence, t(ww)[None])[0], expected)


def test_link_diagonal_stays_zero_when_a_row_follows_itself():
    """Writing row 0 twice in a row: p(0) = 1, but L[0, 0] stays 0."""
    p = t([[[1.0, 0, 0]]])
    out = D.link(torch.zeros(1, 1, 3, 3, dtype=F64), p, t([[[1.0, 0, 0]]]))
    assert not out.any()
    out = D.link(torch.zeros(1, 1, 3, 3, dtype=F64), p, t([[[0.0, 1.0, 0]]]))
    close(out[0, 0], [[0, 0, 0], [1, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("needs", [(True, True, True), (False, False, True), (True, False, False)])
def test_link_gradcheck(rng, needs):
    """The hand-written backward of the link update, also with a non-zero diagonal in L_{t-1}
    and with only some inputs requiring gradients."""
    b, wr, n = 2, 2, 5
    inputs = [t(rng.uniform(size=(b, wr, n, n))), t(rng.uniform(size=(b, wr, n))),
              t(rng.uniform(size=(b, wr, n)) / n)]
    inputs = [x.requires_grad_(need) for x, need in zip(inputs, needs, strict=True)]
    assert torch.autograd.gradcheck(D.link, inputs)
    plain = (1 - inputs[2].unsqueeze(-1) - inputs[2].unsqueeze(-2)) * inputs[0] + \
        inputs[2].unsqueeze(-1) * inputs[1].unsqueeze(-2)
    close(D.link(*inputs), plain * (1 - torch.eye(n, dtype=F64)))


def test_directional_and_read_weights(rng):
    n, r, wr = 5, 3, 2
    state = random_state(rng, 1, n, 2, r, wr)
    f = D.directional_weights(state.link, state.read_weights, forward=True)
    bw = D.directional_weights(state.link, state.read_weights, forward=False)
    link, prev = state.link[0].numpy(), state.read_weights[0].numpy()
    close(f[0], naive.dnc_directional(link, prev, True))
    close(bw[0], naive.dnc_directional(link, prev, False))
    content = rng.dirichlet(np.ones(n), size=r)
    modes = rng.dirichlet(np.ones(1 + 2 * wr), size=r)
    out = D.read_weights(t(content)[None], f, bw, t(modes)[None])
    close(out[0], naive.dnc_read_weights(content, f[0].numpy(), bw[0].numpy(), modes))


# --------------------------------------------------------------------------- whole steps


@pytest.mark.parametrize("r,wr", [(1, 1), (2, 2), (4, 1)])
def test_steps_against_naive(rng, r, wr):
    b, n, w, steps = 2, 6, 3, 6
    access = D.DenseTemporalAccess(n, w, r, wr, dtype=F64)
    state = access.initial_state(b)
    refs = [naive.NaiveDNC(n, w, r, wr) for _ in range(b)]
    for _ in range(steps):
        interface = random_interface(rng, b, n, w, r, wr)
        reads, state = access(interface, state)
        for i in range(b):
            expected = refs[i].step(*(x[i].numpy() for x in interface))
            close(reads[i], expected, 1e-11)
            close(state.memory[i], refs[i].memory, 1e-11)
            close(state.usage[i], refs[i].usage, 1e-11)
            close(state.link[i], refs[i].link, 1e-11)
            close(state.precedence[i], refs[i].precedence, 1e-11)
            close(state.read_weights[i], refs[i].read_weights, 1e-11)


def test_tiny_case_by_hand():
    """N = 3, one read and one write head, allocation gate 1, all usage 0 at the start.

    Step 1 allocates row 0 (equal usage: the lower row) with weight 1 - eps, and leaks
    (1 - eps) eps to row 1 and (1 - eps) eps^2 to row 2, so row 2 is now the least used:
    step 2 writes row 2 and step 3 row 1. The link then holds L[2, 0] = L[1, 2] = 1 (to 1e-5).
    A content read of v0, then a forward read, returns v1 (written at step 2, in row 2); a
    backward read from there returns v0 again."""
    n, w, eps = 3, 3, 1e-6
    access = D.DenseTemporalAccess(n, w, 1, 1, dtype=F64)
    state = access.initial_state(1)
    vectors = torch.eye(3, dtype=F64) * 10  # v0, v1, v2: orthogonal
    one = lambda x: t([[x]])  # noqa: E731

    def step(vector, key, modes, write_gate=1.0):
        z = torch.zeros(1, 1, w, dtype=F64)
        return D.DNCInterface(key.view(1, 1, w), one(1000.0), z, one(1.0), torch.ones(1, 1, w, dtype=F64),
                              vector.view(1, 1, w), one(0.0), one(1.0), one(write_gate), t([[modes]]))

    content = [0.0, 1.0, 0.0]
    reads, state = access(step(vectors[0], vectors[0], content), state)
    close(state.write_weights[0, 0], [1 - eps, (1 - eps) * eps, (1 - eps) * eps**2], 1e-15)
    for j, row in ((1, 2), (2, 1)):
        reads, state = access(step(vectors[j], vectors[0], content), state)
        assert state.write_weights[0, 0].argmax() == row and state.write_weights[0, 0, row] > 1 - 1e-5
    close(state.memory[0, [0, 2, 1]], vectors, 1e-4)
    expected_link = torch.zeros(n, n, dtype=F64)
    expected_link[2, 0] = expected_link[1, 2] = 1
    close(state.link[0, 0], expected_link, 1e-5)
    close(reads[0, 0], vectors[0], 1e-4)  # content read of v0: read weights at row 0
    nothing = torch.zeros(w, dtype=F64)
    reads, state = access(step(nothing, vectors[2], [0.0, 0.0, 1.0], write_gate=0.0), state)
    close(reads[0, 0], vectors[1], 1e-4)  # forward from row 0 -> row 2 (the key v2 is ignored)
    reads, state = access(step(nothing, vectors[2], [1.0, 0.0, 0.0], write_gate=0.0), state)
    close(reads[0, 0], vectors[0], 1e-4)  # backward from row 2 -> row 0


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("r,wr", [(2, 1), (1, 2)])
def test_gradcheck_through_steps(rng, r, wr):
    """gradcheck of the reads of 3 steps in every interface input and the initial state's
    memory, usage, link, precedence and weights (float64)."""
    b, n, w, steps = 1, 4, 3, 3
    access = D.DenseTemporalAccess(n, w, r, wr, dtype=F64)
    state0 = random_state(rng, b, n, w, r, wr)
    inputs = [random_interface(rng, b, n, w, r, wr, special=False) for _ in range(steps)]
    flat = [x for i in inputs for x in i] + list(state0)
    flat = [x.clone().requires_grad_(True) for x in flat]
    k = len(D.DNCInterface._fields)

    def run(*xs):
        state = D.DNCState(*xs[steps * k:])
        reads = []
        for s in range(steps):
            r_t, state = access.step(D.DNCInterface(*xs[s * k:(s + 1) * k]), state)
            reads.append(r_t)
        return torch.stack(reads)

    assert torch.autograd.gradcheck(run, flat, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_all_zero_memory_gives_no_nan():
    """deepmind/dnc's testDivideByZero: zero memory, zero keys, zero usage: outputs and every
    gradient finite."""
    b, n, w, r, wr = 2, 5, 4, 3, 2
    access = D.DenseTemporalAccess(n, w, r, wr, dtype=F64)
    state = access.initial_state(b)
    def full(value, *shape):
        return torch.full(shape, value, dtype=F64, requires_grad=True)

    interface = D.DNCInterface(full(0, b, r, w), full(1, b, r), full(0, b, wr, w), full(1, b, wr),
                               full(0, b, wr, w), full(0, b, wr, w), full(0, b, r), full(0, b, wr),
                               full(0, b, wr), full(1 / (1 + 2 * wr), b, r, 1 + 2 * wr))
    total = 0
    for _ in range(3):
        reads, state = access(interface, state)
        assert torch.isfinite(reads).all() and not state.memory.any()
        total = total + reads.sum() + state.usage.sum()
    total.backward()
    for name, x in zip(D.DNCInterface._fields, interface, strict=True):
        assert torch.isfinite(x.grad).all(), name


def test_model_gradients_and_batch_first(rng):
    torch.manual_seed(0)
    model = D.DNC(5, 3, hidden_size=16, num_slots=8, word_size=4, num_read_heads=2, dtype=F64)
    x = torch.randn(6, 2, 5, dtype=F64)
    y, state = model(x)
    assert y.shape == (6, 2, 3) and state.access.link.shape == (2, 1, 8, 8)
    y.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any(), name
    model.batch_first = True
    y2, _ = model(x.transpose(0, 1))
    close(y2.transpose(0, 1), y, 1e-14)
    # state carries over: two halves equal the whole; detach keeps values
    model.batch_first = False
    ya, s = model(x[:3])
    yb, _ = model(x[3:], samcpu.nn.detach(s))
    close(torch.cat([ya, yb]), y, 1e-12)


def test_model_gradcheck(rng):
    torch.manual_seed(1)
    model = D.DNC(3, 2, hidden_size=4, num_slots=4, word_size=2, num_read_heads=2, dtype=F64)
    x = torch.randn(3, 1, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: model(x)[0], (x,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- dtypes and checks


def test_float32_default_and_double():
    model = D.DNC(4, 2, hidden_size=8, num_slots=6, word_size=3)
    y, state = model(torch.randn(2, 1, 4))
    assert y.dtype == torch.float32 and state.access.memory.dtype == torch.float32
    assert state.access.link.dtype == torch.float32
    model.double()
    y, state = model(torch.randn(2, 1, 4, dtype=F64))
    assert y.dtype == F64 and all(x.dtype == F64 for x in state.access)
    access = D.DenseTemporalAccess(6, 3).double()
    assert access.initial_state(2).memory.dtype == F64
    rng = np.random.default_rng(0)
    reads, _ = D.DenseTemporalAccess(6, 3, 2, 1)(random_interface(rng, 1, 6, 3, 2, 1), D.DenseTemporalAccess(
        6, 3, 2, 1).initial_state(1))
    assert reads.dtype == torch.float32  # the interface follows the state's dtype


def test_signature_defaults():
    model = D.DNC(7, 5)
    assert model.hidden_size == 100 and model.word_size == 32 and model.num_heads == 4
    assert model.access.num_reads == 4 and model.access.num_writes == 1 and model.access.num_slots == 64
    assert model.interface.out_features == sum(D.interface_sizes(32, 4, 1))


@pytest.mark.parametrize("name,value,match", [
    ("read_keys", lambda i: i.read_keys[:, :, :2], "read_keys has shape"),
    ("read_strengths", lambda i: -i.read_strengths, "read_strengths must be > 0"),
    ("write_strengths", lambda i: i.write_strengths * 0, "write_strengths must be > 0"),
    ("erase_vectors", lambda i: i.erase_vectors + 2, r"erase_vectors must lie in \[0, 1\]"),
    ("free_gates", lambda i: i.free_gates - 2, r"free_gates must lie in \[0, 1\]"),
    ("allocation_gates", lambda i: i.allocation_gates * float("nan"), "allocation_gates contains NaN"),
    ("write_gates", lambda i: i.write_gates.long(), "write_gates has dtype"),
    ("read_modes", lambda i: i.read_modes / 2, "read_modes must sum to 1"),
    ("write_vectors", lambda i: i.write_vectors * float("inf"), "write_vectors contains NaN or Inf"),
])
def test_bad_interface(rng, name, value, match):
    access = D.DenseTemporalAccess(5, 3, 2, 1, dtype=F64)
    state = access.initial_state(2)
    interface = random_interface(rng, 2, 5, 3, 2, 1)
    with pytest.raises(ValueError, match=match):
        access(interface._replace(**{name: value(interface)}), state)


def test_bad_state_and_arguments(rng):
    access = D.DenseTemporalAccess(5, 3, 2, 1, dtype=F64)
    state = access.initial_state(2)
    interface = random_interface(rng, 2, 5, 3, 2, 1)
    with pytest.raises(ValueError, match="state.link"):
        access(interface, state._replace(link=state.link[:, :, :4]))
    with pytest.raises(ValueError, match="state.memory"):
        access(interface, state._replace(memory=state.memory[:, :4]))
    with pytest.raises(ValueError, match="state must be a DNCState"):
        access(interface, tuple(state))
    with pytest.raises(ValueError, match="interface must be a DNCInterface"):
        access(tuple(interface), state)
    for kwargs, match in [(dict(num_slots=0), "num_slots"), (dict(word_size=2.0), "word_size"),
                          (dict(num_reads=0), "num_reads"), (dict(num_writes=0), "num_writes"),
                          (dict(dtype=torch.float16), "dtype")]:
        args = dict(num_slots=5, word_size=3) | kwargs
        with pytest.raises(ValueError, match=match):
            D.DenseTemporalAccess(**args)
    with pytest.raises(ValueError, match="input_size"):
        D.DNC(0, 2)
    with pytest.raises(ValueError, match="num_read_heads|num_reads"):
        D.DNC(3, 2, num_read_heads=0)
    model = D.DNC(3, 2, hidden_size=4, num_slots=4, word_size=2)
    with pytest.raises(ValueError, match="x has 4 features but input_size is 3"):
        model(torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="state must be None"):
        model(torch.zeros(2, 1, 3), state=(1, 2))
