"""Data-parallel training on this 2-core machine, and on paper on P machines.

    python benchmarks/distributed.py [--steps 600] [--repeats 3] [--slots 1000000] [--batch 8]
        [--out benchmarks/results/distributed.json]

1. Throughput: ``samcpu train --task copy --model sam`` with the paper's controller (hidden 100,
   W 32, 4 heads, K 4: about 124k parameters), the same global ``--batch``, seed and task
   (``--no-curriculum``, copy lengths 1-20), run as 1 process x 2 threads and as
   ``torchrun --nproc-per-node 2`` x 1 thread, alternately ``--repeats`` times. Episodes per
   second from the CSV's clock (training wall time, after the first 20 episodes: JIT, DDP's
   first step). Both see the same episodes: every rank draws the global batch from one stream.
2. The gradient all-reduce (``--worker``, under torchrun, 2 ranks x 1 thread): the time of one
   gloo all-reduce of the gradient's size (float32), against a DDP training step (forward,
   backward with DDP's all-reduce, optimiser) and the same step without DDP, at a fixed copy
   length; and the step without DDP at 1, 2, 4 and 8 sequences per rank, for the projection.
3. On paper (computed, not measured): P ranks on P machines, each with B/P sequences (global
   batch B fixed) or 8 (the batch grows with P): episode time = step(sequences per rank) +
   ring all-reduce of the gradient, 2 (P - 1) / P x 4 x params bytes at the bandwidth plus
   2 (P - 1) message latencies.

The load average before and after each part is recorded: the machine is shared.
"""
import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
TORCHRUN = os.path.join(os.path.dirname(PYTHON), "torchrun")
#: the paper's controller and the CLI's defaults
MODEL = ["--hidden", "100", "--word", "32", "--heads", "4", "--k", "4", "--index", "hnsw"]
#: networks for the projection: (name, bytes per second, seconds per message)
NETWORKS = [("1 Gb/s, 50 us", 125e6, 50e-6), ("10 Gb/s, 20 us", 1.25e9, 20e-6)]
WARMUP = 20


def load():
    return list(os.getloadavg())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, args):
    return [TORCHRUN, "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port",
            str(free_port()), *args]


def env():
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


# ------------------------------------------------------------------ 1. throughput

def train_run(ranks, threads, a, out):
    """One `samcpu train` run; returns its figures from the CSV's clock."""
    args = ["train", "--task", "copy", "--model", "sam", "--no-curriculum", "--max-level", "20",
            "--batch", str(a.batch), "--slots", str(a.slots), "--steps", str(a.steps),
            "--threads", str(threads), "--torch-threads", "1", "--seed", "0", "--quiet", "--out", out, *MODEL]
    cmd = [PYTHON, "-m", "samcpu", *args] if ranks == 1 else torchrun(ranks, ["-m", "samcpu", *args])
    before = load()
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env(), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    first, last = rows[WARMUP - 1], rows[-1]
    episodes = int(last["episode"]) - int(first["episode"])
    seconds = float(last["seconds"]) - float(first["seconds"])
    return dict(ranks=ranks, threads_per_rank=threads, episodes_timed=episodes, seconds=round(seconds, 3),
                episodes_per_s=round(episodes / seconds, 3), wall_with_startup_s=round(wall, 2),
                final_loss_mean_last50=round(sum(float(r["loss"]) for r in rows[-50:]) / len(rows[-50:]), 4),
                load_before=before, load_after=load())


