"""The Sparse DNC (DESIGN.md section 5) against independent oracles.

Oracles (tests/): ``naive.NaiveSparseTemporalMemory`` (plain loops, dense N x N links per batch
element and head) and ``dense_sdnc_ref.DenseSparseTemporalAccess`` (dense torch autograd,
float64, links as constants). First the oracles against each other and against SAM's
reference (content-only read modes), then the product: samcpu.SparseTemporalMemory with the
exact index equals the naive reference in rows, weights, reads, memory, usage, links and
precedence over random cases (small N so the memory recycles, ties, zero rows and queries,
gates at 0 and 1, modes at the corners); rewind/replay bit for bit with the links; reset;
save/load; bad read modes refused with nothing changed; gradients of 8 steps (NumPy
backward_step and the torch bridge) equal the dense reference to 1e-10; gradcheck of
SparseTemporalAccess; the SDNC network trains.
"""
import numpy as np
import pytest
import torch
from conftest import random_step_inputs
from dense_sdnc_ref import DenseSparseTemporalAccess
from naive import NaiveMemory, NaiveSparseTemporalMemory

import samcpu

NAMES = ("query", "strength", "add", "write_gate", "interp_gate", "read_modes")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch intra-op thread and one numba thread: the arrays here are tiny, and on a loaded
    2-core machine waking other threads costs far more than the work (measured in the gradcheck
    below under load 5-6: exact_query 20 ms and torch.softmax of 6 numbers 5 ms per call with
    the default threads, against 1 ms and well under 1 ms on a quieter machine)."""
    import numba

    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(numba_threads)
CORNERS = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.0, 0.5],
                    [0.25, 0.5, 0.25]])


def random_modes(rng, b, h, corners=0.5):
    """Read modes pi (B, H, 3): Dirichlet draws, a fraction ``corners`` replaced by exact
    corner and edge cases (content only, backward only, forward only, ...)."""
    modes = rng.dirichlet([1.0, 1.0, 1.0], size=(b, h))
    pick = rng.random((b, h)) < corners
    modes[pick] = CORNERS[rng.integers(len(CORNERS), size=int(pick.sum()))]
    return modes


def sdnc_inputs(rng, b, h, w, pool=None, corners=0.5):
    """One step's inputs with the awkward cases of conftest.random_step_inputs plus modes."""
    return random_step_inputs(rng, b, h, w, pool) + (random_modes(rng, b, h, corners),)


def smooth_inputs(rng, b, h, w, steps):
    """Inputs away from the edges of their domains (for gradients): gates in (0.1, 0.9),
    strength in (1, 5), modes with every component >= ~0.1."""
    out = []
    for _ in range(steps):
        modes = rng.dirichlet([4.0, 4.0, 4.0], size=(b, h))
        out.append((rng.normal(size=(b, h, w)), rng.uniform(1, 5, (b, h)), rng.normal(size=(b, h, w)),
                    rng.uniform(0.1, 0.9, (b, h)), rng.uniform(0.1, 0.9, (b, h)), modes))
    return out


def product_memory(b, n, w, h, k, kl, dtype=np.float64, **kwargs):
    return samcpu.SparseTemporalMemory(b, n, w, num_heads=h, k=k, link_k=kl, index="exact", dtype=dtype,
                                       **kwargs)


def links_as_dicts(links):
    """A NaiveLinks' dense N_h, P_h, p_h as the product's link_entries dicts (non-zeros only)."""
    def rows(matrix):
        return {int(i): {int(j): float(matrix[i, j]) for j in np.flatnonzero(matrix[i])}
                for i in range(matrix.shape[0]) if matrix[i].any()}
    p = links.precedence
    return rows(links.before), rows(links.after), {int(i): float(p[i]) for i in np.flatnonzero(p)}


def entries_as_dense(entries, n):
    """The product's link_entries(b, h) as dense (N_h, P_h, p_h), after checking what a stored
    row may hold: at most K_L entries (checked by the caller), none zero, none on the diagonal."""
    before, after, prec = entries
    out = np.zeros((n, n)), np.zeros((n, n)), np.zeros(n)
    for table, dense in ((before, out[0]), (after, out[1])):
        for i, cols in table.items():
            assert cols and i not in cols and all(v != 0 for v in cols.values()), (i, cols)
            for j, v in cols.items():
                dense[i, j] = v
    for i, v in prec.items():
        assert v != 0
        out[2][i] = v
    return out


def assert_links_equal(mem, ref, where="", atol=0.0):
    """The product's links and precedence of every (b, h) equal the naive reference's dense ones:
    the same entries, values to ``atol`` (0: bit for bit)."""
    n, kl = ref.num_slots, ref.link_k
    for b in range(ref.batch_size):
        for h in range(ref.num_heads):
            entries = mem.link_entries(b, h)
            assert all(len(c) <= kl for table in entries[:2] for c in table.values())
            assert len(entries[2]) <= kl
            links = ref.links[b][h]
            for name, got, want in zip(("before", "after", "precedence"), entries_as_dense(entries, n),
                                       (links.before, links.after, links.precedence), strict=True):
                msg = f"{where} b={b} h={h} {name}"
                np.testing.assert_array_equal(got != 0, want != 0, err_msg=msg)
                np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=msg)


