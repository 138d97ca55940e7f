"""Associative recall (Graves et al. 2014, NTM section 4.3; Rae et al. 2016 section 5)."""
import numpy as np

from .base import check_bits, check_int, check_level, random_bits, to_batch


def encode_recall(items, query):
    """The associative-recall episode for given items and the index of the cue item.

    With n items of ``item_len`` steps and ``bits`` bits each, input channels are the bits
    (0..bits-1), the item delimiter (``bits``) and the query delimiter (``bits + 1``).
    Layout: n times [one item-delimiter step, then the item's item_len steps]; then one
    query-delimiter step, the cue item (a copy of item ``query``), one more query-delimiter
    step; then item_len blank steps where the network must output item ``query + 1``. The
    mask is 1 exactly on those last item_len steps. T = (n + 2) * item_len + n + 2.

    Parameters
    ----------
    items : array_like
        0/1 values, shape (B, n, item_len, bits), n >= 2.
    query : array_like of int
        Shape (B,), values in [0, n - 2]: the cue item of each episode.

    Returns
    -------
    Batch
        input (T, B, bits+2), target (T, B, bits), mask (T, B).
    """
    items = check_bits(items, "items", 4)
    batch_size, num_items, item_len, bits = items.shape
    if batch_size < 1 or num_items < 2 or item_len < 1 or bits < 1:
        raise ValueError("items must have shape (B, n, item_len, bits) with n >= 2 and the "
                         f"others >= 1, got {items.shape}")
    query = np.asarray(query)
    if query.shape != (batch_size,) or not np.issubdtype(query.dtype, np.integer):
        raise ValueError(f"query must be integers of shape ({batch_size},), got "
                         f"{query.dtype} {query.shape}")
    if np.any(query < 0) or np.any(query > num_items - 2):
        raise ValueError(f"query must be in [0, {num_items - 2}] (an item with a successor)")
    span = item_len + 1
    steps = (num_items + 2) * item_len + num_items + 2
    inputs = np.zeros((steps, batch_size, bits + 2), np.float32)
    targets = np.zeros((steps, batch_size, bits), np.float32)
    mask = np.zeros((steps, batch_size), np.float32)
    for i in range(num_items):
        inputs[i * span, :, bits] = 1.0
        inputs[i * span + 1:(i + 1) * span, :, :bits] = items[:, i].transpose(1, 0, 2)
    rows = np.arange(batch_size)
    start = num_items * span
    inputs[start, :, bits + 1] = 1.0
    inputs[start + 1:start + span, :, :bits] = items[rows, query].transpose(1, 0, 2)
    inputs[start + span, :, bits + 1] = 1.0
    targets[start + span + 1:] = items[rows, query + 1].transpose(1, 0, 2)
    mask[start + span + 1:] = 1.0
    return to_batch(inputs, targets, mask)


class AssociativeRecallTask:
    """Recall the item that followed a cue item.

    ``level`` is the number of items n (levels below 2 give 2 items, the fewest with an
    answer); ``level=None`` draws n uniformly from [min_items, max_items] (3-6 by default, as
    in the NTM paper). One n per batch; the items of an episode are distinct, and the cue is
    drawn uniformly from items 0..n-2. Layout in ``encode_recall``;
    T = (n + 2) * item_len + n + 2.

    Parameters
    ----------
    bits : int
        Width of each item step (6).
    item_len : int
        Steps per item (3).
    min_items, max_items : int
        Range of n for ``level=None``, 2 <= min_items <= max_items; ``max_items`` is also
        ``max_level``.
    seed : int, numpy.random.Generator or None
        Source of randomness; a Generator is used as is (not copied).
    """

    def __init__(self, bits=6, item_len=3, min_items=3, max_items=6, seed=None):
        self.bits = check_int(bits, "bits", 1)
        self.item_len = check_int(item_len, "item_len", 1)
        self.min_items = check_int(min_items, "min_items", 2)
        self.max_items = check_int(max_items, "max_items", self.min_items)
        if self.max_items > 2 ** (self.bits * self.item_len):
            raise ValueError(f"max_items must be <= 2**(bits*item_len) so items can be distinct, "
                             f"got {self.max_items}")
        self.input_size = self.bits + 2
        self.output_size = self.bits
        self.max_level = self.max_items
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size, level=None):
        """A batch of associative-recall episodes.

        Parameters
        ----------
        batch_size : int
            B >= 1.
        level : int or None
            Number of items, in [1, max_level] (1 counts as 2); None: drawn from
            [min_items, max_items].

        Returns
        -------
        Batch
            input (T, B, bits+2), target (T, B, bits), mask (T, B).
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        level = check_level(level, self.max_level)
        if level is None:
            num_items = int(self.rng.integers(self.min_items, self.max_items + 1))
        else:
            num_items = max(2, level)
        items = random_bits(self.rng, (batch_size, num_items, self.item_len, self.bits))
        self._make_distinct(items)
        query = self.rng.integers(0, num_items - 1, size=batch_size)
        return encode_recall(items, query)

    def _make_distinct(self, items):
        """Redraw, in place, items equal to an earlier item of the same episode."""
        flat = items.reshape(items.shape[0], items.shape[1], -1)
        for b in range(flat.shape[0]):
            while True:
                _, first = np.unique(flat[b], axis=0, return_index=True)
                repeated = np.setdiff1d(np.arange(flat.shape[1]), first)
                if repeated.size == 0:
                    break
                flat[b, repeated] = random_bits(self.rng, (repeated.size, flat.shape[2]))
