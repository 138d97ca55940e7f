"""Training speed of SAM against DAM: time of one forward + backward step, all in one process.

    python benchmarks/step.py [--steps 50] [--repeats 5] [--batch 8] [--budget 60]
                              [--threads 2] [--no-profile] [--out FILE]

What is measured
  Models samcpu.SAM (index="hnsw") and samcpu.DAM, input/output 8, LSTM 100, W=32, H=4, K=4,
  batch B=8, sequences of T=--steps steps; x ~ Bernoulli(0.5) bits, BCE-with-logits loss
  against random bits, torch.optim.RMSprop (lr 1e-4). SAM at N = 1e4, 1e6, 1e7; DAM at
  N = 1e4, 65,536 and 1e6 as far as each fits in --budget seconds.
  First, untimed, a small SAM and DAM run a few sequences so that every numba kernel is
  compiled before anything is timed. Per configuration: build the model, 2 untimed warm-up sequences (numba compile, page faults),
  then --repeats timed sequences, each with a fresh state (state=None: SAM resets and reuses
  its memory), of forward (T steps) + loss + backward + optimizer step. Reported: median ms
  per step (sequence time / T) of the whole, of the forward alone and of the backward alone.
  DAM: its cost per step is independent of T and grows with N, so its warm-up sequences
  are 2 steps long (they also estimate its cost per step); if T steps do not fit in half the
  budget, shorter sequences are timed (the T used is reported); a configuration predicted
  (linearly in N from the last measured one) not to fit even with 2-step sequences, or to need
  more than ~16 GB, is skipped and said so. Timed sequences stop early once the budget is
  used (at least one).
  Derived: SAM t(N=1e7)/t(N=1e4) (target <= 1.2), SAM ms per step at N=1e6 (target <= 3.5),
  DAM/SAM at N=1e6 (target >= 10,000; DAM scaled linearly in N from its largest measured N
  when it was not measured at 1e6, and labelled so).
  Last, unless --no-profile: cProfile of one SAM N=1e6 sequence, top 10 functions by tottime
  (and by cumtime).
"""
import argparse
import cProfile
import gc
import io
import os
import pstats
import time

import numba
import numpy as np
import torch
from torch.nn import functional as F

import samcpu
from common import HERE, machine_info, rss_now, write_json

IO = 8
HIDDEN, W, H, K = 100, 32, 4, 4
DAM_BYTES_PER_SLOT_STEP = W * 4 * 6  # ~6 saved (N, W) float32 tensors per step and batch element


def build(kind, n, seed=0):
    torch.manual_seed(seed)
    if kind == "SAM":
        return samcpu.SAM(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_heads=H, k=K,
                          index="hnsw")
    return samcpu.DAM(IO, IO, hidden_size=HIDDEN, num_slots=n, word_size=W, num_heads=H)


def batch(steps, b, gen):
    x = torch.bernoulli(torch.full((steps, b, IO), 0.5), generator=gen)
    y = torch.bernoulli(torch.full((steps, b, IO), 0.5), generator=gen)
    return x, y


def sequence(model, opt, x, target):
    """One training sequence; returns (forward, backward, total) seconds."""
    t0 = time.perf_counter()
    y, state = model(x)  # state=None: a fresh state
    t1 = time.perf_counter()
    loss = F.binary_cross_entropy_with_logits(y, target)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    del y, state, loss
    return t1 - t0, t3 - t2, t4 - t0


