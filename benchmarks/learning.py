"""Learning curves as in the paper's Figure 2: SAM (1M slots) against DAM (64 slots) on copy,
associative recall and priority sort, several seeds, the same hyper-parameters; and the same
for the Sparse DNC (1M slots) against SAM and the DNC (64 slots), with the follow task:

    python benchmarks/learning.py [--tasks copy recall sort] [--minutes 12 4 4] [--seeds 0 1 2]
                                  [--models sam dam] [--jobs 2] [--lr 3e-4] [--eval-batches 50]
                                  [--resume] [--runs-dir runs/learning] [--out-dir benchmarks/results]
                                  [--name learning]
    python benchmarks/learning.py --models sdnc sam dnc --tasks follow follow8 copy recall --minutes 7 7 7 7 \
                                  --name learning_sdnc

A task name with a number is follow with that many hops (``follow8``: ``--task follow --hops 8``).

What is run
  For every task, model and seed: ``samcpu train --task T --model M --slots N --lr LR --seed S
  --threads 1 --torch-threads 1 --minutes MIN --quiet --out RUNS/T_M_sS`` (curriculum on, RMSProp,
  batch 8, LSTM 100, W=32, H=4, K=4: the CLI's defaults but for --lr), with N = 1,000,000 for SAM
  and 64 for DAM, --jobs runs at a time (one core each). Each run has the same wall-time budget
  (--minutes, one value per task); episodes reached are reported. --resume continues runs whose
  checkpoints exist in --runs-dir (their budgets add up).
What is reported
  Per run: episodes, wall minutes, final curriculum level, and the bits error per sequence of the
  final model on fresh data at full difficulty (the task's max level: copy lengths 1-20, recall
  3-6 items, sort 20 keys), the mean over --eval-batches batches of 8 drawn with a seed the run
  never saw (10,000 + seed), with its standard error. Curves: ``learning_<task>.png`` (bits error
  per sequence against episodes, mean over a sliding window, one line per run) and
  ``learning.json`` (``--name``). SDNC runs are also evaluated with every head reading by
  content alone (read modes forced to (0, 1, 0)): the read-mode ablation.
"""
import argparse
import csv
import gzip
import math
import os
import re
import subprocess
import sys
import time
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from common import HERE, machine_info, write_json

SLOTS = {"sam": 1_000_000, "dam": 64, "sdnc": 1_000_000, "dnc": 64}
COLOURS = {"sam": "tab:blue", "dam": "tab:orange", "sdnc": "tab:green", "dnc": "tab:red"}  # per model
STYLES = ["-", "--", ":", "-."]  # per seed
FLOOR = 1e-3  # log-scale plots show smaller means at this floor
ROOT = os.path.dirname(HERE)


def run_dir(args, task, model, seed):
    return os.path.join(args.runs_dir, f"{task}_{model}_s{seed}")


def train(args, task, model, seed, minutes, out=None, extra=()):
    """Run ``samcpu train`` for one task, model and seed in a subprocess (one core); ``extra``
    are further CLI arguments."""
    out = out or run_dir(args, task, model, seed)
    name, hops = re.fullmatch(r"(\D+)(\d*)", task).groups()  # "follow8": follow with --hops 8
    extra = (*extra, "--hops", hops) if hops else extra
    cmd = [sys.executable, "-m", "samcpu", "train", "--task", name, "--model", model,
           "--slots", str(SLOTS[model]), "--lr", str(args.lr), "--seed", str(seed), "--threads", "1",
           "--torch-threads", "1", "--minutes", str(minutes), "--steps", str(10**9), "--quiet", "--out", out,
           *extra]
    if args.resume and os.path.exists(os.path.join(out, "checkpoint.pt")):
        cmd.append("--resume")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    print(f"  {task:6s} {model} seed {seed}: {'done' if p.returncode == 0 else 'FAILED'} in "
          f"{wall / 60:.1f} min", flush=True)
    if p.returncode != 0:
        print(p.stdout[-2000:], file=sys.stderr)
    return dict(task=task, model=model, seed=seed, returncode=p.returncode, wall_s=wall, out=out)


def evaluate(out, batches, level=None, zero_reads=False, content_only=False):
    """Bits error per sequence of the checkpoint in ``out`` on fresh data at ``level`` (None:
    the task's full difficulty, as its training draws it without a curriculum). ``zero_reads``:
    an ablation, the network gets zeros instead of what it read from the memory (in the
    controller's input and in the output layer's). ``content_only``: the SDNC's read-mode
    ablation, every head reads by content alone (modes (0, 1, 0)), as SAM does."""
    from samcpu.tasks import bits_error
    from samcpu.train import build, task_of
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    a = Namespace(**ck["args"])
    task = task_of(a, seed=10_000 + a.seed)
    model, _, _ = build(a, task)
    model.load_state_dict(ck["model"])
    if zero_reads:  # the memory is still read and written; the network sees zeros instead
        model.reads_hook = torch.zeros_like
    if content_only:
        from samcpu.sdnc import content_only as only
        model.modes_hook = only
    errs, steps = [], 0
    with torch.no_grad():
        for _ in range(batches):
            b = task.sample(a.batch, level)
            y, _ = model(b.input)
            errs.append(bits_error(y, b.target, b.mask))
            steps = max(steps, b.input.shape[0])
    return dict(episodes=int(ck["episode"]), final_max_level=int(ck["curriculum"]["current"]),
                max_level=task.max_level, eval_bits_error=float(np.mean(errs)),
                eval_bits_error_se=(float(np.std(errs, ddof=1) / math.sqrt(len(errs))) if len(errs) > 1
                                    else 0.0),
                eval_sequences=batches * a.batch, eval_max_steps=int(steps))


