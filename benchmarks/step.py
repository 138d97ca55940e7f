"""Training speed of SAM against DAM: time of one forward + backward step, all in one process.

    python benchmarks/step.py [--steps 50] [--repeats 5] [--batch 8] [--budget 120]
                              [--threads 1] [--no-profile] [--out FILE]

What is measured
  The benchmark model of samcpu.bench.build: samcpu.SAM (index="hnsw") and samcpu.DAM (the
  vectorised dense baseline, samcpu/dense.py), input/output 8, LSTM 100, W=32, H=4, K=4, batch
  B=8, sequences of T=--steps steps; x ~ Bernoulli(0.5) bits, BCE-with-logits loss against
  random bits, torch.optim.RMSprop (lr 1e-4); --threads torch and numba threads (default 1).
  SAM at N = 1e4, 1e6, 1e7; DAM at N = 1e4, 65,536 and 1e6 as far as each fits in --budget
  seconds and --dam-limit bytes. Once, so that the change of issue 11 stays visible: the old
  samcpu.DAM (the bit-matching dense step now kept as the test oracle, tests/dense_ref.py with
  k=None, in the same controller) at N = --old-dam-slots (1e4 and 65,536), same B and threads.
  First, untimed, a small SAM and DAM run a few sequences so that every numba kernel is
  compiled before anything is timed. Per configuration: build the model, 2 untimed warm-up
  sequences (numba compile, page faults), then --repeats timed sequences, each with a fresh
  state (state=None: SAM resets and reuses its memory), of forward (T steps) + loss + backward
  + optimizer step. Reported: median ms per step (sequence time / T) of the whole, of the
  forward alone and of the backward alone, and the median CPU ms per step of the whole (the
  process's CPU time, all threads: on a loaded machine wall time grows with the other
  processes' load, CPU time much less; derived ratios are given for both).
  DAM: its cost per step is independent of T and grows with N, so its warm-up sequences
  are 2 steps long (they also estimate its cost per step); if T steps do not fit in half the
  budget, or their autograd graph (estimated at samcpu.bench.DAM_BYTES_PER_SLOT_STEP bytes per
  slot, step and batch element; the old DAM: 2,200) not in --dam-limit,
  shorter sequences are timed (the T used is reported); a configuration predicted (linearly
  in N from the last measured one) not to fit even with 2-step sequences is skipped and said
  so. Timed sequences stop early once the budget is used (at least one).
  Derived: SAM t(N=1e7)/t(N=1e4) (target <= 1.2), SAM ms per step at N=1e6 (target <= 3.5),
  DAM/SAM at every N both ran and at N=1e6 (DAM scaled linearly in N from its largest measured
  N when it was not measured at 1e6, and labelled so), old DAM / DAM at --old-dam-slots.
  The load average (os.getloadavg) before timing and at the end: the machine may be shared.
  Last, unless --no-profile: cProfile of one SAM N=1e6 sequence, top 10 functions by tottime
  (and by cumtime).
"""
import argparse
import cProfile
import gc
import io
import os
import pstats
import sys
import time

import numba
import numpy as np
import torch
from torch.nn import functional as F

from common import HERE, machine_info, rss_now, write_json
from samcpu.bench import DAM_BYTES_PER_SLOT_STEP, HIDDEN, K, H, W, build, positive_int
from samcpu.bench import random_bits as batch

OLD_DAM = "old DAM"  # the model name of the old samcpu.DAM's rows (tests/dense_ref.py, k=None)
#: the old DAM's resident memory per slot, step and batch element: 2,157 bytes measured
#: (benchmarks/results/memory.json before issue 11: +14.1 GB for N=65,536, T=100, B=1)
OLD_DAM_BYTES_PER_SLOT_STEP = 2200


def build_model(kind, n):
    """SAM, DAM, or the old DAM: samcpu.DAM's controller with the oracle's dense access
    (tests/dense_ref.py, k=None), the step samcpu.DAM ran before issue 11."""
    model = build("sam" if kind == "SAM" else "dam", n)
    if kind == OLD_DAM:
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
        from dense_ref import DenseAccess

        model.access = DenseAccess(n, W, H, k=None)
    return model


def sequence(model, opt, x, target):
    """One training sequence; returns (forward, backward, total) wall seconds and the total CPU
    seconds of this process (all its threads: on a shared machine, less sensitive to the load)."""
    c0 = time.process_time()
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
    c4 = time.process_time()
    del y, state, loss
    return t1 - t0, t3 - t2, t4 - t0, c4 - c0


