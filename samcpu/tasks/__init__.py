"""The paper's synthetic tasks as batch generators, the bits-error metric and the curriculum.

Each task has ``input_size``, ``output_size``, ``max_level`` and
``sample(batch_size, level=None) -> Batch(input, target, mask)`` with time-major float32
tensors (T, B, input_size), (T, B, output_size), (T, B).
"""
from .base import Batch
from .copy_task import CopyTask, encode_copy
from .curriculum import Curriculum
from .metrics import bits_error
from .recall_task import AssociativeRecallTask, encode_recall
from .sort_task import PrioritySortTask, encode_sort

TASKS = {"copy": CopyTask, "recall": AssociativeRecallTask, "sort": PrioritySortTask}


def make_task(name, seed=None, **kwargs):
    """The task called ``name`` (a key of ``TASKS``), built with ``seed`` and ``kwargs``."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name](seed=seed, **kwargs)


__all__ = [
    "TASKS",
    "AssociativeRecallTask",
    "Batch",
    "CopyTask",
    "Curriculum",
    "PrioritySortTask",
    "bits_error",
    "encode_copy",
    "encode_recall",
    "encode_sort",
    "make_task",
]
