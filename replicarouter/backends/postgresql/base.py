"""Django's postgresql backend (psycopg2) with connections borrowed from a per-alias pool.

Connection lifecycle: ``connect`` borrows from ``replicarouter.pools`` (through the driver object Django
calls ``Database.connect`` on, so Django's own ``get_new_connection`` still runs), ``close`` gives the
connection back, and a connection inherited from a parent process is dropped without any I/O. Pool
options come from the alias's top-level ``POOL`` key, which never reaches libpq.

Routing: every statement goes through ``TrackingCursor``, which tells the routing context when a
statement writes (raw SQL and ``using()`` included, which the router never sees) and tells the pool when
a statement changed session state; ``in_atomic_block`` is mirrored into the routing context.

Failover, at the connection level (so that ``atomic()``, ``using()`` and raw cursors all follow it):

- A cluster's **primary alias** connects to the node the monitor elected as writer: the configured
  primary, or a replica promoted on a newer timeline. With no writer (primary down, nothing promoted)
  it raises ``PrimaryUnavailable`` at once, and a failed connection attempt becomes one too.
- A **replica alias** that cannot connect, or that the process found broken, lends a connection to
  another usable replica (``selection.fallback_replica`` decides which), then to the primary (in a
  read-only session). A read (outside any
  transaction, client-side cursor, not a write) whose connection breaks or is cut by the read-timeout
  watchdog is run again once on such a fallback connection, and then on the primary, before the caller
  saw any row: psycopg2's client-side cursors fetch the whole result in ``execute()``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg2
from django.db.backends.postgresql import base as django_base

from replicarouter import pool as pools
from replicarouter import runtime
from replicarouter.backends import watchdog
from replicarouter.conf import settings, topology
from replicarouter.exceptions import ConfigurationError, PoolExhausted, PrimaryUnavailable
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.routing import context, selection, statements
from replicarouter.routing.topology import Cluster

from .creation import DatabaseCreation

logger = logging.getLogger("replicarouter.failover")


class PooledDriver:
    """psycopg2 as one Django wrapper sees it, except that ``connect()`` borrows from the alias's pool."""

    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self._wrapper = wrapper

    def connect(self, **conn_params: Any) -> Any:
        return self._wrapper._borrow(conn_params)

    def __getattr__(self, name: str) -> Any:
        return getattr(psycopg2, name)