def read_metrics(out):
    """The columns of a run's metrics.csv (else metrics.csv.gz, as committed) as float arrays, by
    name; empty arrays for a run with no episode yet."""
    path = os.path.join(out, "metrics.csv")
    opener = open
    if not os.path.exists(path):
        path, opener = path + ".gz", gzip.open
    try:
        with opener(path, "rt") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise SystemExit(f"{out}: no metrics.csv (or metrics.csv.gz)") from None
    from samcpu.train import CSV_FIELDS
    return {k: np.array([float(r[k]) for r in rows]) for k in CSV_FIELDS}


def read_curve(out):
    c = read_metrics(out)
    return c["episode"].astype(int), c["bits_error"], c["seconds"]


def plot(task, runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        ep, err, _ = read_curve(r["out"])
        w = max(1, min(2000, len(err) // 40))
        smooth = np.convolve(err, np.ones(w) / w, mode="valid")
        label = f"{r['model'].upper()} N={SLOTS[r['model']]:,d} seed {r['seed']} (mean of {w})"
        ax.plot(ep[w - 1:], np.maximum(smooth, FLOOR), color=COLOURS[r["model"]],
                linestyle=STYLES[r["seed"] % len(STYLES)], label=label)
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 2, None)
    ax.set_xlabel("episode (batch of 8 sequences)")
    ax.set_ylabel(f"bits error per sequence (training, sliding mean; floor {FLOOR:g})")
    models = " vs ".join(dict.fromkeys(r["model"].upper() for r in runs))
    ax.set_title(f"{task}: {models}, curriculum (levels drawn up to the current maximum)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["copy", "recall", "sort"])
    p.add_argument("--minutes", type=float, nargs="+", default=[12.0, 4.0, 4.0],
                   help="budget per run, per task")
    p.add_argument("--models", nargs="+", default=["sam", "dam"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", action="store_true", help="evaluate and plot existing runs")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "learning"))
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--name", default="learning",
                   help="the JSON (NAME.json) and plots (NAME_TASK.png); e.g. learning_sdnc for the SDNC's")
    args = p.parse_args()
    if len(args.minutes) == 1:
        args.minutes = args.minutes * len(args.tasks)
    if len(args.minutes) != len(args.tasks):
        p.error(f"--minutes needs one value or one per task ({len(args.tasks)}), got {len(args.minutes)}")
    for t in args.tasks:
        if re.fullmatch(r"(\D+)(\d*)", t) is None or (t[-1].isdigit() and not t.startswith("follow")):
            p.error(f"--tasks: {t!r} is not a task name (or followN, follow with N hops)")
    plan = [(t, m, s, mins) for t, mins in zip(args.tasks, args.minutes, strict=True) for s in args.seeds
            for m in args.models]
    os.makedirs(args.out_dir, exist_ok=True)
    started = time.time()
    if not args.eval_only:
        print(f"{len(plan)} runs, {args.jobs} at a time, lr {args.lr}", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            trained = list(pool.map(lambda x: train(args, *x), plan))
    else:
        trained = [dict(task=t, model=m, seed=s, returncode=0, out=run_dir(args, t, m, s))
                   for t, m, s, _ in plan]
    torch.set_num_threads(2)
    results = []
    print(f"\n{'task':7s}{'model':6s}{'seed':>5s}{'episodes':>10s}{'minutes':>9s}{'level':>8s}"
          f"{'fresh-data bits error / sequence':>36s}")
    for r in trained:
        if r["returncode"] != 0 or not os.path.exists(os.path.join(r["out"], "checkpoint.pt")):
            results.append({**r, "status": "failed"})
            continue
        r.update(evaluate(r["out"], args.eval_batches), status="ok")
        if r["model"] == "sdnc":  # the read-mode ablation: does the trained SDNC use its links?
            ablated = evaluate(r["out"], args.eval_batches, content_only=True)
            r.update(eval_bits_error_content_only=ablated["eval_bits_error"],
                     eval_bits_error_content_only_se=ablated["eval_bits_error_se"])
        _, _, secs = read_curve(r["out"])
        r["train_minutes"] = float(secs[-1] / 60) if len(secs) else 0.0
        results.append(r)
        print(f"{r['task']:7s}{r['model']:6s}{r['seed']:>5d}{r['episodes']:>10,d}{r['train_minutes']:>9.1f}"
              f"{r['final_max_level']:>5d}/{r['max_level']:<3d}{r['eval_bits_error']:>24.3f} "
              f"+- {r['eval_bits_error_se']:.3f}")
    for task in args.tasks:
        runs = [r for r in results if r["task"] == task and r["status"] == "ok"]
        if runs:
            png = os.path.join(args.out_dir, f"{args.name}_{task}.png")
            plot(task, runs, png)
            print(f"wrote {png}")
    out = dict(machine=machine_info(1), args=vars(args), wall_minutes=(time.time() - started) / 60,
               slots=SLOTS, runs=results)
    path = os.path.join(args.out_dir, f"{args.name}.json")
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
