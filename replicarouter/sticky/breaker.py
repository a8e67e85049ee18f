"""A circuit breaker for Redis on the request path (pure: no I/O; the clock is injected).

States: ``closed`` (every call goes to Redis), ``open`` (no call does, for ``interval`` seconds after a
failure), ``half-open`` (the interval passed: exactly one call goes through as a trial; the others are
still skipped). A trial that succeeds closes the breaker; one that fails opens it for another interval.
A trial that never reports (its thread died between ``allow`` and the outcome) is given up after one
more interval, so the breaker cannot stay half-open for ever.

``failure`` says whether it opened a closed breaker (the start of an outage: the caller logs once);
``success`` returns the length of the outage it ended, if any (the caller logs that Redis is back).
Thread-safe: one lock around a few comparisons (well under a microsecond).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class Breaker:
    """Skip a dependency for ``interval`` seconds after it failed, then let one trial call through."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._since = 0.0  # when the current state began (open: the last failure; half-open: the trial)
        self._outage = 0.0  # when the breaker last opened from closed

    @property
    def state(self) -> str:
        """Return ``closed``, ``open`` or ``half-open``."""
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """Return whether this call may go to the dependency (False: skip it)."""
        with self._lock:
            if self._state == CLOSED:
                return True
            now = self._clock()
            if now - self._since < self.interval:
                return False  # open, or half-open with a trial in flight
            self._state, self._since = HALF_OPEN, now  # this caller is the trial
            return True

    def failure(self) -> bool:
        """Record a failed call (timeout, connection error); return True if it opened a closed breaker."""
        with self._lock:
            now = self._clock()
            opened = self._state == CLOSED
            if opened:
                self._outage = now
            self._state, self._since = OPEN, now
            return opened

    def success(self) -> float | None:
        """Record a call that got an answer; return how long the outage lasted if this ended one."""
        with self._lock:
            if self._state == CLOSED:
                return None
            self._state = CLOSED
            return self._clock() - self._outage
