"""`samcpu train`: train SAM or DAM on a synthetic task with the exponential curriculum.

Each iteration is one episode: a batch drawn at a level from the curriculum, a fresh memory,
forward over the whole sequence, the masked loss, backprop through time, an optimiser step.
Metrics go to ``OUT/metrics.csv`` and ``OUT/curve.png``; checkpoints to ``OUT/checkpoint.pt``
(written atomically; loadable with ``torch.load(weights_only=True)``). ``--resume`` continues
a run exactly where its checkpoint left it (model, optimiser, curriculum, random streams).
"""
import argparse
import csv
import os
import signal
import tempfile
import time

import numpy as np
import torch
from torch.nn import functional as F

from .nn import DAM, SAM
from .tasks import Curriculum, bits_error, make_task

CSV_FIELDS = ["episode", "level", "max_level", "loss", "bits_error", "ms_per_step", "seconds"]


#: the task parameter that --max-level sets (the task's hardest level)
MAX_LEVEL_PARAM = {"copy": "max_length", "recall": "max_items", "sort": "num_items"}


def task_of(args, seed):
    """The task ``args`` describe (``--task``, ``--max-level``), drawing with ``seed``."""
    n = getattr(args, "max_level", None)
    if n is None:
        return make_task(args.task, seed=seed)
    kwargs = {MAX_LEVEL_PARAM[args.task]: n}
    if args.task == "sort":
        kwargs["num_outputs"] = min(16, n)
    return make_task(args.task, seed=seed, **kwargs)


def build(args, task):
    """The model, optimiser and curriculum described by ``args``."""
    torch.manual_seed(args.seed)
    common = dict(hidden_size=args.hidden, word_size=args.word, num_heads=args.heads)
    if args.model == "sam":
        # --threads is the run's core budget: numba's threads and the index's alike (a
        # thread pool over the batch elements only costs when each run has one core)
        options = dict(num_threads=args.threads) if args.index == "hnsw" else None
        model = SAM(task.input_size, task.output_size, num_slots=args.slots, k=args.k,
                    index=args.index, index_options=options, **common)
    else:
        model = DAM(task.input_size, task.output_size, num_slots=args.slots, **common)
    opt = torch.optim.RMSprop(model.parameters(), lr=args.lr, momentum=args.momentum, eps=1e-10)
    start = 1 if args.curriculum else task.max_level
    curriculum = Curriculum(task.max_level, start_level=start, threshold=args.threshold,
                            patience=args.patience)
    return model, opt, curriculum


def episode_loss(model, batch):
    """Masked binary cross-entropy summed over steps and bits, per sequence; and the logits."""
    y, _ = model(batch.input)
    bce = F.binary_cross_entropy_with_logits(y, batch.target, reduction="none").sum(-1)
    return (bce * batch.mask).sum() / batch.input.shape[1], y