# --------------------------------------------------------------------------- oracle against oracle


@pytest.mark.parametrize("seed", [0, 1])
def test_naive_sdnc_with_content_modes_is_naive_sam(seed):
    """pi = (0, 1, 0) everywhere: the SDNC is SAM (the extra support rows carry weight 0)."""
    rng = np.random.default_rng(seed)
    b, n, w, h, k, kl = 2, 7, 3, 3, 2, 3
    sdnc = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    sam = NaiveMemory(b, n, w, h, k)
    pool = rng.normal(size=(3, w))
    modes = np.tile([0.0, 1.0, 0.0], (b, h, 1))
    linked = False
    for t in range(25):
        x = random_step_inputs(rng, b, h, w, pool)
        got, want = sdnc.step(*x, modes), sam.step(*x)
        assert got.rows.shape == (b, h, k + 2 * kl)
        np.testing.assert_array_equal(got.rows[..., :k], want.rows, err_msg=f"step {t + 1}")
        np.testing.assert_array_equal(got.weights[..., :k], want.weights)
        np.testing.assert_array_equal(got.weights[..., k:], 0.0)
        np.testing.assert_array_equal(got.reads, want.reads)
        np.testing.assert_array_equal(sdnc.memory, sam.memory)
        np.testing.assert_array_equal(sdnc.usage, sam.usage)
        linked |= bool((got.rows[..., k:] >= 0).any())
    assert linked  # the links were built and followed (with weight 0)


class NaiveHand:
    """The naive reference with ``links()`` as the product's ``link_entries(0, 0)`` gives them."""

    def __init__(self):
        self.mem = NaiveSparseTemporalMemory(1, 4, 3, 1, k=1, link_k=2)
        self.step = self.mem.step

    def links(self):
        return links_as_dicts(self.mem.links[0][0])


class ProductHand:
    def __init__(self):
        self.mem = product_memory(1, 4, 3, 1, 1, 2)
        self.step = self.mem.step

    def links(self):
        return tuple(self.mem.link_entries(0, 0))


