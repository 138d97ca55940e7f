"""`samcpu train`: train SAM or DAM on a synthetic task with the exponential curriculum.

Each iteration is one episode: a batch drawn at a level from the curriculum, a fresh memory,
forward over the whole sequence, the masked loss, backprop through time, an optimiser step.
Metrics go to ``OUT/metrics.csv`` and ``OUT/curve.png``; checkpoints to ``OUT/checkpoint.pt``
(written atomically, with a sha256 of its contents: see :func:`save_checkpoint`). ``--resume``
continues a run exactly where its checkpoint left it (model, optimiser, curriculum, random
streams); the arguments that define the run (``RUN_ARGS``) must be the checkpoint's, those in
``RESUMABLE_ARGS`` may change, and both default to the checkpoint's when left out (one
exception: ``--max-level`` may rise with the curriculum on copy, recall and follow, so that a
run goes on to longer episodes at the learning rate it had reached). A lock file
in ``OUT`` keeps a second run out of a folder in use. Ctrl-C finishes the episode and saves; a
second Ctrl-C abandons the episode at once and saves the state before it.
"""
import argparse
import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import math
import os
import re
import signal
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

from . import distributed
from ._util import atomic_write, parse_int
from .memory import MAX_SLOTS
from .nn import DAM, SAM
from .tasks import DATA_TASKS, Curriculum, DataError, bits_error, make_task, masked_cross_entropy

#: metrics.csv's columns; a row's ``max_level`` is the curriculum's maximum after its episode's
#: update (so the episode that doubles it shows the new maximum; it was drawn under the row before's)
CSV_FIELDS = ["episode", "level", "max_level", "loss", "bits_error", "ms_per_step", "seconds"]

#: the task parameter that --max-level sets (the task's hardest level)
MAX_LEVEL_PARAM = {"copy": "max_length", "recall": "max_items", "sort": "num_items", "follow": "max_items",
                   "omniglot": "max_characters"}

#: the defaults of the arguments (None in the parser, so that a resumed run can tell the
#: arguments given from those left out)
DEFAULTS = dict(task="copy", model="sam", slots=1_000_000, batch=8, max_level=None, steps=10_000,
                minutes=None, lr=3e-4, momentum=0.9, clip=10.0, hidden=100, word=32, heads=4, k=4,
                link_k=8, hops=3, index="hnsw", curriculum=True, threshold=1.0, patience=50, seed=0,
                threads=2, torch_threads=1, checkpoint_every=200, data=None, anneal=0.5, anneal_floor=0.0625)
#: defaults that differ by task (their curriculum error is a share of answers, not bits; babi has
#: one level, so its threshold only says when it counts as solved, which --anneal follows)
TASK_DEFAULTS = {"babi": dict(threshold=0.05), "omniglot": dict(threshold=0.1)}

#: arguments that define a run: a resumed run refuses other values than its checkpoint's
RUN_ARGS = ("task", "model", "slots", "batch", "max_level", "hidden", "word", "heads", "k", "link_k", "index",
            "curriculum", "patience", "seed", "momentum", "hops")
#: arguments a resumed run may change (from its next episode on; recorded in the checkpoint)
RESUMABLE_ARGS = ("steps", "lr", "clip", "threshold", "threads", "torch_threads", "checkpoint_every", "data",
                  "anneal", "anneal_floor")

CHECKPOINT_KEYS = ("model", "optimizer", "curriculum", "task_rng", "level_rng", "torch_rng", "episode",
                   "args")
LOCK_NAME = ".samcpu-train.lock"

_TRAILER_HEAD = b"\nsamcpu-checkpoint 1 sha256 "
_TRAILER = re.compile(re.escape(_TRAILER_HEAD) + rb"([0-9a-f]{64})\n\Z")
_TRAILER_LEN = len(_TRAILER_HEAD) + 64 + 1


def task_of(args, seed):
    """The task ``args`` describe (``--task``, ``--max-level``, ``--data``), drawing with ``seed``."""
    kwargs = {}
    if args.task in DATA_TASKS:  # a DataError (not about --max-level) without --data
        if not getattr(args, "data", None):
            raise DataError(f"--task {args.task} needs --data DIR (the data set's folder; python -m "
                            f"samcpu.tasks.synthetic_{args.task} DIR makes a SYNTHETIC one)")
        kwargs["data"] = args.data
    if args.task == "follow":
        kwargs["num_follow"] = _effective("hops", getattr(args, "hops", None))
    n = getattr(args, "max_level", None)
    if n is None:
        return make_task(args.task, seed=seed, **kwargs)
    if args.task not in MAX_LEVEL_PARAM:
        raise ValueError(f"the {args.task} task has no levels")
    kwargs[MAX_LEVEL_PARAM[args.task]] = n
    if args.task == "sort":
        kwargs["num_outputs"] = min(16, n)
    return make_task(args.task, seed=seed, **kwargs)


