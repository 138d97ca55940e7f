"""Data-parallel training on torch.distributed (gloo): what `samcpu train` needs under `torchrun`.

The ranks train one model. Each rank holds a copy of the controller's parameters, wrapped in
``torch.nn.parallel.DistributedDataParallel``, and its own share of the global batch with its
own memories, indexes and journals: a memory is per-sequence state, not a parameter, so
nothing of it crosses the network. After each backward pass DDP averages the parameters'
gradients over the ranks; the loss of each rank is a mean over its own sequences, so with
equal shares the average is the gradient of the mean over the global batch, as one process
with the whole batch would compute it.

Every rank draws the *global* batch from the same seeded task stream and keeps its own
contiguous slice (:func:`shard`): the ranks train on distinct sequences, a batch's length is
the same on every rank (copy draws one length per batch, so no rank waits for a longer one),
and the random streams are one state whatever the number of ranks, so a checkpoint resumes on
another number of ranks with the same data. Drawing the global batch costs each rank
microseconds against an episode's milliseconds.

Failures: a collective that fails (a rank died, hung past the timeout or lost its network)
raises :class:`RankLost` naming the ranks that did not answer a roll call on the rendezvous
store (:func:`lost_ranks`); a rendezvous that cannot be reached raises
:class:`DistributedError` naming the endpoint.
"""
import datetime
import inspect
import os
import re
import time
from dataclasses import dataclass

import torch
from torch import distributed as dist

from ._util import parse_int

#: seconds a rank waits for the others at a collective (and for the rendezvous) by default
DEFAULT_TIMEOUT = 300
#: seconds the survivors of a failed collective wait for each other to answer the roll call (at
#: most; a tenth of the timeout when that is shorter)
ROLL_CALL_SECONDS = 5.0


class DistributedError(RuntimeError):
    """The ranks cannot work together (rendezvous, a lost rank); the message says why."""


class RankLost(DistributedError):
    """A collective failed: ``ranks`` are those that did not answer the roll call."""

    def __init__(self, message, ranks=()):
        super().__init__(message)
        self.ranks = tuple(ranks)


