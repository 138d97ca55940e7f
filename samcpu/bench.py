"""`samcpu bench scaling`: the paper's Figure 1 on this machine; and the paper's benchmark model.

Time of one forward + backward training step (B=8, W=32, H=4, K=4, LSTM 100) and peak training
memory (B=1, T=100 steps of BPTT) against the memory size N, for SAM and for the dense DAM,
in one run. DAM is measured while N <= --dam-max (1e5); beyond, a straight line fitted in
log-log space to its measured points is drawn dashed and labelled "fitted", and ratios taken
from it are marked. Each measurement runs in a fresh worker process (peak memory first, as
Linux VmHWM after a reset, then the time), so none inherits the heap of another and the parent
stays small. Writes ``scaling.json`` and ``scaling.png`` into ``--out``; the JSON records the
load average before and after (the machine may be shared).

:func:`build` and the constants below are the benchmark configuration that
``benchmarks/step.py`` and ``benchmarks/memory.py`` use too.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from ._util import parse_int, peak_rss_bytes, reset_peak_rss, rss_bytes

#: the paper's benchmark model: input/output bits, LSTM units, word size, heads, reads per head
IO, HIDDEN, W, H, K = 8, 100, 32, 4, 4
#: bytes the DAM's autograd graph holds per slot, step and batch element: the memory after the
#: write (W float32) and five (H, N) or (N,) float32 tensors, 4 (W + 4H + 1) = 196 bytes,
#: measured 201 with a fixed glibc mmap threshold and 262-280 with glibc's default (freed
#: temporaries stay resident); the benchmarks skip DAM runs whose estimate exceeds their limit.
DAM_BYTES_PER_SLOT_STEP = 280


def build(kind, n, seed=0):
    """The benchmark model: ``"sam"`` (SAM, HNSW index) or ``"dam"`` (DAM) with N = ``n`` slots,
    input and output 8, LSTM 100, W=32, H=4, K=4; parameters seeded by ``seed``."""
    import torch

    from .nn import DAM, SAM

    torch.manual_seed(seed)
    if kind == "sam":
        return SAM(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_heads=H, k=K, index="hnsw")
    if kind == "dam":
        return DAM(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_heads=H)
    raise ValueError(f"kind must be 'sam' or 'dam', got {kind!r}")


def random_bits(steps, batch, gen):
    """Inputs and targets (steps, batch, IO), Bernoulli(0.5) bits from torch generator ``gen``."""
    import torch

    p = torch.full((steps, batch, IO), 0.5)
    return torch.bernoulli(p, generator=gen), torch.bernoulli(p, generator=gen)


def train_sequence(model, opt, steps, batch, gen):
    """One fresh-state training sequence; returns its (wall, CPU) seconds (CPU: this process,
    all threads; on a shared machine it depends much less on the others' load)."""
    from torch.nn import functional as F

    x, target = random_bits(steps, batch, gen)
    c0, t0 = time.process_time(), time.perf_counter()
    y, _ = model(x)
    F.binary_cross_entropy_with_logits(y, target).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def _model_and_optimiser(kind, n):
    import torch

    model = build(kind, n)
    return model, torch.optim.RMSprop(model.parameters(), lr=1e-4), torch.Generator().manual_seed(0)


def step_time(kind, n, batch, steps, repeats):
    """Median (CPU, wall) seconds per training step (sequences of ``steps`` steps, after one
    warm-up)."""
    model, opt, gen = _model_and_optimiser(kind, n)
    train_sequence(model, opt, steps, batch, gen)
    wall, cpu = zip(*(train_sequence(model, opt, steps, batch, gen) for _ in range(repeats)), strict=True)
    return float(np.median(cpu)) / steps, float(np.median(wall)) / steps


def peak_memory_worker(kind, n, steps):
    """In a fresh process: bytes of peak RSS a training pass of ``steps`` steps adds (B=1)."""
    model, opt, gen = _model_and_optimiser(kind, n)
    train_sequence(model, opt, 2, 1, gen)  # compile, allocate the optimiser state
    base = rss_bytes()
    reset_peak_rss()  # VmHWM := current RSS
    train_sequence(model, opt, steps, 1, gen)
    return peak_rss_bytes() - base


def _worker(what, args, timeout=None, threads=1):
    """Run ``python -m samcpu.bench --worker WHAT THREADS ARGS...`` in a fresh process and return
    the numbers it prints on its last line (a list; the last is the measurement, the time worker
    prints CPU then wall seconds), or None when it times out or fails (e.g. killed for memory; the
    reason is printed). Each measurement gets its own process so that none inherits another's heap."""
    cmd = [sys.executable, "-m", "samcpu.bench", "--worker", what, str(threads), *map(str, args)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        return [float(v) for v in out.stdout.strip().splitlines()[-1].split()]
    except subprocess.TimeoutExpired:
        why = f"timed out after {timeout:g} s"
    except subprocess.CalledProcessError as e:
        why = f"exit {e.returncode}: {e.stderr.strip()[-300:]}"
    except (IndexError, ValueError):  # no line, or not numbers
        why = f"printed no number: {out.stdout.strip()[-300:]!r}"
    print(f"  {what} worker {args} failed ({why})", file=sys.stderr)
    return None


def peak_memory(kind, n, steps, timeout):
    peak = _worker("memory", (kind, n, steps), timeout)
    return None if peak is None else int(peak[-1])


def fit_loglog(ns, values):
    """(slope, intercept) of log(value) = slope log(N) + intercept."""
    return tuple(float(v) for v in np.polyfit(np.log(ns), np.log(values), 1))


def scaling(args):
    slots = args.slots
    res = dict(settings=dict(batch=args.batch, steps=args.steps, repeats=args.repeats, word_size=W, heads=H,
                             k=K, hidden=HIDDEN, memory_batch=1, memory_steps=args.memory_steps,
                             torch_threads=args.torch_threads, dam_max=args.dam_max),
               command=" ".join(["samcpu", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else None,
               loadavg_start=os.getloadavg(), sam=[], dam=[])
    for kind in ("sam", "dam"):
        for n in slots:
            row = dict(n=n)
            if kind == "dam" and n > args.dam_max:
                row["skipped"] = f"N > --dam-max {args.dam_max}"
            else:
                # memory first, so that the parent has allocated nothing big when the worker
                # that needs most memory runs; each measurement in its own process
                peak = peak_memory(kind, n, args.memory_steps, args.timeout)
                row["peak_mib"] = None if peak is None else peak / 2**20
                secs = _worker("time", (kind, n, args.batch, args.steps, args.repeats), args.timeout,
                               threads=args.torch_threads)
                if secs is not None:
                    row["ms_per_step"] = 1e3 * secs[-1]
                    if len(secs) > 1:
                        row["cpu_ms_per_step"] = 1e3 * secs[0]
                failed = [what for what, v in (("memory", peak), ("time", secs)) if v is None]
                if failed:
                    row["failed"] = failed  # the worker's reason was printed
            res[kind].append(row)
            shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items() if k != "n")
            print(f"{kind.upper()} N={n:>10,}: " + ", ".join(shown), flush=True)
    res["loadavg_end"] = os.getloadavg()
    measured = [r for r in res["dam"] if "skipped" not in r]
    if len(measured) >= 2:
        for key in ("ms_per_step", "cpu_ms_per_step", "peak_mib"):
            pts = [(r["n"], r[key]) for r in measured if r.get(key)]
            if len(pts) >= 2:
                res[f"dam_fit_{key}"] = fit_loglog(*zip(*pts, strict=True))
    print("\nSAM / DAM (DAM measured where it ran, from the fitted line beyond, marked *):")
    for s, d in zip(res["sam"], res["dam"], strict=True):
        parts = []
        for key, label in (("ms_per_step", "time"), ("cpu_ms_per_step", "CPU time"), ("peak_mib", "memory")):
            if d.get(key) and s.get(key):
                ratio, mark = d[key] / s[key], ""
            elif f"dam_fit_{key}" in res and s.get(key):
                a, b = res[f"dam_fit_{key}"]
                ratio, mark = np.exp(b) * s["n"] ** a / s[key], "*"
            else:
                continue
            parts.append(f"{label} {ratio:,.0f}x{mark}")
            s[f"dam_over_sam_{key}"] = float(ratio)
            s[f"dam_over_sam_{key}_fitted"] = bool(mark)
        print(f"  N={s['n']:>10,}: " + "; ".join(parts))
    print(f"load average {res['loadavg_start'][0]:.2f} before, {res['loadavg_end'][0]:.2f} after")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(args.out, "scaling.png"))
    print(f"wrote {args.out}/scaling.json and scaling.png")
    return 0


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    st = res["settings"]
    for ax, key, label in ((axes[0], "ms_per_step", f"forward + backward ms per step (B={st['batch']})"),
                           (axes[1], "peak_mib", f"peak training memory, MiB (B=1, T={st['memory_steps']})")):
        for kind, colour in (("sam", "tab:blue"), ("dam", "tab:red")):
            pts = [(r["n"], r[key]) for r in res[kind] if r.get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=colour, label=kind.upper() + " (measured)")
        fit = res.get(f"dam_fit_{key}")
        if fit:
            ns = np.array([r["n"] for r in res["sam"]], float)
            ax.plot(ns, np.exp(fit[1]) * ns ** fit[0], "--", color="tab:red", alpha=0.6, label="DAM fitted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("memory slots N")
        ax.set_title(label, fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def positive_int(text):
    """argparse type: an integer >= 1 ("1000", "1e5", "1_000"), else an argparse error."""
    try:
        return parse_int(text, 1)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p):
    p.add_argument("what", choices=["scaling"])
    p.add_argument("--slots", nargs="+", type=positive_int, default=[10**3, 10**4, 10**5, 10**6, 10**7],
                   help="memory sizes N (default 1e3 1e4 1e5 1e6 1e7)")
    p.add_argument("--dam-max", type=positive_int, default=100_000,
                   help="largest N at which DAM is run (default 1e5); beyond, its line is fitted")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=20, help="steps per timed sequence")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--memory-steps", type=positive_int, default=100)
    p.add_argument("--timeout", type=float, default=1200, help="seconds per worker process")
    p.add_argument("--torch-threads", type=positive_int, default=1,
                   help="torch and numba threads in the timing workers (memory workers use 1)")
    p.add_argument("--out", default="runs/bench")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        import numba
        import torch

        what, threads, kind, *nums = sys.argv[2:]
        torch.set_num_threads(int(threads))  # the same thread budget for SAM's kernels and DAM's torch
        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
        fn = dict(memory=peak_memory_worker, time=step_time)[what]
        result = fn(kind, *map(int, nums))
        print(*(result if isinstance(result, tuple) else (result,)))
