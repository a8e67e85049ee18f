"""Django's postgresql backend (psycopg2) with connections borrowed from a per-alias pool.

The wrapper overrides Django's own connection hooks and little else:

- ``get_new_connection`` borrows from ``replicarouter.pool`` (from the node ``lending`` picks: the
  elected writer for a primary alias, a fallback for a broken replica alias), then lets Django prepare
  the connection as a new one; ``_close`` gives it back; ``close_pool`` disposes this alias's pools in
  this process. A connection inherited from a parent process is dropped without any I/O. Pool options
  come from the alias's top-level ``POOL`` key, which never reaches libpq.
- ``create_cursor`` wraps every cursor in a ``TrackingCursor`` (``cursor.py``: writes, session state);
  ``in_atomic_block`` is mirrored into the routing context.
- ``guarded_execute`` runs a read of a replica alias under the read-timeout watchdog and, when its
  connection breaks, again on a fallback connection (``lending.retry`` decides).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psycopg2
from django.conf import settings as django_settings
from django.db.backends.postgresql import base as django_base

from replicarouter import pool as pools
from replicarouter import runtime
from replicarouter.backends import watchdog
from replicarouter.conf import settings, topology
from replicarouter.exceptions import ConfigurationError, PoolExhausted, PrimaryUnavailable
from replicarouter.health import store as health
from replicarouter.observability import stats
from replicarouter.routing import context
from replicarouter.routing.topology import Cluster

from . import lending, nodes
from .creation import DatabaseCreation
from .cursor import TrackingCursor
from .units import UnitOfWorkWrapper

logger = logging.getLogger("replicarouter.failover")


class DatabaseWrapper(UnitOfWorkWrapper):
    """A postgresql ``DatabaseWrapper`` whose connections come from a SQLAlchemy QueuePool."""

    creation_class = DatabaseCreation

    _in_atomic_block = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool_cache: tuple[Any, dict[str, Any], pools.ConnectionPool] | None = None

    # -- pools ------------------------------------------------------------------------------------------

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
        pool = pools.registry.get(
            self.alias, self.pool_options, params, lambda: nodes.connect(self.alias, params)
        )
        self._pool_cache = (pool_setting, dict(params), pool)
        return pool

    def close_pool(self) -> None:
        """Close the idle connections of this alias's pools in this process; lent ones close on return.

        Django 5.1+ calls it before cloning a test database and when ``TIME_ZONE`` or ``USE_TZ`` change.
        """
        pools.registry.dispose(self.alias)

    # -- connecting -------------------------------------------------------------------------------------

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        # libpq waits forever on a server that accepts nothing (frozen, black-holed) without it
        params.setdefault("connect_timeout", settings.CONNECT_TIMEOUT)
        return params

    def _prepared_by_django(self, conn_params: dict[str, Any], connect: Callable[..., Any]) -> Any:
        """Return the connection ``connect`` gives, prepared by Django's ``get_new_connection``."""
        # Django's get_new_connection (4.2 and 5.2 alike) takes its connection from
        # ``self.Database.connect()``, after checking OPTIONS["isolation_level"] and before preparing it
        # (isolation level, jsonb loads); its other source, 5.1+'s ``self.pool``, is psycopg 3's pool and
        # also steers ``_close`` and ``is_usable``. So for this one call connect() borrows, and Django's
        # own code does the rest: nothing of it is copied here, and nothing else sees the stand-in.
        self.Database = SimpleNamespace(connect=connect)
        try:
            return django_base.DatabaseWrapper.get_new_connection(self, conn_params)
        finally:
            del self.Database  # psycopg2 again (the class attribute)

    def _placement(self) -> Cluster | None:
        """Return this alias's cluster (None: not part of any cluster)."""
        try:
            return topology().by_alias.get(self.alias)
        except ConfigurationError:
            return None

    def _borrow(self, **conn_params: Any) -> Any:
        cluster = self._placement()
        role = lending.role(cluster, self.alias, settings.RETRY_READS)
        self._read_cluster = None
        if role is lending.Role.PRIMARY and cluster is not None:
            borrowed = self.borrow_from_writer(cluster, conn_params)
        elif role is lending.Role.REPLICA and cluster is not None:
            borrowed = self._borrow_replica(cluster, conn_params)
            self._read_cluster = cluster
        else:
            borrowed = self.checkout_from(self.connection_pool(conn_params))
        self._borrowed = borrowed
        self._borrowed_generation = runtime.generation()
        return borrowed.connection

    def borrow_from_writer(
        self, cluster: Cluster, conn_params: dict[str, Any] | None = None, *, context: str = ""
    ) -> pools.Borrowed:
        """Borrow a connection to the node that takes the cluster's writes now.

        ``context`` prefixes the reason of the ``PrimaryUnavailable`` raised when there is none.
        """
        elected = health.writer(cluster.name, self.alias)
        known_reason = None
        if elected is None:  # only a refusal needs the snapshot's reason: not looked up on every borrow
            snapshot = health.snapshot(cluster.name)
            known_reason = snapshot.reason if snapshot else None
        writer = lending.writer(self.alias, elected, known_reason)
        if writer.node is None:
            stats.incr("primary_unavailable", cluster.name)
            raise PrimaryUnavailable(cluster.name, self.alias, context + writer.reason)
        if not writer.own:
            params = nodes.connection_params(writer.node)
        else:
            params = self.get_connection_params() if conn_params is None else conn_params
        try:
            return self.checkout_from(self.connection_pool(params))
        except PoolExhausted:
            raise
        except psycopg2.OperationalError as exc:
            stats.incr("primary_unavailable", cluster.name)
            raise PrimaryUnavailable(
                cluster.name, self.alias, f"{context}cannot connect to {writer.node}: {nodes.first_line(exc)}"
            ) from exc

    def _borrow_replica(self, cluster: Cluster, conn_params: dict[str, Any]) -> pools.Borrowed:
        """Borrow a connection to this replica, or to a fallback when it is broken (see ``lending``)."""
        error: Exception | None = None
        node = health.node(cluster.name, self.alias)
        failures = None if node is None else node.failures
        if lending.tries_itself(failures, health.is_suspect(cluster.name, self.alias)):
            try:
                return self.checkout_from(self.connection_pool(conn_params))
            except PoolExhausted:
                raise
            except psycopg2.OperationalError as exc:
                health.suspect(cluster.name, self.alias)
                error = exc
        return nodes.borrow_fallback(cluster, self.alias, error)

    def _forget_inherited(self) -> None:
        """Drop, without I/O, a connection this wrapper holds from before a fork."""
        if self._raw is None:
            return
        runtime.check_fork()
        if self._borrowed_generation != runtime.generation():
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
        if self._open_cursors:
            borrowed.dirty = True  # server-side cursors WITH HOLD may stay open on the session
        # closed inside atomic(), Django keeps referring to this connection until the block ends: it
        # must not go back to the pool where another thread could get it, so it is closed for good
        reusable = not self.in_atomic_block
        if reusable:
            self._raw = None  # back in the pool: never reachable through this wrapper again
        borrowed.pool.checkin(borrowed, reusable=reusable)
        return None

    # -- statements -------------------------------------------------------------------------------------

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = TrackingCursor(self.raw_cursor(name), self, self._borrowed)
        self.cursor_opened()
        return cursor

    def raw_cursor(self, name: str | None = None) -> Any:
        """Return a driver cursor on the borrowed connection, made as Django makes them."""
        return super().create_cursor(name)

    @property
    def guards_reads(self) -> bool:
        """Return whether this wrapper holds a connection lent for a replica alias's reads (retried)."""
        return self._read_cluster is not None

    def guarded_execute(self, cursor: TrackingCursor, method: str, sql: Any, params: Any) -> Any:
        """Run a read on a replica with the read timeout, and again elsewhere if its connection breaks."""
        cluster = self._read_cluster
        assert cluster is not None
        timeout = settings.READ_TIMEOUT
        attempts = 0
        while True:
            conn = self.connection
            raw = cursor.raw
            watch: watchdog.Watch | None = None
            try:
                if timeout is None:
                    return getattr(raw, method)(sql, params)
                with watchdog.get().watching(conn, cluster.name, self.alias, timeout) as watch:
                    return getattr(raw, method)(sql, params)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                cut = watch is not None and watch.aborted
                if not lending.retry(attempts, closed=bool(conn.closed), cut=cut):
                    raise
                attempts += 1
                server = nodes.server(conn)
                for alias in lending.suspects(cluster, self.alias, server, django_settings.DATABASES):
                    health.suspect(cluster.name, alias)
                stats.incr("read_retries", self.alias)
                logger.warning(
                    "read on %s (%s) failed: %s; retrying it elsewhere (attempt %d)",
                    self.alias,
                    server,
                    "no answer within READ_TIMEOUT" if cut else nodes.first_line(exc),
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
        cursor.rebind()

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
        cluster = self._placement()
        context.mark_write(cluster.name if cluster is not None else self.alias)
