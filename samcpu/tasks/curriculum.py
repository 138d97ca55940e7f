"""The exponential curriculum of Rae et al. 2016 (section 5 and appendix)."""
import math
from collections import deque

from .base import check_int


class Curriculum:
    """Doubles the maximum difficulty whenever the recent mean loss is low enough.

    ``current`` is the maximum level, starting at ``start_level``. Each episode's loss goes to
    ``update``; once the mean of the last ``patience`` losses is below ``threshold``,
    ``current`` doubles (capped at ``max_level``) and the history is cleared. Each batch's
    level is drawn uniformly from [1, current] by ``sample_level``, so easy levels keep being
    rehearsed.

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
        Number of episodes the mean is taken over, >= 1.
    """

    def __init__(self, max_level, start_level=1, threshold=0.1, patience=100):
        self._configure(max_level, start_level, threshold, patience)
        self.current = self.start_level
        self.history = deque(maxlen=self.patience)

    def _configure(self, max_level, start_level, threshold, patience):
        self.max_level = check_int(max_level, "max_level", 1)
        self.start_level = check_int(start_level, "start_level", 1, self.max_level)
        self.patience = check_int(patience, "patience", 1)
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        self.threshold = threshold

    @property
    def at_max(self):
        """True once ``current`` has reached ``max_level``."""
        return self.current == self.max_level

    def update(self, loss):
        """Record one episode's loss; returns True if ``current`` doubled.

        Parameters
        ----------
        loss : float
            The episode's (or batch's) loss; a NaN counts as not good enough.
        """
        self.history.append(float(loss))
        if len(self.history) < self.patience or self.at_max:
            return False
        if not sum(self.history) / self.patience < self.threshold:
            return False
        self.current = min(2 * self.current, self.max_level)
        self.history.clear()
        return True

    def sample_level(self, rng):
        """A level drawn uniformly from [1, current].

        Parameters
        ----------
        rng : numpy.random.Generator

        Returns
        -------
        int
        """
        return int(rng.integers(1, self.current + 1))

    def state_dict(self):
        """Everything needed to resume, as plain python ints, floats and lists."""
        return {"max_level": self.max_level, "start_level": self.start_level,
                "threshold": self.threshold, "patience": self.patience,
                "current": self.current, "history": list(self.history)}

    def load_state_dict(self, state):
        """Restore a ``state_dict()`` (settings and progress)."""
        missing = {"max_level", "start_level", "threshold", "patience", "current",
                   "history"} - set(state)
        if missing:
            raise ValueError(f"curriculum state is missing {sorted(missing)}")
        self._configure(state["max_level"], state["start_level"], state["threshold"],
                        state["patience"])
        self.current = check_int(state["current"], "current", 1, self.max_level)
        history = [float(x) for x in state["history"]]
        if len(history) > self.patience:
            raise ValueError(f"history holds {len(history)} losses but patience is "
                             f"{self.patience}")
        self.history = deque(history, maxlen=self.patience)
