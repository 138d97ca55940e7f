"""HNSW index benchmark (issue 3): recall against the exact index, access cost per step
against bare hnswlib work in the same run, flatness in N, and a full memory's steady state.

    python benchmarks/index.py [--recall-steps 10000] [--cost-steps 1000] [--out FILE]

Sections
  recall   B=1, H=4, K=8, W=32, N=1e6: every step, the rows SparseMemory(index="hnsw") read
           against the exact top-K of the same memory contents (ExactIndex scan); on
           clustered data (writes and queries near 1,024 centres) and on Gaussian data. Also
           counts "fresh" probes: a head writes a vector to its LRA row and queries it in the
           same step; the row must be read.
  cost     B=8, H=4, K=4, W=32, episode of --cost-steps steps: mean time of mem.step (write,
           index maintenance, read, usage) against "bare" hnswlib work on the same inputs
           (per batch element one knn_query of H vectors and one add_items of H new rows,
           M=16, ef_construction=64, ef=32, one thread), at N = 1e6, 1.6e4 and 1.6e7.
  gaussian B=8, H=4, K=4, W=32, N=1e6, Gaussian writes and queries (write gates 0.5-1), one
           episode of --gaussian-steps steps: mem.step against the bare hnswlib work of the same
           steps (as in cost), both on one thread; ratios of means, medians and CPU time.
  full     N=65,536 filled until every row is written and the LRA recycles; then the cost of
           --cost-steps more steps with the index holding every row.
  scale    bare hnswlib alone (no samcpu): recall@4 against graph size and ef. Graphs of
           --scale-sizes Gaussian rows (W=32, cosine, M=16, ef_construction=32, one thread), 500
           queries that are noisy copies of stored rows (noise N(0, 0.1), as in soak.py) and 500
           fresh Gaussian ones; 12 candidates re-scored exactly, as SparseMemory does; recall@4
           and top-1 against brute force, and the time of one knn_query of 4 vectors, at ef 48
           (the default), 96 and 192. What an index of fixed ef gives as it grows.
  memory   resident memory of a SparseMemory(index="hnsw") (B=1, H=4, W=32) after writing R
           distinct rows (each step writes 4 new LRA rows; the journal is cleared every 256
           steps so that only the memory, ring and index remain), R = 8,192 and 32,768, at
           N = 1e6 and 1e8: bytes per row written, and the graphs' live labels.
Sections given to --skip keep their earlier results in the output file.
"""
import ctypes
import gc
import json
import os
import argparse
import time

import hnswlib
import numba
import numpy as np

import samcpu
from common import HERE, machine_info, rss_now, write_json
from samcpu.config import EPS
from samcpu.kernels import exact_query

W = 32
SECTIONS = ("recall", "cost", "gaussian", "full", "memory", "scale")


def make_inputs(rng, steps, b, h, kind, centres=None):
    """Step inputs (query, strength, add, write_gate, interp_gate), float32."""
    out = []
    for _ in range(steps):
        if kind == "clustered":
            c = centres[rng.integers(len(centres), size=(b, h))]
            q = c + 0.1 * rng.normal(size=(b, h, W))
            a = c + 0.1 * rng.normal(size=(b, h, W))
        else:
            q, a = rng.normal(size=(b, h, W)), rng.normal(size=(b, h, W))
        x = (q, rng.uniform(1, 10, (b, h)), a, rng.uniform(0.5, 1, (b, h)), rng.uniform(0, 1, (b, h)))
        out.append(tuple(np.asarray(v, np.float32) for v in x))
    return out


def exact_rows(mem, queries):
    w = mem._written
    return exact_query(mem._memory, w.flags.copy(), w.members, w.counts, w.hints.copy(),
                       queries, mem.k, EPS, 8192)[0]


OPTIONS = {}  # index_options from the command line


def recall_run(n, steps, kind, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1024, W))
    inputs = make_inputs(rng, steps, 1, 4, kind, centres)
    mem = samcpu.SparseMemory(1, n, W, num_heads=4, k=8, index="hnsw", index_options=OPTIONS)
    hits = total = fresh = fresh_found = 0
    per_step = []
    t0 = time.perf_counter()
    for t, (q, s, a, wg, ig) in enumerate(inputs):
        probe = t % 10 == 0
        if probe:  # head 0 writes a to its LRA row and queries a in the same step
            q, wg, ig = q.copy(), wg.copy(), ig.copy()
            q[0, 0], wg[0, 0], ig[0, 0] = a[0, 0], 1.0, 0.0
            lra = mem.lra_rows()[0, 0]
        res = mem.step(q, s, a, wg, ig)
        want = exact_rows(mem, q)
        h = sum(len(set(res.rows[0, i]) & set(want[0, i])) for i in range(4))
        hits += h
        total += 4 * 8
        per_step.append(h / 32)
        if probe:
            fresh += 1
            fresh_found += int(lra in res.rows[0, 0])
    return dict(kind=kind, n=n, steps=steps, recall=hits / total,
                recall_last_1000=float(np.mean(per_step[-1000:])), fresh_probes=fresh,
                fresh_found=fresh_found, seconds=time.perf_counter() - t0, index=mem.index.stats())


