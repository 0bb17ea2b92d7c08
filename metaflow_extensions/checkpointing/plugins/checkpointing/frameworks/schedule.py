"""``Every``: when a training loop saves (every N steps, every T seconds, or both)."""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

from .torch_util import TrainingStateError


class Every:
    """When to save in a training loop: every ``steps`` steps, every ``seconds`` seconds, or
    whichever comes first if both are given.

    Parameters
    ----------
    steps : int, optional
        Due at every step that is a positive multiple of ``steps``.  Multiples of the global
        step, so the schedule continues unchanged after a resume.
    seconds : float, optional
        Due when this many seconds have passed since the last due step (or since creation).
    clock : callable
        Returns the current time in seconds (default ``time.monotonic``); for tests.

    Examples
    --------
    >>> every = Every(steps=500, seconds=15 * 60)
    >>> for step in range(start, total):
    ...     train(step)
    ...     if every.due(step + 1, final=step + 1 == total):
    ...         state.save(current.checkpoint)
    """

    def __init__(
        self,
        steps: Optional[int] = None,
        seconds: Optional[float] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise TrainingStateError("Every(steps=%r): steps must be a whole number." % (steps,))
        if steps is not None and steps < 1:
            raise TrainingStateError("Every(steps=%r): steps must be at least 1." % (steps,))
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise TrainingStateError(
                "Every(seconds=%r): seconds must be a positive number." % (seconds,)
            )
        if steps is None and seconds is None:
            raise TrainingStateError("Every() needs steps=, seconds= or both.")
        self.steps = steps
        self.seconds = seconds
        self._clock = clock
        self._last_time = clock()
        self._last_step: Optional[int] = None

    def due(self, step: int, *, final: bool = False) -> bool:
        """True if the loop should save now, at ``step``; the caller is expected to save.

        A step is due once: asking again for the same step returns False.

        Parameters
        ----------
        step : int
            The global step just completed.
        final : bool
            The last step of the loop: due unless this step was already due (so the final
            state is saved exactly once).
        """
        if step == self._last_step:
            return False
        now = self._clock()
        due = (
            final
            or (self.steps is not None and step > 0 and step % self.steps == 0)
            or (self.seconds is not None and now - self._last_time >= self.seconds)
        )
        if due:
            self._last_step = step
            self._last_time = now
        return due

    def __repr__(self) -> str:
        return "Every(steps=%r, seconds=%r)" % (self.steps, self.seconds)
