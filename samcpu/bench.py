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

`samcpu bench figure7`: the paper's Figure 7 on this machine (see :func:`figure7`): the SDNC
against the dense DNC, and SAM at the same N, time of one forward + backward step and peak
memory with the initialisation included; ``benchmarks/figure7.py`` runs the same with the
machine's description in the JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from ._util import atomic_write, parse_int, peak_rss_bytes, reset_peak_rss, rss_bytes

#: the paper's benchmark model: input/output bits, LSTM units, word size, heads, reads per head
IO, HIDDEN, W, H, K = 8, 100, 32, 4, 4
#: bytes the DAM's autograd graph holds per slot, step and batch element: the memory after the
#: write (W float32) and five (H, N) or (N,) float32 tensors, 4 (W + 4H + 1) = 196 bytes,
#: measured 201 with a fixed glibc mmap threshold and 262-280 with glibc's default (freed
#: temporaries stay resident); the benchmarks skip DAM runs whose estimate exceeds their limit.
DAM_BYTES_PER_SLOT_STEP = 280


#: the SDNC's link entries per row and in the precedence (the paper's Figure 7: K_L = 8)
LINK_K = 8
#: the models :func:`build` makes; the dense ones cost O(N) (DAM) or O(N^2) (DNC) per step
KINDS = ("sam", "dam", "sdnc", "dnc")
DENSE = ("dam", "dnc")


def build(kind, n, seed=0, index_threads=None):
    """The benchmark model with N = ``n`` slots, input and output 8, LSTM 100, W=32, 4 heads:
    ``"sam"`` (SAM, HNSW index, K=4), ``"dam"`` (DAM), ``"sdnc"`` (SDNC, HNSW index, K=4,
    K_L=8) or ``"dnc"`` (DNC: 4 read heads, 1 write head, dense N x N links); parameters seeded
    by ``seed``. ``index_threads``: the HNSW index's threads over the batch (None: the index's
    default, 2)."""
    import torch

    torch.manual_seed(seed)
    options = None if index_threads is None else dict(num_threads=index_threads)
    if kind == "sam":
        from .nn import SAM
        return SAM(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_heads=H, k=K, index="hnsw",
                   index_options=options)
    if kind == "dam":
        from .nn import DAM
        return DAM(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_heads=H)
    if kind == "sdnc":
        from .sdnc import SDNC
        return SDNC(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_heads=H, k=K, link_k=LINK_K,
                    index="hnsw", index_options=options)
    if kind == "dnc":
        from .dnc import DNC
        return DNC(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_read_heads=H, num_write_heads=1)
    raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")


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


def _model_and_optimiser(kind, n, index_threads=None):
    import torch

    model = build(kind, n, index_threads=index_threads)
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


def _numbers(line):
    return [float(v) for v in line.split()]