@pytest.mark.parametrize("which", [NaiveHand, "product"])
def test_worked_by_hand(which):
    """N = 4, one head, K = 1, K_L = 2: write rows 0, 1, 2 in turn (alpha = 1, gamma = 0),
    then read forward and backward from what was read (the naive reference and the product)."""
    mem = ProductHand() if which == "product" else which()
    e = np.eye(3)[None, None]  # (1, 1, 3): e[..., i] is the i-th unit vector
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    content, forward, backward = (np.array([[m]]) for m in ([0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                                                              [1.0, 0.0, 0.0]))
    res = mem.step(e[..., 0], one, e[..., 0], one, zero, content)  # row 0 <- e0, read row 0
    assert res.rows[0, 0].tolist() == [0, -1, -1, -1, -1] and res.weights[0, 0, 0] == 1.0
    assert mem.links() == ({}, {}, {0: 1.0})
    mem.step(e[..., 1], one, e[..., 1], one, zero, content)  # row 1 <- e1 (LRA), read row 1
    # N(1, 0) = 1: row 1 was written just after row 0; P(0, 1) = 1; p = row 1
    assert mem.links() == ({1: {0: 1.0}}, {0: {1: 1.0}}, {1: 1.0})
    # row 2 <- e2; previous read row 1 has weight 1 but gamma = 0 writes only the LRA row 2;
    # forward from row 1 reaches row 2, the new row
    res = mem.step(e[..., 0], one, e[..., 2], one, zero, forward)
    assert mem.links() == ({1: {0: 1.0}, 2: {1: 1.0}}, {0: {1: 1.0}, 1: {2: 1.0}}, {2: 1.0})
    assert res.rows[0, 0].tolist() == [0, 2, -1, -1, -1]  # content row 0 (weight 0), forward row 2
    assert res.weights[0, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    np.testing.assert_array_equal(res.reads[0, 0], [0, 0, 1])
    # nothing written (alpha = 0); backward from row 2 reaches row 1; row 0's content weight 0
    res = mem.step(e[..., 0], one, e[..., 0], zero, zero, backward)
    assert res.rows[0, 0].tolist() == [0, 1, -1, -1, -1]
    assert res.weights[0, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    np.testing.assert_array_equal(res.reads[0, 0], [0, 1, 0])
    assert mem.links() == ({1: {0: 1.0}, 2: {1: 1.0}}, {0: {1: 1.0}, 1: {2: 1.0}}, {2: 1.0})  # no write
    # half backward, half forward from rows 0 (weight 0) and 1 (weight 1): backward reaches
    # row 0 (N(1, 0) = 1); forward reaches row 2 (P(1, 2) = 1, value 1) and row 1 (P(0, 1) = 1
    # times weight 0: a candidate of value 0, kept but adding nothing). The content row is
    # row 1 (query e1 - e0 - e2 scores about 1/sqrt(3) there and below 0 at rows 0 and 2).
    res = mem.step(np.array([[[-1.0, 1.0, -1.0]]]), one, e[..., 0], zero, zero,
                   np.array([[[0.5, 0.0, 0.5]]]))
    assert res.rows[0, 0].tolist() == [1, 0, 2, -1, -1]
    assert res.weights[0, 0].tolist() == [0.0, 0.5, 0.5, 0.0, 0.0]
    np.testing.assert_array_equal(res.reads[0, 0], [0.5, 0, 0.5])


def dense_run(dense, inputs, links=None, memory=None, read_weights=None):
    """Run the dense reference over ``inputs`` (lists of tensors); returns (reads, infos,
    states)."""
    b = inputs[0][0].shape[0]
    state = dense.initial_state(b, memory, read_weights)
    reads, infos, states = [], [], [state]
    for t, x in enumerate(inputs):
        r, state, info = dense(*x, state, links=None if links is None else links[t])
        reads.append(r)
        infos.append(info)
        states.append(state)
    return reads, infos, states


@pytest.mark.parametrize("case", [(2, 7, 3, 3, 2, 3, 20), (1, 10, 2, 2, 3, 8, 20), (2, 5, 2, 4, 1, 2, 15)])
def test_dense_reference_forward_equals_naive(case):
    """Same rows, usage and link entries; weights, reads, memory and link values to 1e-12 (the
    two exponentials may differ in the last bit)."""
    b, n, w, h, k, kl, steps = case
    rng = np.random.default_rng(sum(case))
    pool = rng.normal(size=(3, w))
    inputs = [sdnc_inputs(rng, b, h, w, pool) for _ in range(steps)]
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    dense = DenseSparseTemporalAccess(n, w, h, k, kl)
    reads, infos, states = dense_run(dense, [[torch.from_numpy(x) for x in step] for step in inputs])
    close = dict(rtol=0, atol=1e-12)
    for t, x in enumerate(inputs):
        want = ref.step(*x)
        np.testing.assert_array_equal(infos[t].rows, want.rows, err_msg=f"step {t + 1}")
        np.testing.assert_allclose(infos[t].weights.numpy(), want.weights, **close)
        np.testing.assert_allclose(reads[t].numpy(), want.reads, **close)
        np.testing.assert_allclose(states[t + 1].memory.numpy(), ref.memory, **close)
        np.testing.assert_array_equal(states[t + 1].usage.numpy(), ref.usage)
        for i in range(b):
            for j in range(h):
                links = ref.links[i][j]
                for got, want_links in ((infos[t].links.before[i, j], links.before),
                                        (infos[t].links.after[i, j], links.after),
                                        (infos[t].links.precedence[i, j], links.precedence)):
                    np.testing.assert_array_equal(got != 0, want_links != 0, err_msg=f"step {t + 1}")
                    np.testing.assert_allclose(got, want_links, **close)
    assert any((info.rows[..., k:] >= 0).any() for info in infos)


def test_dense_reference_gradcheck():
    """torch.autograd.gradcheck of the dense reference through 5 steps in every input, the
    initial memory and the initial read weights, with each step's links replayed from a
    recorded run (links carry no gradient, so the function checked holds them fixed)."""
    b, n, w, h, k, kl, steps = 1, 6, 2, 2, 2, 2, 5
    rng = np.random.default_rng(3)
    inputs = smooth_inputs(rng, b, h, w, steps)
    memory0 = rng.normal(size=(b, n, w))
    read0 = np.zeros((b, h, n))
    read0[:, :, :3] = rng.uniform(0.2, 0.5, size=(b, h, 3))
    dense = DenseSparseTemporalAccess(n, w, h, k, kl)
    flat = [torch.tensor(x) for step in inputs for x in step]
    flat += [torch.tensor(memory0), torch.tensor(read0)]
    _, infos, _ = dense_run(dense, [flat[6 * t:6 * t + 6] for t in range(steps)],
                            memory=flat[-2], read_weights=flat[-1])
    recorded = [info.links for info in infos]
    assert all(info.links.after.any() for info in infos[1:])

    def fn(*xs):
        reads, infos, _ = dense_run(dense, [xs[6 * t:6 * t + 6] for t in range(steps)], recorded,
                                    memory=xs[-2], read_weights=xs[-1])
        for info, want in zip(infos, base, strict=True):  # the row choices did not move
            assert (info.rows == want.rows).all()
        return torch.cat([r.reshape(-1) for r in reads] + [infos[-1].weights.reshape(-1)])

    base = infos
    leaves = [x.clone().requires_grad_(True) for x in flat]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------- product against naive

CASES = [
    # (B, N, W, H, K, K_L, steps, adds drawn from a pool of this many vectors (0: no pool)):
    # every case but the last recycles rows
    (1, 5, 3, 1, 1, 1, 30, 0),
    (2, 6, 3, 2, 2, 2, 30, 3),
    (2, 9, 4, 4, 2, 3, 25, 3),
    (1, 12, 3, 2, 2, 8, 30, 3),  # R = 18 > N: the support is bounded by N
    (2, 16, 4, 4, 3, 8, 20, 3),
    (1, 4, 2, 4, 1, 2, 20, 3),  # H = N: every row is an LRA row at every step
    (2, 7, 2, 3, 3, 4, 25, 1),  # one add vector: written rows are parallel, similarities tie
    (1, 40, 3, 3, 4, 5, 12, 0),  # the LRA never recycles
]


def run_pair(seed, b, n, w, h, k, kl, steps, pooled, corners=0.5):
    """Step the product and the naive reference with the same random inputs; yields
    (t, mem, ref, got, want, inputs)."""
    rng = np.random.default_rng(seed)
    mem = product_memory(b, n, w, h, k, kl)
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    pool = rng.normal(size=(pooled, w)) if pooled else None
    for t in range(steps):
        x = sdnc_inputs(rng, b, h, w, pool, corners)
        yield t, mem, ref, mem.step(*x), ref.step(*x), x


def assert_step_equal(t, mem, ref, got, want, atol=0.0):
    msg = f"step {t + 1}"
    assert got.rows.shape == want.rows.shape == (ref.batch_size, ref.num_heads, ref.read_size)
    np.testing.assert_array_equal(got.rows, want.rows, err_msg=msg)
    np.testing.assert_allclose(got.weights, want.weights, rtol=0, atol=atol, err_msg=msg)
    np.testing.assert_array_equal(got.weights[got.rows < 0], 0.0, err_msg=msg)
    np.testing.assert_allclose(got.reads, want.reads, rtol=0, atol=atol, err_msg=msg)
    np.testing.assert_allclose(mem.memory, ref.memory, rtol=0, atol=atol, err_msg=msg)
    np.testing.assert_array_equal(mem.usage, ref.usage, err_msg=msg)
    assert_links_equal(mem, ref, msg, atol=atol)


@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}N{c[1]}W{c[2]}H{c[3]}K{c[4]}KL{c[5]}" for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_step_equals_naive(case, seed):
    b, n, _, h, k, kl, steps, _ = case
    followed = 0
    recycled = False
    before = np.zeros((b, n), np.int64)  # the reference's usage before each step
    for t, mem, ref, got, want, _ in run_pair(seed, *case):
        assert_step_equal(t, mem, ref, got, want)
        followed += int((got.rows[..., k:] >= 0).sum())
        recycled |= bool(((before == 0).sum(axis=1) < h).any())  # the LRA took a used row
        before = ref.usage.copy()
    assert mem.position == steps and mem.read_size == k + 2 * kl
    assert followed > 0  # the link rows took part in the support
    assert recycled == (n < 40)


def test_rows_of_a_negative_precedence_entry_are_not_linked():
    """Step 6 updates the rows j of P_h with p_h(j) > 0 only. A precedence entry can be
    negative: with alpha = gamma = 1 the write weights are the previous read weights, whose sum
    (here a softmax of 3 rows) can round to 1 + 2.2e-16, so (1 - sum) p_h(j) < 0 for a row j
    of p_h not written. The next write must not link from such a row (naive reference and
    DESIGN.md section 5: "for each row j with p_h(j) > 0")."""
    v = np.array([[1.462842285184577, 0.2781263018080308], [-0.24790845527908614, -1.4250901432432643],
                  [-0.19127666443013225, -0.019877011042093756], [-1.0236571654753586, 1.1668408524773273]])
    q = np.array([[[0.34121905515845286, -0.38894695082577574]]])
    beta = np.array([[1.354356625515338]])
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    content = np.array([[[0.0, 1.0, 0.0]]])
    steps = [(q, beta, v[i][None, None], one, zero, content) for i in range(4)]  # rows 0-3
    steps.append((q, beta, v[0][None, None], one, one, content))  # the 3 read rows, weights summed > 1
    steps.append((q, beta, v[0][None, None], one, zero, content))  # the LRA row 6
    mem = product_memory(1, 8, 2, 1, 3, 4)
    ref = NaiveSparseTemporalMemory(1, 8, 2, 1, 3, 4)
    for t, x in enumerate(steps):
        got, want = mem.step(*x), ref.step(*x)
        if t == 4:
            assert min(mem.link_entries(0, 0).precedence.values()) < 0  # the case arose
        assert_step_equal(t, mem, ref, got, want, atol=0.0)


def test_content_modes_equal_sparse_memory():
    """pi = (0, 1, 0): the product's SDNC reads, memory and usage are SparseMemory's."""
    rng = np.random.default_rng(5)
    b, n, w, h, k, kl = 2, 8, 3, 3, 2, 3
    mem = product_memory(b, n, w, h, k, kl)
    sam = samcpu.SparseMemory(b, n, w, h, k, index="exact", dtype=np.float64)
    pool = rng.normal(size=(3, w))
    modes = np.tile([0.0, 1.0, 0.0], (b, h, 1))
    for _ in range(30):
        x = random_step_inputs(rng, b, h, w, pool)
        got, want = mem.step(*x, modes), sam.step(*x)
        np.testing.assert_array_equal(got.rows[..., :k], want.rows)
        np.testing.assert_array_equal(got.weights[..., :k], want.weights)
        np.testing.assert_array_equal(got.weights[..., k:], 0.0)
        np.testing.assert_array_equal(got.reads, want.reads)
        np.testing.assert_array_equal(mem.memory, sam.memory)
        np.testing.assert_array_equal(mem.usage, sam.usage)


def test_float32_close_to_naive():
    """float32 storage: links, precedence and weights rounded to float32 as the naive link
    functions round them (with dtype float32); no exact ties (no pooled adds, no corner modes)."""
    rng = np.random.default_rng(11)
    b, n, w, h, k, kl = 2, 10, 4, 2, 2, 3
    mem = product_memory(b, n, w, h, k, kl, dtype=np.float32)
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl, dtype=np.float32)
    for t in range(25):
        x = tuple(np.asarray(v, np.float32) for v in sdnc_inputs(rng, b, h, w, None, corners=0.0))
        got, want = mem.step(*x), ref.step(*x)
        np.testing.assert_array_equal(got.rows, want.rows, err_msg=f"step {t + 1}")
        np.testing.assert_allclose(got.reads, want.reads, rtol=0, atol=1e-4)
        np.testing.assert_allclose(mem.memory, ref.memory, rtol=0, atol=1e-4)
        assert_links_equal(mem, ref, f"step {t + 1}", atol=1e-5)
    assert mem.memory.dtype == np.float32 and got.weights.dtype == np.float32


# --------------------------------------------------------------------------- time travel, reset, persistence


def snapshot(mem):
    """Everything a rewind must restore, links included (dicts compare bit for bit)."""
    links = [[tuple(mem.link_entries(b, h)) for h in range(mem.num_heads)] for b in range(mem.batch_size)]
    return mem.memory.copy(), mem.usage.copy(), mem.lra_rows(), links, mem.position


def assert_snapshots_equal(a, b, where=""):
    for x, y in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(x, y, err_msg=where)
    assert a[3] == b[3], where
    assert a[4] == b[4], where


def assert_results_equal(a, b, where=""):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=where)