def run_config(kind, n, args, gen, predicted_step_s=None):
    """Measure one (model, N). Returns a result dict (with "skipped" when not run)."""
    res = dict(model=kind, n=n, batch=args.batch)
    steps = args.steps
    dense = kind != "SAM"
    per_slot_step = OLD_DAM_BYTES_PER_SLOT_STEP if kind == OLD_DAM else DAM_BYTES_PER_SLOT_STEP
    if dense:
        if predicted_step_s is not None:
            res["predicted_s_per_step"] = predicted_step_s
            if predicted_step_s * 2 * 3 > args.budget:  # warm-up + one 2-step sequence
                res["skipped"] = (f"predicted {predicted_step_s:.1f} s per step (linear in N from the "
                                  f"last measured DAM): even 2-step sequences do not fit in "
                                  f"{args.budget:.0f} s")
                return res
        est = 2 * args.batch * n * per_slot_step
        if est > args.dam_limit:
            res["skipped"] = (f"estimated {est / 1e9:.1f} GB for 2 steps "
                              f"(--dam-limit {args.dam_limit / 1e9:g} GB)")
            return res
    model = build_model(kind, n)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    rss0 = rss_now()
    t_start = time.perf_counter()
    warm = []
    warm_steps = 2 if dense else steps
    for _ in range(2):
        warm.append(sequence(model, opt, *batch(warm_steps, args.batch, gen))[2] / warm_steps)
    res["warmup_ms_per_step"] = [1e3 * w for w in warm]
    if dense:
        per_step = min(warm)
        fit_time = int(args.budget / 2 / per_step)
        fit_memory = int(args.dam_limit / (args.batch * n * per_slot_step))
        if min(fit_time, fit_memory) < steps:
            steps = max(2, min(fit_time, fit_memory))
            why = (f"{per_step:.2f} s per step in warm-up, T={args.steps} does not fit in half of "
                   f"{args.budget:.0f} s" if fit_time <= fit_memory else
                   f"T={args.steps} would need ~{args.steps * args.batch * n * per_slot_step / 1e9:.1f} GB "
                   f"(> --dam-limit {args.dam_limit / 1e9:g} GB)")
            res["note"] = f"T shortened from {args.steps} to {steps}: {why}"
    res["steps"] = steps
    fwd, bwd, tot, cpu, memories = [], [], [], [], set()
    t_timed = time.perf_counter()
    for _ in range(args.repeats):
        a, b, c, d = sequence(model, opt, *batch(steps, args.batch, gen))
        fwd.append(a), bwd.append(b), tot.append(c), cpu.append(d)
        if kind == "SAM":  # the pool (public SparseAccess.memory) keeps them alive: ids are distinct
            memories.add(id(model.access.memory))
        elapsed = time.perf_counter() - t_timed
        if elapsed + np.mean(tot) > args.budget:
            break
    if kind == "SAM":  # state=None resets and reuses the memory of an earlier sequence
        res["memories_used"] = len(memories)

    def ms(v):
        return float(1e3 * np.median(v) / steps)

    res.update(repeats=len(tot), ms_per_step=ms(tot), fwd_ms_per_step=ms(fwd), bwd_ms_per_step=ms(bwd),
               cpu_ms_per_step=ms(cpu),
               seq_ms=[1e3 * v for v in tot], config_s=time.perf_counter() - t_start,
               rss_growth_mib=(rss_now() - rss0) / 2**20)
    del model, opt
    gc.collect()
    return res


