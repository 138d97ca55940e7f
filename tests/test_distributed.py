"""Data-parallel training on torch.distributed (gloo, loopback only).

2 ranks with B/2 sequences each give the parameters of 1 process with B (float64 from user code
with DDP around samcpu.SAM; float32 through `samcpu train` launched as the two `torchrun --nnodes 2`
commands of docs/distributed.md); a rank that dies makes the other exit non-zero naming it, and
the last checkpoint resumes; a batch that does not split and an unreachable rendezvous are
refused with the reason. Ranks are separate processes: this file is also their script
(``python tests/test_distributed.py ddp RANK SIZE OUT``).
"""
import contextlib
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from samcpu import distributed, train
from samcpu.cli import main
from samcpu.tasks import Batch

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
    """The loop of docs/distributed.md's DDP script in float64: SAM in DDP when ``size`` > 1, each
    rank on its slice of the global batch (drawn with the same seed on every rank). Returns the
    parameters."""
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
    threads = torch.get_num_threads()
    try:  # one process with the whole batch, meanwhile
        torch.set_num_threads(1)
        single = ddp_train(0, 1)
        initial = ddp_train(0, 1, steps=0)
    finally:
        torch.set_num_threads(threads)
    for code, _, err in finish(procs):
        assert code == 0, err
    two = torch.load(out, weights_only=True)
    assert two.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(two[name], single[name], rtol=0, atol=1e-10, msg=name)
    # the steps moved every parameter far beyond the tolerance (lr 1e-3, RMSProp)
    for name, before in initial.items():
        assert float((single[name] - before).abs().max()) > 1e-4, name



# ------------------------------------------------------------------ samcpu train, float32

def torchrun_lines(nnodes, doc="docs/distributed.md", heading="## Launching: the commands"):
    """The ``torchrun`` command lines of section ``heading`` of ``doc``, on ``nnodes`` machines."""
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading):]
    section = section[:section.index("\n## ", 1)]
    lines = [line for line in section.splitlines() if line.startswith("torchrun ")]
    return [line for line in lines if ("--nnodes 2" in line) == (nnodes == 2)]


def csv_rows(out):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_same_training(a, b, tolerance=1e-5):
    """Two run folders: the same episodes, levels and errors; losses and weights to ``tolerance``."""
    ra, rb = csv_rows(a), csv_rows(b)
    assert [(r["episode"], r["level"], r["max_level"], r["bits_error"]) for r in ra] == \
        [(r["episode"], r["level"], r["max_level"], r["bits_error"]) for r in rb]
    np.testing.assert_allclose([float(r["loss"]) for r in ra], [float(r["loss"]) for r in rb], rtol=tolerance)
    wa, wb = (train.load_checkpoint(str(x / "checkpoint.pt"))["model"] for x in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=tolerance, msg=name)


RUN = [*TINY, "--batch", "4", "--patience", "2", "--threshold", "30"]


def test_the_documented_two_machine_launch_trains_as_one_process_and_resumes_on_one(tmp_path):
    """docs/distributed.md's `torchrun --nnodes 2` commands (one rank each, ADDR = 127.0.0.1):
    the same metrics and weights as one process with the whole batch; the checkpoint resumes
    in one."""
    lines = torchrun_lines(2)
    assert len(lines) == 2 and "--node-rank 0" in lines[0] and "--node-rank 1" in lines[1]
    assert all(" --master-addr ADDR " in line for line in lines), lines
    two, one = tmp_path / "two", tmp_path / "one"

    def launch():
        port, procs = free_port(), []
        for line in lines:
            line = line.replace("--master-addr ADDR", "--master-addr 127.0.0.1")
            words = re.sub(r"--master-port \d+", f"--master-port {port}", line).split()
            words[0] = TORCHRUN
            procs.append(subprocess.Popen([*words, *RUN, "--steps", "6", "--out", str(two)], cwd=tmp_path,
                                          env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        return procs

    procs = launch()
    assert main(["train", *RUN, "--steps", "6", "--out", str(one)]) == 0  # meanwhile, one process
    results = finish(procs)
    if any(code != 0 for code, _, _ in results):
        # once in about a dozen runs on a loaded machine the launch failed for a reason not
        # captured (a port taken between free_port() and the rendezvous?): one fresh attempt,
        # with the failure shown, before the assertion
        print("first launch failed:", *(err[-2000:] for _, _, err in results), sep="\n")
        shutil.rmtree(two, ignore_errors=True)
        results = finish(launch())
    for code, _, err in results:
        assert code == 0, err
    assert "6 episodes" in results[0][1] and "episodes" not in results[1][1]  # rank 0 alone reports
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))  # rank 0 alone wrote, the same files
    assert_same_training(two, one)
    ck = train.load_checkpoint(str(two / "checkpoint.pt"))
    assert ck["ranks"] == 2 and ck["episode"] == 6
    # levels moved: the all-reduced errors drove the curriculum as one process's did
    assert {r["max_level"] for r in csv_rows(one)} != {"1"}
    # the 2-rank checkpoint goes on in one process like the 1-process run
    assert main(["train", "--resume", "--steps", "9", "--out", str(two), "--quiet"]) == 0
    assert main(["train", "--resume", "--steps", "9", "--out", str(one), "--quiet"]) == 0
    assert_same_training(two, one)
    resumes = train.load_checkpoint(str(two / "checkpoint.pt"))["resumes"]
    assert resumes[-1]["ranks"] == 1 and resumes[-1]["episode"] == 6


