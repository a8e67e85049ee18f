"""``Leases``: who holds a pool's connections and for how long, for ``POOL["LEAK_WARNING"]``."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger("replicarouter.pools")


@dataclass
class Lease:
    """One checkout: when, by which thread, and whether it was warned about already."""

    since: float
    thread: str
    warned: bool = False


class Leases:
    """The open leases of one pool; warns about those held longer than ``limit`` seconds."""

    def __init__(self, alias: str, limit: float) -> None:
        self.alias = alias
        self.limit = limit
        self._open: dict[int, Lease] = {}
        self._lock = threading.Lock()

    def lend(self, key: int) -> Lease:
        """Start a lease for this thread (``key``: the borrowed connection's id)."""
        lease = Lease(time.monotonic(), threading.current_thread().name)
        with self._lock:
            self._open[key] = lease
        return lease

    def end(self, key: int, lease: Lease) -> None:
        """End a lease; warn if it lasted longer than the limit."""
        with self._lock:
            self._open.pop(key, None)
        held = time.monotonic() - lease.since
        if held > self.limit:
            logger.warning(
                "pool %r: connection held %.1f s by thread %s (LEAK_WARNING is %.1f s)",
                self.alias, held, lease.thread, self.limit,
                extra={"replicarouter_event": "pool_leak", "replicarouter_node": self.alias},
            )  # fmt: skip

    def warn_long(self) -> None:
        """Warn once about each lease open longer than the limit (a thread that never gives it back)."""
        now = time.monotonic()
        with self._lock:
            leases = list(self._open.values())
        for lease in leases:
            if not lease.warned and now - lease.since > self.limit:
                lease.warned = True
                logger.warning(
                    "pool %r: a connection has been checked out by thread %s for %.1f s (LEAK_WARNING is "
                    "%.1f s): a thread that never closes its connection holds it forever",
                    self.alias, lease.thread, now - lease.since, self.limit,
                    extra={"replicarouter_event": "pool_leak", "replicarouter_node": self.alias},
                )  # fmt: skip
