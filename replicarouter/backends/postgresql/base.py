"""Django's postgresql backend (psycopg2) with connections borrowed from a per-alias pool.

Connection lifecycle: ``connect`` borrows from ``replicarouter.pools`` (through the driver object Django
calls ``Database.connect`` on, so Django's own ``get_new_connection`` still runs), ``close`` gives the
connection back, and a connection inherited from a parent process is dropped without any I/O. Pool
options come from the alias's top-level ``POOL`` key, which never reaches libpq.

Routing: every statement goes through ``TrackingCursor``, which tells the routing context when a
statement writes (raw SQL and ``using()`` included, which the router never sees) and tells the pool when
a statement changed session state; ``in_atomic_block`` is mirrored into the routing context.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg2
from django.db.backends.postgresql import base as django_base

from ... import context, pools, statements
from ...conf import topology
from ...exceptions import ConfigurationError
from .creation import DatabaseCreation


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.Database = PooledDriver(self)
        self._borrowed: pools.Borrowed | None = None
        self._borrowed_pid = 0
        self._pool_cache: tuple[Any, dict[str, Any], pools.ConnectionPool] | None = None

    @property
    def pool_options(self) -> pools.PoolOptions:
        """Return this alias's validated ``POOL`` options."""
        return pools.PoolOptions.from_settings(self.alias, self.settings_dict.get("POOL"))

    def connection_pool(self, conn_params: dict[str, Any] | None = None) -> pools.ConnectionPool:
        """Return this process's pool for this alias (created on first use)."""
        params = self.get_connection_params() if conn_params is None else conn_params
        pool_setting = self.settings_dict.get("POOL")
        cached = self._pool_cache
        # the same settings and parameters as last time: skip re-validating options and re-keying
        if (
            cached is not None
            and cached[0] is pool_setting
            and cached[1] == params
            and cached[2].pid == os.getpid()
            and not cached[2].disposed
        ):
            return cached[2]
        pool = pools.registry.get(self.alias, self.pool_options, params, lambda: psycopg2.connect(**params))
        self._pool_cache = (pool_setting, dict(params), pool)
        return pool

    def _borrow(self, conn_params: dict[str, Any]) -> Any:
        borrowed = self.connection_pool(conn_params).checkout()
        self._borrowed = borrowed
        self._borrowed_pid = os.getpid()
        return borrowed.connection

    def _forget_inherited(self) -> None:
        """Drop, without I/O, a connection this wrapper holds from before a fork."""
        if self.connection is not None and self._borrowed_pid != os.getpid():
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

    def _track(self, sql: Any) -> None:
        wrapper = self._wrapper
        write, session_state = statements.classify(sql)
        if write:
            wrapper.mark_write()
        if session_state:
            borrowed = wrapper._borrowed
            if borrowed is not None:
                borrowed.dirty = True

    def execute(self, sql: Any, params: Any = None) -> Any:
        self._track(sql)
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
