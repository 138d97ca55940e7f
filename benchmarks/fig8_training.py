"""The Figure 8 runs' training: how far each curriculum has climbed towards 10,000-step episodes.

    python benchmarks/fig8_training.py [--runs runs/fig8/recall_long_s0_lr1e-4 ...] [--out FILE]

What is read
  Each run folder of ``samcpu train --task recall`` (its metrics.csv, or metrics.csv.gz, up to the
  episode of its checkpoint.pt, and the checkpoint); nothing is trained or evaluated
  (benchmarks/generalise.py evaluates).
What is reported
  Per run: seed, episodes, training hours (the CSV's ``seconds``, summed over every session and
  resume), the curriculum's maximum (items and steps), the learning rate and its changes on
  resumes (the checkpoint's ``resumes``), and for every maximum the curriculum held: the episode
  and hour it was reached, the episodes, hard episodes and hours spent there, and the mean bits
  error of the last ``patience`` hard episodes there (the curriculum's criterion: the maximum
  doubles once that mean is under the run's threshold; hard levels are those
  :class:`samcpu.tasks.curriculum.Curriculum` counts), the threshold in force then, and the
  mean error of all its episodes in each quarter of the levels [1, maximum]. Written to --out (default
  ``benchmarks/results/fig8_training.json``), with a plot beside it (same name, ``.png``): the
  maximum episode length and the hard episodes' rolling error against training hours, the
  changes made on a resume (learning rate, threshold, ...) marked.
"""
import argparse
import itertools
import os
import sys

import numpy as np

from common import HERE, learning_changes, machine_info, write_json
from learning import read_metrics
from recall_long import steps_of

from samcpu.tasks.curriculum import Curriculum
from samcpu.train import load_checkpoint


def threshold_at(changes, current, episode):
    """The curriculum threshold in force at ``episode``, given the resumes' ``changes`` (in order)
    and the ``current`` one (a resume at episode E takes effect from E + 1)."""
    moves = [c for c in changes if c["arg"] == "threshold"]
    value = moves[0]["value_from"] if moves else current
    for c in moves:
        if c["episode"] < episode:
            value = c["value_to"]
    return value


def by_quarter(levels, bits, top):
    """The mean bits error of the episodes in each quarter of the levels [1, top] (lowest first;
    None for a quarter without episodes); [] when ``top`` < 4."""
    if top < 4:
        return []
    edges = np.linspace(0, top, 5).round().astype(int)  # quarter q: levels edges[q] + 1 .. edges[q + 1]
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (levels > lo) & (levels <= hi)
        out.append(dict(levels=[int(lo) + 1, int(hi)], episodes=int(sel.sum()),
                        bits_error=float(bits[sel].mean()) if sel.any() else None))
    return out


def hard_from(curriculum, level):
    """The lowest level the curriculum counts as hard while its maximum is ``level``."""
    c = Curriculum(curriculum["max_level"], 1, curriculum["threshold"], curriculum["patience"],
                   curriculum.get("hard_fraction"))  # absent: saved before the hard-level rule
    c.current = level
    return c.hard_from


