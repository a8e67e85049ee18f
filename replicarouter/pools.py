"""Connection pools: one SQLAlchemy ``QueuePool`` per database alias per process.

Design:

- **Lifecycle.** Django's wrapper borrows a raw psycopg2 connection when it connects and gives it back
  when Django closes it (end of request with ``CONN_MAX_AGE = 0``), so a thread holds a server
  connection only while it works. A returned connection is rolled back if a transaction is open and, when
  the borrower may have changed session state (``SET``, temporary tables, prepared statements, advisory
  locks, ``LISTEN``…), reset with ``DISCARD ALL``; a connection that is broken or fails its reset is
  invalidated (closed), never returned. ``RESET = "always"`` discards on every return, ``"rollback"``
  never does. ``reset_plan`` decides which of these a returned connection needs (pure, unit-tested);
  ``ConnectionPool._reset`` carries it out.
- **Liveness.** On checkout, the idle connection's socket is polled without waiting: a server that
  terminated the backend (``pg_terminate_backend``, restart, idle timeout) has left it readable, and such
  a connection is replaced before Django sees it (about 2 µs; ``PRE_PING`` adds a real ``SELECT 1``).
- **Fork safety.** Pools remember their pid. In a forked child the registry starts empty, and every
  inherited connection's socket descriptor is pointed at ``/dev/null`` so that nothing the child does
  (including garbage collection at exit, when libpq sends its Terminate message) can reach the parent's
  sessions; the parent's connections keep working.
- **Stats** per pool (size, checked out, overflow, idle, connects, waits, timeouts, invalidations) feed
  ``replicarouter.status()`` and ``replicastatus``.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from .exceptions import ConfigurationError, PoolExhausted

logger = logging.getLogger("replicarouter.pools")

RESET_MODES = ("auto", "always", "rollback")

POOL_DEFAULTS: dict[str, Any] = {
    "SIZE": 10,
    "MAX_OVERFLOW": 10,
    "TIMEOUT": 5.0,
    "RECYCLE": 1800,
    "PRE_PING": False,
    "RESET": "auto",
    "LIFO": True,
    "LEAK_WARNING": None,
}


@dataclass(frozen=True)
class PoolOptions:
    """An alias's ``POOL`` settings, validated (see docs/configuration.md)."""

    size: int = 10
    max_overflow: int = 10
    timeout: float = 5.0
    recycle: int = 1800
    pre_ping: bool = False
    reset: str = "auto"
    lifo: bool = True
    leak_warning: float | None = None

    @classmethod
    def from_settings(cls, alias: str, settings: Mapping[str, Any] | None) -> PoolOptions:
        """Return the options of ``DATABASES[alias]["POOL"]``; raise ConfigurationError when invalid."""
        problems = pool_settings_problems(settings)
        if problems:
            raise ConfigurationError(f"DATABASES[{alias!r}]['POOL'] is invalid: " + "; ".join(problems))
        values = {**POOL_DEFAULTS, **(settings or {})}
        recycle = values["RECYCLE"]
        return cls(
            size=int(values["SIZE"]),
            max_overflow=int(values["MAX_OVERFLOW"]),
            timeout=float(values["TIMEOUT"]),
            recycle=-1 if recycle is None else int(recycle),
            pre_ping=bool(values["PRE_PING"]),
            reset=str(values["RESET"]),
            lifo=bool(values["LIFO"]),
            leak_warning=None if values["LEAK_WARNING"] is None else float(values["LEAK_WARNING"]),
        )


