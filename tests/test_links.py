"""samcpu.kernels.links (DESIGN.md section 5, steps 6-8) against the dense N x N loops of
tests/naive.py, bit for bit in float64 and float32: each equation on its own (from random
dense states with ties, empty precedence, K_L above the entry count, zero weights), then whole
steps, then undo/redo (bit for bit, slot map and pool included), reset/rebuild, the backward
kernels against torch autograd, and the cost in memory at N = 10^7 (nothing O(N))."""
import numpy as np
import pytest
import torch

import naive
from samcpu._util import rss_bytes
from samcpu.kernels import links as L

DTYPES = (np.float64, np.float32)
GRID = np.array([0.0, 0.125, 0.25, 0.25, 0.5, 0.75, 1.0])  # repeated values make exact ties


# --------------------------------------------------------------------------- helpers


def empty(n, k, dtype=np.float64, capacity=None):
    """Head 0's LinkState of fresh one-head links."""
    return L.head_state(L.empty_links(n, k, 1, dtype, capacity=n if capacity is None else capacity), 0)


def to_dense(table, n):
    """The dense matrix of ``table`` (one part), after checking its invariants: slot map and
    owners agree, no row outside the pool has a record, rows sorted by (-value, column) with no
    zero, no diagonal entry, unused entries -1/0 at the end."""
    used = int(table.used[0])
    k = table.cols.shape[2]
    dense = np.zeros((n, n))
    owners = table.owner[:used]
    assert len(set(owners.tolist())) == used
    assert np.count_nonzero(table.slot) == used
    for s in range(used):
        r = int(owners[s])
        assert table.slot[r] == s + 1
        cols, vals = table.cols[s, table.part], table.vals[s, table.part]
        m = L.entry_count(cols)
        assert (cols[m:] == -1).all() and (vals[m:] == 0).all()
        keys = [(-float(vals[c]), int(cols[c])) for c in range(m)]
        assert keys == sorted(keys) and len(set(cols[:m].tolist())) == m
        assert (vals[:m] != 0).all() and r not in cols[:m].tolist() and m <= k
        dense[r, cols[:m]] = vals[:m]
    return dense


def from_dense(dense, k, dtype):
    """A table holding the dense matrix (rows with entries in ascending order)."""
    n = dense.shape[0]
    table = empty(n, k, dtype).before
    for r in range(n):
        keep = naive._keep_largest(dense[r], k)
        if keep:
            s = int(table.used[0])
            table.used[0] = s + 1
            table.slot[r] = s + 1
            table.owner[s] = r
            table.cols[s] = -1
            table.vals[s] = 0
            table.cols[s, table.part, :len(keep)] = keep
            table.vals[s, table.part, :len(keep)] = dense[r, keep]
    return table


def prec_to_dense(rows, vals, n):
    m = L.entry_count(rows)
    assert (rows[m:] == -1).all() and (vals[m:] == 0).all() and (vals[:m] != 0).all()
    keys = [(-float(vals[c]), int(rows[c])) for c in range(m)]
    assert keys == sorted(keys)
    p = np.zeros(n)
    p[rows[:m]] = vals[:m]
    return p


def prec_from_dense(p, k, dtype):
    keep = naive._keep_largest(p, k)
    rows = np.full(k, -1, np.int64)
    vals = np.zeros(k, dtype)
    rows[:len(keep)] = keep
    vals[:len(keep)] = p[keep]
    return rows, vals


def random_links(rng, n, k, dtype, density=0.5):
    """A dense pruned link matrix with grid values (ties) and a zero diagonal."""
    dense = rng.choice(GRID, size=(n, n)) * (rng.random((n, n)) < density)
    np.fill_diagonal(dense, 0.0)
    dense = dense.astype(dtype).astype(np.float64)
    for r in range(n):
        naive._prune_row(dense[r], k)
    return dense


def random_precedence(rng, n, k, dtype, empty_ok=True):
    p = rng.choice(GRID, size=n) * (rng.random(n) < 0.6) / 2
    if empty_ok and rng.random() < 0.2:
        p[:] = 0
    p = p.astype(dtype).astype(np.float64)
    naive._prune_row(p, k)
    return p