def test_the_documented_torchrun_lines_use_existing_options():
    from samcpu.cli import main as cli

    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        cli(["train", "--help"])
    docs = torchrun_lines(1) + torchrun_lines(2)
    readme = torchrun_lines(1, "README.md", "## More than one process or machine")
    assert len(docs) >= 3 and len(readme) >= 1
    lines = docs + readme
    for line in lines:
        assert " -m samcpu train " in line, line
        for flag in (w for w in line.split(" -m samcpu train ")[1].split() if w.startswith("--")):
            assert flag in out.getvalue(), f"{line}: {flag} is not an option of samcpu train"


# ------------------------------------------------------------------ failures

def wait_for(path, procs):
    deadline = time.monotonic() + LIMIT
    while not path.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.1)


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_stops_the_other_naming_it_and_the_checkpoint_resumes(tmp_path, victim):
    out, port = tmp_path / "run", free_port()
    args = [PYTHON, "-m", "samcpu", "train", *RUN, "--steps", "100000", "--checkpoint-every", "3",
            "--dist-timeout", "20", "--out", str(out)]  # a roll call of 2 s
    procs = [launch(args, r, 2, port) for r in range(2)]
    try:
        wait_for(out / "checkpoint.pt", procs)
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code, _, err = finish([procs[1 - victim]])[0]
    finally:
        finish(procs)
    assert code == 1, err
    assert time.monotonic() - killed < LIMIT
    ck = train.load_checkpoint(str(out / "checkpoint.pt"))
    assert ck["episode"] >= 3 and ck["ranks"] == 2
    last = err.strip().splitlines()[-1]
    if victim == 1:  # rank 0 names the rank that did not answer and saves the last episode
        assert last.startswith("samcpu train: error: rank 0: rank 1 of 2 stopped answering"), err
        assert f"the checkpoint holds episode {ck['episode']:,d}: {out / 'checkpoint.pt'}" in last
    else:  # rank 0 held the rendezvous store: it is gone with it
        assert last.startswith("samcpu train: error: rank 1: lost contact"), err
        assert "rank 0" in last and f"127.0.0.1:{port}" in last
    rows = csv_rows(out)
    assert int(rows[-1]["episode"]) >= ck["episode"]
    if victim == 1:  # it resumes (here in one process)
        steps = ck["episode"] + 2
        assert main(["train", "--resume", "--steps", str(steps), "--out", str(out), "--quiet"]) == 0
        assert [int(r["episode"]) for r in csv_rows(out)] == list(range(1, steps + 1))


def test_under_torchrun_a_killed_rank_is_named_and_rank_0_saves(tmp_path):
    """torchrun stops the survivor (SIGTERM) and names the failed rank; rank 0 saves the last
    episode every rank committed before it goes."""
    out = tmp_path / "run"
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "samcpu", "train", *RUN, "--steps", "100000", "--checkpoint-every", "3", "--out", str(out)]
    agent = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "checkpoint.pt", [agent])
        pgrep = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True)
        ranks = {}
        for pid in pgrep.stdout.split():
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            ranks[int(env[b"RANK"])] = int(pid)
        os.kill(ranks[1], signal.SIGKILL)
        code, _, err = finish([agent])[0]
    finally:
        finish([agent])
    assert code != 0
    cause = err[err.index("Root Cause (first observed failure)"):]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", cause) and "SIGKILL" in cause, err
    line = next(x for x in err.splitlines() if x.startswith("samcpu train: error: rank 0: "))
    ck = train.load_checkpoint(str(out / "checkpoint.pt"))
    assert line.endswith(f"the checkpoint holds episode {ck['episode']:,d}: {out / 'checkpoint.pt'}"), line
    assert int(csv_rows(out)[-1]["episode"]) == ck["episode"]  # rank 0 saved the last episode


def distributed_env(monkeypatch, rank, port):
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                           LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(key, value)