def _worker(what, args, timeout=None, threads=1, parse=_numbers):
    """Run ``python -m samcpu.bench --worker WHAT THREADS ARGS...`` in a fresh process and return
    what it prints on its last line, parsed by ``parse`` (default: a list of numbers, the last
    the measurement; the time worker prints CPU then wall seconds; the Figure 7 workers print
    JSON), or None when it times out or fails (e.g. killed for memory; the reason is printed).
    Each measurement gets its own process so that none inherits another's heap."""
    cmd = [sys.executable, "-m", "samcpu.bench", "--worker", what, str(threads), *map(str, args)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        return parse(out.stdout.strip().splitlines()[-1])
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


# --------------------------------------------------------------------------- Figure 7

#: the paper's SDNC advantage over the DNC at N = 2,048 (Rae et al. 2016): 440x faster, 240x less memory
PAPER_2048 = dict(time=440, memory=240)
#: the models of `samcpu bench figure7`, in the order they are first run at each N
FIGURE7_MODELS = ("sdnc", "dnc", "sam")
#: float32 N x N link matrices (one write head) a DNC training pass of T steps holds at its peak,
#: about T + 4 of them: the initial one, one per step (kept for the backward pass) and the backward's
#: temporaries (measured: N=2,048, B=8, T=2, +744 MiB = 5.5 matrices)
DNC_EXTRA_MATRICES = 4
#: at most this many timed sequences per worker
MAX_SEQUENCES = 1000


def dnc_bytes(n, batch, steps):
    """Estimated peak bytes of a DNC training pass: (T + 4) float32 B x N x N link matrices."""
    return 4 * (steps + DNC_EXTRA_MATRICES) * batch * n * n


def malloc_trim():
    """Give the heap's free memory back to the OS (glibc), so that memory a warm-up freed is not
    silently reused by the measured pass (which would hide part of its growth); None elsewhere."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return None


def sequence_times(kind, n, batch, steps, repeats, min_ms, budget_s, threads=1):
    """In a fresh process: wall and CPU seconds of timed training sequences (B = ``batch``, T =
    ``steps``, each from a fresh state, forward + loss + backward + optimiser step) after one
    untimed warm-up sequence (T steps for a sparse model, which loads or compiles its kernels;
    2 steps for a dense one); at least ``repeats`` of them and until ``min_ms`` milliseconds are
    timed, stopping early (after one) when the next would end after ``budget_s`` seconds. The
    HNSW index (SAM, SDNC) gets ``threads`` threads, as torch and numba do in the worker.
    Returns a dict (the worker prints it as JSON)."""
    model, opt, gen = _model_and_optimiser(kind, n, threads)
    warm = train_sequence(model, opt, 2 if kind in DENSE else steps, batch, gen)[0]
    walls, cpus = [], []
    t0 = time.perf_counter()
    while len(walls) < MAX_SEQUENCES and (len(walls) < repeats or 1e3 * sum(walls) < min_ms):
        if walls and time.perf_counter() - t0 + np.mean(walls) > budget_s:
            break
        wall, cpu = train_sequence(model, opt, steps, batch, gen)
        walls.append(wall)
        cpus.append(cpu)
    return dict(warmup_s=warm, wall_s=walls, cpu_s=cpus)


def memory_with_init(kind, n, steps, threads=1):
    """In a fresh process: bytes of resident memory that building the model (N = ``n``) and its
    optimiser and one training sequence (B=1, T = ``steps``, optimiser step included) add at their
    peak. First a small model of the same kind (sparse: N=1,024 for 200 steps; dense: N=64 for T
    steps) loads or compiles the kernels and warms torch; it is freed, the heap trimmed, and the
    peak RSS reset to the current RSS, the baseline. The HNSW index (SAM, SDNC) gets ``threads``
    threads. Returns a dict of bytes (printed as JSON)."""
    import gc

    dense = kind in DENSE
    small, opt, gen = _model_and_optimiser(kind, 64 if dense else 1024, threads)
    train_sequence(small, opt, steps if dense else 200, 1, gen)
    del small, opt
    gc.collect()
    trimmed = malloc_trim()
    was_reset = reset_peak_rss()
    base = rss_bytes()
    model, opt, gen = _model_and_optimiser(kind, n, threads)
    built = rss_bytes()
    train_sequence(model, opt, steps, 1, gen)
    peak = peak_rss_bytes()
    return dict(baseline=base, build=built - base, extra=peak - base, peak=peak, peak_reset=was_reset,
                malloc_trim=trimmed)


def _json(line):
    return json.loads(line)


def _brief_machine():
    """What `samcpu bench figure7` records about the machine (benchmarks/figure7.py records more)."""
    import platform

    import numba
    import torch

    info = dict(platform=platform.platform(), python=sys.version.split()[0], nproc=os.cpu_count(),
                numpy=np.__version__, numba=numba.__version__, torch=torch.__version__)
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def _skip_dnc(n, batch, steps, limit_n, limit_name, args, last=None):
    """Why the DNC is not run at N = ``n`` (None: it is run). ``last``: (N, seconds per sequence)
    of the largest measured smaller N, to predict the cost (quadratic in N)."""
    if n > limit_n:
        return f"N > {limit_name} {limit_n:,d}"
    est = dnc_bytes(n, batch, steps)
    if est > args.memory_limit:
        return (f"estimated {est / 1e9:.1f} GB, (T + {DNC_EXTRA_MATRICES}) x B x N^2 x 4 bytes "
                f"(> --memory-limit {args.memory_limit / 1e9:g} GB)")
    if last is not None:
        predicted = last[1] * (n / last[0]) ** 2
        if predicted > args.budget:
            return f"predicted {predicted:.3g} s per sequence (quadratic in N) > --budget {args.budget:g} s"
    return None


def _median_ms(seconds, steps):
    return 1e3 * float(np.median(seconds)) / steps


def _figure7_memory(kind, n, args):
    """One (model, N) of the memory pass: a dict of MiB, or the reason it was skipped or failed."""
    r = {}
    why = (_skip_dnc(n, 1, args.memory_steps, args.dnc_memory_max, "--dnc-memory-max", args)
           if kind == "dnc" else None)
    if why:
        r["memory_skipped"] = shown = why
    else:
        r["memory_loadavg"] = os.getloadavg()[0]
        m = _worker("memory-init", (kind, n, args.memory_steps, args.threads), args.timeout, args.threads,
                    _json)
        if m is None:
            r["memory_failed"], shown = True, "failed"
        else:
            r.update(mem_extra_mib=m["extra"] / 2**20, mem_build_mib=m["build"] / 2**20,
                     mem_peak_mib=m["peak"] / 2**20, mem_baseline_mib=m["baseline"] / 2**20)
            shown = f"+{r['mem_extra_mib']:,.1f} MiB (build +{r['mem_build_mib']:,.1f})"
    print(f"  memory {kind.upper():4s} N={n:>10,}: {shown}", flush=True)
    return r


def _figure7_time(kind, n, args, r, seqs, rnd):
    """One timing worker of round ``rnd`` for (model, N): its sequences go into ``seqs`` (wall and
    CPU seconds of all rounds, kept out of the JSON), its statistics into ``r["rounds"]``, and the
    medians over all rounds into ``r``. Returns the worker's wall seconds (None if it failed)."""
    load = os.getloadavg()[0]
    t = _worker("time-seqs", (kind, n, args.batch, args.steps, args.repeats, args.min_ms, args.budget,
                              args.threads), args.timeout, args.threads, _json)
    if t is None:
        r["time_failed"] = True
        return None
    seqs[0].extend(t["wall_s"])
    seqs[1].extend(t["cpu_s"])
    per_step = 1e3 * np.asarray(t["wall_s"]) / args.steps
    r.setdefault("rounds", []).append(dict(
        ms_per_step=float(np.median(per_step)), cpu_ms_per_step=_median_ms(t["cpu_s"], args.steps),
        min_ms_per_step=float(per_step.min()), p90_ms_per_step=float(np.percentile(per_step, 90)),
        sequences=len(per_step), warmup_s=t["warmup_s"], loadavg=load))
    r.update(ms_per_step=_median_ms(seqs[0], args.steps), cpu_ms_per_step=_median_ms(seqs[1], args.steps),
             sequences=len(seqs[0]))
    print(f"  time   {kind.upper():4s} N={n:>10,} round {rnd + 1}: {r['rounds'][-1]['ms_per_step']:,.2f} "
          f"ms per step ({len(per_step)} sequences)", flush=True)
    return t["wall_s"]


def figure7(args, machine=None, command=None, extra=None):
    """`samcpu bench figure7`: the paper's Figure 7 on this machine, the SDNC against the DNC
    (and SAM), in one run. Writes ``figure7.json`` and ``figure7.png`` into ``args.out``.

    Memory: per N and model (interleaved per N) one fresh worker, :func:`memory_with_init`
    (B=1, T = --memory-steps, initialisation included). Time: --rounds rounds over all N, the
    models interleaved per N (their order rotated each round), each a fresh worker,
    :func:`sequence_times` (B = --batch, T = --steps); a model's time at N is the median over
    all its timed sequences of all rounds, divided by T (each round's median, minimum, 90th
    percentile, count and load average are in ``rounds``). The DNC runs while N <= --dnc-max (time)
    and --dnc-memory-max (memory), while its estimated memory fits --memory-limit and its
    predicted sequence time --budget. ``machine`` and ``command`` go into the JSON (default: a
    brief description and the `samcpu bench` command line), and so do the items of ``extra``.
    """
    models = list(dict.fromkeys(args.models))
    slots = sorted(set(args.slots))
    if command is None and sys.argv[1:2] == ["bench"]:
        command = " ".join(["samcpu", "bench", *sys.argv[2:]])
    res = dict(settings=dict(batch=args.batch, steps=args.steps, memory_batch=1,
                             memory_steps=args.memory_steps, rounds=args.rounds, repeats=args.repeats,
                             min_ms=args.min_ms, budget_s=args.budget, threads=args.threads, hidden=HIDDEN,
                             word_size=W, heads=H, k=K, link_k=LINK_K, index_threads=args.threads,
                             dnc_read_heads=H, dnc_write_heads=1, dnc_max=args.dnc_max,
                             dnc_memory_max=args.dnc_memory_max, memory_limit=args.memory_limit,
                             timeout_s=args.timeout, models=models, slots=slots),
               command=command, machine=machine if machine is not None else _brief_machine(),
               paper_2048=PAPER_2048, **(extra or {}), loadavg_start=os.getloadavg(), rows=[])
    rows = res["rows"]
    t_start = time.perf_counter()
    print(f"Figure 7: {', '.join(m.upper() for m in models)}; LSTM {HIDDEN}, W={W}, {H} heads, K={K}, "
          f"K_L={LINK_K}; time B={args.batch}, T={args.steps}; memory B=1, T={args.memory_steps} "
          f"(initialisation included); {args.threads} torch, numba and index thread(s) per worker; "
          f"load average {res['loadavg_start'][0]:.2f}", flush=True)
    last_dnc = None  # (N, seconds per sequence) of the largest N the DNC was timed at
    raw = {}  # (model, N): wall and CPU seconds of every timed sequence, all rounds
    for n in slots:  # memory first: each (N, model) in a fresh worker, interleaved per N
        row = dict(n=n)
        rows.append(row)
        for kind in models:
            row[kind] = _figure7_memory(kind, n, args)
    for rnd in range(args.rounds):
        for row in rows:
            shift = rnd % len(models)  # each round another model first
            for kind in models[shift:] + models[:shift]:
                r = row[kind]
                if "time_skipped" in r or r.get("time_failed"):
                    continue
                if kind == "dnc" and rnd == 0:
                    why = _skip_dnc(row["n"], args.batch, args.steps, args.dnc_max, "--dnc-max", args,
                                    last_dnc)
                    if why:
                        r["time_skipped"] = why
                        print(f"  time   DNC  N={row['n']:>10,}: skipped, {why}", flush=True)
                        continue
                seqs = _figure7_time(kind, row["n"], args, r, raw.setdefault((kind, row["n"]), ([], [])), rnd)
                if kind == "dnc" and rnd == 0 and seqs:
                    last_dnc = (row["n"], float(np.median(seqs)))
    res["loadavg_end"] = os.getloadavg()
    res["elapsed_s"] = time.perf_counter() - t_start
    res["derived"] = figure7_derived(rows)
    print()
    print(figure7_table(res))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "figure7.json")
    atomic_write(path, lambda f: f.write(json.dumps(res, indent=1).encode()))
    figure7_plot(res, os.path.join(args.out, "figure7.png"))
    print(f"wrote {path} and figure7.png")
    return 0


