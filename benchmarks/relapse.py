"""Does copy training relapse once solved? A training loop that logs what the optimiser does, and
the criterion of issue 14 computed from its CSVs.

    python benchmarks/relapse.py train --out DIR [--seed 0] [--slots 1e6] [--index hnsw]
        [--lr 3e-4] [--momentum 0.9] [--eps 1e-10] [--clip 10] [--curriculum mean|hard]
        [--minutes 40] [--after-solve 20] [--resume]
    python benchmarks/relapse.py report --runs DIR [DIR ...] --name NAME [--after-solve 20]

``train`` is ``samcpu train --task copy --model sam`` (the same model, task, batch, random
streams and order of operations: ``samcpu.train.build`` makes the model) with the optimiser's
settings as options, one torch and numba thread, and more columns in ``metrics.csv``:
``grad_norm`` (the gradient's norm before clipping), ``update_norm`` (the norm of the change
the optimiser step made to the parameters), ``step_rms`` (root mean square over all parameters
of the RMSProp direction g / (sqrt(v) + eps) before momentum) and ``v_rms`` (root mean square of
sqrt(v), RMSProp's running gradient scale). It stops after ``--minutes`` of training or
``--after-solve`` minutes after the criterion's start (below). Checkpoints every 200 episodes
(``--resume`` goes on from one, the CSV cut back to it).

The criterion (issue 14): t0 is the first time the mean bits error per sequence over the last
1,000 episodes falls below 0.1; from t0 to t0 + 20 minutes of training, no 1,000-episode window
(every window ending in that span, sliding by one episode) may have a mean above 1 bit. ``report``
computes it for each run from its CSV, writes ``NAME.json`` and ``NAME.png`` (sliding means,
curriculum level, gradient norm, RMSProp's scale) under benchmarks/results/relapse/, and a
gzipped copy of each CSV. ``diagnose`` lists a run's relapses (100-episode blocks above 1 bit
right after one below 0.1) with the largest gradient norm before each and whether the curriculum's
maximum had just risen, and plots the episodes around one (``--zoom``).

The committed results (one process at a time, NUMBA_NUM_THREADS=1, machine shared):
    # before: the settings of samcpu train (RMSProp lr 3e-4, momentum 0.9, eps 1e-10, clip 10)
    train --out R/base_s1 --seed 1 --index exact --curriculum mean --minutes 6   (stopped at 3.1)
    train --out R/lr1e-4_s1 --seed 1 --index exact --curriculum mean --lr 1e-4 --minutes 7
    diagnose --run R/base_s1 --name diag_before --zoom 5330 --half 200
    report --runs R/base_s1 R/lr1e-4_s1 --name before --copy-csv
    # after: the curriculum on its hardest levels, lr halved at each pass at the top (floor 1/16)
    train --out R/anneal_sS --seed S --index exact --curriculum hard --anneal 0.5 --after-solve 20
          --minutes 36                  (S = 0, 1, 2; seed 1 ran 9 minutes, then --resume --minutes 40)
    report --runs R/anneal_s0 R/anneal_s1 R/anneal_s2 --name after --copy-csv
    # ablation: the same without annealing
    train --out R/noanneal_s1 --seed 1 --index exact --curriculum hard --anneal 1 --minutes 15
"""
import argparse
import csv
import gzip
import json
import math
import os
import shutil
import sys
import time
from argparse import Namespace
from collections import deque

import numpy as np
import torch

from common import HERE, machine_info, write_json

ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

FIELDS = ["episode", "level", "max_level", "length", "loss", "bits_error", "ms_per_step", "seconds",
          "grad_norm", "update_norm", "step_rms", "v_rms", "lr"]
WINDOW = 1000
SOLVED = 0.1
RELAPSE = 1.0
RESULTS = os.path.join(HERE, "results", "relapse")


# ------------------------------------------------------------------ training

def model_args(a):
    """The Namespace ``samcpu.train.build`` and ``task_of`` read (the CLI's defaults but for ``a``)."""
    return Namespace(task="copy", model="sam", max_level=None, slots=a.slots, batch=8, hidden=100,
                     word=32, heads=4, k=4, index=a.index, threads=1, lr=a.lr, momentum=a.momentum,
                     clip=a.clip, curriculum=True, threshold=a.threshold, patience=a.patience,
                     seed=a.seed)


