"""Does a step cost more as an episode grows? Training steps of short and long recall episodes.

    python benchmarks/long_episode.py [--checkpoint benchmarks/results/recall_long/s2/checkpoint.pt]
                                      [--short 8] [--long 1024] [--repeats 3] [--threads 2]
                                      [--skip train profile] [--label after] [--out FILE]

Sections
  train    SAM as trained on long recall (the checkpoint's settings: N = 1M, B = 8, H = 4, K = 4,
           W = 32, LSTM 100), once untrained (fresh weights, the same seed) and once with the
           checkpoint's weights: the time of a training step (forward and backward through the
           whole episode, full BPTT; no optimiser update, so the model stays the same) on
           recall episodes of --short items (40 steps) and --long items (4,104 steps), per
           step. Short and long episodes alternate, --repeats times each, side by side; the
           short figure is the median over 40 episodes per repeat. Measured once on an
           otherwise idle machine ("quiet") and once beside one busy process (a pure-Python
           busy loop: "busy"). One torch thread; numba and the index's threads --threads.
           Reported: ms per step and the long/short ratio (issue 14's targets: <= 1.5 quiet,
           <= 2 busy).
  profile  The trained model, forward only, one long episode in chunks of --chunk steps:
           ms per step per chunk, and the functions of the last chunk with the most own time.
Writes ``results/long_episode.json``: each section's result under --label ("before": the index
of commit 797c908, run from a checkout of it with PYTHONPATH; "after": this tree). Results of
other labels and of skipped sections are kept.
"""
import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from argparse import Namespace

import numba
import numpy as np
import torch

from common import HERE, machine_info, write_json

from samcpu.train import build, episode_loss, task_of

try:
    from samcpu.train import load_checkpoint
except ImportError:  # the "before" tree (797c908) has no checksummed checkpoints
    def load_checkpoint(path):
        return torch.load(path, weights_only=True)


def load_model(checkpoint, threads, trained):
    """(model, args, task) of the checkpoint's run; fresh weights unless ``trained``."""
    ck = load_checkpoint(checkpoint)
    a = Namespace(**{**ck["args"], "threads": threads})
    task = task_of(a, seed=5)
    model, _, _ = build(a, task)
    if trained:
        model.load_state_dict(ck["model"])
    return model, a, task


def train_step_seconds(model, batch):
    """(wall, CPU) seconds of one forward + backward pass over ``batch`` (full BPTT); CPU time
    is this process's, all threads, so it counts the work whatever else shares the machine."""
    model.zero_grad(set_to_none=True)
    t0, c0 = time.perf_counter(), time.process_time()
    loss, _ = episode_loss(model, batch)
    loss.backward()
    return time.perf_counter() - t0, time.process_time() - c0