def throughput(a):
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for ranks, threads in ((1, 2), (2, 1)):
                out = os.path.join(tmp, f"r{rep}_{ranks}x{threads}")
                runs.append(train_run(ranks, threads, a, out))
                print(json.dumps(runs[-1]), flush=True)
    rates = {}
    for r in runs:
        rates.setdefault(f"{r['ranks']}x{r['threads_per_rank']}", []).append(r["episodes_per_s"])
    median = {k: round(statistics.median(v), 3) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    return dict(note=f"an episode is one optimiser step over the global batch of {a.batch} sequences",
                runs=runs, episodes_per_s=rates, median_episodes_per_s=median, best_episodes_per_s=best,
                ratio_2x1_over_1x2_median=round(median["2x1"] / median["1x2"], 3),
                ratio_2x1_over_1x2_best=round(best["2x1"] / best["1x2"], 3))


# ------------------------------------------------------------------ 2. the all-reduce (worker)

def worker(a):
    """Under torchrun: time the gradient all-reduce, the DDP step and the local step."""
    import numba
    import torch
    import torch.distributed as dist

    from samcpu import SAM, distributed
    from samcpu.tasks import CopyTask

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    task = CopyTask(min_length=a.length, max_length=a.length, seed=rank)
    model = SAM(task.input_size, task.output_size, hidden_size=100, num_slots=a.slots, word_size=32,
                num_heads=4, k=4, index="hnsw", index_options=dict(num_threads=1))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4, momentum=0.9, eps=1e-10)

    def step(net, b):
        batch = task.sample(b)
        y, _ = net(batch.input)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(y, batch.target, reduction="none")
        loss = (bce.sum(-1) * batch.mask).sum() / b
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(fn, n, warm=3):
        for _ in range(warm):
            fn()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dist.barrier()
        return 1e3 * (time.perf_counter() - t0) / n

    per_rank = a.batch // size
    flat = torch.zeros(params)
    out = dict(params=params, ranks=size, sequences_per_rank=per_rank, copy_length=a.length,
               steps_per_episode=2 * a.length + 1, load_before=load())
    # the steps without DDP first: DDP's hooks stay on the parameters once it wraps them
    out["local_step_ms"] = timed(lambda: step(model, per_rank), a.reps)
    out["local_step_ms_by_sequences"] = {b: timed(lambda b=b: step(model, b), a.reps, warm=1)
                                         for b in (1, 2, 4, 8)}
    ddp = distributed.wrap(model)
    out["ddp_step_ms"] = timed(lambda: step(ddp, per_rank), a.reps)
    out["allreduce_ms"] = timed(lambda: dist.all_reduce(flat), a.reps * 5)
    out["allreduce_share_of_ddp_step"] = out["allreduce_ms"] / out["ddp_step_ms"]
    out["load_after"] = load()
    if rank == 0:
        with open(a.worker, "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


def allreduce(a):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.json")
        cmd = torchrun(2, [__file__, "--worker", path, "--slots", str(a.slots), "--batch", str(a.batch),
                           "--length", str(a.length), "--reps", str(a.reps)])
        subprocess.run(cmd, env=env(), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(path) as f:
            return json.load(f)


# ------------------------------------------------------------------ 3. on paper

def ring_allreduce_s(params, ranks, bandwidth, latency):
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * 4 * params / bandwidth + 2 * (ranks - 1) * latency


def projection(measured, batch):
    steps = {int(k): v / 1e3 for k, v in measured["local_step_ms_by_sequences"].items()}
    params, rows = measured["params"], []
    for name, bandwidth, latency in NETWORKS:
        for ranks in (1, 2, 4, 8):
            ar = ring_allreduce_s(params, ranks, bandwidth, latency)
            fixed = steps.get(batch // ranks)
            grow = steps[8] + ar
            rows.append(dict(network=name, ranks=ranks, allreduce_ms=round(1e3 * ar, 3),
                             fixed_batch=None if fixed is None else dict(
                                 global_batch=batch, sequences_per_rank=batch // ranks,
                                 episodes_per_s=round(1 / (fixed + ar), 2),
                                 sequences_per_s=round(batch / (fixed + ar), 1)),
                             growing_batch=dict(global_batch=8 * ranks, sequences_per_rank=8,
                                                episodes_per_s=round(1 / grow, 2),
                                                sequences_per_s=round(8 * ranks / grow, 1))))
    return dict(note="computed, not measured: the measured local step (one thread per rank, copy length "
                f"{measured['copy_length']}, {2 * measured['copy_length'] + 1} time steps) plus a ring "
                "all-reduce of the gradient on an assumed network; an episode is one optimiser step",
                rows=rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="episodes per throughput run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each layout, alternating")
    p.add_argument("--slots", type=int, default=1_000_000, help="memory rows N")
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--length", type=int, default=10, help="copy length of the all-reduce part's episodes")
    p.add_argument("--reps", type=int, default=20, help="timed steps per figure of the all-reduce part")
    p.add_argument("--out", default=os.path.join(HERE, "results", "distributed.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    sys.path.insert(0, HERE)
    from common import machine_info, write_json

    given = argv if argv is not None else sys.argv[1:]
    result = dict(command=" ".join(["python benchmarks/distributed.py", *given]), machine=machine_info(1),
                  load_start=load())
    result["throughput"] = throughput(a)
    result["allreduce"] = measured = allreduce(a)
    result["projection"] = projection(measured, a.batch)
    result["load_end"] = load()
    write_json(a.out, result)
    print(json.dumps({k: result[k] for k in ("throughput", "allreduce")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
