"""Peak resident memory of training with backprop through time: SAM against DAM and a bare LSTM.

    python benchmarks/memory.py [--threads 1] [--timeout 300] [--out FILE]
    python benchmarks/memory.py --long [--long-steps 100000] [--long-timeout 2400]

What is measured
  One training pass: one forward over T steps from a fresh state, a BCE-with-logits loss on
  all outputs against random bits, one backward. Batch B=1, inputs x ~ Bernoulli(0.5) bits
  (8 of them), outputs 8, LSTM 100, W=32, H=4, K=4 (samcpu.bench.build); samcpu.SAM
  (index="hnsw") at N = 10,000, 65,536 and 1,000,000, T = 100 and 1,000; samcpu.DAM (the
  vectorised dense baseline) at N = 10,000 (T = 100, 1,000), 65,536 (T = 100, 300, 1,000) and
  1,000,000 (T = 100), side by side in one run, as far as --dam-limit allows; and, as a
  reference for what the controller costs by itself, a bare LSTM controller of the same shapes
  (LSTMCell(8 + 128, 100), the interface Linear(100, 268) and the output Linear(228, 8); its
  "reads" are tanh of 128 interface outputs, no memory).
  Each (model, N, T) runs in its own worker process (`memory.py --worker ...`, one JSON line
  on stdout). The worker first trains a small model of the same kind (SAM: N=1,024 for 400
  steps, so that every numba kernel is compiled or loaded), builds the real model, returns the
  heap's free memory to the OS (malloc_trim, so that memory freed by the warm-up cannot hide
  part of the measured growth), then resets its peak RSS (/proc/self/clear_refs 5) and records:
    baseline   RSS after building the model, before the forward;
    peak       the process's peak RSS after backward (VmHWM, reset at the baseline);
    extra      peak - baseline;
  forward and backward wall times, and for SAM the journal's bytes before backward
  (model.access.memory.journal_nbytes) divided by T (target <= 4 KiB per step).
  Derived: extra memory per step = (peak(T_hi) - peak(T_lo)) / (T_hi - T_lo) per model and N,
  from its shortest and longest measured T (T_lo = 100, T_hi = 1,000 where both ran)
  (SAM target: <= 48 KiB and the same at every N); DAM / SAM extra memory at each (N, T) both ran.
  DAM configurations whose estimate T * N * samcpu.bench.DAM_BYTES_PER_SLOT_STEP exceeds
  --dam-limit (16 GB) are skipped and reported with the estimate; a worker that runs past
  --timeout is reported as a timeout. The row DAM* repeats DAM N=65,536, T=100 with
  MALLOC_MMAP_THRESHOLD_=131072 (a fixed glibc mmap threshold): with glibc's default dynamic
  threshold freed temporaries can stay resident. The load average (os.getloadavg) before and
  after is recorded: the machine may be shared.
  --long (its own JSON section; earlier results in the output file are kept): SAM at N=1e6,
  B=1, BPTT through --long-steps (100,000) steps: one forward (run as consecutive calls of
  10,000 steps each that carry the state, so one graph, with progress on stderr), a loss on
  all outputs, one backward (progress from gradient hooks at the 10,000-step boundaries);
  wall times and peak RSS, in one worker with --long-timeout.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

from common import HERE, machine_info, write_json
from samcpu._util import peak_rss_bytes, reset_peak_rss, rss_bytes
from samcpu.bench import DAM_BYTES_PER_SLOT_STEP, HIDDEN, IO, H, W, positive_int
from samcpu.bench import build as build_model

KIB, MIB = 1024, 2**20
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # fixed glibc mmap threshold (see the DAM* row)


# ------------------------------------------------------------------ worker
def malloc_trim():
    """Give the heap's free memory back to the OS (glibc), so that the warm-up's freed memory
    is not silently reused by the measured pass (which would hide part of its growth)."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return None


def build(kind, n):
    """samcpu.bench.build's SAM or DAM, or (``"lstm"``) the bare controller."""
    import torch
    from torch import nn

    if kind in ("sam", "dam"):
        return build_model(kind, n)
    torch.manual_seed(0)

    class LSTMController(nn.Module):
        """SAM's controller without the memory: reads are a stand-in from the interface."""

        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(IO + H * W, HIDDEN)
            self.interface = nn.Linear(HIDDEN, H * (2 * W + 3))
            self.output = nn.Linear(HIDDEN + H * W, IO)

        def forward(self, x, state=None):
            if state is None:
                z = x.new_zeros(x.shape[1], HIDDEN)
                state = ((z, z.clone()), x.new_zeros(x.shape[1], H * W), None)
            (h, c), reads, _ = state
            ys = []
            for x_t in x:
                h, c = self.cell(torch.cat([x_t, reads], 1), (h, c))
                reads = torch.tanh(self.interface(h)[:, : H * W])
                ys.append(self.output(torch.cat([h, reads], 1)))
            return torch.stack(ys), ((h, c), reads, None)

    return LSTMController()


