"""Priority sort (Graves et al. 2014, NTM section 4.5; Rae et al. 2016 section 5)."""
import numpy as np

from .base import check_bits, check_int, check_level, random_bits, to_batch


def encode_sort(keys, priorities, num_outputs):
    """The priority-sort episode for given keys and priorities.

    With n keys of ``bits`` bits and m = num_outputs, input channels are the key bits
    (0..bits-1), the priority (``bits``) and the delimiter (``bits + 1``). Layout: steps
    0..n-1 present key i with its priority; step n is the delimiter; steps n+1..n+m are blank
    inputs where the network must output the m keys of highest priority, highest first (equal
    priorities: lower index first). The mask is 1 exactly on steps n+1..n+m. T = n + m + 1.

    Parameters
    ----------
    keys : array_like
        0/1 values, shape (B, n, bits).
    priorities : array_like
        Finite reals, shape (B, n); used as float32, as the network sees them.
    num_outputs : int
        m, in [1, n].

    Returns
    -------
    Batch
        input (n+m+1, B, bits+2), target (n+m+1, B, bits), mask (n+m+1, B).
    """
    keys = check_bits(keys, "keys", 3)
    batch_size, num_items, bits = keys.shape
    if batch_size < 1 or num_items < 1 or bits < 1:
        raise ValueError(f"keys must have shape (B, n, bits) with all >= 1, got {keys.shape}")
    priorities = np.asarray(priorities, dtype=np.float32)
    if priorities.shape != (batch_size, num_items):
        raise ValueError(f"priorities must have shape {(batch_size, num_items)}, got "
                         f"{priorities.shape}")
    if not np.all(np.isfinite(priorities)):
        raise ValueError("priorities must be finite")
    num_outputs = check_int(num_outputs, "num_outputs", 1, num_items)
    steps = num_items + num_outputs + 1
    inputs = np.zeros((steps, batch_size, bits + 2), np.float32)
    targets = np.zeros((steps, batch_size, bits), np.float32)
    mask = np.zeros((steps, batch_size), np.float32)
    inputs[:num_items, :, :bits] = keys.transpose(1, 0, 2)
    inputs[:num_items, :, bits] = priorities.T
    inputs[num_items, :, bits + 1] = 1.0
    order = np.argsort(-priorities, axis=1, kind="stable")[:, :num_outputs]
    best = np.take_along_axis(keys, order[:, :, None], axis=1)
    targets[num_items + 1:] = best.transpose(1, 0, 2)
    mask[num_items + 1:] = 1.0
    return to_batch(inputs, targets, mask)


class PrioritySortTask:
    """Output the keys of highest priority, in descending order of priority.

    ``level`` is the number of keys n, in [1, num_items]; the number of outputs scales with
    it: m = max(1, level * num_outputs // num_items). ``level=None`` means n = num_items and
    m = num_outputs (20 and 16 by default, as in the NTM paper). Priorities are drawn
    uniformly from [-1, 1]. Layout in ``encode_sort``; T = n + m + 1.

    Parameters
    ----------
    bits : int
        Width of each key (8).
    num_items : int
        Keys per episode at full difficulty; also ``max_level``.
    num_outputs : int
        Keys to output at full difficulty, in [1, num_items].
    seed : int, numpy.random.Generator or None
        Source of randomness; a Generator is used as is (not copied).
    """

    def __init__(self, bits=8, num_items=20, num_outputs=16, seed=None):
        self.bits = check_int(bits, "bits", 1)
        self.num_items = check_int(num_items, "num_items", 1)
        self.num_outputs = check_int(num_outputs, "num_outputs", 1, self.num_items)
        self.input_size = self.bits + 2
        self.output_size = self.bits
        self.max_level = self.num_items
        self.rng = np.random.default_rng(seed)

    def outputs_at(self, level):
        """m, the number of keys to output with ``level`` keys: max(1, level*num_outputs//num_items)."""
        level = check_level(level, self.max_level)
        return max(1, level * self.num_outputs // self.num_items)

    def sample(self, batch_size, level=None):
        """A batch of priority-sort episodes.

        Parameters
        ----------
        batch_size : int
            B >= 1.
        level : int or None
            Number of keys, in [1, max_level]; None: ``num_items``.

        Returns
        -------
        Batch
            input (T, B, bits+2), target (T, B, bits), mask (T, B) with T = n + m + 1.
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        level = check_level(level, self.max_level)
        num_items = self.num_items if level is None else level
        num_outputs = self.outputs_at(num_items)
        keys = random_bits(self.rng, (batch_size, num_items, self.bits))
        priorities = self.rng.uniform(-1.0, 1.0, size=(batch_size, num_items))
        return encode_sort(keys, priorities, num_outputs)