def run_config(kind, n, args, gen, predicted_step_s=None):
    """Measure one (model, N). Returns a result dict (with "skipped" when not run)."""
    res = dict(model=kind, n=n, batch=args.batch)
    steps = args.steps
    if kind == "DAM":
        if predicted_step_s is not None:
            res["predicted_s_per_step"] = predicted_step_s
            if predicted_step_s * 2 * 3 > args.budget:  # warm-up + one 2-step sequence
                res["skipped"] = (f"predicted {predicted_step_s:.1f} s per step (linear in N from the "
                                  f"last measured DAM): even 2-step sequences do not fit in "
                                  f"{args.budget:.0f} s")
                return res
        est = 2 * args.batch * n * DAM_BYTES_PER_SLOT_STEP
        if est > 16e9:
            res["skipped"] = f"estimated {est / 1e9:.1f} GB for 2 steps"
            return res
    model = build(kind, n)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    rss0 = rss_now()
    t_start = time.perf_counter()
    warm = []
    warm_steps = steps if kind == "SAM" else 2
    for _ in range(2):
        warm.append(sequence(model, opt, *batch(warm_steps, args.batch, gen))[2] / warm_steps)
    res["warmup_ms_per_step"] = [1e3 * w for w in warm]
    if kind == "DAM":
        per_step = min(warm)
        fit = int(args.budget / 2 / per_step)
        if fit < steps:
            steps = max(2, fit)
            res["note"] = (f"T shortened from {args.steps} to {steps}: {per_step:.2f} s per step in "
                           f"warm-up, T={args.steps} does not fit in half of {args.budget:.0f} s")
        est = steps * args.batch * n * DAM_BYTES_PER_SLOT_STEP
        if est > 16e9:
            res["skipped"] = f"estimated {est / 1e9:.1f} GB for T={steps}"
            return res
    res["steps"] = steps
    fwd, bwd, tot = [], [], []
    t_timed = time.perf_counter()
    for r in range(args.repeats):
        a, b, c = sequence(model, opt, *batch(steps, args.batch, gen))
        fwd.append(a), bwd.append(b), tot.append(c)
        elapsed = time.perf_counter() - t_timed
        if elapsed + np.mean(tot) > args.budget:
            break
    if kind == "SAM":  # how many SparseMemory objects state=None made (reset and reuse otherwise)
        res["memories_made"] = getattr(model.access, "_made", None)
    ms = lambda v: float(1e3 * np.median(v) / steps)
    res.update(repeats=len(tot), ms_per_step=ms(tot), fwd_ms_per_step=ms(fwd), bwd_ms_per_step=ms(bwd),
               seq_ms=[1e3 * v for v in tot], config_s=time.perf_counter() - t_start,
               rss_growth_mib=(rss_now() - rss0) / 2**20)
    del model, opt
    gc.collect()
    return res