def random_write(rng, n, dtype, max_rows=6):
    """A write with repeated rows, -1 entries and zero weights mixed in, summing to <= 1."""
    m = int(rng.integers(1, max_rows + 1))
    rows = rng.integers(-1, n, size=m)
    if m > 1 and rng.random() < 0.5:
        rows[-1] = rows[0]  # a row written twice in the step
    weights = rng.choice(GRID, size=m)
    weights[rng.random(m) < 0.15] = 0.0
    total = weights[rows >= 0].sum()
    if total > 1:
        weights = weights / total
    return rows.astype(np.int64), weights.astype(dtype)


def merged(rows, weights):
    out_rows = np.empty(len(rows), np.int64)
    out_w = np.empty(len(rows))
    n = L.merge_weights(rows, weights, out_rows, out_w)
    return out_rows, out_w, n


def directions(k, dtype=np.float64):
    """Output arrays for b_h and f_h: (back rows, back values, forward rows, forward values)."""
    return np.empty(k, np.int64), np.empty(k, dtype), np.empty(k, np.int64), np.empty(k, dtype)


def snapshot(state):
    """Everything undo must restore: slot map, the live pool (all parts), counter, precedence
    (a LinkState: its precedence; Links: every head's)."""
    t = state.before if isinstance(state, L.LinkState) else state
    if t.used.ndim > 1:  # links with a batch dimension
        return [x for i in range(t.used.shape[0]) for x in snapshot(L.links_at(state, i))]
    u = int(t.used[0])
    return [t.slot.copy(), t.used.copy(), t.owner[:u].copy(), t.cols[:u].copy(), t.vals[:u].copy(),
            state.prec_rows.copy(), state.prec_vals.copy()]


