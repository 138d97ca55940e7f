"""HNSWIndex: fresh rows always found, erased rows never returned with stale content, equal
to the exact index where hnswlib is exact (small N, wide beam), recall where it is not."""

import numpy as np
import pytest
from conftest import assert_same, random_step_inputs, snapshot

import samcpu
from samcpu.config import EPS
from samcpu.kernels import exact_query

WIDE = dict(ef=400, ef_construction=200, overfetch=64, stale_cos=2.0)  # re-index every change


def exact_rows(mem, queries):
    w = mem._written
    return exact_query(mem._memory, w.flags.copy(), w.members, w.counts, w.hints.copy(),
                       np.asarray(queries, mem.dtype), mem.k, EPS, 4096)[0]


@pytest.mark.parametrize("flush_rows", [1, 3, 16])
def test_hnsw_equals_exact_when_the_beam_covers_the_graph(flush_rows):
    rng = np.random.default_rng(flush_rows)
    opts = dict(WIDE, flush_rows=flush_rows)
    a = samcpu.SparseMemory(2, 60, 4, num_heads=3, k=4, index="hnsw", index_options=opts)
    b = samcpu.SparseMemory(2, 60, 4, num_heads=3, k=4, index="exact")
    pool = rng.normal(size=(4, 4))
    for t in range(150):  # the memory fills, rows are erased, relabelled and rebuilt
        inputs = random_step_inputs(rng, 2, 3, 4, pool if t % 2 else None, np.float32)
        x, y = a.step(*inputs), b.step(*inputs)
        np.testing.assert_array_equal(x.rows, y.rows, err_msg=f"step {t + 1}")
        np.testing.assert_array_equal(x.reads, y.reads)
    stats = a.index.stats()
    assert stats["deleted"] > 0 or stats["rebuilds"] > 0


def test_fresh_rows_are_always_found_even_with_a_poor_graph():
    rng = np.random.default_rng(1)
    h, w = 4, 16
    mem = samcpu.SparseMemory(1, 100_000, w, num_heads=h, k=2, index="hnsw",
                              index_options=dict(ef=1, m=2, ef_construction=2, overfetch=0, flush_rows=8))
    one, zero = np.ones((1, h)), np.zeros((1, h))
    for t in range(300):
        a = rng.normal(size=(1, h, w))
        res = mem.step(a, np.full((1, h), 50.0), a, one, zero)  # write a to the LRA rows, query a
        for i in range(h):
            row = res.rows[0, i, 0]
            np.testing.assert_allclose(mem.memory[0, row], a[0, i], rtol=1e-6, err_msg=f"step {t}")


def test_erased_rows_are_scored_by_their_current_content():
    rng = np.random.default_rng(2)
    w = 8
    mem = samcpu.SparseMemory(1, 6, w, num_heads=1, k=1, index="hnsw", index_options=dict(flush_rows=1))
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    first = rng.normal(size=(1, 1, w))
    mem.step(first, one, first, one, zero)  # row 0 := first
    other = rng.normal(size=(1, 1, w))
    for _ in range(6):  # the ring comes round: row 0 is erased and rewritten with `other`
        res = mem.step(other, one, other, one, zero)
    assert not np.allclose(mem.memory[0, 0], first[0, 0])
    res = mem.step(first, one, first * 0, zero, zero)  # query the old content, write nothing
    row = res.rows[0, 0, 0]
    exact = exact_rows(mem, first)[0, 0, 0]
    assert row == exact  # the stale vector of row 0 does not win


def test_recall_against_exact_on_clustered_data():
    rng = np.random.default_rng(3)
    b, n, w, h, k = 2, 20_000, 16, 4, 8
    mem = samcpu.SparseMemory(b, n, w, num_heads=h, k=k, index="hnsw", index_options=dict(flush_rows=32))
    centres = rng.normal(size=(30, w))
    hits = total = 0
    for _ in range(600):
        c = centres[rng.integers(30, size=(b, h))]
        q, a = c + 0.3 * rng.normal(size=c.shape), c + 0.3 * rng.normal(size=c.shape)
        res = mem.step(q, rng.uniform(1, 10, (b, h)), a, rng.uniform(0.5, 1, (b, h)),
                       rng.uniform(size=(b, h)))
        want = exact_rows(mem, q)
        for i in range(b):
            for j in range(h):
                hits += len(set(res.rows[i, j]) & set(want[i, j]))
                total += k
    assert hits / total > 0.9, hits / total


