"""Helpers shared by the benchmark scripts: resident memory, timing statistics, machine facts."""
import os
import platform
import resource
import subprocess
import sys

import numba
import numpy as np

import samcpu

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_now():
    """Current resident set size in bytes (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_peak():
    """Peak resident set size in bytes (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    """Write ``data`` as indented JSON, creating the folder."""
    import json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
