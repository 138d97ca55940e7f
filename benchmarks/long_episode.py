"""Where the time of a step goes as one long episode goes on (a trained recall model, forward only).

    python benchmarks/long_episode.py [--checkpoint benchmarks/results/recall_long/s2/checkpoint.pt]
                                      [--items 1024] [--chunk 500] [--threads 1] [--top 8]

What is run
  The checkpoint's model (SAM, its settings) on one fresh recall episode of --items items
  (4 n + 8 steps, batch as trained), forward only under no_grad, --chunk steps at a time with
  the state carried over, on --threads numba/index/torch threads. The last chunk is profiled
  with cProfile.
What is reported
  ms per step of each chunk, and the functions of the last chunk with the most own time (share
  of the chunk's profiled time). Writes ``results/long_episode.json``.
"""
import argparse
import cProfile
import os
import pstats
import time
from argparse import Namespace

import numba
import torch

from common import HERE, machine_info, write_json

from samcpu.train import build, task_of


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=os.path.join(HERE, "results", "recall_long", "s2", "checkpoint.pt"))
    p.add_argument("--items", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--out", default=os.path.join(HERE, "results", "long_episode.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    ck = torch.load(args.checkpoint, weights_only=True)
    a = Namespace(**{**ck["args"], "threads": args.threads})
    task = task_of(a, seed=5)
    model, _, _ = build(a, task)
    model.load_state_dict(ck["model"])
    x = task.sample(a.batch, args.items).input
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
    top = sorted(((v[2], f"{os.path.basename(k[0])}:{k[1]}({k[2]})") for k, v in st.stats.items()), reverse=True)
    top = [dict(function=name, own_s=t, share=t / total) for t, name in top[:args.top]]
    print(f"last chunk, {total:.3f} s profiled; most own time:")
    for t in top:
        print(f"  {t['share']:6.1%}  {t['own_s']:.3f} s  {t['function']}")
    write_json(args.out, dict(machine=machine_info(args.threads), args=vars(args), batch=a.batch, steps=T,
                              chunks=chunks, last_chunk_profiled_s=total, last_chunk_top=top))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
