"""The exponential curriculum of Rae et al. 2016 (section 5 and appendix), judged on its hardest
levels."""
import math
from collections import deque

from .base import check_int


class Curriculum:
    """Doubles the maximum difficulty once the hardest levels in play are solved.

    ``current`` is the maximum level, starting at ``start_level``. Each batch's level is drawn
    uniformly from [1, current] by ``sample_level``, so easy levels keep being rehearsed. Each
    episode's loss goes to ``update`` with its level. Only the episodes at the *hard* levels
    count: the top ``max(1, floor(hard_fraction * current))`` levels, i.e. levels above
    ``current - max(1, floor(hard_fraction * current))`` (with the default 0.25 and
    ``current`` 20: levels 16-20; 8: 7-8; 4 or less: ``current`` alone). Once the mean loss of
    the last ``patience`` hard episodes is below ``threshold``, ``current`` doubles (capped at
    ``max_level``) and the history is cleared. So the maximum cannot rise because the easy
    levels drawn below it are solved while the hardest ones are not.
    ``hard_fraction=None`` keeps the old rule: the mean over every episode, whatever its level.

    Parameters
    ----------
    max_level : int
        Highest level, >= 1 (a task's ``max_level``).
    start_level : int
        Initial ``current``, in [1, max_level].
    threshold : float
        Mean loss under which the level doubles (in the units of the losses given to
        ``update``, e.g. bits error per episode).
    patience : int
        Number of hard episodes the mean is taken over, >= 1.
    hard_fraction : float or None
        In (0, 1]: the share of the levels [1, current], counted from the top, that must be
        solved; None: all episodes count.
    """

    def __init__(self, max_level, start_level=1, threshold=0.1, patience=100, hard_fraction=0.25):
        self._configure(max_level, start_level, threshold, patience, hard_fraction)
        self.current = self.start_level
        self.history = deque(maxlen=self.patience)
        self.last_level = None
        self.solved_at_max = 0

    def _configure(self, max_level, start_level, threshold, patience, hard_fraction):
        self.max_level = check_int(max_level, "max_level", 1)
        self.start_level = check_int(start_level, "start_level", 1, self.max_level)
        self.patience = check_int(patience, "patience", 1)
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        self.threshold = threshold
        if hard_fraction is not None:
            if isinstance(hard_fraction, bool):
                raise ValueError(f"hard_fraction must be a number in (0, 1] or None, got {hard_fraction!r}")
            try:
                hard_fraction = float(hard_fraction)
            except (TypeError, ValueError):
                raise ValueError(f"hard_fraction must be a number in (0, 1] or None, "
                                 f"got {hard_fraction!r}") from None
            if not 0 < hard_fraction <= 1:
                raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
        self.hard_fraction = hard_fraction

    @property
    def at_max(self):
        """True once ``current`` has reached ``max_level``."""
        return self.current == self.max_level

    @property
    def hard_from(self):
        """The lowest level whose losses count towards raising ``current``."""
        if self.hard_fraction is None:
            return 1
        return self.current - max(1, math.floor(self.hard_fraction * self.current)) + 1

    def update(self, loss, level=None):
        """Record one episode's loss; returns True if ``current`` doubled.

        Parameters
        ----------
        loss : float
            The episode's (or batch's) loss; a NaN counts as not good enough.
        level : int or None
            The level the episode was drawn at, in [1, max_level]; None: the level the last
            ``sample_level`` returned (so a loop of ``sample_level``, train, ``update(loss)``
            needs not pass it). Episodes below ``hard_from`` are not recorded.
        """
        loss = float(loss)
        if level is None:
            level = self.last_level
            if level is None and self.hard_fraction is not None:
                raise ValueError("level is needed: no sample_level was drawn yet")
        else:
            level = check_int(level, "level", 1, self.max_level)
        if self.hard_fraction is not None and level < self.hard_from:
            return False
        self.history.append(loss)
        if len(self.history) < self.patience or not sum(self.history) / self.patience < self.threshold:
            return False
        if self.at_max:
            self.solved_at_max += 1
            self.history.clear()
            return False
        self.current = min(2 * self.current, self.max_level)
        self.history.clear()
        return True

    def sample_level(self, rng):
        """A level drawn uniformly from [1, current] (remembered for ``update``).

        Parameters
        ----------
        rng : numpy.random.Generator

        Returns
        -------
        int
        """
        self.last_level = int(rng.integers(1, self.current + 1))
        return self.last_level

    def state_dict(self):
        """Everything needed to resume, as plain python ints, floats, lists and None."""
        return {"max_level": self.max_level, "start_level": self.start_level,
                "threshold": self.threshold, "patience": self.patience,
                "hard_fraction": self.hard_fraction, "current": self.current,
                "history": list(self.history), "last_level": self.last_level,
                "solved_at_max": self.solved_at_max}

    def load_state_dict(self, state):
        """Restore a ``state_dict()`` (settings and progress).

        A state saved before ``hard_fraction`` existed keeps this object's ``hard_fraction``
        and starts an empty history (its losses were not sorted by level)."""
        missing = {"max_level", "start_level", "threshold", "patience", "current",
                   "history"} - set(state)
        if missing:
            raise ValueError(f"curriculum state is missing {sorted(missing)}")
        old = "hard_fraction" not in state
        hard = self.hard_fraction if old else state["hard_fraction"]
        # checked into locals first: a bad state leaves this object unchanged
        probe = Curriculum.__new__(Curriculum)
        probe._configure(state["max_level"], state["start_level"], state["threshold"],
                         state["patience"], hard)
        current = check_int(state["current"], "current", 1, probe.max_level)
        history = [] if old else [float(x) for x in state["history"]]
        if len(history) > probe.patience:
            raise ValueError(f"history holds {len(history)} losses but patience is "
                             f"{probe.patience}")
        last = state.get("last_level")
        if last is not None:
            last = check_int(last, "last_level", 1, probe.max_level)
        solved = check_int(state.get("solved_at_max", 0), "solved_at_max", 0)
        self._configure(state["max_level"], state["start_level"], state["threshold"],
                        state["patience"], hard)
        self.current = current
        self.history = deque(history, maxlen=self.patience)
        self.last_level = last
        self.solved_at_max = solved