def summarise(folder):
    path = os.path.join(folder, "checkpoint.pt")
    if not os.path.exists(path):
        raise SystemExit(f"{folder}: no checkpoint.pt (not a samcpu train run folder?)")
    ck = load_checkpoint(path)
    if ck["args"].get("task") != "recall":
        raise SystemExit(f"{folder}: a {ck['args'].get('task')} run; this reads recall runs")
    cur, args = ck["curriculum"], ck["args"]
    m = read_metrics(folder)
    if not len(m["episode"]):
        raise SystemExit(f"{folder}: metrics.csv has no episodes yet")
    # rows past the checkpoint (a run still going, or one stopped between checkpoints) are cut,
    # as a resume cuts them: the figures are those of the state saved
    keep = m["episode"] <= ck["episode"]
    m = {k: v[keep] for k, v in m.items()}
    episode, level = m["episode"].astype(int), m["level"].astype(int)
    # a row's max_level is the maximum after its episode's update: the episode was drawn (and
    # judged) under the row before's
    top = np.concatenate([[cur.get("start_level", 1)], m["max_level"].astype(int)[:-1]])
    hours, bits = m["seconds"] / 3600, m["bits_error"]
    # per maximum held; the curve's window is the criterion's: the mean of the last `patience` hard
    # episodes under one maximum (the history is cleared at a doubling), NaN between maxima so
    # that the line breaks there
    maxima, ends, w = [], [], cur["patience"]
    curve = dict(hours=hours, steps=[steps_of(int(v)) for v in top], hard_hours=[], hard_mean=[])
    for value in dict.fromkeys(top.tolist()):  # in the order the curriculum reached them
        at = np.flatnonzero(top == value)
        hard = at[level[at] >= hard_from(cur, value)]
        ends.append(int(episode[at[-1]]))
        last = bits[hard[-w:]]
        maxima.append(dict(items=value, steps=steps_of(value), reached_episode=int(episode[at[0]]),
                           reached_hours=float(hours[at[0]]), episodes=len(at), hard_episodes=len(hard),
                           hours=float(hours[at[-1]] - hours[at[0]]),
                           hard_bits_error_last=float(last.mean()) if len(last) else None,
                           hard_last_count=len(last), by_quarter=by_quarter(level[at], bits[at], value)))
        if len(hard) >= w:
            curve["hard_hours"] += [*hours[hard[w - 1:]], np.nan]
            curve["hard_mean"] += [*np.convolve(bits[hard], np.ones(w) / w, mode="valid"), np.nan]
    changes = learning_changes(ck)
    for x, last_episode in zip(maxima, ends, strict=True):  # the threshold its last episode was judged by
        x["threshold"] = threshold_at(changes, cur["threshold"], last_episode)
    maxima[-1]["threshold"] = cur["threshold"]  # the maximum held: the one it is judged against now
    run = dict(folder=os.path.relpath(folder, os.path.join(HERE, "..")), seed=args["seed"],
               slots=args["slots"], batch=args["batch"], episodes=int(ck["episode"]), hours=float(hours[-1]),
               max_items=int(cur["current"]), max_steps=steps_of(int(cur["current"])),
               cap_items=int(cur["max_level"]), threshold=cur["threshold"], patience=cur["patience"],
               lr=args["lr"], changes=changes, maxima=maxima)
    change_hours = [float(hours[max(0, np.searchsorted(episode, c["episode"], side="right") - 1)])
                    for c in changes]
    return run, curve, change_hours


def plot(runs, curves, change_hours, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for i, (r, c, changed) in enumerate(zip(runs, curves, change_hours, strict=True)):
        colour = f"C{i}"
        name = os.path.basename(r["folder"])
        top.step(c["hours"], c["steps"], where="post", color=colour, label=name)
        if len(c["hard_mean"]):
            bottom.plot(c["hard_hours"], c["hard_mean"], color=colour, linewidth=0.8, label=name)
        for h in changed:
            for ax in (top, bottom):
                ax.axvline(h, color=colour, linestyle=":", linewidth=1)
    top.axhline(10_000, color="grey", linewidth=0.8, label="10,000 steps (the paper's Figure 8)")
    top.set_yscale("log")
    top.set_ylabel("longest episode in the curriculum (steps)")
    top.set_title("SAM, N = 1,000,000, associative recall, full BPTT (dotted: changed on a resume)")
    top.legend(fontsize=8)
    for t in sorted({x["threshold"] for r in runs for x in r["maxima"]}):
        bottom.axhline(t, color="grey", linewidth=0.8, label=f"threshold {t:g}")
    bottom.set_ylabel(f"bits error, mean of the last {runs[0]['patience']} hard episodes")
    bottom.set_xlabel("training hours (one core)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=[os.path.join(HERE, "..", "runs", "fig8", f"recall_long_{s}")
                                                 for s in ("s0_lr1e-4", "s0_t3", "s1", "s2_lr1e-4", "s2_t2")])
    p.add_argument("--out", default=os.path.join(HERE, "results", "fig8_training.json"))
    args = p.parse_args()
    runs, curves, change_hours = [], [], []
    for folder in args.runs:
        run, curve, changed = summarise(folder)
        runs.append(run)
        curves.append(curve)
        change_hours.append(changed)
        print(f"{run['folder']}: {run['episodes']:,d} episodes, {run['hours']:.1f} h, curriculum maximum "
              f"{run['max_items']:,d} items ({run['max_steps']:,d} steps)")
        for x in run["maxima"]:
            err = "n/a" if x["hard_bits_error_last"] is None else f"{x['hard_bits_error_last']:.2f}"
            print(f"  {x['items']:5d} items from episode {x['reached_episode']:6d} "
                  f"({x['reached_hours']:5.1f} h): {x['episodes']:6d} episodes, "
                  f"{x['hard_episodes']:5d} hard, last {x['hard_last_count']} hard {err} bits")
    png = os.path.splitext(args.out)[0] + ".png"
    plot(runs, curves, change_hours, png)
    root = os.path.join(HERE, "..")
    args.runs = [os.path.relpath(f, root) for f in args.runs]
    args.out = os.path.relpath(args.out, root)
    write_json(os.path.join(root, args.out), dict(
        machine=machine_info(1), command=" ".join(["python benchmarks/fig8_training.py", *sys.argv[1:]]),
        args=vars(args), runs=runs))
    print(f"wrote {args.out}\nwrote {png}")


if __name__ == "__main__":
    main()
