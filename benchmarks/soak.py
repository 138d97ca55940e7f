"""Soak test: a long run of SparseMemory with the HNSW index, watched for drift.

    python benchmarks/soak.py [--steps 1000000] [--every 100000] [--slots 1000000]
                              [--sample-every 1000] [--window 10000] [--segment 1000] [--seed 0]
                              [--out FILE]

What is run
  One samcpu.SparseMemory(B=1, N=--slots, W=32, H=4, K=4, index="hnsw", float32), the
  paper's configuration with the index's default options, stepped --steps times. Inputs per
  step (seeded numpy Generator): add a ~ N(0, 1)^W per head; write gate alpha ~ U(0.5, 1);
  interpolation gate gamma ~ U(0, 1), set to 0 (write to the least-recently-accessed row)
  for half of the heads at random, so that new rows keep arriving; strength beta ~ U(1, 20);
  query: per head, with probability 0.8 a noisy copy (noise N(0, 0.1)) of an add vector of
  an earlier step, drawn uniformly from all steps so far (kept in a ring of the latest
  --recall-pool adds), else a fresh N(0, 1)^W (a query for nothing stored). Every --segment
  steps the journal is dropped (``clear_journal``, contents kept), as truncated-BPTT training
  does after each backward pass: the journal holds one segment's steps (about 3.4 KB per step
  here), not all of them.

What is measured
  - step time: each mem.step call, wall clock (time.perf_counter_ns) and CPU time of the
    process (time.process_time_ns, all threads: what the step costs even when other processes
    share the machine), input generation not included; per window of --window steps: median,
    p99, mean and max (us), and the 1-minute load average at the window's end.
  - RSS (samcpu._util.rss_bytes) at the end of every window, and the journal's largest size
    in the window.
  - recall@K: every --sample-every steps, the K rows the step read (StepResult.rows) against
    the exact top-K of the same query over every row of the memory after that step (the
    exact index, samcpu.index.ExactIndex, scanning the written rows of the live memory with
    samcpu.kernels.exact_query; unwritten rows take part at similarity 0): |read & exact| / K,
    averaged over the heads; per window: the mean.
  - save and load every --every steps (and at the end): mem.save into one folder (each save
    replaces the last, all or nothing), SparseMemory.load of it, and the loaded memory
    compared with the live one: memory contents, usage, LRA rows, written rows, position and
    the index's live and deleted labels, all equal. Times of both, bytes on disk.
  Written to --out (default benchmarks/results/soak.json) with the command and the machine
  after every window (``complete`` false until the last step, so a run cut short still leaves
  its windows); a table is printed. The run stops with an error if a loaded memory differs from the live one.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, write_json  # noqa: E402

import samcpu  # noqa: E402
from samcpu._util import parse_int, rss_bytes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
B, W, H, K = 1, 32, 4, 4


def positive(text):
    try:
        return parse_int(text, minimum=1)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def same_as_live(live, loaded):
    """The checks of a load against the live memory: {name: equal}."""
    a, b = live.index.stats(), loaded.index.stats()
    return dict(
        memory=bool(np.array_equal(live.memory, loaded.memory)),
        usage=bool(np.array_equal(live.usage, loaded.usage)),
        lra_rows=bool(np.array_equal(live.lra_rows(), loaded.lra_rows())),
        written_rows=all(np.array_equal(np.sort(live.written_rows(i)), np.sort(loaded.written_rows(i)))
                         for i in range(live.batch_size)),
        position=live.position == loaded.position,
        index_labels=(a["live"], a["deleted"]) == (b["live"], b["deleted"]),
    )


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=positive, default=1_000_000)
    ap.add_argument("--every", type=positive, default=100_000, help="save and load every this many steps")
    ap.add_argument("--slots", type=positive, default=1_000_000, help="N")
    ap.add_argument("--sample-every", type=positive, default=1000, help="steps between recall samples")
    ap.add_argument("--window", type=positive, default=10_000, help="steps per reported window")
    ap.add_argument("--segment", type=positive, default=1000,
                    help="steps between journal clears (a truncated-BPTT segment)")
    ap.add_argument("--recall-pool", type=positive, default=200_000,
                    help="how many of the latest adds queries are drawn from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "soak.json"))
    args = ap.parse_args(argv)
    if args.slots < H:
        ap.error(f"--slots must be >= {H}")

    rng = np.random.default_rng(args.seed)
    mem = samcpu.SparseMemory(B, args.slots, W, num_heads=H, k=K, index="hnsw", seed=args.seed)
    exact = samcpu.index.ExactIndex(mem.memory, mem.index.written)
    pool = np.zeros((args.recall_pool, W), np.float32)
    pooled = 0
    folder = tempfile.mkdtemp(prefix="samcpu-soak-")
    windows, saves = [], []
    times, cpu_times, recalls = [], [], []
    journal_peak = 0  # the journal's largest size (bytes) in the window, just before a clear
    started = time.perf_counter()
    print(f"soak: N={args.slots:,d} B={B} W={W} H={H} K={K} hnsw, {args.steps:,d} steps, save/load every "
          f"{args.every:,d}", flush=True)
    header = (f"{'step':>9} {'median us':>10} {'p99 us':>9} {'mean us':>9} {'max ms':>8} {'cpu med':>8} "
              f"{'cpu mean':>9} "
              f"{'recall@K':>9} {'RSS MiB':>8} {'load':>5}")
    print(header, flush=True)
    try:
        for t in range(1, args.steps + 1):
            add = rng.standard_normal((B, H, W), dtype=np.float32)
            alpha = rng.uniform(0.5, 1.0, (B, H))
            gamma = rng.uniform(0.0, 1.0, (B, H))
            gamma[rng.random((B, H)) < 0.5] = 0.0
            beta = rng.uniform(1.0, 20.0, (B, H))
            query = rng.standard_normal((B, H, W), dtype=np.float32)
            if pooled:
                recall_q = rng.random((B, H)) < 0.8
                picks = pool[rng.integers(0, min(pooled, len(pool)), (B, H))]
                noisy = picks + 0.1 * rng.standard_normal((B, H, W), dtype=np.float32)
                query = np.where(recall_q[..., None], noisy, query)
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            res = mem.step(query, beta, add, alpha, gamma)
            times.append(time.perf_counter_ns() - t0)
            cpu_times.append(time.process_time_ns() - c0)
            for h in range(H):
                pool[pooled % len(pool)] = add[0, h]
                pooled += 1
            if t % args.segment == 0:
                journal_peak = max(journal_peak, mem.journal_nbytes)
                mem.clear_journal()
            if t % args.sample_every == 0:
                rows, _ = exact.query(np.ascontiguousarray(query, mem.dtype), K)
                hits = [len(np.intersect1d(res.rows[0, h], rows[0, h])) / K for h in range(H)]
                recalls.append(float(np.mean(hits)))
            if t % args.window == 0 or t == args.steps:
                us = np.asarray(times, np.float64) / 1e3
                cpu = np.asarray(cpu_times, np.float64) / 1e3
                win = dict(step=t, steps=len(times), median_us=float(np.median(us)),
                           p99_us=float(np.percentile(us, 99)), mean_us=float(us.mean()),
                           max_us=float(us.max()),
                           cpu_median_us=float(np.median(cpu)), cpu_mean_us=float(cpu.mean()),
                           load_avg=os.getloadavg()[0],
                           recall=float(np.mean(recalls)) if recalls else None, recall_samples=len(recalls),
                           rss_bytes=rss_bytes(), journal_bytes=max(journal_peak, mem.journal_nbytes),
                           index=mem.index.stats())
                windows.append(win)
                rec = "n/a" if win["recall"] is None else f"{win['recall']:.3f}"
                print(f"{t:>9,d} {win['median_us']:>10.0f} {win['p99_us']:>9.0f} {win['mean_us']:>9.0f} "
                      f"{win['max_us'] / 1e3:>8.0f} "
                      f"{win['cpu_median_us']:>8.0f} {win['cpu_mean_us']:>9.0f} {rec:>9} "
                      f"{win['rss_bytes'] / 2**20:>8.0f} {win['load_avg']:>5.1f}", flush=True)
                times, cpu_times, recalls, journal_peak = [], [], [], 0
                write(args, argv, windows, saves, started, complete=False)
            if t % args.every == 0 or t == args.steps:
                t0 = time.perf_counter()
                mem.save(folder)
                t1 = time.perf_counter()
                loaded = samcpu.SparseMemory.load(folder)
                t2 = time.perf_counter()
                checks = same_as_live(mem, loaded)
                saves.append(dict(step=t, save_s=t1 - t0, load_s=t2 - t1, bytes=folder_bytes(folder),
                                  equal=all(checks.values()), checks=checks))
                del loaded
                mib = saves[-1]["bytes"] / 2**20
                print(f"{'':>9} save {t1 - t0:.2f} s, load {t2 - t1:.2f} s, {mib:.0f} MiB, "
                      f"loaded == live: {saves[-1]['equal']}", flush=True)
                if not saves[-1]["equal"]:
                    write(args, argv, windows, saves, started, complete=False)
                    raise SystemExit(f"soak: the memory loaded at step {t} differs from the live one: "
                                     f"{checks}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    out = write(args, argv, windows, saves, started, complete=True)
    summary = out["summary"]
    print(f"\nsummary: median step {summary['median_us_first_window']:.0f} us (first window) -> "
          f"{summary['median_us_last_window']:.0f} us (last), "
          f"CPU {summary['cpu_median_us_first_window']:.0f} -> "
          f"{summary['cpu_median_us_last_window']:.0f} us; RSS {summary['rss_mib_first_window']:.0f} -> "
          f"{summary['rss_mib_last_window']:.0f} MiB; recall@{K} "
          f"{summary['recall_first_window']} -> {summary['recall_last_window']}; "
          f"{summary['saves']} save/load round trips, all equal: {summary['loads_equal']}; wrote {args.out}")
    return out


def write(args, argv, windows, saves, started, complete):
    """The JSON of the windows and saves so far (``complete``: the run reached --steps)."""
    medians = [w["median_us"] for w in windows]
    cpu = [w["cpu_median_us"] for w in windows]
    recall = [w["recall"] for w in windows if w["recall"] is not None]
    summary = dict(
        steps=windows[-1]["step"], complete=complete, wall_s=time.perf_counter() - started,
        median_us_first_window=medians[0], median_us_last_window=medians[-1],
        median_us_max_window=max(medians), cpu_median_us_first_window=cpu[0],
        cpu_median_us_last_window=cpu[-1],
        cpu_median_us_max_window=max(cpu), rss_mib_first_window=windows[0]["rss_bytes"] / 2**20,
        rss_mib_last_window=windows[-1]["rss_bytes"] / 2**20,
        recall_first_window=recall[0] if recall else None, recall_last_window=recall[-1] if recall else None,
        recall_min_window=min(recall) if recall else None, loads_equal=all(s["equal"] for s in saves),
        max_step_ms=max(w.get("max_us", 0.0) for w in windows) / 1e3,
        saves=len(saves))
    command = "python benchmarks/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = dict(benchmark="soak", command=command,
               config=dict(batch_size=B, num_slots=args.slots, word_size=W, num_heads=H, k=K, index="hnsw",
                           dtype="float32", seed=args.seed, every=args.every, sample_every=args.sample_every,
                           window=args.window, segment=args.segment, recall_pool=args.recall_pool,
                           steps=args.steps),
               machine=machine_info(None), summary=summary, windows=windows, saves=saves)
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