def test_rewind_and_replay_keep_index_and_memory_consistent():
    rng = np.random.default_rng(4)
    a = samcpu.SparseMemory(1, 80, 4, num_heads=2, k=3, index="hnsw", index_options=dict(WIDE, flush_rows=4))
    ref = samcpu.SparseMemory(1, 80, 4, num_heads=2, k=3, index="exact")
    steps = [random_step_inputs(rng, 1, 2, 4, None, np.float32) for _ in range(60)]
    for x in steps:
        a.step(*x)
        ref.step(*x)
    a.rewind(25)
    ref.rewind(25)
    assert_same(snapshot(a), snapshot(ref))
    more = [random_step_inputs(rng, 1, 2, 4, None, np.float32) for _ in range(20)]
    for x in more:  # a new future from step 25: same reads as the exact index
        np.testing.assert_array_equal(a.step(*x).rows, ref.step(*x).rows)
    a.rewind(30)
    a.replay()
    for x in more[:5]:
        np.testing.assert_array_equal(a.step(*x).rows, ref.step(*x).rows)


def test_save_load_and_reset_with_hnsw(tmp_path):
    rng = np.random.default_rng(5)
    a = samcpu.SparseMemory(2, 100, 4, num_heads=2, k=3, index="hnsw", index_options=WIDE)
    for _ in range(30):
        a.step(*random_step_inputs(rng, 2, 2, 4, None, np.float32))
    a.save(tmp_path / "m")
    b = samcpu.SparseMemory.load(tmp_path / "m", index="hnsw")
    assert_same(snapshot(a), snapshot(b))
    for _ in range(10):
        x = random_step_inputs(rng, 2, 2, 4, None, np.float32)
        np.testing.assert_array_equal(a.step(*x).rows, b.step(*x).rows)
    a.reset()
    assert len(a.index) == 0 and a.index.stats()["live"] == 0
    fresh = samcpu.SparseMemory(2, 100, 4, num_heads=2, k=3, index="hnsw", index_options=WIDE)
    for _ in range(10):
        x = random_step_inputs(rng, 2, 2, 4, None, np.float32)
        np.testing.assert_array_equal(a.step(*x).rows, fresh.step(*x).rows)


def test_hundred_million_slots_with_hnsw_touch_no_memory_at_start():
    """A 12.8 GB memory (1e8 x 32 float32) costs no resident memory until written: creating it
    and taking one step touches O(rows written) pages, not O(N)."""
    from samcpu._util import rss_bytes

    before = rss_bytes()
    mem = samcpu.SparseMemory(1, 100_000_000, 32, num_heads=4, k=4, index="hnsw")
    assert rss_bytes() - before < 64 * 2**20
    rng = np.random.default_rng(6)
    res = mem.step(*random_step_inputs(rng, 1, 4, 32, None, np.float32))
    assert res.rows.max() < 100_000_000


def test_save_load_restores_the_graph_without_rebuilding(tmp_path):
    rng = np.random.default_rng(7)
    a = samcpu.SparseMemory(2, 5000, 8, num_heads=2, k=3, index="hnsw", index_options=dict(flush_rows=16))
    for _ in range(200):
        a.step(*random_step_inputs(rng, 2, 2, 8, None, np.float32))
    a.save(tmp_path / "m")
    stats = a.index.stats()
    b = samcpu.SparseMemory.load(tmp_path / "m")
    assert b.index_kind == "hnsw"
    loaded = b.index.stats()
    assert loaded["live"] == stats["live"] and loaded["deleted"] == stats["deleted"] and stats["live"] > 0
    for _ in range(20):  # the same graph answers the same
        x = random_step_inputs(rng, 2, 2, 8, None, np.float32)
        np.testing.assert_array_equal(a.step(*x).rows, b.step(*x).rows)
    c = samcpu.SparseMemory.load(tmp_path / "m", index="exact")  # built from the rows instead
    assert c.index_kind == "exact"
    assert_same(snapshot(c), snapshot(samcpu.SparseMemory.load(tmp_path / "m")))
    (graph,) = (tmp_path / "m").glob("*/hnsw_1.bin")  # in the save's data folder
    graph.write_bytes(b"garbage")
    with pytest.raises(samcpu.MemoryFileError, match="checksum"):
        samcpu.SparseMemory.load(tmp_path / "m")