def make_curriculum(a, task):
    from samcpu.tasks import Curriculum
    if a.curriculum == "mean":  # the old rule: the mean over all levels drawn
        return Curriculum(task.max_level, threshold=a.threshold, patience=a.patience, hard_fraction=None)
    return Curriculum(task.max_level, threshold=a.threshold, patience=a.patience)


def direction_stats(opt):
    """(rms of g / (sqrt(v) + eps), rms of sqrt(v)) over every parameter, after a step."""
    num = den = vs = 0.0
    count = 0
    for group in opt.param_groups:
        eps = group["eps"]
        for p in group["params"]:
            st = opt.state.get(p)
            if p.grad is None or not st or "square_avg" not in st:
                continue
            root = st["square_avg"].sqrt()
            num += float(((p.grad / (root + eps)) ** 2).sum())
            vs += float(st["square_avg"].sum())
            count += p.numel()
    del den
    return math.sqrt(num / max(count, 1)), math.sqrt(vs / max(count, 1))


def read_rows(path):
    if not os.path.exists(path):
        return []
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return list(csv.DictReader(f))


def run_train(a):
    import numba

    from samcpu.tasks import bits_error
    from samcpu.train import build, episode_loss, load_checkpoint, save_checkpoint, task_of

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    ckpt_path, csv_path = os.path.join(a.out, "checkpoint.pt"), os.path.join(a.out, "metrics.csv")
    margs = model_args(a)
    task = task_of(margs, seed=a.seed)
    model, _, _ = build(margs, task)
    opt = torch.optim.RMSprop(model.parameters(), lr=a.lr, momentum=a.momentum, eps=a.eps,
                              alpha=a.alpha)
    curriculum = make_curriculum(a, task)
    levels = np.random.default_rng(a.seed + 1)
    episode, elapsed, solved_at = 0, 0.0, None
    window = deque(maxlen=WINDOW)
    if a.resume:
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        curriculum.load_state_dict(ck["curriculum"])
        task.rng.bit_generator.state = ck["task_rng"]
        levels.bit_generator.state = ck["level_rng"]
        torch.set_rng_state(ck["torch_rng"])
        episode, elapsed, solved_at = ck["episode"], ck["seconds"], ck["solved_at"]
        rows = [r for r in read_rows(csv_path) if int(r["episode"]) <= episode]
        window.extend(float(r["bits_error"]) for r in rows[-WINDOW:])
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)
    else:
        with open(csv_path, "w", newline="") as f:
            csv.DictWriter(f, FIELDS).writeheader()
    start = time.perf_counter()

    def seconds():
        return elapsed + time.perf_counter() - start

    def checkpoint():
        save_checkpoint(ckpt_path, dict(
            model=model.state_dict(), optimizer=opt.state_dict(), curriculum=curriculum.state_dict(),
            task_rng=task.rng.bit_generator.state, level_rng=levels.bit_generator.state,
            torch_rng=torch.get_rng_state(), episode=episode, seconds=seconds(), solved_at=solved_at,
            args=vars(a)))

    params = list(model.parameters())
    with open(csv_path, "a", newline="") as out:
        writer = csv.DictWriter(out, FIELDS)
        try:
            while True:
                level = curriculum.sample_level(levels)
                batch = task.sample(8, level)
                t0 = time.perf_counter()
                loss, logits = episode_loss(model, batch)
                opt.zero_grad()
                loss.backward()
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, a.clip))
                before = [p.detach().clone() for p in params]
                opt.step()
                ms = 1e3 * (time.perf_counter() - t0) / batch.input.shape[0]
                unorm = math.sqrt(sum(float(((p.detach() - b) ** 2).sum())
                                      for p, b in zip(params, before, strict=True)))
                step_rms, v_rms = direction_stats(opt)
                bits = bits_error(logits, batch.target, batch.mask)
                curriculum.update(bits, level)
                if a.anneal < 1:  # the hardest levels solved again at the top: a smaller step
                    for group in opt.param_groups:
                        group["lr"] = a.lr * max(a.anneal_floor, a.anneal ** curriculum.solved_at_max)
                episode += 1
                window.append(bits)
                now = seconds()
                if solved_at is None and len(window) == WINDOW and sum(window) / WINDOW < SOLVED:
                    solved_at = now
                writer.writerow(dict(
                    episode=episode, level=level, max_level=curriculum.current,
                    length=(batch.input.shape[0] - 1) // 2, loss=f"{loss.item():.5g}",
                    bits_error=f"{bits:.4g}", ms_per_step=f"{ms:.3g}", seconds=f"{now:.2f}",
                    grad_norm=f"{gnorm:.4g}", update_norm=f"{unorm:.4g}", step_rms=f"{step_rms:.4g}",
                    v_rms=f"{v_rms:.4g}", lr=f"{opt.param_groups[0]['lr']:.3g}"))
                if episode % 200 == 0:
                    out.flush()
                    checkpoint()
                    if episode % 2000 == 0:
                        when = "-" if solved_at is None else f"{solved_at / 60:.1f} min"
                        print(f"episode {episode} {now / 60:.1f} min level {curriculum.current} mean "
                              f"bits ({len(window)}) {sum(window) / len(window):.3f} solved_at {when}",
                              flush=True)
                done = solved_at is not None and now > solved_at + 60 * a.after_solve + 5
                if now > 60 * a.minutes or done:
                    break
        finally:
            checkpoint()
    print(f"stopped at episode {episode}, {seconds() / 60:.1f} min", flush=True)