def profile_sam(n, args, gen):
    model = build_model("SAM", n)
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
    for func, (_, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:10]:
        top.append(dict(function=f"{func[0]}:{func[1]}({func[2]})", ncalls=nc, tottime_s=tt, cumtime_s=ct))
    cum = []
    for func, (_, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][3])[:10]:
        cum.append(dict(function=f"{func[0]}:{func[1]}({func[2]})", ncalls=nc, tottime_s=tt, cumtime_s=ct))
    return dict(n=n, sequence_s_profiled=t[2], top10_tottime=top, top10_cumtime=cum), s.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=positive_int, default=50, help="T, steps per sequence")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed sequences per configuration")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--budget", type=float, default=120.0, help="seconds per DAM configuration")
    p.add_argument("--dam-limit", type=float, default=8e9,
                   help="bytes a DAM sequence's autograd graph may hold (estimated); T is shortened to fit")
    p.add_argument("--sam-slots", type=positive_int, nargs="*", default=[10_000, 1_000_000, 10_000_000])
    p.add_argument("--dam-slots", type=positive_int, nargs="*", default=[10_000, 65_536, 1_000_000])
    p.add_argument("--old-dam-slots", type=positive_int, nargs="*", default=[10_000, 65_536],
                   help="N at which the old samcpu.DAM (tests/dense_ref.py, k=None) is timed too")
    p.add_argument("--threads", type=positive_int, default=1, help="torch and numba threads")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--out", default=f"{HERE}/results/step.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    out = dict(machine=machine_info(args.threads), torch=torch.__version__,
               torch_threads=torch.get_num_threads(), args=vars(args),
               command=" ".join(["python", "benchmarks/step.py", *sys.argv[1:]]), results=[])
    print(f"one training step (forward + BCE loss + backward + RMSprop), B={args.batch}, W={W}, H={H}, "
          f"K={K}, LSTM {HIDDEN}, T={args.steps}, threads={args.threads}", flush=True)
    head = (f"{'model':8s}{'N':>11s}{'T':>4s}{'reps':>5s}{'ms/step':>10s}{'fwd ms':>9s}{'bwd ms':>9s}"
            f"{'CPU ms':>10s}{'config s':>9s}  note")
    print(head, flush=True)

    def show(r):
        if "skipped" in r:
            print(f"{r['model']:8s}{r['n']:11,d}  skipped: {r['skipped']}", flush=True)
            return
        note = r.get("note", "")
        if r.get("memories_used") is not None:
            note = f"{r['memories_used']} memories used in {r['repeats']} timed sequences " + note
        print(f"{r['model']:8s}{r['n']:11,d}{r['steps']:4d}{r['repeats']:5d}{r['ms_per_step']:10.3f}"
              f"{r['fwd_ms_per_step']:9.3f}{r['bwd_ms_per_step']:9.3f}{r['cpu_ms_per_step']:10.3f}"
              f"{r['config_s']:9.1f}  {note}",
              flush=True)

    # compile every numba kernel (and warm torch) once, before any configuration is timed
    t0 = time.perf_counter()
    warm = [("SAM", 10_000, args.steps, 3), ("DAM", 1_000, 2, 2)]
    warm += [(OLD_DAM, 1_000, 2, 2)] if args.old_dam_slots else []
    for kind, n, steps, reps in warm:
        model = build_model(kind, n)
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
    for kind, slots in (("DAM", args.dam_slots), (OLD_DAM, args.old_dam_slots)):
        last = None
        for n in slots:
            pred = None if last is None else last["ms_per_step"] / 1e3 * n / last["n"]
            r = run_config(kind, n, args, gen, pred)
            out["results"].append(r)
            show(r)
            if "skipped" not in r:
                last = r

    sam = {r["n"]: r for r in out["results"] if r["model"] == "SAM" and "skipped" not in r}
    dam = {r["n"]: r for r in out["results"] if r["model"] == "DAM" and "skipped" not in r}
    old = {r["n"]: r for r in out["results"] if r["model"] == OLD_DAM and "skipped" not in r}
    derived = {}
    print()
    if 10_000 in sam and 10_000_000 in sam:
        v = sam[10_000_000]["ms_per_step"] / sam[10_000]["ms_per_step"]
        derived["sam_ratio_1e7_1e4"] = v
        print(f"SAM t(N=1e7)/t(N=1e4): {v:.3f}  (target <= 1.2: {'met' if v <= 1.2 else 'NOT met'})")
    if 1_000_000 in sam:
        s6 = sam[1_000_000]
        v = s6["ms_per_step"]
        derived["sam_ms_per_step_1e6"] = v
        print(f"SAM ms per step at N=1e6: {v:.3f}  (target <= 3.5: {'met' if v <= 3.5 else 'NOT met'}; "
              f"forward {s6['fwd_ms_per_step']:.3f}, backward {s6['bwd_ms_per_step']:.3f})")
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
            print(f"DAM/SAM at N=1e6: {v:,.0f}x  (DAM {d:,.0f} ms per step, {label}; the paper: 1,600x)")
    for n in sorted(dam):
        if n in sam:
            v = dam[n]["ms_per_step"] / sam[n]["ms_per_step"]
            c = dam[n]["cpu_ms_per_step"] / sam[n]["cpu_ms_per_step"]
            derived[f"dam_over_sam_{n}"] = v
            derived[f"dam_over_sam_cpu_{n}"] = c
            print(f"DAM/SAM at N={n:,d} (both measured): {v:,.0f}x wall, {c:,.0f}x CPU time")
    if len(dam) >= 2:
        a, b = sorted(dam)[:2]
        v = (dam[b]["ms_per_step"] / dam[a]["ms_per_step"]) / (b / a)
        derived["dam_linearity"] = v
        print(f"DAM cost growth N={a:,d} -> {b:,d} relative to linear in N: {v:.2f}")
    for n in sorted(old):
        if n in dam:
            v = old[n]["ms_per_step"] / dam[n]["ms_per_step"]
            c = old[n]["cpu_ms_per_step"] / dam[n]["cpu_ms_per_step"]
            derived[f"old_dam_over_dam_{n}"] = v
            derived[f"old_dam_over_dam_cpu_{n}"] = c
            print(f"old DAM (tests/dense_ref.py) / DAM at N={n:,d}: {v:.1f}x wall "
                  f"({old[n]['ms_per_step']:,.0f} against {dam[n]['ms_per_step']:,.0f} ms per step), "
                  f"{c:.1f}x CPU time")
    out["derived"] = derived

    if not args.no_profile:
        prof, text = profile_sam(1_000_000, args, gen)
        out["profile"] = prof
        print(f"\ncProfile of one SAM N=1e6 sequence (B={args.batch}, T={args.steps}, "
              f"{prof['sequence_s_profiled'] * 1e3:.0f} ms under the profiler), top 10 by tottime:")
        print("\n".join(line for line in text.splitlines() if line.strip()))
        print("top 10 by cumtime (s):")
        for f in prof["top10_cumtime"]:
            name = f["function"].replace(os.path.dirname(HERE) + "/", "")
            print(f"  {f['cumtime_s']:7.3f} {f['ncalls']:6d}  {name}")
    out["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {out['loadavg_end'][0]:.2f}")
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
