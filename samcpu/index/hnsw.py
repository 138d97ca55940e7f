"""HNSWIndex: two tiers per batch element, an exact hot tier and an hnswlib cold tier.

Per batch element one ``hnswlib.Index`` (cosine space) holds the cold rows: written, non-zero
rows that have not been written for a while. Every write lands in the hot tier, a small set of
rows that each query scans exactly, so a read always sees what the same step wrote, and a row
written again and again costs nothing in the graph while it stays hot. When the hot tier has
reached ``flush_rows`` rows it is flushed: the ``cool_rows`` least recently written rows cool into
the graph, once, the others stay hot. A large hot tier is cheap, since a query scores it from
an int16 copy first, with error bounds (:mod:`samcpu.kernels.candidates`), and it saves graph
work: a row written again while hot costs nothing. A cooling row that is still close to its
indexed vector (cosine >= ``stale_cos``) keeps its label; one that moved is re-inserted under a
new label (labels are versions, not rows, because hnswlib's in-place update of a label costs
about 20 inserts) and its old label is deleted (``mark_deleted``, about 1 us). Written rows that
are zero stay in the hot tier (they tie at similarity 0 with the unwritten rows). Queries
over-fetch from hnswlib and re-score every candidate exactly against the live memory.

When deleted labels outnumber live ones the graph is rebuilt, spread over the next flushes
instead of in one step (which took about 150 s at 1e6 rows): a new, empty graph takes every
insert from then on, and each flush also moves a chunk of the old graph's rows into it
(``migrate`` rows per row it cooled, at least ``cool_rows``); queries search both graphs until
every row has left the old one, which is then dropped. A row has at most one live label, in one
of the two graphs. Nothing is deleted from the old graph while it drains (hnswlib walks deleted
nodes, so a graph of mostly deleted nodes answers slowly): a row that left it may still come
back from it as a candidate, and is re-scored exactly like any other.
Batch elements run in parallel threads (hnswlib and the kernels release the GIL).
"""
import os
from concurrent.futures import ThreadPoolExecutor, wait

import hnswlib
import numpy as np

from .._storage import lazy_zeros
from .._util import check_int
from ..config import EPS
from ..kernels import rescore_candidates, rowset_clear
from ..kernels.candidates import batch_hot_add, hot_arrays, hot_compact, hot_margin
from .base import Index, RowSet


#: deferred invalidations are applied once they hold this many rows per batch element
STALE_ROWS = 1 << 16


class _Graph:
    """One batch element's hnswlib index and its label bookkeeping."""

    def __init__(self, dim, capacity, m, ef_construction, ef, seed, path=None, label_row=None):
        self.index = hnswlib.Index(space="cosine", dim=dim)
        if path is None:
            self.index.init_index(max_elements=capacity, M=m, ef_construction=ef_construction,
                                  random_seed=seed)
            label_row = np.empty(0, np.int64)
        else:  # a saved graph and its labels
            self.index.load_index(path, max_elements=max(capacity, len(label_row)))
        self.index.set_ef(ef)  # set here in both cases: hnswlib does not save ef
        self.index.set_num_threads(1)
        self.next_label = len(label_row)
        self.label_row = np.full(self.index.get_max_elements(), -1, np.int64)  # label -> row, -1 = deleted
        self.label_row[: self.next_label] = label_row
        self.live = int((label_row >= 0).sum())

    def insert(self, vectors, rows, row_label):
        """Insert ``vectors`` for ``rows`` under new labels; row_label (N,) gets label + 1."""
        n = len(rows)
        if n == 0:
            return
        need = self.next_label + n
        if need > self.index.get_max_elements():
            cap = max(need, 2 * self.index.get_max_elements())
            self.index.resize_index(cap)
            grown = np.full(cap, -1, np.int64)
            grown[: len(self.label_row)] = self.label_row
            self.label_row = grown
        labels = np.arange(self.next_label, need, dtype=np.int64)
        self.index.add_items(vectors, labels, num_threads=1)
        self.label_row[labels] = rows
        row_label[rows] = labels + 1
        self.next_label = need
        self.live += n

    def delete(self, labels):
        for label in labels:
            self.index.mark_deleted(int(label))
        self.label_row[labels] = -1
        self.live -= len(labels)

    @property
    def deleted(self):
        return self.next_label - self.live


