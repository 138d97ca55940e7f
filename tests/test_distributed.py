"""Data-parallel training on torch.distributed (gloo, loopback only).

2 ranks with B/2 sequences each give the parameters of 1 process with B (float64 from user code
with DDP around samcpu.SAM; float32 through `samcpu train` launched as the README's two
`torchrun --nnodes 2` commands); a rank that dies makes the other exit non-zero naming it, and
the last checkpoint resumes; a batch that does not split and an unreachable rendezvous are
refused with the reason. Ranks are separate processes: this file is also their script
(``python tests/test_distributed.py ddp RANK SIZE OUT``).
"""
import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
TORCHRUN = os.path.join(os.path.dirname(PYTHON), "torchrun")
#: seconds any launched process may take before the test calls it hung
LIMIT = 120

# the float64 user-code run: model, data and optimiser
DDP_BATCH, DDP_STEPS = 4, 4
TINY = ["--slots", "32", "--word", "4", "--heads", "2", "--k", "2", "--hidden", "8", "--max-level", "3",
        "--threads", "1", "--lr", "3e-3", "--quiet"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, size, port):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
               WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
               PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return env


def launch(args, rank, size, port, **kwargs):
    return subprocess.Popen(args, env=rank_env(rank, size, port), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kwargs)


def finish(procs, limit=LIMIT):
    """(returncode, stdout, stderr) of each process; kills them all if one outlives ``limit``."""
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=limit)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


# ------------------------------------------------------------------ float64, user code

def ddp_train(rank, size, steps=DDP_STEPS, batch_size=DDP_BATCH):
    """The README's loop in float64: SAM in DDP when ``size`` > 1, each rank on its slice of the
    global batch (drawn with the same seed on every rank). Returns the parameters."""
    import numba

    import samcpu
    from samcpu import distributed
    from samcpu.tasks import CopyTask

    numba.set_num_threads(1)
    torch.manual_seed(0)
    model = samcpu.SAM(9, 8, hidden_size=16, num_slots=32, word_size=8, num_heads=2, k=2,
                       index="hnsw", dtype=torch.float64, index_options=dict(num_threads=1))
    net = torch.nn.parallel.DistributedDataParallel(model) if size > 1 else model
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, eps=1e-10)
    task = CopyTask(bits=8, max_length=4, seed=1)
    for _ in range(steps):
        batch = distributed.shard(task.sample(batch_size), rank, size)
        y, _ = net(batch.input.double())
        bce = torch.nn.functional.binary_cross_entropy_with_logits(y, batch.target.double(), reduction="none")
        loss = (bce.sum(-1) * batch.mask).sum() / batch.input.shape[1]  # mean over this rank's share
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ddp_worker(rank, size, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        params = ddp_train(rank, size)
        if rank == 0:
            torch.save(params, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_half_the_batch_equal_one_process_float64(tmp_path):
    port, out = free_port(), tmp_path / "ddp.pt"
    procs = [launch([PYTHON, __file__, "ddp", str(r), "2", str(out)], r, 2, port) for r in range(2)]
    results = finish(procs)
    for code, _, err in results:
        assert code == 0, err
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ddp_train(0, 1)
        initial = ddp_train(0, 1, steps=0)
    finally:
        torch.set_num_threads(threads)
    two = torch.load(out, weights_only=True)
    assert two.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(two[name], single[name], rtol=0, atol=1e-10, msg=name)
    # the steps moved every parameter far beyond the tolerance (lr 1e-3, RMSProp)
    for name, before in initial.items():
        assert float((single[name] - before).abs().max()) > 1e-4, name


if __name__ == "__main__":
    if sys.argv[1] == "ddp":
        _ddp_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