class DatabaseWrapper(django_base.DatabaseWrapper):
    """A postgresql ``DatabaseWrapper`` whose connections come from a SQLAlchemy QueuePool."""

    creation_class = DatabaseCreation

    connection: Any
    _in_atomic_block = False
    #: set while this wrapper holds a connection lent for reads of a replica alias (retries allowed)
    _read_cluster: Cluster | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.Database = PooledDriver(self)
        self._borrowed: pools.Borrowed | None = None
        self._borrowed_generation = -1
        self._pool_cache: tuple[Any, dict[str, Any], pools.ConnectionPool] | None = None

    @property
    def pool_options(self) -> pools.PoolOptions:
        """Return this alias's validated ``POOL`` options."""
        return pools.PoolOptions.from_settings(self.alias, self.settings_dict.get("POOL"))

    def connection_pool(self, conn_params: dict[str, Any] | None = None) -> pools.ConnectionPool:
        """Return this process's pool for this alias (created on first use)."""
        runtime.check_fork()
        params = self.get_connection_params() if conn_params is None else conn_params
        pool_setting = self.settings_dict.get("POOL")
        cached = self._pool_cache
        # the same settings and parameters as last time: skip re-validating options and re-keying
        if (
            cached is not None
            and cached[0] is pool_setting
            and cached[1] == params
            and cached[2].generation == runtime.generation()
            and not cached[2].disposed
        ):
            return cached[2]
        pool = pools.registry.get(self.alias, self.pool_options, params, lambda: psycopg2.connect(**params))
        self._pool_cache = (pool_setting, dict(params), pool)
        return pool

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        # libpq waits forever on a server that accepts nothing (frozen, black-holed) without it
        params.setdefault("connect_timeout", settings.CONNECT_TIMEOUT)
        return params

    def _placement(self) -> tuple[Cluster | None, str | None]:
        """Return this alias's cluster and role in it (None, None: not part of any cluster)."""
        try:
            cluster = topology().by_alias.get(self.alias)
        except ConfigurationError:
            return None, None
        if cluster is None:
            return None, None
        return cluster, "primary" if cluster.primary == self.alias else "replica"

    def _borrow(self, conn_params: dict[str, Any]) -> Any:
        cluster, role = self._placement()
        self._read_cluster = None
        if role == "primary" and cluster is not None:
            borrowed = self._borrow_primary(cluster, conn_params)
        elif role == "replica" and cluster is not None and settings.RETRY_READS:
            borrowed = self._borrow_replica(cluster, conn_params)
            self._read_cluster = cluster
        else:
            borrowed = self.connection_pool(conn_params).checkout()
        self._borrowed = borrowed
        self._borrowed_generation = runtime.generation()
        return borrowed.connection

    def _borrow_primary(
        self, cluster: Cluster, conn_params: dict[str, Any], *, context: str = ""
    ) -> pools.Borrowed:
        """Borrow a connection to the node that takes the cluster's writes now.

        ``context`` prefixes the reason of the ``PrimaryUnavailable`` raised when there is none.
        """
        writer = health.write_node(cluster.name, self.alias)
        if writer is None:
            stats.incr("primary_unavailable", cluster.name)
            snapshot = health.snapshot(cluster.name)
            reason = snapshot.reason if snapshot else "unknown"
            raise PrimaryUnavailable(cluster.name, self.alias, context + reason)
        params = conn_params if writer == self.alias else _connection_params(writer)
        try:
            return self.connection_pool(params).checkout()
        except PoolExhausted:
            raise
        except psycopg2.OperationalError as exc:
            stats.incr("primary_unavailable", cluster.name)
            raise PrimaryUnavailable(
                cluster.name, self.alias, f"{context}cannot connect to {writer}: {_first_line(exc)}"
            ) from exc

    def _borrow_replica(self, cluster: Cluster, conn_params: dict[str, Any]) -> pools.Borrowed:
        """Borrow a connection to this replica, or to a fallback when it is broken (see module doc)."""
        error: Exception | None = None
        node = health.node(cluster.name, self.alias)
        # a node that failed its last probe may be frozen: a new connection to it would wait for
        # CONNECT_TIMEOUT, so its reads are lent elsewhere until it answers again
        unanswered = node is not None and node.failures > 0
        if not unanswered and not health.is_suspect(cluster.name, self.alias):
            try:
                return self.connection_pool(conn_params).checkout()
            except PoolExhausted:
                raise
            except psycopg2.OperationalError as exc:
                health.suspect(cluster.name, self.alias)
                error = exc
        return _fallback(cluster, self.alias, error)

    def guarded_execute(self, cursor: TrackingCursor, method: str, sql: Any, params: Any) -> Any:
        """Run a read on a replica with the read timeout, and again elsewhere if its connection breaks."""
        cluster = self._read_cluster
        assert cluster is not None
        timeout = settings.READ_TIMEOUT
        attempts = 0
        while True:
            conn = self.connection
            raw = cursor._cursor
            watch: watchdog.Watch | None = None
            try:
                if timeout is None:
                    return getattr(raw, method)(sql, params)
                with watchdog.get().watching(conn, cluster.name, self.alias, timeout) as watch:
                    return getattr(raw, method)(sql, params)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                # only a broken connection is retried: a cancelled or failed statement on a live one is
                # the caller's business
                cut = watch is not None and watch.aborted
                if attempts >= 2 or not (conn.closed or cut):
                    raise
                attempts += 1
                server = _server(conn)
                # the broken connection may have been lent by another replica alias: suspect its owner too
                for alias in (self.alias, *_replicas_on(cluster, server)):
                    health.suspect(cluster.name, alias)
                stats.incr("read_retries", self.alias)
                logger.warning(
                    "read on %s (%s) failed: %s; retrying it elsewhere (attempt %d)",
                    self.alias,
                    server,
                    "no answer within READ_TIMEOUT" if cut else _first_line(exc),
                    attempts,
                    extra={"replicarouter_node": self.alias, "replicarouter_event": "read_retry"},
                )
                self._replace_connection(cursor)

    def _replace_connection(self, cursor: TrackingCursor) -> None:
        """Drop the broken connection and point ``cursor`` at a fresh one (a fallback node's)."""
        with contextlib.suppress(Exception):  # the connection is broken: closing it may complain
            self.close()
        self.connection = None
        self.ensure_connection()
        cursor._cursor = self.create_cursor()._cursor

    def _forget_inherited(self) -> None:
        """Drop, without I/O, a connection this wrapper holds from before a fork."""
        runtime.check_fork()
        if self.connection is not None and self._borrowed_generation != runtime.generation():
            self.connection = None
            self._borrowed = None
            self.closed_in_transaction = False
            self.needs_rollback = False
            self.in_atomic_block = False
            self.savepoint_ids: list[str] = []
            self.atomic_blocks: list[Any] = []

    def ensure_connection(self) -> None:
        self._forget_inherited()
        super().ensure_connection()

    def _close(self) -> None:
        self._forget_inherited()
        borrowed, self._borrowed = self._borrowed, None
        if borrowed is None:
            super()._close()
            return None
        # closed inside atomic(), Django keeps referring to this connection until the block ends: it
        # must not go back to the pool where another thread could get it, so it is closed for good
        borrowed.pool.checkin(borrowed, reusable=not self.in_atomic_block)
        return None

    def create_cursor(self, name: str | None = None) -> Any:
        return TrackingCursor(super().create_cursor(name), self)

    @property
    def in_atomic_block(self) -> bool:
        return self._in_atomic_block

    @in_atomic_block.setter
    def in_atomic_block(self, value: bool) -> None:
        # mirrored into a contextvar so that the router can ask without touching django.db.connections
        self._in_atomic_block = value
        context.set_atomic(self.alias, value)

    def mark_write(self) -> None:
        """Record that this request/task wrote through this alias (its cluster's reads go to the primary)."""
        try:
            cluster = topology().by_alias.get(self.alias)
        except ConfigurationError:
            cluster = None
        context.mark_write(cluster.name if cluster is not None else self.alias)