def test_erased_rows_are_never_returned_on_their_stale_content():
    """A long recycling run (rows flushed to the graph early), every query aimed at the old content of
    the rows the step erases: the weights always come from the current contents, and an erased
    row is returned only when its current content earns it a place in the exact top-K."""
    rng = np.random.default_rng(5)
    b, n, w, h, k = 2, 200, 8, 2, 4
    mem = samcpu.SparseMemory(b, n, w, num_heads=h, k=k, index="hnsw", dtype=np.float64,
                              index_options=dict(flush_rows=8))
    one, zero, beta = np.ones((b, h)), np.zeros((b, h)), np.full((b, h), 5.0)
    for t in range(400):
        lra = mem.lra_rows()
        old = np.stack([mem.memory[i, lra[i]] for i in range(b)])  # (B, H, W), about to be erased
        if not old.any():
            old = rng.normal(size=(b, h, w))
        gate = one if t % 3 else zero  # new content into the erased rows, or just erase them
        res = mem.step(old, beta, rng.normal(size=(b, h, w)), gate, zero)
        exact = exact_rows(mem, old)
        for i in range(b):
            for j in range(h):
                rows = res.rows[i, j]
                sims = np.array([naive_cos(old[i, j], mem.memory[i, r]) for r in rows])
                e = np.exp(beta[i, j] * (sims - sims.max()))
                np.testing.assert_allclose(res.weights[i, j], e / e.sum(), rtol=1e-9, atol=1e-12)
                kth = naive_cos(old[i, j], mem.memory[i, exact[i, j, -1]])
                for r, s in zip(rows, sims, strict=True):
                    if r in lra[i]:
                        assert s >= kth - 1e-12, \
                            f"step {t}: erased row {r} returned with similarity {s} < {kth}"
    stats = mem.index.stats()  # erased rows did leave the graph (labels deleted, or rebuilt)
    assert stats["deleted"] > 0 or stats["rebuilds"] > 0


def naive_cos(q, m):
    return float(q @ m / (np.sqrt(q @ q + EPS) * np.sqrt(m @ m + EPS)))


def test_remove_drops_labels_at_once_and_answers_stay_exact():
    """The index interface used directly on an array: rows zeroed and removed leave the graph
    at once; a removed row that is not zero after all is still found (it is re-buffered)."""
    from samcpu.index import ExactIndex, HNSWIndex
    from samcpu.index.base import WrittenRows
    rng = np.random.default_rng(7)
    n, w = 50, 4
    memory = np.zeros((1, n, w), np.float32)
    written = WrittenRows(1, n)
    hnsw = HNSWIndex(memory, written, **dict(WIDE, flush_rows=1))
    exact = ExactIndex(memory, written)
    rows = np.arange(30, dtype=np.int64)[None]
    memory[0, :30] = rng.normal(size=(30, w))
    written.add(rows)
    hnsw.update(rows)
    hnsw.flush()
    assert hnsw.stats()["live"] == 30 and hnsw.stats()["buffered"] == 0
    old = memory[0, [3, 7]].copy()
    memory[0, [3, 7]] = 0
    hnsw.remove(np.array([[3, 7, -1]]))
    assert hnsw.stats()["deleted"] == 2 and hnsw.stats()["live"] == 28
    queries = np.concatenate([old, rng.normal(size=(2, w)).astype(np.float32)])[None]
    np.testing.assert_array_equal(hnsw.query(queries, 5)[0], exact.query(queries, 5)[0])
    hnsw.remove(np.array([[11]]))  # not zero: still found, and indexed again at the next flush
    assert hnsw.stats()["live"] == 27
    r, _ = hnsw.query(memory[:, [11]], 1)
    assert r[0, 0, 0] == 11
    hnsw.flush()
    assert hnsw.stats()["live"] == 28 and hnsw.query(memory[:, [11]], 1)[0][0, 0, 0] == 11


def test_remove_with_repeated_rows_deletes_each_label_once():
    from samcpu.index import ExactIndex, HNSWIndex
    from samcpu.index.base import WrittenRows
    rng = np.random.default_rng(8)
    memory = np.zeros((1, 40, 4), np.float32)
    written = WrittenRows(1, 40)
    hnsw, exact = HNSWIndex(memory, written, **dict(WIDE, flush_rows=1)), ExactIndex(memory, written)
    rows = np.arange(20, dtype=np.int64)[None]
    memory[0, :20] = rng.normal(size=(20, 4))
    written.add(rows)
    hnsw.update(rows)
    hnsw.flush()
    hnsw.remove(np.array([[5, 5, 9, -1, 9]]))  # rows still hold content: found, re-indexed
    assert hnsw.stats()["deleted"] == 2 and hnsw.stats()["live"] == 18
    queries = memory[:, [5, 9, 0]]
    np.testing.assert_array_equal(hnsw.query(queries, 3)[0], exact.query(queries, 3)[0])
    hnsw.flush()
    assert hnsw.stats()["live"] == 20
    np.testing.assert_array_equal(hnsw.query(queries, 3)[0], exact.query(queries, 3)[0])


