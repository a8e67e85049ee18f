"""``Gate``: at most N connections of a pool lent at once, waiting borrowers served first come, first served.

SQLAlchemy's ``QueuePool`` gives a returned connection to whichever thread asks next. With wrappers that
borrow per statement (``POOL["RELEASE"] = "transaction"``), the thread that has just given a connection
back asks again at once, still holding the GIL, and takes it before a waiting thread has woken up: the
waiters starve until ``TIMEOUT`` (measured: 64 threads over 8 connections, 8 to 26 threads ever served,
``PoolExhausted`` for the others). The gate hands a freed slot straight to the longest waiter instead,
so a thread that gives a connection back and asks again queues behind those already waiting.
"""

from __future__ import annotations

import threading
from collections import deque


class Gate:
    """A FIFO counting semaphore: ``acquire`` a slot before borrowing, ``release`` it once returned."""

    __slots__ = ("_free", "_lock", "_waiters")

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[threading.Lock] = deque()

    @property
    def free(self) -> int:
        """Return the slots nobody holds or waits for."""
        return self._free

    @property
    def waiting(self) -> int:
        """Return how many borrowers wait for a slot."""
        return len(self._waiters)

    def acquire(self, timeout: float) -> bool | None:
        """Take a slot: True after waiting for it, False at once, None when ``timeout`` seconds passed."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return False
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        if waiter.acquire(timeout=max(timeout, 0.0)):
            return True  # release() handed its slot over
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return True  # handed over between the timeout and the lock
        return None

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1