class TrackingCursor:
    """A psycopg2 cursor that notes writes (for routing) and session-state changes (for the pool reset)."""

    __slots__ = ("_cursor", "_wrapper")

    def __init__(self, cursor: Any, wrapper: DatabaseWrapper) -> None:
        self._cursor = cursor
        self._wrapper = wrapper

    def _track(self, sql: Any) -> bool:
        """Note what ``sql`` does; return whether it may be retried elsewhere if its connection breaks."""
        wrapper = self._wrapper
        write, session_state = statements.classify(sql)
        if write:
            wrapper.mark_write()
        if session_state:
            borrowed = wrapper._borrowed
            if borrowed is not None:
                borrowed.dirty = True
        return (
            wrapper._read_cluster is not None
            and not write
            and not session_state
            and wrapper.autocommit
            and not wrapper.in_atomic_block
            and self._cursor.name is None
        )

    def execute(self, sql: Any, params: Any = None) -> Any:
        if self._track(sql):
            return self._wrapper.guarded_execute(self, "execute", sql, params)
        return self._cursor.execute(sql, params)

    def executemany(self, sql: Any, param_list: Any) -> Any:
        self._track(sql)
        return self._cursor.executemany(sql, param_list)

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        # a procedure may do anything: write, or change the session
        self._wrapper.mark_write()
        if self._wrapper._borrowed is not None:
            self._wrapper._borrowed.dirty = True
        return self._cursor.callproc(*args, **kwargs)

    def copy_expert(self, sql: Any, file: Any, *args: Any, **kwargs: Any) -> Any:
        self._track(sql)
        return self._cursor.copy_expert(sql, file, *args, **kwargs)

    def copy_from(self, *args: Any, **kwargs: Any) -> Any:
        self._wrapper.mark_write()
        return self._cursor.copy_from(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in TrackingCursor.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self._cursor, name, value)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def __enter__(self) -> TrackingCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cursor.close()


def _connection_params(alias: str) -> dict[str, Any]:
    from django.db import connections

    params: dict[str, Any] = connections[alias].get_connection_params()
    return params


def _server(conn: Any) -> str:
    try:
        return f"{conn.info.host}:{conn.info.port}"
    except Exception:
        return "?"


def _replicas_on(cluster: Cluster, server: str) -> list[str]:
    """Return the cluster's replica aliases that point at ``server`` (host:port)."""
    from django.conf import settings as django_settings

    entries = {alias: django_settings.DATABASES.get(alias, {}) for alias in cluster.replicas}
    return [a for a, entry in entries.items() if f"{entry.get('HOST')}:{entry.get('PORT')}" == server]


def _fallback(cluster: Cluster, alias: str, error: Exception | None) -> pools.Borrowed:
    """Lend, for reads of replica ``alias``, a connection to another usable replica, else the primary."""
    from django.db import connections

    failures = [f"{alias}: {_first_line(error) if error else 'found broken by an earlier request'}"]
    other = selection.fallback_replica(cluster, alias, health.usable_replicas(cluster.name))
    if other is not None:
        wrapper: DatabaseWrapper = connections[other]
        try:
            borrowed: pools.Borrowed = wrapper.connection_pool(wrapper.get_connection_params()).checkout()
        except psycopg2.OperationalError as exc:
            health.suspect(cluster.name, other)
            failures.append(f"{other}: {_first_line(exc)}")
        else:
            stats.incr("read_fallbacks", alias)
            logger.warning(
                "replica %s unavailable (%s): its reads go to %s",
                alias, failures[0], other,
                extra={"replicarouter_node": alias, "replicarouter_event": "read_fallback"},
            )  # fmt: skip
            return borrowed
    primary: DatabaseWrapper = connections[cluster.primary]
    borrowed = primary._borrow_primary(
        cluster,
        primary.get_connection_params(),
        context="no replica could serve the read either (" + "; ".join(failures) + "); ",
    )
    conn = borrowed.connection
    try:
        # reads of a replica alias must not write, on whatever node they land
        if not conn.autocommit:
            conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET default_transaction_read_only = on")
        borrowed.tainted = True  # DISCARD ALL when it goes back, even with RESET = "rollback"
    except Exception:
        borrowed.pool.checkin(borrowed, reusable=False)
        raise
    stats.incr("read_fallbacks", alias)
    logger.warning(
        "replicas unavailable (%s): reads of %s go to the primary (%s)",
        "; ".join(failures), alias, _server(conn),
        extra={"replicarouter_node": alias, "replicarouter_event": "read_fallback"},
    )  # fmt: skip
    return borrowed


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
