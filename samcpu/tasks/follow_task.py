"""Follow: after a sequence of items and a cue that is one of them, output the n items that came
after the cue, in order (a task where the temporal links matter; issue 12, item 5).

It is the DNC's traversal in its simplest form. An SDNC that writes item i to a fresh row at
step i links those rows in write order; at the cue it finds the cue's row by content, then each
answer step reads forward along its links (read mode pi_f) to the next item. SAM has no links:
it can solve the task only through content, e.g. by writing each item together with the one
before it and chaining n content look-ups, each keyed on what the last one returned.

Layout (``encode_follow``): one step per item, so that one write is one link hop. With L items
of ``bits`` bits and n = ``num_follow``, steps 0..L-1 present the items (input channels
0..bits-1); step L presents the cue (a copy of item c) with the query flag (channel ``bits``);
steps L+1..L+n are blank inputs where the network must output items c+1..c+n. The mask is 1
exactly on those n steps. T = L + n + 1. The cue c leaves room for n items after it:
c in [0, L-n-1], drawn uniformly; the items of an episode are distinct, so the answer is
unique.

Default sizes, and why (``FollowTask()``):
- ``bits=8``: 256 possible items, so 16 distinct items are cheap to draw, and a wrong item
  differs from the right one in 4 bits on average (as copy's 8-bit vectors).
- ``num_follow=3``: three hops, so one content look-up (recall's answer) is not enough, while an
  episode stays short; 24 scored bits per episode.
- items L from ``min_items=4`` (= n + 1, the fewest with an answer) to ``max_items=16``,
  T = 8..20 steps: episodes no longer than copy's (T up to 41) or recall's (up to 32), which
  SAM learns in minutes on one core (docs/results.md: copy solved in 20 minutes, recall at
  0.1-3.6 bits in 7). The answer depends on all L items (8L bits, 128 at L = 16), which a
  controller alone would have to keep in its state: the longer levels are meant to need the
  memory. (A choice by analogy, not yet a measured learning curve on this task.)

Chance level: each answer bit is a fair coin whatever the cue (the items are only conditioned
to differ from one another), so an answer that does not recall the items, e.g. constant
logits, has an expected bits error of n * bits / 2 = 12 per episode with the defaults; another
item of the episode in place of the right one costs about bits / 2 = 4 bits per step as well.
At the easiest level (L = n + 1) the cue is always item 0 and the task is copying items 1..n:
a warm-up for the curriculum.
"""
import numpy as np

from .base import check_bits, check_int, check_level, random_bits, to_batch


def encode_follow(items, cue, num_follow):
    """The follow episode for given items, cue indices and answer length.

    Parameters
    ----------
    items : array_like
        0/1 values, shape (B, L, bits), L >= 2: item i is presented at step i.
    cue : array_like of int
        Shape (B,), values in [0, L - num_follow - 1]: the index c of each episode's cue item.
    num_follow : int
        n >= 1: the answer is items c+1..c+n.

    Returns
    -------
    Batch
        input (T, B, bits+1), target (T, B, bits), mask (T, B), T = L + n + 1: items at steps
        0..L-1, the cue with the query flag (channel ``bits``) at step L, the answer (mask 1)
        at steps L+1..L+n.
    """
    items = check_bits(items, "items", 3)
    batch_size, num_items, bits = items.shape
    if batch_size < 1 or num_items < 2 or bits < 1:
        raise ValueError("items must have shape (B, L, bits) with L >= 2 and the others >= 1, "
                         f"got {items.shape}")
    num_follow = check_int(num_follow, "num_follow", 1, num_items - 1)
    cue = np.asarray(cue)
    if cue.shape != (batch_size,) or not np.issubdtype(cue.dtype, np.integer):
        raise ValueError(f"cue must be integers of shape ({batch_size},), got {cue.dtype} {cue.shape}")
    last = num_items - num_follow - 1
    if np.any(cue < 0) or np.any(cue > last):
        raise ValueError(f"cue must be in [0, {last}] (an item with {num_follow} items after it)")
    steps = num_items + num_follow + 1
    inputs = np.zeros((steps, batch_size, bits + 1), np.float32)
    targets = np.zeros((steps, batch_size, bits), np.float32)
    mask = np.zeros((steps, batch_size), np.float32)
    rows = np.arange(batch_size)
    inputs[:num_items, :, :bits] = items.transpose(1, 0, 2)
    inputs[num_items, :, :bits] = items[rows, cue]
    inputs[num_items, :, bits] = 1.0
    after = cue[:, None] + np.arange(1, num_follow + 1)  # (B, n): indices c+1..c+n
    targets[num_items + 1:] = items[rows[:, None], after].transpose(1, 0, 2)
    mask[num_items + 1:] = 1.0
    return to_batch(inputs, targets, mask)


class FollowTask:
    """Output, in order, the ``num_follow`` items that came after a cue item.

    ``level`` is the number of items L (levels up to n + 1 give n + 1 items, the fewest with an
    answer); ``level=None`` draws L uniformly from [min_items, max_items]. One L per batch; the
    items of an episode are distinct; each episode's cue is drawn uniformly from items
    0..L-n-1. Layout in ``encode_follow``; T = L + n + 1. See the module docstring for the
    default sizes and the chance level (n * bits / 2 bits per episode).

    Parameters
    ----------
    bits : int
        Width of each item (8).
    num_follow : int
        n, the number of items to output after the cue (3).
    min_items, max_items : int
        Range of L for ``level=None``, n + 1 <= min_items <= max_items <= 2**bits (so the items
        can be distinct); ``min_items=None`` means n + 1. ``max_items`` (16) is also
        ``max_level``.
    seed : int, numpy.random.Generator or None
        Source of randomness; a Generator is used as is (not copied).
    """

    def __init__(self, bits=8, num_follow=3, min_items=None, max_items=16, seed=None):
        self.bits = check_int(bits, "bits", 1)
        self.num_follow = check_int(num_follow, "num_follow", 1)
        fewest = self.num_follow + 1
        self.min_items = check_int(fewest if min_items is None else min_items, "min_items", fewest)
        self.max_items = check_int(max_items, "max_items", self.min_items)
        if self.max_items > 2 ** self.bits:
            raise ValueError(f"max_items must be <= 2**bits = {2 ** self.bits} so items can be "
                             f"distinct, got {self.max_items}")
        self.input_size = self.bits + 1
        self.output_size = self.bits
        self.max_level = self.max_items
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size, level=None):
        """A batch of follow episodes.

        Parameters
        ----------
        batch_size : int
            B >= 1.
        level : int or None
            Number of items, in [1, max_level] (up to n + 1 counts as n + 1); None: drawn from
            [min_items, max_items].

        Returns
        -------
        Batch
            input (T, B, bits+1), target (T, B, bits), mask (T, B), T = L + n + 1.
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        level = check_level(level, self.max_level)
        if level is None:
            num_items = int(self.rng.integers(self.min_items, self.max_items + 1))
        else:
            num_items = max(self.num_follow + 1, level)
        items = random_bits(self.rng, (batch_size, num_items, self.bits))
        self._make_distinct(items)
        cue = self.rng.integers(0, num_items - self.num_follow, size=batch_size)
        return encode_follow(items, cue, self.num_follow)

    def _make_distinct(self, items):
        """Redraw, in place, items (B, L, bits) equal to an earlier item of the same episode."""
        for episode in items:
            while True:
                _, first = np.unique(episode, axis=0, return_index=True)
                repeated = np.setdiff1d(np.arange(len(episode)), first)
                if repeated.size == 0:
                    break
                episode[repeated] = random_bits(self.rng, (repeated.size, self.bits))