def pool_settings_problems(settings: Any) -> list[str]:
    """Return what is wrong with a ``POOL`` dict, one message per problem (empty when valid)."""
    if settings is None:
        return []
    if not isinstance(settings, Mapping):
        return [f"must be a dict, not {type(settings).__name__}"]
    problems = [f"unknown key {key!r}" for key in settings if key not in POOL_DEFAULTS]

    def number(key: str, minimum: float, allow_none: bool = False, integer: bool = False) -> None:
        if key not in settings:
            return
        value = settings[key]
        if value is None and allow_none:
            return
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
            what = "an integer" if integer else "a number"
            problems.append(
                f"{key} must be {what} >= {minimum}{' or None' if allow_none else ''}, not {value!r}"
            )

    number("SIZE", 1, integer=True)
    number("MAX_OVERFLOW", -1, integer=True)
    number("TIMEOUT", 0)
    number("RECYCLE", -1, allow_none=True, integer=True)
    number("LEAK_WARNING", 0, allow_none=True)
    for key in ("PRE_PING", "LIFO"):
        if key in settings and not isinstance(settings[key], bool):
            problems.append(f"{key} must be True or False, not {settings[key]!r}")
    if "RESET" in settings and settings["RESET"] not in RESET_MODES:
        problems.append(
            f"RESET must be one of {', '.join(map(repr, RESET_MODES))}, not {settings['RESET']!r}"
        )
    return problems


#: libpq's transaction states (PQTransactionStatus, psycopg2.extensions.TRANSACTION_STATUS_*), named here
#: so that this module imports psycopg2 only when a connection is made
TRANSACTION_IDLE = 0
TRANSACTION_ACTIVE = 1
TRANSACTION_INTRANS = 2
TRANSACTION_INERROR = 3
TRANSACTION_UNKNOWN = 4


@dataclass(frozen=True)
class ResetPlan:
    """What a returned connection needs before its next borrower (see ``reset_plan``)."""

    #: it cannot be made clean (the server connection is lost): close it instead of pooling it
    invalidate: bool = False
    #: a transaction is open (or failed): roll it back
    rollback: bool = False
    #: clear session state with ``DISCARD ALL``
    discard: bool = False


def reset_plan(transaction_status: int, reset: str, dirty: bool, tainted: bool = False) -> ResetPlan:
    """Return what a returned connection needs, given its libpq transaction status and ``RESET`` mode.

    ``dirty``: the borrower ran a statement that may leave session state behind (``SET``, temporary
    tables, ``LISTEN``…). ``"auto"`` discards only then, ``"always"`` every time, ``"rollback"`` never.
    ``tainted``: replicarouter left session state itself (see ``Borrowed.tainted``): discarded always.
    """
    if transaction_status == TRANSACTION_UNKNOWN:
        return ResetPlan(invalidate=True)
    return ResetPlan(
        rollback=transaction_status != TRANSACTION_IDLE,
        discard=tainted or reset == "always" or (reset == "auto" and dirty),
    )


@dataclass
class PoolCounters:
    """Monotonic event counts of one pool (approximate under heavy thread contention)."""

    connects: int = 0
    checkouts: int = 0
    waits: int = 0
    timeouts: int = 0
    invalidations: int = 0
    discards: int = 0
    stale_on_checkout: int = 0


@dataclass
class _Lease:
    since: float
    thread: str
    warned: bool = False


@dataclass(eq=False)
class Borrowed:
    """A connection lent to one Django wrapper, with what the pool needs to take it back."""

    pool: ConnectionPool
    fairy: Any  # sqlalchemy.pool.PoolProxiedConnection
    dirty: bool = False
    #: replicarouter itself left session state on it (a primary lent read-only for replica reads):
    #: discarded on return whatever ``RESET`` says, since ``"rollback"`` trusts only the borrower
    tainted: bool = False
    lease: _Lease | None = None  # only kept when LEAK_WARNING is set

    @property
    def connection(self) -> Any:
        """Return the raw psycopg2 connection."""
        return self.fairy.dbapi_connection


