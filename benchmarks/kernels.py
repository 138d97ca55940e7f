"""Per-operation cost of the samcpu kernels, flat in N (DESIGN.md section 2).

For each memory size N (default 1e4, 1e6, 1e8 slots; the largest file-backed by a sparse
file) this script creates a SparseMemory, warms it up with ``--steps`` random steps, then
times each kernel operation on the memory's own arrays:

  create            SparseMemory(...) construction (once)
  step (full)       mem.step, median over the warm-up steps; includes the exact-index scan,
                    whose cost grows with the rows written (equal for every N here), not N
  read              kernels.read_phase on fixed (B, H, K) rows spread over the written rows
  write + journal   kernels.write_phase (LRA pick, journal old contents, erase + add); the
                    memory rows and ring ends are restored (untimed) after every call
  rewind one step   mem.rewind(mem.position - 1)
  replay one step   mem.replay() (alternated with the rewind so the state returns)
  ring pop          kernels.lra_rows on one batch element (copy of its ring ends)
  reset             mem.reset() after everything else (once; O(rows touched))

Times are per call (one call = the whole batch of B, except "ring pop": one element), in
microseconds, from time.perf_counter_ns. Results go to JSON (--out).

    python benchmarks/kernels.py [--slots 1e4 1e6 1e8] [--steps 1000] [--repeats 2000]
"""
import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numba
import numpy as np

import samcpu
from common import HERE, machine_info, rss_now, rss_peak, stats
from samcpu import kernels as K
from samcpu.config import EPS

OPS = ["create", "step (full)", "read", "write + journal", "rewind one step",
       "replay one step", "ring pop", "reset"]


def snapshot(mem):
    """Contents of the written rows and the ring state, to check that timing loops return the
    memory to the same state."""
    out = []
    for b in range(mem.batch_size):
        rows = mem._written.rows(b)
        ring = np.empty(mem._ends[b, 3], np.int64)
        K.ring_rows(mem._next[b], mem._ends[b], ring)
        out.append((rows, mem._memory[b, rows].copy(), ring, mem._usage[b, ring].copy()))
    return out, mem._ends.copy(), mem.position


def same_state(a, b):
    (sa, ea, pa), (sb, eb, pb) = a, b
    if pa != pb or not np.array_equal(ea[:, [0, 1, 3]], eb[:, [0, 1, 3]]):
        return False
    return all(all(np.array_equal(x, y) for x, y in zip(u, v, strict=True))
               for u, v in zip(sa, sb, strict=True))


