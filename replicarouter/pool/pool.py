"""``ConnectionPool``: one SQLAlchemy ``QueuePool`` of one alias, lending connections to Django wrappers."""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from replicarouter import runtime
from replicarouter.exceptions import PoolExhausted

from .gate import Gate
from .leases import Lease, Leases
from .liveness import socket_readable
from .options import PoolOptions
from .reset import reset_plan

logger = logging.getLogger("replicarouter.pools")

#: pool entry ``info`` keys (they live as long as the server connection): what the connection was prepared
#: for by a Django wrapper, and the driver's session characteristics then (isolation level, readonly,
#: deferrable). A reset that clears session state forgets the first, so the next borrower prepares again.
PREPARED_KEY = "replicarouter.prepared"
SESSION_KEY = "replicarouter.session"
BORN_KEY = "replicarouter.born"


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
    #: connections a Django wrapper kept until its close() (session state, ``RELEASE = "transaction"``)
    pins: int = 0
    #: checkouts that took back the connection their borrower had parked (no QueuePool round)
    reuses: int = 0


@dataclass(eq=False)
class Borrowed:
    """A connection lent to one Django wrapper, with what the pool needs to take it back."""

    pool: ConnectionPool
    fairy: Any  # sqlalchemy.pool.PoolProxiedConnection
    dirty: bool = False
    #: replicarouter itself left session state on it (a primary lent read-only for replica reads):
    #: discarded on return whatever ``RESET`` says, since ``"rollback"`` trusts only the borrower
    tainted: bool = False
    lease: Lease | None = None  # only kept when LEAK_WARNING is set

    @property
    def connection(self) -> Any:
        """Return the raw psycopg2 connection."""
        return self.fairy.dbapi_connection

    @property
    def info(self) -> dict[str, Any]:
        """Return the flags kept with this server connection across checkouts (SQLAlchemy's ``info``)."""
        info: dict[str, Any] = self.fairy.info
        return info