class HNSWIndex(Index):
    """Approximate top-k reads over hnswlib, exact on fresh rows (see the module docstring).

    Parameters
    ----------
    m, ef_construction, ef : hnswlib parameters (graph degree, build and query beam width).
        The defaults (16, 32, 48) trade a narrower build beam, which halves an insert's cost
        (inserts dominate long episodes: every row cools into the graph once), for a wider
        query beam: recall@8 on Gaussian data rose from 0.899 to 0.933 against (16, 64, 32),
        the same on clustered data (benchmarks/index.py --recall-steps 4000; docs/hnsw.md)
    overfetch : candidates asked of hnswlib per query, beyond k
    flush_rows : the hot tier's size per batch element: it is flushed when it holds this many
        rows
    cool_rows : the rows a flush cools (the least recently written), at most ``flush_rows // 2``
        (then the ``flush_rows // 2`` most recently written stay hot)
    stale_cos : a cooling row is re-indexed when cos(indexed vector, content) is below this
    rebuild_ratio : a graph is rebuilt when its deleted labels outnumber ``rebuild_ratio`` times
        its live ones (each rebuild re-inserts the live rows: 1 / rebuild_ratio inserts per
        deletion, amortised)
    migrate : during a rebuild, the old graph's rows a flush moves into the new one, per row
        the flush cooled (at least ``cool_rows`` per flush); higher finishes sooner (queries
        search two graphs meanwhile), lower spreads the work thinner
    num_threads : threads over the batch elements
    seed : hnswlib's random seed (level generation)
    """

    def __init__(self, memory, written, m=16, ef_construction=32, ef=48, overfetch=8,
                 flush_rows=8192, cool_rows=512, stale_cos=0.98, rebuild_ratio=1.0, migrate=4, num_threads=2,
                 seed=0,
                 capacity=1024):
        super().__init__(memory, written)
        m, ef_construction, ef = (check_int(name, v) for name, v in
                                  (("m", m), ("ef_construction", ef_construction), ("ef", ef)))
        overfetch = check_int("overfetch", overfetch, minimum=0)
        flush_rows = check_int("flush_rows", flush_rows)
        cool_rows = check_int("cool_rows", cool_rows)
        migrate = check_int("migrate", migrate)
        num_threads = check_int("num_threads", num_threads)
        capacity = check_int("capacity", capacity)
        checks = (("stale_cos", stale_cos, np.isfinite, "(finite; above 1, every moved row is re-indexed)"),
                  ("rebuild_ratio", rebuild_ratio, lambda x: 0 < x < np.inf, "> 0 and finite"))
        for name, v, ok, what in checks:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not ok(v):
                raise ValueError(f"{name} must be a number {what}, got {v!r}")
        self.m, self.ef_construction, self.ef = m, ef_construction, ef
        self.overfetch, self.flush_rows, self.stale_cos = overfetch, flush_rows, stale_cos
        self.cool_rows = min(cool_rows, max(1, flush_rows // 2))
        self.rebuild_ratio, self.migrate = rebuild_ratio, migrate
        self.seed, self.capacity = seed, capacity
        b, n, _ = memory.shape
        # a row's live label: label + 1 in graphs[b], -(label + 1) in old[b] (a rebuild's), 0: none
        self.row_label = lazy_zeros((b, n), np.int64)
        # the hot tier: scored by every query; it starts small and doubles as it fills (up to
        # about flush_rows), so that a small memory does not hold room for 8,192 rows
        self.buffer = RowSet(b, n, capacity=min(n, 2 * flush_rows, 256))
        # the hot tier's int16 copy (row / ||row||_eps quantised, by place in buffer.members) and
        # each member's place: a query scores the hot rows from the copy first (kernels.candidates)
        self.hot_slot = lazy_zeros((b, n), np.int64)
        self.hot_copy = hot_arrays(b, self.buffer.members.shape[1], memory.shape[2])
        self.margin = hot_margin(memory.shape[2])
        self.last_write = lazy_zeros((b, n), np.int64)  # the update() count at a row's last write
        self.clock = 0
        self.flush_at = np.full(b, flush_rows, np.int64)  # hot rows at which element b flushes
        self.graphs = [self._new_graph(i) for i in range(b)]
        self.old = [None] * b  # per batch element, the graph a rebuild is draining, or None
        self.pending = [None] * b  # the old graph's rows the rebuild has still to look at
        self.old_live = np.zeros(b, np.int64)  # rows whose live label is in old[b]
        self.num_threads = max(1, min(num_threads, b))
        self._pool = ThreadPoolExecutor(self.num_threads - 1) if self.num_threads > 1 else None
        self._stale, self._stale_count = [], 0  # deferred invalidations (see invalidate())
        # per batch element, so that the threads of _each never add to the same counter
        self._rebuilds = np.zeros(b, np.int64)  # rebuilds finished
        self._inserted = np.zeros(b, np.int64)  # vectors given to hnswlib (rebuilds included)

    def _new_graph(self, b, capacity=None, path=None, label_row=None):
        return _Graph(self.memory.shape[2], capacity or self.capacity, self.m,
                      self.ef_construction, self.ef, self.seed + b, path, label_row)

    # -------------------------------------------------------------- parallel helper
    def _each(self, fn):
        """Run fn(b) for every batch element, split over the threads."""
        b = len(self.graphs)
        if self._pool is None:
            for i in range(b):
                fn(i)
            return
        groups = [range(t, b, self.num_threads) for t in range(self.num_threads)]
        # the calling thread takes the first group itself (one hand-off fewer per call)
        futures = [self._pool.submit(lambda g=g: [fn(i) for i in g]) for g in groups[1:]]
        error = None
        try:
            for i in groups[0]:
                fn(i)
        except BaseException as e:  # every group ends before this returns, then the first error
            error = e
        wait(futures)
        for f in futures:
            if error is None and f.exception() is not None:
                error = f.exception()
        if error is not None:
            raise error

    # -------------------------------------------------------------- interface
    def update(self, rows):
        self._apply_stale()
        # flush what earlier calls made hot first, so the rows of this step stay in the hot
        # tier for this step's query
        if (self.buffer.counts >= self.flush_at).any():
            self._each(lambda b: self.buffer.counts[b] >= self.flush_at[b] and self._flush(b))
        self.clock += 1
        mask = rows >= 0
        self.last_write[np.nonzero(mask)[0], rows[mask]] = self.clock
        self._hot_add(rows)

    def invalidate(self, rows):
        """Deferred until the next call that reads the hot tier (a backward pass rewinds step
        after step and queries none): the rows are added then, each re-quantised once, in the
        order of their first invalidation, which leaves the hot tier exactly as adding them now
        would (a row's copy is of its latest contents either way)."""
        rows = np.array(rows, np.int64)  # a copy: the caller's array may be a journal's
        self._stale.append(rows)
        self._stale_count += rows.shape[1]
        if self._stale_count > STALE_ROWS:
            self._apply_stale()

    def _apply_stale(self):
        """Add the rows of the deferred invalidations to the hot tier (see :meth:`invalidate`)."""
        if not self._stale:
            return
        rows = np.concatenate(self._stale, axis=1)
        out = np.full_like(rows, -1)
        for b, r in enumerate(rows):
            r = r[r >= 0]
            _, first = np.unique(r, return_index=True)
            out[b, : len(first)] = r[np.sort(first)]
        self._hot_add(out[:, : max(1, int((out >= 0).sum(1).max()))])
        # forgotten only once added (if adding failed, the next call adds them again: adding a
        # member again only refreshes its copy)
        self._stale, self._stale_count = [], 0

    def _hot_add(self, rows):
        """Add ``rows`` (B, R) (-1 padded) to the hot tier, refreshing the int16 copy of each
        (their contents changed)."""
        rows = np.asarray(rows, np.int64)
        buf = self.buffer
        if buf.reserve(rows.shape[1]):  # the int16 copy grows with the members
            grown = hot_arrays(*buf.members.shape, self.memory.shape[2])
            for new, old in zip(grown, self.hot_copy, strict=True):
                new[:, : old.shape[1]] = old
            self.hot_copy = grown
        batch_hot_add(buf.flags, buf.members, buf.counts, self.hot_slot, *self.hot_copy, self.memory, rows,
                      EPS)

    def remove(self, rows):
        """Delete the graph labels of ``rows`` (B, R) now (``mark_deleted``, about 1 us each)
        instead of at the next flush; the rows go to the exact buffer, so one that is not zero
        after all is still found and re-indexed at the next flush."""
        self._apply_stale()
        rows = np.asarray(rows, np.int64)
        self._hot_add(rows)  # first: whatever happens below, the rows stay findable
        for b in range(len(self.graphs)):
            r = np.unique(rows[b][rows[b] >= 0])  # a label is deleted once
            self._drop_labels(b, r)

    def _drop_labels(self, b, rows):
        """Forget the live labels of batch element b's ``rows`` (distinct): deleted in the
        current graph; in a draining old graph only forgotten (see the module's text)."""
        code = self.row_label[b, rows]
        self.graphs[b].delete(code[code > 0] - 1)
        self.old_live[b] -= int((code < 0).sum())
        self.row_label[b, rows[code != 0]] = 0

    def query(self, queries, k):
        self._apply_stale()
        fetch = k + self.overfetch
        n_batch, n_heads = queries.shape[:2]
        graphs = 1 if all(g is None for g in self.old) else 2  # two while a rebuild drains one
        cand = np.full((n_batch, n_heads, graphs * fetch), -1, np.int64)
        rows = np.empty((n_batch, n_heads, k), np.int64)
        sims = np.empty((n_batch, n_heads, k), np.float64)
        w = self.written

        def search(b):
            for i, g in enumerate((self.graphs[b], self.old[b])):
                kk = 0 if g is None else min(fetch, g.live)
                while kk > 0:
                    try:
                        labels, _ = g.index.knn_query(queries[b], k=kk, num_threads=1)
                    except RuntimeError:  # fewer than kk reachable: ask for fewer
                        kk //= 2
                        continue
                    cand[b, :, i * fetch:i * fetch + kk] = g.label_row[labels.astype(np.int64)]
                    break
            buf = self.buffer
            rescore_candidates(self.memory[b], cand[b], buf.flags[b], buf.members[b],
                               buf.counts[b], w.flags[b], w.hints[b], queries[b], k, EPS,
                               rows[b], sims[b], *(a[b] for a in self.hot_copy), self.margin)

        self._each(search)
        return rows, sims

    def flush(self):
        """Move every non-zero hot row into hnswlib now (zero rows stay hot)."""
        self._apply_stale()
        self._each(lambda b: self._flush(b, keep_hot=0))

    def _flush(self, b, keep_hot=None):
        """Cool batch element b's hot tier: the ``keep_hot`` (default ``flush_rows - cool_rows``)
        most recently written non-zero rows stay hot, the other non-zero rows go into the graph
        (a row still close to its indexed vector keeps its label), zero rows stay hot and lose
        their labels."""
        g = self.graphs[b]
        buf = self.buffer
        count = buf.counts[b]
        if count == 0:
            return
        rows = buf.members[b, :count].copy()
        vals = np.asarray(self.memory[b, rows], np.float32)
        norms = np.sqrt((vals.astype(np.float64) ** 2).sum(1))
        nonzero = norms > 0
        hot = np.zeros(count, bool)
        nz = np.flatnonzero(nonzero)
        if keep_hot is None:
            keep_hot = self.flush_rows - self.cool_rows
        if len(nz) <= keep_hot:
            hot[nz] = True
        elif keep_hot > 0:
            recent = self.last_write[b, rows[nz]]
            hot[nz[np.argpartition(-recent, keep_hot - 1)[:keep_hot]]] = True
        cool = nonzero & ~hot
        code = self.row_label[b, rows]
        labels = code - 1
        has = code > 0  # a label in g; a row with a label in the old graph moves to g as it cools
        still = np.zeros(count, bool)  # cooling rows whose indexed vector is still good
        check = cool & has
        if check.any():
            stored = g.index.get_items(labels[check], return_type="numpy")
            cos = (stored * vals[check]).sum(1) / norms[check]
            still[np.flatnonzero(check)[cos >= self.stale_cos]] = True
        insert = cool & ~still
        self._drop_labels(b, rows[(code != 0) & ((cool & ~still) | ~nonzero)])
        g.insert(vals[insert], rows[insert], self.row_label[b])
        self._inserted[b] += int(insert.sum())
        buf.counts[b] = hot_compact(buf.flags[b], buf.members[b], count, self.hot_slot[b],
                                    *(a[b] for a in self.hot_copy), hot | ~nonzero)
        self.flush_at[b] = max(self.flush_rows, buf.counts[b] + self.cool_rows)
        if self.old[b] is not None:
            self._migrate(b, max(self.cool_rows, self.migrate * int(cool.sum())))
        elif g.deleted > max(self.rebuild_ratio * g.live, 4 * self.cool_rows):
            self._start_rebuild(b)

    def _start_rebuild(self, b):
        """Begin rebuilding batch element b's graph: a new graph takes every insert from now on,
        the old one is drained by later flushes (:meth:`_migrate`)."""
        old = self.graphs[b]
        labels = np.flatnonzero(old.label_row[: old.next_label] >= 0)
        rows = old.label_row[labels]
        self.row_label[b, rows] = -(labels + 1)
        self.graphs[b] = self._new_graph(b, capacity=max(self.capacity, 2 * len(rows)))
        self.old[b], self.pending[b], self.old_live[b] = old, rows, len(rows)
        self._migrate(b, 0)  # moves nothing; drops the old graph at once if it had no live row

    def _migrate(self, b, chunk):
        """Move ``chunk`` rows (or all that are left) whose live label is in the old graph into
        the new one, their current contents; a hot row only forgets its old label (the hot
        tier finds it, and its cooling inserts it). Pending rows that left the old graph by
        themselves (rewritten and cooled, or erased) are skipped. Once no row is left there, the
        old graph is dropped."""
        moved, flags, pending = 0, self.buffer.flags[b], self.pending[b]
        while moved < chunk and self.old_live[b] > 0 and len(pending):
            rows, pending = pending[:2 * chunk], pending[2 * chunk:]
            rows = rows[self.row_label[b, rows] < 0]
            self._drop_labels(b, rows)
            rows = rows[flags[rows] == 0]
            self.graphs[b].insert(np.asarray(self.memory[b, rows], np.float32), rows, self.row_label[b])
            self._inserted[b] += len(rows)
            moved += len(rows)
        self.pending[b] = pending
        if self.old_live[b] == 0:  # every row has left the old graph
            self.old[b] = self.pending[b] = None
            self._rebuilds[b] += 1

    def finish_rebuilds(self):
        """Complete every rebuild in progress now (a bulk insert of the rows still pending)."""
        self._apply_stale()
        self._each(lambda b: self.old[b] is not None and self._migrate(b, self.old_live[b]))

    def save(self, directory):
        """One hnswlib file per batch element plus ``hnsw.npz`` (labels, the hot tier with each
        hot row's last write, the clock and the flush points), and for a rebuild in progress the
        old graph (``hnsw_old_<b>.bin``), its labels and the rows still pending: the index as it
        is, so a loaded memory's index goes on exactly as this one does (saving changes nothing
        here, but for applying deferred invalidations)."""
        self._apply_stale()
        names = []
        for b, g in enumerate(self.graphs):
            for prefix, graph in (("hnsw", g), ("hnsw_old", self.old[b])):
                if graph is not None:
                    name = f"{prefix}_{b}.bin"
                    graph.index.save_index(os.path.join(directory, name))
                    names.append(name)
        labels = [g.label_row[: g.next_label] for g in self.graphs]
        old = [np.empty(0, np.int64) if g is None else g.label_row[: g.next_label] for g in self.old]
        pending = [np.empty(0, np.int64) if p is None else p for p in self.pending]
        # the rows whose live label is still in the old graph, and those labels
        in_old = [np.empty(0, np.int64) if p is None else np.unique(p[self.row_label[b, p] < 0])
                  for b, p in enumerate(self.pending)]
        arrays = dict(label_row=np.concatenate(labels),
                      label_counts=np.array([len(x) for x in labels], np.int64),
                      migrating=np.array([g is not None for g in self.old], np.int64),
                      old_label_row=np.concatenate(old), old_label_counts=np.array([len(x) for x in old]),
                      pending=np.concatenate(pending), pending_counts=np.array([len(x) for x in pending]),
                      old_live_rows=np.concatenate(in_old),
                      old_live_counts=np.array([len(x) for x in in_old]),
                      old_live_labels=np.concatenate([-self.row_label[b, r] - 1
                                                      for b, r in enumerate(in_old)]),
                      buffer=np.concatenate([self.buffer.rows(b) for b in range(len(self.graphs))]),
                      buffer_counts=self.buffer.counts.copy())
        arrays["hot_last_write"] = np.concatenate([self.last_write[b, self.buffer.rows(b)]
                                                   for b in range(len(self.graphs))])
        arrays["clock"] = np.array([self.clock], np.int64)
        arrays["flush_at"] = self.flush_at.copy()
        np.savez(os.path.join(directory, "hnsw.npz"), **arrays)
        return names + ["hnsw.npz"]

    def load(self, directory, rows):
        """Restore the graphs and the hot tier :meth:`save` wrote, after checking every array
        and every graph file (:func:`samcpu.index.hnsw_file.check_graph_file`: sizes, counts,
        levels, neighbour ids, labels, deletion marks) against its bounds, so that hnswlib never
        sees a file it could crash on (``ValueError`` instead). With an hnswlib whose file
        layout is not known, or with no saved graph, the graphs are rebuilt from ``rows``."""
        from . import hnsw_file

        if (directory is None or not os.path.isfile(os.path.join(directory, "hnsw.npz"))
                or not hnsw_file.format_known()):
            self.update(rows)
            return
        n_batch, n, dim = self.memory.shape
        with np.load(os.path.join(directory, "hnsw.npz"), allow_pickle=False) as z:
            arr = {name: z[name] for name in ("label_row", "label_counts", "buffer", "buffer_counts")}
            # the hot tier's order (saves before the two-tier index have none: rows restamped)
            order = {name: z[name] for name in ("hot_last_write", "clock", "flush_at") if name in z.files}
            # a rebuild in progress (saves before spread rebuilds have none)
            names = ("migrating", "old_label_row", "old_label_counts", "pending", "pending_counts",
                     "old_live_rows", "old_live_counts", "old_live_labels")
            arr.update({name: z[name] for name in names if name in z.files})
        if any(name in arr for name in names) and not all(name in arr for name in names):
            raise ValueError(f"hnsw.npz: {', '.join(names)} go together")
        if "migrating" not in arr:
            arr.update(migrating=np.zeros(n_batch, np.int64), old_label_row=np.empty(0, np.int64),
                       old_label_counts=np.zeros(n_batch, np.int64), pending=np.empty(0, np.int64),
                       pending_counts=np.zeros(n_batch, np.int64), old_live_rows=np.empty(0, np.int64),
                       old_live_counts=np.zeros(n_batch, np.int64), old_live_labels=np.empty(0, np.int64))
        for name, a in arr.items():
            if a.dtype.kind not in "iu" or a.ndim != 1:
                raise ValueError(f"hnsw.npz: {name} is not a vector of integers")
            arr[name] = a.astype(np.int64)
        label_row, buffer, old_row = arr["label_row"], arr["buffer"], arr["old_label_row"]
        label_counts, buffer_counts, migrating = arr["label_counts"], arr["buffer_counts"], arr["migrating"]
        old_counts, pending, pending_counts = arr["old_label_counts"], arr["pending"], arr["pending_counts"]
        in_old, in_old_counts = arr["old_live_rows"], arr["old_live_counts"]
        in_old_labels = arr["old_live_labels"]
        if any(arr[k].shape != (n_batch,) for k in ("label_counts", "buffer_counts", "migrating",
                                                     "old_label_counts", "pending_counts",
                                                     "old_live_counts")):
            raise ValueError("hnsw.npz does not match the batch size")
        if any(counts.min() < 0 or counts.sum() != len(a) for counts, a in (
                (label_counts, label_row), (buffer_counts, buffer), (old_counts, old_row),
                (pending_counts, pending), (in_old_counts, in_old))) or in_old_labels.shape != in_old.shape:
            raise ValueError("hnsw.npz: the counts do not match the arrays")
        if not np.isin(migrating, (0, 1)).all() or any((c[migrating == 0] != 0).any() for c in (
                old_counts, pending_counts, in_old_counts)) or (in_old_counts[migrating == 1] == 0).any():
            raise ValueError("hnsw.npz: migrating must be 0 or 1; 0 has no old graph, no pending rows and no "
                             "rows in an old graph, 1 has some")
        for a in (label_row, old_row):
            if a.size and (a.max() >= n or a.min() < -1):
                raise ValueError("hnsw.npz holds rows outside the memory")
        for name, a in (("pending", pending), ("old_live_rows", in_old)):
            if a.size and (a.max() >= n or a.min() < 0):
                raise ValueError(f"hnsw.npz: {name} holds rows outside the memory")
        if buffer.size and (buffer.max() >= n or buffer.min() < 0):
            raise ValueError("hnsw.npz holds hot rows outside the memory")
        if order:
            if len(order) != 3 or any(a.dtype.kind not in "iu" or a.ndim != 1 for a in order.values()):
                raise ValueError("hnsw.npz: hot_last_write, clock and flush_at must be integer vectors")
            clock = order["clock"]
            if clock.shape != (1,) or not 0 <= clock[0] < 2**62:
                raise ValueError("hnsw.npz: clock is not one count in [0, 2**62)")
            if order["hot_last_write"].shape != buffer.shape or (buffer.size and (
                    order["hot_last_write"].min() < 0 or order["hot_last_write"].max() > clock[0])):
                raise ValueError("hnsw.npz: hot_last_write does not match the hot rows and the clock")
            if order["flush_at"].shape != (n_batch,) or order["flush_at"].min(initial=0) < 0:
                raise ValueError("hnsw.npz: flush_at does not match the batch size")
        lo = np.concatenate([[0], np.cumsum(label_counts)])
        bo = np.concatenate([[0], np.cumsum(buffer_counts)])
        oo = np.concatenate([[0], np.cumsum(old_counts)])
        po = np.concatenate([[0], np.cumsum(pending_counts)])
        io = np.concatenate([[0], np.cumsum(in_old_counts)])
        for b in range(n_batch):  # check everything before building anything
            graphs = [("hnsw", label_row[lo[b]:lo[b + 1]])]
            live = label_row[lo[b]:lo[b + 1]]
            live = live[live >= 0]
            if migrating[b]:
                old_labels = old_row[oo[b]:oo[b + 1]]
                graphs.append(("hnsw_old", old_labels))
                rows, labels = in_old[io[b]:io[b + 1]], in_old_labels[io[b]:io[b + 1]]
                if ((labels < 0) | (labels >= len(old_labels))).any() or not np.array_equal(
                        old_labels[np.clip(labels, 0, max(0, len(old_labels) - 1))], rows):
                    raise ValueError(f"hnsw.npz: batch element {b}'s rows in the old graph do not match "
                                     "its labels")
                if not np.isin(rows, pending[po[b]:po[b + 1]]).all():
                    raise ValueError(f"hnsw.npz: batch element {b} has rows in the old graph that are not "
                                     "pending")
                live = np.concatenate([live, rows])
            if len(np.unique(live)) != len(live):
                raise ValueError(f"hnsw.npz: two live labels of batch element {b} name the same row")
            hot = buffer[bo[b]:bo[b + 1]]
            if len(np.unique(hot)) != len(hot):
                raise ValueError(f"hnsw.npz: batch element {b}'s hot rows repeat a row")
            for prefix, labels in graphs:
                path = os.path.join(directory, f"{prefix}_{b}.bin")
                if not os.path.isfile(path):
                    raise ValueError(f"hnsw.npz names a graph {os.path.basename(path)} that the save lacks")
                info = hnsw_file.check_graph_file(path, dim, count=len(labels))
                if (info.labels >= len(labels)).any() or len(np.unique(info.labels)) != len(labels):
                    raise ValueError(f"{path}: its labels are not 0 .. {len(labels) - 1}, each once")
                if not np.array_equal(info.deleted, labels[info.labels.astype(np.int64)] < 0):
                    raise ValueError(f"{path}: its deletion marks do not match hnsw.npz")
        for b in range(n_batch):
            g = self._new_graph(b, path=os.path.join(directory, f"hnsw_{b}.bin"),
                                label_row=label_row[lo[b]:lo[b + 1]])
            live = np.flatnonzero(g.label_row[: g.next_label] >= 0)
            self.row_label[b, g.label_row[live]] = live + 1
            self.graphs[b] = g
            if migrating[b]:
                old = self._new_graph(b, path=os.path.join(directory, f"hnsw_old_{b}.bin"),
                                      label_row=old_row[oo[b]:oo[b + 1]])
                self.row_label[b, in_old[io[b]:io[b + 1]]] = -(in_old_labels[io[b]:io[b + 1]] + 1)
                self.old[b], self.pending[b] = old, pending[po[b]:po[b + 1]].copy()
                self.old_live[b] = io[b + 1] - io[b]
        pad = np.full((len(self.graphs), max(1, int(buffer_counts.max(initial=0)))), -1, np.int64)
        for b in range(len(self.graphs)):
            pad[b, : buffer_counts[b]] = buffer[bo[b]:bo[b + 1]]
        if not order:
            self.update(pad)
            return
        self._hot_add(pad)
        for b in range(n_batch):
            self.last_write[b, buffer[bo[b]:bo[b + 1]]] = order["hot_last_write"][bo[b]:bo[b + 1]]
        self.clock = int(order["clock"][0])
        self.flush_at[:] = np.minimum(order["flush_at"], np.maximum(self.flush_rows,
                                                                    self.buffer.counts + self.cool_rows))

    def reset(self):
        self._stale, self._stale_count = [], 0  # the rows are zero now: nothing to add
        for b, g in enumerate(self.graphs):
            for graph in (g, self.old[b]):
                if graph is not None:
                    rows = graph.label_row[: graph.next_label]
                    self.row_label[b, rows[rows >= 0]] = 0
            self.old[b] = self.pending[b] = None
            self.old_live[b] = 0
            buf = self.buffer
            buf.counts[b] = rowset_clear(buf.flags[b], buf.members[b], buf.counts[b])
            if g.next_label:  # a graph that never held a row is kept: init_index costs ~1.5 ms
                self.graphs[b] = self._new_graph(b)
        self.flush_at[:] = self.flush_rows

    @property
    def rebuilds(self):
        """Rebuilds finished since the index was made, summed over the batch."""
        return int(self._rebuilds.sum())

    @property
    def inserted(self):
        """Vectors given to hnswlib since the index was made (rebuilds included), summed over the batch."""
        return int(self._inserted.sum())

    def _all_graphs(self):
        return [g for g in self.graphs + self.old if g is not None]

    def __len__(self):
        self._apply_stale()
        return sum(g.live for g in self.graphs) + int(self.old_live.sum()) + len(self.buffer)

    def stats(self):
        """Live labels, deleted labels (both graphs of a rebuild in progress), hot (buffered)
        rows, rebuilds finished, rows a rebuild in progress has still to look at, and vectors
        inserted into hnswlib (rebuilds included), summed over the batch."""
        self._apply_stale()
        return dict(live=sum(g.live for g in self.graphs) + int(self.old_live.sum()),
                    deleted=sum(g.next_label for g in self._all_graphs()) - sum(g.live for g in self.graphs)
                    - int(self.old_live.sum()), buffered=len(self.buffer),
                    rebuilds=self.rebuilds, pending=sum(0 if p is None else len(p) for p in self.pending),
                    inserted=self.inserted)