# ------------------------------------------------------------------ criterion and report

def sliding_mean(x, w):
    c = np.concatenate([[0.0], np.cumsum(x)])
    out = np.full(len(x), np.nan)
    out[w - 1:] = (c[w:] - c[:-w]) / w
    return out


def criterion(rows, after_minutes, window=WINDOW):
    """The issue's criterion on one run's CSV rows: see the module docstring."""
    bits = np.array([float(r["bits_error"]) for r in rows])
    secs = np.array([float(r["seconds"]) for r in rows])
    ep = np.array([int(r["episode"]) for r in rows])
    mean = sliding_mean(bits, window)
    below = np.flatnonzero(mean < SOLVED)
    res = dict(episodes=int(ep[-1]) if len(ep) else 0, minutes=float(secs[-1] / 60) if len(secs) else 0.0,
               window=window, solved_below=SOLVED, relapse_above=RELAPSE, after_minutes=after_minutes)
    # 100-episode blocks above 1 bit after the first one under 0.1 (the first count)
    m100 = sliding_mean(bits, 100)[99::100]
    first100 = np.flatnonzero(m100 < SOLVED)
    res["blocks100_above_1_after_first_below_01"] = (
        int((m100[first100[0]:] > RELAPSE).sum()) if len(first100) else None)
    if not len(below):
        return {**res, "solved": False, "passed": None}
    i0 = int(below[0])
    span = (secs > secs[i0]) & (secs <= secs[i0] + 60 * after_minutes)
    covered = bool(secs[-1] >= secs[i0] + 60 * after_minutes)
    bad = np.flatnonzero(span & (mean > RELAPSE))
    worst = float(np.nanmax(mean[span])) if span.any() else None
    res.update(solved=True, solved_episode=int(ep[i0]), solved_minutes=float(secs[i0] / 60),
               level_at_solved=int(rows[i0]["max_level"]), covered=covered,
               episodes_in_span=int(span.sum()), worst_window_mean=worst,
               windows_above=int(len(bad)),
               first_window_above_episode=int(ep[bad[0]]) if len(bad) else None,
               passed=bool(covered and not len(bad)))
    return res