def test_a_batch_that_does_not_split_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    distributed_env(monkeypatch, 0, free_port())
    out = tmp_path / "run"
    assert main(["train", *TINY, "--batch", "3", "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--batch 3 (the global batch) does not split over 2 ranks" in err and "2 or 4" in err
    assert not out.exists()


def test_an_unreachable_rendezvous_is_named(tmp_path, monkeypatch, capsys):
    import torch.distributed as dist

    port = free_port()  # nobody listens there
    distributed_env(monkeypatch, 1, port)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--batch", "4", "--dist-timeout", "2", "--out", str(out)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    want = f"samcpu train: error: rank 1: cannot join the rendezvous at 127.0.0.1:{port} "
    assert last.startswith(want), last
    assert not dist.is_initialized() and not out.exists()


def test_rank_0_refusing_the_arguments_stops_every_rank(tmp_path, monkeypatch, capsys):
    """Rank 0 sends its refusal to the others, which stop with it (the exchange faked here:
    the launch is what the tests above run)."""
    out = tmp_path / "run"
    why = f"--resume: no checkpoint at {out / 'checkpoint.pt'}"
    sent = []
    monkeypatch.setattr(distributed, "start", lambda world: None)
    monkeypatch.setattr(distributed, "share", lambda obj, world: sent.append(obj) or ("error", why))
    args = ["train", *RUN, "--resume", "--out", str(out)]
    for rank in (0, 1):
        distributed_env(monkeypatch, rank, 29500)
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == "samcpu train: error: " + (
            why if rank == 0 else f"rank 0 refused the run: {why}")
    assert sent == [("error", why), None]  # rank 0 sent the reason, rank 1 received it
    assert not out.exists()


# ------------------------------------------------------------------ the parts

def test_world_from_env():
    assert distributed.world_from_env({}) == distributed.World()
    env = dict(WORLD_SIZE="4", RANK="3", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT="29500")
    world = distributed.world_from_env(env)
    assert world == distributed.World(3, 4, 1, 2) and world.active and not world.main
    for key, value in (("RANK", "4"), ("RANK", "x"), ("WORLD_SIZE", "0"), ("LOCAL_RANK", "2")):
        with pytest.raises(ValueError, match=key):
            distributed.world_from_env(dict(env, **{key: value}))
    with pytest.raises(ValueError, match="MASTER_PORT"):
        distributed.world_from_env({k: v for k, v in env.items() if k != "MASTER_PORT"})
    # ranks on one machine share its cores; never fewer than one thread
    cores = distributed.cores()
    assert distributed.threads_per_rank(distributed.World(0, 2, 0, 2), 64) == max(1, cores // 2)
    assert distributed.threads_per_rank(distributed.World(0, 64, 0, 64), 2) == 1


def test_shards_are_the_global_batch_in_order():
    from samcpu.tasks import CopyTask

    batch = CopyTask(seed=3).sample(6)
    for size in (1, 2, 3, 6):
        parts = [distributed.shard(batch, r, size) for r in range(size)]
        assert all(p.input.shape[1] == 6 // size for p in parts)
        for i, x in enumerate(batch):
            assert torch.equal(torch.cat([p[i] for p in parts], 1), x)
    assert distributed.check_batch(8, 4) == 2
    with pytest.raises(ValueError, match="--batch 7 .* over 4 ranks: give a multiple of 4, e.g. 4 or 8"):
        distributed.check_batch(7, 4)
    with pytest.raises(ValueError, match="--batch 1 .* over 2 ranks: give a multiple of 2, e.g. 2$"):
        distributed.check_batch(1, 2)


@pytest.mark.parametrize("kind", ["bits", "answers"])
def test_the_reduced_error_is_the_global_batchs(monkeypatch, kind):
    """Two shards' metrics, summed as the all-reduce sums them, give exactly the error of the
    whole batch (bits per sequence; or a share of the scored answers, shards scoring unequal
    numbers of answers)."""
    from samcpu.tasks import answer_error, bits_error

    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(5, 6, 4, generator=gen), (torch.rand(5, 6, 4, generator=gen) > 0.5).float()
    mask = (torch.rand(5, 6, generator=gen) > 0.4).float()
    mask[:, :3] = 0  # the first shard scores nothing
    mask[0, 0] = 1  # but one answer
    task = type("T", (), {"error": staticmethod(answer_error)})() if kind == "answers" else object()
    whole = (answer_error if kind == "answers" else bits_error)(logits, target, mask)
    sent = []
    monkeypatch.setattr(distributed, "reduce_sums", lambda values: sent.append(values) or values)
    world = distributed.World(0, 2)
    whole_batch = Batch(logits, target, mask)  # the logits stand in for the input: same shape
    for r in range(2):
        part = distributed.shard(whole_batch, r, 2)
        train._metrics(task, torch.tensor(1.0), part.input, part, world, stop=r == 1)
    sums = [a + b for a, b in zip(*sent, strict=True)]
    monkeypatch.setattr(distributed, "reduce_sums", lambda values: sums)
    loss, error, stop = train._metrics(task, torch.tensor(1.0), logits, whole_batch, world, stop=False)
    assert error == whole and stop and loss == 1.0


if __name__ == "__main__":
    if sys.argv[1] == "ddp":
        _ddp_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