def save_checkpoint(path, state):
    """torch.save to a temporary file in the same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise ValueError(f"--resume: no checkpoint at {path}")
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, keep the cause
        raise ValueError(f"--resume: {path} is not a readable samcpu checkpoint ({e})") from e


def plot(csv_path, png_path, title):
    """The learning curve: loss and bits error per episode, curriculum level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    ep = np.array([int(r["episode"]) for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, colour in (("loss", "tab:blue"), ("bits_error", "tab:red")):
        v = np.array([float(r[key]) for r in rows])
        w = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(w) / w, mode="valid")
        ax.plot(ep[w - 1:], smooth, color=colour, label=f"{key} (mean of {w})")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("episode")
    ax.set_ylabel("per sequence")
    level = ax.twinx()
    level.step(ep, [int(r["max_level"]) for r in rows], color="tab:green", where="post", label="curriculum level")
    level.set_ylabel("curriculum level")
    fig.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def train(args):
    from tqdm import tqdm

    import numba

    # small batches: torch's ops are too small to share, and its OpenMP pool spinning beside
    # the index threads costs far more than it gives (measured: 25 ms vs 1.2 s an episode)
    torch.set_num_threads(args.torch_threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    csv_path = os.path.join(args.out, "metrics.csv")
    png_path = os.path.join(args.out, "curve.png")
    task = task_of(args, seed=args.seed)
    model, opt, curriculum = build(args, task)
    levels = np.random.default_rng(args.seed + 1)
    episode = 0
    elapsed = 0.0  # training seconds of earlier runs this one resumes: the CSV's clock goes on
    if args.resume:
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        curriculum.load_state_dict(ck["curriculum"])
        task.rng.bit_generator.state = ck["task_rng"]
        levels.bit_generator.state = ck["level_rng"]
        torch.set_rng_state(ck["torch_rng"])
        episode = ck["episode"]
        kept = _truncate_csv(csv_path, episode)
        # checkpoints from before "seconds" was stored: the last kept row's clock (which
        # counts from the last resume, if such a run was resumed before)
        elapsed = float(ck.get("seconds", kept[-1]["seconds"] if kept else 0.0))
    elif os.path.exists(csv_path):
        os.remove(csv_path)
    start = time.perf_counter()

    def seconds():  # training wall time, over every run of this checkpoint
        return elapsed + time.perf_counter() - start

    def checkpoint():
        save_checkpoint(ckpt_path, dict(
            model=model.state_dict(), optimizer=opt.state_dict(), curriculum=curriculum.state_dict(),
            task_rng=task.rng.bit_generator.state, level_rng=levels.bit_generator.state,
            torch_rng=torch.get_rng_state(), episode=episode, seconds=seconds(), args=vars(args)))

    new_file = not os.path.exists(csv_path)
    out = open(csv_path, "a", newline="")
    writer = csv.DictWriter(out, CSV_FIELDS)
    if new_file:
        writer.writeheader()
    bar = tqdm(total=args.steps, initial=episode, disable=args.quiet, dynamic_ncols=True,
               desc=f"{args.model} {args.task} N={args.slots:,}")
    interrupted = []

    def on_sigint(signum, frame):  # finish the episode, then save; a second Ctrl-C stops at once
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        while episode < args.steps and not interrupted:
            level = curriculum.sample_level(levels)
            batch = task.sample(args.batch, level)
            t0 = time.perf_counter()
            loss, logits = episode_loss(model, batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            ms = 1e3 * (time.perf_counter() - t0) / batch.input.shape[0]
            bits = bits_error(logits, batch.target, batch.mask)
            curriculum.update(bits)
            episode += 1
            writer.writerow(dict(episode=episode, level=level, max_level=curriculum.current,
                                 loss=f"{loss.item():.6g}", bits_error=f"{bits:.6g}",
                                 ms_per_step=f"{ms:.4g}", seconds=f"{seconds():.3f}"))
            bar.set_postfix(loss=f"{loss.item():.3f}", bits=f"{bits:.2f}", level=curriculum.current,
                            ms_step=f"{ms:.2f}")
            bar.update()
            if episode % args.checkpoint_every == 0 or episode == args.steps:
                out.flush()
                checkpoint()
            if args.minutes and time.perf_counter() - start > 60 * args.minutes:
                break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
        out.close()
    checkpoint()
    plot(csv_path, png_path, f"{args.model.upper()} on {args.task}, N={args.slots:,}, batch {args.batch}")
    print(("interrupted: " if interrupted else "") + f"{episode} episodes; curriculum level "
          f"{curriculum.current}/{task.max_level}")
    print(f"learning curve: {png_path}\nmetrics:        {csv_path}\ncheckpoint:     {ckpt_path}")
    print(f"go on with:     samcpu train {' '.join(_argv_of(args))} --resume  (raise --steps to train longer)")
    return 130 if interrupted else 0


def _truncate_csv(path, episode):
    """Keep the metric rows up to ``episode`` (a resumed run writes the later ones again);
    returns the kept rows (none without a CSV)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["episode"]) <= episode]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return rows


def _argv_of(args):
    skip = {"resume", "command", "quiet"}
    out = []
    for k, v in vars(args).items():
        if k in skip or v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v != _DEFAULT_BOOLS.get(k, False):
                out.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


_DEFAULT_BOOLS = {"curriculum": True}


def _positive(text):
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1 or value != float(text):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(p):
    p.add_argument("--task", choices=["copy", "recall", "sort"], default="copy")
    p.add_argument("--model", choices=["sam", "dam"], default="sam")
    p.add_argument("--slots", type=lambda s: int(float(s)), default=1_000_000, help="memory rows N")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-level", type=_positive, default=None,
                   help="the task's hardest level: copy length (20), recall items (6), sort keys (20)")
    p.add_argument("--steps", type=int, default=10_000, help="episodes (optimiser steps)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time (this invocation's; the CSV's seconds go "
                        "on across --resume)")
    p.add_argument("--lr", type=float, default=3e-4,
                   help="RMSProp learning rate (3e-4: of 1e-4, 3e-4 and 1e-3, the one that learned "
                        "copy fastest here)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--clip", type=float, default=10.0, help="gradient norm clip")
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--word", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--index", choices=["hnsw", "exact"], default="hnsw")
    p.add_argument("--curriculum", action=argparse_bool(), default=True)
    p.add_argument("--threshold", type=float, default=1.0, help="curriculum: bits error per sequence")
    p.add_argument("--patience", type=int, default=50, help="curriculum: episodes averaged")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, default=2, help="numba and HNSW index threads")
    p.add_argument("--torch-threads", type=_positive, default=1, help="torch intra-op threads")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--out", default="runs/latest")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def argparse_bool():
    return argparse.BooleanOptionalAction