class ConnectionPool:
    """The pool of one alias in one process."""

    def __init__(self, alias: str, options: PoolOptions, creator: Callable[[], Any]) -> None:
        self.alias = alias
        self.options = options
        self.pid = os.getpid()
        self.disposed = False
        self.counters = PoolCounters()
        self._leases: dict[int, _Lease] = {}
        self._records: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._pool = QueuePool(
            creator,
            pool_size=options.size,
            max_overflow=options.max_overflow,
            timeout=options.timeout,
            recycle=options.recycle,
            use_lifo=options.lifo,
            reset_on_return=None,  # we reset in checkin(), where we know what the borrower did
            pre_ping=False,  # needs a dialect; done in _on_checkout instead
        )
        event.listen(self._pool, "connect", self._on_connect)
        event.listen(self._pool, "checkout", self._on_checkout)

    # -- events -----------------------------------------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        self.counters.connects += 1
        self._records.add(record)

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # raising DisconnectionError makes QueuePool invalidate this connection and hand out another
        if _socket_readable(dbapi_connection):
            self.counters.stale_on_checkout += 1
            logger.info(
                "pool %r: dropped a connection the server had closed",
                self.alias,
                extra={"replicarouter_event": "pool_stale_connection", "replicarouter_node": self.alias},
            )
            raise sa_exc.DisconnectionError("server closed the idle connection")
        if self.options.pre_ping:
            try:
                if not dbapi_connection.autocommit:
                    dbapi_connection.autocommit = True
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
            except Exception as exc:
                self.counters.stale_on_checkout += 1
                raise sa_exc.DisconnectionError(f"pre-ping failed: {exc}") from exc

    # -- borrowing --------------------------------------------------------------------------------------

    def checkout(self) -> Borrowed:
        """Lend a connection; raise PoolExhausted after ``TIMEOUT`` seconds without one."""
        limit = self.options.size + self.options.max_overflow
        if (
            self.options.max_overflow >= 0
            and self._pool.checkedin() == 0
            and self._pool.checkedout() >= limit
        ):
            self.counters.waits += 1
        if self.options.leak_warning is not None:
            self._warn_long_leases()
        started = time.monotonic()
        try:
            fairy = self._pool.connect()
        except sa_exc.TimeoutError:
            self.counters.timeouts += 1
            raise PoolExhausted(
                self.alias, self.options.size, self.options.max_overflow, time.monotonic() - started
            ) from None
        self.counters.checkouts += 1
        borrowed = Borrowed(self, fairy)
        if self.options.leak_warning is not None:
            borrowed.lease = _Lease(time.monotonic(), threading.current_thread().name)
            with self._lock:
                self._leases[id(borrowed)] = borrowed.lease
        return borrowed

    def checkin(self, borrowed: Borrowed, *, reusable: bool = True) -> None:
        """Take a connection back: reset it and return it to the pool, or close it if it is not sound."""
        if self.options.leak_warning is not None and borrowed.lease is not None:
            with self._lock:
                self._leases.pop(id(borrowed), None)
            held = time.monotonic() - borrowed.lease.since
            if held > self.options.leak_warning:
                logger.warning(
                    "pool %r: connection held %.1f s by thread %s (LEAK_WARNING is %.1f s)",
                    self.alias, held, borrowed.lease.thread, self.options.leak_warning,
                    extra={"replicarouter_event": "pool_leak", "replicarouter_node": self.alias},
                )  # fmt: skip
        fairy = borrowed.fairy
        if fairy.dbapi_connection is None:  # already invalidated
            return
        if reusable and not self.disposed and self._reset(borrowed):
            fairy.close()
        else:
            self.counters.invalidations += 1
            fairy.invalidate()

    def _reset(self, borrowed: Borrowed) -> bool:
        """Make a returned connection clean for its next borrower; return False if it cannot be."""
        conn = borrowed.connection
        if conn.closed:
            return False
        try:
            plan = reset_plan(
                conn.info.transaction_status, self.options.reset, borrowed.dirty, borrowed.tainted
            )
            if plan.invalidate:
                return False
            if plan.rollback:
                conn.rollback()
            if plan.discard:
                if not conn.autocommit:
                    conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
                with conn.cursor() as cursor:
                    cursor.execute("DISCARD ALL")
                self.counters.discards += 1
        except Exception as exc:
            logger.info(
                "pool %r: closing a connection that failed its reset: %s",
                self.alias,
                exc,
                extra={"replicarouter_event": "pool_reset_failed", "replicarouter_node": self.alias},
            )
            return False
        return True

    def _warn_long_leases(self) -> None:
        assert self.options.leak_warning is not None
        now = time.monotonic()
        with self._lock:
            leases = list(self._leases.values())
        for lease in leases:
            if not lease.warned and now - lease.since > self.options.leak_warning:
                lease.warned = True
                logger.warning(
                    "pool %r: a connection has been checked out by thread %s for %.1f s (LEAK_WARNING is "
                    "%.1f s): a thread that never closes its connection holds it forever",
                    self.alias, lease.thread, now - lease.since, self.options.leak_warning,
                    extra={"replicarouter_event": "pool_leak", "replicarouter_node": self.alias},
                )  # fmt: skip

    # -- state ------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Return pool gauges and counters: size, checked_out, overflow, idle, connects, waits…"""
        checked_out = self._pool.checkedout()
        # QueuePool counts invalidated slots (no connection until next checkout) as checked in: count
        # the server connections that really exist instead
        open_connections = sum(1 for record in list(self._records) if record.dbapi_connection is not None)
        return {
            "size": self.options.size,
            "max_overflow": self.options.max_overflow,
            "checked_out": checked_out,
            "overflow": max(0, checked_out - self.options.size),
            "idle": max(0, open_connections - checked_out),
            **vars(self.counters),
        }

    def dispose(self) -> None:
        """Close every idle connection; checked-out ones are closed when they come back."""
        self.disposed = True
        self._pool.dispose()

    def detach_from_parent(self, devnull: int) -> None:
        """In a forked child: make this pool's inherited sockets harmless without closing the parent's."""
        for record in list(self._records):
            conn = getattr(record, "dbapi_connection", None)
            if conn is None:
                continue
            try:
                fd = conn.fileno()
            except Exception:
                continue
            os.dup2(devnull, fd)  # libpq may now write its Terminate message: it goes nowhere