def test_rewind_and_replay_are_bit_exact_with_links():
    rng = np.random.default_rng(21)
    b, n, w, h, k, kl, steps = 2, 9, 3, 3, 2, 3, 14
    pool = rng.normal(size=(3, w))
    inputs = [sdnc_inputs(rng, b, h, w, pool) for _ in range(steps + 1)]
    mem = product_memory(b, n, w, h, k, kl)
    snaps, results = [snapshot(mem)], []
    for x in inputs[:steps]:
        results.append(mem.step(*x))
        snaps.append(snapshot(mem))
    assert any(a[3] != snaps[-1][3] for a in snaps[:-1])
    for p in (9, 3, 0, 12, 1, steps):
        mem.rewind(p)
        assert_snapshots_equal(snapshot(mem), snaps[p], f"rewind to {p}")
    mem.rewind(2)
    mem.replay()
    assert_snapshots_equal(snapshot(mem), snaps[steps], "replay")
    # a rewound memory steps as it did (its previous reads are restored too) ...
    mem.rewind(6)
    assert_results_equal(mem.step(*inputs[6]), results[6], "step 7 again")
    assert_snapshots_equal(snapshot(mem), snaps[7], "after step 7 again")
    # ... and a new future after a rewind equals the naive reference fed the same history
    mem.rewind(5)
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    for x in inputs[:5]:
        ref.step(*x)
    for t in range(5, steps):
        x = sdnc_inputs(rng, b, h, w, pool)
        assert_step_equal(t, mem, ref, mem.step(*x), ref.step(*x))
    assert mem.latest == steps