def busy_process():
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def train_section(args):
    rows = []
    for trained in (False, True):
        model, a, task = load_model(args.checkpoint, args.threads, trained)
        for load in ("quiet", "busy"):
            busy = busy_process() if load == "busy" else None
            try:
                time.sleep(0.5)
                loadavg = os.getloadavg()
                short_ms, long_ms, short_cpu, long_cpu = [], [], [], []
                short = [task.sample(a.batch, args.short) for _ in range(40)]
                train_step_seconds(model, short[0])  # warm up: compile, first allocations
                for _ in range(args.repeats):
                    per = np.array([train_step_seconds(model, x) for x in short]) / short[0].input.shape[0]
                    short_ms.append(1e3 * float(np.median(per[:, 0])))
                    short_cpu.append(1e3 * float(np.median(per[:, 1])))
                    x = task.sample(a.batch, args.long)
                    wall, cpu = train_step_seconds(model, x)
                    long_ms.append(1e3 * wall / x.input.shape[0])
                    long_cpu.append(1e3 * cpu / x.input.shape[0])
                    print(f"{'trained' if trained else 'untrained':9s} {load:5s} short "
                          f"{short_ms[-1]:6.2f} ms/step ({short_cpu[-1]:6.2f} CPU)  long {long_ms[-1]:6.2f} "
                          f"ms/step ({long_cpu[-1]:6.2f} CPU)", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            rows.append(dict(model="trained" if trained else "untrained", load=load,
                             short_steps=int(short[0].input.shape[0]), long_steps=int(x.input.shape[0]),
                             short_ms=short_ms, long_ms=long_ms,
                             short_ms_median=float(np.median(short_ms)),
                             long_ms_median=float(np.median(long_ms)),
                             ratio=float(np.median(long_ms) / np.median(short_ms)),
                             short_cpu_ms=short_cpu, long_cpu_ms=long_cpu,
                             cpu_ratio=float(np.median(long_cpu) / np.median(short_cpu)),
                             index=model.access.memory.index.stats(), loadavg_before=loadavg,
                             loadavg_after=os.getloadavg()))
    return dict(batch=a.batch, slots=a.slots, rows=rows)


def profile_section(args):
    model, a, task = load_model(args.checkpoint, args.threads, True)
    x = task.sample(a.batch, args.long).input
    T = x.shape[0]
    chunks, state, prof = [], None, cProfile.Profile()
    with torch.no_grad():
        for s in range(0, T, args.chunk):
            last = s + args.chunk >= T
            t0 = time.perf_counter()
            if last:
                prof.enable()
            _, state = model(x[s:s + args.chunk], state)
            if last:
                prof.disable()
            n = min(args.chunk, T - s)
            chunks.append(dict(first_step=s, steps=n, ms_per_step=1e3 * (time.perf_counter() - t0) / n))
            print(f"steps {s:5d}-{s + n - 1:5d}: {chunks[-1]['ms_per_step']:.2f} ms/step", flush=True)
    st = pstats.Stats(prof)
    total = st.total_tt
    top = sorted(((v[2], f"{os.path.basename(k[0])}:{k[1]}({k[2]})") for k, v in st.stats.items()),
                 reverse=True)
    top = [dict(function=name, own_s=t, share=t / total) for t, name in top[:args.top]]
    print(f"last chunk, {total:.3f} s profiled; most own time:")
    for t in top:
        print(f"  {t['share']:6.1%}  {t['own_s']:.3f} s  {t['function']}")
    index = model.access.memory.index
    return dict(batch=a.batch, steps=T, chunks=chunks, last_chunk_profiled_s=total, last_chunk_top=top,
                index=index.stats() if hasattr(index, "stats") else None)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint",
                   default=os.path.join(HERE, "results", "recall_long", "s2", "checkpoint.pt"))
    p.add_argument("--short", type=int, default=8, help="items of a short episode (8: 40 steps)")
    p.add_argument("--long", type=int, default=1024, help="items of a long episode (1024: 4,104 steps)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--threads", type=int, default=2, help="numba and index threads (torch: 1)")
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "profile"])
    p.add_argument("--label", default="after", help="the name the results are stored under")
    p.add_argument("--out", default=os.path.join(HERE, "results", "long_episode.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(args.threads)
    res = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            res = json.load(f)
        if "train" in res and "rows" in res["train"] or "chunks" in res:  # an older layout
            res = {}
    for section, run in (("train", train_section), ("profile", profile_section)):
        if section not in args.skip:
            res.setdefault(section, {})[args.label] = dict(machine=machine_info(args.threads),
                                                           args=vars(args), **run(args))
    print("\n| index | model | load | short ms/step | long ms/step | long / short | CPU long / short |")
    print("|---|---|---|---|---|---|---|")
    for label, run in res.get("train", {}).items():
        for r in run["rows"]:
            print(f"| {label} | {r['model']} | {r['load']} | {r['short_ms_median']:.2f} "
                  f"| {r['long_ms_median']:.2f} | {r['ratio']:.2f} | {r.get('cpu_ratio', np.nan):.2f} |")
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