def build(args, task, threads=None):
    """The model, optimiser and curriculum described by ``args`` (``threads``: the index's
    threads, default ``args.threads``)."""
    torch.manual_seed(args.seed)
    common = dict(hidden_size=args.hidden, word_size=args.word, num_heads=args.heads)
    if args.model in ("sam", "sdnc"):
        # --threads is the run's core budget: numba's threads and the index's alike (a
        # thread pool over the batch elements only costs when each run has one core)
        threads = args.threads if threads is None else threads
        options = dict(num_threads=threads) if args.index == "hnsw" else None
        sparse = dict(num_slots=args.slots, k=args.k, index=args.index, index_options=options, **common)
        if args.model == "sam":
            model = SAM(task.input_size, task.output_size, **sparse)
        else:
            from .sdnc import SDNC

            link_k = _effective("link_k", getattr(args, "link_k", None))
            model = SDNC(task.input_size, task.output_size, link_k=link_k, **sparse)
    elif args.model == "dnc":
        from .dnc import DNC

        model = DNC(task.input_size, task.output_size, hidden_size=args.hidden, num_slots=args.slots,
                    word_size=args.word, num_read_heads=args.heads)
    else:
        model = DAM(task.input_size, task.output_size, num_slots=args.slots, **common)
    opt = torch.optim.RMSprop(model.parameters(), lr=args.lr, momentum=args.momentum, eps=1e-10)
    start = 1 if args.curriculum else task.max_level
    curriculum = Curriculum(task.max_level, start_level=start, threshold=args.threshold,
                            patience=args.patience)
    return model, opt, curriculum


def episode_loss(model, batch, kind="bce"):
    """The masked loss summed over steps, per sequence; and the logits. ``kind`` "bce": binary
    cross-entropy summed over the bits (copy, recall, sort); "softmax": the cross-entropy of
    the softmax over the classes (a task's ``loss``: babi, omniglot)."""
    y, _ = model(batch.input)
    if kind == "softmax":
        return masked_cross_entropy(y, batch.target, batch.mask), y
    bce = F.binary_cross_entropy_with_logits(y, batch.target, reduction="none").sum(-1)
    return (bce * batch.mask).sum() / batch.input.shape[1], y


def task_error(task, logits, batch):
    """The error the curriculum and the CSV follow: the task's ``error`` (babi, omniglot: a
    share of wrong answers) or the bits error per sequence."""
    error = getattr(task, "error", None)
    return error(logits, batch.target, batch.mask) if error else bits_error(logits, batch.target, batch.mask)


def csv_fields(task):
    """The CSV's columns: ``CSV_FIELDS`` with the task's error (``bits_error`` or ``error``)."""
    name = getattr(task, "error_name", "bits_error")
    return [name if f == "bits_error" else f for f in CSV_FIELDS]


# ------------------------------------------------------------------ checkpoints