def bench_one(n, args, tmp):
    B, W, H, Kr = args.batch, args.word, args.heads, args.k
    dtype = np.float32
    rng = np.random.default_rng(args.seed)
    res = dict(num_slots=n, file_backed=n >= args.file_from, ops={}, checks={})
    gc.collect()
    rss0 = rss_now()
    path = os.path.join(tmp, f"mem_{n}.f32") if res["file_backed"] else None

    times = []
    for _ in range(args.create_repeats):  # create (and drop) a few times; keep the last one
        if path is not None and os.path.exists(path):
            os.remove(path)
        t0 = time.perf_counter_ns()
        mem = samcpu.SparseMemory(B, n, W, num_heads=H, k=Kr, index="exact", dtype=dtype, path=path)
        times.append(time.perf_counter_ns() - t0)
    res["ops"]["create"] = stats(times)
    res["rss_after_create"] = rss_now()

    # ---- warm-up: full steps with random inputs
    S = args.steps
    q = rng.standard_normal((S, B, H, W)).astype(dtype)
    a = rng.standard_normal((S, B, H, W)).astype(dtype)
    beta = rng.uniform(1, 10, (S, B, H)).astype(dtype)
    alpha = rng.uniform(0, 1, (S, B, H)).astype(dtype)
    gamma = rng.uniform(0, 1, (S, B, H)).astype(dtype)
    times = np.empty(S, np.int64)
    tw = time.perf_counter_ns()
    for s in range(S):
        t0 = time.perf_counter_ns()
        mem.step(q[s], beta[s], a[s], alpha[s], gamma[s])
        times[s] = time.perf_counter_ns() - t0
    res["warmup_seconds"] = (time.perf_counter_ns() - tw) / 1e9
    res["ops"]["step (full)"] = stats(times)
    res["step_first_last_100_median_us"] = [float(np.median(times[:100]) / 1e3),
                                            float(np.median(times[-100:]) / 1e3)]
    res["written_rows_per_element"] = mem._written.counts.tolist()
    res["ring_rows_per_element"] = mem._ends[:, 3].tolist()
    res["lra_recycled"] = bool((mem._ends[:, 2] >= n).any())
    res["journal_bytes"] = mem.journal_nbytes
    before = snapshot(mem)

    R = args.repeats
    # ---- read: read_phase on fixed rows spread over the written rows
    rows = np.stack([rng.choice(mem._written.rows(b), (H, Kr)) for b in range(B)]).astype(np.int64)
    rq = rng.standard_normal((B, H, W)).astype(dtype)
    rbeta = rng.uniform(1, 10, (B, H)).astype(dtype)
    weights = np.empty((B, H, Kr), dtype)
    reads = np.empty((B, H, W), dtype)
    sims = np.empty((B, H, Kr), np.float64)
    K.read_phase(mem._memory, rows, rq, rbeta, EPS, weights, reads, sims)
    times = np.empty(R, np.int64)
    for i in range(R):
        t0 = time.perf_counter_ns()
        K.read_phase(mem._memory, rows, rq, rbeta, EPS, weights, reads, sims)
        times[i] = time.perf_counter_ns() - t0
    res["ops"]["read"] = stats(times)

    # ---- write + journal: write_phase, then restore the touched rows and ends (untimed)
    d = H * (Kr + 1)
    lra = np.empty((B, H), np.int64)
    jrows = np.empty((B, d), np.int64)
    jold = np.empty((B, d, W), dtype)
    jcount = np.zeros(B, np.int64)
    wa, walpha, wgamma = a[0].copy(), alpha[0].copy(), gamma[0].copy()
    ends = mem._ends.copy()
    mems = [mem._memory[b] for b in range(B)]
    for i in range(R + 1):
        t0 = time.perf_counter_ns()
        K.write_phase(mem._memory, mem._usage, mem._prev, mem._next, mem._ends, mem._prev_rows,
                      mem._prev_weights, wa, walpha, wgamma, lra, jrows, jold, jcount)
        t1 = time.perf_counter_ns()
        if i:
            times[i - 1] = t1 - t0
        for b in range(B):
            K.journal_swap(mems[b], jrows[b], jcount[b], jold[b])
        mem._ends[:] = ends
    res["ops"]["write + journal"] = stats(times)
    res["write_rows_journaled_per_element"] = jcount.tolist()

    # ---- rewind / replay one step, alternated
    pos = mem.position
    tr = np.empty(R, np.int64)
    tp = np.empty(R, np.int64)
    for i in range(R):
        t0 = time.perf_counter_ns()
        mem.rewind(pos - 1)
        t1 = time.perf_counter_ns()
        mem.replay()
        t2 = time.perf_counter_ns()
        tr[i], tp[i] = t1 - t0, t2 - t1
    res["ops"]["rewind one step"] = stats(tr)
    res["ops"]["replay one step"] = stats(tp)

    # ---- ring pop: lra_rows on one batch element with a copy of its ends
    views = [(mem._usage[b], mem._next[b]) for b in range(B)]
    ecopy = mem._ends.copy()
    e = np.empty(4, np.int64)
    out = np.empty(H, np.int64)
    for i in range(R + 1):
        b = i % B
        e[:] = ecopy[b]
        u, nx = views[b]
        t0 = time.perf_counter_ns()
        K.lra_rows(u, nx, e, H, out)
        t1 = time.perf_counter_ns()
        if i:
            times[i - 1] = t1 - t0
    res["ops"]["ring pop"] = stats(times)

    res["checks"]["state_unchanged_after_timing"] = same_state(before, snapshot(mem))
    res["rss_before_reset"] = rss_now()
    res["peak_rss_before_reset"] = rss_peak()

    # ---- reset (once)
    written = [mem._written.rows(b) for b in range(B)]
    ring = before[0]
    t0 = time.perf_counter_ns()
    mem.reset()
    res["ops"]["reset"] = stats([time.perf_counter_ns() - t0])
    res["checks"]["reset_zeroed_rows"] = bool(
        all(not mem._memory[b, written[b]].any() for b in range(B))
        and all(not mem._usage[b, ring[b][2]].any() for b in range(B))
        and not mem._ends.any() and mem.position == 0 and len(mem._written) == 0)
    r = mem.step(q[0], beta[0], a[0], alpha[0], gamma[0])
    res["checks"]["step_after_reset_ok"] = bool(np.isfinite(r.reads).all() and mem.position == 1)

    res["rss_current"] = rss_now()
    res["rss_growth_since_before_create"] = res["rss_current"] - rss0
    res["peak_rss"] = rss_peak()
    if path is not None:
        st = os.stat(path)
        res["file_apparent_bytes"] = st.st_size
        res["file_allocated_bytes"] = st.st_blocks * 512
    del mem, views, mems
    gc.collect()
    if path is not None:
        os.remove(path)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slots", type=float, nargs="+", default=[1e4, 1e6, 1e8])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--word", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--create-repeats", type=int, default=5)
    p.add_argument("--file-from", type=float, default=1e8,
                   help="memories with at least this many slots are file-backed (sparse file)")
    p.add_argument("--tmpdir", default="/tmp", help="where the sparse memory file goes")
    p.add_argument("--out", default=os.path.join(HERE, "results", "kernels.json"))
    args = p.parse_args()
    slots = [int(s) for s in args.slots]
    numba.set_num_threads(args.threads)

    machine = machine_info(args.threads)
    results = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="samcpu-bench-", dir=args.tmpdir) as tmp:
        # load/compile every kernel and start the thread pool on a tiny memory first, so the
        # first N measured pays no one-off costs (its results are discarded)
        small = argparse.Namespace(**{**vars(args), "steps": 50, "repeats": 20, "create_repeats": 1})
        bench_one(64, small, tmp)
        for n in slots:
            t0 = time.perf_counter()
            load0 = os.getloadavg()[0]
            res = bench_one(n, args, tmp)
            res["seconds"] = time.perf_counter() - t0
            # other processes on the machine inflate the parallel kernels (a descheduled
            # numba worker stalls the whole prange for a scheduler slice): record the load
            res["loadavg_1min_before_after"] = [load0, os.getloadavg()[0]]
            results.append(res)
            print(f"N={n:.0e}: {res['seconds']:.1f} s (warm-up {res['warmup_seconds']:.1f} s), "
                  f"load {res['loadavg_1min_before_after']}, checks {res['checks']}", flush=True)
    machine["numba_threading_layer"] = numba.threading_layer()

    # ---- table of medians and ratios
    heads = [f"N={n:.0e}" for n in slots]
    ratio_name = f"t({slots[-1]:.0e})/t({slots[0]:.0e})"
    print(f"\nmedian us per call (B={args.batch}, W={args.word}, H={args.heads}, K={args.k}, "
          f"float32, exact index, {numba.get_num_threads()} numba threads)")
    print(f"{'operation':<18}" + "".join(f"{h:>12}" for h in heads) + f"{ratio_name:>18}")
    ratios = {}
    for op in OPS:
        med = [r["ops"][op]["median"] for r in results]
        ratios[op] = med[-1] / med[0] if med[0] > 0 else float("nan")
        flag = "  <-- not flat" if ratios[op] > 1.3 else ""
        print(f"{op:<18}" + "".join(f"{m:>12.2f}" for m in med) + f"{ratios[op]:>18.2f}{flag}")
    print(f"{'p90 (read/write/rewind/replay/pop)':<18}")
    for op in ["read", "write + journal", "rewind one step", "replay one step", "ring pop"]:
        print(f"  {op:<16}" + "".join(f"{r['ops'][op]['p90']:>12.2f}" for r in results))
    mib = 2 ** 20
    print(f"{'RSS MiB current':<18}" + "".join(f"{r['rss_current'] / mib:>12.1f}" for r in results))
    print(f"{'RSS MiB peak':<18}" + "".join(f"{r['peak_rss'] / mib:>12.1f}" for r in results))
    print(f"{'RSS growth MiB':<18}" + "".join(f"{r['rss_growth_since_before_create'] / mib:>12.1f}"
                                              for r in results))
    total = time.perf_counter() - t_start
    print(f"total {total:.1f} s")

    out = dict(
        benchmark="kernels", command=" ".join([os.path.basename(sys.executable)] + sys.argv),
        settings=dict(slots=slots, batch=args.batch, word=args.word, heads=args.heads, k=args.k,
                      dtype="float32", index="exact", steps=args.steps, repeats=args.repeats,
                      threads=args.threads, seed=args.seed, file_from=int(args.file_from),
                      tmpdir=args.tmpdir, units="microseconds per call (batch of B; ring pop: one element)"),
        machine=machine, results=results, median_ratio_last_over_first=ratios,
        total_seconds=total,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