def bare_cost(inputs, k):
    """Per step, per batch element: one knn_query of H vectors, one add_items of H new rows."""
    b, h = inputs[0][0].shape[:2]
    idx = []
    for i in range(b):
        ix = hnswlib.Index(space="cosine", dim=W)
        ix.init_index(max_elements=h * len(inputs) + 16, M=16, ef_construction=64, random_seed=i)
        ix.set_ef(32)
        idx.append(ix)
    times = []
    for t, (q, _, a, _, _) in enumerate(inputs):
        t0 = time.perf_counter()
        for i in range(b):
            if t:
                idx[i].knn_query(q[i], k=min(k, t * h), num_threads=1)
            idx[i].add_items(a[i], np.arange(t * h, (t + 1) * h), num_threads=1)
        times.append(time.perf_counter() - t0)
    return np.array(times)


def sam_cost(inputs, n, k, warm=None):
    b, h = inputs[0][0].shape[:2]
    rss0 = rss_now()
    mem = samcpu.SparseMemory(b, n, W, num_heads=h, k=k, index="hnsw", index_options=OPTIONS)
    for x in warm or []:
        mem.step(*x)
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        mem.step(*x)
        times.append(time.perf_counter() - t0)
    written = sum(len(mem.written_rows(i)) for i in range(b))
    return np.array(times), dict(written_rows=written, index=mem.index.stats(),
                                 rss_growth_mib=(rss_now() - rss0) / 2**20)