def _ratio(row, a, b, key):
    x, y = row.get(a, {}).get(key), row.get(b, {}).get(key)
    return x / y if x and y else None


def figure7_derived(rows):
    """Ratios from the measured rows: per N the DNC over the SDNC (time, CPU time, memory) and the
    SDNC over SAM; at N = 2,048 against the paper; the SDNC's flatness t(N_max)/t(1e4); the
    DNC's log-log slopes."""
    d = dict(per_n=[])
    for row in rows:
        p = dict(n=row["n"])
        for name, a, b, key in (("dnc_over_sdnc_time", "dnc", "sdnc", "ms_per_step"),
                                ("dnc_over_sdnc_cpu", "dnc", "sdnc", "cpu_ms_per_step"),
                                ("dnc_over_sdnc_memory", "dnc", "sdnc", "mem_extra_mib"),
                                ("dnc_over_sdnc_peak_rss", "dnc", "sdnc", "mem_peak_mib"),
                                ("sdnc_over_sam_time", "sdnc", "sam", "ms_per_step"),
                                ("sdnc_over_sam_cpu", "sdnc", "sam", "cpu_ms_per_step"),
                                ("sdnc_over_sam_memory", "sdnc", "sam", "mem_extra_mib")):
            v = _ratio(row, a, b, key)
            if v is not None:
                p[name] = v
        d["per_n"].append(p)
    at = next((p for p in d["per_n"] if p["n"] == 2048), None)
    if at is not None:
        d["at_2048"] = dict(at, paper_time=PAPER_2048["time"], paper_memory=PAPER_2048["memory"])
    sdnc = {r["n"]: r["sdnc"]["ms_per_step"] for r in rows if r.get("sdnc", {}).get("ms_per_step")}
    big = max(sdnc, default=None)
    if 10_000 in sdnc and big > 10_000:
        d["sdnc_flatness"] = dict(n_lo=10_000, n_hi=big, ratio=sdnc[big] / sdnc[10_000], target=1.2)
    over_sam = [p["sdnc_over_sam_time"] for p in d["per_n"] if "sdnc_over_sam_time" in p]
    if over_sam:
        d["sdnc_over_sam_time_max"] = max(over_sam)
        d["sdnc_over_sam_time_median"] = float(np.median(over_sam))
    for key in ("ms_per_step", "mem_extra_mib"):
        pts = [(r["n"], r["dnc"][key]) for r in rows if r.get("dnc", {}).get(key)]
        if len(pts) >= 2:
            d[f"dnc_loglog_slope_{key}"] = fit_loglog(*zip(*pts, strict=True))[0]
    return d