class ConnectionPool:
    """The pool of one alias in one process."""

    def __init__(self, alias: str, options: PoolOptions, creator: Callable[[], Any]) -> None:
        self.alias = alias
        self.options = options
        #: the fork generation that made it (see ``replicarouter.runtime``)
        self.generation = runtime.generation()
        self.disposed = False
        self.counters = PoolCounters()
        self._leases = Leases(alias, options.leak_warning) if options.leak_warning is not None else None
        self._records: weakref.WeakSet[Any] = weakref.WeakSet()
        limited = options.max_overflow >= 0
        #: server connections open now (idle or lent)
        self._open = 0
        self._pool = QueuePool(
            creator,
            # with a limit, the gate enforces it and checkin() closes what is beyond SIZE: QueuePool's
            # own overflow would close connections that a waiter just handed a slot is about to take
            pool_size=options.size + options.max_overflow if limited else options.size,
            max_overflow=0 if limited else options.max_overflow,
            timeout=options.timeout,
            recycle=options.recycle,
            use_lifo=options.lifo,
            reset_on_return=None,  # we reset in checkin(), where we know what the borrower did
            pre_ping=False,  # needs a dialect; done in _on_checkout instead
        )
        event.listen(self._pool, "connect", self._on_connect)
        event.listen(self._pool, "checkout", self._on_checkout)
        #: first come, first served beyond the limit (None: unlimited overflow, nobody waits)
        self._gate = Gate(options.size + options.max_overflow) if limited else None
        event.listen(self._pool, "close", self._on_close)
        if self._gate is not None:
            # SQLAlchemy sends it exactly once per checkout, however the connection comes back
            # (closed, invalidated, or garbage-collected unreturned): a slot is never lost
            event.listen(self._pool, "checkin", self._on_checkin)

    # -- events -----------------------------------------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        self.counters.connects += 1
        self._open += 1
        self._records.add(record)
        record.info[BORN_KEY] = time.time()

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        self._open -= 1

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        assert self._gate is not None
        self._gate.release()

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # raising DisconnectionError makes QueuePool invalidate this connection and hand out another
        self._check_live(dbapi_connection)

    def _check_live(self, dbapi_connection: Any) -> None:
        """Raise DisconnectionError if an idle connection is closed by the server (or fails PRE_PING)."""
        if socket_readable(dbapi_connection):
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

    def checkout(self, prefer: Borrowed | None = None) -> Borrowed:
        """Lend a connection (``prefer``: the one its borrower parked, if still there); raise
        PoolExhausted after ``TIMEOUT`` seconds without one."""
        gate = self._gate
        if prefer is not None and self.take_back(prefer):
            self.counters.checkouts += 1
            self.counters.reuses += 1
            return prefer
        if self._leases is not None:
            self._leases.warn_long()
        started = time.monotonic()
        while gate is not None:
            waited = gate.acquire(self.options.timeout)
            if waited is None:
                self.counters.waits += 1
                self._exhausted(started)
            if isinstance(waited, Borrowed):  # another borrower's parked connection, with its slot
                if self._still_good(waited):
                    self.counters.checkouts += 1
                    return Borrowed(self, waited.fairy)
                continue
            if waited:
                self.counters.waits += 1
            break
        try:
            fairy = self._pool.connect()
        except sa_exc.TimeoutError:
            if gate is not None:
                gate.release()
            self._exhausted(started)
        except BaseException:
            if gate is not None:
                gate.release()  # no connection was lent: SQLAlchemy sends no checkin for it
            raise
        self.counters.checkouts += 1
        borrowed = Borrowed(self, fairy)
        if self._leases is not None:
            borrowed.lease = self._leases.lend(id(borrowed))
        return borrowed

    def park(self, borrowed: Borrowed) -> bool:
        """Keep a clean returned connection for its borrower to take back at once; others may take it.

        Refused (the caller checks it in instead) when it would need a reset, while anyone waits, and
        beyond ``SIZE`` parked connections.
        """
        gate = self._gate
        if gate is None or self.disposed or borrowed.dirty or borrowed.tainted:
            return False
        options = self.options
        if options.reset == "always" or options.leak_warning is not None:
            return False
        conn = borrowed.connection
        if conn is None or conn.closed or conn.get_transaction_status() != 0:
            return False
        baseline = borrowed.info.get(SESSION_KEY)
        if baseline is not None and baseline != (conn.isolation_level, conn.readonly, conn.deferrable):
            return False
        return gate.park(borrowed, options.size)

    def take_back(self, borrowed: Borrowed) -> bool:
        """Take back a connection its borrower parked: False if another took it, or it is not sound."""
        gate = self._gate
        return gate is not None and gate.unpark(borrowed) and self._still_good(borrowed)

    def _still_good(self, borrowed: Borrowed) -> bool:
        """Return whether a parked connection taken back is sound; close it (freeing its slot) if not."""
        fairy = borrowed.fairy
        recycle = self.options.recycle
        try:
            if self.disposed or (recycle >= 0 and time.time() - fairy.info[BORN_KEY] > recycle):
                raise sa_exc.DisconnectionError("recycled")
            self._check_live(fairy.dbapi_connection)
        except Exception:
            fairy.invalidate()  # SQLAlchemy's checkin event gives its slot back
            return False
        return True

    def _exhausted(self, started: float) -> NoReturn:
        self.counters.timeouts += 1
        raise PoolExhausted(
            self.alias, self.options.size, self.options.max_overflow, time.monotonic() - started
        ) from None

    def checkin(self, borrowed: Borrowed, *, reusable: bool = True) -> None:
        """Take a connection back: reset it and return it to the pool, or close it if it is not sound."""
        if self._leases is not None and borrowed.lease is not None:
            self._leases.end(id(borrowed), borrowed.lease)
        fairy = borrowed.fairy
        if fairy.dbapi_connection is None:  # already invalidated
            return
        if reusable and not self.disposed and self._beyond_size():
            fairy.invalidate()  # an overflow connection: closed on return, as QueuePool closes its own
            return
        if reusable and not self.disposed and self._reset(borrowed):
            fairy.close()
        else:
            self.counters.invalidations += 1
            fairy.invalidate()

    def _beyond_size(self) -> bool:
        """Return whether a connection coming back would be idle beyond ``SIZE`` (an overflow one)."""
        gate = self._gate
        if gate is None or self.options.max_overflow == 0:
            return False
        out = self._pool.checkedout()  # the returning one and the parked ones included
        # slots handed to borrowers that have not taken their connection yet: keep one idle for each
        pending = self.options.size + self.options.max_overflow - gate.free - out
        return self._open - out + gate.parked + 1 - max(pending, 0) > self.options.size

    def _reset(self, borrowed: Borrowed) -> bool:
        """Make a returned connection clean for its next borrower; return False if it cannot be."""
        conn = borrowed.connection
        if conn.closed:
            return False
        try:
            info = borrowed.info
            baseline = info.get(SESSION_KEY)
            now = (conn.isolation_level, conn.readonly, conn.deferrable)
            changed = baseline is not None and baseline != now
            plan = reset_plan(
                conn.get_transaction_status(),
                self.options.reset,
                borrowed.dirty,
                borrowed.tainted,
                characteristics_changed=changed,
            )
            if plan.invalidate:
                return False
            if plan.rollback:
                conn.rollback()
            if plan.discard:
                if not conn.autocommit:
                    conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
                if plan.restore_characteristics:
                    # in autocommit psycopg2 sets them as default_transaction_* GUCs, which DISCARD ALL
                    # resets on the server; the driver's own copy must go back to the defaults too
                    conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT", deferrable="DEFAULT")
                with conn.cursor() as cursor:
                    cursor.execute("DISCARD ALL")
                self.counters.discards += 1
                # time zone, role and isolation level are gone: the next wrapper prepares it again
                info.pop(PREPARED_KEY, None)
                info.pop(SESSION_KEY, None)
        except Exception as exc:
            logger.info(
                "pool %r: closing a connection that failed its reset: %s",
                self.alias,
                exc,
                extra={"replicarouter_event": "pool_reset_failed", "replicarouter_node": self.alias},
            )
            return False
        return True

    # -- state ------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Return pool gauges and counters: size, checked_out, overflow, idle, connects, waits…"""
        checked_out = self._pool.checkedout() - (self._gate.parked if self._gate is not None else 0)
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

    def connections(self) -> list[Any]:
        """Return the driver connections this pool opened that are still open (idle or lent)."""
        return [
            record.dbapi_connection for record in list(self._records) if record.dbapi_connection is not None
        ]

    def dispose(self) -> None:
        """Close every idle connection; checked-out ones are closed when they come back."""
        self.disposed = True
        if self._gate is not None:
            for parked in self._gate.take_parked():
                parked.fairy.invalidate()
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