def test_hot_tier_keeps_the_most_recently_written_rows_and_indexes_a_row_once():
    """Rows written again and again stay in the exact hot tier and enter the graph at most once
    each; when the hot tier is flushed, the rows written last stay hot and the others go to the
    graph; recall against brute force (tests/naive.py) stays high before and after a full flush."""
    from naive import cosine_topk

    rng = np.random.default_rng(7)
    b, h, w, k = 1, 2, 8, 3
    opts = dict(flush_rows=16, num_threads=1)
    mem = samcpu.SparseMemory(b, 5000, w, num_heads=h, k=k, index="hnsw", index_options=opts)
    query = rng.normal(size=(b, h, w)).astype(np.float32)  # the same query: the same rows are read

    def step(q, gate):
        x = (q, np.full((b, h), 5.0, np.float32), rng.normal(size=(b, h, w)).astype(np.float32),
             np.full((b, h), gate, np.float32), np.full((b, h), 0.5, np.float32))
        got = mem.step(*x).rows[0]
        want = cosine_topk(mem.memory[0].astype(np.float64), q[0].astype(np.float64), k)[0]
        return sum(len(set(got[i]) & set(want[i])) for i in range(h))

    hits = sum(step(query, 0.9) for _ in range(300))
    assert hits / (300 * h * k) >= 0.95
    idx = mem.index
    written = len(mem.written_rows(0))
    stats = idx.stats()
    # every row is new once (the LRA rows) and re-indexed only if it moved after cooling
    assert stats["inserted"] <= written + stats["deleted"] and stats["rebuilds"] == 0
    assert stats["inserted"] < 2 * written
    hot = set(idx.buffer.rows(0).tolist())
    assert len(hot) < opts["flush_rows"] + 2 * h * (k + 1)
    recent = np.argsort(-idx.last_write[0, mem.written_rows(0)], kind="stable")
    newest = set(mem.written_rows(0)[recent[: opts["flush_rows"] // 2]].tolist())
    assert newest <= hot  # the rows written last are hot
    idx.flush()  # everything non-zero into the graph: approximate answers from now on
    assert len(idx.buffer) == 0 and idx.stats()["live"] == written
    hits = sum(step(rng.normal(size=(b, h, w)).astype(np.float32), 0.0) for _ in range(20))
    assert hits / (20 * h * k) >= 0.95


@pytest.mark.parametrize("option, value", [
    ("m", 0), ("ef", 1.5), ("ef_construction", True), ("overfetch", -1), ("flush_rows", 0),
    ("num_threads", 0), ("capacity", "8"), ("stale_cos", "0.9"), ("stale_cos", float("nan")),
    ("rebuild_ratio", 0), ("rebuild_ratio", float("inf")), ("cool_rows", 0), ("migrate", -1)])
def test_bad_index_option_values_are_refused_by_name(option, value):
    with pytest.raises(ValueError, match=option):
        samcpu.SparseMemory(1, 100, 4, index="hnsw", index_options={option: value})


def test_a_loaded_memory_goes_on_exactly_like_the_live_one(tmp_path):
    """Saving changes nothing in the live index, and the loaded index keeps the hot tier's
    order, the clock and the flush points: through many later flushes both answer the same."""
    rng = np.random.default_rng(11)
    opts = dict(flush_rows=16, num_threads=1)
    a = samcpu.SparseMemory(2, 3000, 8, num_heads=2, k=3, index="hnsw", index_options=opts)
    for _ in range(100):
        a.step(*random_step_inputs(rng, 2, 2, 8, None, np.float32))
    before = (a.index.stats(), a.index.clock, a.index.flush_at.copy(), len(a.index.buffer))
    a.save(tmp_path / "m")
    assert before[0] == a.index.stats() and before[1] == a.index.clock
    assert (before[2] == a.index.flush_at).all() and before[3] == len(a.index.buffer)
    b = samcpu.SparseMemory.load(tmp_path / "m", index_options=opts)
    assert b.index.clock == a.index.clock and (b.index.flush_at == a.index.flush_at).all()
    for _ in range(200):
        x = random_step_inputs(rng, 2, 2, 8, None, np.float32)
        np.testing.assert_array_equal(a.step(*x).rows, b.step(*x).rows)
    state = ("live", "deleted", "buffered")  # "inserted" and "rebuilds" count since creation
    assert {k: a.index.stats()[k] for k in state} == {k: b.index.stats()[k] for k in state}


def check_labels(mem):
    """The index's bookkeeping: every written non-zero row that is not hot has exactly one live
    label, in the graph its code names and mapped back to it; rows in a draining old graph are
    pending and counted; none is left in an old graph once it is dropped."""
    idx = mem.index
    for b in range(mem.batch_size):
        rows = mem.written_rows(b)
        code = idx.row_label[b, rows]
        hot = idx.buffer.flags[b][rows] != 0
        nonzero = np.abs(mem.memory[b, rows]).sum(1) > 0
        assert (code[nonzero & ~hot] != 0).all(), "a cold row without a label"
        pos = code > 0
        assert (idx.graphs[b].label_row[code[pos] - 1] == rows[pos]).all()
        neg = code < 0
        if idx.old[b] is None:
            assert not neg.any() and idx.old_live[b] == 0
        else:
            assert (idx.old[b].label_row[-code[neg] - 1] == rows[neg]).all()
            assert np.isin(rows[neg], idx.pending[b]).all() and idx.old_live[b] == neg.sum()


def run_until_rebuilding(mem, rng, steps=2000):
    """Step with random inputs until a rebuild is in progress in batch element 0."""
    for _ in range(steps):
        mem.step(*random_step_inputs(rng, mem.batch_size, mem.num_heads, mem.word_size, None, np.float32))
        if mem.index.old[0] is not None and len(mem.index.pending[0]) > 0:
            return
    raise AssertionError("no rebuild started")


def test_a_rebuild_is_spread_over_flushes_and_answers_stay_exact():
    """A rebuild moves the old graph's rows a chunk per flush while queries search both graphs:
    every answer equals the exact index's, no step inserts more than a flush's bounded work, and
    rebuilds do finish (the old graph is dropped)."""
    rng = np.random.default_rng(21)
    opts = dict(WIDE, ef=2000, flush_rows=16, migrate=2, num_threads=1)
    a = samcpu.SparseMemory(1, 600, 6, num_heads=3, k=4, index="hnsw", index_options=opts)
    b = samcpu.SparseMemory(1, 600, 6, num_heads=3, k=4, index="exact")
    per_step, spans, span, live_at_start = [], [], 0, []
    for t in range(900):
        inputs = random_step_inputs(rng, 1, 3, 6, None, np.float32)
        before, was = a.index.inserted, a.index.old[0]
        x, y = a.step(*inputs), b.step(*inputs)
        np.testing.assert_array_equal(x.rows, y.rows, err_msg=f"step {t + 1}")
        check_labels(a)
        per_step.append(a.index.inserted - before)
        if a.index.old[0] is not None:
            if was is None:
                live_at_start.append(a.index.old[0].live)
            span += 1
        elif span:
            spans.append(span)
            span = 0
    stats = a.index.stats()
    assert stats["rebuilds"] >= 3 and len(spans) >= 3
    # spread: a rebuild of hundreds of rows takes several steps (one of a few dozen, one flush)
    assert all(span >= 3 for span, live in zip(spans, live_at_start, strict=False) if live >= 300)
    # a flush cools at most the hot tier (flush_rows // 2 plus one step's rows: 3 heads x 5)
    # and moves at most max(flush_rows, migrate x cooled) rows: far below a bulk rebuild
    bound = (16 + 15) * (1 + 2)
    assert max(per_step) <= bound < max(live_at_start)


def test_a_memory_saved_during_a_rebuild_loads_and_goes_on_exactly(tmp_path):
    rng = np.random.default_rng(22)
    opts = dict(flush_rows=16, num_threads=1, stale_cos=2.0, migrate=1)
    a = samcpu.SparseMemory(2, 4000, 8, num_heads=2, k=3, index="hnsw", index_options=opts)
    run_until_rebuilding(a, rng)
    pending = a.index.stats()["pending"]
    a.save(tmp_path / "m")
    assert a.index.stats()["pending"] == pending and a.index.old[0] is not None  # saving changes nothing
    b = samcpu.SparseMemory.load(tmp_path / "m", index_options=opts)
    assert b.index.old[0] is not None and np.array_equal(b.index.pending[0], a.index.pending[0])
    np.testing.assert_array_equal(b.index.row_label[0], a.index.row_label[0])
    check_labels(b)
    for t in range(300):  # through the end of the rebuild and later ones
        x = random_step_inputs(rng, 2, 2, 8, None, np.float32)
        np.testing.assert_array_equal(a.step(*x).rows, b.step(*x).rows, err_msg=f"step {t + 1}")
        check_labels(b)
    state = ("live", "deleted", "buffered", "pending")
    assert {k: a.index.stats()[k] for k in state} == {k: b.index.stats()[k] for k in state}
    assert a.index.rebuilds > 0
    a.index.finish_rebuilds()
    assert all(g is None for g in a.index.old) and a.index.stats()["pending"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_large_hot_tier_scored_from_its_copy_first_still_answers_exactly(dtype):
    """Thousands of hot rows (no graph at all): the int16 pre-filter of the hot tier must
    keep every row of the exact top K, near-ties and identical rows included."""
    rng = np.random.default_rng(31)
    opts = dict(flush_rows=100_000, num_threads=1)
    a = samcpu.SparseMemory(2, 3000, 8, num_heads=3, k=4, index="hnsw", index_options=opts, dtype=dtype)
    b = samcpu.SparseMemory(2, 3000, 8, num_heads=3, k=4, index="exact", dtype=dtype)
    pool = rng.normal(size=(6, 8))  # identical rows: exact ties, broken by the lower row
    for t in range(300):
        q, s, add, wg, ig = random_step_inputs(rng, 2, 3, 8, pool if t % 3 == 0 else None)
        if t % 5 == 0 and t:  # a query a hair away from a stored row: near-ties at the top
            q = a.memory[:, rng.integers(0, 3 * t, size=3)] * (1 + 1e-7)
        x, y = a.step(q, s, add, wg, ig), b.step(q, s, add, wg, ig)
        np.testing.assert_array_equal(x.rows, y.rows, err_msg=f"step {t + 1}")
    assert a.index.stats()["live"] == 0 and len(a.index.buffer) > 500  # all hot: the int16 path ran


def test_a_hot_tier_compacted_by_flushes_still_answers_exactly():
    """Hundreds of hot rows (the int16 pass, above HOT_EXACT) that flushes keep compacting (rows
    move between blocks of the copy), beside a graph whose beam covers it: the same rows as the
    exact index at every step."""
    rng = np.random.default_rng(34)
    opts = dict(WIDE, ef=3000, flush_rows=300, cool_rows=100, num_threads=2)
    a = samcpu.SparseMemory(2, 2000, 8, num_heads=3, k=4, index="hnsw", index_options=opts)
    b = samcpu.SparseMemory(2, 2000, 8, num_heads=3, k=4, index="exact")
    one = samcpu.SparseMemory(2, 2000, 8, num_heads=3, k=4, index="hnsw",
                              index_options=dict(opts, num_threads=1))
    pool = rng.normal(size=(6, 8))
    for t in range(400):  # up to 15 rows a step: the memory fills and the LRA row recycles
        inputs = random_step_inputs(rng, 2, 3, 8, pool if t % 4 == 0 else None, np.float32)
        x, y, z = a.step(*inputs), b.step(*inputs), one.step(*inputs)
        np.testing.assert_array_equal(x.rows, y.rows, err_msg=f"step {t + 1}")
        np.testing.assert_array_equal(z.rows, y.rows, err_msg=f"step {t + 1}")
    assert (a.index.buffer.counts > 64).all() and a.index.stats()["live"] > 0
    # the two threads count per batch element: the same statistics as one thread
    assert a.index.stats() == one.index.stats() and a.index.inserted > 0


def test_hot_candidates_keep_every_row_of_the_exact_top_k():
    from samcpu.kernels.simd import LANES
    from samcpu.kernels.candidates import hot_add, hot_arrays, hot_candidates, hot_margin

    rng = np.random.default_rng(32)
    n, w, k = 3000, 16, 8
    memory = rng.normal(size=(n, w))
    memory[100:200] = memory[100] * rng.uniform(0.5, 2.0, size=(100, 1))  # same direction: equal cosines
    memory[300:400] = memory[300] + 1e-9 * rng.normal(size=(100, w))  # near-ties
    memory[500:510] = 0.0  # zero rows score 0
    memory[600:605] = 1e-50 * rng.normal(size=(5, w))  # too small for a float32 scale
    flags, slot = np.zeros(n, np.uint8), np.zeros(n, np.int64)
    members = np.zeros(n, np.int64)
    codes, scale, slack = (a[0] for a in hot_arrays(1, n, w))
    rows = rng.permutation(n)
    count = hot_add(flags, members, 0, slot, codes, scale, slack, memory, rows, EPS)
    assert count == n and (members == rows).all()
    # the copy: codes * scale is within slack of row / ||row||_eps, and slack is small
    unit = memory / np.sqrt((memory ** 2).sum(1, keepdims=True) + EPS)
    places = np.arange(n)
    approx = codes[places // LANES, :, places % LANES] * scale[:n, None].astype(np.float64)
    err = np.sqrt(((approx - unit[rows]) ** 2).sum(1))
    assert (err <= slack[:n]).all() and slack[:n].max() < 1e-3
    assert (np.abs(codes.astype(int)) <= 32767).all()
    huge = hot_arrays(1, n, w)  # values whose squares overflow float32: the copy is scaled in float64
    hot_add(np.zeros(n, np.uint8), np.zeros(n, np.int64), 0, np.zeros(n, np.int64), *(a[0] for a in huge),
            memory * 1e30, rows, EPS)
    apart = np.abs(huge[0][0].astype(int) - codes)[places // LANES, :, places % LANES]
    big = (rows < 600) | (rows >= 605)  # (the tiny rows x 1e30 are not tiny)
    assert apart[big].max() <= 1  # a value on a rounding edge may round apart
    np.testing.assert_allclose(huge[1][0][:n][big], scale[:n][big], rtol=1e-6)
    for queries in (rng.normal(size=(5, w)), memory[[100, 300, 5, 7, 501]].copy(), np.zeros((3, w))):
        for c in (count, 1000, 37):  # full blocks and a part one
            got, m = hot_candidates(codes, scale, slack, members, c, queries, k, EPS, hot_margin(w))
            got = set(got[:m].tolist())
            assert got <= set(members[:c].tolist())
            mem = memory[members[:c]]
            qn = np.sqrt((queries ** 2).sum(1) + EPS)
            mn = np.sqrt((mem ** 2).sum(1) + EPS)
            sims = queries @ mem.T / qn[:, None] / mn[None]
            for h in np.flatnonzero(queries.any(1)):  # a zero query is answered by rows 0..k-1
                kth = np.sort(sims[h])[::-1][k - 1]
                want = set(members[:c][sims[h] >= kth - 1e-12].tolist())
                assert want <= got, (h, c, sorted(want - got))
            if c == count:
                assert m < n // 10  # a pre-filter: most rows are left out (none for zero queries)
                assert queries.any() or m == 0
    # thousands of rows in one direction: every one is a candidate (past KEPT near-ties the pass
    # gives up and hands back the whole buffer)
    same = memory[:1] * rng.uniform(0.5, 2.0, size=(n, 1))
    count = hot_add(np.zeros(n, np.uint8), members, 0, np.zeros(n, np.int64), codes, scale, slack, same, rows,
                    EPS)
    got, m = hot_candidates(codes, scale, slack, members, count, same[:2] + 0.0, k, EPS, hot_margin(w))
    assert m == n and set(got[:m].tolist()) == set(range(n))


def test_score_blocks_matches_a_float64_loop():
    """The SIMD kernel against plain numpy: every score of two blocks, four heads from h0, and
    each block's largest score + slack."""
    import numba as nb

    from samcpu.kernels.simd import GROUP, HEADS, LANES, score_blocks

    @nb.njit
    def run(codes, blk0, scale, slack, queries, h0, out, top):
        score_blocks(codes, blk0, scale, slack, queries, h0, out, top)

    rng = np.random.default_rng(33)
    n_blocks, w = 6, 7  # a width that is no multiple of anything
    codes = rng.integers(-32767, 32768, size=(n_blocks, w, LANES)).astype(np.int16)
    scale = rng.uniform(0, 1e-4, size=n_blocks * LANES).astype(np.float32)
    slack = rng.uniform(0, 1e-3, size=n_blocks * LANES).astype(np.float32)
    queries = rng.normal(size=(2 * HEADS, w)).astype(np.float32)
    for blk0, h0 in ((0, 0), (2, HEADS), (4, 0)):
        out = np.full((2 * HEADS, GROUP * LANES), np.nan, np.float32)
        top = np.full((2 * HEADS, GROUP), np.nan, np.float32)
        run(codes, blk0, scale, slack, queries, h0, out, top)
        rows = codes[blk0:blk0 + GROUP].transpose(0, 2, 1).reshape(GROUP * LANES, w).astype(np.float64)
        places = slice(blk0 * LANES, (blk0 + GROUP) * LANES)
        want = queries[h0:h0 + HEADS].astype(np.float64) @ rows.T * scale[places]
        np.testing.assert_allclose(out[h0:h0 + HEADS], want, rtol=1e-5, atol=1e-6)
        assert np.isnan(np.delete(out, np.s_[h0:h0 + HEADS], 0)).all()  # other heads untouched
        upper = (out[h0:h0 + HEADS].astype(np.float64) + slack[places]).reshape(HEADS, GROUP, LANES).max(2)
        np.testing.assert_allclose(top[h0:h0 + HEADS], upper, rtol=1e-6)


@pytest.mark.parametrize("width", [1, 7, 32, 1024])
def test_a_score_from_the_int16_copy_is_within_its_slack_of_the_exact_one(width):
    """|exact score - score from the copy| <= slack + hot_margin(W) for every row, rows of equal
    values (the sums' worst case) and tiny and huge rows included."""
    import numba as nb

    from samcpu.kernels.candidates import hot_add, hot_arrays, hot_margin
    from samcpu.kernels.simd import GROUP, HEADS, LANES, score_blocks

    @nb.njit
    def scores(codes, n, scale, slack, queries, out, top):
        part = np.empty((queries.shape[0], GROUP * LANES), np.float32)
        for blk0 in range(0, -(-n // LANES), GROUP):
            score_blocks(codes, blk0, scale, slack, queries, 0, part, top)
            out[:, blk0 * LANES:(blk0 + GROUP) * LANES] = part

    rng = np.random.default_rng(35)
    n = 200
    memory = rng.normal(size=(n, width))
    memory[:20] = 1.0  # every value equal
    memory[20:40] = rng.choice([-1.0, 1.0], size=(20, width))
    memory[40:45] *= 1e-30
    memory[45:50] *= 1e30
    codes, scale, slack = (a[0] for a in hot_arrays(1, n, width))
    rows = np.arange(n)
    hot_add(np.zeros(n, np.uint8), np.zeros(n, np.int64), 0, np.zeros(n, np.int64), codes, scale, slack,
            memory, rows, EPS)
    queries = np.vstack([np.ones((1, width)), rng.normal(size=(HEADS - 1, width))])
    qunit = (queries / np.sqrt((queries ** 2).sum(1, keepdims=True) + EPS)).astype(np.float32)
    out = np.zeros((HEADS, codes.shape[0] * LANES), np.float32)
    scores(codes, n, scale, slack, qunit, out, np.zeros((HEADS, GROUP), np.float32))
    exact = (queries / np.sqrt((queries ** 2).sum(1, keepdims=True) + EPS)) @ (
        memory / np.sqrt((memory ** 2).sum(1, keepdims=True) + EPS)).T
    err = np.abs(exact - out[:, :n]) - slack[:n]
    assert err.max() <= hot_margin(width), err.max()


def test_deferred_invalidations_leave_the_index_as_adding_them_at_once(tmp_path):
    """Rewinds defer their rows until the next call that reads the hot tier; after the next
    step (or a save and load with rows pending) the hot tier (members in order, flags, int16
    copies) equals a twin's that added every rewound row at once, and both go on answering the
    same, through flushes."""
    from samcpu.index.hnsw import HNSWIndex

    rng = np.random.default_rng(31)
    opts = dict(flush_rows=24, num_threads=2)
    a, b = (samcpu.SparseMemory(2, 3000, 8, num_heads=2, k=3, index="hnsw", index_options=opts)
            for _ in range(2))
    b.index.invalidate = lambda rows: HNSWIndex._hot_add(b.index, rows)  # the twin: at once
    for cycle in range(6):
        for _ in range(60):
            x = random_step_inputs(rng, 2, 2, 8, None, np.float32)
            np.testing.assert_array_equal(a.step(*x).rows, b.step(*x).rows)
        for back in (15, 30, 8):  # rewinds and replays, as a backward pass and a re-run do
            for mem in (a, b):
                mem.rewind(mem.latest - back)
                mem.rewind(mem.latest if cycle % 2 else mem.latest - back + 3)
        assert a.index._stale  # deferred: nothing added yet
        if cycle % 3 == 1:  # a query reads the hot tier: the rows are added first
            a.index.query(np.ones((2, 2, 8), np.float32), 3)
            assert not a.index._stale
        if cycle % 3 == 2:  # saved with rows pending: the loaded memory goes on like the twin
            a.save(tmp_path / f"m{cycle}")
            a = samcpu.SparseMemory.load(tmp_path / f"m{cycle}", index_options=opts)
        x = random_step_inputs(rng, 2, 2, 8, None, np.float32)
        np.testing.assert_array_equal(a.step(*x).rows, b.step(*x).rows)
        ia, ib = a.index, b.index
        np.testing.assert_array_equal(ia.buffer.counts, ib.buffer.counts)
        for i in range(2):  # (the arrays' capacities may differ: they grow by the rows added per call)
            n = ia.buffer.counts[i]
            np.testing.assert_array_equal(ia.buffer.members[i, :n], ib.buffer.members[i, :n])
            np.testing.assert_array_equal(ia.buffer.flags[i], ib.buffer.flags[i])
            blk, lane = np.arange(n) // 16, np.arange(n) % 16
            (codes_a, *rest_a), (codes_b, *rest_b) = ia.hot_copy, ib.hot_copy
            np.testing.assert_array_equal(codes_a[i, blk, :, lane], codes_b[i, blk, :, lane])
            for x, y in zip(rest_a, rest_b, strict=True):  # scale and slack
                np.testing.assert_array_equal(x[i, :n], y[i, :n])
    state = ("live", "deleted", "buffered", "pending")  # "inserted" and "rebuilds" count since creation
    assert {k: a.index.stats()[k] for k in state} == {k: b.index.stats()[k] for k in state}


def test_deferred_invalidations_are_bounded_and_dropped_by_a_reset():
    """Past STALE_ROWS rows per batch element the deferred rows are added at once (a long
    backward pass holds no unbounded list); a reset drops them (the rows are zero)."""
    from samcpu.index import hnsw

    mem = samcpu.SparseMemory(1, 500, 4, num_heads=1, k=2, index="hnsw", index_options=dict(num_threads=1))
    rng = np.random.default_rng(3)
    for _ in range(30):
        mem.step(*random_step_inputs(rng, 1, 1, 4, None, np.float32))
    idx = mem.index
    hot = len(idx.buffer)
    idx.invalidate(np.full((1, hnsw.STALE_ROWS), 7))
    assert idx._stale and len(idx.buffer) == hot
    idx.invalidate(np.array([[8, -1]]))  # past the bound: everything is added now
    assert not idx._stale and idx._stale_count == 0
    mem.rewind(10)
    pending = np.unique(np.concatenate(idx._stale, axis=1))
    assert len(pending) > 1
    def failing_add(rows):
        raise MemoryError("injected")

    idx._hot_add = failing_add
    with pytest.raises(MemoryError):
        len(idx)  # applies the deferred rows: adding them fails
    del idx._hot_add
    assert idx._stale  # not lost: the next call adds them
    len(idx)
    assert not idx._stale and idx.buffer.flags[0][pending[pending >= 0]].all()
    mem.rewind(5)
    assert idx._stale
    mem.reset()
    assert not idx._stale and len(idx.buffer) == 0
