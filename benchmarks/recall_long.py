"""Associative recall with the curriculum past 1,000 steps per sequence: SAM, N = 1M, full BPTT.

    python benchmarks/recall_long.py [--seeds 0 1 2] [--max-level 1024] [--minutes 140] [--jobs 2]
                                     [--eval-levels 8 32 128 256 512 1024] [--ablate-levels 8 256]
                                     [--eval-batches 10]
                                     [--resume] [--eval-only] [--runs-dir runs] [--out-dir benchmarks/results]

What is run
  For every seed: ``samcpu train --task recall --model sam --slots 1000000 --max-level L --lr 3e-4
  --seed S --threads 1 --torch-threads 1 --minutes MIN --quiet --out RUNS/recall_long_sS`` (batch 8,
  LSTM 100, W=32, H=4, K=4, RMSProp, the exponential curriculum from 1 item), --jobs at a time, one
  core each. Recall episodes with n items of 3 steps take T = 4n + 8 steps, so 256 items are 1,032
  steps and 1,024 items 4,104. Every episode is a fresh memory and one backward pass through all of
  its steps (full BPTT, no truncation).
What is reported
  Per seed: episodes, wall minutes, the wall time at which the curriculum's maximum first reached each
  level (and so each maximum sequence length), and the bits error per sequence of the final model on
  fresh data (seed 10,000 + seed) at each of --eval-levels (items per episode; 18 target bits per
  sequence, so 9 is chance), and, as an ablation, at each of --ablate-levels with the network
  given zeros instead of its reads (near chance if the model uses its memory). ``recall_long.json``
  and ``recall_long.png`` (curriculum's maximum sequence length and the training bits error against
  wall time).
"""
import argparse
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from common import HERE, machine_info, write_json
from learning import ROOT, evaluate, read_metrics, train

from samcpu.tasks import make_task


@functools.cache
def steps_of(items):
    """Steps of a recall episode with ``items`` items, as the task lays it out."""
    task = make_task("recall", seed=0, max_items=max(items, 6))
    return int(task.sample(1, items).input.shape[0])


def milestones(cols):
    """Wall minutes and episode at which the curriculum's maximum first reached each level."""
    out = []
    levels = cols["max_level"]
    for level in np.unique(levels):
        i = int(np.argmax(levels >= level))
        out.append(dict(level=int(level), max_steps=steps_of(int(level)), episode=int(cols["episode"][i]),
                        minutes=float(cols["seconds"][i] / 60)))
    return out


