"""``Gate``: at most N connections of a pool lent at once, waiting borrowers served first come, first served.

SQLAlchemy's ``QueuePool`` gives a returned connection to whichever thread asks next. With wrappers that
borrow per statement (``POOL["RELEASE"] = "transaction"``), the thread that has just given a connection
back asks again at once, still holding the GIL, and takes it before a waiting thread has woken up: the
waiters starve until ``TIMEOUT`` (measured: 64 threads over 8 connections, 8 to 26 threads ever served,
``PoolExhausted`` for the others). The gate hands a freed slot straight to the longest waiter instead,
so a thread that gives a connection back and asks again queues behind those already waiting.

A slot may also be *parked*: its holder gave its connection back but keeps first claim on it
(``park``), to take it again without going through the pool (``unpark``). A borrower that finds no free
slot takes the oldest parked one instead of waiting; nothing is parked while anyone waits.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class Gate:
    """A FIFO counting semaphore: ``acquire`` a slot before borrowing, ``release`` it once returned."""

    __slots__ = ("_free", "_lock", "_parked", "_waiters")

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[threading.Lock] = deque()
        self._parked: dict[Any, None] = {}  # insertion-ordered: the oldest is taken first

    @property
    def free(self) -> int:
        """Return the slots nobody holds or waits for."""
        return self._free

    @property
    def waiting(self) -> int:
        """Return how many borrowers wait for a slot."""
        return len(self._waiters)

    @property
    def parked(self) -> int:
        """Return how many slots are parked."""
        return len(self._parked)

    def acquire(self, timeout: float) -> Any:
        """Take a slot: False at once, True after waiting, None when ``timeout`` passed, or a parked item.

        A parked item comes with its slot: the caller now holds both.
        """
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return False
            if self._parked:
                item = next(iter(self._parked))
                del self._parked[item]
                return item
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

    def park(self, item: Any, limit: int) -> bool:
        """Park ``item`` with its slot for its holder to ``unpark`` (not while any wait, nor at ``limit``)."""
        with self._lock:
            if self._waiters or len(self._parked) >= limit:
                return False
            self._parked[item] = None
            return True

    def unpark(self, item: Any) -> bool:
        """Take back a parked slot with its item; False if another borrower took it meanwhile."""
        with self._lock:
            return self._parked.pop(item, False) is None

    def take_parked(self) -> list[Any]:
        """Remove and return every parked item (their slots stay held until released)."""
        with self._lock:
            items = list(self._parked)
            self._parked.clear()
            return items

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1