def train_pass(model, x, target, chunk, progress):
    """Forward over all of x in calls of ``chunk`` steps carrying the state (one graph), loss on
    all outputs, backward. Returns a dict of times and measurements."""
    import torch
    from torch.nn import functional as F
    t_total = len(x)
    ys, state = [], None
    t0 = time.perf_counter()
    for i in range(0, t_total, chunk):
        y, state = model(x[i:i + chunk], state)
        ys.append(y)
        done = min(i + chunk, t_total)
        if progress:
            h = state[0][0]
            if done < t_total and h.requires_grad:
                h.register_hook(lambda g, s=done, t=t0: print(
                    f"  backward reached step {s:,d} ({time.perf_counter() - t:.0f} s since forward start, "
                    f"RSS {rss_bytes() / MIB:,.0f} MiB)", file=sys.stderr, flush=True) or g)
            print(f"  forward step {done:,d}/{t_total:,d}: {time.perf_counter() - t0:.1f} s, "
                  f"RSS {rss_bytes() / MIB:,.0f} MiB", file=sys.stderr, flush=True)
    t1 = time.perf_counter()
    out = dict(forward_s=t1 - t0, rss_after_forward=rss_bytes(), peak_after_forward=peak_rss_bytes())
    mem = getattr(model.access, "memory", None) if hasattr(model, "access") else None
    if mem is not None:  # SAM: the journal of this forward (public SparseAccess.memory)
        out["journal_nbytes"] = mem.journal_nbytes
        idx = mem.index.stats() if hasattr(mem.index, "stats") else None
        out["index"] = idx
        out["written_rows"] = int(sum(len(mem.written_rows(b)) for b in range(mem.batch_size)))
    y = torch.cat(ys)
    loss = F.binary_cross_entropy_with_logits(y, target)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    if progress:
        print(f"  backward done: {t3 - t2:.1f} s", file=sys.stderr, flush=True)
    out.update(loss_s=t2 - t1, backward_s=t3 - t2, loss=float(loss.detach()))
    return out


def worker(args):
    import numba
    import torch
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    kind, n, steps = args.worker, args.n, args.steps
    gen = torch.Generator().manual_seed(1)
    # compile the kernels (and warm torch) on a small model of the same kind; SAM needs a few
    # hundred steps on a small memory to reach every code path (index flushes, LRA recycling)
    small_n, small_t = (1024, 400) if kind == "sam" else (64, 10)
    tiny = build(kind, small_n)
    x = torch.bernoulli(torch.full((small_t, 1, IO), 0.5), generator=gen)
    train_pass(tiny, x, x, small_t, False)
    del tiny, x
    gc.collect()
    model = build(kind, n)
    x = torch.bernoulli(torch.full((steps, 1, IO), 0.5), generator=gen)
    target = torch.bernoulli(torch.full((steps, 1, IO), 0.5), generator=gen)
    gc.collect()
    trimmed = malloc_trim()
    was_reset = reset_peak_rss()
    base = rss_bytes()
    res = dict(model=kind, n=n, steps=steps, peak_reset=was_reset, malloc_trim=trimmed, baseline=base)
    res.update(train_pass(model, x, target, args.chunk or steps, args.chunk is not None))
    res.update(peak=peak_rss_bytes(), rss_after_backward=rss_bytes())
    res["extra"] = res["peak"] - base
    print(json.dumps(res), flush=True)


# ------------------------------------------------------------------ parent
def dam_estimate(n, steps):
    """Bytes of the DAM's autograd graph over ``steps`` steps at B=1 (an estimate)."""
    return steps * n * DAM_BYTES_PER_SLOT_STEP