def test_reset_empties_links():
    rng = np.random.default_rng(22)
    b, n, w, h, k, kl = 2, 7, 3, 2, 2, 3
    mem = product_memory(b, n, w, h, k, kl)
    for _ in range(10):
        mem.step(*sdnc_inputs(rng, b, h, w))
    assert any(mem.link_entries(i, j) != ({}, {}, {}) for i in range(b) for j in range(h))
    mem.reset()
    assert mem.position == 0 and not mem.memory.any() and not mem.usage.any()
    for i in range(b):
        for j in range(h):
            assert tuple(mem.link_entries(i, j)) == ({}, {}, {})
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    for t in range(12):  # a reset memory steps as a fresh one
        x = sdnc_inputs(rng, b, h, w)
        assert_step_equal(t, mem, ref, mem.step(*x), ref.step(*x))


def test_save_load_round_trip_keeps_links(tmp_path):
    rng = np.random.default_rng(23)
    b, n, w, h, k, kl = 2, 8, 3, 2, 2, 3
    mem = product_memory(b, n, w, h, k, kl)
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    for _ in range(9):
        x = sdnc_inputs(rng, b, h, w)
        mem.step(*x)
        ref.step(*x)
    mem.save(str(tmp_path / "sdnc"))
    loaded = samcpu.SparseTemporalMemory.load(str(tmp_path / "sdnc"))
    assert isinstance(loaded, samcpu.SparseTemporalMemory)
    assert (loaded.link_k, loaded.read_size, loaded.k) == (kl, k + 2 * kl, k)
    assert_snapshots_equal(snapshot(loaded), snapshot(mem), "loaded")
    for t in range(9, 20):  # the loaded memory goes on as the original and as the reference
        x = sdnc_inputs(rng, b, h, w)
        got, again = loaded.step(*x), mem.step(*x)
        assert_results_equal(got, again, f"step {t + 1}")
        assert_step_equal(t, loaded, ref, got, ref.step(*x))


