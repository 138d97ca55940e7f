"""What every task shares: the ``Batch`` tuple and the argument checks.

All tensors are time-major, like ``torch.nn.LSTM`` with ``batch_first=False``.
"""
import operator
from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """One batch of episodes, time-major.

    Attributes
    ----------
    input : torch.Tensor
        float32, shape (T, B, input_size): what the network reads at each step.
    target : torch.Tensor
        float32, shape (T, B, output_size): the bits the network should output; zero where
        ``mask`` is 0.
    mask : torch.Tensor
        float32, shape (T, B): 1 at the steps whose output is scored, 0 elsewhere.
    """

    input: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


def as_int(value, name):
    """``value`` as a python int, or a ValueError naming ``name`` (bools are refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def check_int(value, name, low, high=None):
    """``value`` as an int in [low, high] (no upper bound if ``high`` is None)."""
    value = as_int(value, name)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_level(level, max_level):
    """A difficulty level in [1, max_level]; None stays None (the task's default mix)."""
    if level is None:
        return None
    return check_int(level, "level", 1, max_level)


def to_batch(inputs, targets, mask):
    """Numpy arrays (T, B, ...) to a ``Batch`` of float32 torch tensors."""
    return Batch(*(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                   for x in (inputs, targets, mask)))


def random_bits(rng, shape):
    """Independent fair bits in {0, 1}, float32, of the given shape."""
    return rng.integers(0, 2, size=shape).astype(np.float32)


def check_bits(array, name, ndim):
    """``array`` as a float32 numpy array of 0/1 values with ``ndim`` dimensions."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} must hold only 0 and 1")
    return array