def assert_snapshot(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- each equation


def test_merge_weights(rng):
    for _ in range(200):
        n = int(rng.integers(1, 8))
        rows, weights = random_write(rng, n, np.float64, max_rows=10)
        out_rows, out_w, m = merged(rows, weights)
        w, written = naive.merge_weights(rows, weights, n)
        assert out_rows[:m].tolist() == written
        np.testing.assert_array_equal(out_w[:m], w[written])


def test_merge_weights_all_zero_or_none():
    rows, w, n = merged(np.array([-1, 3, 3], np.int64), np.array([0.5, 0.0, 0.0]))
    assert n == 0
    rows, w, n = merged(np.array([], np.int64), np.array([]))
    assert n == 0


@pytest.mark.parametrize("side", ["before", "after"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_link_update(rng, side, dtype, k):
    """N_h ("before") and P_h ("after") row updates against the dense references."""
    update, reference = getattr(L, f"link_update_{side}"), getattr(naive, f"link_update_{side}")
    for _ in range(60):
        n = int(rng.integers(2, 9))
        dense = random_links(rng, n, k, dtype)
        p = random_precedence(rng, n, k, dtype)
        rows, weights = random_write(rng, n, dtype)
        table = from_dense(dense, k, dtype)
        prows, pvals = prec_from_dense(p, k, dtype)
        wr, ww, m = merged(rows, weights)
        update(table, wr, ww, m, prows, pvals)
        w, _ = naive.merge_weights(rows, weights, n)
        expected = reference(dense, p, w, k, dtype)
        np.testing.assert_array_equal(to_dense(table, n), expected)


def test_link_updates_by_hand():
    """N_h(2, 0) = 0.5 * 0.6, P_h(0, 2) the same; the diagonal stays empty (p(2) > 0 too);
    K_L = 1 keeps the larger entry, and of two equal ones the lower column."""
    k = 1
    state = empty(4, k)
    state.prec_rows[:] = [0]
    state.prec_vals[:] = [0.6]
    rows, w, n = merged(np.array([2, 3], np.int64), np.array([0.5, 0.5]))
    L.link_update_before(state.before, rows, w, n, state.prec_rows, state.prec_vals)
    L.link_update_after(state.after, rows, w, n, state.prec_rows, state.prec_vals)
    before, after = to_dense(state.before, 4), to_dense(state.after, 4)
    assert before[2, 0] == before[3, 0] == 0.5 * 0.6 and np.count_nonzero(before) == 2
    assert after[0, 2] == 0.5 * 0.6 and np.count_nonzero(after) == 1  # tie: lower row 2 kept
    # a row of p written itself gets no diagonal entry
    state = empty(3, 2)
    state.prec_rows[:] = [1, 0]
    state.prec_vals[:] = [0.5, 0.25]
    rows, w, n = merged(np.array([1], np.int64), np.array([1.0]))
    L.link_update_before(state.before, rows, w, n, state.prec_rows, state.prec_vals)
    L.link_update_after(state.after, rows, w, n, state.prec_rows, state.prec_vals)
    before, after = to_dense(state.before, 3), to_dense(state.after, 3)
    assert before[1].tolist() == [0.25, 0.0, 0.0]
    assert after[0].tolist() == [0.0, 0.25, 0.0] and not after[1].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_precedence_update(rng, dtype, k):
    for _ in range(100):
        n = int(rng.integers(1, 10))
        p = random_precedence(rng, n, k, dtype)
        rows, weights = random_write(rng, n, dtype)
        prows, pvals = prec_from_dense(p, k, dtype)
        wr, ww, m = merged(rows, weights)
        L.precedence_update(prows, pvals, wr, ww, m)
        w, _ = naive.merge_weights(rows, weights, n)
        np.testing.assert_array_equal(prec_to_dense(prows, pvals, n), naive.precedence_update(p, w, k, dtype))


def test_precedence_replaced_by_a_full_write():
    """sum w = 1 decays the old precedence to exactly 0: its entries are dropped."""
    prows, pvals = np.array([0, 1, -1], np.int64), np.array([0.5, 0.25, 0.0])
    rows, w, n = merged(np.array([3, 2], np.int64), np.array([0.5, 0.5]))
    L.precedence_update(prows, pvals, rows, w, n)
    assert prows.tolist() == [2, 3, -1] and pvals.tolist() == [0.5, 0.5, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_directional_weights(rng, dtype, k):
    for _ in range(80):
        n = int(rng.integers(2, 10))
        dense = random_links(rng, n, k, dtype, density=0.7)
        table = from_dense(dense, k, dtype)
        r = int(rng.integers(1, n + 1))
        prev_rows = rng.permutation(n)[:r].astype(np.int64)
        prev_rows[rng.random(r) < 0.2] = -1
        prev_weights = rng.choice(GRID, size=r).astype(dtype)  # ties and exact zeros
        out_rows, out_vals = np.empty(k, np.int64), np.empty(k, dtype)
        m = L.directional_weights(table, prev_rows, prev_weights, out_rows, out_vals)
        x, kept = naive.directional_weights(dense, prev_rows, prev_weights, k, dtype)
        assert out_rows[:m].tolist() == kept and (out_rows[m:] == -1).all() and (out_vals[m:] == 0).all()
        np.testing.assert_array_equal(out_vals[:m], x[kept])


def test_directional_weights_by_hand():
    """f(i) = sum_j w(j) P(j, i); ties to the lower row; a zero weight keeps its rows (value 0)
    so gradients reach it; rows without entries and -1 rows contribute nothing."""
    dense = np.zeros((6, 6))
    dense[0, [3, 4]] = [0.5, 0.25]
    dense[1, [4, 2]] = [0.5, 0.25]
    dense[5, [1]] = [1.0]
    table = from_dense(dense, 2, np.float64)
    rows, vals = np.empty(2, np.int64), np.empty(2)
    m = L.directional_weights(table, np.array([0, 1, -1, 2], np.int64), np.array([0.5, 0.5, 0.9, 0.9]),
                              rows, vals)
    # f(3) = 0.25, f(4) = 0.125 + 0.25 = 0.375, f(2) = 0.125
    assert m == 2 and rows.tolist() == [4, 3] and vals.tolist() == [0.375, 0.25]
    m = L.directional_weights(table, np.array([1, 0], np.int64), np.array([0.5, 0.5]), rows, vals)
    assert m == 2 and rows.tolist() == [4, 3]  # the order of prev_rows changes nothing here
    m = L.directional_weights(table, np.array([5], np.int64), np.array([0.0]), rows, vals)
    assert m == 1 and rows.tolist() == [1, -1] and vals.tolist() == [0.0, 0.0]
    wide_rows, wide_vals = np.empty(5, np.int64), np.empty(5)
    tie = from_dense(np.array([[0, 0.5, 0.5, 0.5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), 3, np.float64)
    m = L.directional_weights(tie, np.array([0], np.int64), np.array([1.0]), rows, vals)
    assert rows.tolist() == [1, 2]  # three equal entries, K_L = 2: the lower rows
    m = L.directional_weights(tie, np.array([0], np.int64), np.array([1.0]), wide_rows, wide_vals)
    assert m == 3 and wide_rows.tolist() == [1, 2, 3, -1, -1]  # K_L above the entry count


@pytest.mark.parametrize("dtype", DTYPES)
def test_mix_modes(rng, dtype):
    for _ in range(100):
        n, kc, k = int(rng.integers(3, 12)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        content_rows = rng.permutation(n)[:kc].astype(np.int64)
        content_rows[rng.random(kc) < 0.2] = -1
        content_weights = rng.dirichlet(np.ones(kc)).astype(dtype)
        dense_b = random_links(rng, n, k, dtype)[0]
        dense_b[0] = rng.choice(GRID)
        b_kept = naive._keep_largest(dense_b, k)
        f_kept = naive._keep_largest(random_precedence(rng, n, k, dtype), k)
        dense_f = np.zeros(n)
        dense_f[f_kept] = rng.choice(GRID, size=len(f_kept)).astype(dtype)
        back_rows, back_vals = np.full(k, -1, np.int64), np.zeros(k, dtype)
        back_rows[:len(b_kept)], back_vals[:len(b_kept)] = b_kept, dense_b[b_kept]
        fwd_rows, fwd_vals = np.full(k, -1, np.int64), np.zeros(k, dtype)
        fwd_rows[:len(f_kept)], fwd_vals[:len(f_kept)] = f_kept, dense_f[f_kept]
        modes = rng.dirichlet(np.ones(3)).astype(dtype)
        r = kc + 2 * k
        out_rows, out_w = np.empty(r, np.int64), np.empty(r, dtype)
        m = L.mix_modes(content_rows, content_weights, back_rows, back_vals, fwd_rows, fwd_vals, modes,
                        out_rows, out_w)
        w, support = naive.mix_modes(content_rows, content_weights, dense_b * np.isin(np.arange(n), b_kept),
                                     b_kept, dense_f, f_kept, modes, dtype)
        assert out_rows[:m].tolist() == support and (out_rows[m:] == -1).all() and (out_w[m:] == 0).all()
        np.testing.assert_array_equal(out_w[:m], w[support])
        assert not np.delete(w, support).any()


# --------------------------------------------------------------------------- whole steps


def run_against_naive(rng, n, k, dtype, steps, heads=1, r=4):
    """Random steps of link_write and link_read for ``heads`` heads against NaiveLinks; the
    read rows of a step are the next step's write and previous read rows, as in the SDNC."""
    states = [empty(n, k, dtype) for _ in range(heads)]
    refs = [naive.NaiveLinks(n, k, dtype) for _ in range(heads)]
    prev = [(np.full(r + 2 * k, -1, np.int64), np.zeros(r + 2 * k, dtype)) for _ in range(heads)]
    for _ in range(steps):
        for h in range(heads):
            state, ref = states[h], refs[h]
            prev_rows, prev_w = prev[h]
            gate, interp = rng.choice([0.0, 0.3, 1.0]), rng.choice([0.0, 0.5, 1.0])
            lra = int(rng.integers(n))  # may coincide with a previous read row
            rows = np.append(prev_rows, lra).astype(np.int64)
            weights = np.append(gate * interp * prev_w.astype(np.float64), gate * (1 - interp)).astype(dtype)
            rec = L.empty_step(len(rows), k, dtype)
            L.link_write(state, rows, weights, rec)
            ref.write(rows, weights)
            np.testing.assert_array_equal(to_dense(state.before, n), ref.before)
            np.testing.assert_array_equal(to_dense(state.after, n), ref.after)
            np.testing.assert_array_equal(prec_to_dense(state.prec_rows, state.prec_vals, n), ref.precedence)

            kc = min(r, n)
            content_rows = rng.permutation(n)[:kc].astype(np.int64)
            content_w = rng.dirichlet(np.ones(kc)).astype(dtype)
            modes = rng.choice([np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), rng.dirichlet(np.ones(3))])
            modes = modes.astype(dtype)
            out_rows, out_w = np.empty(r + 2 * k, np.int64), np.empty(r + 2 * k, dtype)
            br, bv, fr, fv = directions(k, dtype)
            m = L.link_read(state, prev_rows, prev_w, content_rows, content_w, modes, br, bv, fr, fv,
                            out_rows, out_w)
            w, support, (b, b_kept), (f, f_kept) = ref.read(prev_rows, prev_w, content_rows, content_w, modes)
            assert br[:L.entry_count(br)].tolist() == b_kept and fr[:L.entry_count(fr)].tolist() == f_kept
            assert out_rows[:m].tolist() == support
            np.testing.assert_array_equal(out_w[:m], w[support])
            prev[h] = (out_rows.copy(), out_w.copy())
    return states


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(3, 1), (5, 2), (6, 8), (12, 3)])
def test_steps_against_naive(rng, dtype, n, k):
    """Small N so rows are written again and again (pruning, decay, ties, rows written twice
    in a step, write gate 0, K_L above N)."""
    for _ in range(4):
        run_against_naive(rng, n, k, dtype, steps=25, heads=2)


# --------------------------------------------------------------------------- undo / redo


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(4, 1), (7, 3), (30, 8)])
def test_undo_redo_bit_for_bit(rng, dtype, n, k):
    state = empty(n, k, dtype)
    snaps, recs = [snapshot(state)], []
    for _ in range(40):
        rows, weights = random_write(rng, n, dtype, max_rows=7)
        rec = L.empty_step(len(rows), k, dtype)
        L.link_write(state, rows, weights, rec)
        recs.append(rec)
        snaps.append(snapshot(state))
    for t in range(len(recs) - 1, -1, -1):
        L.link_undo(state, recs[t])
        assert_snapshot(snapshot(state), snaps[t])
    assert state.before.used[0] == 0 and state.after.used[0] == 0 and not state.before.slot.any()
    for t in range(len(recs)):
        L.link_redo(state, recs[t])
        assert_snapshot(snapshot(state), snaps[t + 1])
    # undo part way, then a different future: equal to a fresh run of that history
    for t in range(len(recs) - 1, 19, -1):
        L.link_undo(state, recs[t])
    assert_snapshot(snapshot(state), snaps[20])


def test_undo_of_a_step_that_writes_nothing(rng):
    state = empty(5, 2)
    rec = L.empty_step(3, 2)
    L.link_write(state, np.array([1, 2], np.int64), np.array([0.5, 0.5]), rec)
    before = snapshot(state)
    rec2 = L.empty_step(3, 2)
    L.link_write(state, np.array([3, -1], np.int64), np.array([0.0, 0.7]), rec2)
    assert rec2.counts.tolist() == [0, 0]
    assert_snapshot(snapshot(state), before)
    L.link_undo(state, rec2)
    assert_snapshot(snapshot(state), before)


def test_reset_and_rebuild(rng):
    n, k = 20, 3
    links = L.empty_links(n, k, 2, capacity=n)
    for _ in range(15):
        for h in range(2):
            rows, weights = random_write(rng, n, np.float64)
            L.link_write(L.head_state(links, h), rows, weights, L.empty_step(len(rows), k))
    assert to_dense(L.head_state(links, 1).after, n).any()
    slot = links.slot.copy()
    links.slot[:] = 0
    L.links_rebuild(links)
    np.testing.assert_array_equal(links.slot, slot)
    L.links_reset(links)
    assert links.used[0] == 0 and not links.slot.any() and (links.prec_rows == -1).all()
    assert not links.prec_vals.any()


def test_batch_kernels_equal_heads_one_by_one(rng):
    """batch_link_write/read/undo/redo over (B, H) heads sharing records (small N: heads write
    the same rows) equal each head stepped on its own links; undoing all steps empties every
    pool, and undo/redo restore every step bit for bit."""
    b, h, n, k, r = 2, 3, 9, 2, 4
    batched = L.empty_links(n, k, h, batch_shape=(b,), capacity=n)
    singles = [[empty(n, k) for _ in range(h)] for _ in range(b)]
    recs, snaps = [], [snapshot(batched)]
    for _ in range(10):
        writes = [[random_write(rng, n, np.float64, max_rows=5) for _ in range(h)] for _ in range(b)]
        rows = np.full((b, h, 5), -1, np.int64)
        weights = np.zeros((b, h, 5))
        for i in range(b):
            for j in range(h):
                m = len(writes[i][j][0])
                rows[i, j, :m], weights[i, j, :m] = writes[i][j]
                L.link_write(singles[i][j], rows[i, j], weights[i, j], L.empty_step(5, k))
        rec = L.empty_step(5, k, batch_shape=(b, h))
        L.batch_link_write(batched, rows, weights, rec)
        recs.append(rec)
        snaps.append(snapshot(batched))
    prev_rows = np.stack([[rng.permutation(n)[:r] for _ in range(h)] for _ in range(b)]).astype(np.int64)
    prev_w = rng.dirichlet(np.ones(r), size=(b, h))
    content_rows = np.stack([[rng.permutation(n)[:2] for _ in range(h)] for _ in range(b)]).astype(np.int64)
    content_w = rng.dirichlet(np.ones(2), size=(b, h))
    modes = rng.dirichlet(np.ones(3), size=(b, h))
    out = (*(np.empty((b, h, k), dt) for dt in (np.int64, np.float64, np.int64, np.float64)),
           np.empty((b, h, 2 + 2 * k), np.int64), np.empty((b, h, 2 + 2 * k)), np.empty((b, h), np.int64))
    L.batch_link_read(batched, prev_rows, prev_w, content_rows, content_w, modes, *out)
    for i in range(b):
        for j in range(h):
            view, single = L.state_at(batched, i, j), singles[i][j]
            for part in ("before", "after"):
                dense = to_dense(getattr(single, part), n)
                np.testing.assert_array_equal(to_dense(getattr(view, part), n), dense)
            np.testing.assert_array_equal(view.prec_rows, single.prec_rows)
            np.testing.assert_array_equal(view.prec_vals, single.prec_vals)
            rows, weights = np.empty(2 + 2 * k, np.int64), np.empty(2 + 2 * k)
            m = L.link_read(single, prev_rows[i, j], prev_w[i, j], content_rows[i, j], content_w[i, j],
                            modes[i, j], *directions(k), rows, weights)
            assert m == out[6][i, j]
            np.testing.assert_array_equal(rows, out[4][i, j])
            np.testing.assert_array_equal(weights, out[5][i, j])
    for i in range(b):  # heads share records
        assert batched.used[i, 0] < sum(int(single.before.used[0]) for single in singles[i])
    for t in range(len(recs) - 1, -1, -1):
        L.batch_link_undo(batched, recs[t])
        assert_snapshot(snapshot(batched), snaps[t])
    assert not batched.used.any() and not batched.slot.any()
    for t, rec in enumerate(recs):
        L.batch_link_redo(batched, rec)
        assert_snapshot(snapshot(batched), snaps[t + 1])


# --------------------------------------------------------------------------- backward


def test_backward_kernels_against_torch(rng):
    """d/d(prev weights, modes, content weights) of a loss on the mixed read weights, through
    the kept rows of b and f, equals torch autograd of the dense formula on the same supports."""
    n, k, r = 10, 3, 5
    for _ in range(20):
        state = empty(n, k)
        for _ in range(12):
            rows, weights = random_write(rng, n, np.float64)
            L.link_write(state, rows, weights, L.empty_step(len(rows), k))
        prev_rows = rng.permutation(n)[:r].astype(np.int64)
        prev_w = rng.dirichlet(np.ones(r))
        content_rows = rng.permutation(n)[:2].astype(np.int64)
        content_w = rng.dirichlet(np.ones(2))
        modes = rng.dirichlet(np.ones(3))
        out_rows, out_w = np.empty(2 + 2 * k, np.int64), np.empty(2 + 2 * k)
        br, bv, fr, fv = directions(k)
        m = L.link_read(state, prev_rows, prev_w, content_rows, content_w, modes, br, bv, fr, fv,
                        out_rows, out_w)
        g = rng.normal(size=len(out_rows))
        g[m:] = 0

        grad_modes, grad_c = np.zeros(3), np.empty(2)
        grad_b, grad_f, grad_prev = np.empty(k), np.empty(k), np.zeros(r)
        L.mix_modes_backward(content_rows, content_w, br, bv, fr, fv, modes, out_rows, g, grad_modes, grad_c,
                             grad_b, grad_f)
        L.directional_weights_backward(state.before, prev_rows, br, grad_b, grad_prev)
        L.directional_weights_backward(state.after, prev_rows, fr, grad_f, grad_prev)

        t = dict(prev=torch.tensor(prev_w, requires_grad=True), modes=torch.tensor(modes, requires_grad=True),
                 content=torch.tensor(content_w, requires_grad=True))
        dense_n = torch.tensor(to_dense(state.before, n))
        dense_p = torch.tensor(to_dense(state.after, n))
        pw = torch.zeros(n, dtype=torch.float64).index_put((torch.tensor(prev_rows),), t["prev"])
        mask_b = torch.zeros(n, dtype=torch.float64)
        mask_b[br[br >= 0]] = 1
        mask_f = torch.zeros(n, dtype=torch.float64)
        mask_f[fr[fr >= 0]] = 1
        b = (pw @ dense_n) * mask_b
        f = (pw @ dense_p) * mask_f
        c = torch.zeros(n, dtype=torch.float64).index_put((torch.tensor(content_rows),), t["content"])
        w = t["modes"][0] * b + t["modes"][1] * c + t["modes"][2] * f
        np.testing.assert_allclose(w.detach().numpy()[out_rows[:m]], out_w[:m], rtol=0, atol=1e-15)
        gd = torch.zeros(n, dtype=torch.float64)
        gd[out_rows[:m]] = torch.tensor(g[:m])
        (w * gd).sum().backward()
        np.testing.assert_allclose(grad_prev, t["prev"].grad.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(grad_modes, t["modes"].grad.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(grad_c, t["content"].grad.numpy(), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- cost


def test_huge_memory_costs_only_rows_written(rng):
    """N = 10^7 with lazily mapped slot maps and pools (about 2.6 GB of address space): 200
    steps of 21 written rows grow the resident size by far less than one (N,) array."""
    n, k, r = 10**7, 8, 20
    run_against_naive(rng, 8, k, np.float32, steps=2)  # compile first
    state = L.head_state(L.empty_links(n, k, 1, np.float32), 0)
    before = rss_bytes()
    out_rows, out_w = np.empty(4 + 2 * k, np.int64), np.empty(4 + 2 * k, np.float32)
    br, bv, fr, fv = directions(k, np.float32)
    rec = L.empty_step(r + 1, k, np.float32)
    prev_rows, prev_w = np.full(r, -1, np.int64), np.zeros(r, np.float32)
    for _ in range(200):
        rows = np.append(prev_rows, rng.integers(n)).astype(np.int64)
        weights = np.append(0.5 * prev_w, 0.5).astype(np.float32)
        L.link_write(state, rows, weights, rec)
        content = rng.integers(n, size=4).astype(np.int64)
        m = L.link_read(state, prev_rows, prev_w, content, np.full(4, 0.25, np.float32),
                        np.array([0.3, 0.4, 0.3], np.float32), br, bv, fr, fv, out_rows, out_w)
        prev_rows, prev_w = out_rows[:r].copy(), out_w[:r].copy()
        assert m <= 4 + 2 * k
    grown = rss_bytes() - before
    assert state.before.used[0] > 200
    assert grown < 8 * n // 4, f"resident size grew by {grown:,d} bytes"
