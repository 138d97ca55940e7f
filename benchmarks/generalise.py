"""The paper's Figure 8: a SAM trained on associative recall, run forward on far longer episodes.

    python benchmarks/generalise.py [--runs runs/fig8/recall_long_s0 ...] [--steps 10000 50000 200000]
                                    [--batches 1] [--chunk 1000] [--threads 2] [--out FILE]

What is run
  For each run folder (a ``samcpu train --task recall`` run: its checkpoint.pt) and each length
  L of --steps: fresh associative-recall episodes of n = (L - 8) / 4 items (T = 4n + 8 steps,
  rounded down to whole items; the cue and the answer are drawn as in training), --batches
  batches of the run's batch size, drawn with seed 20,000 + the run's seed. The model runs
  forward only (torch.no_grad), --chunk steps at a time; after every chunk the memory's
  journal is dropped (``samcpu.nn.detach``: no backward pass needs it), so memory use stays that
  of the memory and its index. The model and its memory are the training ones: N = the run's
  slots (1M), the index with its defaults, --threads numba and index threads, one torch thread.
What is reported
  Per run and length: the bits error per sequence on the answer's 18 bits (chance: 9), its
  standard error over the sequences and each sequence's error (the same seed draws the same
  sequences, so two checkpoints can be compared sequence by sequence), the wall and CPU
  seconds of each batch (ms per step), the rows written and the index's state at the end, the
  curriculum's maximum the run had reached, its episodes, its curriculum threshold and what its
  resumes changed (learning rate, threshold, ...). Written to --out (default
  ``benchmarks/results/generalise.json``) after every length, so a run cut short keeps what it
  measured.
"""
import argparse
import math
import os
import time
from argparse import Namespace

import numba
import numpy as np
import torch

from common import HERE, learning_changes, machine_info, write_json
from recall_long import steps_of

from samcpu.nn import detach
from samcpu.tasks import bits_error
from samcpu.train import build, load_checkpoint, task_of


def items_for(steps):
    """Recall items whose episode is at most ``steps`` steps long (T = 4n + 8)."""
    return (steps - 8) // 4


def run_length(model, args, items, seed, batches, chunk):
    """Bits error per sequence and time of ``batches`` fresh batches of ``items`` items."""
    task = task_of(Namespace(**{**vars(args), "max_level": items}), seed=seed)
    errors, walls, cpus, steps, chance = [], [], [], 0, None
    for _ in range(batches):
        batch = task.sample(args.batch, items)
        x = batch.input
        steps = x.shape[0]
        state, outputs, at = None, [], []
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for s in range(0, steps, chunk):
                y, state = model(x[s:s + chunk], state)
                state = detach(state)  # no backward pass: the journal can go
                scored = (batch.mask[s:s + chunk] != 0).any(1)
                outputs.append(y[scored])  # the outputs at the answer's steps
                at.append(s + torch.nonzero(scored).flatten())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        y, at = torch.cat(outputs), torch.cat(at)
        target, mask = batch.target[at], batch.mask[at]
        errors.extend(bits_error(y[:, i:i + 1], target[:, i:i + 1], mask[:, i:i + 1])  # per sequence
                      for i in range(y.shape[1]))
        chance = float((mask != 0).sum(0)[0]) * target.shape[-1] / 2  # half the answer's bits
    memory = model.access.memory
    se = float(np.std(errors, ddof=1) / math.sqrt(len(errors))) if len(errors) > 1 else 0.0
    return dict(items=items, steps=int(steps), sequences=len(errors), bits_error=float(np.mean(errors)),
                bits_error_se=se, per_sequence=[float(e) for e in errors],  # to pair checkpoints
                chance=chance,
                wall_s=walls, cpu_s=cpus, ms_per_step=[1e3 * w / steps for w in walls],
                rows_written=int(sum(len(memory.written_rows(b)) for b in range(args.batch))),
                index=memory.index.stats() if hasattr(memory.index, "stats") else None)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+",
                   default=[os.path.join(HERE, "..", "runs", "fig8", f"recall_long_s{s}") for s in range(3)])
    p.add_argument("--steps", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "generalise.json"))
    args = p.parse_args()
    for name in ("chunk", "batches", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if items_for(min(args.steps)) < 3:  # the recall task's fewest items (its min_items)
        p.error(f"--steps must be at least 20 (recall episodes of 3 items or more), got {min(args.steps)}")
    torch.set_num_threads(1)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    out = dict(machine=machine_info(args.threads), command="python benchmarks/generalise.py " + " ".join(
        os.sys.argv[1:]), args=vars(args), runs=[])
    for folder in args.runs:
        ck = load_checkpoint(os.path.join(folder, "checkpoint.pt"))
        a = Namespace(**{**ck["args"], "threads": args.threads})
        if a.task != "recall":
            raise SystemExit(f"{folder}: a {a.task} run; generalisation is measured on recall runs")
        run = dict(folder=os.path.relpath(folder, os.path.join(HERE, "..")), seed=a.seed,
                   episodes=int(ck["episode"]), trained_max_items=int(ck["curriculum"]["current"]),
                   trained_max_steps=steps_of(int(ck["curriculum"]["current"])), slots=a.slots,
                   threshold=float(ck["curriculum"]["threshold"]), changes=learning_changes(ck), lengths=[])
        out["runs"].append(run)
        for steps in args.steps:
            model, _, _ = build(a, task_of(a, seed=0), args.threads)  # a fresh memory per length
            model.load_state_dict(ck["model"])
            model.eval()
            r = run_length(model, a, items_for(steps), 20_000 + a.seed, args.batches, args.chunk)
            run["lengths"].append(r)
            print(f"{run['folder']} (trained to {run['trained_max_steps']:,d} steps): {r['steps']:,d} steps, "
                  f"bits error {r['bits_error']:.2f} +- {r['bits_error_se']:.2f} (chance {r['chance']}), "
                  f"{np.median(r['ms_per_step']):.2f} ms/step, {r['rows_written']:,d} rows written",
                  flush=True)
            write_json(args.out, out)
            del model
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