def save_checkpoint(path, state):
    """Write ``state`` (torch-serialisable with ``weights_only``) to ``path`` all or nothing.

    The file is the ``torch.save`` bytes followed by one line, ``samcpu-checkpoint 1 sha256
    <hex>``, the sha256 of those bytes: :func:`load_checkpoint` refuses a file whose bytes do
    not match it. ``torch.load(path, weights_only=True)`` still reads the file (a zip reader
    ignores the trailing line) but checks nothing."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    trailer = _TRAILER_HEAD + hashlib.sha256(data).hexdigest().encode() + b"\n"

    def write(f):
        f.write(data)
        f.write(trailer)

    atomic_write(path, write)


def _is_unchecked_zip(raw):
    """A plain torch file (a zip ending in an end-of-central-directory record without comment):
    a checkpoint written before checkpoints had a checksum."""
    return raw[:4] == b"PK\x03\x04" and raw[-22:-18] == b"PK\x05\x06" and raw[-2:] == b"\x00\x00"


def _first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_checkpoint(path):
    """The state :func:`save_checkpoint` wrote to ``path``, loaded with ``weights_only=True``
    after its sha256 is checked; ``ValueError`` (one line) for a missing, damaged or foreign
    file. A checkpoint from before the checksum is loaded unchecked, with a warning."""
    if not os.path.isfile(path):
        raise ValueError(f"--resume: no checkpoint at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    match = _TRAILER.search(raw[-_TRAILER_LEN:])
    if match:
        data = raw[:-_TRAILER_LEN]
        if hashlib.sha256(data).hexdigest().encode() != match.group(1):
            raise ValueError(f"--resume: {path} is damaged: its contents do not match the sha256 it was "
                             "saved with (not loaded)")
    elif _is_unchecked_zip(raw):
        data = raw
        print(f"warning: {path} has no checksum (saved before samcpu wrote one): loaded unchecked",
              file=sys.stderr)
    else:
        raise ValueError(f"--resume: {path} is damaged or not a samcpu checkpoint (its checksum line "
                         "is missing or altered)")
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # a foreign torch file: say which, keep the cause
        raise ValueError(f"--resume: {path} is not a readable samcpu checkpoint ({_first_line(e)})") from e
    if not isinstance(state, dict):
        raise ValueError(f"--resume: {path} is not a samcpu checkpoint (it holds a {type(state).__name__})")
    return state


def check_training_checkpoint(ck, path):
    """``ck`` has what ``samcpu train --resume`` needs, or ``ValueError`` naming what is missing."""
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise ValueError(f"--resume: {path} lacks {', '.join(missing)}: not a samcpu train checkpoint")
    episode = ck["episode"]
    if isinstance(episode, bool) or not isinstance(episode, int) or episode < 0:
        raise ValueError(f"--resume: {path} has episode {episode!r}, not an integer >= 0")
    for key in ("model", "optimizer", "curriculum", "args"):
        if not isinstance(ck[key], dict):
            raise ValueError(f"--resume: {path} has a {type(ck[key]).__name__} for {key}, not a dict")


# ------------------------------------------------------------------ arguments of a run

def _effective(key, value):
    return DEFAULTS[key] if value is None else value


def _default_max_level(task):
    if task in DATA_TASKS:
        return DATA_TASKS[task].default_max_level
    return make_task(task).max_level


#: the tasks whose episodes at a level do not depend on the hardest level, and whose input and
#: output sizes do not either (not sort: its outputs per episode scale with the maximum; not
#: omniglot: its labels are the maximum), so --resume may raise --max-level
RAISABLE = ("copy", "recall", "follow")


def _may_raise(saved, old, new):
    """True if the run ``saved`` (its arguments) may go on with hardest level ``new`` > ``old``."""
    if saved.get("task") not in RAISABLE:
        return False
    try:
        a, b = (task_of(argparse.Namespace(**{**saved, "max_level": n}), seed=0) for n in (old, new))
    except ValueError:  # the new level is out of the task's range: refused as a mismatch
        return False
    return (a.input_size, a.output_size) == (b.input_size, b.output_size)


def resolve_args(args, saved=None):
    """The run's arguments: ``args`` with the arguments left out (None) filled in.

    A new run (``saved`` None) takes ``DEFAULTS``. A resumed run takes its checkpoint's
    arguments ``saved``; a given argument of ``RUN_ARGS`` that differs from the checkpoint's is
    a ``ValueError`` naming every such argument. Returns (args, changed) with changed
    ``{name: [checkpoint's, given]}`` for the ``RESUMABLE_ARGS`` given with a new value."""
    given = vars(args)
    out = argparse.Namespace(**given)
    if saved is None:
        task = given.get("task") or DEFAULTS["task"]
        for key, value in DEFAULTS.items():
            if given.get(key) is None:
                setattr(out, key, TASK_DEFAULTS.get(task, {}).get(key, value))
        return out, {}
    mismatches, changed = [], {}
    for key in RUN_ARGS:
        old = _effective(key, saved.get(key))
        new = given.get(key)
        if new is None:
            setattr(out, key, old)
            continue
        if key == "max_level":  # None is the task's own hardest level
            task = _effective("task", saved.get("task"))
            old = old if old is not None else _default_max_level(task)
            same = old == new
            curriculum = _effective("curriculum", saved.get("curriculum"))
            if new > old and curriculum and _may_raise(saved, old, new):
                changed[key] = [old, new]  # the curriculum's cap rises: the run goes on to longer episodes
                continue
        else:
            same = old == new
        if not same:
            if isinstance(new, bool):  # --curriculum / --no-curriculum
                shown, had = (f"--{'' if v else 'no-'}{key}" for v in (new, old))
            else:
                shown, had = f"--{key.replace('_', '-')} {new}", old
            mismatches.append(f"{shown} (the checkpoint's run has {had})")
    if mismatches:
        raise ValueError("--resume: arguments differ from the checkpoint's run: " + "; ".join(mismatches)
                         + " (leave them out to take the checkpoint's, or start a new run in another --out;"
                         " --max-level may only rise, with the curriculum, on a task whose input and "
                         "output do not depend on it)")
    for key in RESUMABLE_ARGS:
        old = _effective(key, saved.get(key))
        new = given.get(key)
        if new is None:
            setattr(out, key, old)
        elif new != old:
            changed[key] = [old, new]
    return out, changed


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def _check_saved(saved, path):
    """The checkpoint's arguments pass the command line's checks, or ``ValueError``."""
    p = _RaisingParser(add_help=False)
    add_arguments(p)
    argv = []
    for key in RUN_ARGS + RESUMABLE_ARGS:
        value = saved.get(key)
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if key == "curriculum" and isinstance(value, bool):
            argv.append(flag if value else "--no-curriculum")
        else:
            argv += [flag, str(value)]
    try:
        p.parse_args(argv)
    except ValueError as e:
        raise ValueError(f"--resume: {path} holds arguments that are not valid ({e})") from None


def _check_combination(args, hops_given=None):
    """Arguments that do not go together (``hops_given``: --hops as given, before defaults)."""
    if args.data is not None and args.task not in DATA_TASKS:
        raise ValueError(f"--data is for --task {' or '.join(sorted(DATA_TASKS))}, not {args.task}")
    hops = getattr(args, "hops", None)
    if args.task != "follow" and (hops_given is not None or hops not in (None, DEFAULTS["hops"])):
        raise ValueError(f"--hops is the follow task's answer length; --task {args.task} has none")
    if args.task == "follow" and hops is not None:
        most = args.max_level if args.max_level is not None else _default_max_level("follow")
        if hops + 1 > most:
            raise ValueError(f"--hops {hops} needs episodes of at least {hops + 1} items, but --max-level "
                             f"is {most}")
    if args.model in ("sam", "sdnc"):
        for key in ("k", "heads"):
            if getattr(args, key) > args.slots:
                raise ValueError(f"--{key} is {getattr(args, key)} but must be <= --slots ({args.slots:,d})")


def _task_for(args, seed):
    try:
        return task_of(args, seed=seed)
    except DataError:  # it names the folder, file and line
        raise
    except ValueError as e:
        raise ValueError(f"--max-level {args.max_level}: {e}") from None


@contextlib.contextmanager
def _locked_out(out):
    """Hold ``OUT/.samcpu-train.lock`` (flock) for the run, making ``out`` if needed;
    ``ValueError`` naming ``--out`` if it cannot be made, written or is in use."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot make this folder ({e.strerror or e})") from None
    lock_path = os.path.join(out, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in this folder ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--out {out} is in use by another samcpu train run (it holds {lock_path}); "
                             "wait for it to end or choose another --out") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_out(args):
    out = args.out
    if not out:
        raise ValueError("--out must name a folder, got ''")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a folder")


# ------------------------------------------------------------------ the learning curve

def curve_figure(rows, title):
    """The learning curve of CSV ``rows``: loss and bits error per episode (left axis),
    curriculum level (right axis), the legend below the axes (it covers no curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = np.array([int(r["episode"]) for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    error = "bits_error" if "bits_error" in rows[0] else "error"  # babi, omniglot: a share
    for key, colour in (("loss", "tab:blue"), (error, "tab:red")):
        v = np.array([float(r[key]) for r in rows])
        w = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(w) / w, mode="valid")
        ax.plot(ep[w - 1:], smooth, color=colour, label=f"{key} (mean of {w})")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("episode")
    ax.set_ylabel("per sequence")
    level = ax.twinx()
    level.step(ep, [int(r["max_level"]) for r in rows], color="tab:green", where="post",
               label="curriculum level")
    level.set_ylabel("curriculum level")
    ax.set_title(title)
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    return fig


def plot(csv_path, png_path, title):
    """The learning curve of ``csv_path`` to ``png_path`` (nothing without rows)."""
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig = curve_figure(rows, title)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def progress_bar(args, episode, disable=False):
    """tqdm over the episodes up to ``--steps``; with ``--minutes``, over the time budget
    instead (elapsed and remaining time; the episode count in the postfix). None shown with
    ``--quiet`` or ``disable``."""
    from tqdm import tqdm

    disable = disable or args.quiet
    desc = f"{args.model} {args.task} N={args.slots:,}"
    if args.minutes is None:
        return tqdm(total=args.steps, initial=episode, disable=disable, dynamic_ncols=True, desc=desc)

    class BudgetBar(tqdm):
        budget = ""  # "elapsed of budget, left, episode", set by _show

        @property
        def format_dict(self):
            return {**super().format_dict, "budget": self.budget}

    return BudgetBar(total=args.minutes, disable=disable, dynamic_ncols=True, desc=desc,
                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {budget}{postfix}")


# ------------------------------------------------------------------ training

class _Interrupts:
    """SIGINT during training: the first asks the loop to stop after its episode; a later one
    raises ``KeyboardInterrupt`` at once, but never inside a ``deferred()`` block (an optimiser
    step with its bookkeeping, a checkpoint write), which it lets finish. SIGTERM (handled in
    distributed runs: torchrun stops the other ranks so when one fails) raises
    :class:`samcpu.distributed.Stopped` at once or at the end of the ``deferred()`` block."""

    def __init__(self):
        self.count = 0
        self.terminated = False
        self._depth = 0

    def handler(self, signum, frame):
        self.count += 1
        if self.count > 1 and not self._depth:
            raise KeyboardInterrupt

    def terminate(self, signum, frame):
        self.terminated = True
        if not self._depth:
            raise distributed.Stopped()

    def hold(self):
        """From now on a SIGINT only counts (the run is ending: its checkpoint must be saved)."""
        self._depth += 1

    @contextlib.contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self.terminated and not self._depth:
            raise distributed.Stopped()


def _rng_states(task, levels, curriculum):
    return (task.rng.bit_generator.state, levels.bit_generator.state, torch.get_rng_state(),
            curriculum.last_level)


def _restore_rng_states(states, task, levels, curriculum):
    task.rng.bit_generator.state, levels.bit_generator.state, torch_rng, curriculum.last_level = states
    torch.set_rng_state(torch_rng)


def _show(bar, args, start, episode, **postfix):
    """Advance the progress bar by one episode, or to the minutes elapsed under ``--minutes``."""
    if args.minutes is None:
        bar.set_postfix(**postfix, refresh=False)
        bar.update()
        return
    used = (time.perf_counter() - start) / 60
    clock = bar.format_interval
    left = max(0.0, args.minutes - used)
    bar.budget = (f"{clock(60 * used)} of {clock(60 * args.minutes)}, {clock(60 * left)} left, "
                  f"episode {episode:,d}")
    bar.set_postfix(**postfix, refresh=False)
    bar.update(min(args.minutes, used) - bar.n)


def train(args):
    """Run ``samcpu train`` with the parsed ``args``; returns the exit code (130 if
    interrupted). Bad arguments and files: ``ValueError`` with one line naming them.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks train one model together: see
    :func:`_train_distributed`."""
    world = distributed.world_from_env()
    if world.active:
        return _train_distributed(args, world)
    _check_out(args)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if args.resume and not os.path.isfile(ckpt_path):
        raise ValueError(f"--resume: no checkpoint at {ckpt_path}")
    with _locked_out(args.out):
        return _run(*_setup(args, ckpt_path), ckpt_path)


def _setup(args, ckpt_path):
    """(args, checkpoint or None, changed): the run's arguments, resolved against the
    checkpoint's when resuming (see :func:`resolve_args`)."""
    ck, changed = None, {}
    hops_given = getattr(args, "hops", None)
    if args.resume:
        ck = load_checkpoint(ckpt_path)
        check_training_checkpoint(ck, ckpt_path)
        _check_saved(ck["args"], ckpt_path)
        args, changed = resolve_args(args, ck["args"])
    else:
        args, _ = resolve_args(args)
    _check_combination(args, hops_given)
    return args, ck, changed


def _train_distributed(args, world):
    """``samcpu train`` as one of ``world.size`` ranks (gloo; see :mod:`samcpu.distributed`).

    Rank 0 checks the arguments and the checkpoint, holds the lock on ``--out`` and alone
    writes there; it sends the resolved arguments and the checkpoint to the other ranks, so
    only its machine needs ``--out``. A global ``--batch`` that does not split over the ranks
    is refused before training (before the rendezvous when given on the command line). A lost
    rank or an unreachable rendezvous: an error line naming it on stderr, exit status 1."""
    if args.batch is not None:
        distributed.check_batch(args.batch, world.size)
    world = dataclasses.replace(world, timeout=args.dist_timeout or distributed.DEFAULT_TIMEOUT)
    threads_given = args.threads is not None
    try:
        distributed.start(world)
        try:
            if not world.main:
                kind, payload = distributed.share(None, world)
                if kind == "error":
                    raise ValueError(f"rank 0 refused the run: {payload}")
                return _run(*payload, os.path.join(payload[0].out, "checkpoint.pt"), world, threads_given)
            with contextlib.ExitStack() as stack:
                try:
                    _check_out(args)
                    ckpt_path = os.path.join(args.out, "checkpoint.pt")
                    if args.resume and not os.path.isfile(ckpt_path):
                        raise ValueError(f"--resume: no checkpoint at {ckpt_path}")
                    stack.enter_context(_locked_out(args.out))
                    setup = _setup(args, ckpt_path)
                    distributed.check_batch(setup[0].batch, world.size)
                except BaseException as e:  # the other ranks stop too, with the reason
                    reason = str(e) if isinstance(e, ValueError) else _first_line(e)
                    distributed.share(("error", reason), world)
                    raise
                distributed.share(("ok", setup), world)
                return _run(*setup, ckpt_path, world, threads_given)
        finally:
            distributed.stop()
    except distributed.DistributedError as e:
        print(f"samcpu train: error: rank {world.rank}: {e}", file=sys.stderr, flush=True)
        return 1


_ONE_RANK = distributed.World()


def _metrics(task, loss, logits, batch, world, stop):
    """(loss, error, stop) of the episode over every rank: the mean loss, the task's error of
    the global batch (exactly what one process with the whole batch computes: the wrong bits
    or answers are summed, then divided) and whether any rank asks to stop."""
    error = task_error(task, logits, batch)
    if not world.active:
        return loss.item(), error, stop
    # the error's weight: sequences (bits error per sequence) or scored answers (a share)
    weight = int((batch.mask != 0).sum()) if getattr(task, "error", None) else batch.input.shape[1]
    try:
        total, wrong, weights, stops = distributed.reduce_sums(
            [loss.item(), round(error * weight), weight, float(stop)])
    except RuntimeError as e:
        raise distributed.lost(world, e) from None
    return total / world.size, wrong / weights if weights else 0.0, stops > 0


def _run(args, ck, changed, ckpt_path, world=_ONE_RANK, threads_given=True):
    """The training loop of a resolved run (``ck``: the checkpoint it resumes, or None)."""
    import numba

    main = world.main
    csv_path = os.path.join(args.out, "metrics.csv")
    png_path = os.path.join(args.out, "curve.png")
    threads, torch_threads = args.threads, args.torch_threads
    if world.local_size > 1 and not threads_given:  # the ranks on a machine share its cores
        threads = distributed.threads_per_rank(world, threads)
    # small batches: torch's ops are too small to share, and its OpenMP pool spinning beside
    # the index threads costs far more than it gives (measured: 25 ms vs 1.2 s an episode)
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    task = _task_for(args, seed=args.seed)
    if hasattr(task, "describe") and main:
        print(task.describe())
    fields = csv_fields(task)
    # copy, recall and sort call episode_loss(model, batch) as before
    loss_options = {} if getattr(task, "loss", "bce") == "bce" else {"kind": task.loss}
    model, opt, curriculum = build(args, task, threads)
    levels = np.random.default_rng(args.seed + 1)
    episode = 0
    elapsed = 0.0  # training seconds of earlier runs this one resumes: the CSV's clock goes on
    resumes = []  # the arguments each resume changed
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            curriculum.load_state_dict(ck["curriculum"])
            if task.max_level > curriculum.max_level:  # --max-level raised on --resume
                # the learning rate stays where the anneal had brought it (solved_at_max kept):
                # a full rate on a model that solved its old maximum invites a relapse
                curriculum.max_level = task.max_level
            task.rng.bit_generator.state = ck["task_rng"]
            levels.bit_generator.state = ck["level_rng"]
            torch.set_rng_state(ck["torch_rng"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"--resume: {ckpt_path} does not fit this run ({_first_line(e)})") from None
        # the arguments a resume may change take effect here (the checkpoint's when not given)
        set_learning_rate(opt, args, curriculum)
        curriculum.threshold = float(args.threshold)
        episode = ck["episode"]
        resumes = list(ck.get("resumes", []))
        ranks = ck.get("ranks", 1)
        if changed or ranks != world.size:  # the number of ranks is recorded when it is not 1
            entry = dict(episode=episode, changed=changed)
            resumes.append(entry if world.size == ranks == 1 else dict(entry, ranks=world.size))
        if main and changed:
            print(f"resumed at episode {episode:,d} with " + ", ".join(
                f"--{k.replace('_', '-')} {new} (was {old})" for k, (old, new) in changed.items()))
        if main and ranks != world.size:
            print(f"resumed at episode {episode:,d} on {world.size} rank{'s' if world.size > 1 else ''} "
                  f"(saved by {ranks}); the global batch is still {args.batch}")
        if main:
            kept = _truncate_csv(csv_path, episode, fields)
            # checkpoints from before "seconds" was stored: the last kept row's clock (which
            # counts from the last resume, if such a run was resumed before)
            elapsed = float(ck.get("seconds", kept[-1]["seconds"] if kept else 0.0))
    elif main and os.path.exists(csv_path):
        os.remove(csv_path)
    # DDP averages the gradients over the ranks after each backward pass (the parameters
    # start from rank 0's); the memories stay each rank's own
    net = distributed.wrap(model) if world.active else model
    start = time.perf_counter()

    def seconds():  # training wall time, over every run of this checkpoint
        return elapsed + time.perf_counter() - start

    def checkpoint():
        save_checkpoint(ckpt_path, dict(
            model=model.state_dict(), optimizer=opt.state_dict(), curriculum=curriculum.state_dict(),
            task_rng=task.rng.bit_generator.state, level_rng=levels.bit_generator.state,
            torch_rng=torch.get_rng_state(), episode=episode, seconds=seconds(), args=vars(args),
            resumes=resumes, ranks=world.size))

    def out_of_time():
        return bool(args.minutes) and time.perf_counter() - start > 60 * args.minutes

    interrupts = _Interrupts()
    saved_at = None
    before = None  # the random streams before the episode under way (None: it committed)
    agreed_stop = False  # every rank's vote after the last episode (distributed)
    previous = signal.signal(signal.SIGINT, interrupts.handler)
    previous_term = signal.signal(signal.SIGTERM, interrupts.terminate) if world.active else None
    try:
        new_file = main and not os.path.exists(csv_path)
        # line-buffered: each episode's row shows at once (rows past the checkpoint are cut on --resume)
        with open(csv_path, "a", newline="", buffering=1) if main else contextlib.nullcontext() as out:
            writer = csv.DictWriter(out, fields) if main else None
            if new_file:
                writer.writeheader()
            bar = progress_bar(args, episode, disable=not main)
            try:
                while True:
                    with interrupts.deferred():
                        stop = agreed_stop if world.active else interrupts.count or out_of_time()
                        if episode >= args.steps or stop:
                            interrupts.hold()  # from here on a Ctrl-C only counts
                            break
                        before = _rng_states(task, levels, curriculum)
                    level = curriculum.sample_level(levels)
                    batch = task.sample(args.batch, level)
                    if world.active:  # every rank drew the global batch: this rank's slice
                        batch = distributed.shard(batch, world.rank, world.size)
                    t0 = time.perf_counter()
                    try:
                        loss, logits = episode_loss(net, batch, **loss_options)
                        opt.zero_grad()
                        loss.backward()
                    except RuntimeError as e:
                        if world.active and distributed.is_comm_error(e):
                            raise distributed.lost(world, e) from None
                        raise
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                    loss_value, bits, agreed_stop = _metrics(
                        task, loss, logits, batch, world, bool(interrupts.count) or out_of_time())
                    with interrupts.deferred():  # the episode commits whole, or not at all
                        opt.step()
                        ms = 1e3 * (time.perf_counter() - t0) / batch.input.shape[0]
                        curriculum.update(bits)
                        set_learning_rate(opt, args, curriculum)
                        episode += 1
                        before = None
                        if main:
                            writer.writerow(dict(zip(fields, (
                                episode, level, curriculum.current, f"{loss_value:.6g}", f"{bits:.6g}",
                                f"{ms:.4g}", f"{seconds():.3f}"), strict=True)))
                        _show(bar, args, start, episode, loss=f"{loss_value:.3f}",
                              **{fields[4].replace("_error", ""): f"{bits:.2f}"},
                              level=curriculum.current, ms_step=f"{ms:.2f}")
                        if main and (episode % args.checkpoint_every == 0 or episode == args.steps):
                            out.flush()
                            os.fsync(out.fileno())
                            checkpoint()
                            saved_at = episode
            except (KeyboardInterrupt, distributed.RankLost) as e:
                # a second Ctrl-C, or another rank lost: the episode under way is abandoned,
                # the state of the last one committed is saved below
                interrupts.hold()
                if before is not None:
                    _restore_rng_states(before, task, levels, curriculum)
                if isinstance(e, distributed.RankLost):
                    if main:  # the state after the last committed episode: the same on every rank
                        if saved_at != episode:
                            out.flush()
                            os.fsync(out.fileno())
                            checkpoint()
                        e.args = (f"{e.args[0]}; the checkpoint holds episode {episode:,d}: {ckpt_path}",)
                    raise
            finally:
                bar.close()
        if not main:
            return 130 if interrupts.count else 0
        if saved_at != episode:
            checkpoint()
        interrupts.hold()  # a Ctrl-C during the plot and the summary only counts: they finish
        synthetic = " (SYNTHETIC data)" if getattr(task, "synthetic", False) else ""
        plot(csv_path, png_path, f"{args.model.upper()} on {args.task}{synthetic}, N={args.slots:,}, "
             f"batch {args.batch}")
        print(("interrupted: " if interrupts.count else "") + f"{episode} episodes; curriculum level "
              f"{curriculum.current}/{task.max_level}")
        print(f"learning curve: {png_path}\nmetrics:        {csv_path}\ncheckpoint:     {ckpt_path}",
              flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    if hasattr(task, "evaluate") and not interrupts.count:
        evaluate(task, model, args, curriculum.current, episode)
    print(f"go on with:     samcpu train {' '.join(_argv_of(args))} --resume  "
          "(raise --steps to train longer)")
    return 130 if interrupts.count else 0


def evaluate(task, model, args, level, episode):
    """The task's test evaluation (babi: error per task; omniglot: error by presentation) at
    ``level`` after ``episode`` episodes, printed and written to ``OUT/eval.json``."""
    import json

    report = task.evaluate(model, batch_size=args.batch, level=level)
    report["episode"] = episode
    path = os.path.join(args.out, "eval.json")
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=1).encode()))
    for line in task.summary(report):
        print(line)
    print(f"evaluation:     {path}")
    return report


def _truncate_csv(path, episode, fields=CSV_FIELDS):
    """Keep the complete metric rows up to ``episode`` (a resumed run writes the later ones
    again), rewriting the file atomically; returns the kept rows (none without a CSV)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = []
        for r in csv.DictReader(f):
            if None in r or None in r.values():  # a row cut short by a kill
                continue
            try:
                if int(r["episode"]) <= episode:
                    rows.append(r)
            except (KeyError, ValueError):
                continue

    def write(f):
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        f.write(text.getvalue().encode())

    atomic_write(path, write)
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


# ------------------------------------------------------------------ argument types

def _int_arg(minimum=1, maximum=None):
    def parse(text):
        try:
            return parse_int(text, minimum, maximum)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = "integer"
    return parse


#: an argparse type: an integer >= 1 ("1000", "1e6"; not "2.5", "inf")
positive_int_arg = _int_arg(1)


def set_learning_rate(opt, args, curriculum):
    """The learning rate after annealing: ``--lr`` times ``--anneal`` for every time the
    curriculum's hardest levels have passed at the top level, never below ``--anneal-floor``
    times ``--lr``. RMSProp divides each gradient by its recent scale, so once a task is solved
    a rare error's gradient (clipped or not) becomes a full-size step; without annealing,
    training on copy relapsed from 0 to 30-70 bits again and again (benchmarks/relapse.py)."""
    factor = max(args.anneal_floor, args.anneal ** curriculum.solved_at_max)
    for group in opt.param_groups:
        group["lr"] = args.lr * factor


def _float_arg(low, high=None, low_open=True, high_open=True):
    """An argparse type: a finite float in the interval given (open or closed ends)."""
    lo = "(" if low_open else "["
    hi = ")" if high_open or high is None else "]"
    span = f"in {lo}{low:g}, {'inf' if high is None else format(high, 'g')}{hi}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a finite number {span}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def _with_default(key, text=""):
    d = DEFAULTS[key]
    if isinstance(d, bool):
        note = f"default {'on' if d else 'off'}"
    else:
        note = f"default {d:,}" if isinstance(d, int) else f"default {d}"
    if key in RUN_ARGS or key in RESUMABLE_ARGS:
        note += "; with --resume, the checkpoint's"
    return f"{text} ({note})" if text else f"({note})"


def add_arguments(p):
    positive = positive_int_arg
    positive_float = _float_arg(0)
    p.add_argument("--task", choices=["copy", "recall", "sort", "follow", *DATA_TASKS],
                   help=_with_default("task", "babi and omniglot read --data"))
    p.add_argument("--model", choices=["sam", "dam", "sdnc", "dnc"],
                   help=_with_default("model", "sam and sdnc: sparse (--k, --index; sdnc --link-k); "
                                      "dam and dnc: dense, give them few --slots, e.g. 64"))
    p.add_argument("--slots", type=_int_arg(1, MAX_SLOTS), help=_with_default("slots", "memory rows N"))
    p.add_argument("--batch", type=positive, help=_with_default("batch"))
    p.add_argument("--max-level", type=positive,
                   help="the task's hardest level: copy length (20), recall items (6), sort keys (20), "
                        "follow items (16), omniglot characters (100); with --resume it may rise for "
                        "copy, recall and follow (the curriculum goes on to longer episodes)")
    p.add_argument("--data", help="babi: the folder of qa{N}_*_{train,test}.txt (tasks_1-20_v1-2/en-10k); "
                                  "omniglot: the folder holding images_background and images_evaluation")
    p.add_argument("--steps", type=positive, help=_with_default("steps", "episodes (optimiser steps)"))
    p.add_argument("--minutes", type=positive_float,
                   help="stop after this wall time (this invocation's; the CSV's seconds go on across "
                        "--resume)")
    p.add_argument("--lr", type=positive_float,
                   help=_with_default("lr", "RMSProp learning rate (3e-4: of 1e-4, 3e-4 and 1e-3, the one "
                                            "that learned copy fastest here)"))
    p.add_argument("--momentum", type=_float_arg(0, 1, low_open=False),
                   help=_with_default("momentum", "RMSProp, in [0, 1)"))
    p.add_argument("--clip", type=positive_float, help=_with_default("clip", "gradient norm clip"))
    p.add_argument("--anneal", type=_float_arg(0, 1, high_open=False),
                   help=_with_default("anneal", "learning-rate factor each time the curriculum's hardest "
                                                "levels pass at the top level (1: never)"))
    p.add_argument("--anneal-floor", type=_float_arg(0, 1, high_open=False),
                   help=_with_default("anneal_floor", "lowest learning rate, as a share of --lr"))
    p.add_argument("--hidden", type=positive, help=_with_default("hidden", "LSTM units"))
    p.add_argument("--word", type=positive, help=_with_default("word", "word size W"))
    p.add_argument("--heads", type=positive, help=_with_default("heads", "read/write heads"))
    p.add_argument("--k", type=positive, help=_with_default("k", "rows read per head (SAM, SDNC)"))
    p.add_argument("--link-k", type=positive,
                   help=_with_default("link_k", "link entries kept per row and in the precedence (SDNC)"))
    p.add_argument("--hops", type=positive,
                   help=_with_default("hops", "follow: the items to output after the cue"))
    p.add_argument("--index", choices=["hnsw", "exact"],
                   help=_with_default("index", "SAM's and the SDNC's index"))
    p.add_argument("--curriculum", action=argparse.BooleanOptionalAction, help=_with_default("curriculum"))
    p.add_argument("--threshold", type=_float_arg(0, low_open=False),
                   help=_with_default("threshold", "curriculum: bits error per sequence; omniglot: share of "
                                                   "wrong labels after a character's first showing, default "
                                                   "0.1; babi: share of wrong answer words, default 0.05"))
    p.add_argument("--patience", type=positive,
                   help=_with_default("patience", "curriculum: episodes averaged"))
    p.add_argument("--seed", type=_int_arg(0, 2**63 - 2), help=_with_default("seed"))
    p.add_argument("--threads", type=positive,
                   help=_with_default("threads", "numba and HNSW index threads, per rank under torchrun "
                                                 "(left out there: at most the machine's cores over its "
                                                 "ranks)"))
    p.add_argument("--torch-threads", type=positive,
                   help=_with_default("torch_threads", "torch intra-op threads, per rank"))
    p.add_argument("--dist-timeout", type=positive_float,
                   help="under torchrun: seconds a rank waits for the rendezvous and for the other ranks "
                        "at each step before it stops with an error naming those that did not answer "
                        f"(default {distributed.DEFAULT_TIMEOUT})")
    p.add_argument("--checkpoint-every", type=positive, help=_with_default("checkpoint_every", "episodes"))
    p.add_argument("--out", default="runs/latest", help="the run's folder (default runs/latest)")
    changeable = ", ".join("--" + a.replace("_", "-") for a in RESUMABLE_ARGS)
    p.add_argument("--resume", action="store_true",
                   help=f"go on from OUT/checkpoint.pt; options left out take the checkpoint's values, only "
                        f"{changeable} may change (and --max-level rise: see it), e.g. "
                        "a lower --lr for a curriculum that has stalled")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
