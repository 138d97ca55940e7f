"""The paper's synthetic tasks (and ``follow``, where the SDNC's temporal links matter) as batch
generators, the bits-error metric and the curriculum.

Each task has ``input_size``, ``output_size``, ``max_level`` and
``sample(batch_size, level=None) -> Batch(input, target, mask)`` with time-major float32
tensors (T, B, input_size), (T, B, output_size), (T, B). ``DATA_TASKS`` (bAbI, Omniglot) read a
data set's folder (``data=``) and declare ``loss = "softmax"`` and an ``error`` method.
"""
from .answers import DataError, answer_error, masked_cross_entropy
from .babi import BabiTask, read_babi
from .base import Batch
from .copy_task import CopyTask, encode_copy
from .curriculum import Curriculum
from .follow_task import FollowTask, encode_follow
from .metrics import bits_error
from .omniglot import OmniglotTask, read_omniglot
from .recall_task import AssociativeRecallTask, encode_recall
from .sort_task import PrioritySortTask, encode_sort

TASKS = {"copy": CopyTask, "recall": AssociativeRecallTask, "sort": PrioritySortTask,
         "follow": FollowTask}
#: the paper's real tasks: read from a folder (``data=``), answers are classes (a softmax)
DATA_TASKS = {"babi": BabiTask, "omniglot": OmniglotTask}


def make_task(name, seed=None, **kwargs):
    """The task called ``name`` (a key of ``TASKS`` or ``DATA_TASKS``), built with ``seed`` and
    ``kwargs`` (``data=`` the folder, for ``DATA_TASKS``)."""
    if not isinstance(name, str) or name not in TASKS and name not in DATA_TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)} or, with "
                         f"data=, {', '.join(sorted(DATA_TASKS))}")
    return {**TASKS, **DATA_TASKS}[name](seed=seed, **kwargs)


__all__ = [
    "DATA_TASKS",
    "TASKS",
    "AssociativeRecallTask",
    "BabiTask",
    "Batch",
    "CopyTask",
    "Curriculum",
    "DataError",
    "FollowTask",
    "OmniglotTask",
    "PrioritySortTask",
    "answer_error",
    "bits_error",
    "encode_copy",
    "encode_follow",
    "encode_recall",
    "encode_sort",
    "make_task",
    "masked_cross_entropy",
    "read_babi",
    "read_omniglot",
]
