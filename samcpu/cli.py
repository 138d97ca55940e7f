"""The `samcpu` command: `samcpu train`, `samcpu bench`, `samcpu info`."""
import argparse
import sys


def info(args):
    import numba
    import numpy as np
    import torch

    import samcpu

    try:
        import hnswlib
        hnsw = getattr(hnswlib, "__version__", "installed")
    except ImportError:  # pragma: no cover - a dependency
        hnsw = "missing"
    # a tiny parallel call so numba reports the threading layer it picked
    samcpu.kernels.cosine_topk(np.zeros((2, 2)), np.ones((1, 2)), 1, 1e-6, 1)
    rows = [("samcpu", samcpu.__version__), ("python", sys.version.split()[0]),
            ("numpy", np.__version__), ("numba", numba.__version__),
            ("numba threading layer", numba.threading_layer()),
            ("numba threads", f"{numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}"),
            ("torch", torch.__version__), ("torch threads", str(torch.get_num_threads())),
            ("hnswlib", hnsw)]
    for k, v in rows:
        print(f"{k:22s} {v}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``samcpu train: error: argument --slots: ...``,
    exit status 2 (no usage block: ``--help`` shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv=None):
    p = OneLineParser(prog="samcpu", description="Sparse Access Memory on CPU")
    sub = p.add_subparsers(dest="command", required=True)
    from .train import add_arguments, train

    t = sub.add_parser("train", help="train SAM or DAM on copy, recall or sort")
    add_arguments(t)
    from .bench import add_arguments as bench_arguments
    from .bench import run as bench

    b = sub.add_parser("bench", help="benchmarks: `samcpu bench scaling` (the paper's Figure 1: SAM, DAM), "
                                     "`samcpu bench figure7` (its Figure 7: SDNC, DNC, SAM)")
    bench_arguments(b)
    sub.add_parser("info", help="versions and threads")
    args = p.parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "bench":
            return bench(args)
        return info(args)
    except ValueError as e:  # a bad argument or file: one line naming it
        print(f"samcpu {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the filesystem (full disk, permissions) after the checks
        print(f"samcpu {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"samcpu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