def ms_by_length(cols):
    """Median ms per training step of the episodes whose item count lies in (L/2, L], for each
    power of two L: how the step's cost grows with the episode's length."""
    levels = cols["level"].astype(int)
    out = []
    for top in 2 ** np.arange(int(np.ceil(np.log2(levels.max()))) + 1):
        sel = (levels <= top) & (levels > top // 2)
        if sel.any():
            lo, hi = int(top // 2 + 1), int(top)
            out.append(dict(items=[lo, hi], steps=[steps_of(lo), steps_of(hi)], episodes=int(sel.sum()),
                            median_ms_per_step=float(np.median(cols["ms_per_step"][sel]))))
    return out


def markdown(runs):
    """The README's tables: one row per seed, then the fresh-data bits error per size."""
    lines = ["| seed | minutes | episodes | curriculum maximum (items / steps) | median ms per step |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['train_minutes']:.1f} | {r['episodes']:,d} | {r['final_max_level']} / "
              f"{r['final_max_steps']:,d} | {r['median_ms_per_step']:.2f} |" for r in runs]
    for key, what in (("eval", "fresh data"), ("eval_reads_zeroed", "fresh data, reads zeroed")):
        sizes = sorted({(e["items"], e["steps"]) for r in runs for e in r.get(key, [])})
        if not sizes:
            continue
        header = " | ".join(f"{n:,d} items ({t:,d} steps)" for n, t in sizes)
        lines += ["", f"| seed ({what}) | {header} |", "|---:|" + "---:|" * len(sizes)]
        for r in runs:
            by = {e["items"]: e for e in r.get(key, [])}
            cells = (f"{by[n]['bits_error']:.2f} ± {by[n]['bits_error_se']:.2f}" if n in by else "-"
                     for n, _ in sizes)
            lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs, curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    styles = ["-", "--", ":", "-."]
    for r, c in zip(runs, curves, strict=True):
        minutes = c["seconds"] / 60
        style = styles[r["seed"] % len(styles)]
        top.step(minutes, [steps_of(int(v)) for v in c["max_level"]], where="post", linestyle=style,
                 color="tab:blue", label=f"seed {r['seed']}")
        w = max(1, len(c["bits_error"]) // 200)
        smooth = np.convolve(c["bits_error"], np.ones(w) / w, mode="valid")
        bottom.plot(minutes[w - 1:], smooth, linestyle=style, color="tab:red",
                    label=f"seed {r['seed']} (mean of {w})")
    top.axhline(1000, color="grey", linewidth=0.8, label="1,000 steps")
    top.set_yscale("log")
    top.set_ylabel("longest episode in the curriculum (steps)")
    top.set_title("SAM, N = 1,000,000: associative recall, curriculum, full BPTT")
    top.legend(fontsize=8)
    bottom.set_yscale("symlog", linthresh=0.1)
    bottom.set_ylabel("training bits error per sequence")
    bottom.set_xlabel("wall time (minutes, one core)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-level", type=int, default=1024, help="most items per episode")
    p.add_argument("--minutes", type=float, default=140.0, help="wall-time budget per run")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-levels", type=int, nargs="+", default=[8, 32, 128, 256, 512, 1024])
    p.add_argument("--ablate-levels", type=int, nargs="*", default=[8, 256],
                   help="levels also evaluated with the reads zeroed (is the memory used?)")
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", action="store_true", help="evaluate and plot existing runs")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs"))
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    too_hard = [n for n in args.eval_levels + args.ablate_levels if n > args.max_level]
    if too_hard:
        p.error(f"--eval-levels/--ablate-levels {too_hard} exceed --max-level {args.max_level}")
    outs = {s: os.path.join(args.runs_dir, f"recall_long_s{s}") for s in args.seeds}
    started = time.time()
    failed = set()
    if not args.eval_only:
        extra = ("--max-level", str(args.max_level))
        with ThreadPoolExecutor(args.jobs) as pool:
            done = pool.map(lambda s: train(args, "recall", "sam", s, args.minutes, out=outs[s], extra=extra),
                            args.seeds)
            failed = {r["seed"] for r in done if r["returncode"] != 0}
    torch.set_num_threads(2)
    runs, curves = [], []
    for seed, out in outs.items():
        if seed in failed or not os.path.exists(os.path.join(out, "checkpoint.pt")):
            print(f"seed {seed}: no run (failed or missing)")
            continue
        ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
        c = read_metrics(out)
        if not len(c["episode"]):
            print(f"seed {seed}: no metrics yet")
            continue
        # the settings the run was trained with, from its checkpoint (it may have been
        # launched or resumed by hand with other --minutes)
        r = dict(seed=seed, out=out, trained_with=ck["args"], episodes=int(ck["episode"]),
                 train_minutes=float(c["seconds"][-1] / 60),
                 final_max_level=int(ck["curriculum"]["current"]),
                 final_max_steps=steps_of(int(ck["curriculum"]["current"])),
                 median_ms_per_step=float(np.median(c["ms_per_step"])), milestones=milestones(c),
                 ms_by_length=ms_by_length(c), eval=[], eval_reads_zeroed=[])
        print(f"seed {seed}: {r['episodes']:,d} episodes in {r['train_minutes']:.1f} min; curriculum maximum "
              f"{r['final_max_level']} items = {r['final_max_steps']:,d} steps; "
              f"median {r['median_ms_per_step']:.2f} ms/step")
        for m in r["ms_by_length"]:
            print(f"  episodes of {m['steps'][0]:5d}-{m['steps'][1]:5d} steps: "
                  f"median {m['median_ms_per_step']:.2f} ms/step ({m['episodes']:,d} episodes)")
        for m in r["milestones"]:
            print(f"  level {m['level']:5d} ({m['max_steps']:5d} steps) reached at episode "
                  f"{m['episode']:7,d}, {m['minutes']:6.1f} min")
        for key, levels, zero in (("eval", args.eval_levels, False),
                                  ("eval_reads_zeroed", args.ablate_levels, True)):
            for level in levels:
                e = evaluate(out, args.eval_batches, level, zero_reads=zero)
                r[key].append(dict(items=level, steps=e["eval_max_steps"], bits_error=e["eval_bits_error"],
                                   bits_error_se=e["eval_bits_error_se"], sequences=e["eval_sequences"]))
                print(f"  {'reads zeroed' if zero else 'fresh data'}, {level:5d} items "
                      f"({e['eval_max_steps']:5d} steps): bits error / sequence {e['eval_bits_error']:.3f} "
                      f"+- {e['eval_bits_error_se']:.3f} ({e['eval_sequences']} sequences)", flush=True)
        runs.append(r)
        curves.append(c)
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "recall_long.png")
    plot(runs, curves, png)
    path = os.path.join(args.out_dir, "recall_long.json")
    write_json(path, dict(machine=machine_info(1), args=vars(args), wall_minutes=(time.time() - started) / 60,
                          runs=runs))
    print(f"wrote {png}\nwrote {path}\n\n{markdown(runs)}")


if __name__ == "__main__":
    main()
