"""Read timeouts for replicas that stop answering: a watchdog thread that cuts stuck connections.

A replica whose processes are frozen (SIGSTOP, a hung VM, a dead NIC on a long TCP timeout) leaves a
query waiting in libpq forever: the server never answers and never closes the socket; TCP keepalive does
not fire on a connection the kernel still acknowledges, and ``statement_timeout`` is enforced by the very
server that is stuck. So reads on replicas register with this watchdog for their duration. A read still
waiting after ``READ_TIMEOUT`` *on a node that no longer answers the monitor's probes* has its socket shut
down (``shutdown(2)`` on a duplicate of the descriptor): libpq returns at once with "server closed the
connection unexpectedly", and the backend retries the read elsewhere. A slow query on a node that still
answers its probes is left alone: long reports on replicas are legitimate, ``statement_timeout`` is
the tool for those.

One daemon thread (``replicarouter-watchdog``) per process, started on the first watched read, again in
a forked child; registering and unregistering a read costs a lock and a dict operation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from replicarouter import runtime
from replicarouter.observability import stats

logger = logging.getLogger("replicarouter.watchdog")

#: how often the thread looks at reads in flight (a bound on how late past READ_TIMEOUT a cut comes)
TICK = 0.05


@dataclass(eq=False)
class Watch:
    """One read in flight."""

    fd: int
    cluster: str
    alias: str
    deadline: float
    aborted: bool = False


class Watchdog:
    """Reads in flight on replicas, and the thread that cuts those stuck on unresponsive nodes."""

    def __init__(self, unresponsive: Callable[[str, str], bool]) -> None:
        self._unresponsive = unresponsive
        self._lock = threading.Lock()
        self._inflight: dict[int, Watch] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._stop.clear()
                    self._thread = runtime.start_thread("replicarouter-watchdog", self._run)

    @contextlib.contextmanager
    def watching(self, connection: Any, cluster: str, alias: str, timeout: float) -> Iterator[Watch]:
        """Watch a read on ``connection`` for its duration."""
        self._ensure_thread()
        watch = Watch(connection.fileno(), cluster, alias, time.monotonic() + timeout)
        key = id(watch)
        with self._lock:
            self._inflight[key] = watch
        try:
            yield watch
        finally:
            # under the lock: once we are out, the thread can no longer cut this descriptor (which the
            # pool may hand to another thread next)
            with self._lock:
                self._inflight.pop(key, None)

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self._check()
            except Exception:  # the loop must survive anything
                logger.exception("read watchdog failed")

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [w for w in self._inflight.values() if not w.aborted and now >= w.deadline]
        for watch in due:
            if not self._unresponsive(watch.cluster, watch.alias):
                continue
            with self._lock:
                if id(watch) not in self._inflight:
                    continue  # finished meanwhile
                watch.aborted = True
                _cut(watch.fd)
            stats.incr("reads_aborted", watch.alias)
            logger.warning(
                "read on %s got no answer within READ_TIMEOUT and the node does not answer probes: "
                "connection cut, the read is retried elsewhere",
                watch.alias,
                extra={"replicarouter_node": watch.alias, "replicarouter_event": "read_timeout"},
            )

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (no thread is left behind)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None


def _cut(fd: int) -> None:
    """Shut a socket down in both directions: a thread blocked reading it wakes up with end-of-file."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _unresponsive(cluster: str, alias: str) -> bool:
    """Return whether the monitor's latest view says ``alias`` stopped answering (or it has no view)."""
    from replicarouter.health import store as health

    if health.is_suspect(cluster, alias):
        return True
    snapshot = health.snapshot(cluster)
    if snapshot is None or snapshot.stale():
        return True
    node = snapshot.nodes.get(alias)
    return node is None or node.failures > 0 or node.state == "down"


_watchdog: Watchdog | None = None
_lock = threading.Lock()


def get() -> Watchdog:
    """Return this process's watchdog (a new one in a forked child)."""
    global _watchdog
    runtime.check_fork()
    watchdog = _watchdog
    if watchdog is None:
        with _lock:
            watchdog = _watchdog
            if watchdog is None:
                watchdog = _watchdog = Watchdog(_unresponsive)
    return watchdog


@runtime.on_stop
def stop(timeout: float = 2.0) -> None:
    """Stop this process's watchdog thread, if any."""
    watchdog = _watchdog
    if watchdog is not None:
        watchdog.stop(timeout)


@runtime.on_fork
def _forget_parent() -> None:
    """In a forked child: the parent's watchdog thread and reads in flight are not this process's."""
    global _watchdog, _lock
    _watchdog, _lock = None, threading.Lock()