def _cell(value, fmt):
    return format(value, fmt) if value is not None else "-"


def _times(value):
    """A ratio as ``440x`` (``0.41x`` below 10), ``-`` when missing."""
    if value is None:
        return "-"
    return f"{value:,.0f}x" if value >= 10 else f"{value:.2g}x"


def figure7_table(res):
    """The printed table: per N the models' ms per step and MiB, and the ratios."""
    st, models, d = res["settings"], res["settings"]["models"], res["derived"]
    width = 9 * len(models)
    timed = f"ms per step (B={st['batch']}, T={st['steps']})"
    memory = f"MiB, init incl. (B=1, T={st['memory_steps']})"
    head1 = f"{'':>10s} | {timed:^{width}s} | {memory:^{width}s} | {'DNC / SDNC':^16s} | {'SDNC/SAM':^8s}"
    head2 = (f"{'N':>10s} | " + "".join(f"{m.upper():>9s}" for m in models) + " | "
             + "".join(f"{m.upper():>9s}" for m in models) + f" | {'time':>7s} {'memory':>8s} | {'time':>8s}")
    lines = [head1, head2, "-" * len(head2)]
    for row, p in zip(res["rows"], d["per_n"], strict=True):
        t = "".join(f"{_cell(row[m].get('ms_per_step'), ',.2f'):>9s}" for m in models)
        mem = "".join(f"{_cell(row[m].get('mem_extra_mib'), ',.1f'):>9s}" for m in models)
        ratios = (f"{_times(p.get('dnc_over_sdnc_time')):>7s} {_times(p.get('dnc_over_sdnc_memory')):>8s} | "
                  f"{_cell(p.get('sdnc_over_sam_time'), '.2f'):>8s}")
        lines.append(f"{row['n']:>10,} | {t} | {mem} | {ratios}")
    at = d.get("at_2048")
    if at and "dnc_over_sdnc_time" in at:
        mem = at.get("dnc_over_sdnc_memory")
        lines.append(f"N=2,048: the SDNC is {at['dnc_over_sdnc_time']:,.0f}x faster than the DNC "
                     f"({at.get('dnc_over_sdnc_cpu', float('nan')):,.0f}x in CPU time) and uses "
                     f"{_cell(mem, ',.0f')}x less memory (peak RSS of the whole process: "
                     f"{_cell(at.get('dnc_over_sdnc_peak_rss'), ',.1f')}x); the paper: "
                     f"{PAPER_2048['time']}x and {PAPER_2048['memory']}x")
    f = d.get("sdnc_flatness")
    if f:
        lines.append(f"SDNC t(N={f['n_hi']:,})/t(N=1e4): {f['ratio']:.3f} (target <= 1.2: "
                     f"{'met' if f['ratio'] <= 1.2 else 'NOT met'})")
    if "sdnc_over_sam_time_max" in d:
        v = d["sdnc_over_sam_time_max"]
        lines.append(f"SDNC / SAM time: median {d['sdnc_over_sam_time_median']:.2f}, max {v:.2f} over N "
                     f"(target <= 2: {'met' if v <= 2 else 'NOT met'})")
    for key, label in (("ms_per_step", "time"), ("mem_extra_mib", "memory")):
        if f"dnc_loglog_slope_{key}" in d:
            lines.append(f"DNC {label} grows as N^{d[f'dnc_loglog_slope_{key}']:.2f} (log-log fit)")
    lines.append(f"load average {res['loadavg_start'][0]:.2f} before, {res['loadavg_end'][0]:.2f} after; "
                 f"{res['elapsed_s'] / 60:.1f} minutes")
    return "\n".join(lines)