def profile_sam(n, args, gen):
    model = build("SAM", n)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    for _ in range(2):
        sequence(model, opt, *batch(args.steps, args.batch, gen))
    data = batch(args.steps, args.batch, gen)
    prof = cProfile.Profile()
    prof.enable()
    t = sequence(model, opt, *data)
    prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s).sort_stats("tottime")
    st.print_stats(10)
    top = []
    for func, (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:10]:
        top.append(dict(function=f"{func[0]}:{func[1]}({func[2]})", ncalls=nc, tottime_s=tt, cumtime_s=ct))
    cum = []
    for func, (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][3])[:10]:
        cum.append(dict(function=f"{func[0]}:{func[1]}({func[2]})", ncalls=nc, tottime_s=tt, cumtime_s=ct))
    return dict(n=n, sequence_s_profiled=t[2], top10_tottime=top, top10_cumtime=cum), s.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="T, steps per sequence")
    p.add_argument("--repeats", type=int, default=5, help="timed sequences per configuration")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--budget", type=float, default=60.0, help="seconds per DAM configuration")
    p.add_argument("--sam-slots", type=int, nargs="*", default=[10_000, 1_000_000, 10_000_000])
    p.add_argument("--dam-slots", type=int, nargs="*", default=[10_000, 65_536, 1_000_000])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--out", default=f"{HERE}/results/step.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    out = dict(machine=machine_info(args.threads), torch=torch.__version__,
               torch_threads=torch.get_num_threads(), args=vars(args), results=[])
    print(f"one training step (forward + BCE loss + backward + RMSprop), B={args.batch}, W={W}, H={H}, "
          f"K={K}, LSTM {HIDDEN}, T={args.steps}, threads={args.threads}", flush=True)
    head = (f"{'model':6s}{'N':>11s}{'T':>4s}{'reps':>5s}{'ms/step':>10s}{'fwd ms':>9s}{'bwd ms':>9s}"
            f"{'config s':>9s}  note")
    print(head, flush=True)

    def show(r):
        if "skipped" in r:
            print(f"{r['model']:6s}{r['n']:11,d}  skipped: {r['skipped']}", flush=True)
            return
        note = r.get("note", "")
        if r.get("memories_made") is not None:
            note = f"{r['memories_made']} memories made in {2 + r['repeats']} sequences " + note
        print(f"{r['model']:6s}{r['n']:11,d}{r['steps']:4d}{r['repeats']:5d}{r['ms_per_step']:10.3f}"
              f"{r['fwd_ms_per_step']:9.3f}{r['bwd_ms_per_step']:9.3f}{r['config_s']:9.1f}  {note}",
              flush=True)

    # compile every numba kernel (and warm torch) once, before any configuration is timed
    t0 = time.perf_counter()
    for kind, n, steps, reps in (("SAM", 10_000, args.steps, 3), ("DAM", 1_000, 2, 2)):
        model = build(kind, n)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
        for _ in range(reps):
            sequence(model, opt, *batch(steps, args.batch, gen))
        del model, opt
    gc.collect()
    out["global_warmup_s"] = time.perf_counter() - t0
    out["loadavg_start"] = os.getloadavg()
    print(f"(untimed compile and warm-up {out['global_warmup_s']:.0f} s; load average "
          f"{out['loadavg_start'][0]:.2f} before timing)", flush=True)
    for n in args.sam_slots:
        r = run_config("SAM", n, args, gen)
        out["results"].append(r)
        show(r)
    last = None
    for n in args.dam_slots:
        pred = None if last is None else last["ms_per_step"] / 1e3 * n / last["n"]
        r = run_config("DAM", n, args, gen, pred)
        out["results"].append(r)
        show(r)
        if "skipped" not in r:
            last = r

    sam = {r["n"]: r for r in out["results"] if r["model"] == "SAM" and "skipped" not in r}
    dam = {r["n"]: r for r in out["results"] if r["model"] == "DAM" and "skipped" not in r}
    derived = {}
    print()
    if 10_000 in sam and 10_000_000 in sam:
        v = sam[10_000_000]["ms_per_step"] / sam[10_000]["ms_per_step"]
        derived["sam_ratio_1e7_1e4"] = v
        print(f"SAM t(N=1e7)/t(N=1e4): {v:.3f}  (target <= 1.2: {'met' if v <= 1.2 else 'NOT met'})")
    if 1_000_000 in sam:
        v = sam[1_000_000]["ms_per_step"]
        derived["sam_ms_per_step_1e6"] = v
        print(f"SAM ms per step at N=1e6: {v:.3f}  (target <= 3.5: {'met' if v <= 3.5 else 'NOT met'}; "
              f"forward {sam[1_000_000]['fwd_ms_per_step']:.3f}, backward {sam[1_000_000]['bwd_ms_per_step']:.3f})")
        if 1_000_000 in dam:
            d, label = dam[1_000_000]["ms_per_step"], "measured"
        elif dam:
            big = max(dam)
            d = dam[big]["ms_per_step"] * 1_000_000 / big
            label = f"scaled linearly from N={big:,d}"
        else:
            d = None
        if d is not None:
            v = d / sam[1_000_000]["ms_per_step"]
            derived.update(dam_ms_per_step_1e6=d, dam_1e6_label=label, dam_over_sam_1e6=v)
            print(f"DAM/SAM at N=1e6: {v:,.0f}x  (DAM {d:,.0f} ms per step, {label}; target >= 10,000x: "
                  f"{'met' if v >= 10_000 else 'NOT met'})")
            for n in sorted(dam):
                if n in sam:
                    print(f"DAM/SAM at N={n:,d} (both measured): {dam[n]['ms_per_step'] / sam[n]['ms_per_step']:,.0f}x")
                    derived[f"dam_over_sam_{n}"] = dam[n]["ms_per_step"] / sam[n]["ms_per_step"]
    if len(dam) >= 2:
        a, b = sorted(dam)[:2]
        v = (dam[b]["ms_per_step"] / dam[a]["ms_per_step"]) / (b / a)
        derived["dam_linearity"] = v
        print(f"DAM cost growth N={a:,d} -> {b:,d} relative to linear in N: {v:.2f}")
    out["derived"] = derived

    if not args.no_profile:
        prof, text = profile_sam(1_000_000, args, gen)
        out["profile"] = prof
        print(f"\ncProfile of one SAM N=1e6 sequence (B={args.batch}, T={args.steps}, "
              f"{prof['sequence_s_profiled'] * 1e3:.0f} ms under the profiler), top 10 by tottime:")
        print("\n".join(line for line in text.splitlines() if line.strip()))
        print("top 10 by cumtime (s):")
        for f in prof["top10_cumtime"]:
            print(f"  {f['cumtime_s']:7.3f} {f['ncalls']:6d}  {f['function'].replace(os.path.dirname(HERE) + '/', '')}")
    out["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {out['loadavg_end'][0]:.2f}")
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
