"""`make tour`: a NumPy-level tour of SparseMemory on a 10M-slot memory, with timings.

    python -m samcpu.demo [--slots N] [--steps T]
"""
import argparse
import os
import time

import numba
import numpy as np

import samcpu


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slots", type=int, default=10_000_000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=min(2, numba.config.NUMBA_NUM_THREADS))
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    b, n, w, h, k = args.batch, args.slots, 32, 4, 4
    dense_gb = b * n * w * 4 / 1e9
    print(f"samcpu {samcpu.__version__}: SparseMemory B={b} N={n:,} W={w} H={h} K={k} float32, "
          f"HNSW index, {args.threads} threads")

    t0 = time.perf_counter()
    mem = samcpu.SparseMemory(b, n, w, num_heads=h, k=k)  # index="hnsw"
    print(f"created in {1e3 * (time.perf_counter() - t0):.1f} ms "
          f"(a dense copy would be {dense_gb:.1f} GB; resident now {rss_mb():.0f} MB)")

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, w)).astype(np.float32)

    def inputs():
        c = centres[rng.integers(64, size=(b, h))]
        q = c + 0.1 * rng.normal(size=(b, h, w)).astype(np.float32)
        a = c + 0.1 * rng.normal(size=(b, h, w)).astype(np.float32)
        return (q, rng.uniform(1, 10, (b, h)), a, rng.uniform(0.5, 1, (b, h)), rng.uniform(0, 1, (b, h)))

    mem.step(*inputs())  # compile (numba caches to disk after the first run)
    mem.reset()
    times = []
    for _ in range(args.steps):
        x = inputs()
        t0 = time.perf_counter()
        res = mem.step(*x)
        times.append(time.perf_counter() - t0)
    written = sum(len(mem.written_rows(i)) for i in range(b))
    print(f"{args.steps} steps: median {1e3 * np.median(times):.3f} ms per step for the batch; "
          f"{written:,} rows written; journal {mem.journal_nbytes / 2**20:.1f} MiB; "
          f"resident {rss_mb():.0f} MB")
    print(f"last step, batch 0 head 0: rows {res.rows[0, 0].tolist()} weights "
          f"{[round(float(x), 3) for x in res.weights[0, 0]]}")

    final = mem.memory[:, mem.written_rows(0)].copy()
    half = args.steps // 2
    t0 = time.perf_counter()
    mem.rewind(half)
    t_rewind = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem.replay()
    t_replay = time.perf_counter() - t0
    exact = np.array_equal(mem.memory[:, mem.written_rows(0)], final)
    print(f"rewind {args.steps - half} steps: {1e3 * t_rewind:.1f} ms; replay: {1e3 * t_replay:.1f} ms; "
          f"bit-identical after replay: {exact}")
    t0 = time.perf_counter()
    mem.reset()
    print(f"reset (O(rows touched), not O(N)): {1e3 * (time.perf_counter() - t0):.1f} ms; "
          f"memory empty: {not mem.memory[:, :1000].any()}")
    print("next: the README shows the API; `make test` runs the test suite.")


if __name__ == "__main__":
    main()