def figure7_plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res["settings"]
    colours = dict(sdnc="tab:green", dnc="tab:red", sam="tab:blue")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in (
            (axes[0], "ms_per_step", f"forward + backward, ms per step (B={st['batch']}, T={st['steps']})"),
            (axes[1], "mem_extra_mib", f"peak memory, MiB (B=1, T={st['memory_steps']}, init included)")):
        for kind in st["models"]:
            pts = [(r["n"], r[kind][key]) for r in res["rows"] if r[kind].get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=colours[kind], label=kind.upper())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("memory slots N")
        ax.set_title(label, fontsize=10)
        if ax.lines:
            ax.legend()
    at = res["derived"].get("at_2048", {})
    if "dnc_over_sdnc_time" in at:
        fig.suptitle(f"N=2,048: SDNC {at['dnc_over_sdnc_time']:,.0f}x faster, "
                     f"{_cell(at.get('dnc_over_sdnc_memory'), ',.0f')}x less memory than the DNC "
                     f"(paper: {PAPER_2048['time']}x, {PAPER_2048['memory']}x)", fontsize=10)
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
    """`samcpu bench scaling ...` and `samcpu bench figure7 ...` as subcommands of parser ``p``."""
    sub = p.add_subparsers(dest="what", required=True)
    scaling_arguments(sub.add_parser("scaling", help="the paper's Figure 1: SAM against DAM"))
    figure7_arguments(sub.add_parser("figure7", help="the paper's Figure 7: the SDNC, the DNC and SAM"))


