"""bAbI-format and Omniglot-layout learning runs on SYNTHETIC data (issue 15): several seeds, a
sparse model against a dense one, the same hyper-parameters and wall time.

    python benchmarks/synthetic_tasks.py [--tasks babi omniglot] [--models sdnc dam] [--seeds 0 1 2]
                                         [--minutes 20 20] [--jobs 2] [--lr 1e-3] [--resume]
                                         [--eval-only] [--data-dir runs/synthetic_data]
                                         [--runs-dir runs/synthetic] [--out-dir benchmarks/results]

SYNTHETIC: the data are made here by samcpu's generators (``python -m
samcpu.tasks.synthetic_babi DIR --questions-per-story 1`` for bAbI tasks 1, 2, 3 and 6, ``python
-m samcpu.tasks.synthetic_omniglot DIR`` for stroke-drawn glyphs), in the real data sets' file
formats, because bAbI and Omniglot cannot be downloaded on these machines. Nothing this script
writes is a result on bAbI or Omniglot, and the JSON, table and plots say so. On the real data
sets, the same runs are ``samcpu train --task babi --data tasks_1-20_v1-2/en-10k`` and
``samcpu train --task omniglot --data omniglot/``.

What is run
  For every task, model and seed: ``samcpu train --task T --data DIR --model M --slots N --lr LR
  --seed S --threads 1 --torch-threads 1 --minutes MIN --quiet --out RUNS/T_M_sS`` (the CLI's
  defaults otherwise), N = 1,000,000 for SAM and the SDNC, 64 for DAM and the DNC, --jobs runs
  at a time (one core each), the same wall-time budget per task. --resume continues runs whose
  checkpoints exist (their budgets add up).
What is reported
  bAbI: the test error per task and the failed tasks (error > 5%) from each run's ``eval.json``
  (written by ``samcpu train`` at the end of the run), against the error of always giving the
  most frequent training answer of the task. Omniglot: the test error by presentation (1st,
  2nd, ... showing of a character in an episode) at the run's final curriculum level. Curves:
  ``synthetic_<task>.png`` (training error against episodes, one line per run) and
  ``synthetic_tasks.json``.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from collections import Counter

import numpy as np

from common import HERE, machine_info, write_json
from learning import COLOURS, ROOT, STYLES, run_dir, train

from samcpu.train import load_checkpoint

SYNTHETIC = ("Every figure in this file is on SYNTHETIC data made by samcpu's generators "
             "(samcpu.tasks.synthetic_babi, samcpu.tasks.synthetic_omniglot): stories in the bAbI file "
             "format and stroke-drawn glyphs in Omniglot's folder layout. They are NOT results on bAbI or "
             "Omniglot and must never be presented as such.")
GENERATORS = {"babi": ["samcpu.tasks.synthetic_babi", "--questions-per-story", "1"],
              "omniglot": ["samcpu.tasks.synthetic_omniglot"]}


def make_data(task, folder, seed=0):
    """The task's SYNTHETIC folder, generated once (an existing folder is used as it is)."""
    if os.path.isdir(folder) and os.listdir(folder):
        return folder
    cmd = [sys.executable, "-m", *GENERATORS[task][:1], folder, *GENERATORS[task][1:], "--seed", str(seed)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return folder


def majority_error(folder):
    """Per bAbI task: the test error of always answering the most frequent training answer."""
    from samcpu.tasks.babi import read_babi

    data = read_babi(folder)
    out = {}
    for task in sorted(data.train):
        answers = Counter(q.answer for s in data.train[task] for q in s.questions)
        best = answers.most_common(1)[0][0]
        test = [q.answer for s in data.test[task] for q in s.questions]
        out[str(task)] = float(np.mean([a != best for a in test]))
    return out


def curve(out, columns=("episode", "error", "seconds", "max_level")):
    """Columns of a run's metrics.csv (default: episodes, training error (a share of wrong
    answers), seconds and curriculum maximum)."""
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return tuple(np.array([float(r[k]) for r in rows]) for k in columns)


def plot(task, runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    two = task == "omniglot"
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(12 if two else 8, 4.5), squeeze=False)
    ax = axes[0, 0]
    for r in runs:
        ep, err, _, _ = curve(r["out"])
        w = max(1, min(500, len(err) // 20))
        ax.plot(ep[w - 1:], np.convolve(err, np.ones(w) / w, mode="valid"), color=COLOURS[r["model"]],
                linestyle=STYLES[r["seed"] % len(STYLES)], label=f"{r['model'].upper()} seed {r['seed']}")
    ax.set_xlabel("episode (batch of 8)")
    ax.set_ylabel("training error (share of answers, sliding mean)")
    ax.set_title(f"SYNTHETIC {task}-format data: training error")
    ax.legend(fontsize=8)
    if task == "omniglot":
        ax = axes[0, 1]
        for r in runs:
            by = r.get("eval", {}).get("error_by_presentation")
            if by:
                ax.plot(range(1, len(by) + 1), by, marker="o", color=COLOURS[r["model"]],
                        linestyle=STYLES[r["seed"] % len(STYLES)],
                        label=f"{r['model'].upper()} seed {r['seed']}, {r['eval'].get('characters')} "
                              "characters")
        ax.set_xlabel("presentation of the character in the episode")
        ax.set_ylabel("test error")
        ax.set_title("SYNTHETIC glyphs: one-shot test error by presentation")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["babi", "omniglot"], choices=["babi", "omniglot"])
    p.add_argument("--models", nargs="+", default=["sdnc", "dam"], choices=["sam", "dam", "sdnc", "dnc"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, nargs="+", default=[20.0, 20.0], help="budget per run, per task")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", action="store_true", help="report the existing runs")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "runs", "synthetic_data"))
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "synthetic"))
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    if len(args.minutes) == 1:
        args.minutes = args.minutes * len(args.tasks)
    if len(args.minutes) != len(args.tasks):
        p.error(f"--minutes needs one value or one per task ({len(args.tasks)}), got {len(args.minutes)}")
    data = {t: make_data(t, os.path.join(args.data_dir, t)) for t in args.tasks}
    plan = [(t, m, s, mins) for t, mins in zip(args.tasks, args.minutes, strict=True) for s in args.seeds
            for m in args.models]
    started = time.time()
    run_args = Namespace(lr=args.lr, resume=args.resume, runs_dir=args.runs_dir)
    if args.eval_only:
        trained = [dict(task=t, model=m, seed=s, returncode=0, out=run_dir(args, t, m, s))
                   for t, m, s, _ in plan]
    else:
        print(f"{len(plan)} runs, {args.jobs} at a time, lr {args.lr}; SYNTHETIC data in {args.data_dir}",
              flush=True)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(args.jobs) as pool:
            trained = list(pool.map(lambda x: train(run_args, *x, extra=("--data", data[x[0]])), plan))
    runs = []
    for r in trained:
        path = os.path.join(r["out"], "eval.json")
        if r["returncode"] != 0 or not os.path.exists(path):
            runs.append({**r, "status": "failed"})
            continue
        with open(path) as f:
            r["eval"] = json.load(f)
        ep, err, secs, level = curve(r["out"])
        if not len(ep):
            runs.append({**r, "status": "failed", "why": "no metric rows"})
            continue
        tail = err[-max(1, len(err) // 10):]
        (ms,) = curve(r["out"], ("ms_per_step",))
        ck = load_checkpoint(os.path.join(r["out"], "checkpoint.pt"))
        r.update(status="ok", episodes=int(ep[-1]), train_minutes=float(secs[-1] / 60),
                 final_max_level=int(level[-1]), train_error_last_tenth=float(tail.mean()),
                 median_ms_per_step=float(np.median(ms)),
                 trained_with={k: v for k, v in ck["args"].items() if k not in ("command", "quiet")})
        runs.append(r)
    print(f"\nSYNTHETIC data (not bAbI, not Omniglot)\n{'task':9s}{'model':6s}{'seed':>5s}{'episodes':>10s}"
          f"{'minutes':>9s}  test error")
    for r in runs:
        if r["status"] != "ok":
            print(f"{r['task']:9s}{r['model']:6s}{r['seed']:>5d}  failed")
            continue
        e = r["eval"]
        if r["task"] == "babi":
            cells = " ".join(f"{t}:{100 * v['error']:.1f}%" for t, v in e["per_task"].items())
            what = f"per task {cells}; mean {100 * e['mean_error']:.1f}%, failed {e['failed_tasks']}"
        else:
            cells = " ".join(f"{100 * x:.0f}" for x in e["error_by_presentation"])
            what = f"{e['characters']} characters, % by presentation {cells}"
        print(f"{r['task']:9s}{r['model']:6s}{r['seed']:>5d}{r['episodes']:>10,d}"
              f"{r['train_minutes']:>9.1f}  {what}")
    out = dict(SYNTHETIC=SYNTHETIC, synthetic=True, machine=machine_info(1), args=vars(args),
               command="python benchmarks/synthetic_tasks.py " + " ".join(sys.argv[1:]),
               # with --eval-only: the runs were trained by the same command without it
               train_command=("python benchmarks/synthetic_tasks.py "
                              + " ".join(a for a in sys.argv[1:] if a != "--eval-only")),
               wall_minutes=(time.time() - started) / 60,
               data={t: os.path.relpath(d, ROOT) for t, d in data.items()}, runs=runs)
    if "babi" in data:
        out["babi_majority_answer_test_error"] = majority_error(data["babi"])
    os.makedirs(args.out_dir, exist_ok=True)
    for task in args.tasks:
        done = [r for r in runs if r["task"] == task and r["status"] == "ok"]
        if done:
            plot(task, done, os.path.join(args.out_dir, f"synthetic_{task}.png"))
    path = os.path.join(args.out_dir, "synthetic_tasks.json")
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
