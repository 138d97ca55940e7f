"""The copy task (Graves et al. 2014, NTM section 4.1; Rae et al. 2016 section 5)."""
import numpy as np

from .base import check_bits, check_int, check_level, random_bits, to_batch


def encode_copy(sequences):
    """The copy episode for given bit sequences.

    Layout, with L the sequence length and T = 2L + 1 steps: steps 0..L-1 present the bits
    (input channels 0..bits-1), step L is the delimiter (input channel ``bits``), steps
    L+1..2L are blank inputs where the network must output the sequence again. The mask is 1
    exactly on steps L+1..2L.

    Parameters
    ----------
    sequences : array_like
        0/1 values, shape (B, L, bits), L >= 1.

    Returns
    -------
    Batch
        input (2L+1, B, bits+1), target (2L+1, B, bits), mask (2L+1, B).
    """
    seq = check_bits(sequences, "sequences", 3)
    batch_size, length, bits = seq.shape
    if batch_size < 1 or length < 1 or bits < 1:
        raise ValueError(f"sequences must have shape (B, L, bits) with all >= 1, got {seq.shape}")
    steps = 2 * length + 1
    inputs = np.zeros((steps, batch_size, bits + 1), np.float32)
    targets = np.zeros((steps, batch_size, bits), np.float32)
    mask = np.zeros((steps, batch_size), np.float32)
    inputs[:length, :, :bits] = seq.transpose(1, 0, 2)
    inputs[length, :, bits] = 1.0
    targets[length + 1:] = seq.transpose(1, 0, 2)
    mask[length + 1:] = 1.0
    return to_batch(inputs, targets, mask)


class CopyTask:
    """Copy a sequence of random bit vectors after a delimiter.

    ``level`` is the maximum sequence length: a batch draws one length L uniformly from
    [min(min_length, level), level], shared by all its episodes (see ``encode_copy`` for the
    layout; T = 2L + 1). ``level=None`` means ``max_length``, i.e. lengths in
    [min_length, max_length] (1-20 by default, as in the NTM paper).

    Parameters
    ----------
    bits : int
        Width of each vector (8).
    min_length, max_length : int
        Range of sequence lengths; ``max_length`` is also ``max_level``.
    seed : int, numpy.random.Generator or None
        Source of randomness; a Generator is used as is (not copied).
    """

    def __init__(self, bits=8, min_length=1, max_length=20, seed=None):
        self.bits = check_int(bits, "bits", 1)
        self.min_length = check_int(min_length, "min_length", 1)
        self.max_length = check_int(max_length, "max_length", self.min_length)
        self.input_size = self.bits + 1
        self.output_size = self.bits
        self.max_level = self.max_length
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size, level=None):
        """A batch of copy episodes.

        Parameters
        ----------
        batch_size : int
            B >= 1.
        level : int or None
            Maximum sequence length, in [1, max_level]; None: ``max_level``.

        Returns
        -------
        Batch
            input (T, B, bits+1), target (T, B, bits), mask (T, B) with T = 2L + 1.
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        level = check_level(level, self.max_level)
        high = self.max_length if level is None else level
        length = int(self.rng.integers(min(self.min_length, high), high + 1))
        return encode_copy(random_bits(self.rng, (batch_size, length, self.bits)))
