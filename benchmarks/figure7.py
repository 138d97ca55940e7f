"""The paper's Figure 7 on this machine: the Sparse DNC against the dense DNC, and SAM.

    python benchmarks/figure7.py [--slots ...] [--rounds 3] [--dnc-max 4096] [--profile 1e6]
                                 [--out benchmarks/results]      (all options: --help)

The same run as `samcpu bench figure7` (samcpu.bench.figure7, one implementation), plus the
machine's description (benchmarks/common.machine_info), the benchmark processes that were
running at the start and at the end, and (--profile N) a cProfile of the SDNC and SAM. Writes
figure7.json and figure7.png into --out.

What is measured
  The models of samcpu.bench.build, the paper's Figure 7 configuration: input/output 8, LSTM
  100, W=32, 4 heads; samcpu.SDNC (HNSW index, K=4, K_L=8), samcpu.DNC (the vectorised torch
  DNC: 4 read heads, 1 write head, dense N x N links) and samcpu.SAM (HNSW index, K=4).
  Every worker process runs one torch thread, one numba thread and (SAM, SDNC) one HNSW index
  thread (--threads 1; the index's default is 2 threads over the batch elements).
  Time: one training sequence = forward over T=10 steps from a fresh state, BCE-with-logits
  loss against random bits, backward, RMSprop step, B=8; time per step = sequence / T. In
  --rounds rounds over all N, each (model, N) gets a fresh worker (the models interleaved per
  N, their order rotated each round) that runs one untimed warm-up sequence, then at least
  --repeats timed sequences and until --min-ms of them are timed (--budget caps the DNC);
  reported: the median over all timed sequences of all rounds (wall; CPU time as well).
  Memory: per (model, N), one fresh worker: a small model of the same kind first loads or
  compiles the kernels, is freed, the heap trimmed (malloc_trim) and the peak RSS reset
  (/proc/self/clear_refs); then the model is built (initialisation included), with its
  optimiser, and trained on one sequence, B=1, T=10. Reported: peak RSS - RSS before building
  (MiB), and the whole process's peak RSS (torch, numba and the rest included).
  The DNC runs while N <= --dnc-max (time, 4,096) and --dnc-memory-max (memory, 8,192), and
  only where its estimated memory, (T + 4) x B x N^2 x 4 bytes, fits --memory-limit.
  Derived: DNC/SDNC time and memory at every N both ran, at N=2,048 against the paper's 440x
  and 240x; SDNC/SAM time at every N (target <= 2); the SDNC's t(1e7)/t(1e4) (target <= 1.2).
  The machine is shared: the load average is recorded before and after, and at each worker's
  start.
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys

from common import HERE, machine_info, write_json
from samcpu import bench


def other_benchmarks():
    """Command lines of the other benchmark processes running now (pgrep -af benchmarks/)."""
    try:
        out = subprocess.run(["pgrep", "-af", "benchmarks/"], capture_output=True, text=True).stdout
    except OSError:
        return None
    mine = {os.getpid(), os.getppid()}
    return [line for line in out.splitlines() if int(line.split()[0]) not in mine]


def profile(kinds, n, args, top=15):
    """cProfile of 5 training sequences (B=--batch, T=--steps) of each model at N = ``n``, after
    2 untimed ones, in this process (--threads torch, numba and index threads); the top functions
    by tottime."""
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    result = {}
    for kind in kinds:
        model, opt, gen = bench._model_and_optimiser(kind, n, args.threads)
        for _ in range(2):
            bench.train_sequence(model, opt, args.steps, args.batch, gen)
        prof = cProfile.Profile()
        prof.enable()
        secs = [bench.train_sequence(model, opt, args.steps, args.batch, gen)[0] for _ in range(5)]
        prof.disable()
        text = io.StringIO()
        st = pstats.Stats(prof, stream=text).sort_stats("tottime")
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
        result[kind] = dict(n=n, sequences=5, ms_per_step=[1e3 * s / args.steps for s in secs],
                            top_tottime=[dict(function=f"{f[0]}:{f[1]}({f[2]})", ncalls=nc, tottime_s=tt,
                                              cumtime_s=ct) for f, (_, nc, tt, ct, _) in rows])
        print(f"\n{kind.upper()} N={n:,}: cProfile of 5 sequences, top {top} by tottime")
        st.print_stats(top)
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip()))
        del model, opt
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.figure7_arguments(p, out=os.path.join(HERE, "results"))
    p.add_argument("--profile", type=bench.positive_int, metavar="N",
                   help="after the run, profile the SDNC and SAM at this N (e.g. 1e6)")
    args = p.parse_args()
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))  # as in the workers
    machine = machine_info(args.threads)
    import torch

    machine.update(torch=torch.__version__, torch_threads_per_worker=args.threads)
    command = " ".join(["python", "benchmarks/figure7.py", *sys.argv[1:]])
    bench.figure7(args, machine=machine, command=command,
                  extra=dict(other_benchmarks_start=other_benchmarks()))
    path = os.path.join(args.out, "figure7.json")
    with open(path) as f:
        res = json.load(f)
    res["other_benchmarks_end"] = other_benchmarks()
    if args.profile:
        res["profile"] = profile([k for k in ("sdnc", "sam") if k in args.models], args.profile, args)
    write_json(path, res)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