class Stopped(RankLost):
    """SIGTERM: under torchrun, the agent stopping every rank because one failed."""

    def __init__(self):
        super().__init__("stopped by SIGTERM (torchrun stops every rank when one fails: its report names "
                         "the rank)")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (``torchrun``'s environment variables).

    rank, size: ``RANK`` and ``WORLD_SIZE``; local_rank, local_size: ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` (the ranks on this machine, which share its cores); timeout: seconds
    a rank waits for the rendezvous and for the others at a collective."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    timeout: float = DEFAULT_TIMEOUT

    @property
    def roll_call(self):
        """Seconds the survivors of a failed collective wait for each other's answer."""
        return min(ROLL_CALL_SECONDS, self.timeout / 10)

    @property
    def main(self):
        """True on rank 0, the rank that writes the run's files."""
        return self.rank == 0

    @property
    def active(self):
        """True when there is more than one rank (a process group to join)."""
        return self.size > 1


def _env_int(environ, name, minimum, maximum=None, default=None):
    text = environ.get(name)
    if text is None or text == "":
        if default is None:
            raise ValueError(f"{name} is not set (launch with torchrun, which sets RANK, WORLD_SIZE, "
                             "MASTER_ADDR and MASTER_PORT)")
        return default
    try:
        return parse_int(text, minimum, maximum)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={text!r}: {e}") from None


def world_from_env(environ=None):
    """The :class:`World` ``torchrun`` describes in ``environ`` (default ``os.environ``).

    No ``WORLD_SIZE``: one rank. ``ValueError`` naming the variable when one is malformed or
    out of range (``RANK`` >= ``WORLD_SIZE``, ...)."""
    environ = os.environ if environ is None else environ
    size = _env_int(environ, "WORLD_SIZE", 1, default=1)
    if size == 1:
        return World()
    rank = _env_int(environ, "RANK", 0, size - 1)
    local_size = _env_int(environ, "LOCAL_WORLD_SIZE", 1, size, default=1)
    local_rank = _env_int(environ, "LOCAL_RANK", 0, local_size - 1, default=0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not environ.get(name):
            raise ValueError(f"WORLD_SIZE is {size} but {name} is not set (launch with torchrun, "
                             "which sets it)")
    return World(rank, size, local_rank, local_size)


def endpoint(environ=None):
    """The rendezvous endpoint ``MASTER_ADDR:MASTER_PORT``."""
    environ = os.environ if environ is None else environ
    return f"{environ.get('MASTER_ADDR', '?')}:{environ.get('MASTER_PORT', '?')}"


def check_batch(batch, size):
    """The per-rank batch of a global ``batch`` over ``size`` ranks, or ``ValueError``."""
    if batch % size:
        lower, upper = batch - batch % size, batch + size - batch % size
        near = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(f"--batch {batch} (the global batch) does not split over {size} ranks: give a "
                         f"multiple of {size}, e.g. {near}")
    return batch // size


def cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_rank(world, threads):
    """``threads`` capped so that the ranks on this machine do not oversubscribe its cores."""
    return max(1, min(threads, cores() // world.local_size))


def start(world):
    """Join the gloo process group of ``world`` (rendezvous at ``MASTER_ADDR:MASTER_PORT``).

    ``world.timeout`` (seconds) bounds the wait for the rendezvous and, later, for the other
    ranks at each collective. A rendezvous that cannot be reached: :class:`DistributedError`
    with the endpoint."""
    where, timeout = endpoint(), world.timeout
    try:
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size,
                                timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as e:
        raise DistributedError(
            f"cannot join the rendezvous at {where} within {timeout:g} s "
            f"({_first_line(e)}); is rank 0 running, and is {where} reachable from this machine?") from None


def stop():
    """Leave the process group (nothing if none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _first_line(e):
    """``Type: first line`` of ``e``, without gloo's source location and its advice."""
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    line = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\] ", "", text[0]).split(" This is typically caused")[0]
    return f"{type(e).__name__}: {line[:300]}"


def share(obj, world):
    """Rank 0's ``obj`` on every rank (pickled over the process group)."""
    box = [obj if world.main else None]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as e:
        raise lost(world, e) from None
    return box[0]


def wrap(model):
    """``model`` in DDP, its buffers not broadcast at each forward: a samcpu module's only
    buffers are empty dtype probes (``SparseAccess._dtype_probe``), nothing to keep in step, and
    the memories are not buffers at all. The parameters are broadcast from rank 0 once, here."""
    ddp = torch.nn.parallel.DistributedDataParallel
    if "forward_sync_buffers" in inspect.signature(ddp).parameters:  # torch >= 2.12
        return ddp(model, forward_sync_buffers=False)
    return ddp(model, broadcast_buffers=False)


def shard(batch, rank, size):
    """Rank ``rank``'s contiguous share of ``batch`` (a Batch or tuple of time-major tensors,
    (T, B, ...)): sequences [rank B/size, (rank + 1) B/size)."""
    n = batch[0].shape[1] // size
    return type(batch)(*(x[:, rank * n:(rank + 1) * n] for x in batch))


def reduce_sums(values):
    """The sums over the ranks of ``values`` (floats), in float64, identical on every rank."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def lost_ranks(world, grace):
    """After a failed collective: the ranks that do not answer a roll call on the rendezvous
    store within ``grace`` seconds (each survivor answers once; the dead never do). None when
    the store itself is gone (it lives in rank 0, or in torchrun's agent on the first machine)."""
    prefix = f"samcpu/alive/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"{prefix}{world.rank}", "1")
        deadline = time.monotonic() + grace
        while True:
            missing = [r for r in range(world.size) if not store.check([f"{prefix}{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.05)
    except Stopped:
        raise
    except (RuntimeError, ValueError, OSError):
        return None


def lost(world, cause):
    """The :class:`RankLost` for a collective that failed with ``cause`` (after a roll call of
    ``world.roll_call`` seconds)."""
    missing = lost_ranks(world, world.roll_call)
    why = f"(rank {world.rank} saw: {_first_line(cause)})"
    if missing is None:
        return RankLost(f"lost contact with the other ranks and with the rendezvous store at {endpoint()} "
                        f"(rank 0 or the launcher holding it died or is unreachable) {why}", [0])
    if not missing:
        return RankLost(f"a collective failed although every rank answered the roll call {why}")
    names = ", ".join(map(str, missing))
    return RankLost(f"rank{'s' if len(missing) > 1 else ''} {names} of {world.size} stopped answering: "
                    f"died, hung past the timeout or lost its network {why}", missing)


def is_comm_error(e):
    """True when ``e`` (raised by a backward pass under DDP, or a collective) is a failed
    exchange with the other ranks rather than an error of this rank's own computation."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(s in text for s in ("gloo", "Connection closed", "Connection reset", "Timed out", "timed out"))