def scale_run(n, seed, efs=(48, 96, 192), queries=500):
    """Bare hnswlib recall@4 and query time on a graph of n Gaussian rows (see 'scale')."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, W), dtype=np.float32)
    ix = hnswlib.Index(space="cosine", dim=W)
    ix.init_index(max_elements=n, M=16, ef_construction=32, random_seed=seed)
    ix.set_num_threads(1)
    t0 = time.perf_counter()
    ix.add_items(x, np.arange(n), num_threads=1)
    build = time.perf_counter() - t0
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    copies = x[rng.integers(0, n, queries)] + 0.1 * rng.standard_normal((queries, W), dtype=np.float32)
    rows = []
    for kind, q in (("copy", copies), ("fresh", rng.standard_normal((queries, W), dtype=np.float32))):
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        best = np.empty((queries, 4), np.int64)
        for i in range(0, queries, 50):  # the exact top 4 by brute force, 50 queries at a time
            sims = qn[i:i + 50] @ unit.T
            best[i:i + 50] = np.argpartition(sims, -4, axis=1)[:, -4:]
        best_sims = np.einsum("qw,qkw->qk", qn, unit[best])
        top1 = np.take_along_axis(best, best_sims.argmax(1)[:, None], 1)[:, 0]
        for ef in efs:
            ix.set_ef(ef)
            t0 = time.perf_counter()
            for i in range(0, queries, 4):
                ix.knn_query(q[i:i + 4], k=12, num_threads=1)
            us = (time.perf_counter() - t0) / (queries // 4) * 1e6
            labels = ix.knn_query(q, k=12, num_threads=1)[0].astype(np.int64)
            score = np.einsum("qw,qkw->qk", qn, unit[labels])  # exact re-scoring of the candidates
            found = np.take_along_axis(labels, np.argsort(-score, 1)[:, :4], 1)
            hits = [len(np.intersect1d(f, b)) / 4 for f, b in zip(found, best, strict=True)]
            rows.append(dict(n=n, queries=kind, ef=ef, recall_at_4=float(np.mean(hits)),
                             top1=float(np.mean(found[:, 0] == top1)), knn_us_4_vectors=us))
    return dict(n=n, build_us_per_row=build / n * 1e6, rows=rows)


def memory_run(n, rows, seed):
    """Resident growth of a fresh SparseMemory(index="hnsw") after writing ``rows`` rows."""
    rng = np.random.default_rng(seed)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss0 = rss_now()
    mem = samcpu.SparseMemory(1, n, W, num_heads=4, k=4, index="hnsw", index_options=OPTIONS)
    one, zero = np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32)
    beta = np.full((1, 4), 5, np.float32)
    for t in range(rows // 4):
        x = rng.normal(size=(2, 1, 4, W)).astype(np.float32)
        mem.step(x[0], beta, x[1], one, zero)
        if t % 256 == 255:
            mem.clear_journal()
    mem.clear_journal()
    written = len(mem.written_rows(0))
    growth = rss_now() - rss0
    out = dict(n=n, rows_written=written, rss_growth_mib=growth / 2**20, bytes_per_row=growth / written,
               index=mem.index.stats())
    del mem
    return out


def summary(times):
    ms = 1e3 * times
    return dict(mean_ms=float(ms.mean()), median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recall-steps", type=int, default=10_000)
    p.add_argument("--cost-steps", type=int, default=1000)
    p.add_argument("--full-slots", type=int, default=65_536)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gaussian-steps", type=int, default=4104)
    p.add_argument("--scale-sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    p.add_argument("--out", default=f"{HERE}/results/index.json")
    p.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="an HNSWIndex option, e.g. --option stale_cos 0.9")
    args = p.parse_args()
    OPTIONS.update((k, float(v) if "." in v else int(v)) for k, v in args.option)
    numba.set_num_threads(args.threads)
    out = {}
    if args.skip and os.path.exists(args.out):  # keep the skipped sections' earlier results
        with open(args.out) as f:
            out = json.load(f)
    here = dict(machine=machine_info(args.threads), args=vars(args))
    ran = [name for name in SECTIONS if name not in args.skip]
    if args.skip and "machine" in out:  # the top level stays the earlier run's; this run's is per section
        for name in ran:
            out.setdefault("section_runs", {})[name] = here
    else:
        out.update(here)
        out.pop("section_runs", None)
    # compile the kernels before timing anything
    warm = samcpu.SparseMemory(2, 100, W, num_heads=4, k=4, index="hnsw")
    for x in make_inputs(np.random.default_rng(0), 30, 2, 4, "gaussian"):
        warm.step(*x)
    exact_rows(warm, x[0])

    if "recall" not in args.skip:
        out["recall"] = []
        for kind in ("clustered", "gaussian"):
            r = recall_run(1_000_000, args.recall_steps, kind, seed=1)
            out["recall"].append(r)
            print(f"recall@8 {kind:9s} N=1e6 B=1 H=4 K=8, {r['steps']} steps: {r['recall']:.4f} "
                  f"(last 1000 steps {r['recall_last_1000']:.4f}); fresh rows found "
                  f"{r['fresh_found']}/{r['fresh_probes']}; {r['seconds']:.0f} s; {r['index']}", flush=True)

    if "cost" not in args.skip:
        rng = np.random.default_rng(2)
        inputs = make_inputs(rng, args.cost_steps, 8, 4, "clustered", rng.normal(size=(1024, W)))
        bare = bare_cost(inputs, 4)
        rows = []
        for n in (1_000_000, 16_000, 16_000_000):
            t, info = sam_cost(inputs, n, 4)
            rows.append(dict(n=n, **summary(t), **info))
        out["cost"] = dict(bare=summary(bare), samcpu=rows,
                           ratio_mean_1e6=rows[0]["mean_ms"] / summary(bare)["mean_ms"],
                           ratio_n=rows[2]["mean_ms"] / rows[1]["mean_ms"])
        print(f"\naccess cost per step, B=8 H=4 K=4 W=32, episode of {args.cost_steps} steps (clustered)")
        print(f"{'':24s}{'mean ms':>9s}{'median':>9s}{'p90':>9s}  rows written  index  RSS growth")
        b = summary(bare)
        print(f"{'bare hnswlib, 1 thread':24s}{b['mean_ms']:9.3f}{b['median_ms']:9.3f}{b['p90_ms']:9.3f}")
        for r in rows:
            label = f"samcpu N={r['n']:.3g}"
            print(f"{label:24s}{r['mean_ms']:9.3f}{r['median_ms']:9.3f}{r['p90_ms']:9.3f}"
                  f"  {r['written_rows']:12d}  {r['index']['live']}+{r['index']['deleted']}del  "
                  f"{r['rss_growth_mib']:.0f} MiB")
        print(f"samcpu/bare at N=1e6 (means): {out['cost']['ratio_mean_1e6']:.2f}; "
              f"cost(N=1.6e7)/cost(N=1.6e4): {out['cost']['ratio_n']:.2f}", flush=True)

    if "gaussian" not in args.skip:
        # one thread for both sides: the same core budget
        rng = np.random.default_rng(3)
        inputs = make_inputs(rng, args.gaussian_steps, 8, 4, "gaussian")
        c0 = time.process_time()
        bare = summary(bare_cost(inputs, 4))
        bare_cpu = time.process_time() - c0
        saved = dict(OPTIONS)
        OPTIONS["num_threads"] = 1
        c0 = time.process_time()
        t, info = sam_cost(inputs, 1_000_000, 4)
        sam_cpu = time.process_time() - c0
        OPTIONS.clear()
        OPTIONS.update(saved)
        sam = dict(n=1_000_000, **summary(t), **info)
        out["gaussian"] = dict(steps=args.gaussian_steps, bare=bare, samcpu=sam, bare_cpu_s=bare_cpu,
                               samcpu_cpu_s=sam_cpu, ratio_mean=sam["mean_ms"] / bare["mean_ms"],
                               ratio_median=sam["median_ms"] / bare["median_ms"],
                               ratio_cpu=sam_cpu / bare_cpu, loadavg=os.getloadavg())
        g = out["gaussian"]
        print(f"\nGaussian writes and queries, B=8 H=4 K=4 W=32, N=1e6, one thread, episode of "
              f"{args.gaussian_steps} steps: bare hnswlib {bare['mean_ms']:.3f} ms/step (mean), samcpu "
              f"{sam['mean_ms']:.3f}; samcpu/bare {g['ratio_mean']:.2f} (means), {g['ratio_median']:.2f} "
              f"(medians), {g['ratio_cpu']:.2f} (CPU time); index {info['index']}", flush=True)

    if "full" not in args.skip:
        n = args.full_slots
        rng = np.random.default_rng(3)
        centres = rng.normal(size=(1024, W))
        fill = make_inputs(rng, n // 4 + 500, 8, 4, "clustered", centres)
        inputs = make_inputs(rng, args.cost_steps, 8, 4, "clustered", centres)
        t0 = time.perf_counter()
        t, info = sam_cost(inputs, n, 4, warm=fill)
        out["full"] = dict(n=n, fill_steps=len(fill), fill_and_run_s=time.perf_counter() - t0,
                           **summary(t), **info)
        print(f"\nfull memory N={n} after {len(fill)} steps (every row written, LRA recycling): "
              f"mean {out['full']['mean_ms']:.3f} ms, median {out['full']['median_ms']:.3f} ms per step; "
              f"{info['index']}", flush=True)
    if "scale" not in args.skip:
        out["scale"] = dict(runs=[scale_run(n, seed=5) for n in args.scale_sizes], loadavg=os.getloadavg())
        print("\nbare hnswlib (M=16, ef_construction=32, one thread), Gaussian rows W=32: recall@4 of 12 "
              "candidates re-scored")
        print(f"{'rows':>10s} {'queries':>8s} {'ef':>4s} {'recall@4':>9s} {'top-1':>6s} {'us/knn(4)':>10s}")
        for run in out["scale"]["runs"]:
            for r in run["rows"]:
                print(f"{r['n']:>10,d} {r['queries']:>8s} {r['ef']:>4d} {r['recall_at_4']:>9.3f} "
                      f"{r['top1']:>6.3f} {r['knn_us_4_vectors']:>10.0f}", flush=True)
    if "memory" not in args.skip:
        runs = [memory_run(n, r, seed=4) for n in (1_000_000, 100_000_000) for r in (8192, 32768)]
        out["memory"] = dict(runs=runs)
        print("\nresident memory after writing R rows "
              "(B=1, H=4, W=32; memory rows, ring, written set, index)")
        print(f"{'N':>14s}{'rows written':>14s}{'RSS growth MiB':>16s}{'bytes per row':>15s}  index")
        for r in runs:
            print(f"{r['n']:>14,d}{r['rows_written']:>14,d}{r['rss_growth_mib']:>16.1f}"
                  f"{r['bytes_per_row']:>15,.0f}  {r['index']}")
        at_1e6, at_1e8 = runs[0:2], runs[2:4]  # each: R = 8,192 then 32,768
        growth = out["memory"]
        growth["growth_ratio_rows_4x"] = [b["rss_growth_mib"] / a["rss_growth_mib"]
                                          for a, b in (at_1e6, at_1e8)]
        growth["growth_ratio_n_100x"] = [b["rss_growth_mib"] / a["rss_growth_mib"]
                                         for a, b in zip(at_1e6, at_1e8, strict=True)]
        print(f"growth for 4x the rows: {growth['growth_ratio_rows_4x'][0]:.2f} (N=1e6), "
              f"{growth['growth_ratio_rows_4x'][1]:.2f} (N=1e8); for 100x the slots: "
              f"{growth['growth_ratio_n_100x'][0]:.2f} (R=8,192), "
              f"{growth['growth_ratio_n_100x'][1]:.2f} (R=32,768)")
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