def test_bad_read_modes_are_refused_and_change_nothing():
    rng = np.random.default_rng(24)
    b, n, w, h, k, kl = 2, 6, 3, 2, 2, 2
    mem = product_memory(b, n, w, h, k, kl)
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    for _ in range(5):
        x = sdnc_inputs(rng, b, h, w)
        mem.step(*x)
        ref.step(*x)
    before = snapshot(mem)
    x = sdnc_inputs(rng, b, h, w)
    good = x[5]
    bad = [good[..., :2], good[:, :1], good[0], np.full((b, h, 3), 0.5), np.full((b, h, 3), 0.3),
           np.where(np.arange(3) == 0, -0.1, good) / 1.0, good * np.nan, np.full((b, h, 3), np.inf),
           np.array([[["a", "b", "c"]] * h] * b), None]
    bad[5][..., 1] = 1.1 - bad[5][..., 2]  # sums to 1 with a negative component
    for modes in bad:
        with pytest.raises(ValueError, match="read_modes"):
            mem.step(*x[:5], modes)
        assert_snapshots_equal(snapshot(mem), before, repr(modes))
    with pytest.raises(TypeError):
        mem.step(*x[:5])  # read_modes is required
    assert_snapshots_equal(snapshot(mem), before)
    from samcpu.backprop import MemoryGradient
    grad = MemoryGradient(mem)
    for modes in bad[:3]:  # the backward pass checks the shape of the step's read modes too
        with pytest.raises(ValueError, match="read_modes"):
            mem.backward_step(5, None, None, *x[:5], modes, grad)
        assert grad.count.max() == 0
    mem.replay()
    assert_snapshots_equal(snapshot(mem), before)
    assert_step_equal(5, mem, ref, mem.step(*x), ref.step(*x))  # and the memory steps on as before


def test_a_step_refused_after_its_write_changes_no_link():
    """A write that would push a row past the memory's value limit is refused after the write
    phase has changed the memory rows: the step is undone and no link, precedence or later
    step sees it."""
    rng = np.random.default_rng(25)
    b, n, w, h, k, kl = 1, 6, 2, 1, 2, 2
    mem = product_memory(b, n, w, h, k, kl)
    ref = NaiveSparseTemporalMemory(b, n, w, h, k, kl)
    for _ in range(6):
        x = smooth_inputs(rng, b, h, w, 1)[0]
        mem.step(*x)
        ref.step(*x)
    big = np.full((b, h, w), 0.6 * mem.value_limit)
    one, zero, strong = np.ones((b, h)), np.zeros((b, h)), np.full((b, h), 50.0)
    modes = np.tile([0.0, 1.0, 0.0], (b, h, 1))
    for x in ((big, strong, big, one, zero, modes),):  # the LRA row gets 0.6 limit and is read
        mem.step(*x)
        ref.step(*x)
    assert mem.memory.max() == pytest.approx(0.6 * mem.value_limit)
    before = snapshot(mem)
    with pytest.raises(ValueError, match="limit"):  # adding it again to the row just read
        mem.step(big, strong, big, one, one, modes)
    assert_snapshots_equal(snapshot(mem), before)
    for t in range(7, 12):
        x = smooth_inputs(rng, b, h, w, 1)[0]
        assert_step_equal(t, mem, ref, mem.step(*x), ref.step(*x))