def run_worker(kind, n, steps, args, timeout, chunk=None, env=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n), "--steps", str(steps),
           "--threads", str(args.threads)]
    if chunk:
        cmd += ["--chunk", str(chunk)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, timeout=timeout,
                           stderr=None if chunk else subprocess.PIPE,
                           env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired:
        return dict(model=kind, n=n, steps=steps, status=f"timeout: no result after {timeout:.0f} s")
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        err = (p.stderr or "")[-1500:]
        why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
        return dict(model=kind, n=n, steps=steps, status=f"failed: {why}", stderr_tail=err, wall_s=wall)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(status="ok", wall_s=wall)
    if env:
        res["env"] = env
    return res


def fmt_row(r):
    name = {"sam": "SAM", "dam": "DAM", "lstm": "LSTM only"}[r["model"]] + ("*" if r.get("env") else "")
    n = "-" if r["model"] == "lstm" else f"{r['n']:,d}"
    if r["status"] != "ok":
        return f"{name:10s}{n:>11s}{r['steps']:>8,d}  {r['status']}"
    j = f"{r['journal_nbytes'] / r['steps']:10,.0f}" if "journal_nbytes" in r else f"{'-':>10s}"
    return (f"{name:10s}{n:>11s}{r['steps']:>8,d}{r['baseline'] / MIB:10,.1f}{r['peak'] / MIB:10,.1f}"
            f"{r['extra'] / MIB:10,.1f}{r['forward_s']:9.2f}{r['backward_s']:9.2f}{j}")


HEADER = (f"{'model':10s}{'N':>11s}{'T':>8s}{'base MiB':>10s}{'peak MiB':>10s}{'extra MiB':>10s}"
          f"{'fwd s':>9s}{'bwd s':>9s}{'journal/T':>10s}")

#: (model, N, T, environment) of the short run, in order; DAM rows beyond --dam-limit are skipped
PLAN = ([("lstm", 0, t, None) for t in (100, 1000)]
        + [("sam", n, t, None) for n in (10_000, 65_536, 1_000_000) for t in (100, 1000)]
        + [("dam", 10_000, t, None) for t in (100, 1000)]
        + [("dam", 65_536, t, None) for t in (100, 300, 1000)]
        + [("dam", 1_000_000, 100, None), ("dam", 65_536, 100, MALLOC_ENV)])


def per_step(runs):
    """Extra memory per step of each (model, N) from its shortest and longest measured T."""
    by = {}
    for r in runs:
        by.setdefault((r["model"], r["n"]), []).append(r)
    derived = []
    for (kind, n), rs in by.items():
        if len(rs) < 2:
            continue
        a, b = min(rs, key=lambda r: r["steps"]), max(rs, key=lambda r: r["steps"])
        span = b["steps"] - a["steps"]
        d = dict(model=kind, n=n, t_lo=a["steps"], t_hi=b["steps"],
                 peak_per_step=(b["peak"] - a["peak"]) / span,
                 extra_per_step=(b["extra"] - a["extra"]) / span)
        if kind == "sam":
            d["journal_per_step_t100"] = a["journal_nbytes"] / a["steps"]
            d["journal_per_step_t1000"] = b["journal_nbytes"] / b["steps"]
        derived.append(d)
    return derived


def main_short(args, out):
    print(f"peak RSS of one training pass (forward over T steps + loss + backward), B=1, W={W}, H={H}, "
          f"K=4, LSTM {HIDDEN}, threads={args.threads}; one worker process per row; MiB = 2^20 bytes; "
          f"journal/T in bytes per step", flush=True)
    out["loadavg_start"] = os.getloadavg()
    print(HEADER, flush=True)
    rows = []
    for kind, n, t, env in PLAN:
        if kind == "dam" and dam_estimate(n, t) > args.dam_limit:
            r = dict(model=kind, n=n, steps=t,
                     status=f"skipped: estimated {dam_estimate(n, t) / 1e9:.1f} GB "
                            f"(T*N*{DAM_BYTES_PER_SLOT_STEP} B > --dam-limit {args.dam_limit / 1e9:g} GB)")
        else:
            r = run_worker(kind, n, t, args, args.timeout, env=env)
        rows.append(r)
        print(fmt_row(r), flush=True)
    out["runs"] = rows
    out["loadavg_end"] = os.getloadavg()
    print("* with MALLOC_MMAP_THRESHOLD_=131072 (a fixed glibc mmap threshold)")

    ok = [r for r in rows if r["status"] == "ok" and not r.get("env")]
    derived = per_step(ok)
    print()
    for d in derived:
        label = "LSTM only" if d["model"] == "lstm" else f"{d['model'].upper()} N={d['n']:,d}"
        line = (f"{label:18s} extra memory per step (peak(T={d['t_hi']:,d}) - peak(T={d['t_lo']:,d})) / "
                f"{d['t_hi'] - d['t_lo']:,d}: {d['peak_per_step'] / KIB:10,.1f} KiB "
                f"(from extra: {d['extra_per_step'] / KIB:,.1f} KiB)")
        if d["model"] == "sam":
            worst = max(d["journal_per_step_t100"], d["journal_per_step_t1000"])
            line += (f"; target <= 48 KiB: {'met' if d['peak_per_step'] <= 48 * KIB else 'NOT met'}"
                     f"\n{'':18s} journal per step: {d['journal_per_step_t100']:,.0f} B at T={d['t_lo']:,d}, "
                     f"{d['journal_per_step_t1000']:,.0f} B at T={d['t_hi']:,d} (target <= 4,096 B: "
                     f"{'met' if worst <= 4096 else 'NOT met'})")
        print(line)
    sam = {d["n"]: d for d in derived if d["model"] == "sam"}
    if 65_536 in sam and 1_000_000 in sam:
        ratio = sam[1_000_000]["peak_per_step"] / sam[65_536]["peak_per_step"]
        out["sam_per_step_ratio_1e6_over_65536"] = ratio
        print(f"SAM extra memory per step, N=1e6 over N=65,536: {ratio:.3f} (flat in N if ~1)")
    out["derived"] = derived
    # DAM against SAM side by side: the same (N, T), both measured in this run
    by = {(r["model"], r["n"], r["steps"]): r for r in ok}
    ratios = []
    for (kind, n, t), d in sorted(by.items()):
        s = by.get(("sam", n, t))
        if kind == "dam" and s:
            ratios.append(dict(n=n, steps=t, dam_extra=d["extra"], sam_extra=s["extra"],
                               dam_over_sam_extra=d["extra"] / s["extra"],
                               dam_over_sam_peak=d["peak"] / s["peak"]))
            print(f"DAM / SAM at N={n:,d}, T={t:,d}: extra memory {d['extra'] / s['extra']:,.0f}x "
                  f"({d['extra'] / MIB:,.1f} against {s['extra'] / MIB:,.1f} MiB), "
                  f"peak RSS {d['peak'] / s['peak']:,.1f}x")
    for n in sorted({d["n"] for d in derived if d["model"] == "dam"}):
        dd = next(d for d in derived if d["model"] == "dam" and d["n"] == n)
        if n in sam:
            v = dd["peak_per_step"] / sam[n]["peak_per_step"]
            ratios.append(dict(n=n, dam_over_sam_peak_per_step=v))
            print(f"DAM / SAM extra memory per step at N={n:,d}: {v:,.0f}x "
                  f"({dd['peak_per_step'] / KIB:,.0f} against {sam[n]['peak_per_step'] / KIB:,.1f} KiB)")
    out["dam_over_sam"] = ratios
    print(f"load average {out['loadavg_start'][0]:.2f} before, {out['loadavg_end'][0]:.2f} after")


def main_long(args, out):
    n, steps = 1_000_000, args.long_steps
    print(f"BPTT through {steps:,d} steps: SAM N={n:,d}, B=1, one forward, loss on all outputs, one backward "
          f"(worker timeout {args.long_timeout:.0f} s; progress on stderr)", flush=True)
    r = run_worker("sam", n, steps, args, args.long_timeout, chunk=10_000)
    out["long"] = r
    print(HEADER)
    print(fmt_row(r))
    if r["status"] == "ok":
        print(f"forward {r['forward_s']:.1f} s ({1e3 * r['forward_s'] / steps:.3f} ms per step), backward "
              f"{r['backward_s']:.1f} s ({1e3 * r['backward_s'] / steps:.3f} ms per step); peak RSS "
              f"{r['peak'] / MIB:,.0f} MiB, extra {r['extra'] / MIB:,.0f} MiB = "
              f"{r['extra'] / steps / KIB:.1f} KiB per step; "
              f"journal {r['journal_nbytes'] / steps:,.0f} B per step")
        short = {(s["n"], s["steps"]): s for s in out.get("runs", [])
                 if s["model"] == "sam" and s["status"] == "ok" and not s.get("env")}
        if (n, 1000) in short:
            v = (r["peak"] - short[(n, 1000)]["peak"]) / (steps - 1000)
            out["long_peak_per_step_vs_t1000"] = v
            print(f"(peak(T={steps:,d}) - peak(T=1,000)) / {steps - 1000:,d} = {v / KIB:.1f} KiB per step")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=positive_int, default=1, help="torch and numba threads per worker")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per worker")
    p.add_argument("--dam-limit", type=float, default=16e9, help="skip DAM runs estimated above (bytes)")
    p.add_argument("--long", action="store_true", help="only the 100,000-step BPTT run")
    p.add_argument("--long-steps", type=positive_int, default=100_000)
    p.add_argument("--long-timeout", type=float, default=2400.0)
    p.add_argument("--out", default=f"{HERE}/results/memory.json")
    p.add_argument("--worker", choices=["sam", "dam", "lstm"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    out = {}
    if os.path.exists(args.out):  # keep the other part's results
        with open(args.out) as f:
            out = json.load(f)
    out.setdefault("machine", machine_info(args.threads))
    out["parent_rss_at_spawn"] = rss_bytes()
    key = "long_args" if args.long else "args"
    out[key] = {k: v for k, v in vars(args).items() if k not in ("worker", "n", "steps", "chunk")}
    command = " ".join(["python", "benchmarks/memory.py", *sys.argv[1:]])
    out["long_command" if args.long else "command"] = command
    if args.long:
        out["long_machine"] = machine_info(args.threads)
        main_long(args, out)
    else:
        out["machine"] = machine_info(args.threads)
        main_short(args, out)
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