def _socket_readable(dbapi_connection: Any) -> bool:
    """Return whether an idle connection has pending input, i.e. the server closed it or is closing it."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except Exception:
        return True


class PoolRegistry:
    """Every pool of this process, by alias and connection parameters."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, tuple[tuple[str, str], ...]], ConnectionPool] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # pools of a parent process, kept alive so that their connections are never garbage collected
        self._inherited: list[ConnectionPool] = []

    def get(
        self, alias: str, options: PoolOptions, conn_params: Mapping[str, Any], creator: Callable[[], Any]
    ) -> ConnectionPool:
        """Return the pool for ``alias`` with these parameters, creating it on first use."""
        if self._pid != os.getpid():
            self.after_fork()
        key = (alias, tuple(sorted((k, repr(v)) for k, v in conn_params.items())))
        pool = self._pools.get(key)
        if pool is not None and pool.options == options:
            return pool
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or pool.options != options:
                if pool is not None:
                    pool.dispose()
                pool = ConnectionPool(alias, options, creator)
                self._pools[key] = pool
                logger.debug("pool %r created: %s", alias, options)
            return pool

    def pools(self, alias: str | None = None) -> list[ConnectionPool]:
        """Return this process's pools (of one alias, when given)."""
        return [p for (a, _), p in list(self._pools.items()) if alias is None or a == alias]

    def stats(self, alias: str) -> dict[str, int]:
        """Return the summed stats of an alias's pools (zeros when it has none yet)."""
        total: dict[str, int] = {}
        for pool in self.pools(alias):
            for key, value in pool.stats().items():
                total[key] = total.get(key, 0) + value if key not in ("size", "max_overflow") else value
        empty = {"size": 0, "max_overflow": 0, "checked_out": 0, "overflow": 0, "idle": 0}
        return total or {**empty, **vars(PoolCounters())}

    def dispose(self, alias: str | None = None) -> None:
        """Close the idle connections of every pool (of one alias) and forget those pools."""
        with self._lock:
            for key in [k for k in self._pools if alias is None or k[0] == alias]:
                self._pools.pop(key).dispose()

    def after_fork(self) -> None:
        """Forget the parent's pools without touching the parent's connections (runs in the child)."""
        if self._pid == os.getpid():
            return
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for pool in self._pools.values():
                pool.detach_from_parent(devnull)
                self._inherited.append(pool)
        finally:
            os.close(devnull)
        self._pools = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()


registry = PoolRegistry()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=registry.after_fork)