@pytest.mark.parametrize("link_k", [-1, 2.5, "2", True, None])
def test_bad_link_k_is_refused(link_k):
    with pytest.raises(ValueError, match="link_k"):
        samcpu.SparseTemporalMemory(1, 8, 2, link_k=link_k, index="exact")


def test_torch_access_refuses_bad_read_modes():
    access = samcpu.SparseTemporalAccess(8, 2, 2, 2, 2, index="exact", dtype=torch.float64)
    state = access.initial_state(1)
    x = [torch.tensor(v) for v in smooth_inputs(np.random.default_rng(0), 1, 2, 2, 1)[0]]
    for modes in (x[5][..., :2], x[5] * 2, -x[5]):
        with pytest.raises(ValueError, match="read_modes"):
            access(*x[:5], modes, state)
    assert access.memory.position == 0
    reads, state = access(*x, state)
    assert reads.shape == (1, 2, 2)


def test_hnsw_index_reads_are_well_formed():
    """With the approximate index (float32): each support lists distinct rows first and -1
    after, weights >= 0 where used and 0 after, and reads are the weighted sums of the rows."""
    rng = np.random.default_rng(31)
    b, n, w, h, k, kl = 2, 64, 4, 2, 3, 2
    mem = samcpu.SparseTemporalMemory(b, n, w, num_heads=h, k=k, link_k=kl, index="hnsw")
    for _ in range(25):
        res = mem.step(*(np.asarray(v, np.float32) for v in sdnc_inputs(rng, b, h, w)))
        assert res.rows.shape == res.weights.shape == (b, h, k + 2 * kl)
        for i in range(b):
            for j in range(h):
                rows, weights = res.rows[i, j], res.weights[i, j]
                used = int((rows >= 0).sum())
                assert (rows[:used] >= 0).all() and len(set(rows[:used].tolist())) == used >= k
                assert (weights[:used] >= 0).all() and (weights[used:] == 0).all()
                want = (weights[:used, None].astype(np.float64) * mem.memory[i, rows[:used]]).sum(0)
                np.testing.assert_allclose(res.reads[i, j], want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- gradients


def dense_forward(inputs, c, e, n, k, kl):
    """L = sum_t <c_t, r_t> + <e, w^R_T> on the dense reference; returns (loss, leaves, states,
    infos, reads) with every state's read weights retaining their gradient."""
    b, h, w = inputs[0][0].shape
    dense = DenseSparseTemporalAccess(n, w, h, k, kl)
    leaves = [[torch.tensor(x, requires_grad=True) for x in step] for step in inputs]
    state = dense.initial_state(b)
    states, infos, loss, reads_out = [state], [], 0.0, []
    for x, ct in zip(leaves, c, strict=True):
        r, state, info = dense(*x, state)
        reads_out.append(r.detach().numpy())
        state.read_weights.retain_grad()
        states.append(state)
        infos.append(info)
        loss = loss + (torch.from_numpy(ct) * r).sum()
    loss = loss + (torch.from_numpy(e) * infos[-1].weights).sum()
    loss.backward()
    return loss, leaves, states, infos, reads_out


@pytest.mark.parametrize("seed", [0, 1])
def test_eight_step_gradients_equal_dense_reference(seed):
    """SparseTemporalMemory.backward_step over 8 steps against the dense torch reference: every
    input's gradient and dL/dw^R_{t-1} at the previous support, to 1e-10."""
    from samcpu.backprop import MemoryGradient

    b, n, w, h, k, kl, steps = 2, 8, 3, 2, 2, 2, 8  # N < steps * H: rows recycle
    rng = np.random.default_rng(100 + seed)
    inputs = smooth_inputs(rng, b, h, w, steps)
    r = k + 2 * kl
    c, e = rng.normal(size=(steps, b, h, w)), rng.normal(size=(b, h, r))
    _, leaves, states, infos, dense_reads = dense_forward(inputs, c, e, n, k, kl)

    mem = product_memory(b, n, w, h, k, kl)
    for t, x in enumerate(inputs):
        res = mem.step(*x)
        np.testing.assert_array_equal(res.rows, infos[t].rows, err_msg=f"step {t + 1}")
        np.testing.assert_allclose(res.weights, infos[t].weights.detach().numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.reads, dense_reads[t], rtol=0, atol=1e-12)
    assert (infos[-1].rows[..., k:] >= 0).any()
    grad = MemoryGradient(mem)
    g_w = e
    for t in range(steps, 0, -1):
        g = mem.backward_step(t, c[t - 1], g_w, *inputs[t - 1], grad)
        for i, name in enumerate(NAMES):
            np.testing.assert_allclose(getattr(g, name), leaves[t - 1][i].grad.numpy(), rtol=0, atol=1e-10,
                                       err_msg=f"step {t} d/d{name}")
        # dL/dw^R_{t-1} at the support of step t - 1 (none before step 1)
        want = np.zeros((b, h, r))
        if t > 1:
            dense_grad = states[t - 1].read_weights.grad.numpy()
            rows = infos[t - 2].rows
            for i, j, a in zip(*np.nonzero(rows >= 0), strict=True):
                want[i, j, a] = dense_grad[i, j, rows[i, j, a]]
        np.testing.assert_allclose(g.prev_weights, want, rtol=0, atol=1e-10, err_msg=f"step {t} d/dw_prev")
        g_w = g.prev_weights
    mem.replay()
    assert mem.position == steps
    assert np.abs(leaves[3][5].grad.numpy()).min() > 0  # every read mode has a gradient


def test_torch_access_gradients_equal_dense_reference():
    """samcpu.SparseTemporalAccess through 8 steps: the same loss, the same gradients (1e-10)."""
    b, n, w, h, k, kl, steps = 2, 8, 3, 2, 2, 2, 8
    rng = np.random.default_rng(7)
    inputs = smooth_inputs(rng, b, h, w, steps)
    r = k + 2 * kl
    c, e = rng.normal(size=(steps, b, h, w)), rng.normal(size=(b, h, r))
    want_loss, want, _, _, want_reads = dense_forward(inputs, c, e, n, k, kl)

    access = samcpu.SparseTemporalAccess(n, w, h, k, kl, index="exact", dtype=torch.float64)
    leaves = [[torch.tensor(x, requires_grad=True) for x in step] for step in inputs]
    state = access.initial_state(b)
    loss, loss_terms = 0.0, []
    for x, ct in zip(leaves, c, strict=True):
        reads, state = access(*x, state)
        assert reads.shape == (b, h, w) and reads.dtype == torch.float64
        np.testing.assert_allclose(reads.detach().numpy(), want_reads[len(loss_terms)], rtol=0, atol=1e-12)
        loss_terms.append(reads)
        loss = loss + (torch.from_numpy(ct) * reads).sum()
    assert state.weights.shape == (b, h, r)
    loss = loss + (torch.from_numpy(e) * state.weights).sum()
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(want_loss.detach()), abs=1e-10)
    for t in range(steps):
        for i, name in enumerate(NAMES):
            np.testing.assert_allclose(leaves[t][i].grad.numpy(), want[t][i].grad.numpy(), rtol=0,
                                       atol=1e-10, err_msg=f"step {t + 1} d/d{name}")


