"""Helpers shared by the benchmark scripts: timing statistics, machine facts, JSON output.

Resident memory comes from samcpu._util (one copy): ``rss_now`` is the current RSS and
``rss_peak`` the peak RSS (VmHWM) since start or ``samcpu._util.reset_peak_rss()``, in bytes.
"""
import json
import os
import platform
import subprocess
import sys

import numba
import numpy as np

import samcpu
from samcpu._util import atomic_write
from samcpu._util import peak_rss_bytes as rss_peak  # noqa: F401 (re-exported for the scripts)
from samcpu._util import rss_bytes as rss_now  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))


def stats(ns):
    us = np.asarray(ns, np.float64) / 1e3
    return dict(median=float(np.median(us)), p90=float(np.percentile(us, 90)),
                min=float(us.min()), mean=float(us.mean()), n=int(us.size))


def machine_info(threads):
    info = dict(platform=platform.platform(), python=sys.version.split()[0],
                nproc=os.cpu_count(), affinity=len(os.sched_getaffinity(0)),
                numba_threads=numba.get_num_threads(), numba_threads_requested=threads,
                numba_max_threads=numba.config.NUMBA_NUM_THREADS,
                numpy=np.__version__, numba=numba.__version__, samcpu=samcpu.__version__)
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    except (OSError, StopIteration):
        pass
    try:
        root = os.path.dirname(HERE)
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                            text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "samcpu"], cwd=root,
                                                capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    return info


def write_json(path, data):
    """Write ``data`` as indented JSON (all or nothing), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


#: the arguments a ``samcpu train`` resume may change that bear on what is learned (not threads,
#: steps, ...); max_level: the curriculum's cap, which a resume may raise
LEARNING_ARGS = ("lr", "clip", "threshold", "anneal", "anneal_floor", "max_level")


def learning_changes(ck):
    """What each resume of checkpoint ``ck``'s run changed that bears on learning, in order (a
    change at episode E takes effect from E + 1), as dicts of episode, arg, value_from, value_to."""
    return [dict(episode=int(r["episode"]), arg=k, value_from=v[0], value_to=v[1])
            for r in ck.get("resumes", []) for k, v in r.get("changed", {}).items() if k in LEARNING_ARGS]