def scaling_arguments(p):
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


def figure7_arguments(p, out="runs/bench"):
    """The options of `samcpu bench figure7` (and of benchmarks/figure7.py, whose ``out`` differs)."""
    p.add_argument("--slots", nargs="+", type=positive_int,
                   default=[256, 512, 1024, 2048, 4096, 8192, 10**4, 10**5, 10**6, 10**7],
                   help="memory sizes N (default 256 512 1024 2048 4096 8192 1e4 1e5 1e6 1e7)")
    p.add_argument("--models", nargs="+", choices=FIGURE7_MODELS, default=list(FIGURE7_MODELS),
                   help="models, in their first order at each N (default sdnc dnc sam)")
    p.add_argument("--dnc-max", type=positive_int, default=4096,
                   help="largest N at which the DNC is timed (default 4096)")
    p.add_argument("--dnc-memory-max", type=positive_int, default=8192,
                   help="largest N at which the DNC's memory is measured (default 8192)")
    p.add_argument("--memory-limit", type=float, default=12e9,
                   help="bytes: the DNC is not run where its estimated memory is larger")
    p.add_argument("--batch", type=positive_int, default=8, help="B of the timed sequences")
    p.add_argument("--steps", type=positive_int, default=10, help="T of the timed sequences")
    p.add_argument("--memory-steps", type=positive_int, default=10, help="T of the memory pass (B=1)")
    p.add_argument("--rounds", type=positive_int, default=3, help="timing rounds over all N (fresh workers)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed sequences per worker, at least")
    p.add_argument("--min-ms", type=float, default=2000,
                   help="time sequences until this many ms per worker are timed (after --repeats)")
    p.add_argument("--budget", type=float, default=300,
                   help="seconds of timed sequences per worker (timing stops, after one, when the next "
                        "sequence would pass it); the DNC is not run where one is predicted to take longer")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per worker process")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch, numba and HNSW index threads per worker (default 1)")
    p.add_argument("--out", default=out, help=f"folder for figure7.json and figure7.png (default {out})")


def run(args):
    """`samcpu bench WHAT`."""
    return figure7(args) if args.what == "figure7" else scaling(args)


WORKERS = {"memory": "peak_memory_worker", "time": "step_time", "memory-init": "memory_with_init",
           "time-seqs": "sequence_times"}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        import numba
        import torch

        what, threads, kind, *nums = sys.argv[2:]
        torch.set_num_threads(int(threads))  # the same thread budget for the sparse kernels and dense torch
        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
        result = globals()[WORKERS[what]](kind, *(int(v) if v.isdigit() else float(v) for v in nums))
        if isinstance(result, dict):
            print(json.dumps(result))
        else:
            print(*(result if isinstance(result, tuple) else (result,)))