def test_torch_access_gradcheck():
    """torch.autograd.gradcheck of SparseTemporalAccess through 8 steps, in the queries,
    strengths, add vectors and read-mode logits (pi = softmax). gamma = 0 and fixed write gates
    make every write go to the LRA row with a weight that does not depend on these inputs, so
    links and precedence (which carry no gradient) do not move under the finite differences,
    while the reads still follow them through the previous read weights. The outputs (every
    read and the last read weights) are checked through 4 random projections, each a full
    Jacobian row per input (one backward pass per projection)."""
    b, n, w, h, k, kl, steps = 1, 6, 2, 2, 2, 2, 8
    rng = np.random.default_rng(8)
    projection = torch.tensor(rng.normal(size=(4, steps * b * h * w + b * h * (k + 2 * kl))))
    access = samcpu.SparseTemporalAccess(n, w, h, k, kl, index="exact", dtype=torch.float64)
    alpha = torch.tensor(rng.uniform(0.3, 0.9, (steps, b, h)))
    gamma = torch.zeros(b, h, dtype=torch.float64)
    flat = []
    for _ in range(steps):
        flat += [torch.tensor(rng.normal(size=(b, h, w))), torch.tensor(rng.uniform(1, 5, (b, h))),
                 torch.tensor(rng.normal(size=(b, h, w))), torch.tensor(rng.normal(size=(b, h, 3)))]
    rows = []

    def fn(*xs):
        state = access.initial_state(b)
        out = []
        for t in range(steps):
            q, beta, a, logits = xs[4 * t:4 * t + 4]
            reads, state = access(q, beta, a, alpha[t], gamma, torch.softmax(logits, -1), state)
            out.append(reads.reshape(-1))
        rows.append(access.memory.step_record(steps)["rows"].copy())
        return projection @ torch.cat(out + [state.weights.reshape(-1)])

    leaves = [x.clone().requires_grad_(True) for x in flat]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert (rows[0][..., k:] >= 0).any()  # the last read followed links
    assert all((x == rows[0]).all() for x in rows)  # no row choice moved


def test_sdnc_network_trains():
    """samcpu.SDNC like samcpu.SAM: outputs, a backward pass reaching every parameter, and a
    few optimiser steps that lower the loss on a fixed batch."""
    torch.manual_seed(0)
    model = samcpu.SDNC(3, 2, hidden_size=8, num_slots=16, word_size=4, num_heads=2, k=2, link_k=2,
                        index="exact", dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    target = torch.randn(6, 2, 2, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(8):
        y, _state = model(x)
        assert y.shape == (6, 2, 2)
        loss = ((y - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