def plot(runs, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    for k, (label, rows, res) in enumerate(runs):
        colour = f"C{k}"
        mins = np.array([float(r["seconds"]) for r in rows]) / 60
        bits = np.array([float(r["bits_error"]) for r in rows])
        axes[0].plot(mins, np.maximum(sliding_mean(bits, 100), 1e-3), color=colour, lw=0.5, alpha=0.4)
        verdict = "PASS" if res.get("passed") else "fail" if res.get("solved") else "unsolved"
        axes[0].plot(mins, np.maximum(sliding_mean(bits, WINDOW), 1e-3), color=colour, lw=1.5,
                     label=f"{label}: {verdict}")
        if res.get("solved"):
            axes[0].axvspan(res["solved_minutes"], res["solved_minutes"] + res["after_minutes"],
                            color=colour, alpha=0.07)
        axes[1].step(mins, [int(r["max_level"]) for r in rows], color=colour, where="post")
        if "grad_norm" in rows[0]:  # this script's training loop (samcpu train's CSV has none)
            g = np.array([float(r["grad_norm"]) for r in rows])
            axes[2].plot(mins, sliding_mean(g, 100), color=colour, lw=1)
            v = np.array([float(r["v_rms"]) for r in rows])
            axes[2].plot(mins, v, color=colour, lw=0.8, ls=":")
        if "lr" in rows[0]:
            axes[3].plot(mins, [float(r["lr"]) for r in rows], color=colour)
        if "update_norm" in rows[0]:
            axes[3].plot(mins, sliding_mean(np.array([float(r["update_norm"]) for r in rows]), 100),
                         color=colour, lw=0.8, ls=":")
    axes[0].axhline(SOLVED, color="k", lw=0.5, ls="--")
    axes[0].axhline(RELAPSE, color="r", lw=0.5, ls="--")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("bits error / sequence\n(thick: mean of 1,000; thin: of 100)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(title, fontsize=9)
    axes[1].set_ylabel("curriculum maximum")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("grad norm (mean of 100, solid)\nRMSProp rms sqrt(v) (dotted)")
    axes[3].set_yscale("log")
    axes[3].set_ylabel("learning rate (solid)\nupdate norm, mean of 100 (dotted)")
    axes[3].set_xlabel("training minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def diagnose(rows, block=100):
    """Relapses of one run, block by block: a block of ``block`` episodes with mean bits error
    above 1 right after one below 0.1. For each, what the quiet block before it held (largest
    gradient norm before clipping, share clipped, mean update norm) and whether the curriculum's
    maximum changed in the 2 blocks before; the same figures for quiet blocks followed by a quiet
    block, to compare."""
    f = {k: np.array([float(r[k]) for r in rows]) for k in ("bits_error", "grad_norm", "update_norm",
                                                               "step_rms", "max_level", "episode")}
    n = len(rows) // block
    cut = {k: v[:n * block].reshape(n, block) for k, v in f.items()}
    mean = cut["bits_error"].mean(1)
    info = [dict(end_episode=int(cut["episode"][i, -1]), mean_bits=float(mean[i]),
                 max_grad_norm=float(cut["grad_norm"][i].max()),
                 share_grad_norm_over_100=float((cut["grad_norm"][i] > 100).mean()),
                 mean_update_norm=float(cut["update_norm"][i].mean()),
                 max_update_norm=float(cut["update_norm"][i].max()),
                 max_step_rms=float(cut["step_rms"][i].max()),
                 max_level=int(cut["max_level"][i, -1])) for i in range(n)]
    relapses, calm = [], []
    for i in range(1, n):
        if mean[i - 1] < SOLVED:
            (relapses if mean[i] > RELAPSE else calm if mean[i] < SOLVED else []).append(i)

    def level_rose(i):
        lo = max(0, i - 2)
        return bool(cut["max_level"][lo:i + 1].max() > cut["max_level"][lo, 0])

    def summary(idx):
        if not idx:
            return None
        g = np.array([info[i - 1]["max_grad_norm"] for i in idx])
        def med(key):
            return float(np.median([info[i][key] for i in idx]))
        return dict(count=len(idx), median_max_grad_norm_before=float(np.median(g)),
                    median_max_grad_norm_in_block=med("max_grad_norm"),
                    median_max_step_rms_in_block=med("max_step_rms"),
                    median_max_update_norm_in_block=med("max_update_norm"),
                    share_with_grad_norm_over_100_before=float((g > 100).mean()),
                    share_after_a_level_rise=float(np.mean([level_rose(i) for i in idx])))
    events = [dict(block=info[i], quiet_block_before=info[i - 1], level_rose_in_last_2_blocks=level_rose(i))
              for i in relapses]
    return dict(block=block, relapses=summary(relapses), calm=summary(calm), events=events)


def plot_zoom(rows, centre, half, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sel = [r for r in rows if abs(int(r["episode"]) - centre) <= half]
    ep = np.array([int(r["episode"]) for r in sel])
    fig, axes = plt.subplots(4, 1, figsize=(9, 8), sharex=True)
    for ax, key, label, log in ((axes[0], "bits_error", "bits error / sequence", False),
                                (axes[1], "grad_norm", "gradient norm before clipping", True),
                                (axes[2], "step_rms", "rms of g / sqrt(v) (RMSProp)", True),
                                (axes[3], "update_norm", "norm of the parameter update", False)):
        ax.plot(ep, [float(r[key]) for r in sel], ".", ms=3)
        ax.set_ylabel(label, fontsize=8)
        if log:
            ax.set_yscale("log")
    axes[1].axhline(float(sel[0].get("clip", 10)) if "clip" in sel[0] else 10, color="r", lw=0.5, ls="--")
    axes[3].set_xlabel("episode")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_diagnose(a):
    os.makedirs(RESULTS, exist_ok=True)
    rows = read_rows(os.path.join(a.run, "metrics.csv")) or read_rows(os.path.join(a.run, "metrics.csv.gz"))
    res = diagnose(rows)
    label = os.path.basename(os.path.normpath(a.run))
    if a.zoom:
        plot_zoom(rows, a.zoom, a.half, os.path.join(RESULTS, f"{a.name}_zoom.png"),
                  f"{label}: episodes {a.zoom - a.half}-{a.zoom + a.half}")
    write_json(os.path.join(RESULTS, f"{a.name}.json"), dict(command=" ".join(sys.argv), run=label, **res))
    print(json.dumps({k: res[k] for k in ("relapses", "calm")}, indent=1))
    for e in res["events"]:
        q, b = e["quiet_block_before"], e["block"]
        print(f"relapse in block ending {b['end_episode']}: {b['mean_bits']:.2f} bits, max grad norm "
              f"{b['max_grad_norm']:.3g}, max step rms {b['max_step_rms']:.2f}, max update norm "
              f"{b['max_update_norm']:.2f}; block before: max grad norm {q['max_grad_norm']:.3g}; level "
              f"rose: {e['level_rose_in_last_2_blocks']}")


def run_report(a):
    os.makedirs(RESULTS, exist_ok=True)
    runs, results = [], []
    for d in a.runs:
        rows = read_rows(os.path.join(d, "metrics.csv"))
        if not rows:
            rows = read_rows(os.path.join(d, "metrics.csv.gz"))
        ck_path = os.path.join(d, "checkpoint.pt")
        settings = torch.load(ck_path, weights_only=True)["args"] if os.path.exists(ck_path) else None
        res = criterion(rows, a.after_solve)
        label = os.path.basename(os.path.normpath(d))
        results.append(dict(run=label, settings=settings, **res))
        runs.append((label, rows, res))
        if a.copy_csv:
            dest = os.path.join(RESULTS, a.name, label)
            os.makedirs(dest, exist_ok=True)
            src = os.path.join(d, "metrics.csv")
            with open(src, "rb") as f, gzip.open(os.path.join(dest, "metrics.csv.gz"), "wb") as g:
                shutil.copyfileobj(f, g)
        print(f"{label}: " + ", ".join(f"{k}={v}" for k, v in res.items()))
    plot(runs, os.path.join(RESULTS, f"{a.name}.png"), a.title or a.name)
    write_json(os.path.join(RESULTS, f"{a.name}.json"),
               dict(machine=machine_info(1), command=" ".join(sys.argv), runs=results,
                    all_passed=all(r.get("passed") for r in results)))
    print(f"wrote {os.path.join(RESULTS, a.name)}.json/.png")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--slots", type=lambda s: int(float(s)), default=1_000_000)
    t.add_argument("--index", choices=["hnsw", "exact"], default="hnsw")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--alpha", type=float, default=0.99, help="RMSProp smoothing")
    t.add_argument("--eps", type=float, default=1e-10)
    t.add_argument("--clip", type=float, default=10.0)
    t.add_argument("--threshold", type=float, default=1.0)
    t.add_argument("--patience", type=int, default=50)
    t.add_argument("--anneal", type=float, default=1.0,
                   help="lr factor per pass of the curriculum's test at the top level (1: none)")
    t.add_argument("--anneal-floor", type=float, default=1 / 16, help="lowest lr, as a share of --lr")
    t.add_argument("--curriculum", choices=["mean", "hard"], default="hard")
    t.add_argument("--minutes", type=float, default=40.0, help="stop after this much training in all")
    t.add_argument("--after-solve", type=float, default=20.0,
                   help="stop this long after the criterion's start")
    t.add_argument("--resume", action="store_true")
    r = sub.add_parser("report")
    r.add_argument("--runs", nargs="+", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--title", default=None)
    r.add_argument("--after-solve", type=float, default=20.0)
    r.add_argument("--copy-csv", action="store_true", help="gzip each run's CSV into the results")
    d = sub.add_parser("diagnose")
    d.add_argument("--run", required=True)
    d.add_argument("--name", required=True)
    d.add_argument("--zoom", type=int, default=None, help="plot the episodes around this one")
    d.add_argument("--half", type=int, default=150)
    a = p.parse_args()
    {"train": run_train, "report": run_report, "diagnose": run_diagnose}[a.command](a)


if __name__ == "__main__":
    main()
